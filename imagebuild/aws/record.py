"""`publish.json`: what a publish created in AWS, rewritten atomically after every step.

The record lists exactly what exists: the uploaded snapshot, the AMI in each region, the
accounts each AMI is shared with, the SSM parameter. A publish that stops half-way leaves a
record a rerun reads to finish the job without redoing what is already there. It holds ids,
names and states only, never credentials or endpoints.

Layout (version 1):
    {
      "version": 1,
      "image": "<qcow2 file name>", "image_sha256": "<hex>",
      "family": "...", "name": "<AMI name>", "home_region": "...",
      "snapshot": {"id": "snap-..." | null, "region": "...",
                   "state": "starting|uploading|completing|completed|incomplete",
                   "client_token": "<StartSnapshot ClientToken, saved before the call>",
                   "blocks_written": n, "checksum": "<base64>"} | null,
      "images": {"<region>": {"id": "ami-...", "state": "pending|available",
                              "source": "register|copy|adopted", "snapshots": ["snap-..."],
                              "created_at": "<when RegisterImage/CopyImage answered: AWS's consistency
                                             window runs from then>"}},
      "failed_regions": {"<region>": "<what went wrong>"},
      "shared": {"<region>": ["<account id>", ...]},
      "ssm_parameter": {"name": "...", "region": "...", "value": "ami-...", "version": n} | null,
      "ssm_held": {"<region>": {"image": "ami-...", "reason": "imagebuild:hold=..."}},  (left where an
                  operator holds it: imagebuild.aws.hold)
      "complete": bool,
      "last_error": "..." | null,
      "notes": ["<what happened, newest last>"],
      "updated_at": "<ISO-8601 UTC>"
    }
"""
from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagebuild.errors import ImagebuildError

RECORD_NAME = "publish.json"
RECORD_VERSION = 1
MAX_NOTES = 50


def write_json_atomic(path: Path, data: Any) -> None:
    """Write *data* as JSON to *path* via a temporary file in the same directory and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable; not possible everywhere
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


class PublishRecord:
    """publish.json of one image directory, loaded or new, saved on every change."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @classmethod
    def open(cls, image_dir: Path, *, image: str, image_sha256: str, family: str, name: str,
             home_region: str) -> PublishRecord:
        path = Path(image_dir) / RECORD_NAME
        if not path.exists():
            return cls(
                path,
                {
                    "version": RECORD_VERSION,
                    "image": image,
                    "image_sha256": image_sha256,
                    "family": family,
                    "name": name,
                    "home_region": home_region,
                    "snapshot": None,
                    "images": {},
                    "failed_regions": {},
                    "shared": {},
                    "ssm_parameter": None,
                    "complete": False,
                    "last_error": None,
                    "notes": [],
                    "updated_at": None,
                },
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ImagebuildError(f"cannot read the publish record {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
            raise ImagebuildError(
                f"{path} is not a publish record this imagebuild understands (version {RECORD_VERSION})")
        if data.get("image_sha256") != image_sha256:
            raise ImagebuildError(
                f"{path} records a publish of a different image (sha256 {data.get('image_sha256')}, "
                f"this image is {image_sha256}); its AWS resources still exist. Move the record away "
                "to publish this image as a new one."
            )
        if data.get("home_region") != home_region:
            raise ImagebuildError(
                f"{path} records a publish to home region {data.get('home_region')}, "
                f"not {home_region}; finish or clean up that publish first"
            )
        if data.get("family") != family or data.get("name") != name:
            raise ImagebuildError(
                f"{path} records a publish as {data.get('family')}/{data.get('name')}, not {family}/{name}"
            )
        for key, empty in (("images", {}), ("failed_regions", {}), ("shared", {}), ("notes", [])):
            data.setdefault(key, empty)
        return cls(path, data)

    # ------------------------------------------------------------------ access

    @property
    def snapshot(self) -> dict[str, Any] | None:
        return self.data.get("snapshot")

    @property
    def images(self) -> dict[str, dict[str, Any]]:
        return self.data["images"]

    @property
    def failed_regions(self) -> dict[str, str]:
        return self.data["failed_regions"]

    @property
    def shared(self) -> dict[str, list[str]]:
        return self.data["shared"]

    def image_id(self, region: str) -> str | None:
        entry = self.images.get(region)
        return entry["id"] if entry else None

    # ------------------------------------------------------------------ changes (each saves)

    def note(self, text: str) -> None:
        notes = self.data["notes"]
        notes.append(text)
        del notes[:-MAX_NOTES]

    def set(self, key: str, value: Any, note: str | None = None) -> None:
        self.data[key] = value
        if note:
            self.note(note)
        self.save()

    def set_image(self, region: str, entry: dict[str, Any] | None, note: str | None = None) -> None:
        if entry is None:
            self.images.pop(region, None)
            self.shared.pop(region, None)
        else:
            self.images[region] = entry
            self.failed_regions.pop(region, None)
        if note:
            self.note(note)
        self.save()

    def save(self) -> None:
        self.data["updated_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        write_json_atomic(self.path, self.data)

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.data))
