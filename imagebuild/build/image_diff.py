"""`imagebuild diff OLD NEW`: what changed between two baked images, read from their records (the bake's
manifest.json and inventory beside each image; verify.json and verify-ec2.json when a verify wrote them there).

The report a platform team reads before a rollout: Debian packages added, removed and changed; containerd's,
runc's and the CNI plugins' binaries; `containerd config dump` as a unified diff; the unit files and drop-ins
imagebuild installed (their text as unified diffs), `systemctl cat containerd` and unit-file states; the images
in containerd's store and whether CRI pinned them; the kernel and the OS; and the verify timings, old and new.
Verify timings are measured, never equal twice: they inform, and never count as a difference.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from imagebuild.build import inventory as inv
from imagebuild.build import records
from imagebuild.errors import ImagebuildError

VERIFY_REPORTS = ("verify.json", "verify-ec2.json")
#: The sections that count as a difference (exit status 1), in the order the report gives them.
SECTIONS = ("packages", "binaries", "containerd_config", "units", "images", "kernel", "os")


def image_dir(path: Path) -> Path:
    """The records directory of *path*: a bake's output directory, or the image file in it."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not (path / "manifest.json").is_file():
        raise ImagebuildError(f"{path} holds no manifest.json: give a bake's output directory or the image in it")
    return path


def load(path: Path) -> dict[str, Any]:
    """One side of a comparison: the manifest, the inventory (checked against the manifest's sha256) and the
    verify reports found beside the image."""
    where = image_dir(path)
    try:
        manifest = json.loads((where / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ImagebuildError(f"cannot read {where / 'manifest.json'}: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sha256"), str):
        raise ImagebuildError(f"{where / 'manifest.json'}: not a bake's manifest (no image sha256)")
    paths = records.check(where, manifest.get("records"), manifest["sha256"], wanted=("inventory",))
    verify = {}
    for name in VERIFY_REPORTS:
        try:
            report = json.loads((where / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(report, dict) and report.get("image_sha256") == manifest["sha256"]:
            verify[name] = report.get("timings") or {}
    return {"dir": str(where), "manifest": manifest, "inventory": inv.load(paths["inventory"]), "verify": verify}


def _keyed(items: list[dict], key, value) -> dict:
    return {key(item): value(item) for item in items}


def changes(old: dict, new: dict) -> dict[str, list]:
    """{added: [(key, new)], removed: [(key, old)], changed: [(key, old, new)]} of two mappings, sorted by key."""
    return {"added": [(k, new[k]) for k in sorted(new.keys() - old.keys())],
            "removed": [(k, old[k]) for k in sorted(old.keys() - new.keys())],
            "changed": [(k, old[k], new[k]) for k in sorted(old.keys() & new.keys()) if old[k] != new[k]]}


def unified(old: str, new: str, name: str) -> list[str]:
    return [line.rstrip("\n") for line in difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"old/{name}", f"new/{name}")]


def compare(old: dict, new: dict) -> dict[str, Any]:
    """The differences between two sides (`load`), as plain JSON data; `changed` names the sections that differ."""
    a, b = old["inventory"], new["inventory"]

    def package_key(p: dict) -> str:
        return f"{p['name']}:{p['architecture']}"

    packages = changes(_keyed(a["dpkg"]["packages"], package_key, lambda p: p["version"]),
                       _keyed(b["dpkg"]["packages"], package_key, lambda p: p["version"]))
    binaries = changes(_keyed(a["binaries"], lambda x: x["path"], _binary_facts),
                       _keyed(b["binaries"], lambda x: x["path"], _binary_facts))
    files_a = _keyed(a["imagebuild_files"], lambda f: f["path"], lambda f: f)
    files_b = _keyed(b["imagebuild_files"], lambda f: f["path"], lambda f: f)
    file_changes = changes({p: f.get("sha256") for p, f in files_a.items()},
                           {p: f.get("sha256") for p, f in files_b.items()})
    file_diffs = {path: unified(files_a[path].get("text", ""), files_b[path].get("text", ""), path.lstrip("/"))
                  for path, _, _ in file_changes["changed"] if "text" in files_a[path] or "text" in files_b[path]}
    units = {"files": file_changes, "file_diffs": file_diffs,
             "containerd_unit": unified(a["containerd"]["unit"], b["containerd"]["unit"], "containerd.service"),
             "states": changes(a["unit_files"], b["unit_files"])}

    def image_key(i: dict) -> str:
        return f"{i['namespace']}/{i['name']}"

    images = changes(_keyed(a["containerd"]["images"], image_key, _image_facts),
                     _keyed(b["containerd"]["images"], image_key, _image_facts))
    kernel = {key: [a["kernel"].get(key), b["kernel"].get(key)] for key in ("release", "packages")
              if a["kernel"].get(key) != b["kernel"].get(key)}
    os_change = [a.get("os", {}).get("pretty_name"), b.get("os", {}).get("pretty_name")]
    result: dict[str, Any] = {
        "old": _side(old), "new": _side(new),
        "packages": packages, "binaries": binaries,
        "containerd_config": unified(a["containerd"]["config_dump"], b["containerd"]["config_dump"],
                                     "config-dump.toml"),
        "units": units, "images": images, "kernel": kernel,
        "os": os_change if os_change[0] != os_change[1] else [],
        "verify_timings": _timings(old["verify"], new["verify"]),
    }
    result["changed"] = [s for s in SECTIONS if _differs(result[s])]
    return result


def _binary_facts(binary: dict) -> dict:
    return {"version": binary["version"], "sha256": binary["sha256"]}


def _image_facts(image: dict) -> dict:
    return {"digest": image["digest"], "pinned": image.get("pinned", False)}


def _side(side: dict) -> dict:
    manifest = side["manifest"]
    return {"dir": side["dir"], **{k: manifest.get(k) for k in ("image", "sha256", "build_time", "containerd_version",
                                                               "spec_hash", "inputs_hash")}}


def _differs(section: Any) -> bool:
    if isinstance(section, dict):
        return any(_differs(v) for v in section.values())
    return bool(section)


def _timings(old: dict, new: dict) -> dict:
    out = {}
    for name in VERIFY_REPORTS:
        if name in old and name in new:
            out[name] = {key: [old[name].get(key), new[name].get(key)]
                         for key in sorted(set(old[name]) | set(new[name]))}
    return out


# ------------------------------------------------------------------------------------------ text

def _count(section: dict) -> str:
    parts = [f"{len(section[k])} {k}" for k in ("added", "removed", "changed") if section[k]]
    return ", ".join(parts) if parts else "unchanged"


def _listing(section: dict, show) -> list[str]:
    lines = [f"  + {k} {show(v)}" for k, v in section["added"]]
    lines += [f"  - {k} {show(v)}" for k, v in section["removed"]]
    lines += [f"  ~ {k} {show(o)} -> {show(n)}" for k, o, n in section["changed"]]
    return lines


def _binary(value: dict) -> str:
    return f"{value['version'] or '(no version)'} sha256:{value['sha256'][:12]}"


def _image(value: dict) -> str:
    return value["digest"] + (" (pinned)" if value["pinned"] else "")


def _delta(old: Any, new: Any) -> str:
    if isinstance(old, (int, float)) and isinstance(new, (int, float)):
        return f"{old} -> {new} ({new - old:+.1f})"
    return f"{old} -> {new}"


def text(result: dict) -> str:
    """The comparison as a person reads it."""
    old, new = result["old"], result["new"]
    lines = [f"old: {old['image']} built {old['build_time']}, containerd {old['containerd_version']}, "
             f"sha256 {old['sha256'][:16]}... ({old['dir']})",
             f"new: {new['image']} built {new['build_time']}, containerd {new['containerd_version']}, "
             f"sha256 {new['sha256'][:16]}... ({new['dir']})"]
    if old["inputs_hash"] == new["inputs_hash"]:
        lines.append("inputs hash: the same (a rebuild of the same inputs)")
    lines.append(f"packages: {_count(result['packages'])}")
    lines += _listing(result["packages"], str)
    lines.append(f"binaries (containerd, runc, CNI plugins): {_count(result['binaries'])}")
    lines += _listing(result["binaries"], _binary)
    config = result["containerd_config"]
    lines.append("containerd config dump: " + ("changed" if config else "unchanged"))
    lines += ["  " + line for line in config]
    units = result["units"]
    lines.append(f"units and drop-ins imagebuild installed: {_count(units['files'])}")
    lines += _listing(units["files"], lambda sha: f"sha256:{(sha or '')[:12]}")
    for diff in units["file_diffs"].values():
        lines += ["  " + line for line in diff]
    lines.append("systemctl cat containerd: " + ("changed" if units["containerd_unit"] else "unchanged"))
    lines += ["  " + line for line in units["containerd_unit"]]
    lines.append(f"unit file states: {_count(units['states'])}")
    lines += _listing(units["states"], str)
    lines.append(f"images in containerd's store: {_count(result['images'])}")
    lines += _listing(result["images"], _image)
    kernel = result["kernel"]
    lines.append("kernel: " + ("; ".join(f"{k} {_delta(*v)}" for k, v in kernel.items()) if kernel else "unchanged"))
    if result["os"]:
        lines.append(f"os: {_delta(*result['os'])}")
    for name, timings in result["verify_timings"].items():
        lines.append(f"verify timings ({name}): " + ", ".join(f"{k} {_delta(*v)}" for k, v in timings.items()))
    if not result["verify_timings"]:
        lines.append("verify timings: no verify report beside both images")
    lines.append("differences: " + (", ".join(result["changed"]) if result["changed"] else "none"))
    return "\n".join(lines) + "\n"
