"""crictl (cri-tools, built from the Go module proxy: devtools.upstream.crictl) against the real containerd of
every family (1.6 ... 2.4: devtools.families) started with the config imagebuild renders: what a node's
operator and kubelet's own checks see through CRI. One daemon per family for the module (tests/cri.py: its
scratch directories and the host-only rewrites; `systemd_cgroup: false` in the spec).

The spec, as a user would write it: a mirror for `registry.test` (a name that resolves nowhere, so a pull
that succeeds came through the mirror) and one for the sandbox image's registry, both a real docker-registry
on 127.0.0.1; the CNI configuration directory moved to a scratch directory (config.overrides); runc is the
family's own (families.runc: 1.5 for 2.3 and 2.4, as they name it, 1.4 for the others) by runc's BinaryName
(config.overrides), and the daemon's PATH holds no runc.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from devtools import families, upstream
from imagebuild import render
from imagebuild import spec as spec_module
from imagebuild.render import config_toml
from imagebuild.spec.containerd_keys import KeyPaths
from imagebuild.verify import testimage
from tests import cri
from tests.support import FAMILY_VERSIONS

pytestmark = [pytest.mark.slow, pytest.mark.builds]   # builds: Go-built pieces, run after the boots

FAMILIES = tuple(FAMILY_VERSIONS)
#: A bridge network as a CNI installer (Calico, Flannel, the plugins' own docs) writes it: what turns
#: NetworkReady true. Only its configuration is read until a pod asks for a network of its own.
CONFLIST = {"cniVersion": "1.0.0", "name": "imagebuild-test", "plugins": [
    {"type": "bridge", "bridge": "ibtest0", "isGateway": True, "ipMasq": True,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.231.0.0/24"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": True}}]}


def _set(doc: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        doc = doc.setdefault(key, {})
    doc[path[-1]] = value


def _spec(family: str, work: Path, registry: cri.RegistryServer, sandbox_host: str, disabled: tuple[str, ...] = ()):
    """The spec of the module docstring; *disabled* plugins (config.overrides.disabled_plugins, with
    system.profile: none, as the spec asks of a containerd without CRI)."""
    version = FAMILY_VERSIONS[family]
    config_version = spec_module.from_document({"containerd": {"version": version}}).containerd.config_version
    paths, overrides = KeyPaths(config_version), {}
    _set(overrides, paths.log_line + ("cni", "conf_dir"), str(work / "net.d"))
    _set(overrides, paths.runtime_root + ("runtimes", "runc", "options", "BinaryName"), str(families.runc(family)))
    if disabled:
        overrides["disabled_plugins"] = list(disabled)
    return spec_module.from_document({"containerd": {"version": version},
                                      **({"system": {"profile": "none"}} if disabled else {}), "config": {
        "root": str(work / "root"), "state": str(work / "state"), "systemd_cgroup": False, "imports": [],
        "registry": {"config_path": str(work / "certs.d"), "mirrors": [
            {"host": "registry.test", "endpoints": [{"url": f"http://{registry.address}"}]},
            {"host": sandbox_host, "endpoints": [{"url": f"http://{registry.address}"}]}]},
        "overrides": overrides}})


def _start(spec, family: str, work: Path) -> cri.Containerd:
    """The daemon with exactly the rendered config.toml and hosts.toml files (plus tests/cri.py's rewrites),
    on a PATH of an empty directory: no runc there, so a sandbox that runs ran the configured one."""
    for path, f in render.payload(spec).items():
        if path.endswith("/hosts.toml"):
            target = work / "certs.d" / Path(path).parent.name / "hosts.toml"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.content)
    (work / "path").mkdir()
    return cri.Containerd(family, cri.host_only(config_toml.render(spec), spec.containerd.config_version, work), work,
                          env={"PATH": str(work / "path")})


class Crictl:
    """The real crictl, configured as on a node (/etc/crictl.yaml), pointed at one daemon's socket."""

    def __init__(self, sock: Path, work: Path):
        self.config = work / "crictl.yaml"
        self.config.write_text(f"runtime-endpoint: unix://{sock}\nimage-endpoint: unix://{sock}\ntimeout: 30\n")
        self.binary = upstream.crictl() / "crictl"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(self.binary), "--config", str(self.config), *args], capture_output=True,
                              text=True, timeout=120)
        assert not check or done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
        return done

    def conditions(self) -> dict[str, dict]:
        """`crictl info`'s status conditions by type: what kubelet's runtime and network checks read."""
        return {c["type"]: c for c in json.loads(self.run("info").stdout)["status"]["conditions"]}


@pytest.fixture(scope="module", params=FAMILIES)
def node(request):
    family = request.param
    work = cri.scratch("ib-k-")
    busybox = Path(testimage.test_oci_image(work / "busybox.tar")["path"])
    pause = Path(testimage.test_oci_image(work / "pause.tar", cmd=("/bin/sleep", "3600"))["path"])
    sandbox_image = spec_module.from_document({"containerd": {"version": FAMILY_VERSIONS[family]}}).config.sandbox_image
    sandbox_host, sandbox_repo = sandbox_image.split("/", 1)
    assert "." in sandbox_host, sandbox_image   # a registry host, as every family's default names one
    with cri.RegistryServer(work / "registry") as registry:
        registry.push(busybox, "imagebuild/busybox:t")
        registry.push(pause, sandbox_repo)
        spec = _spec(family, work, registry, sandbox_host)
        (work / "net.d").mkdir()
        daemon = _start(spec, family, work)
        try:
            yield {"family": family, "work": work, "spec": spec, "daemon": daemon, "registry": registry,
                   "sandbox_image": sandbox_image, "sandbox_host": sandbox_host, "sandbox_repo": sandbox_repo,
                   "crictl": Crictl(daemon.sock, work)}
        finally:
            daemon.close()


def test_crictl_info_shows_the_runtime_ready_and_the_network_ready_once_a_cni_config_is_there(node):
    crictl = node["crictl"]
    deadline = time.monotonic() + 20
    while not (conditions := crictl.conditions())["RuntimeReady"]["status"]:
        assert time.monotonic() < deadline, (conditions, node["daemon"].log()[-3000:])
        time.sleep(0.2)
    # A fresh node: no CNI configuration yet, so kubelet keeps it NotReady with the runtime's reason.
    assert conditions["NetworkReady"]["status"] is False
    assert conditions["NetworkReady"]["reason"] == "NetworkPluginNotReady", conditions
    (node["work"] / "net.d" / "10-imagebuild.conflist").write_text(json.dumps(CONFLIST))
    while not (conditions := crictl.conditions())["NetworkReady"]["status"]:
        assert time.monotonic() < deadline + 20, (conditions, node["daemon"].log()[-3000:])
        time.sleep(0.2)
    assert conditions["RuntimeReady"]["status"] is True
    version = dict(line.split(":  ", 1) for line in crictl.run("version").stdout.splitlines())
    assert version["RuntimeName"] == "containerd" and version["RuntimeApiVersion"] == "v1", version
    # upstream's builds print the tag (v2.3.7), Debian's its package version (1.6.20~ds1, 2.1.9+unknown)
    assert version["RuntimeVersion"].lstrip("v").startswith(FAMILY_VERSIONS[node["family"]]), version


def test_crictl_pull_goes_through_the_rendered_mirror(node):
    registry = node["registry"]
    before = len(registry.requests())
    out = node["crictl"].run("pull", "registry.test/imagebuild/busybox:t").stdout
    assert out.startswith("Image is up to date for sha256:"), out
    served = registry.requests()[before:]
    assert ("HEAD", "/v2/imagebuild/busybox/manifests/t?ns=registry.test", 200) in served, served
    images = json.loads(node["crictl"].run("images", "-o", "json").stdout)["images"]
    assert any("registry.test/imagebuild/busybox:t" in image["repoTags"] for image in images)


def test_crictl_runp_runs_the_sandbox_image_under_the_familys_runc(node):
    crictl, registry = node["crictl"], node["registry"]
    pod = node["work"] / "pod.json"
    pod.write_text(json.dumps({"metadata": {"name": "crictl-test", "namespace": "default", "uid": "crictl-test-1",
                                            "attempt": 1},
                               "linux": {"security_context": {"namespace_options": {"network": 2}}}}))  # host network
    before = len(registry.requests())
    pod_id = crictl.run("runp", str(pod)).stdout.strip()
    try:
        status = json.loads(crictl.run("inspectp", "-o", "json", pod_id).stdout)["status"]
        assert status["state"] == "SANDBOX_READY", status
        repo, tag = node["sandbox_repo"].rsplit(":", 1)
        wanted = ("HEAD", f"/v2/{repo}/manifests/{tag}?ns={node['sandbox_host']}", 200)
        assert wanted in registry.requests()[before:], registry.requests()[before:]
        images = json.loads(crictl.run("images", "-o", "json").stdout)["images"]
        assert any(node["sandbox_image"] in image["repoTags"] for image in images)
        # The daemon's PATH has no runc: the shim ran the family's own (BinaryName), whose state holds the sandbox.
        listed = subprocess.run([families.runc(node["family"]), "--root", "/run/containerd/runc/k8s.io", "list", "-q"],
                                capture_output=True, text=True).stdout.split()
        assert pod_id in listed, listed
    finally:
        crictl.run("stopp", pod_id)
        crictl.run("rmp", pod_id)


def test_the_same_crictl_against_a_config_without_the_cri_plugin_fails_clearly(node):
    family = node["family"]
    work = cri.scratch("ib-kn-")
    registry = node["registry"]
    spec = _spec(family, work, registry, node["sandbox_host"], disabled=("io.containerd.grpc.v1.cri",))
    daemon = _start(spec, family, work)
    try:
        daemon.wait_booted()
        done = Crictl(daemon.sock, work).run("info", check=False)
        assert done.returncode != 0
        assert "unknown service runtime.v1.RuntimeService" in done.stderr, done.stderr
    finally:
        daemon.close()
