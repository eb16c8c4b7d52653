"""The verify boot's CRI checks (check.py's cri_checks with the stdlib client, and the host-side mirror
checks of imagebuild/verify/cri_lab.py) run here against the real containerd of every family (1.6 ... 2.4) and a
real registry, as they run in the guest; and what they must fail on.

Here the mirrors of the default spec point at one local registry (same paths, `path: prefix` kept),
instead of the guest's /etc/hosts + CA plumbing; the lab plan (what is pushed where, which manifest
path each pull must ask for) is the production one (cri_lab.plan / guest_lab / mirror_checks).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import ipaddress
import json
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from imagebuild import render
from imagebuild import spec as spec_module
from imagebuild.guest import check, cri_checks
from imagebuild.guest import cri as cri_client
from imagebuild.render import config_toml
from imagebuild.verify import cri_lab, testimage
from tests import cri
from tests.support import FAMILY_VERSIONS

pytestmark = pytest.mark.builds   # real daemons with Go-built pieces: run after the boots


def test_the_plan_of_the_default_spec():
    spec = spec_module.load()
    plan = cri_lab.plan(spec)
    assert plan.ports == {443: True, 80: False}
    assert set(plan.names) == {"docker.mirrors.ustc.edu.cn", "hub-mirror.c.163.com", "gcr.mirrors.ustc.edu.cn",
                               "quay.mirrors.ustc.edu.cn", "registry.cn-hangzhou.aliyuncs.com"}
    assert not {"docker.io", "registry-1.docker.io", "gcr.io", "k8s.gcr.io", "quay.io"} & set(plan.names)
    manifests = {p.host: (p.image, p.port, p.manifest) for p in plan.pulls}
    assert manifests["k8s.gcr.io"] == ("k8s.gcr.io/imagebuild/verify-2:1", 443,
                                       "/v2/google-containers/imagebuild/verify-2/manifests/1?ns=k8s.gcr.io")
    assert manifests["docker.io"] == ("docker.io/imagebuild/verify-0:1", 443,
                                      "/v2/imagebuild/verify-0/manifests/1?ns=docker.io")
    assert ("test", "google-containers/imagebuild/verify-2:1") in plan.pushes
    # No mirror for the sandbox image's registry: the lab stands in for that registry itself.
    assert plan.sandbox.manifest == "/v2/google_containers/pause/manifests/3.6"  # no ?ns=: not a mirror
    assert ("sandbox", "google_containers/pause:3.6") in plan.pushes


@pytest.fixture(scope="module")
def images():
    work = cri.scratch("ib-ck-")
    yield {"test": Path(testimage.test_oci_image(work / "busybox.tar")["path"]),
           "sandbox": Path(testimage.test_oci_image(work / "pause.tar", cmd=("/bin/sleep", "3600"))["path"])}


def _local_spec(family: str, registry: cri.Registry, work: Path):
    """The default spec's mirrors, each endpoint moved to *registry* (its path kept; a mirror's second
    endpoint as localhost, so no URL repeats); the sandbox
    image on the prefix-mirrored k8s.gcr.io; this host's scratch root, state and config_path."""
    base = spec_module.load().document["config"]
    mirrors = []
    for mirror in base["registry"]["mirrors"]:
        endpoints = []
        for index, ep in enumerate(mirror["endpoints"]):
            path = urllib.parse.urlsplit(ep["url"]).path
            host = ("127.0.0.1", "localhost")[index]  # each endpoint URL once per mirror
            endpoints.append({"url": f"http://{host}:{registry.port}{path}",
                              **({"path": ep["path"]} if ep.get("path") else {})})
        mirrors.append({"host": mirror["host"], "endpoints": endpoints})
    return spec_module.from_document({"containerd": {"version": FAMILY_VERSIONS[family]}, "config": {
        "root": str(work / "root"), "state": str(work / "state"), "systemd_cgroup": False,
        "sandbox_image": "k8s.gcr.io/pause:3.6",
        "registry": {"config_path": str(work / "certs.d"), "mirrors": mirrors}}})


def _start(spec, family: str, work: Path, breaker=None) -> cri.Containerd:
    work.mkdir(parents=True, exist_ok=True)
    for path, f in render.payload(spec).items():
        if path.endswith("/hosts.toml"):
            target = Path(spec.config.registry.config_path) / Path(path).parent.name / "hosts.toml"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.content)
    text = cri.host_only(config_toml.render(spec), spec.containerd.config_version, work)
    if breaker:
        import tomlkit

        doc = tomlkit.parse(text)
        breaker(doc, spec.containerd.config_version)
        text = tomlkit.dumps(doc)
    return cri.Containerd(family, text, work)


@contextlib.contextmanager
def _running(family: str, images, prefix: str, *, push=lambda name: True):
    """A registry serving the spec's mirrored images (those *push* keeps) and containerd of *family* on
    the rendered config: (spec, plan, registry, daemon), both stopped on exit."""
    work = cri.scratch(prefix)
    registry = cri.RegistryServer(work / "registry")
    try:
        spec = _local_spec(family, registry, work)
        plan = cri_lab.plan(spec)
        for kind, name in plan.pushes:
            if push(name):
                registry.push(images[kind], name)
        daemon = _start(spec, family, work / "d")
        try:
            yield spec, plan, registry, daemon
        finally:
            daemon.close()
    finally:
        registry.close()


def _run_checks(monkeypatch, lab, sock, **kwargs) -> dict[str, dict]:
    out = io.StringIO()
    monkeypatch.setattr(check.sys, "stdout", out)
    cri_checks.run_all(check.Reporter(None), lab, str(sock), **kwargs)
    return {r["check"]: r for r in (json.loads(line.split(" ", 1)[1]) for line in out.getvalue().splitlines())}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_VERSIONS)
def test_the_cri_checks_pass_on_a_good_containerd_and_the_mirrors_logs_agree(monkeypatch, images, family):
    with _running(family, images, "ib-cg-") as (spec, plan, registry, daemon):
        results = _run_checks(monkeypatch, cri_lab.guest_lab(spec, plan), daemon.sock)
        assert all(r["ok"] for r in results.values()), [r for r in results.values() if not r["ok"]]
        expected = {"cri.runtime_ready", "cri.network_ready", "cri.pull.docker.io", "cri.pull.gcr.io",
                    "cri.pull.k8s.gcr.io", "cri.pull.quay.io", "cri.pod_sandbox", "cri.sandbox_image", "cri.container"}
        if family.startswith("1."):   # 1.x's CRI Status shows its config; 2.x's does not
            expected |= {"cri.config.sandbox_image", "cri.config.registry_config_path"}
        assert set(results) == expected
        assert results["cri.network_ready"]["actual"] is False  # no CNI network config on this host
        host = cri_lab.mirror_checks(plan, {p.port: registry for p in [*plan.pulls, plan.sandbox]})
        assert [c["check"] for c in host] == ["cri.mirror.docker.io", "cri.mirror.gcr.io", "cri.mirror.k8s.gcr.io",
                                              "cri.mirror.quay.io", "cri.mirror.sandbox_image"]
        assert all(c["ok"] for c in host), host


@pytest.mark.slow
def test_a_mirror_without_the_image_fails_the_pull_and_the_host_check(monkeypatch, images):
    # quay.io's mirror lacks its image
    with _running("1.7", images, "ib-cn-", push=lambda name: "verify-3" not in name) as (spec, plan, registry, daemon):
        results = _run_checks(monkeypatch, cri_lab.guest_lab(spec, plan), daemon.sock)
        assert [name for name, r in results.items() if not r["ok"]] == ["cri.pull.quay.io"]
        # The mirror answered 404, containerd fell through to the upstream, which is unreachable.
        assert "https://quay.io/v2/imagebuild/verify-3/manifests/1" in results["cri.pull.quay.io"]["actual"]
        host = {c["check"]: c for c in cri_lab.mirror_checks(plan, {p.port: registry for p in plan.pulls})}
        assert not host["cri.mirror.quay.io"]["ok"] and "404" in host["cri.mirror.quay.io"]["actual"]
        assert host["cri.mirror.k8s.gcr.io"]["ok"]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_VERSIONS)
def test_a_dead_cri_plugin_fails_the_cri_checks(monkeypatch, images, family):
    from tests.test_cri import BREAKERS

    work = cri.scratch("ib-cb-")
    spec = spec_module.from_document({"containerd": {"version": FAMILY_VERSIONS[family]}, "config": {
        "root": str(work / "root"), "state": str(work / "state"), "systemd_cgroup": False,
        "registry": {"config_path": str(work / "certs.d")}}})
    daemon = _start(spec, family, work, BREAKERS["stargz-without-plugin"])
    try:
        results = _run_checks(monkeypatch, cri_lab.guest_lab(spec, cri_lab.plan(spec)), daemon.sock,
                              ready_timeout=3)
    finally:
        daemon.close()
    assert list(results) == ["cri.runtime_ready"]
    assert not results["cri.runtime_ready"]["ok"]
    assert "UNIMPLEMENTED: unknown service runtime.v1.RuntimeService" in results["cri.runtime_ready"]["actual"]


def test_no_client_beside_check_py_fails_loudly(monkeypatch):
    monkeypatch.setattr(cri_checks, "_cri_client", lambda: None)
    results = _run_checks(monkeypatch, None, "/nonexistent.sock")
    assert list(results) == ["cri.client"] and not results["cri.client"]["ok"]


def test_cri_ready_is_read_from_the_first_containerd_boot_of_the_journal():
    journal = (
        '[   60.912345] vm containerd[612]: time="2026-12-02T02:00:00Z" level=info msg="serving..." address=/run/x\n'
        '[   61.234567] vm containerd[612]: time="2026-12-02T02:00:00Z" level=info msg="containerd successfully '
        'booted in 0.052131s"\n'
        '[   95.100000] vm containerd[901]: level=info msg="containerd successfully booted in 0.04s"\n')
    assert cri_checks.first_boot(journal) == 61.234567
    assert cri_checks.first_boot("[   60.9] vm containerd[612]: msg=\"serving...\"\n") is None


@pytest.mark.slow
def test_the_lab_serves_each_pull_under_the_mirror_host_names_over_tls_with_its_ca(images, tmp_path):
    """The production Lab for the default spec: a TLS registry for the https endpoints (its certificate
    names every endpoint host and the sandbox image's registry, signed by the lab CA the guest gets), a
    plain one for http://hub-mirror.c.163.com, both serving what was pushed; QEMU relays per port."""
    import http.client
    import socket
    import ssl

    spec = spec_module.load()
    with cri_lab.Lab(spec, tmp_path / "lab", "nocloud", images) as lab:
        context = ssl.create_default_context(cafile=str(lab.tls["ca"]))
        accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"

        def head(port: int, name: str, path: str, tls: bool = True) -> int:
            if tls:
                conn = http.client.HTTPSConnection("127.0.0.1", lab.registries[port].port, timeout=10,
                                                   context=context)
                conn.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", lab.registries[port].port)),
                                                server_hostname=name)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", lab.registries[port].port, timeout=10)
            conn.request("HEAD", path, headers={"Accept": accept, "Host": name})
            return conn.getresponse().status

        assert not any(c["ok"] for c in lab.host_checks())  # nothing asked yet
        for pull in lab.plan.pulls:
            assert head(443, "gcr.mirrors.ustc.edu.cn" if "gcr" in pull.host else "docker.mirrors.ustc.edu.cn",
                        pull.manifest) == 200, pull
        assert head(443, "registry.cn-hangzhou.aliyuncs.com", lab.plan.sandbox.manifest) == 200
        assert head(80, "hub-mirror.c.163.com", lab.plan.pulls[0].manifest, tls=False) == 200
        with pytest.raises(ssl.SSLCertVerificationError):  # a name the lab does not stand in for
            head(443, "registry-1.docker.io", lab.plan.pulls[0].manifest)
        files = lab.seed_files(Path(check.__file__).parent)
        assert set(files) == set(cri_lab.SEED_FILES)
        assert json.loads(files["cri-lab.json"])["hosts"] == [f"10.0.2.100 {n}" for n in lab.plan.names]
        assert lab.netdev_options().count("guestfwd=tcp:10.0.2.100:") == 2
        # The host-side checks read the access log: these HEADs asked exactly the planned paths.
        assert all(c["ok"] for c in lab.host_checks()), lab.host_checks()


def _pull_as_the_bake_does(spec, sock: Path) -> None:
    """What install.sh --pull-sandbox runs in the Packer build: cri.py --wait PullImage <its request>."""
    import shlex

    line = next(x for x in render.install_script(spec, render.payload(spec)).splitlines() if "PullImage" in x)
    request = shlex.split(line)[5]
    assert cri_client.main(["--socket", str(sock), "--wait", "60", "PullImage", request]) == 0


def _baked(spec, plan, sandbox: dict | None = None) -> dict:
    """What the guest is told of an image imagebuild bake made with its sandbox image in it."""
    return cri_lab.guest_lab(spec, plan, baked=True, sandbox_baked=True, sandbox=sandbox) | {"pulls": []}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_VERSIONS)
def test_a_baked_sandbox_image_starts_a_pod_with_no_registry_and_is_pinned_where_containerd_can(
        monkeypatch, images, family):
    """As the golden image: the bake pulled the sandbox image through CRI; then, with the registry gone,
    CRI still holds it (pinned on 1.7 and 2.1; containerd 1.6's CRI has no pinned images) and a pod starts."""
    with _running(family, images, "ib-cp-") as (spec, plan, registry, daemon):
        _pull_as_the_bake_does(spec, daemon.sock)
        registry.close()  # every registry unreachable from here on
        results = _run_checks(monkeypatch, _baked(spec, plan), daemon.sock)
    assert all(r["ok"] for r in results.values()), [r for r in results.values() if not r["ok"]]
    assert {"cri.sandbox_image", "cri.sandbox_pinned", "cri.pod_sandbox", "cri.container",
            "hygiene.build_lab_removed", "cri.images_at_boot"} <= set(results)
    assert results["cri.sandbox_pinned"]["actual"] is (family != "1.6")
    assert results["cri.images_at_boot"]["actual"] == ["k8s.gcr.io/pause:3.6"]


def _import_as_the_bake_does(spec, family: str, archive: Path, sock: Path) -> None:
    """What install.sh --import-sandbox runs in the Packer build: its own lines, with the family's ctr,
    against *sock*."""
    import subprocess

    from devtools import families

    script = render.install_script(spec, render.payload(spec))
    branch = script[script.index("if [[ ${2:-} == --import-sandbox ]]"):]
    body = "\n".join(branch.splitlines()[1:]).split("\nfi\n")[0]
    env = {"PATH": f"{families.binary(family, 'ctr').parent}:/usr/bin:/bin",
           "CONTAINERD_ADDRESS": str(sock)}
    subprocess.run(["bash", "-euo", "pipefail", "-c", 'log() { :; }; die() { echo "$*" >&2; exit 1; }\n' + body,
                    "install.sh", "payload", "--import-sandbox", str(archive)], env=env, check=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_VERSIONS)
def test_a_sandbox_image_imported_from_an_archive_is_pinned_and_its_program_runs_the_pod(
        monkeypatch, images, family, tmp_path):
    """image.sandbox.source archive: install.sh's own import lines put a real pause (catatonit) into
    containerd under its local name, pinned where containerd can pin; with every registry gone, exactly
    that image is there, with the digest the archive gave, and the pod sandbox's process is the archive's
    program."""
    from devtools import pause_image
    from imagebuild.build import oci_archive

    made = pause_image.pause_archive(tmp_path / "pause.tar")
    work = cri.scratch("ib-ci-")
    registry = cri.RegistryServer(work / "registry")
    registry.close()  # every registry unreachable: the image must do without
    base = _local_spec(family, registry, work).document
    spec = spec_module.from_document(base | {
        "config": base["config"] | {"sandbox_image": made["ref"]},
        "image": base["image"] | {"sandbox": {"source": "archive",
                                              "archive": {"url": made["path"], "sha256": made["sha256"]}}}})
    record = oci_archive.sandbox_archive(made["path"], made["sha256"], made["ref"], tmp_path / "copy.tar")
    daemon = _start(spec, family, work / "d")
    try:
        _import_as_the_bake_does(spec, family, tmp_path / "copy.tar", daemon.sock)
        assert not (tmp_path / "copy.tar").exists()  # install.sh removes the archive it imported
        plan = cri_lab.plan(spec, sandbox_baked=True)
        results = _run_checks(monkeypatch, _baked(spec, plan, record), daemon.sock)
        # Negatives on the same daemon: another digest, another program, are failures.
        wrong = record | {"digest": "sha256:" + "0" * 64, "program": {"path": "/pause", "sha256": "1" * 64}}
        other = _run_checks(monkeypatch, _baked(spec, plan, wrong), daemon.sock)
    finally:
        daemon.close()
    assert all(r["ok"] for r in results.values()), [r for r in results.values() if not r["ok"]]
    assert results["cri.images_at_boot"]["actual"] == [made["ref"]]
    assert results["cri.sandbox_pinned"]["actual"] is (family != "1.6")  # 1.6's CRI has no pinned images
    assert results["cri.sandbox_digest"]["actual"].endswith("@" + made["digest"])
    assert results["cri.sandbox_process"]["actual"] == hashlib.sha256(pause_image.CATATONIT.read_bytes()).hexdigest()
    assert [n for n, r in other.items() if not r["ok"]] == ["cri.sandbox_digest", "cri.sandbox_process"]


@pytest.mark.slow
def test_an_image_in_the_store_that_the_bake_did_not_put_there_fails(monkeypatch, images):
    """The leak this check exists for: an image whose bake baked no sandbox image (image.sandbox.source none)
    holds one anyway, the test program under the sandbox image's registry name. cri.images_at_boot fails;
    with the store empty, it passes."""
    with _running("1.7", images, "ib-cl-") as (spec, plan, registry, daemon):
        lab = cri_lab.guest_lab(spec, plan, baked=True, sandbox_baked=False) | {"pulls": []}
        clean = _run_checks(monkeypatch, lab, daemon.sock)
        _pull_as_the_bake_does(spec, daemon.sock)   # the lab's stand-in, pulled under the real name
        leaked = _run_checks(monkeypatch, lab, daemon.sock)
    assert clean["cri.images_at_boot"]["ok"] and clean["cri.images_at_boot"]["actual"] == []
    assert not leaked["cri.images_at_boot"]["ok"] and leaked["cri.images_at_boot"]["actual"] == ["k8s.gcr.io/pause:3.6"]


@pytest.mark.slow
def test_no_baked_sandbox_image_fails_with_no_registry(monkeypatch, images):
    family = "1.7"
    work = cri.scratch("ib-ca-")
    registry = cri.RegistryServer(work / "registry")
    spec = _local_spec(family, registry, work)
    registry.close()  # nothing pulled, and every registry unreachable
    plan = cri_lab.plan(spec)
    daemon = _start(spec, family, work / "d")
    try:
        results = _run_checks(monkeypatch, _baked(spec, plan), daemon.sock)
    finally:
        daemon.close()
    failed = [name for name, r in results.items() if not r["ok"]]
    assert failed == ["cri.images_at_boot", "cri.sandbox_image", "cri.sandbox_pinned", "cri.pod_sandbox"], failed
    assert results["cri.sandbox_pinned"]["actual"] == "absent" and results["cri.images_at_boot"]["actual"] == []


@pytest.mark.slow
def test_a_baked_image_that_is_not_containerds_sandbox_image_is_not_pinned(monkeypatch, images):
    """Measured: containerd 1.7 pins exactly the image its config names as the sandbox image (pulled
    through CRI or imported with ctr alike). An image baked under another name than the config's is
    present but not pinned (kubelet's image GC may take it), and the pod, which needs the config's, fails."""
    with _running("1.7", images, "ib-cu-") as (spec, plan, registry, daemon):
        other = plan.pulls[0].image
        cri_client.call("PullImage", {"image": {"image": other}}, socket_path=str(daemon.sock))
        registry.close()
        results = _run_checks(monkeypatch, _baked(spec, plan) | {"sandbox_image": other}, daemon.sock)
    failed = [name for name, r in results.items() if not r["ok"]]
    # (CRI's config names the other image too: 1.x shows it in Status; the image holds another one than baked.)
    assert failed == ["cri.config.sandbox_image", "cri.images_at_boot", "cri.sandbox_pinned", "cri.pod_sandbox"], \
        results
    assert results["cri.sandbox_image"]["ok"] and results["cri.sandbox_pinned"]["actual"] is False


def test_a_registry_labs_hosts_lines_fail_hygiene():
    """No /etc/hosts line of a registry lab belongs in an image: one an earlier release's bake lab marked,
    or one of this verify boot's own lab (the CRI checks add theirs only after this check)."""
    lab_lines = ["10.0.2.100 gcr.mirrors.ustc.edu.cn"]
    assert cri_checks.build_lab_left("127.0.0.1 localhost\n10.0.2.100 x\n", lab_lines) == []
    marked = "10.0.2.100 quay.mirrors.ustc.edu.cn  # imagebuild-build-lab"
    hosts = f"127.0.0.1 localhost\n{marked}\n10.0.2.100 gcr.mirrors.ustc.edu.cn\n"
    assert cri_checks.build_lab_left(hosts, lab_lines) == [marked, lab_lines[0]]


@pytest.fixture
def cni_bridge_cleanup():
    """The pod network's bridge (made on this host by the bridge plugin) goes with the test."""
    yield
    subprocess.run(["ip", "link", "del", cri_lab.POD_BRIDGE], capture_output=True, check=False)


def _with_cni_dirs(bin_dir: Path, conf_dir: Path):
    """A breaker moving the rendered config's CNI dirs to this host's scratch dirs."""
    def breaker(doc, config_version: int) -> None:
        plugin = "io.containerd.grpc.v1.cri" if config_version == 2 else "io.containerd.cri.v1.runtime"
        cni = doc["plugins"][plugin]["cni"]
        cni["conf_dir"] = str(conf_dir)
        if "bin_dirs" in cni:   # 2.1+ (its bin_dir stays empty: both set is an error)
            cni["bin_dirs"] = [str(bin_dir)]
        else:
            cni["bin_dir"] = str(bin_dir)
    return breaker


@pytest.mark.slow
@pytest.mark.parametrize("family, plugins", [("1.6", "installed"), ("1.7", "installed"), ("2.1", "installed"),
                                             ("1.7", "missing")])
def test_a_pod_gets_an_address_only_where_containerd_finds_the_cni_plugins(monkeypatch, images, cni_bridge_cleanup,
                                                                         family, plugins):
    """cri.pod_network on the real daemons: with upstream's CNI plugins in the config's bin dir a pod in
    its own network namespace gets an address of the lab's bridge network; with the bin dir empty
    (the 1.7 tarball install that looked in Debian's /usr/lib/cni) the check fails naming the plugin."""
    from devtools import upstream

    work = cri.scratch("ib-pn-")
    registry = cri.RegistryServer(work / "registry")
    try:
        base = _local_spec(family, registry, work).document
        doc = json.loads(json.dumps(base))
        doc["containerd"]["install"]["cni_plugins"] = {}
        spec = spec_module.from_document(doc)
        lab = cri_lab.guest_lab(spec, plan := cri_lab.plan(spec))
        assert lab["pod_network"]["subnet"] == cri_lab.POD_SUBNET
        for kind, name in plan.pushes:
            registry.push(images[kind], name)
        bin_dir, conf_dir = work / "cni-bin", work / "cni-conf"
        bin_dir.mkdir()
        if plugins == "installed":
            for plugin in upstream.cni_plugins().iterdir():
                shutil.copy2(plugin, bin_dir / plugin.name)
        daemon = _start(spec, family, work / "d", _with_cni_dirs(bin_dir, conf_dir))
        try:
            results = _run_checks(monkeypatch, lab, daemon.sock)
        finally:
            daemon.close()
    finally:
        registry.close()
    assert "cri.pod_network" in results, results
    network = results["cri.pod_network"]
    assert not (conf_dir / lab["pod_network"]["file"]).exists()  # the boot's network config is removed after
    if plugins == "installed":
        assert all(r["ok"] for r in results.values()), [r for r in results.values() if not r["ok"]]
        assert ipaddress.ip_address(network["actual"]) in ipaddress.ip_network(cri_lab.POD_SUBNET)
    else:
        assert [name for name, r in results.items() if not r["ok"]] == ["cri.pod_network"]
        assert 'failed to find plugin "bridge"' in network["actual"] or 'failed to find plugin "loopback"' \
            in network["actual"], network


def test_the_pod_network_is_asked_for_only_where_the_spec_installs_the_cni_plugins():
    tarball = spec_module.from_document({"containerd": {"install": {"cni_plugins": {}}}})
    assert cri_lab.pod_network(tarball)["config"]["plugins"][0]["type"] == "bridge"
    assert cri_lab.pod_network(spec_module.load()) is None   # the default spec installs none
    package = spec_module.from_document({"containerd": {"version": "1.6.20", "install": {
        "method": "package", "package": {"version": "1.6.20~ds1-1+deb12u3"}}}})
    assert cri_lab.pod_network(package) is None


def test_the_sandbox_process_is_read_once_it_has_left_runc_init(tmp_path):
    """RunPodSandbox returns while the sandbox's process may still be `runc init` (runc's own executable),
    which execs the image's program a moment later: the check reads the executable after that exec. Here
    a real process starts as `runc init` (a shell under that argv, running the script ./init) and execs
    /bin/sleep after 0.3 s; read at once, /proc/<pid>/exe would be the shell."""
    import subprocess

    (tmp_path / "init").write_text("sleep 0.3\nexec /bin/sleep 30\n")
    proc = subprocess.Popen(["runc", "init"], executable="/bin/sh", cwd=tmp_path)
    try:
        import time

        deadline = time.monotonic() + 5
        while Path(f"/proc/{proc.pid}/cmdline").read_bytes() == b"" and time.monotonic() < deadline:
            time.sleep(0.01)   # the fork has not exec'd the shell yet
        assert Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"runc", b"init"]
        at_once = cri_checks._past_runtime_init(proc.pid, wait=0)   # not waiting: still the shell
        assert hashlib.sha256(at_once.read_bytes()).digest() != hashlib.sha256(Path("/bin/sleep").read_bytes()).digest()
        exe = cri_checks._past_runtime_init(proc.pid)
        assert hashlib.sha256(exe.read_bytes()).digest() == hashlib.sha256(Path("/bin/sleep").read_bytes()).digest()
    finally:
        proc.kill()
        proc.wait()
