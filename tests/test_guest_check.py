"""The in-guest check's own logic, run against this machine's real tools where it can be."""
from __future__ import annotations

import io
import json
import shutil
import subprocess

import pytest

from devtools import debian_artifacts
from imagebuild.guest import boot_checks, check
from imagebuild.render.templating import shipped_dir


@pytest.mark.parametrize("reported, ok", [
    ("v1.6.20", True), ("1.6.20~ds1", True), ("2.1.9+unknown", True), ("1.6.20-1", True),
    ("1.6.200", False), ("1.6.2", False), ("v1.7.20", False),
])
def test_version_matches_only_the_same_release(reported, ok):
    expected = "2.1.9" if reported.startswith("2") else "1.6.20"
    assert check.version_matches(expected, reported) is ok


@pytest.mark.parametrize("reported, ok", [
    ("v1.6.20", True), ("1.6.20", True),
    ("1.6.20~ds1", False), ("1.6.20-1", False), ("v1.6.20-dirty", False), ("1.6.200", False),
])
def test_a_release_tarball_matches_only_upstreams_own_version(reported, ok):
    """A tarball install is upstream's build: Debian's `1.6.20~ds1` in release-shaped files is not it."""
    assert check.version_matches("1.6.20", reported, exact=True) is ok


def _results(monkeypatch, exp: dict, func) -> list[dict]:
    out = io.StringIO()
    monkeypatch.setattr(check.sys, "stdout", out)
    func(check.Reporter(None), exp)
    return [json.loads(line.split(" ", 1)[1]) for line in out.getvalue().splitlines()]


def test_package_checks_read_the_real_dpkg_database(monkeypatch):
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "bash"], capture_output=True, text=True,
                             check=True).stdout
    good = _results(monkeypatch, {"package": {"name": "bash", "version": version, "hold": False}}, check.package_checks)
    assert [(r["check"], r["ok"]) for r in good] == [("package.version", True), ("package.hold", True)]
    bad = _results(monkeypatch, {"package": {"name": "bash", "version": version + "x", "hold": True}},
                   check.package_checks)
    assert [(r["check"], r["ok"], r["actual"]) for r in bad] == [
        ("package.version", False, version), ("package.hold", False, "not held")]


def test_tarball_installs_have_no_package_checks(monkeypatch):
    assert _results(monkeypatch, {"package": None}, check.package_checks) == []


def test_cni_check_runs_the_real_loopback_plugin(monkeypatch):
    _, plugins = debian_artifacts.cni_plugins()
    [result] = _results(monkeypatch, {"cni_plugins_dir": str(plugins)}, check.cni_checks)
    assert result["check"] == "cni.loopback" and result["ok"], result
    assert "1.0.0" in result["actual"]


def test_cni_check_fails_on_a_missing_or_broken_plugin(monkeypatch, tmp_path):
    [missing] = _results(monkeypatch, {"cni_plugins_dir": str(tmp_path)}, check.cni_checks)
    assert not missing["ok"] and "FileNotFoundError" in missing["actual"]
    broken = tmp_path / "loopback"
    broken.write_text("#!/bin/sh\necho 'not a plugin' >&2\nexit 1\n")
    broken.chmod(0o755)
    [failed] = _results(monkeypatch, {"cni_plugins_dir": str(tmp_path)}, check.cni_checks)
    assert not failed["ok"] and failed["actual"] == "exit 1: not a plugin"


def test_no_cni_plugins_no_cni_check(monkeypatch):
    assert _results(monkeypatch, {"cni_plugins_dir": None}, check.cni_checks) == []


def test_files_mentioning_finds_the_build_mac_in_any_case(tmp_path):
    (tmp_path / "udev").mkdir()
    rule = tmp_path / "udev" / "70-persistent-net.rules"
    rule.write_text('SUBSYSTEM=="net", ATTR{address}=="52:54:00:12:34:56", NAME="ens3"\n')
    (tmp_path / "eni").mkdir()
    (tmp_path / "eni" / "50-cloud-init").write_text("auto ens5\niface ens5 inet dhcp\n")
    dirs = (str(tmp_path / "udev"), str(tmp_path / "eni"), str(tmp_path / "absent"))
    assert boot_checks.files_mentioning(["52:54:00:12:34:56"], dirs) == [str(rule)]
    assert boot_checks.files_mentioning(["52:54:00:12:34:56".upper()], dirs) == [str(rule)]
    assert boot_checks.files_mentioning(["0a:00:00:00:00:01"], dirs) == []
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.1.1 imagebuild-build\n")
    assert boot_checks.files_mentioning(["imagebuild-build"], (str(hosts), str(tmp_path / "hostname"))) == [str(hosts)]


def test_instance_data_reads_cloud_inits_v1_keys(tmp_path):
    path = tmp_path / "instance-data.json"
    path.write_text(json.dumps({"v1": {"cloud_name": "aws", "platform": "ec2", "instance_id": "i-0abc"}}))
    assert boot_checks.instance_data(str(path))["platform"] == "ec2"
    assert boot_checks.instance_data(str(tmp_path / "missing.json")) == {}
    path.write_text("not json")
    assert boot_checks.instance_data(str(path)) == {}


def test_key_holders_match_type_and_key_not_comment(tmp_path):
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey verify@host"
    ssh = tmp_path / "debian" / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "authorized_keys").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey other-comment\n")
    other = tmp_path / "admin" / ".ssh"
    other.mkdir(parents=True)
    (other / "authorized_keys").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOther x\n")
    assert boot_checks.key_holders(key, str(tmp_path)) == ["debian"]
    assert boot_checks.key_holders("ssh-ed25519 AAAAnope c", str(tmp_path)) == []


def test_ec2_checks_fail_on_another_platform(monkeypatch, tmp_path):
    monkeypatch.setattr(boot_checks, "instance_data", lambda: {"cloud_name": "nocloud", "platform": "nocloud",
                                                         "instance_id": "imagebuild-verify-1"})
    monkeypatch.setattr(boot_checks, "key_holders", lambda key: [])
    out = io.StringIO()
    monkeypatch.setattr(check.sys, "stdout", out)
    boot_checks.ec2_checks(check.Reporter(None), {"instance_id": "i-0abc", "public_key": "ssh-ed25519 AAAA x"})
    results = {r["check"]: r for r in (json.loads(line.split(" ", 1)[1]) for line in out.getvalue().splitlines())}
    assert not results["ec2.datasource"]["ok"] and results["ec2.datasource"]["actual"]["platform"] == "nocloud"
    assert not results["ec2.instance_id"]["ok"] and not results["ec2.public_key"]["ok"]


def test_boot_checks_missing_fail_loudly(monkeypatch):
    monkeypatch.setitem(check.sys.modules, "boot_checks", None)     # import fails
    out = io.StringIO()
    monkeypatch.setattr(check.sys, "stdout", out)
    check.boot_checks(check.Reporter(None), {"platform": "ec2"})
    [record] = [json.loads(line.split(" ", 1)[1]) for line in out.getvalue().splitlines()]
    assert record["check"] == "boot.checks" and not record["ok"]


def test_boot_checks_import_beside_check_py_as_in_the_guest(tmp_path):
    """In the guest both files sit in one directory and imagebuild is not installed."""
    import shutil
    from pathlib import Path

    guest = Path(check.__file__).parent
    for name in ("check.py", "boot_checks.py"):
        shutil.copy(guest / name, tmp_path / name)
    probe = "import sys, check; sys.modules['__main__'] = check; import boot_checks; print(boot_checks.run.__module__)"
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); {probe}"
    done = subprocess.run(["/usr/bin/python3", "-I", "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "check"


def test_tool_checks_read_the_real_dpkg_database_and_run_the_tool(monkeypatch, tmp_path):
    """The profile's tools: installed per dpkg, and their probe command runs; a missing package and a
    failing tool are both caught."""
    good = _results(monkeypatch, {"packages": [{"name": "bash", "probe": ["bash", "--version"]}]}, check.tool_checks)
    assert [(r["check"], r["ok"]) for r in good] == [("tool.bash.package", True), ("tool.bash.runs", True)]
    broken = tmp_path / "broken-tool"
    broken.write_text("#!/bin/sh\necho 'cannot run' >&2\nexit 3\n")
    broken.chmod(0o755)
    bad = _results(monkeypatch, {"packages": [{"name": "imagebuild-no-such-package", "probe": [str(broken)]}]},
                   check.tool_checks)
    assert [(r["check"], r["ok"], r["actual"]) for r in bad] == [
        ("tool.imagebuild-no-such-package.package", False, "<not installed>"),
        ("tool.imagebuild-no-such-package.runs", False, "exit 3: cannot run")]
    missing = _results(monkeypatch, {"packages": [{"name": "bash", "probe": ["imagebuild-no-such-tool"]}]},
                       check.tool_checks)
    assert missing[1]["actual"] == "exit 127: imagebuild-no-such-tool: not found"


def test_the_worker_profile_expects_its_tools_and_none_expects_nothing():
    from imagebuild import render
    from tests.support import spec_of

    def expected_packages(spec):
        return json.loads(render.guest_files(spec)["expected.json"].content)["packages"]

    worker = expected_packages(spec_of({}))
    assert [p["name"] for p in worker] == ["conntrack", "socat", "ebtables"]
    assert all(p["probe"] and p["probe"][0] == p["name"] for p in worker)
    assert expected_packages(spec_of({"system": {"profile": "none"}})) == []


def _records(monkeypatch, fn) -> dict:
    out = io.StringIO()
    monkeypatch.setattr(check.sys, "stdout", out)
    fn(check.Reporter(None))
    return {r["check"]: r for r in (json.loads(line.split(" ", 1)[1]) for line in out.getvalue().splitlines())}


@pytest.mark.parametrize("expected, present, ok", [
    ("uefi", True, True), ("bios", False, True),
    ("uefi", False, False),     # a hybrid image that came up under SeaBIOS where OVMF was asked for
    ("bios", True, False),
])
def test_firmware_check_reads_the_efi_platform_size(monkeypatch, tmp_path, expected, present, ok):
    size = tmp_path / "efi" / "fw_platform_size"
    if present:
        size.parent.mkdir()
        size.write_text("64\n")
    records = _records(monkeypatch, lambda rep: boot_checks.firmware_check(rep, {"firmware": expected}, str(size)))
    record = records["boot.firmware"]
    assert record["ok"] is ok and record["expected"] == expected
    assert record["actual"].startswith("uefi (64-bit" if present else "bios (no ")


@pytest.mark.parametrize("manifest, recorded, ok", [
    ("uefi", "uefi", True), ("bios", "bios", True),
    ("uefi", "bios", False),    # the bake asked Packer for OVMF and its build VM came up under SeaBIOS
    ("bios", None, False),      # nothing recorded: an image whose hygiene.sh predates the record
])
def test_build_firmware_check_compares_the_manifest_with_what_the_build_vm_recorded(monkeypatch, manifest,
                                                                                   recorded, ok):
    facts = {"firmware": recorded} if recorded else {}
    records = _records(monkeypatch, lambda rep: boot_checks.build_firmware_check(
        rep, {"build_firmware": manifest}, facts))
    record = records["boot.build_firmware"]
    assert record["ok"] is ok and record["expected"] == manifest
    assert record["actual"] == (recorded or "<not recorded in build-facts.json>")


def test_hygiene_records_the_build_vms_firmware_in_build_facts(tmp_path):
    """hygiene.sh's own lines, up to the record it writes, run here: valid JSON with the firmware this
    machine booted under (what the guest's /sys/firmware/efi says)."""
    script = (shipped_dir("packer") / "hygiene.sh").read_text()
    head = script[:script.index('> "$STATE_DIR/build-facts.json"') + len('> "$STATE_DIR/build-facts.json"')]
    assert 'STATE_DIR=/var/lib/imagebuild' in head
    head = head.replace("STATE_DIR=/var/lib/imagebuild", f"STATE_DIR={tmp_path}")
    subprocess.run(["bash", "-c", head], check=True)
    facts = json.loads((tmp_path / "build-facts.json").read_text())
    efi = subprocess.run(["test", "-d", "/sys/firmware/efi"]).returncode == 0
    assert facts["firmware"] == ("uefi" if efi else "bios")


MIB = 2**20
GIB = 2**30


@pytest.mark.parametrize("disk, start, size, fs, ok", [
    # an MBR image (a BIOS-only base of your own): root at 1 MiB to the disk's end
    (8 * GIB, MIB, 8 * GIB - MIB, 8 * GIB - MIB, True),
    # Debian 13 GPT hybrid: root after the 128 MiB ESP, ending before the backup GPT (the groundwork's
    # verify: 4 GiB disk, 4160732672-byte partition) — the old size-only comparison failed this one
    (4 * GIB, 128 * MIB, 4160732672, 4160729088, True),
    # not grown: the partition still ends where the 3 GiB base image's did
    (8 * GIB, 128 * MIB, 3 * GIB - 128 * MIB - MIB, 3 * GIB - 128 * MIB - MIB, False),
    # partition grown, filesystem not
    (8 * GIB, 128 * MIB, 8 * GIB - 128 * MIB - 33 * 512, 3 * GIB, False),
])
def test_rootfs_grown_compares_the_partitions_end_with_the_disk(disk, start, size, fs, ok):
    actual, grown = boot_checks.rootfs_grown(disk, start, size, fs)
    assert grown is ok
    assert f"partition {start}..{start + size}" in actual


def test_dhcp_by_networkd_lease(tmp_path):
    leases = tmp_path / "leases"
    leases.mkdir()
    (leases / "2").write_text("# This is private data. Do not parse.\nADDRESS=10.0.2.15\nNETMASK=255.255.255.0\n")
    how, ok = boot_checks.dhcp_configured("ens2", "2", str(leases), str(tmp_path / "dhcp"), str(tmp_path / "eni"))
    assert ok and "networkd DHCP lease" in how and "10.0.2.15" in how
    # another interface's lease, or none at all: not DHCP
    how, ok = boot_checks.dhcp_configured("ens3", "3", str(leases), str(tmp_path / "dhcp"), str(tmp_path / "eni"))
    assert not ok and "no " + str(leases / "3") in how
    (leases / "4").write_text("# lease without an address\n")
    assert not boot_checks.dhcp_configured("ens4", "4", str(leases), str(tmp_path / "dhcp"), str(tmp_path / "eni"))[1]


def test_dhcp_by_ifupdown_needs_stanza_and_lease(tmp_path):
    eni, dhcp = tmp_path / "50-cloud-init", tmp_path / "dhcp"
    dhcp.mkdir()
    eni.write_text("auto ens2\niface ens2 inet dhcp\n")
    args = (str(tmp_path / "no-leases"), str(dhcp), str(eni))
    assert not boot_checks.dhcp_configured("ens2", "2", *args)[1]          # stanza, no lease
    (dhcp / "dhclient.ens2.leases").write_text("lease {}\n")
    how, ok = boot_checks.dhcp_configured("ens2", "2", *args)
    assert ok and "dhcp in" in how
    eni.write_text("auto ens2\niface ens2 inet static\n")
    assert not boot_checks.dhcp_configured("ens2", "2", *args)[1]          # lease, static stanza


@pytest.mark.builds
def test_a_configured_runtime_needs_its_shim_and_its_binary_on_the_machine(monkeypatch, tmp_path):
    """runtime.<name>.shim / .binary: the shim containerd starts for the runtime type (beside containerd or on
    systemd's PATH) and the binary the runtime names; a missing one fails, naming where it looked."""
    from devtools import upstream
    from imagebuild.render import expected
    from imagebuild.spec import from_document

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    release = upstream.containerd("1.7.24")
    for name in ("containerd", "containerd-shim-runc-v2"):   # upstream's real binaries
        shutil.copy2(release / "bin" / name, bin_dir / name)
    runtime_bin = tmp_path / "nvidia-container-runtime"
    runtime_bin.write_bytes((release / "bin" / "ctr").read_bytes())
    runtime_bin.chmod(0o755)
    spec = from_document({"config": {"runtimes": {
        "nvidia": {"binary_name": str(runtime_bin)},
        "runsc": {"runtime_type": "io.containerd.runsc.v1"}}}})
    exp = {"runtimes": expected.runtime_expectations(spec)}
    assert [r["shim"] for r in exp["runtimes"]] == ["containerd-shim-runc-v2", "containerd-shim-runsc-v1"]
    results = _results(monkeypatch, exp, lambda rep, e: check.runtime_checks(rep, e, search=(str(bin_dir),)))
    assert [(r["check"], r["ok"]) for r in results] == [
        ("runtime.nvidia.shim", True), ("runtime.nvidia.binary", True), ("runtime.runsc.shim", False)]
    assert str(bin_dir) in results[2]["actual"]            # gVisor's shim is not installed: named where looked
    runtime_bin.chmod(0o644)
    results = _results(monkeypatch, exp, lambda rep, e: check.runtime_checks(rep, e, search=(str(bin_dir),)))
    assert [(r["check"], r["ok"]) for r in results][:2] == [("runtime.nvidia.shim", True),
                                                           ("runtime.nvidia.binary", False)]


def test_extra_checks_are_told_the_phase(monkeypatch):
    """verify.checks see IMAGEBUILD_CHECK_PHASE (build: the bake's build VM or verify.on_boot; boot: a verify boot)."""
    exp = {"extra_checks": [{"name": "in-build", "run": 'test "$IMAGEBUILD_CHECK_PHASE" = build'}]}
    build = _results(monkeypatch, exp, lambda rep, e: check.extra_checks(rep, e, "build"))
    boot = _results(monkeypatch, exp, lambda rep, e: check.extra_checks(rep, e, "boot"))
    assert [(r["check"], r["ok"]) for r in build + boot] == [("extra.in-build", True), ("extra.in-build", False)]
