"""A baked image's records for the tests, made the way `imagebuild bake` makes them.

`golden.inventory.json` is the inventory a REAL bake wrote: `tests/e2e/test_bake_verify.py::
test_golden_image_bakes_with_manifest` baked the default spec (Debian 12 amd64 base image, upstream's
containerd 1.6.20 and runc 1.4.4 built from the Go module proxy, Packer 1.6.6, QEMU under TCG); the build VM
ran imagebuild/guest/inventory.py (after hygiene, before the in-build check) and Packer downloaded its output
beside the image as `containerd-golden.inventory.json`, copied here unchanged (the last of two such bakes on
2026-12-07; the two inventories differed only in `timings_s`). `with_records` writes the SBOM and provenance
from it with the bake's own writer (imagebuild.build.records.write).
"""
from __future__ import annotations

import copy
import functools
import json
import shutil
from pathlib import Path

from imagebuild.build import provenance, records
from imagebuild.spec import load

HERE = Path(__file__).resolve().parent
INVENTORY = HERE / "golden.inventory.json"


def inventory() -> dict:
    """A fresh copy of the real bake's inventory (change it freely)."""
    return copy.deepcopy(_inventory())


@functools.cache
def _inventory() -> dict:
    return json.loads(INVENTORY.read_text())


@functools.cache
def builder() -> dict:
    """provenance.builder of a bake on this host (amd64, SeaBIOS, TCG): once a session (it asks packer and QEMU)."""
    packer = shutil.which("packer") or "/usr/bin/packer"
    return provenance.builder("amd64", "bios", packer, "tcg")


def with_records(image_dir: Path, manifest: dict, document: dict | None = None) -> dict:
    """*manifest* (a bake's manifest.json, not yet written) with the `records` the bake gives it: the inventory
    *document* (default: the real bake's), its SBOM and provenance written into *image_dir* by the bake's writer."""
    source = image_dir / ".inventory-download.json"
    source.write_text(json.dumps(document if document is not None else _inventory()))
    try:
        manifest = dict(manifest)
        manifest["records"] = records.write(image_dir, manifest, load().document, source, builder())
    finally:
        source.unlink()
    return manifest


def baked(image_dir: Path, *, name: str = "containerd-golden", image: bytes = b"qcow2 bytes of a baked image",
          build_time: str = "2026-12-07T14:52:00Z", document: dict | None = None, **changes) -> dict:
    """A bake's output directory in *image_dir*: an image file, its manifest.json with every key bake writes
    (values of the real bake that captured golden.inventory.json; its paths and lab URLs made neutral) and the
    records bake writes beside it. Returns the manifest."""
    import hashlib

    image_dir.mkdir(parents=True, exist_ok=True)
    (image_dir / f"{name}.qcow2").write_bytes(image)
    manifest = {
        "image": f"{name}.qcow2", "sha256": hashlib.sha256(image).hexdigest(), "virtual_size": 4294967296,
        "disk_size": len(image), "family": name, "spec_hash": load().spec_hash,
        "inputs_hash": hashlib.sha256(build_time.encode()).hexdigest(), "containerd_version": "1.6.20",
        "install_method": "tarball", "runc_version": "1.4.4",
        "base_image": {"source": "debian-12-base.qcow2", "checksum": "sha256:" + "43" * 32},
        "build_time": build_time, "boot_mode": "uefi-preferred", "architecture": "x86_64", "accelerator": "tcg",
        "imagebuild_version": "0.1.0",
        "durations_s": {"boot": 75.9, "provision": 103.3, "hygiene": 42.1, "check": 20.3, "inventory": 23.4,
                        "shutdown": 3.8, "convert": 22.7, "post-process": 0.1, "total": 291.6},
        "packer": {"name": "golden", "builder_type": "qemu", "packer_run_uuid": "e7626b15-eb4e-ba5d-cca6-2adc4d97d8d2"},
        "build_firmware": "bios",
        "sandbox_image": {"source": "none", "name": "registry.k8s.io/pause:3.6", "digest": None},
        "lab_content": [],
        "artifacts": [{"url": "https://example.invalid/containerd-1.6.20-linux-amd64.tar.gz", "sha256": "6d" * 32},
                      {"url": "https://example.invalid/runc.amd64", "sha256": "27" * 32}],
        **changes,
    }
    manifest = with_records(image_dir, manifest, document)
    (image_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
