"""verify's reading of a boot's report (fast; the booting itself is in tests/e2e)."""
from pathlib import Path

import pytest

from imagebuild import render, vm
from imagebuild.errors import ImagebuildError
from imagebuild.verify import boot as verify


def _result(lines):
    return vm.BootResult(
        name="g", command=[], accel="tcg", serial_log=Path("s"), results_log=Path("r"),
        started_at=0.0, kernel_s=2.0, cloud_init_final_s=None, done_s=50.0, done_line=None,
        markers={}, exited_s=None, returncode=None, powered_off=False,
        lines=[vm.Line(10.0 + i, source, text) for i, (source, text) in enumerate(lines)])


def test_report_from_the_console_when_the_port_lost_the_race(tmp_path):
    report = verify._report(_result([
        ("results", 'IMAGEBUILD-RESULT {"check": "a", "ok": true, "expected": 1, "actual": 1}'),
        ("console", '[ 9.1] cloud-init[1]: IMAGEBUILD-RESULT {"check": "a", "ok": true, "expected": 1, "actual": 1}'),
        ("console", '[ 9.2] cloud-init[1]: IMAGEBUILD-RESULT {"check": "b", "ok": true, "expected": 2, "actual": 2}'),
        ("console", '[ 9.3] cloud-init[1]: IMAGEBUILD-DONE {"passed": 2, "failed": 0, "containerd_active_at_s": 30.5}'),
    ]), tmp_path / "serial.log")
    assert report["passed"] is True
    assert [c["check"] for c in report["checks"]] == ["a", "b"]
    assert report["timings"] == {"kernel_s": 2.0, "containerd_active_s": 32.5, "check_done_s": 50.0,
                                 "cri_ready_s": None}


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


def test_boot_facts_per_platform():
    ec2 = verify._boot_facts("ec2", "ssh-ed25519 AAAA k")
    assert ec2["platform"] == "ec2" and ec2["instance_id"].startswith("i-") and len(ec2["instance_id"]) == 19
    assert ec2["hostname"] == "ip-169-254-10-15" and ec2["public_key"] == "ssh-ed25519 AAAA k"
    nocloud = verify._boot_facts("nocloud", "")
    assert nocloud["hostname"] == verify.NOCLOUD_HOSTNAME and nocloud["mac"] != ec2["mac"]
    with pytest.raises(ImagebuildError, match="unknown platform 'gce'"):
        verify._boot_facts("gce", "")


def test_report_names():
    assert verify.report_name("nocloud") == "verify.json"
    assert verify.report_name("ec2") == "verify-ec2.json"
    assert verify.report_name("ec2", user_data=True) == "verify-user-data-ec2.json"


@pytest.mark.parametrize("platform, label", [("nocloud", "cidata"), ("ec2", "imagebuild")])
def test_verify_user_data_carries_the_boot_facts_and_mounts_its_disk(platform, label):
    import gzip
    import json

    import yaml

    from tests.support import spec_of

    boot = verify._boot_facts(platform, "ssh-ed25519 AAAA k")
    doc = yaml.safe_load(verify._seed_files(spec_of({}), install=False, boot=boot).decode())
    files = {f["path"]: f["content"] for f in doc["write_files"]}
    assert json.loads(files[f"{verify.VERIFY_DIR}/boot.json"]) == boot
    for name in ("boot_checks.py", *render.CHECK_FILES):                # on the seed disk: the user-data stays small
        assert f"{verify.VERIFY_DIR}/{name}" not in files
    run_check = files[f"{verify.VERIFY_DIR}/run-check.sh"]
    assert f'cp "$seed/boot_checks.py" {verify.VERIFY_DIR}/' in run_check
    assert f'cp "$seed/check.py" {verify.VERIFY_DIR}/' in run_check
    assert f'install -m 0600 "$seed/expected.json" {verify.VERIFY_DIR}/' in run_check
    assert f"/dev/disk/by-label/{label}" in run_check and f"--boot {verify.VERIFY_DIR}/boot.json" in run_check
    # The user-data path: the spec's own user-data keeps nearly all of EC2's 16 KB (the verify adds its boot
    # facts and run-check.sh; with check.py and expected.json in the user-data it added about 9 KB).
    spec = spec_of({"containerd": {"install": {"cni_plugins": {}}}, "proxy": {"https": "http://192.0.2.1:3128"}})
    own = len(gzip.compress(render.user_data(spec, compress=False), 9, mtime=0))
    verifying = len(gzip.compress(verify._seed_files(spec, install=True, boot=boot), 9, mtime=0))
    assert own < verifying <= own + 1536, (own, verifying)


def test_print_report_says_why_a_boot_failed():
    import io

    out = io.StringIO()
    verify.print_report({"passed": False, "failed": ["ec2.cloud_init_ran"], "reason": "cloud-init did not run",
                         "checks": [{"check": "ec2.cloud_init_ran", "ok": False, "expected": "x", "actual": "y"}],
                         "timings": {"kernel_s": 1.0, "containerd_active_s": None, "check_done_s": 9.0},
                         "serial_log": "s.log"}, stream=out)
    assert "FAILED: ec2.cloud_init_ran (cloud-init did not run)" in out.getvalue()
