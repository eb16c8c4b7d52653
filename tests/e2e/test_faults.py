"""Faults in the slow paths: each leaves no QEMU behind, no half-written output, and says why."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from imagebuild.build import bake
from imagebuild.digest import sha256_file
from imagebuild.errors import ImagebuildError
from imagebuild.spec import parse
from imagebuild.verify.boot import verify_image
from tests.e2e.test_bake_verify import with_changes
from tests.support import qemu_processes_using

pytestmark = pytest.mark.e2e




def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


# 200 s in CI (2026-12-02): over make test's budget; `make test-extra`.
@pytest.mark.extra
def test_two_verifies_at_once_share_nothing(golden_image, golden_spec, tmp_path):
    """The same image booted twice at once: no fixed ports or scratch paths, each gets its own verdict."""
    drifted = with_changes(golden_spec, config__oom_score=-500, unit__oom_score_adjust=-500)
    before = sha256_file(golden_image)
    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(verify_image, golden_image, golden_spec, log_dir=str(tmp_path / "good"))
        bad = pool.submit(verify_image, golden_image, drifted, log_dir=str(tmp_path / "drifted"))
        good, bad = good.result(), bad.result()
    assert good["passed"], [c for c in good["checks"] if not c["ok"]]
    assert not bad["passed"]
    assert {"config.oom_score", "unit.OOMScoreAdjust", "process.oom_score_adj"} <= set(bad["failed"])
    by_name = {c["check"]: c for c in bad["checks"]}
    assert (by_name["config.oom_score"]["expected"], by_name["config.oom_score"]["actual"]) == (-500, -999)
    assert sha256_file(golden_image) == before


def test_qemu_killed_mid_verify(golden_image, golden_spec, tmp_path):
    errors: list[BaseException] = []

    def run():
        try:
            verify_image(golden_image, golden_spec, log_dir=str(tmp_path))
        except BaseException as exc:   # the test inspects it
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    # The overlay lives in a private scratch dir; find this verify's QEMU by its serial log path.
    pid = next(iter(wait_for(lambda: qemu_processes_using(tmp_path), 60, "QEMU to start")))
    time.sleep(5)
    os.kill(pid, signal.SIGKILL)
    worker.join(120)
    assert not worker.is_alive()
    assert errors and isinstance(errors[0], ImagebuildError), errors
    assert "serial" in str(errors[0]).lower()
    assert not (tmp_path / "verify.json").exists(), "a verify that did not finish writes no verdict"
    assert qemu_processes_using(tmp_path) == {}


def test_bake_interrupted_leaves_nothing(golden_spec, base_image, tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(golden_spec.document))
    out = tmp_path / "out"
    # the bake's temporary directory: it must stay empty (short: Packer's plugin sockets go there)
    tmp = Path(tempfile.mkdtemp(prefix="bake-tmp-"))
    proc = subprocess.Popen([sys.executable, "-m", "imagebuild", "bake", str(spec_file), "-o", str(out),
                             "--base", str(base_image)], stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "TMPDIR": str(tmp)})
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        try:
            wait_for(lambda: any("Waiting for SSH" in line or "Connected to SSH" in line for line in seen), 240,
                     "packer to start the build VM")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the bake printed:\n{''.join(seen[-15:])}") from None
        assert qemu_processes_using(tmp_path), "the build VM should be running"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(180) == 143   # 128 + SIGTERM
    finally:   # a failed test must not leave its bake running
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(180)
        left = sorted(p.name for p in tmp.iterdir())
        shutil.rmtree(tmp)
    reader.join(10)
    assert any("interrupted" in line for line in seen), seen[-5:]
    wait_for(lambda: not qemu_processes_using(tmp_path), 30, "the build VM to go away")
    assert not out.exists() or not list(out.glob("*.qcow2"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "scratch left behind"
    assert left == [], "temporary files left behind"


def test_bake_on_a_full_disk_fails_cleanly(golden_spec, base_image, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(small)], check=True)
    try:
        with pytest.raises(ImagebuildError) as raised:
            bake.bake(golden_spec, small / "out", base=str(base_image))
        assert "packer build failed" in str(raised.value)
        assert not list(small.rglob("*.qcow2"))
        assert [p.name for p in small.iterdir() if p.name.startswith(".")] == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


# 102 s in CI: a bake up to the failing install (the install script's own checksum refusal is a fast
# test, tests/test_install_upgrade.py); over make test's budget, `make test-extra`.
@pytest.mark.extra
def test_wrong_tarball_checksum_fails_the_bake_loudly(golden_spec, base_image, tmp_path):
    doc = yaml.safe_load(yaml.safe_dump(golden_spec.document))
    doc["containerd"]["install"]["tarball"]["sha256"] = "0" * 64
    bad = parse(yaml.safe_dump(doc))
    out = tmp_path / "out"
    with pytest.raises(ImagebuildError) as raised:
        bake.bake(bad, out, base=str(base_image))
    message = str(raised.value)
    assert "sha256 mismatch" in message and "0" * 64 in message
    assert not list(out.glob("*.qcow2"))
    assert (out / f"{bad.name}.packer-failed.log").exists()
    assert [p.name for p in out.iterdir()] == [f"{bad.name}.packer-failed.log"]
    assert qemu_processes_using(tmp_path) == {}
