"""gVisor works in a boot: a Debian 13 machine with containerd 2.3 LTS gets gVisor's runsc and its shim from the
spec (config.runtimes.runsc.install: downloaded by install.sh, sha256 pinned, like the containerd tarball) and
its runsc.toml (config.runtimes.runsc.config, at config_path), by the user-data path; the guest's CRI check
starts a pod sandbox with runtime handler runsc (cri.runtime.runsc), and the pod's process is the runsc the
spec installed (cri.runtime.runsc.process: gVisor's sandbox, not the pause program under runc).

The binaries are gVisor's own release, built from the Go module proxy at the `go` branch's commit of that
release (devtools.gvisor), served under their own names by the lab's download server.

Why the shim needs the TypeUrl: the same boot with the runtime's options as imagebuild rendered them before
(ConfigPath without TypeUrl; TypeUrl = "" through config.overrides is what containerd sends when none is
written) must fail cri.runtime.runsc with the shim's `unsupported option type`.

Not on the host: gVisor's shim sets its own oom_score_adj to -999 when it starts, which needs
CAP_SYS_RESOURCE (this test host lacks it), so the shim only runs in a guest.
"""
from __future__ import annotations

import hashlib
import time

import pytest
import yaml

from devtools import gvisor
from devtools.golden import GUEST_HOST, local_mirror
from devtools.serve import serve
from imagebuild.build import baseimage
from imagebuild.spec import parse
from imagebuild.verify.boot import verify_user_data

pytestmark = [pytest.mark.e2e, pytest.mark.extra]

RUNSC_TOML = "/etc/containerd/runsc.toml"
RUNTIME_OPTIONS = "plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runsc.options.TypeUrl"


def _spec(port: int, *, type_url: bool = True):
    files = gvisor.binaries()
    install = [{"url": f"http://{GUEST_HOST}:{port}/{name}", "insecure": True,
                "sha256": hashlib.sha256((files / name).read_bytes()).hexdigest()} for name in gvisor.BINARIES]
    doc = {"name": "gvisor-node", "containerd": {"version": "2.3.7"}, "system": {"profile": "none"},
           "image": {"os": "debian-13", "architecture": "amd64"},
           "config": {"imports": ["/etc/containerd/conf.d/*.toml"], "runtimes": {"runsc": {
               "runtime_type": "io.containerd.runsc.v1", "config_path": RUNSC_TOML,
               # The unit's systemd cgroup driver (config.systemd_cgroup): CRI hands runsc slice:prefix:id paths.
               "config": {"runsc_config": {"platform": "systrap", "systemd-cgroup": "true"}}, "install": install}}},
           "verify": {"timeout": 2400}}
    if not type_url:   # the old rendering: containerd then hands the shim its options with an empty TypeUrl
        doc["config"]["overrides"] = {RUNTIME_OPTIONS: ""}
    return parse(yaml.safe_dump(doc), "gVisor spec")


@pytest.fixture(scope="module")
def served():
    with serve(gvisor.binaries()) as url:
        yield int(url.rsplit(":", 1)[1])


def _boot(spec, tmp_path):
    base = baseimage.build(flavor=baseimage.Flavor.of("debian-13", "amd64"))
    with local_mirror(spec) as mirrored:
        t0 = time.monotonic()
        report = verify_user_data(mirrored, base=str(base), log_dir=str(tmp_path))
    print(f"gVisor boot: {time.monotonic() - t0:.0f} s; " + ", ".join(
        f"{c['check']}: {c.get('note', '')}" for c in report["checks"] if c["check"].startswith("cri.runtime.")))
    return report, {c["check"]: c for c in report["checks"]}


def test_a_pod_runs_under_gvisor_installed_by_the_spec(served, tmp_path):
    spec = _spec(served)
    report, by_name = _boot(spec, tmp_path)
    assert by_name["cri.runtime.runsc"]["ok"], by_name["cri.runtime.runsc"]
    assert by_name["cri.runtime.runsc.process"]["ok"], by_name["cri.runtime.runsc.process"]
    assert by_name["runtime.runsc.shim"]["ok"]
    assert report["passed"], [c for c in report["checks"] if not c["ok"]]


def test_without_the_type_url_the_shim_refuses_the_pod(served, tmp_path):
    report, by_name = _boot(_spec(served, type_url=False), tmp_path)
    check = by_name["cri.runtime.runsc"]
    assert not check["ok"] and "unsupported option type" in str(check["actual"]), check
    assert report["failed"] == ["cri.runtime.runsc"], report["failed"]
