"""A runtime the spec installs (config.runtimes.<name>.install and .config; gVisor's runsc and its shim):
the spec's rules, what the render writes, real install.sh runs into a scratch root with gVisor's release
binaries (devtools.gvisor) served from 127.0.0.1, and the guest's per-runtime pod check
(imagebuild/guest/runtime_pods.py) against a real containerd 2.3 with gVisor's real shim on its PATH.

The gVisor pod itself runs in the verify boot (tests/e2e/test_gvisor.py): gVisor's shim sets its own
oom_score_adj to -999 when it starts, which needs CAP_SYS_RESOURCE; where the host lacks it, the shim cannot
start here, and the check must say so.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from devtools import gvisor
from devtools.serve import serve
from imagebuild import render
from imagebuild import spec as spec_module
from imagebuild.guest import check, runtime_pods
from imagebuild.guest import cri as cri_client
from imagebuild.render import config_toml
from imagebuild.spec import SpecError
from imagebuild.verify import cri_lab, testimage
from tests import cri
from tests.support import FAMILY_VERSIONS, run_main, write_spec
from tests.test_install_script import _doc, _install, _shell_checks

RUNSC = "io.containerd.runsc.v1"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


#: Render-only tests pin these (the render writes what the spec says; the real binaries' sha256s are the
#: install runs' below, which build gVisor: make test-extra).
RENDER_SHAS = {"runsc": "a" * 64, "containerd-shim-runsc-v1": "b" * 64}


def _runsc(url: str, *, insecure: bool = True, shas: dict[str, str] | None = None, **extra) -> dict:
    shas = shas or {name: _sha(gvisor.binaries() / name) for name in gvisor.BINARIES}
    return {"runtime_type": RUNSC, "config_path": "/etc/containerd/runsc.toml",
            "config": {"runsc_config": {"platform": "systrap"}},
            "install": [{"url": f"{url}/{name}", "sha256": shas[name],
                 **({"insecure": True} if insecure else {})}
                        for name in gvisor.BINARIES], **extra}


# ------------------------------------------------------------------------------ the spec and the render

@pytest.mark.parametrize(("runtime", "key", "says"), [
    ({"runtime_type": RUNSC, "config": {"a": 1}}, "config.runtimes.runsc.config", "set config.runtimes.runsc."
     "config_path"),
    ({"install": [{"url": "http://lab.example/runsc", "sha256": "a" * 64}]}, "config.runtimes.runsc.install[0].url",
     "plain HTTP"),
    ({"install": [{"url": "https://lab.example/containerd", "sha256": "a" * 64}]},
     "config.runtimes.runsc.install[0].url", "containerd's own binary"),
    ({"install": [{"url": "https://a.example/runsc", "sha256": "a" * 64},
                  {"url": "https://b.example/x/runsc", "sha256": "b" * 64}]},
     "config.runtimes.runsc.install[1].url", "/usr/local/bin/runsc is already installed by"),
    ({"install": [{"url": "https://lab.example/dir/", "sha256": "a" * 64}]}, "config.runtimes.runsc.install[0].url",
     "ending in a file name"),
    ({"install": [{"url": "https://lab.example/runsc"}]}, "config.runtimes.runsc.install[0].sha256", ""),
    ({"runtime_type": RUNSC, "config_path": "/etc/containerd/runsc.toml", "config": {"runsc_config": {"a": None}}},
     "config.runtimes.runsc.config.runsc_config.a", "TOML has no null"),
])
def test_bad_runtime_installs_are_refused_naming_the_key(runtime, key, says):
    with pytest.raises(SpecError) as err:
        spec_module.from_document({"config": {"runtimes": {"runsc": runtime}}})
    assert key in err.value.report() and says in err.value.report(), err.value.report()


def test_the_cli_refuses_one_with_exit_2_and_writes_nothing(tmp_path):
    spec = write_spec(tmp_path, {"config": {"runtimes": {"runsc": {
        "install": [{"url": "http://lab.example/runsc", "sha256": "a" * 64}]}}}})
    code, _, err = run_main(["render", str(spec), "-o", str(tmp_path / "out")])
    assert code == 2 and "config.runtimes.runsc.install[0].url" in err
    assert not (tmp_path / "out").exists()


def test_the_render_writes_the_shim_config_and_downloads_each_binary_pinned(tmp_path):
    spec = spec_module.from_document({"containerd": {"version": FAMILY_VERSIONS["2.3"]}, "config": {
        "runtimes": {"runsc": _runsc("https://lab.example/gvisor", insecure=False, shas=RENDER_SHAS)}}})
    files = render.guest_files(spec)
    assert tomllib.loads(files["payload/etc/containerd/runsc.toml"].content.decode()) == {
        "runsc_config": {"platform": "systrap"}}
    expected = json.loads(files["expected.json"].content)
    assert "/etc/containerd/runsc.toml" in {f["path"] for f in expected["files"]}
    script = files["install.sh"].content.decode()
    for name, sha in RENDER_SHAS.items():
        assert f"fetch https://lab.example/gvisor/{name} \"$WORK/runtime/\"{name} {sha} '' =https =https" in script
        assert f"place \"$WORK/runtime/\"{name} /usr/local/bin/{name} 0755 no-backup" in script
    (tmp_path / "install.sh").write_text(script)
    _shell_checks(tmp_path / "install.sh")
    # The TypeUrl gVisor's shim needs with a ConfigPath (imagebuild/render/config_toml.py).
    toml = tomllib.loads(config_toml.render(spec))
    options = toml["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runsc"]["options"]
    assert options == {"TypeUrl": "io.containerd.runsc.v1.options", "ConfigPath": "/etc/containerd/runsc.toml"}


def test_the_verify_boot_starts_pods_only_for_runtimes_the_spec_installs():
    spec = spec_module.from_document({"config": {"runtimes": {
        "runsc": _runsc("https://lab.example/gvisor", insecure=False, shas=RENDER_SHAS),
        "nvidia": {"binary_name": "/usr/bin/nvidia-container-runtime"}}}})
    pods = cri_lab.runtime_pods(spec)
    assert pods == [{"name": "runsc", "exe_sha256": RENDER_SHAS["runsc"]}]


# ------------------------------------------------------------------------------ real install.sh runs

@pytest.fixture(scope="module")
def gvisor_url():
    with serve(gvisor.binaries()) as url:
        yield url


@pytest.mark.extra   # builds gVisor (~4-5 min cold): make test-extra
@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root")
def test_install_sh_downloads_checks_and_installs_the_runtime_then_leaves_it(tmp_path, release_16, gvisor_url):
    doc = _doc(release_16) | {"config": {"runtimes": {"runsc": _runsc(gvisor_url)}}}
    out = tmp_path / "render"
    code, _, err = run_main(["render", str(write_spec(tmp_path, doc)), "-o", str(out)])
    assert code == 0, err
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = _install(out, scratch)
    assert proc.returncode == 0, proc.stderr
    for name in gvisor.BINARIES:
        installed = scratch / "usr/local/bin" / name
        assert installed.read_bytes() == (gvisor.binaries() / name).read_bytes()
        assert installed.stat().st_mode & 0o777 == 0o755
        assert f"sha256 verified: {name}" in proc.stderr
        stamp = (scratch / "var/lib/imagebuild/installed" / f"runtime-{name}").read_text().splitlines()
        assert stamp == [f"{gvisor_url}/{name}", f"{_sha(installed)}  usr/local/bin/{name}"]
    assert (scratch / "etc/containerd/runsc.toml").read_bytes() == (out / "payload/etc/containerd/runsc.toml"
                                                                      ).read_bytes()
    version = subprocess.run([scratch / "usr/local/bin/runsc", "--version"], capture_output=True, text=True)
    assert f"runsc version {gvisor.RELEASE}" in version.stdout
    again = _install(out, scratch)
    assert again.returncode == 0 and "nothing to change" in again.stderr and "downloading" not in again.stderr


@pytest.mark.extra
@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root")
def test_a_wrong_runtime_sha256_fails_before_anything_is_installed(tmp_path, release_16, gvisor_url):
    runtime = _runsc(gvisor_url)
    runtime["install"][1]["sha256"] = "0" * 64   # the shim's; runsc, downloaded first, is right
    doc = _doc(release_16) | {"config": {"runtimes": {"runsc": runtime}}}
    out = tmp_path / "render"
    assert run_main(["render", str(write_spec(tmp_path, doc)), "-o", str(out)])[0] == 0
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = _install(out, scratch)
    assert proc.returncode != 0
    assert f"sha256 mismatch for {gvisor_url}/containerd-shim-runsc-v1: expected {'0' * 64}" in proc.stderr
    assert list(scratch.iterdir()) == []   # not even containerd or runsc


# ------------------------------------------------------------- the guest's runtime pod check, on a real daemon

def _has_cap_sys_resource() -> bool:
    caps = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("CapEff:"))
    return bool(int(caps.split()[1], 16) & (1 << 24))


@pytest.mark.slow
@pytest.mark.extra
def test_the_runtime_pod_check_on_containerd_2_3_with_gvisors_shim(monkeypatch, tmp_path):
    work = cri.scratch("ib-rt-")
    registry = cri.RegistryServer(work / "registry")
    try:
        pause = Path(testimage.test_oci_image(work / "pause.tar", cmd=("/bin/sleep", "3600"))["path"])
        registry.push(pause, "imagebuild/pause:t")
        built = gvisor.binaries()
        (work / "runsc.toml").write_text(f'binary_name = "{built}/runsc"\nroot = "{work}/runsc"\n'
                                         '[runsc_config]\n  ignore-cgroups = "true"\n  network = "host"\n')
        spec = spec_module.from_document({"containerd": {"version": FAMILY_VERSIONS["2.3"]}, "config": {
            "root": str(work / "root"), "state": str(work / "state"), "systemd_cgroup": False,
            "sandbox_image": "sandbox.test/imagebuild/pause:t",
            "runtimes": {"runsc": {"runtime_type": RUNSC, "config_path": str(work / "runsc.toml")},
                         "other": {"runtime_type": "io.containerd.runc.v2"}},
            "registry": {"config_path": str(work / "certs.d"), "mirrors": [
                {"host": "sandbox.test", "endpoints": [{"url": f"http://{registry.address}"}]}]}}})
        for path, f in render.payload(spec).items():
            if path.endswith("/hosts.toml"):
                (work / "certs.d/sandbox.test").mkdir(parents=True)
                (work / "certs.d/sandbox.test/hosts.toml").write_bytes(f.content)
        (work / "d").mkdir()
        text = cri.host_only(config_toml.render(spec), spec.containerd.config_version, work / "d")
        daemon = cri.Containerd("2.3", text, work / "d", env={"PATH": f"{built}:{os.environ['PATH']}"})
        try:
            cri_client.wait_ready(str(daemon.sock), timeout=30)
            out = io.StringIO()
            monkeypatch.setattr(check.sys, "stdout", out)

            def call(method, request, timeout=120):
                return cri_client.call(method, request, socket_path=str(daemon.sock), timeout=timeout)

            sandbox = {"metadata": {}, "linux": {"security_context": {"namespace_options": {
                "network": cri_client.NAMESPACE_NODE}}}}
            lab = {"runtime_pods": [{"name": "other", "exe_sha256": _sha(built / "runsc")},
                                    {"name": "runsc", "exe_sha256": _sha(built / "runsc")},
                                    {"name": "missing", "exe_sha256": None}]}
            runtime_pods.run_all(check.Reporter(None), lab, call, sandbox, cri_client.CRIError)
            results = {r["check"]: r for r in (json.loads(line.split(" ", 1)[1])
                                               for line in out.getvalue().splitlines())}
        finally:
            daemon.close()
    finally:
        registry.close()
    # A pod under the other handler runs, but its process is not gVisor's runsc: the process check catches it.
    assert results["cri.runtime.other"]["ok"], results["cri.runtime.other"]
    assert not results["cri.runtime.other.process"]["ok"]
    # A handler containerd does not know is refused.
    assert not results["cri.runtime.missing"]["ok"] and "missing" in results["cri.runtime.missing"]["actual"]
    if _has_cap_sys_resource():   # the pod runs in gVisor: its process is the runsc the handler's config names
        assert results["cri.runtime.runsc"]["ok"] and results["cri.runtime.runsc.process"]["ok"], results
    else:   # gVisor's shim cannot lower its own oom_score_adj here: no pod, and the check says why
        runsc = results["cri.runtime.runsc"]
        assert not runsc["ok"] and "failed to set OOM Score on shim" in runsc["actual"], runsc
        assert "cri.runtime.runsc.process" not in results
