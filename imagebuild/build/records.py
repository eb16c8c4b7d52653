"""The records a bake writes beside its image, and the check that they are there and belong to it.

    <image>.inventory.json    what the image holds, read in its build VM (build/inventory.py)
    <image>.cdx.json          its SBOM, CycloneDX 1.5 (build/sbom.py)
    <image>.provenance.json   how it was made, in-toto/SLSA provenance (build/provenance.py)

manifest.json's `records` names each file with its sha256 and format. `imagebuild publish` refuses an image
whose records are missing, changed since the bake, or about another image; it tags the AMI with the SBOM's
and the provenance's sha256 (`records_tag`), so an AMI leads to the records that describe it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from imagebuild.build import inventory as inv
from imagebuild.build import provenance, sbom
from imagebuild.digest import sha256_file
from imagebuild.errors import ImagebuildError

RECORDS = ("inventory", "sbom", "provenance")
SUFFIXES = {"inventory": ".inventory.json", "sbom": ".cdx.json", "provenance": ".provenance.json"}
FORMATS = {"inventory": inv.SCHEMA, "sbom": sbom.FORMAT,
           "provenance": "in-toto Statement v1, SLSA provenance v1"}
#: The AMI tag naming the records by sha256: `sbom=sha256:<hex> provenance=sha256:<hex>`.
TAG = "imagebuild:records"


def file_name(image: str, record: str) -> str:
    """The file of *record* beside the image file named *image*: containerd-golden.qcow2 ->
    containerd-golden.cdx.json."""
    return Path(image).stem + SUFFIXES[record]


def _json_bytes(document: dict) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def write(out_dir: Path, manifest: dict, spec_document: dict, inventory_file: Path, build: dict) -> dict[str, Any]:
    """Write the inventory (read from *inventory_file*, Packer's download), the SBOM and the provenance of the
    image *manifest* describes into *out_dir*; returns manifest.json's `records`: {record: {file, sha256,
    format}}. *build*: provenance.builder of this bake."""
    document = inv.load(inventory_file)
    files = {"inventory": _json_bytes(document), "sbom": _json_bytes(sbom.document(document, manifest))}
    byproducts = [{"name": file_name(manifest["image"], r), "digest": {"sha256": hashlib.sha256(files[r]).hexdigest()}}
                  for r in ("inventory", "sbom")]
    files["provenance"] = _json_bytes(provenance.document(manifest, spec_document, build, byproducts))
    records = {}
    for record in RECORDS:
        name = file_name(manifest["image"], record)
        (out_dir / name).write_bytes(files[record])
        records[record] = {"file": name, "sha256": hashlib.sha256(files[record]).hexdigest(),
                           "format": FORMATS[record]}
    return records


def check(image_dir: Path, records: Any, image_sha256: str, wanted: tuple[str, ...] = RECORDS) -> dict[str, Path]:
    """The paths of the *wanted* records of the image in *image_dir*, each present, with the sha256 manifest.json
    gives it, and (SBOM, provenance) about the image of *image_sha256*; else ImagebuildError saying which and why."""
    where = Path(image_dir) / "manifest.json"
    if not isinstance(records, dict) or not records:
        raise ImagebuildError(f"{where} names no records (SBOM, provenance): the image was baked by an older "
                              "imagebuild, or its records were removed; bake it again")
    paths = {}
    for record in wanted:
        entry = records.get(record)
        if not (isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("file", "sha256"))):
            raise ImagebuildError(f"{where}: records.{record}: got {json.dumps(entry)}, expected "
                                  "{\"file\": NAME, \"sha256\": HEX} (the image has no " + record + " record)")
        name = entry["file"]
        if not name or "/" in name or name in (".", ".."):
            raise ImagebuildError(f"{where}: records.{record}.file: got {name!r}, expected a file name beside "
                                  "the image")
        path = Path(image_dir) / name
        if not path.is_file():
            raise ImagebuildError(f"the {record} record {path} does not exist (manifest.json names it)")
        actual = sha256_file(path)
        if actual != entry["sha256"].lower():
            raise ImagebuildError(f"the {record} record {path} has sha256 {actual}, but manifest.json gives "
                                  f"{entry['sha256']}: it changed after the bake")
        paths[record] = path
    subjects = {"sbom": sbom.subject_sha256, "provenance": provenance.subject_sha256}
    for record, subject_of in subjects.items():
        if record in paths:
            try:
                subject = subject_of(json.loads(paths[record].read_text(encoding="utf-8")))
            except ValueError as exc:
                raise ImagebuildError(f"the {record} record {paths[record]} is not JSON: {exc}") from None
            if subject != image_sha256:
                raise ImagebuildError(f"the {record} record {paths[record]} describes image sha256 {subject}, "
                                      f"not this image's {image_sha256}")
    return paths


def records_tag(records: dict) -> dict[str, str]:
    """The AMI tag naming the image's SBOM and provenance by sha256 (value under 255 characters)."""
    return {TAG: f"sbom=sha256:{records['sbom']['sha256']} provenance=sha256:{records['provenance']['sha256']}"}
