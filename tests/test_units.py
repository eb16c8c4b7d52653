"""The systemd unit (tarball installs) and drop-ins (package installs), checked by
`systemd-analyze verify`, plus the modules-load.d and sysctl.d files.

How the verify is made honest: `systemd-analyze verify` refuses a unit whose ExecStart binary does
not exist, and with `--root` it loads every unit it needs (sysinit.target, ...) from that root.
So each test builds a small root: this machine's own systemd unit directory (the targets the unit
orders itself against), the REAL containerd binary of the spec's family at the unit's ExecStart
path (tarball: /usr/local/bin/containerd; package: /usr/bin/containerd beside the Debian package's
own containerd.service, which the drop-ins modify), and the rendered files at their payload
paths. Nothing is stubbed. systemd-analyze prints its complaints (unknown keys, bad values) but
still exits 0 for many of them, so the tests require both exit 0 and silence.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from devtools import debian_artifacts, families
from imagebuild import render
from imagebuild.render import expected
from tests.support import FAMILY_VERSIONS, PACKAGE_VERSIONS, spec_of

SYSTEM_UNITS = Path("/usr/lib/systemd/system")
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


def _package_unit(family: str) -> Path:
    root = debian_artifacts.fetch(family)
    for sub in ("lib/systemd/system", "usr/lib/systemd/system"):
        if (root / sub / "containerd.service").is_file():
            return root / sub / "containerd.service"
    raise AssertionError(f"no containerd.service in the Debian package of {family}")


def _make_root(tmp_path: Path, spec, payload: dict, package_unit: Path | None = None) -> Path:
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    binary = root / spec.unit.exec_start.split()[0].lstrip("/")
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(families.binary(spec.containerd.family), binary)
    if package_unit is not None:
        shutil.copy2(package_unit, root / "usr/lib/systemd/system/containerd.service")
    for path, f in payload.items():
        if path.startswith("/etc/systemd/"):
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.content)
    return root


def _verify(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", "--generators=no", f"--root={root}",
                           "containerd.service"], capture_output=True, text=True, timeout=60)


def _assert_clean(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr.strip() == "", \
        f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"


LIST_KEYS = {"ExecStart", "ExecStartPre", "After", "WantedBy"}


def _unit_values(*texts: str) -> dict[str, list[str]]:
    """Key -> values as systemd merges the files in order: list settings accumulate (an empty
    assignment resets them), every other setting takes the last value."""
    values: dict[str, list[str]] = {}
    for text in texts:
        for line in text.splitlines():
            if "=" not in line or line.startswith(("#", ";", "[")):
                continue
            key, value = line.split("=", 1)
            if key in LIST_KEYS:
                values[key] = [] if value == "" else values.get(key, []) + [value]
            else:
                values[key] = [value]
    return values


@pytest.mark.builds
@pytest.mark.parametrize("family", FAMILY_VERSIONS)
def test_tarball_unit_verifies(tmp_path, family):
    spec = spec_of({"containerd": {"version": FAMILY_VERSIONS[family]}})
    payload = render.payload(spec)
    assert "/etc/systemd/system/containerd.service" in payload
    assert not [p for p in payload if "containerd.service.d" in p]
    _assert_clean(_verify(_make_root(tmp_path, spec, payload)))
    values = _unit_values(payload["/etc/systemd/system/containerd.service"].content.decode())
    for prop, value in expected.unit_expectations(spec).items():
        assert values[prop] == [value], prop
    assert values["ExecStart"] == ["/usr/local/bin/containerd"]
    assert values["ExecStartPre"] == ["-/sbin/modprobe overlay"]
    assert values["WantedBy"] == ["multi-user.target"]


def test_tuned_unit_with_custom_exec_start_verifies(tmp_path):
    spec = spec_of({"unit": {"exec_start": "/opt/containerd/bin/containerd --log-level debug",
                             "description": 'containerd "tuned" `golden` (100 percent)',
                             "exec_start_pre": ["-/sbin/modprobe overlay", "-/sbin/modprobe br_netfilter"],
                             "after": ["network-online.target", "local-fs.target"],
                             "kill_mode": "mixed", "restart": "on-failure", "restart_sec": 10,
                             "limit_nofile": "1048576", "tasks_max": "4096", "oom_score_adjust": -500}})
    payload = render.payload(spec)
    _assert_clean(_verify(_make_root(tmp_path, spec, payload)))
    values = _unit_values(payload["/etc/systemd/system/containerd.service"].content.decode())
    assert values["Description"] == ['containerd "tuned" `golden` (100 percent)']
    assert values["ExecStart"] == ["/opt/containerd/bin/containerd --log-level debug"]
    assert values["ExecStartPre"] == ["-/sbin/modprobe overlay", "-/sbin/modprobe br_netfilter"]
    assert values["After"] == ["network-online.target local-fs.target"]
    for prop, value in expected.unit_expectations(spec).items():
        assert values[prop] == [value], prop


@pytest.mark.parametrize("family", PACKAGE_VERSIONS)   # a package install: the families Debian packages
def test_package_dropins_verify_against_the_debian_unit(tmp_path, family):
    spec = spec_of({"containerd": {"version": FAMILY_VERSIONS[family], "install": {
        "method": "package", "package": {"version": PACKAGE_VERSIONS[family]}}}})
    payload = render.payload(spec)
    dropins = sorted(p for p in payload if "/containerd.service.d/" in p)
    assert [Path(p).name for p in dropins] == [f"{n}.conf" for n in render.DROPINS]
    assert "/etc/systemd/system/containerd.service" not in payload
    package_unit = _package_unit(family)
    root = _make_root(tmp_path, spec, payload, package_unit)
    _assert_clean(_verify(root))
    # The effective values: the package's unit, then the drop-ins in name order.
    values = _unit_values(package_unit.read_text(), *(payload[p].content.decode() for p in dropins))
    assert values["ExecStart"] == ["/usr/bin/containerd"]
    assert values["ExecStartPre"] == ["-/sbin/modprobe overlay"]
    for prop, value in expected.unit_expectations(spec).items():
        assert values[prop] == [value], prop


def test_verify_reads_the_dropins(tmp_path):
    """Sanity: without the `ExecStart=` reset the drop-in adds a second ExecStart, which verify refuses;
    so the clean verifies above did read the drop-ins."""
    spec = spec_of({"containerd": {"install": {"method": "package", "package": {"version": PACKAGE_VERSIONS["1.6"]}}}})
    payload = render.payload(spec)
    root = _make_root(tmp_path, spec, payload, _package_unit("1.6"))
    exec_dropin = root / "etc/systemd/system/containerd.service.d/10-exec.conf"
    exec_dropin.write_text(exec_dropin.read_text().replace("ExecStart=\n", "", 1))
    proc = _verify(root)
    assert proc.returncode != 0 and "more than one ExecStart" in proc.stderr


def test_modules_load_and_sysctl_files():
    spec = spec_of({"system": {"profile": "none", "modules": ["overlay", "br_netfilter", "ip_vs"],
                               "sysctls": {"net.ipv4.ip_forward": 1, "vm.max_map_count": 262144,
                                           "net.ipv4.ip_local_port_range": "32768 60999",
                                           "kernel.core_pattern": "/var/crash/core"}}})
    payload = render.payload(spec)
    modules = payload["/etc/modules-load.d/containerd.conf"].content.decode().splitlines()
    assert modules[0].startswith("# Managed by imagebuild")
    assert modules[1:] == ["overlay", "br_netfilter", "ip_vs"]
    sysctl = payload[render.SYSCTL_PATH].content.decode().splitlines()
    assert sysctl[0].startswith("# Managed by imagebuild")
    # sysctl.d syntax: `key = value`, one a line, in spec order (later lines win in sysctl.d).
    parsed = [tuple(part.strip() for part in line.split("=", 1)) for line in sysctl[1:]]
    assert parsed == [("net.ipv4.ip_forward", "1"), ("vm.max_map_count", "262144"),
                      ("net.ipv4.ip_local_port_range", "32768 60999"), ("kernel.core_pattern", "/var/crash/core")]
    assert render.SYSCTL_PATH == "/etc/sysctl.d/99-containerd.conf"
    for path in ("/etc/modules-load.d/containerd.conf", render.SYSCTL_PATH):
        assert payload[path].mode == 0o644 and payload[path].content.endswith(b"\n")
