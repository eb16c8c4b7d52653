"""verify's reading of a boot's report (fast; the booting itself is in tests/e2e)."""
from pathlib import Path

import pytest

from imagebuild import qemu, verify
from imagebuild.errors import ImagebuildError


def _result(lines):
    return qemu.BootResult(
        name="g", command=[], accel="tcg", serial_log=Path("s"), results_log=Path("r"),
        started_at=0.0, kernel_s=2.0, cloud_init_final_s=None, done_s=50.0, done_line=None,
        markers={}, exited_s=None, returncode=None, powered_off=False,
        lines=[qemu.Line(10.0 + i, source, text) for i, (source, text) in enumerate(lines)])


def test_report_from_the_console_when_the_port_lost_the_race(tmp_path):
    report = verify._report(_result([
        ("results", 'IMAGEBUILD-RESULT {"check": "a", "ok": true, "expected": 1, "actual": 1}'),
        ("console", '[ 9.1] cloud-init[1]: IMAGEBUILD-RESULT {"check": "a", "ok": true, "expected": 1, "actual": 1}'),
        ("console", '[ 9.2] cloud-init[1]: IMAGEBUILD-RESULT {"check": "b", "ok": true, "expected": 2, "actual": 2}'),
        ("console", '[ 9.3] cloud-init[1]: IMAGEBUILD-DONE {"passed": 2, "failed": 0, "containerd_active_at_s": 30.5}'),
    ]), tmp_path / "serial.log")
    assert report["passed"] is True
    assert [c["check"] for c in report["checks"]] == ["a", "b"]
    assert report["timings"] == {"kernel_s": 2.0, "containerd_active_s": 32.5, "check_done_s": 50.0}


def test_a_garbled_console_record_cannot_hide_a_failure(tmp_path):
    # The failing record was broken by a kernel message; DONE's count still fails the verify.
    report = verify._report(_result([
        ("console", 'IMAGEBUILD-RESULT {"check": "a", "ok": true, "expected": 1, "actual": 1}'),
        ("console", 'IMAGEBUILD-RESULT {"check": "b", "ok": fa[  9.9] random: crng init done'),
        ("console", 'IMAGEBUILD-RESULT 42'),
        ("console", 'IMAGEBUILD-DONE {"passed": 1, "failed": 1}'),
    ]), tmp_path / "serial.log")
    assert report["passed"] is False
    assert [c["check"] for c in report["checks"]] == ["a"]


def test_no_summary_is_an_error_naming_the_serial_log(tmp_path):
    log = tmp_path / "serial.log"
    log.write_text("[ 1.0] Linux version 6.1\n")
    with pytest.raises(ImagebuildError, match="never reported its check summary.*serial.log"):
        verify._report(_result([("results", 'IMAGEBUILD-RESULT {"check": "a", "ok": true}')]), log)
