"""What kubelet sees: CRI pulls through every mirror, from a real registry, on every containerd family
(1.6 ... 2.4: Debian's builds of 1.6, 1.7 and 2.1, upstream's of 2.0, 2.2, 2.3 LTS and 2.4; tests/cri.py).

For each family and each registry mode, the real daemon runs the config imagebuild renders (see
tests/cri.py for its scratch directories and the two host-only rewrites: `systemd_cgroup: false` in
the spec and `restrict_oom_score_adj = true`, because here PID 1 is not systemd and
CAP_SYS_RESOURCE may be missing). A real CRI v1 client (gRPC) asks it for Status, PullImage and
RunPodSandbox.

How the mirrors reach a registry here: every distinct mirror host (scheme://host:port) of the default
spec and of the golden cases becomes its own `docker-registry` on 127.0.0.1 with its own storage;
each endpoint URL keeps its path and `path`/`override_path` and only its scheme and host change
(`ca` is dropped: its file is on the node, not here). For endpoint k of a mirror an image is pushed
only to endpoint k's registry, under the repository that endpoint's API root implies, so a pull of
<host>/imagebuild/m<i>e<k>:t must be answered 404 by the endpoints before it and 200 by endpoint k,
with exactly the path the spec asked for (a prefix mirror: /v2/<prefix>/imagebuild/...). The
upstream registries are never reachable, so a pull that succeeds came through a mirror.

The sandbox image keeps its configured name: when its registry has no mirror, the test adds one
(pointing at a local registry holding a pause image), so RunPodSandbox pulls exactly that name.
"""
from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path

import pytest

from imagebuild import render
from imagebuild import spec as spec_module
from imagebuild.render import config_toml
from imagebuild.spec import SpecError
from imagebuild.verify import testimage
from tests import cases, cri
from tests.support import FAMILY_VERSIONS, ungzip

pytestmark = [pytest.mark.slow, pytest.mark.builds]   # builds: Go-built pieces, run after the boots


def _specs() -> dict:
    found = {"default": spec_module.load()}
    for name in cases.names():
        found[name] = spec_module.load(cases.CASES_DIR / name / "spec.yaml")
    return found


SPECS = _specs()


def _mirror_sets() -> dict[str, list[dict]]:
    """Distinct mirror lists (as spec documents) of the default spec and the golden cases."""
    out: dict[str, list[dict]] = {}
    for name, spec in SPECS.items():
        mirrors = spec.document["config"]["registry"]["mirrors"]
        if mirrors and mirrors not in out.values():
            out[name] = mirrors
    return out


MIRROR_SETS = _mirror_sets()


def _netloc(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def _sandbox_host(image: str) -> str:
    first = image.split("/", 1)[0]
    return first if "/" in image and ("." in first or ":" in first or first == "localhost") else "docker.io"


def _sandbox_repo(image: str) -> str:
    """repository:tag of *image* inside its registry."""
    rest = image.split("/", 1)[1] if _sandbox_host(image) == image.split("/", 1)[0] else image
    return rest if "/" in rest or _sandbox_host(image) != "docker.io" else "library/" + rest


@pytest.fixture(scope="module")
def world():
    """Images, one registry per distinct mirror host, everything pushed where the plan says."""
    work = cri.scratch("ib-cri-")
    busybox = Path(testimage.test_oci_image(work / "busybox.tar")["path"])
    pause = Path(testimage.test_oci_image(work / "pause.tar", cmd=("/bin/sleep", "3600"))["path"])
    registries: dict[str, cri.Registry] = {}

    def registry(netloc: str) -> cri.Registry:
        if netloc not in registries:
            registries[netloc] = cri.RegistryServer(work / f"reg{len(registries)}")
        return registries[netloc]

    plans = {}
    for set_name, mirrors in MIRROR_SETS.items():
        rewritten, pulls = [], []
        for m_index, mirror in enumerate(mirrors):
            endpoints = []
            for e_index, ep in enumerate(mirror["endpoints"]):
                reg = registry(_netloc(ep["url"]))
                parts = urllib.parse.urlsplit(ep["url"])
                new = {k: v for k, v in ep.items() if k != "ca"}
                new["url"] = urllib.parse.urlunsplit(("http", reg.address, parts.path, "", ""))
                endpoints.append(new)
                if {"pull", "resolve"} <= set(ep.get("capabilities", ["pull", "resolve"])):
                    pulls.append((m_index, e_index, mirror["host"], f"imagebuild/m{m_index}e{e_index}"))
            rewritten.append({**mirror, "endpoints": endpoints})
        plans[set_name] = {"mirrors": rewritten, "pulls": pulls}
    sandbox_reg = cri.RegistryServer(work / "sandbox")
    pushed = set()
    for spec in SPECS.values():
        name = f"{_sandbox_repo(spec.config.sandbox_image)}"
        if name not in pushed:
            sandbox_reg.push(pause, name)
            pushed.add(name)
    yield {"work": work, "busybox": busybox, "registries": registries, "plans": plans, "sandbox": sandbox_reg}
    for reg in [*registries.values(), sandbox_reg]:
        reg.close()


def _spec_for(set_name: str, plan: dict, family: str, mode: str, sandbox: cri.Registry, work: Path):
    """The golden spec of *set_name* with this host's rewrites (see the module docstring)."""
    base = SPECS[set_name].document
    mirrors = [dict(m) for m in plan["mirrors"]]
    sandbox_image = base["config"]["sandbox_image"]
    host = _sandbox_host(sandbox_image)
    if host not in [m["host"] for m in mirrors]:
        mirrors.append({"host": host, "endpoints": [{"url": f"http://{sandbox.address}"}]})
    doc = {"containerd": {"version": FAMILY_VERSIONS[family]},
           # Its overrides and extra runtimes name binaries of the node (e.g. /usr/local/sbin/runc),
           # not of this host: left out here (config dump tests cover them).
           "config": {**{k: v for k, v in base["config"].items() if k not in ("overrides", "runtimes",
                                                                               "default_runtime")},
                      "root": str(work / "root"), "state": str(work / "state"),
                      "systemd_cgroup": False, "imports": [],
                      "registry": {"mode": mode, "config_path": str(work / "certs.d"), "mirrors": mirrors}}}
    return spec_module.from_document(doc)


def _start(spec, family: str, work: Path) -> cri.Containerd:
    for path, f in render.payload(spec).items():
        if path.endswith("/hosts.toml"):
            target = work / "certs.d" / Path(path).parent.name / "hosts.toml"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.content)
    text = cri.host_only(config_toml.render(spec), spec.containerd.config_version, work)
    return cri.Containerd(family, text, work)


def _ready(runtime, api_pb2, daemon) -> dict:
    deadline = time.monotonic() + 20
    while True:
        try:
            status = runtime.Status(api_pb2.StatusRequest())
            return {c.type: c.status for c in status.status.conditions}
        except Exception:
            assert time.monotonic() < deadline, daemon.log()[-3000:]
            time.sleep(0.1)


CASES = [(family, mode, set_name) for family in FAMILY_VERSIONS for mode in ("hosts", "legacy")
         for set_name in MIRROR_SETS]


@pytest.mark.parametrize(("family", "mode", "set_name"), CASES, ids=["-".join(c) for c in CASES])
def test_cri_pulls_through_every_mirror_and_runs_the_sandbox(world, family, mode, set_name):
    from cri_api.v1 import api_pb2

    plan = world["plans"][set_name]
    work = cri.scratch("ib-c-")
    try:
        spec = _spec_for(set_name, plan, family, mode, world["sandbox"], work)
    except SpecError as exc:
        # Hosts-only features (headers, skip_verify, capabilities, ...) cannot go to the legacy table:
        # the spec refuses them, so there is nothing to run.
        assert mode == "legacy", exc.report()
        assert "legacy" in str(exc) or "/v2" in str(exc)
        return
    for mirror in plan["mirrors"]:
        for ep in mirror["endpoints"]:
            assert spec_module.api_root(ep["url"], ep.get("path"), ep.get("override_path", False),
                                        mode).startswith("/v2"), "the local registry serves only /v2"
    daemon = _start(spec, family, work)
    runtime, images, channel = cri.cri(daemon.sock)
    try:
        conditions = _ready(runtime, api_pb2, daemon)
        assert conditions["RuntimeReady"] is True, daemon.log()[-3000:]

        # Push each endpoint's image to its own registry only, under the repository its API root implies.
        for m_index, e_index, host, repo in plan["pulls"]:
            ep = plan["mirrors"][m_index]["endpoints"][e_index]
            root = spec.config.registry.mirrors[m_index].endpoints[e_index].api_root(mode)
            reg = world["registries"][_orig_netloc(set_name, m_index, e_index)]
            target = (root[len("/v2"):].strip("/") + "/" + repo).strip("/")
            if (reg.address, target) not in world.setdefault("pushed", set()):
                reg.push(world["busybox"], f"{target}:t")
                world["pushed"].add((reg.address, target))
            before = {n: len(r.requests()) for n, r in world["registries"].items()}
            images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=f"{host}/{repo}:t")))
            manifest = f"{root}/{repo}/manifests/t?ns={host}"
            served = [r for r in reg.requests()[before[_orig_netloc(set_name, m_index, e_index)]:]
                      if r[1] == manifest]
            assert served and served[0][2] == 200, (manifest, reg.requests()[-5:])
            # Every endpoint before it was asked first and had nothing.
            for earlier in range(e_index):
                prev_ep = spec.config.registry.mirrors[m_index].endpoints[earlier]
                prev = world["registries"][_orig_netloc(set_name, m_index, earlier)]
                prev_path = f"{prev_ep.api_root(mode)}/{repo}/manifests/t?ns={host}"
                start = before[_orig_netloc(set_name, m_index, earlier)]
                assert (("HEAD", prev_path, 404) in prev.requests()[start:]
                        or ("GET", prev_path, 404) in prev.requests()[start:]), prev_path

        # RunPodSandbox pulls the configured sandbox image (through the mirror added for its registry).
        before = len(world["sandbox"].requests())
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name="cri-test", uid=f"{family}-{mode}-{set_name}",
                                                namespace="default"),
            linux=api_pb2.LinuxPodSandboxConfig(security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE))))
        sandbox = runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
        state = runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox.pod_sandbox_id))
        assert state.status.state == api_pb2.SANDBOX_READY
        image = spec.config.sandbox_image
        tag = image.rsplit(":", 1)[1]
        wanted = f"/v2/{_sandbox_repo(image).rsplit(':', 1)[0]}/manifests/{tag}?ns={_sandbox_host(image)}"
        assert any(path == wanted and status == 200
                   for _, path, status in world["sandbox"].requests()[before:]), wanted
        status = images.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image)))
        assert image in status.image.repo_tags
        runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox.pod_sandbox_id))
        runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox.pod_sandbox_id))
    finally:
        channel.close()
        daemon.close()


def _orig_netloc(set_name: str, m_index: int, e_index: int) -> str:
    return _netloc(MIRROR_SETS[set_name][m_index]["endpoints"][e_index]["url"])


def test_the_default_spec_and_the_cases_give_mirror_sets_to_test():
    assert "default" in MIRROR_SETS
    hosts = {m["host"] for m in MIRROR_SETS["default"]}
    assert hosts == {"docker.io", "gcr.io", "k8s.gcr.io", "quay.io"}


# ------------------------------------------------ what the spec now refuses, shown on the real daemon

BREAKERS = {
    # name: (how the refused spec would have rendered, as a change to a valid config)
    "root-is-state": lambda doc, v: doc.__setitem__("state", doc["root"]),
    "stargz-without-plugin": lambda doc, v: _images(doc, v).__setitem__("snapshotter", "stargz"),
    "devmapper-without-pool": lambda doc, v: _images(doc, v).__setitem__("snapshotter", "devmapper"),
    "tls-configs-with-config-path": lambda doc, v: doc["plugins"]["io.containerd.grpc.v1.cri"]["registry"]
    .__setitem__("configs", {"m.example": {"tls": {"insecure_skip_verify": True}}}),
    "import-missing-file": lambda doc, v: doc.__setitem__("imports", [doc["root"] + "-missing.toml"]),
}
BREAK_CASES = [(family, name) for family in FAMILY_VERSIONS for name in BREAKERS
               if not (name == "tls-configs-with-config-path" and family.startswith("2."))]  # 2.x loads CRI with it


def _images(doc, version):
    cri_plugin = doc["plugins"]["io.containerd.grpc.v1.cri"] if version == 2 else None
    return cri_plugin["containerd"] if cri_plugin is not None else doc["plugins"]["io.containerd.cri.v1.images"]


@pytest.mark.parametrize(("family", "name"), BREAK_CASES, ids=["-".join(c) for c in BREAK_CASES])
def test_each_refused_combination_leaves_containerd_without_cri(family, name):
    import tomlkit
    from cri_api.v1 import api_pb2

    work = cri.scratch("ib-b-")
    spec = spec_module.from_document({"containerd": {"version": FAMILY_VERSIONS[family]}, "config": {
        "root": str(work / "root"), "state": str(work / "state"), "systemd_cgroup": False,
        "registry": {"config_path": str(work / "certs.d")}}})
    doc = tomlkit.parse(cri.host_only(config_toml.render(spec), spec.containerd.config_version, work))
    BREAKERS[name](doc, spec.containerd.config_version)
    try:
        daemon = cri.Containerd(family, tomlkit.dumps(doc), work)
    except cri.DaemonExited:
        return  # the daemon exited at start: no CRI at all (a hang raises AssertionError: a failure)
    runtime, _, channel = cri.cri(daemon.sock)
    try:
        daemon.wait_booted()   # every plugin has loaded, failed or been skipped: CRI's service is there or never
        try:
            runtime.Status(api_pb2.StatusRequest(), timeout=10)
        except Exception as exc:
            if "unknown service runtime.v1.RuntimeService" in str(exc):
                return
            raise
        pytest.fail(f"CRI loaded with {name}:\n{daemon.log()[-2000:]}")
    finally:
        channel.close()
        daemon.close()


# ------------------------------------------------------------------ the proxy drop-in, on the daemon

@pytest.mark.parametrize("family", FAMILY_VERSIONS)
def test_pulls_go_through_the_proxy_of_the_drop_in_and_no_proxy_is_respected(world, family):
    """containerd gets exactly the environment of the rendered http-proxy.conf (parsed as systemd
    would). registry.test resolves nowhere, so its pull can only succeed through the proxy, which
    hands `.test` requests on to a local registry; blocked.test is in no_proxy, so containerd must
    try it directly (and fail to resolve it) and the proxy never sees it."""
    import grpc
    from cri_api.v1 import api_pb2

    registry = cri.RegistryServer(world["work"] / f"proxied-{family}")
    proxy = cri.Tinyproxy(world["work"] / f"proxy-{family}", ".test", registry.address)
    work = cri.scratch("ib-x-")
    try:
        registry.push(world["busybox"], "imagebuild/proxied:t")
        registry.push(world["busybox"], "imagebuild/blocked:t")
        spec = spec_module.from_document({"containerd": {"version": FAMILY_VERSIONS[family]},
            "proxy": {"http": proxy.url, "https": proxy.url, "no_proxy": ["blocked.test", "10.0.0.0/8"]},
            "config": {"root": str(work / "root"), "state": str(work / "state"), "systemd_cgroup": False,
                       "registry": {"config_path": str(work / "certs.d"), "mirrors": [
                           {"host": "registry.test", "endpoints": [{"url": "http://registry.test:5000"}]},
                           {"host": "blocked.test", "endpoints": [{"url": "http://blocked.test:5000"}]}]}}})
        dropin = render.payload(spec)[render.PROXY_DROPIN].content.decode()
        env = cri.unit_environment(dropin)
        assert env == {"HTTP_PROXY": proxy.url, "HTTPS_PROXY": proxy.url, "NO_PROXY": "blocked.test,10.0.0.0/8"}
        for path, f in render.payload(spec).items():
            if path.endswith("/hosts.toml"):
                target = work / "certs.d" / Path(path).parent.name / "hosts.toml"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(f.content)
        text = cri.host_only(config_toml.render(spec), spec.containerd.config_version, work)
        daemon = cri.Containerd(family, text, work, env=env)
        runtime, images, channel = cri.cri(daemon.sock)
        try:
            _ready(runtime, api_pb2, daemon)
            images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="registry.test/imagebuild/proxied:t")))
            assert any("http://registry.test:5000/v2/imagebuild/proxied/manifests/t" in line
                       for line in proxy.requests()), proxy.requests()
            assert any(path.startswith("http://registry.test:5000/v2/imagebuild/proxied/manifests/t") and status == 200
                       for _, path, status in registry.requests())
            with pytest.raises(grpc.RpcError):
                images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(
                    image="blocked.test/imagebuild/blocked:t")), timeout=60)
            assert not [line for line in proxy.requests() if "blocked.test" in line]
            assert not [path for _, path, _ in registry.requests() if "blocked.test" in path]  # pushes aside
        finally:
            channel.close()
            daemon.close()
    finally:
        proxy.close()
        registry.close()


@pytest.mark.parametrize("method", ["tarball", "package"])
def test_the_proxy_drop_in_reaches_install_script_user_data_packer_and_expected_json(method):
    doc = {"proxy": {"https": "http://proxy.example:3128", "no_proxy": [".svc", "10.96.0.0/12"]}}
    if method == "package":
        doc["containerd"] = {"install": {"method": "package", "package": {"version": "1.6.20~ds1-1+deb12u3"}}}
    spec = spec_module.from_document(doc)
    files = render.render_all(spec)
    dropin = files[f"payload{render.PROXY_DROPIN}"]
    assert cri.unit_environment(dropin.content.decode()) == {"HTTPS_PROXY": "http://proxy.example:3128",
                                                             "NO_PROXY": ".svc,10.96.0.0/12"}
    assert render.PROXY_DROPIN in files["install.sh"].content.decode()
    expected_files = {f["path"]: f["sha256"] for f in json.loads(files["expected.json"].content)["files"]}
    assert expected_files[render.PROXY_DROPIN] == dropin.sha256  # the in-guest file comparison covers it
    assert f"{render.GUEST_DIR}/payload{render.PROXY_DROPIN}".encode() in ungzip(files["user-data"].content)
    assert files[f"payload{render.PROXY_DROPIN}"] == render.guest_files(spec)[f"payload{render.PROXY_DROPIN}"]
    # No proxy, no drop-in.
    assert render.PROXY_DROPIN not in render.payload(spec_module.load())


@pytest.mark.parametrize("family", FAMILY_VERSIONS)
def test_the_old_seed_rendering_of_a_prefix_mirror_bypasses_it(world, family):
    """Why `path: prefix` exists: the seed's k8s.gcr.io mirror as imagebuild used to write it
    (override_path with the prefix as the URL path) makes containerd request
    /google-containers/<repo>/manifests/<ref>, without /v2: the mirror answers 404 and the pull
    falls through to the upstream (unreachable here, so it fails). The same mirror rendered from
    `path: prefix` is asked /v2/google-containers/<repo>/... and serves the pull."""
    import grpc
    from cri_api.v1 import api_pb2

    registry = cri.RegistryServer(world["work"] / f"old-seed-{family}")
    work = cri.scratch("ib-o-")
    try:
        registry.push(world["busybox"], "google-containers/imagebuild/old:t")
        url = f"http://{registry.address}/google-containers/"
        spec = spec_module.from_document({"containerd": {"version": FAMILY_VERSIONS[family]}, "config": {
            "root": str(work / "root"), "state": str(work / "state"), "systemd_cgroup": False,
            "registry": {"config_path": str(work / "certs.d"), "mirrors": [
                {"host": "k8s.gcr.io", "endpoints": [{"url": url, "path": "prefix"}]}]}}})
        hosts = work / "certs.d" / "k8s.gcr.io" / "hosts.toml"
        hosts.parent.mkdir(parents=True)
        hosts.write_text(f'server = "https://k8s.gcr.io"\n[host."{url}"]\n  capabilities = ["pull", "resolve"]\n'
                         "  override_path = true\n")  # the old rendering, byte for byte in meaning
        daemon = _start_plain(spec, family, work)
        runtime, images, channel = cri.cri(daemon.sock)
        try:
            _ready(runtime, api_pb2, daemon)
            with pytest.raises(grpc.RpcError):
                images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(
                    image="k8s.gcr.io/imagebuild/old:t")), timeout=90)
            assert ("HEAD", "/google-containers/imagebuild/old/manifests/t?ns=k8s.gcr.io", 404) in registry.requests()
            hosts.write_bytes(render.payload(spec)[f"{spec.config.registry.config_path}/k8s.gcr.io/hosts.toml"].content)
            images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="k8s.gcr.io/imagebuild/old:t")))
            wanted = ("HEAD", "/v2/google-containers/imagebuild/old/manifests/t?ns=k8s.gcr.io", 200)
            assert wanted in registry.requests()
        finally:
            channel.close()
            daemon.close()
    finally:
        registry.close()


def _start_plain(spec, family: str, work: Path) -> cri.Containerd:
    """The daemon with the rendered config.toml only (hosts.toml files are the caller's)."""
    text = cri.host_only(config_toml.render(spec), spec.containerd.config_version, work)
    return cri.Containerd(family, text, work)
