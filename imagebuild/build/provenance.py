"""The provenance record of a baked image: how it was made, as an in-toto Statement (v1) whose predicate is
SLSA provenance (v1), so provenance tools can read it.

- subject: the image file and its sha256;
- buildDefinition.externalParameters: the effective spec (every default filled in) and its hash;
- buildDefinition.internalParameters: the inputs hash (equal hashes: a rebuild changes nothing), the
  accelerator, the image's boot mode and the build VM's firmware, the lab content the image holds (if any);
- buildDefinition.resolvedDependencies: the base image with its checksum, every download the install made
  (URL, sha256), the sandbox image's archive when one was baked in;
- runDetails.builder: imagebuild's version, and as builderDependencies Packer, QEMU and the firmware the build
  VM booted (package versions, the firmware file's sha256);
- runDetails.metadata: Packer's run id, when the build started and finished;
- runDetails.byproducts: the image's inventory and SBOM, by sha256.
"""
from __future__ import annotations

import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from imagebuild import __version__
from imagebuild.digest import sha256_file
from imagebuild.run import run
from imagebuild.spec import platforms

STATEMENT = "https://in-toto.io/Statement/v1"
PREDICATE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:imagebuild:bake:v1"
BUILDER_ID = "urn:imagebuild:bake"
#: SeaBIOS, the firmware of a BIOS build VM on amd64: QEMU's pc machine loads this file of Debian's package.
SEABIOS = {"package": "seabios", "file": "/usr/share/seabios/bios-256k.bin", "name": "SeaBIOS"}


def _tool_version(cmd: list[str], pattern: str) -> str | None:
    """The version *cmd* prints (the first match of *pattern*), None when it cannot run or says no version."""
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).is_file():
        return None
    done = run(cmd, check=False, what=" ".join(cmd), timeout=60)
    match = re.search(pattern, (done.stdout or "") + (done.stderr or ""))
    return match.group(1) if match else None


def package_version(name: str) -> str | None:
    """The installed version of Debian package *name* on this host (dpkg-query), None when it is not installed."""
    if shutil.which("dpkg-query") is None:
        return None
    done = run(["dpkg-query", "-W", "-f=${Version}", name], check=False, what=f"dpkg-query {name}")
    return done.stdout.strip() or None if done.returncode == 0 else None


def firmware_dependency(arch: str, build_firmware: str) -> dict[str, Any]:
    """The firmware the build VM booted, as a resource descriptor: its file's sha256 and its Debian package."""
    if build_firmware == "bios":
        name, package, path = SEABIOS["name"], SEABIOS["package"], SEABIOS["file"]
    else:
        info = platforms.ARCHES[arch]
        name, package, path = Path(info["uefi_code"]).stem, info["uefi_package"], info["uefi_code"]
    entry: dict[str, Any] = {"name": name, "uri": f"file:{path}",
                             "annotations": {"firmware": build_firmware, "package": package,
                                             "package_version": package_version(package)}}
    if Path(path).is_file():
        entry["digest"] = {"sha256": sha256_file(path)}
    return entry


def builder(arch: str, build_firmware: str, packer: str, accelerator: str) -> dict[str, Any]:
    """SLSA's runDetails.builder of a bake on this host: imagebuild, and Packer, QEMU and the firmware."""
    qemu = platforms.qemu_binary(arch)
    return {
        "id": BUILDER_ID,
        "version": {"imagebuild": __version__},
        "builderDependencies": [
            {"name": "packer", "uri": f"file:{packer}",
             "annotations": {"version": _tool_version([packer, "version"], r"Packer v?(\S+)")}},
            {"name": qemu, "annotations": {"version": _tool_version([qemu, "--version"], r"version (\S+)"),
                                           "package_version": package_version(
                                               "qemu-system-arm" if arch == "arm64" else "qemu-system-x86"),
                                           "accelerator": accelerator}},
            firmware_dependency(arch, build_firmware),
        ],
    }


def _hex(checksum: str) -> str:
    return checksum.split(":", 1)[1] if ":" in checksum else checksum


def document(manifest: dict, spec_document: dict, build: dict, byproducts: list[dict]) -> dict[str, Any]:
    """The statement for the image *manifest* describes (bake's manifest.json: image, sha256, inputs_hash,
    base_image, artifacts, sandbox_image, durations_s, build_time, packer), made from *spec_document* (the
    effective spec) by *build* (`builder`), with *byproducts* ({name, digest: {sha256}})."""
    base = manifest["base_image"]
    dependencies = [{"name": "base-image", "uri": base["source"], "digest": {"sha256": _hex(base["checksum"])}}]
    dependencies += [{"name": url.rsplit("/", 1)[-1], "uri": url, "digest": {"sha256": sha}}
                     for url, sha in ((a["url"], a["sha256"]) for a in manifest.get("artifacts", []))]
    sandbox = manifest.get("sandbox_image") or {}
    if sandbox.get("source") == "archive" and sandbox.get("archive_sha256"):
        dependencies.append({"name": "sandbox-image", "uri": sandbox.get("url"),
                             "digest": {"sha256": sandbox["archive_sha256"]}})
    finished = datetime.fromisoformat(manifest["build_time"].replace("Z", "+00:00"))
    total = float((manifest.get("durations_s") or {}).get("total") or 0)
    started = finished - timedelta(seconds=total)
    return {
        "_type": STATEMENT,
        "subject": [{"name": manifest["image"], "digest": {"sha256": manifest["sha256"]}}],
        "predicateType": PREDICATE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"spec": spec_document, "spec_hash": manifest["spec_hash"]},
                "internalParameters": {
                    "inputs_hash": manifest["inputs_hash"], "accelerator": manifest.get("accelerator"),
                    "boot_mode": manifest.get("boot_mode"), "build_firmware": manifest.get("build_firmware"),
                    "architecture": manifest.get("architecture"), "sandbox_image": sandbox,
                    "lab_content": list(manifest.get("lab_content") or []),
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": build,
                "metadata": {"invocationId": (manifest.get("packer") or {}).get("packer_run_uuid"),
                             "startedOn": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
                             "finishedOn": manifest["build_time"]},
                "byproducts": byproducts,
            },
        },
    }


def subject_sha256(statement: dict) -> str | None:
    """The sha256 of the image a statement of this module is about."""
    subjects = statement.get("subject") or []
    return ((subjects[0] or {}).get("digest") or {}).get("sha256") if subjects else None
