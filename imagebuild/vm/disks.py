"""Disks and seeds: qemu-img (info, copy-on-write overlays, conversion with a progress bar) and
ISO 9660 images (NoCloud seeds, data disks)."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imagebuild.errors import ImagebuildError
from imagebuild.progress import bar, heartbeat
from imagebuild.run import PIPE, describe_status, run, spawned

#: The programs that write an ISO, the first found is used (xorriso's mkisofs emulation, or genisoimage).
SEED_ISO_TOOLS = ("xorriso", "genisoimage")


def seed_iso(out: str | os.PathLike, user_data: bytes, meta_data: bytes,
             extra_files: Mapping[str, bytes] | None = None, *,
             network_config: bytes | None = None) -> Path:
    """Write a NoCloud seed ISO (volume label ``cidata``) to *out* and return its path.

    *extra_files* maps relative paths (``"files/containerd.tar.gz"``) to contents; they
    land on the ISO beside ``user-data`` and ``meta-data`` (the guest finds the ISO as the
    block device labelled ``cidata``, e.g. ``mount -r LABEL=cidata /mnt``).
    """
    files: dict[str, bytes] = {"user-data": user_data, "meta-data": meta_data}
    if network_config is not None:
        files["network-config"] = network_config
    for name, data in (extra_files or {}).items():
        if name in files:
            raise ImagebuildError(f"seed ISO file {name!r} is given twice")
        files[name] = data
    return data_iso(out, files, label="cidata")


def data_iso(out: str | os.PathLike, files: Mapping[str, bytes], *, label: str) -> Path:
    """Write an ISO 9660 image (Joliet, Rock Ridge) labelled *label* holding *files*
    (relative path -> contents) to *out*, atomically, and return its path."""
    out = Path(out)
    for name in files:
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts:
            raise ImagebuildError(f"seed ISO file name must be a relative path: {name!r}")
    tool = next((found for name in SEED_ISO_TOOLS if (found := shutil.which(name))), None)
    if tool is None:
        raise ImagebuildError(f"writing a NoCloud seed ISO needs {' or '.join(SEED_ISO_TOOLS)}")
    scratch = Path(tempfile.mkdtemp(prefix="imagebuild-seed-"))
    tmp_out = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        root = scratch / "root"
        root.mkdir()
        for name, data in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = ([tool, "-as", "mkisofs"] if tool.endswith("xorriso") else [tool])
        cmd += ["-quiet", "-output", str(tmp_out), "-volid", label, "-joliet", "-rock", str(root)]
        run(cmd, what="writing the seed ISO")
        os.replace(tmp_out, out)
        return out
    finally:
        tmp_out.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)


def image_info(image: str | os.PathLike) -> dict[str, Any]:
    """``qemu-img info --output=json`` of *image*."""
    proc = run(["qemu-img", "info", "--output=json", os.fspath(image)], what=f"qemu-img info {image}")
    return json.loads(proc.stdout)


def virtual_size(image: str | os.PathLike) -> int:
    """The virtual disk size of *image* in bytes."""
    return int(image_info(image)["virtual-size"])


def overlay(image: str | os.PathLike, dir: str | os.PathLike, *,
            size: str | int | None = None) -> Path:
    """A throwaway copy-on-write qcow2 in *dir* on top of *image* (never modified).

    *size* (bytes, or qemu-img syntax like ``"8G"``) makes the overlay's virtual disk
    larger than the image's, for cloud-init's growpart to use.
    """
    image = Path(image).resolve()
    if not image.is_file():
        raise ImagebuildError(f"disk image not found: {image}")
    info = image_info(image)
    dest = Path(dir) / f"{image.stem}-overlay-{uuid.uuid4().hex[:8]}.qcow2"
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", info["format"], "-b", str(image), str(dest)]
    if size is not None:
        cmd.append(str(size))
    run(cmd, what=f"qemu-img create (overlay of {image})")
    return dest


_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def convert(source: str | os.PathLike, dest: str | os.PathLike, *, source_format: str, dest_format: str,
            options: tuple[str, ...] = (), what: str | None = None) -> None:
    """``qemu-img convert`` *source* to *dest* with a progress bar (``-p``) and a heartbeat.
    *options*: more qemu-img options (``-c`` compresses, ``-W`` writes out of order...)."""
    what = what or f"converting {Path(source).name} to {dest_format}"
    cmd = ["qemu-img", "convert", "-p", *options, "-f", source_format, "-O", dest_format,
           os.fspath(source), os.fspath(dest)]
    with tempfile.TemporaryFile() as err, heartbeat(what), bar(100, what, unit="%") as progress, \
            spawned(cmd, stdout=PIPE, stderr=err) as proc:
        pending = b""
        for chunk in iter(lambda: os.read(proc.stdout.fileno(), 4096), b""):   # type: ignore[union-attr]
            *complete, pending = (pending + chunk).split(b"\r")
            for percent in _PERCENT.findall(b"".join(complete)):
                progress.update(float(percent))
        for percent in _PERCENT.findall(pending):
            progress.update(float(percent))
        code = proc.wait()
        err.seek(0)
        said = err.read().decode("utf-8", "replace").strip()
    if code != 0:
        raise ImagebuildError(f"qemu-img convert of {source} failed ({describe_status(code)}): {said}")


#: GPT partition type GUIDs (and MBR ids) of a Linux root filesystem.
LINUX_PARTITION_TYPES = {"0FC63DAF-8483-4772-8E79-3D69D8477DE4", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
                         "B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "83"}


class OfflineImage:
    """The root filesystem of a disk image, read without booting it (debugfs on a raw copy): what the
    image holds on disk, before any boot could change it. A context manager; the raw copy is removed."""

    def __init__(self, image: str | os.PathLike, work: str | os.PathLike):
        self.image = Path(image)
        self.raw = Path(work) / f"{self.image.stem}.offline.raw"
        try:
            convert(self.image, self.raw, source_format=image_info(self.image)["format"], dest_format="raw",
                    what=f"reading {self.image.name} without booting it")
            table = json.loads(run(["sfdisk", "--json", str(self.raw)], what="sfdisk --json").stdout)["partitiontable"]
        except BaseException:
            self.raw.unlink(missing_ok=True)
            raise
        sector = int(table.get("sectorsize", 512))
        roots = [p for p in table.get("partitions", []) if str(p.get("type", "")).upper() in LINUX_PARTITION_TYPES]
        if not roots:
            self.raw.unlink(missing_ok=True)
            raise ImagebuildError(f"{self.image}: no Linux partition in its partition table")
        self.offset = max(roots, key=lambda p: int(p["size"]))["start"] * sector

    def _debugfs(self, request: str) -> str:
        return run(["debugfs", "-R", request, f"{self.raw}?offset={self.offset}"], what=f"debugfs {request}").stdout

    def listdir(self, path: str) -> list[str] | None:
        """The names in directory *path* (without . and ..), None when there is no such directory."""
        out = self._debugfs(f"ls -p {path}")
        entries = [line.split("/") for line in out.splitlines() if line.startswith("/")]
        if not entries:
            return None
        return sorted(e[5] for e in entries if len(e) > 5 and e[5] not in (".", ".."))

    def read(self, path: str) -> bytes | None:
        """The content of the regular file *path*, None when there is none (debugfs dump into the work directory)."""
        if "Type: regular" not in self._debugfs(f"stat {path}"):
            return None
        out = self.raw.with_name(f"{self.raw.name}.{uuid.uuid4().hex[:8]}.file")
        try:
            self._debugfs(f"dump {path} {out}")
            return out.read_bytes() if out.is_file() else None
        finally:
            out.unlink(missing_ok=True)

    def __enter__(self) -> OfflineImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.raw.unlink(missing_ok=True)
