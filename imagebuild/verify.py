"""Verify: boot an image (or a base image plus the user-data) in QEMU and run the in-guest check.

The image itself is never written: the guest runs on a throwaway copy-on-write overlay. A fresh
NoCloud seed carries the check (imagebuild/guest/check.py), what it must find (expected.json,
rendered from the spec), and a registry-free test image; results come back over a dedicated
virtio-serial port, the serial console is saved for people.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from . import qemu, render
from .digest import sha256_file
from .errors import ImagebuildError
from .progress import step
from .render import userdata
from .render.templating import render_template
from .spec import Spec

VERIFY_DIR = f"{render.GUEST_DIR}/verify"
SEED_MOUNT = "/run/imagebuild-seed"
TEST_IMAGE = "test-image.tar"


def _seed_files(spec: Spec, *, install: bool) -> tuple[bytes, str]:
    """(user-data, instance-id) of a verify boot: the check and what it expects, a script that runs
    it and reports over the results port, then power-off. *install* first installs the spec the
    way its own user-data does (the user-data path)."""
    instance_id = f"imagebuild-verify-{uuid.uuid4().hex[:12]}"
    files = render.guest_files(spec)
    staged = [(f"{render.GUEST_DIR}/{rel}", f.content, f.mode) for rel, f in files.items()] if install else []
    staged += [(f"{VERIFY_DIR}/{name}", files[name].content, files[name].mode) for name in ("check.py", "expected.json")]
    run_check = render_template("run-check.sh.j2", verify_dir=VERIFY_DIR, seed_mount=SEED_MOUNT,
                                results_port=qemu.RESULTS_PORT, test_image=TEST_IMAGE, instance_id=instance_id)
    staged.append((f"{VERIFY_DIR}/run-check.sh", run_check.encode(), 0o755))
    commands = ([render.INSTALL_COMMAND] if install else []) + [["bash", f"{VERIFY_DIR}/run-check.sh"],
                                                                 ["systemctl", "poweroff"]]
    return userdata.cloud_config(staged, commands).encode(), instance_id


def _boot(disk: Path, spec: Spec, user_data: bytes, instance_id: str, test_image: Path, log_dir: Path,
          label: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="imagebuild-verify-"))
    try:
        overlay = qemu.overlay(disk, work)
        seed = qemu.seed_iso(work / "seed.iso", user_data,
                             f"instance-id: {instance_id}\nlocal-hostname: imagebuild-verify\n".encode(),
                             {TEST_IMAGE: test_image.read_bytes()})
        serial_log = log_dir / f"{label}.serial.log"
        step(f"verify {label}: booting {disk.name} (timeout {spec.verify.timeout}s)")
        result = qemu.boot(overlay, seed, serial_log=serial_log, timeout=spec.verify.timeout,
                           accel=spec.image.accelerator, done_marker=qemu.DONE_PREFIX)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _report(result, serial_log)


def _report(result, serial_log: Path) -> dict:
    records = []
    for line in result.results:
        try:
            record = json.loads(line)
        except ValueError:   # a console copy broken by a kernel message; DONE's counts still hold
            continue
        if isinstance(record, dict):
            records.append(record)
    checks = [r for r in records if "check" in r]
    done = next((r for r in records if "passed" in r and "failed" in r), None)
    if done is None:
        raise ImagebuildError(f"the guest never reported its check summary; serial log: {serial_log}\n"
                              + qemu.tail(serial_log))
    kernel_at = result.kernel_at
    active = done.get("containerd_active_at_s") or None
    timings = {
        "kernel_s": round(kernel_at, 1) if kernel_at is not None else None,
        "containerd_active_s": round(kernel_at + active, 1) if kernel_at is not None and active else None,
        "check_done_s": round(result.done_at, 1),
    }
    failed = [c["check"] for c in checks if not c["ok"]]
    return {"passed": not failed and done["failed"] == 0 and bool(checks), "failed": failed,
            "checks": checks, "summary": done, "timings": timings, "serial_log": str(serial_log)}


def _test_image(work_dir: Path) -> Path:
    from .debian_artifacts import test_oci_image

    path = work_dir / TEST_IMAGE
    if not path.exists():
        test_oci_image(path)
    return path


def verify_image(image: Path, spec: Spec, *, log_dir: str | None = None) -> dict:
    """Boot *image* on an overlay with the check of *spec*; writes verify.json beside the image."""
    image = image.resolve()
    if not image.is_file():
        raise ImagebuildError(f"image {image} does not exist")
    out_dir = Path(log_dir).resolve() if log_dir else image.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    image_sha = sha256_file(image)
    user_data, instance_id = _seed_files(spec, install=False)
    from .paths import cache_dir

    report = _boot(image, spec, user_data, instance_id, _test_image(cache_dir("test-image")), out_dir,
                   image.stem + ".verify")
    if sha256_file(image) != image_sha:
        raise ImagebuildError(f"{image} changed during verify; it must never be written")
    return write_image_report(out_dir, report, image, image_sha, spec.spec_hash)


def write_image_report(out_dir: Path, report: dict, image: Path, image_sha: str, spec_hash: str) -> dict:
    """Complete a boot's report (`_report`) for *image* and write it as out_dir/verify.json."""
    report = report | {"image": str(image), "image_sha256": image_sha, "spec_hash": spec_hash, "mode": "image"}
    render.write_file_atomic(out_dir / "verify.json", (json.dumps(report, indent=2) + "\n").encode())
    return report


def verify_user_data(spec: Spec, *, base: str | None = None, log_dir: str | None = None) -> dict:
    """Boot the plain base image with the spec's user-data, then run the same check."""
    from .bake import resolve_base
    from .paths import cache_dir

    source, _ = resolve_base(spec, base)
    out_dir = Path(log_dir or tempfile.mkdtemp(prefix="imagebuild-verify-ud-")).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    user_data, instance_id = _seed_files(spec, install=True)
    report = _boot(Path(source), spec, user_data, instance_id, _test_image(cache_dir("test-image")), out_dir,
                   "user-data.verify")
    report |= {"base_image": source, "spec_hash": spec.spec_hash, "mode": "user-data",
               "user_data_bytes": len(render.user_data(spec))}
    render.write_file_atomic(out_dir / "verify-user-data.json", (json.dumps(report, indent=2) + "\n").encode())
    return report


def print_report(report: dict, *, as_json: bool = False, stream=sys.stdout) -> None:
    if as_json:
        stream.write(json.dumps(report, indent=2) + "\n")
        return
    rows = [(c["check"], "ok" if c["ok"] else "FAIL", json.dumps(c["expected"]), json.dumps(c["actual"]))
            for c in report["checks"]]
    widths = [max(len(r[i]) for r in rows + [("check", "", "expected", "actual")]) for i in range(4)]
    widths = [min(w, 60) for w in widths]
    header = ("check", "", "expected", "actual")
    for row in [header] + rows:
        stream.write("  ".join(cell[:60].ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n")
    t = report["timings"]
    verdict = "PASSED" if report["passed"] else f"FAILED: {', '.join(report['failed']) or 'no checks ran'}"
    stream.write(f"\n{verdict} ({len(rows)} checks). QEMU start -> kernel {t['kernel_s']}s, "
                 f"containerd active {t['containerd_active_s']}s, check done {t['check_done_s']}s. "
                 f"Serial log: {report['serial_log']}\n")
