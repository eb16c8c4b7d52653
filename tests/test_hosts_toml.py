"""certs.d/<host>/hosts.toml: one per registry, parsed by TOML and by containerd's own resolver.

The resolver test starts a real containerd daemon (temporary root, state and socket; CRI off) and
lets `ctr images pull --hosts-dir` resolve images against fake registries on 127.0.0.1 that
record each request: the order hosts are tried, override_path, capabilities and headers are
containerd's reading of the rendered files, not ours.
"""
from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import tempfile
import threading
import tomllib
from pathlib import Path

import pytest

from devtools import debian_artifacts
from imagebuild import render
from imagebuild.render import hosts_toml
from tests.daemons import Daemon
from tests.support import FAMILY_VERSIONS, eol_warning, spec_of

SPEC = {"config": {"registry": {"mirrors": [
    {"host": "docker.io", "endpoints": [
        {"url": "https://docker.mirror.example", "headers": {"Authorization": "Bearer abc", "X-Quote": 'a "b" $c `d`'}},
        {"url": "http://10.0.0.5:5000", "skip_verify": True, "capabilities": ["pull"]},
        {"url": "https://mirror.example/proxy/v2", "override_path": True, "ca": "/etc/ssl/mirror.pem"},
        {"url": "https://push.example", "capabilities": ["pull", "resolve", "push"]}]},
    {"host": "registry.example:5000", "server": "https://registry.example:5000",
     "endpoints": [{"url": "https://registry.example:5000", "capabilities": ["pull", "resolve", "push"]}]},
    {"host": "quay.io", "endpoints": [{"url": "https://quay.mirror.example"}]},
]}}}


def test_every_hosts_toml_parses_in_spec_order_with_every_setting():
    spec = spec_of(SPEC)
    files = render.payload(spec)
    paths = [p for p in files if p.endswith("/hosts.toml")]
    hosts = ("docker.io", "registry.example:5000", "quay.io")
    assert paths == [f"/etc/containerd/certs.d/{m}/hosts.toml" for m in hosts]
    for mirror, path in zip(spec.config.registry.mirrors, paths, strict=True):
        text = files[path].content.decode()
        assert text.startswith("# Managed by imagebuild.")
        parsed = tomllib.loads(text)
        assert parsed["server"] == mirror.upstream
        hosts = parsed.get("host", {})
        assert list(hosts) == [ep.hosts_entry[0] for ep in mirror.endpoints]  # the order containerd tries them in
        for ep in mirror.endpoints:
            host = hosts[ep.hosts_entry[0]]
            assert host["capabilities"] == list(ep.capabilities)
            assert host.get("override_path", False) is ep.hosts_entry[1]
            assert host.get("skip_verify", False) is ep.skip_verify
            assert host.get("ca") == ep.ca
            assert host.get("header", {}) == {k: [v] for k, v in ep.headers.items()}
            assert set(host) <= {"capabilities", "override_path", "skip_verify", "ca", "header"}
        # Files with headers (credentials, often) are root-only.
        assert files[path].mode == (0o600 if any(ep.headers for ep in mirror.endpoints) else 0o644)
    docker = tomllib.loads(files[paths[0]].content.decode())
    assert docker["server"] == "https://registry-1.docker.io"
    assert docker["host"]["https://docker.mirror.example"]["header"]["X-Quote"] == ['a "b" $c `d`']


def test_hosts_toml_follows_config_path_and_legacy_mode_writes_none():
    spec = spec_of({"config": {"registry": {"config_path": "/etc/containerd/registries.d"}}})
    assert sorted(p for p in render.payload(spec) if p.endswith("hosts.toml")) == [
        f"/etc/containerd/registries.d/{h}/hosts.toml" for h in ("docker.io", "gcr.io", "k8s.gcr.io", "quay.io")]
    legacy = spec_of({"config": {"registry": {"mode": "legacy", "mirrors": [
        {"host": "docker.io", "endpoints": [{"url": "https://m.example"}]}]}}})
    assert not [p for p in render.payload(legacy) if "certs.d" in p]


def test_seed_mirrors_render_as_expected():
    files = render.payload(spec_of({}))
    k8s = tomllib.loads(files["/etc/containerd/certs.d/k8s.gcr.io/hosts.toml"].content.decode())
    # The seed's path-prefixed mirror: pulls must request /v2/google-containers/<repo>/manifests/<ref>.
    assert k8s == {"server": "https://k8s.gcr.io", "host": {"https://gcr.mirrors.ustc.edu.cn/v2/google-containers": {
        "capabilities": ["pull", "resolve"], "override_path": True}}}
    docker = tomllib.loads(files["/etc/containerd/certs.d/docker.io/hosts.toml"].content.decode())
    assert list(docker["host"]) == ["https://docker.mirrors.ustc.edu.cn", "http://hub-mirror.c.163.com"]


# ------------------------------------------------------------------ containerd's own resolver


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A registry that has nothing: records each request and answers 404."""

    def _answer(self):
        with self.server.lock:
            self.server.requests.append((self.server.server_address[1], self.command, self.path.split("?")[0],
                                         dict(self.headers)))
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def registries():
    """Four fake registries on ephemeral ports sharing one request log."""
    requests, lock, servers = [], threading.Lock(), []
    for _ in range(4):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        server.requests, server.lock = requests, lock
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
    yield [s.server_address[1] for s in servers], requests
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=["1.6", "2.1"])
def containerd_daemon(request):
    """A real containerd of the family, on its own socket, root and state; yields (ctr path, socket)."""
    if os.geteuid() != 0:
        pytest.skip("containerd needs root")
    family = request.param
    work = Path(tempfile.mkdtemp(prefix="ib-ctd-"))  # short: unix socket paths are limited to 108 bytes
    sock = work / "c.sock"
    (work / "config.toml").write_text(
        f'version = 2\nroot = "{work}/root"\nstate = "{work}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", '
        '"io.containerd.cri.v1.runtime"]\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n')
    daemon = Daemon([str(debian_artifacts.binary(family)), "--config", str(work / "config.toml")],
                    work / "containerd.log")
    try:
        daemon.wait_ready(sock.exists, 20, f"serving {sock}")
        yield family, debian_artifacts.binary(family, "ctr"), sock
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_containerd_resolves_through_the_rendered_hosts_in_order(tmp_path, registries, containerd_daemon):
    (first, pull_only, proxied, upstream), requests = registries
    family, ctr, sock = containerd_daemon
    headers = {"Authorization": "Bearer s3cr3t", "X-Quote": 'say "hi" $HOME ${PATH} `id` \\n'}
    spec = spec_of({"containerd": {"version": FAMILY_VERSIONS[family]}, "config": {"registry": {"mirrors": [
        {"host": "docker.io", "server": f"http://127.0.0.1:{upstream}", "endpoints": [
            {"url": f"http://127.0.0.1:{first}", "headers": headers},
            {"url": f"http://127.0.0.1:{pull_only}", "capabilities": ["pull"]},
            {"url": f"http://127.0.0.1:{proxied}/proxy/v2", "override_path": True}]},
        # Server only: containerd 2.x reads a hosts.toml without [host] entries, 1.x refuses it
        # ("invalid `host` tree"), so the spec needs an endpoint there.
        {"host": "registry.test:5000", "server": f"http://127.0.0.1:{upstream}",
         "endpoints": [] if family == "2.1" else [{"url": f"http://127.0.0.1:{first}"}]},
    ]}}})
    certs = tmp_path / "certs.d"
    for path, f in render.payload(spec).items():
        if path.endswith("/hosts.toml"):
            target = certs / Path(path).parent.name / "hosts.toml"
            target.parent.mkdir(parents=True)
            target.write_bytes(f.content)

    def pull(ref):
        del requests[:]
        proc = subprocess.run([str(ctr), "--address", str(sock), "images", "pull", "--hosts-dir", str(certs), ref],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and "not found" in proc.stderr, proc.stderr  # our registries have nothing
        return list(requests)

    seen = pull("docker.io/library/busybox:1.36")
    manifest = "library/busybox/manifests/1.36"
    # Resolve goes to the hosts in file order, skips the pull-only one, then the server.
    assert [(port, path) for port, _, path, _ in seen] == [
        (first, f"/v2/{manifest}"), (proxied, f"/proxy/v2/{manifest}"), (upstream, f"/v2/{manifest}")]
    sent = seen[0][3]
    assert sent["Authorization"] == "Bearer s3cr3t"
    assert sent["X-Quote"] == headers["X-Quote"]  # quotes, $ and backticks arrive as written
    assert "X-Quote" not in seen[1][3] and "X-Quote" not in seen[2][3]  # headers belong to their host only

    # A registry with a port finds its directory (certs.d/registry.test:5000) and goes to its server.
    seen = pull("registry.test:5000/team/app:1.0")
    tried = [upstream] if family == "2.1" else [first, upstream]
    assert [(port, path) for port, _, path, _ in seen] == [(port, "/v2/team/app/manifests/1.0") for port in tried]


def test_render_function_matches_payload():
    spec = spec_of(SPEC)
    files = render.payload(spec)
    for mirror in spec.config.registry.mirrors:
        assert files[f"/etc/containerd/certs.d/{mirror.host}/hosts.toml"].content == hosts_toml.render(mirror).encode()


# ------------------------------------------------------------------ what an endpoint's path means

PATHS = [
    # (url, path, override_path) -> (hosts.toml key, override_path, legacy endpoint, what containerd requests)
    (("https://m.example/google-containers/", "prefix", False),
     ("https://m.example/v2/google-containers", True, "https://m.example/v2/google-containers",
      "/v2/google-containers")),
    (("https://m.example", "prefix", False), ("https://m.example", False, "https://m.example", "/v2")),
    (("https://m.example/", None, False), ("https://m.example/", False, "https://m.example", "/v2")),
    (("https://m.example/artifactory/api/docker/hub/v2", "api-root", False),
     ("https://m.example/artifactory/api/docker/hub/v2", True, "https://m.example/artifactory/api/docker/hub/v2",
      "/artifactory/api/docker/hub/v2")),
    (("https://m.example/proxy/v2", None, True),
     ("https://m.example/proxy/v2", True, None, "/proxy/v2")),
]


@pytest.mark.parametrize(("endpoint", "want"), PATHS)
def test_an_endpoint_path_renders_to_the_api_root_it_names(endpoint, want):
    url, path, override_path = endpoint
    key, override, legacy_url, root = want
    ep = {"url": url, **({"path": path} if path else {}), **({"override_path": True} if override_path else {})}
    spec = spec_of({"config": {"registry": {"mirrors": [{"host": "docker.io", "endpoints": [ep]}]}}})
    (rendered,) = spec.config.registry.mirrors[0].endpoints
    assert rendered.hosts_entry == (key, override)
    assert rendered.api_root("hosts") == root
    hosts = tomllib.loads(hosts_toml.render(spec.config.registry.mirrors[0]))["host"]
    assert list(hosts) == [key] and hosts[key].get("override_path", False) is override
    if legacy_url:
        legacy = spec_of({"config": {"registry": {"mode": "legacy", "mirrors": [
            {"host": "docker.io", "endpoints": [ep]}]}}})
        assert legacy.config.registry.mirrors[0].legacy_endpoints == [legacy_url]
        assert legacy.config.registry.mirrors[0].endpoints[0].api_root("legacy") == root


def test_an_unsaid_path_and_override_path_are_warned_about():
    unsaid = spec_of({"config": {"registry": {"mirrors": [{"host": "docker.io", "endpoints": [
        {"url": "https://m.example/base"}]}]}}})
    assert any("has a path but no `path`" in w and "/base/v2" in w for w in unsaid.warnings)
    old = spec_of({"config": {"registry": {"mirrors": [{"host": "docker.io", "endpoints": [
        {"url": "https://m.example/proxy/v2", "override_path": True}]}]}}})
    assert any("override_path is deprecated" in w for w in old.warnings)
    assert spec_of({}).warnings == (eol_warning("1.6"),)  # the seed says what its paths are (1.6 is past support)
