"""Bad specs: each one is refused by the real CLI with exit 2, a message naming the key path and
the bad value, and nothing written (a new output directory is not created, an earlier render is
left byte for byte, mtimes included).

Strings that reach a file or a shell are tried with quotes, $, backticks, newlines and NUL. Header
values are the exception: they go only into hosts.toml through tomlkit, so quotes and $ are
allowed there (and shown to come back exactly); control characters are refused everywhere.
"""
from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import yaml

from imagebuild.spec import SpecError
from tests.support import run_cli, run_main, snapshot, spec_of, without_eol, write_spec

SHA = "0123456789abcdef" * 4


def mirror(url="https://mirror.example", host="docker.io", **endpoint):
    return {"config": {"registry": {"mirrors": [{"host": host, "endpoints": [{"url": url, **endpoint}]}]}}}


def legacy(**endpoint):
    doc = mirror(**endpoint)
    doc["config"]["registry"]["mode"] = "legacy"
    return doc


def runtime(**fields):
    return {"config": {"runtimes": {"nvidia": fields}}}


def pkg(version=None, **extra):
    package = {"version": version} if version else {}
    return {"containerd": {"install": {"method": "package", "package": {**package, **extra}}}}


def tarball(**fields):
    return {"containerd": {"install": {"tarball": fields}}}


def tags(values):
    return {"image": {"aws": {"tags": values}}}


@dataclass
class Bad:
    id: str
    doc: dict | str | Callable[[], str]  # a dict is dumped with yaml.safe_dump (which escapes control
    #                                      characters); a callable makes the text when the test runs
    path: str        # the key path the message must name
    value: str       # a fragment of the message showing the bad value


CASES = [
    # --- types and ranges
    Bad("name-not-string", {"name": 123}, "name", "got 123, expected a string"),
    Bad("grpc-message-limit-too-small", {"config": {"overrides": {"grpc": {"max_send_message_size": 1}}}},
        "config.overrides.grpc.max_send_message_size", "got 1, expected at least 4194304"),
    Bad("name-pattern", {"name": "Golden_Image"}, "name", "'Golden_Image'"),
    Bad("name-too-long", {"name": "a" * 64}, "name", "'aaaaaaaa"),
    Bad("oom-below-range", {"config": {"oom_score": -1001}}, "config.oom_score", "got -1001"),
    Bad("oom-not-integer", {"config": {"oom_score": "low"}}, "config.oom_score", "got 'low', expected a"),
    Bad("oom-bool", {"config": {"oom_score": True}}, "config.oom_score", "got True"),
    Bad("log-line-range", {"config": {"max_container_log_line_size": -2}}, "config.max_container_log_line_size",
        "got -2"),
    Bad("restart-sec-range", {"unit": {"restart_sec": 99999}}, "unit.restart_sec", "got 99999"),
    Bad("disk-size-range", {"image": {"disk_size_gb": 1}}, "image.disk_size_gb", "got 1"),
    # --- credentials inside a URL: refused wherever they are (the message never repeats them)
    Bad("url-credentials-tarball", {"containerd": {"install": {"tarball": {
        "url": "https://bob:s3cret@mirror.example/containerd-{version}-linux-{arch}.tar.gz"}}}},
        "containerd.install.tarball.url", "'https://<credentials>@mirror.example/containerd-{version}"),
    Bad("url-credentials-base", {"image": {"base": {"source": "https://bob:s3cret@images.example/base.qcow2",
                                                    "checksum": "sha256:" + SHA}}},
        "image.base.source", "got a URL with credentials"),
    Bad("url-credentials-mirror", mirror(url="https://bob:s3cret@mirror.example"),
        "config.registry.mirrors[0].endpoints[0].url", "got 'https://<credentials>@mirror.example'"),
    Bad("url-credentials-proxy", {"proxy": {"https": "http://bob:s3cret@proxy.example:3128"}}, "proxy.https",
        "got 'http://<credentials>@proxy.example:3128'"),
    # --- image.sandbox: where the bake gets the sandbox image
    Bad("sandbox-source-unknown", {"image": {"sandbox": {"source": "lab"}}}, "image.sandbox.source", "'lab'"),
    Bad("sandbox-archive-missing", {"image": {"sandbox": {"source": "archive"}}}, "image.sandbox.archive",
        "got null with source: archive"),
    Bad("sandbox-archive-unused", {"image": {"sandbox": {"archive": {"url": "/srv/pause.tar", "sha256": SHA}}}},
        "image.sandbox.archive", "source is 'registry'"),
    Bad("sandbox-archive-http", {"image": {"sandbox": {"source": "archive", "archive": {
        "url": "http://mirror.example/pause.tar", "sha256": SHA}}}}, "image.sandbox.archive.url",
        "'http://mirror.example/pause.tar'"),
    Bad("sandbox-archive-shell", {"image": {"sandbox": {"source": "archive", "archive": {
        "url": "/srv/pause$(reboot).tar", "sha256": SHA}}}}, "image.sandbox.archive.url", "pause$(reboot)"),
    Bad("verify-timeout-range", {"verify": {"timeout": 10}}, "verify.timeout", "got 10"),
    Bad("aws-keep-zero", {"image": {"aws": {"keep": 0}}}, "image.aws.keep", "got 0"),
    Bad("systemd-cgroup-string", {"config": {"systemd_cgroup": "yes"}}, "config.systemd_cgroup",
        "got 'yes', expected a boolean"),
    Bad("mirrors-mapping", {"config": {"registry": {"mirrors": {"docker.io": "x"}}}}, "config.registry.mirrors",
        "got {'docker.io': 'x'}, expected a list"),
    Bad("modules-string", {"system": {"modules": "overlay"}}, "system.modules", "got 'overlay', expected a list"),
    Bad("header-value-list", mirror(headers={"X-Token": ["a", "b"]}),
        "config.registry.mirrors[0].endpoints[0].headers.X-Token", "got ['a', 'b'], expected a string"),
    Bad("snapshotter-typo", {"config": {"snapshotter": "overlay"}}, "config.snapshotter",
        "got 'overlay', expected one of"),
    Bad("kill-mode-typo", {"unit": {"kill_mode": "proces"}}, "unit.kill_mode", "(did you mean 'process'?)"),
    Bad("method-typo", {"containerd": {"install": {"method": "tarbal"}}}, "containerd.install.method",
        "(did you mean 'tarball'?)"),
    Bad("capability-unknown", mirror(capabilities=["pull", "fetch"]),
        "config.registry.mirrors[0].endpoints[0].capabilities[1]", "got 'fetch'"),
    # --- unknown keys, with "did you mean"
    Bad("unknown-verison", {"containerd": {"verison": "1.7.24"}}, "containerd.verison",
        "unknown key (did you mean 'version'?)"),
    Bad("unknown-sandbox-dash", {"config": {"sandbox-image": "x"}}, "config.sandbox-image",
        "unknown key (did you mean 'sandbox_image'?)"),
    Bad("unknown-skipverify", mirror(skipverify=True), "config.registry.mirrors[0].endpoints[0].skipverify",
        "(did you mean 'skip_verify'?)"),
    Bad("unknown-Delegate", {"unit": {"Delegate": True}}, "unit.Delegate", "(did you mean 'delegate'?)"),
    Bad("unknown-top-level", {"mirrors": []}, "mirrors", "unknown key; allowed keys: apiVersion, name, containerd"),
    # --- URLs and digests
    Bad("endpoint-ftp", mirror("ftp://mirror.example"), "config.registry.mirrors[0].endpoints[0].url",
        "'ftp://mirror.example'"),
    Bad("endpoint-space", mirror("https://mirror example.com"), "config.registry.mirrors[0].endpoints[0].url",
        "'https://mirror example.com'"),
    Bad("endpoint-query", mirror("https://mirror.example/v2?ns=docker.io"),
        "config.registry.mirrors[0].endpoints[0].url",
        "?ns=docker.io"),
    Bad("endpoint-quote-dollar", mirror('https://mirror.example/"$(reboot)"'),
        "config.registry.mirrors[0].endpoints[0].url",
        '"$(reboot)"'),
    Bad("endpoint-newline", mirror("https://mirror.example/\nreboot"), "config.registry.mirrors[0].endpoints[0].url",
        "\\nreboot"),
    Bad("server-no-scheme",
        {"config": {"registry": {"mirrors": [{"host": "ghcr.io", "server": "ghcr.io", "endpoints": []}]}}},
        "config.registry.mirrors[0].server", "got 'ghcr.io'"),
    Bad("tarball-url-backticks", tarball(url="https://example.com/`id`.tgz"), "containerd.install.tarball.url", "`id`"),
    Bad("tarball-url-quote", tarball(url="https://example.com/a'b.tgz"), "containerd.install.tarball.url", "a'b.tgz"),
    Bad("checksum-url-injection", tarball(checksum_url="{url}.sha256; rm -rf /"),
        "containerd.install.tarball.checksum_url",
        "rm -rf /"),
    Bad("sha256-uppercase", tarball(sha256=SHA.upper()), "containerd.install.tarball.sha256", SHA.upper()[:20]),
    Bad("sha256-short", tarball(sha256=SHA[:63]), "containerd.install.tarball.sha256", SHA[:20]),
    Bad("sha256-prefixed", {"containerd": {"install": {"runc": {"sha256": "sha256:" + SHA}}}},
        "containerd.install.runc.sha256", "'sha256:0123"),
    Bad("base-checksum-md5", {"image": {"base": {"source": "/srv/base.qcow2", "checksum": "md5:" + SHA[:32]}}},
        "image.base.checksum", "'md5:0123"),
    Bad("documentation-not-url", {"unit": {"documentation": "man:containerd(8)"}}, "unit.documentation",
        "'man:containerd(8)'"),
    # --- duplicates
    Bad("duplicate-registry", {"config": {"registry": {"mirrors": [
        {"host": "docker.io", "endpoints": [{"url": "https://a.example"}]},
        {"host": "docker.io", "endpoints": [{"url": "https://b.example"}]}]}}},
        "config.registry.mirrors[1].host", "got 'docker.io' again (also at [0])"),
    Bad("duplicate-endpoint", {"config": {"registry": {"mirrors": [{"host": "docker.io", "endpoints": [
        {"url": "https://a.example"}, {"url": "https://b.example"},
        {"url": "https://a.example", "skip_verify": True}]}]}}},
        "config.registry.mirrors[0].endpoints[2].url", "got 'https://a.example' again (also at [0])"),
    Bad("mirror-without-endpoints-1x", {"config": {"registry": {"mirrors": [
        {"host": "registry.example:5000", "server": "https://registry.example:5000", "endpoints": []}]}}},
        "config.registry.mirrors[0].endpoints", "got [], but containerd 1.x ignores a hosts.toml without [host]"),
    Bad("duplicate-yaml-key", "name: one\nconfig:\n  oom_score: -999\nname: two\n", "<spec>", "duplicate key 'name'"),
    Bad("duplicate-yaml-key-nested", "config:\n  oom_score: -999\n  root: /data\n  oom_score: 0\n", "<spec>",
        "duplicate key 'oom_score'"),
    Bad("duplicate-check-name", {"verify": {"checks": [{"name": "ok", "run": "true"}, {"name": "ok", "run": "false"}]}},
        "verify.checks[1].name", "got 'ok' twice"),
    Bad("duplicate-after", {"unit": {"after": ["network.target", "network.target"]}}, "unit.after[1]",
        "got 'network.target' twice"),
    # --- legacy mirrors mixed with hosts-only features
    Bad("legacy-headers", legacy(headers={"Authorization": "Basic abc"}), "config.registry.mirrors[0].endpoints[0]",
        "sets headers, which the legacy registry.mirrors table cannot express"),
    Bad("legacy-skip-verify", legacy(skip_verify=True), "config.registry.mirrors[0].endpoints[0]", "sets skip_verify"),
    Bad("legacy-ca", legacy(ca="/etc/ssl/mirror.pem"), "config.registry.mirrors[0].endpoints[0]", "sets ca"),
    Bad("legacy-override-path", legacy(url="https://m.example/v2/p", override_path=True),
        "config.registry.mirrors[0].endpoints[0]", "sets capabilities/override_path"),
    Bad("legacy-push", legacy(capabilities=["pull", "resolve", "push"]), "config.registry.mirrors[0].endpoints[0]",
        "sets capabilities/override_path"),
    # --- mirror endpoint paths: what containerd would request must be a registry API path
    Bad("override-path-without-v2", mirror("https://m.example/google-containers/", override_path=True),
        "config.registry.mirrors[0].endpoints[0].url", "would request /google-containers/<repo>/manifests/<ref>"),
    Bad("api-root-without-v2", mirror("https://m.example/prefix", path="api-root"),
        "config.registry.mirrors[0].endpoints[0].url", "got 'https://m.example/prefix'"),
    Bad("api-root-without-path", mirror("https://m.example", path="api-root"),
        "config.registry.mirrors[0].endpoints[0].url", "which has no /v2"),
    Bad("path-and-override-path", mirror("https://m.example/v2/p", path="api-root", override_path=True),
        "config.registry.mirrors[0].endpoints[0].override_path", "path replaces override_path"),
    Bad("path-unknown", mirror("https://m.example/p", path="prefixed"),
        "config.registry.mirrors[0].endpoints[0].path", "got 'prefixed', expected one of prefix, api-root"),
    Bad("legacy-path-without-v2", legacy(url="https://m.example/google-containers"),
        "config.registry.mirrors[0].endpoints[0].url", "would request /google-containers/<repo>"),
    Bad("legacy-server", {"config": {"registry": {"mode": "legacy", "mirrors": [
        {"host": "docker.io", "server": "https://other.example", "endpoints": [{"url": "https://m.example"}]}]}}},
        "config.registry.mirrors[0].server", "always falls back to https://registry-1.docker.io"),
    # --- combinations whose containerd runs without a CRI plugin (tests/test_cri.py shows each on the daemon)
    Bad("root-is-state", {"config": {"root": "/var/lib/containerd", "state": "/var/lib/containerd/"}},
        "config.state", "the same path as config.root"),
    Bad("cri-plugin-disabled-on-a-kubelet-node",
        {"config": {"overrides": {"disabled_plugins": ["io.containerd.grpc.v1.cri"]}}},
        "config.overrides.disabled_plugins", "got ['io.containerd.grpc.v1.cri']: io.containerd.grpc.v1.cri is "
        "containerd's CRI plugin"),
    Bad("cri-plugin-disabled-on-a-kubelet-node-2x",
        {"containerd": {"version": "2.1.9"},
         "config": {"overrides": {"disabled_plugins": ["io.containerd.cri.v1.images"]}}},
        "config.overrides.disabled_plugins", "expected a list without io.containerd.grpc.v1.cri, "
        "io.containerd.cri.v1.runtime, io.containerd.cri.v1.images, or system.profile: none"),
    Bad("stargz-without-plugin", {"config": {"snapshotter": "stargz"}}, "config.snapshotter",
        "got 'stargz' with no plugin behind it"),
    Bad("devmapper-without-pool", {"config": {"snapshotter": "devmapper"}}, "config.snapshotter",
        "got 'devmapper' with no plugin behind it"),
    Bad("tls-configs-with-config-path", {"config": {"overrides": {"plugins": {"io.containerd.grpc.v1.cri": {
        "registry": {"configs": {"m.example": {"tls": {"insecure_skip_verify": True}}}}}}}}},
        "config.overrides.plugins.io.containerd.grpc.v1.cri.registry.configs.m.example.tls",
        "got {'insecure_skip_verify': True} with registry.config_path set"),
    # --- proxy
    Bad("proxy-ftp", {"proxy": {"http": "ftp://proxy.example:21"}}, "proxy.http", "got 'ftp://proxy.example:21'"),
    Bad("proxy-quote", {"proxy": {"https": 'http://p.example" "X=1'}}, "proxy.https", "expected an http(s):// URL"),
    Bad("no-proxy-space", {"proxy": {"http": "http://p.example:3128", "no_proxy": ["a b"]}}, "proxy.no_proxy[0]",
        "got 'a b', expected a host, .domain"),
    # --- versions and install methods
    Bad("containerd-1.5", {"containerd": {"version": "1.5.9"}}, "containerd.version", "got '1.5.9', expected 1.6.x"),
    Bad("containerd-2.5", {"containerd": {"version": "2.5.0"}}, "containerd.version",
        "got '2.5.0', expected 1.6.x-1.7.x, 2.0.x-2.4.x"),
    Bad("containerd-3", {"containerd": {"version": "3.0.0"}}, "containerd.version", "got '3.0.0'"),
    Bad("containerd-1.8", {"containerd": {"version": "1.8.0"}}, "containerd.version",
        "got '1.8.0', expected 1.6.x-1.7.x, 2.0.x-2.4.x (the versions whose reference config imagebuild carries: "
        "1.6, 1.7, 2.0, 2.1, 2.2, 2.3, 2.4)"),
    Bad("containerd-0", {"containerd": {"version": "0.2.0"}}, "containerd.version", "got '0.2.0', expected 1.6.x"),
    Bad("containerd-1.8-package", pkg("1.8.0-1") | {"containerd": {"version": "1.8.0", "install": {
        "method": "package", "package": {"version": "1.8.0-1"}}}}, "containerd.version", "got '1.8.0'"),
    Bad("containerd-two-part", {"containerd": {"version": "1.7"}}, "containerd.version",
        "got '1.7', expected a version"),
    Bad("containerd-2.3-package", {"containerd": {"version": "2.3.7", "install": {"method": "package", "package": {
        "version": "2.3.7-1"}}}}, "containerd.version",
        "got '2.3.7' with install.method package, expected 1.6.x-1.7.x, 2.1.x: a package install supports only the "
        "families Debian packages (containerd 1.6, 1.7, 2.1); containerd 2.3 installs with install.method: tarball"),
    Bad("package-without-version", pkg(), "containerd.install.package.version", "got null"),
    Bad("package-version-mismatch", pkg("1.7.24~ds1-6"), "containerd.install.package.version",
        "got '1.7.24~ds1-6', expected a version of containerd 1.6.20"),
    Bad("package-version-longer", pkg("1.6.200~ds1-1"), "containerd.install.package.version",
        "got '1.6.200~ds1-1', expected a version of containerd 1.6.20"),
    Bad("package-version-injection", pkg("1.6.20;reboot"), "containerd.install.package.version", "'1.6.20;reboot'"),
    Bad("package-name-space", pkg("1.6.20-1", name="containerd io"), "containerd.install.package.name",
        "'containerd io'"),
    # --- image.os and image.architecture
    Bad("os-unknown", {"image": {"os": "debian-11"}}, "image.os",
        "got 'debian-11', expected one of debian-12, debian-13"),
    Bad("os-injection", {"image": {"os": "debian-13;reboot"}}, "image.os", "'debian-13;reboot'"),
    Bad("architecture-unknown", {"image": {"architecture": "x86_64"}}, "image.architecture",
        "got 'x86_64', expected one of amd64, arm64"),
    Bad("debian-13-containerd-1.6", {"image": {"os": "debian-13"}}, "containerd.version",
        "got '1.6.20' with image.os debian-13, expected containerd 1.7.x, 2.0.x-2.4.x there"),
    Bad("debian-13-containerd-1.6-arm64", {"image": {"os": "debian-13", "architecture": "arm64"},
                                           "containerd": {"version": "1.6.38"}}, "containerd.version",
        "got '1.6.38' with image.os debian-13"),
    Bad("debian-13-package-not-trixie", {"image": {"os": "debian-13"}, "containerd": {
        "version": "1.7.22", "install": {"method": "package", "package": {"version": "1.7.22~ds1-1"}}}},
        "containerd.version", "got '1.7.22' with install.method package on image.os debian-13, expected 1.7.24"),
    Bad("debian-13-package-2.1", {"image": {"os": "debian-13"}, "containerd": {
        "version": "2.1.9", "install": {"method": "package", "package": {"version": "2.1.9~ds1-1"}}}},
        "containerd.version", "got '2.1.9' with install.method package on image.os debian-13, expected 1.7.24"),
    Bad("arm64-amd64-tarball-url", {"image": {"architecture": "arm64"}, "containerd": {"install": {"tarball": {
        "url": "https://m.example/containerd-{version}-linux-amd64.tar.gz"}}}}, "containerd.install.tarball.url",
        "got 'https://m.example/containerd-{version}-linux-amd64.tar.gz', which names amd64, with "
        "image.architecture arm64: expected a URL of arm64 binaries (write {arch} where the architecture goes)"),
    Bad("arm64-x86_64-runc-checksum", {"image": {"architecture": "arm64"}, "containerd": {"install": {"runc": {
        "checksum_url": "https://m.example/runc.x86_64.sha256sum"}}}}, "containerd.install.runc.checksum_url",
        "which names x86_64, with image.architecture arm64"),
    Bad("amd64-arm64-cni-url", {"containerd": {"install": {"cni_plugins": {
        "url": "https://m.example/cni-plugins-linux-arm64-v{version}.tgz"}}}}, "containerd.install.cni_plugins.url",
        "which names arm64, with image.architecture amd64"),
    Bad("amd64-aarch64-runc-url", {"containerd": {"install": {"runc": {"url": "https://m.example/aarch64/runc"}}}},
        "containerd.install.runc.url", "which names aarch64, with image.architecture amd64"),
    Bad("tarball-unpinned", tarball(sha256=None, checksum_url=None), "containerd.install.tarball.sha256",
        "got null with checksum_url null"),
    # --- sandbox_image
    Bad("sandbox-quote", {"config": {"sandbox_image": 'registry.k8s.io/pause:3.9"'}}, "config.sandbox_image",
        'pause:3.9"'),
    Bad("sandbox-dollar", {"config": {"sandbox_image": "registry.k8s.io/pause:$TAG"}}, "config.sandbox_image",
        "pause:$TAG"),
    Bad("sandbox-backtick", {"config": {"sandbox_image": "registry.k8s.io/`id`:3.9"}}, "config.sandbox_image", "`id`"),
    Bad("sandbox-newline", {"config": {"sandbox_image": "registry.k8s.io/pause:3.9\nroot = \"/\""}},
        "config.sandbox_image", "control characters"),
    Bad("sandbox-uppercase-repository", {"config": {"sandbox_image": "registry.k8s.io/Pause:3.9"}},
        "config.sandbox_image",
        "got 'registry.k8s.io/Pause:3.9', expected an image reference like registry/name:tag (the repository path in "
        "lowercase)"),
    Bad("sandbox-uppercase-no-registry", {"config": {"sandbox_image": "MyOrg/pause:3.9"}}, "config.sandbox_image",
        "'MyOrg/pause:3.9'"),
    Bad("sandbox-bad-tag", {"config": {"sandbox_image": "registry.k8s.io/pause:-3.9"}}, "config.sandbox_image",
        "'registry.k8s.io/pause:-3.9'"),
    Bad("sandbox-bad-digest", {"config": {"sandbox_image": "registry.k8s.io/pause@sha256:xyz"}}, "config.sandbox_image",
        "'registry.k8s.io/pause@sha256:xyz'"),
    Bad("sandbox-nul", {"config": {"sandbox_image": "registry.k8s.io/pause:3.9\x00"}}, "config.sandbox_image", "\\x00"),
    # --- headers: control characters refused (quotes and $ are allowed, see below)
    Bad("header-newline", mirror(headers={"X-Token": "abc\r\nX-Evil: 1"}),
        "config.registry.mirrors[0].endpoints[0].headers.X-Token", "\\r\\nX-Evil"),
    Bad("header-nul", mirror(headers={"X-Token": "abc\x00"}), "config.registry.mirrors[0].endpoints[0].headers.X-Token",
        "\\x00"),
    Bad("header-tab", mirror(headers={"X-Token": "a\tb"}), "config.registry.mirrors[0].endpoints[0].headers.X-Token",
        "\\t"),
    Bad("header-name-space", mirror(headers={"X Token": "abc"}),
        "config.registry.mirrors[0].endpoints[0].headers.X Token",
        "bad key 'X Token'"),
    Bad("header-name-colon", mirror(headers={"X-Token:": "abc"}),
        "config.registry.mirrors[0].endpoints[0].headers.X-Token:",
        "bad key 'X-Token:'"),
    # --- runtimes
    Bad("runtime-binary-semicolon", runtime(binary_name="/usr/bin/nvidia;reboot"), "config.runtimes.nvidia.binary_name",
        "'/usr/bin/nvidia;reboot'"),
    Bad("runtime-binary-quote", runtime(binary_name='/usr/bin/nvidia"'), "config.runtimes.nvidia.binary_name",
        "nvidia\"'"),
    Bad("runtime-binary-dollar", runtime(binary_name="/usr/bin/$RUNTIME"), "config.runtimes.nvidia.binary_name",
        "$RUNTIME"),
    Bad("runtime-binary-relative", runtime(binary_name="nvidia-container-runtime"),
        "config.runtimes.nvidia.binary_name",
        "'nvidia-container-runtime'"),
    Bad("runtime-config-backtick", runtime(config_path="/etc/`id`.toml"), "config.runtimes.nvidia.config_path", "`id`"),
    Bad("runtime-type-shell", runtime(runtime_type="io.containerd.runc.v2;x"), "config.runtimes.nvidia.runtime_type",
        "'io.containerd.runc.v2;x'"),
    Bad("runtime-name-space", {"config": {"runtimes": {"my runtime": {}}}}, "config.runtimes.my runtime",
        "bad key 'my runtime'"),
    Bad("runtime-runc", {"config": {"runtimes": {"runc": {}}}}, "config.runtimes.runc", "runc is built in"),
    Bad("default-runtime-unknown", {"config": {"default_runtime": "nvidia"}}, "config.default_runtime",
        "got 'nvidia', expected runc or one of"),
    # --- unit fields
    Bad("description-dollar", {"unit": {"description": "containerd $MAINPID"}}, "unit.description", "$MAINPID"),
    Bad("description-percent", {"unit": {"description": "containerd %n"}}, "unit.description", "%n"),
    Bad("description-newline", {"unit": {"description": "containerd\nExecStartPost=/bin/evil"}}, "unit.description",
        "\\nExecStartPost"),
    Bad("exec-start-backtick", {"unit": {"exec_start": "/usr/bin/containerd `id`"}}, "unit.exec_start", "`id`"),
    Bad("exec-start-dollar", {"unit": {"exec_start": "/usr/bin/containerd $OPTS"}}, "unit.exec_start", "$OPTS"),
    Bad("exec-start-relative", {"unit": {"exec_start": "containerd"}}, "unit.exec_start", "got 'containerd'"),
    Bad("exec-start-pre-quote", {"unit": {"exec_start_pre": ["-/sbin/modprobe 'overlay'"]}}, "unit.exec_start_pre[0]",
        "'overlay'"),
    Bad("limit-nofile-word", {"unit": {"limit_nofile": "unlimited"}}, "unit.limit_nofile", "got 'unlimited'"),
    Bad("limit-nofile-negative", {"unit": {"limit_nofile": -1}}, "unit.limit_nofile",
        "got -1, expected an integer from 0"),
    Bad("tasks-max-float", "unit:\n  tasks_max: 1.5\n", "unit.tasks_max", "got 1.5, expected a string or an integer"),
    Bad("limit-nproc-bool", "unit:\n  limit_nproc: true\n", "unit.limit_nproc",
        "got True, expected a string or an integer"),
    Bad("limit-core-huge", {"unit": {"limit_core": 2 ** 64}}, "unit.limit_core", f"got {2 ** 64}, expected an integer"),
    Bad("wanted-by-injection", {"unit": {"wanted_by": "multi-user.target; reboot"}}, "unit.wanted_by",
        "'multi-user.target; reboot'"),
    Bad("after-quote", {"unit": {"after": ['network.target"']}}, "unit.after[0]", "network.target\""),
    # --- kernel modules and sysctls
    Bad("module-semicolon", {"system": {"modules": ["overlay;reboot"]}}, "system.modules[0]", "'overlay;reboot'"),
    Bad("module-dollar", {"system": {"modules": ["$(reboot)"]}}, "system.modules[0]", "'$(reboot)'"),
    Bad("sysctl-key-dollar", {"system": {"sysctls": {"net.ipv4.$(reboot)": 1}}}, "system.sysctls.net.ipv4.$(reboot)",
        "bad key 'net.ipv4.$(reboot)'"),
    Bad("sysctl-key-flat", {"system": {"sysctls": {"kernel": 1}}}, "system.sysctls.kernel", "bad key 'kernel'"),
    Bad("sysctl-value-semicolon", {"system": {"sysctls": {"net.ipv4.ip_forward": "1; reboot"}}},
        "system.sysctls.net.ipv4.ip_forward", "'1; reboot'"),
    Bad("sysctl-value-quote", {"system": {"sysctls": {"net.ipv4.ip_forward": '"1"'}}},
        "system.sysctls.net.ipv4.ip_forward", "'\"1\"'"),
    Bad("sysctl-value-empty", {"system": {"sysctls": {"net.ipv4.ip_forward": ""}}},
        "system.sysctls.net.ipv4.ip_forward",
        "got '', expected a number or plain text (an empty value sets nothing"),
    Bad("sysctl-value-blank", {"system": {"sysctls": {"kernel.panic": "   "}}}, "system.sysctls.kernel.panic",
        "got '   ', expected a number or plain text"),
    Bad("sysctl-value-newline", {"system": {"sysctls": {"net.ipv4.ip_forward": "1\nkernel.panic = 0"}}},
        "system.sysctls.net.ipv4.ip_forward", "\\nkernel.panic"),
    # --- paths
    Bad("root-relative", {"config": {"root": "var/lib/containerd"}}, "config.root", "'var/lib/containerd'"),
    Bad("state-space", {"config": {"state": "/run/contain erd"}}, "config.state", "'/run/contain erd'"),
    Bad("config-path-dollar", {"config": {"registry": {"config_path": "/etc/$HOME"}}}, "config.registry.config_path",
        "'/etc/$HOME'"),
    Bad("imports-quote", {"config": {"imports": ["/etc/containerd/conf.d/*.toml\""]}}, "config.imports[0]",
        "*.toml\""),
    Bad("host-traversal", mirror(host="../../etc"), "config.registry.mirrors[0].host", "'../../etc'"),
    Bad("host-with-path", mirror(host="docker.io/library"), "config.registry.mirrors[0].host", "'docker.io/library'"),
    Bad("endpoint-ca-relative", mirror(ca="certs/ca.pem"), "config.registry.mirrors[0].endpoints[0].ca",
        "'certs/ca.pem'"),
    # --- image and aws
    Bad("base-source-quote", {"image": {"base": {"source": "/srv/base\".qcow2", "checksum": "sha256:" + SHA}}},
        "image.base.source", "base\".qcow2"),
    Bad("base-source-space", {"image": {"base": {"source": "/srv/my base.qcow2", "checksum": "sha256:" + SHA}}},
        "image.base.source", "'/srv/my base.qcow2'"),
    Bad("base-source-interpolation",
        {"image": {"base": {"source": "/srv/${var.x}.qcow2", "checksum": "sha256:" + SHA}}},
        "image.base.source", "${var.x}"),
    Bad("base-missing-checksum", {"image": {"base": {"source": "/srv/base.qcow2"}}}, "image.base.checksum",
        "is required"),
    Bad("packer-version-word", {"image": {"packer_version": "latest"}}, "image.packer_version", "got 'latest'"),
    # --- where users stumble: the message says what YAML made of it, or where the value comes from
    Bad("packer-version-unquoted", "image:\n  packer_version: 1.10\n", "image.packer_version",
        'got 1.1, expected a string: YAML reads the unquoted 1.10 as the number 1.1; quote it: "1.10"'),
    Bad("packer-version-unquoted-json", '{"image": {"packer_version": 1.10}}', "image.packer_version",
        'YAML reads the unquoted 1.10 as the number 1.1; quote it: "1.10"'),
    Bad("packer-version-unquoted-same", "image:\n  packer_version: 1.6\n", "image.packer_version",
        'got 1.6, expected a string: quote it: "1.6"'),
    Bad("containerd-version-number", "containerd:\n  version: 2.1\n", "containerd.version", 'quote it: "2.1"'),
    Bad("base-as-url", {"image": {"base": "https://cloud.debian.org/images/cloud/bookworm/latest/"
                                          "debian-12-generic-amd64.qcow2"}}, "image.base",
        "expected a mapping with the keys source (required), checksum (required), boot_mode, insecure; the URL goes in "
        "image.base.source"),
    Bad("base-as-path", {"image": {"base": "/srv/images/base.qcow2"}}, "image.base",
        "the URL goes in image.base.source"),
    Bad("section-as-number", {"proxy": 3128}, "proxy", "got 3128, expected a mapping with the keys http, https, "
        "no_proxy"),
    Bad("package-version-from-apt-cache", pkg("1.7.24~ds1-6"), "containerd.install.package.version",
        "the version strings are what `apt-cache policy containerd` lists on Debian 12 (bookworm, image.os "
        "debian-12)"),
    Bad("package-version-null-from-apt-cache", {"image": {"os": "debian-13"}, "containerd": {
        "version": "1.7.24", "install": {"method": "package", "package": {"name": "containerd"}}}},
        "containerd.install.package.version", "`apt-cache policy containerd` lists on Debian 13 (trixie"),
    Bad("package-version-pattern-from-apt-cache", pkg("1.6.20 ds1"), "containerd.install.package.version",
        "a Debian version string as `apt-cache policy containerd` prints it"),
    Bad("tag-value-interpolation", tags({"Team": '${var.x} %{ if true }"q"'}), "image.aws.tags.Team", "${var.x}"),
    Bad("tag-value-backtick", tags({"Team": "`id`"}), "image.aws.tags.Team", "`id`"),
    Bad("tag-value-newline", tags({"Team": "a\nb"}), "image.aws.tags.Team", "\\n"),
    Bad("tag-key-quote", tags({'Team"': "infra"}), "image.aws.tags.Team\"", "bad key 'Team\"'"),
    Bad("aws-region", {"image": {"aws": {"region": "mars-north-1a"}}}, "image.aws.region", "'mars-north-1a'"),
    Bad("aws-share-short", {"image": {"aws": {"share_with_accounts": ["1234"]}}},
        "image.aws.share_with_accounts[0]", "'1234'"),
    Bad("aws-share-encrypted", {"image": {"aws": {"encrypt_boot": True, "share_with_accounts": ["123456789012"]}}},
        "image.aws.share_with_accounts", "got ['123456789012'] with encrypt_boot: true"),
    Bad("tag-value-over-startsnapshot-limit", tags({"Team": "v" * 256}), "image.aws.tags.Team", "'vvvv"),
    Bad("tag-key-over-startsnapshot-limit", tags({"k" * 128: "v"}), "image.aws.tags." + "k" * 128, "bad key"),
    Bad("too-many-tags", tags({f"t{i}": "v" for i in range(42)}), "image.aws.tags", "got 42 tags"),
    Bad("kms-without-encrypt", {"image": {"aws": {"region": "eu-west-1", "kms_keys": {
        "eu-west-1": "arn:aws:kms:eu-west-1:123456789012:key/abcd"}}}}, "image.aws.kms_keys", "encrypt_boot: false"),
    Bad("kms-missing-copy-region", {"image": {"aws": {"region": "eu-west-1", "copy_regions": ["us-east-1"],
        "encrypt_boot": True, "kms_keys": {"eu-west-1": "arn:aws:kms:eu-west-1:123456789012:key/abcd"}}}},
        "image.aws.kms_keys.us-east-1", "missing"),
    Bad("kms-key-of-another-region", {"image": {"aws": {"region": "eu-west-1", "encrypt_boot": True, "kms_keys": {
        "eu-west-1": "arn:aws:kms:us-east-1:123456789012:key/abcd"}}}}, "image.aws.kms_keys.eu-west-1", "us-east-1"),
    Bad("kms-alias", {"image": {"aws": {"encrypt_boot": True, "kms_keys": {"us-east-1": "alias/mine"}}}},
        "image.aws.kms_keys.us-east-1", "'alias/mine'"),
    Bad("share-org-not-arn", {"image": {"aws": {"share_with_organizations": ["o-abc"]}}},
        "image.aws.share_with_organizations[0]", "'o-abc'"),
    Bad("share-ou-not-arn", {"image": {"aws": {"share_with_ous": ["ou-abcd-12345678"]}}},
        "image.aws.share_with_ous[0]", "'ou-abcd-12345678'"),
    Bad("deprecate-zero-days", {"image": {"aws": {"deprecate_after_days": 0}}}, "image.aws.deprecate_after_days",
        "got 0"),
    Bad("ssm-relative", {"image": {"aws": {"ssm_parameter": "imagebuild/latest"}}}, "image.aws.ssm_parameter",
        "'imagebuild/latest'"),
    # --- verify checks
    Bad("check-name-space", {"verify": {"checks": [{"name": "my check", "run": "true"}]}}, "verify.checks[0].name",
        "'my check'"),
    Bad("check-name-injection", {"verify": {"checks": [{"name": "a;reboot", "run": "true"}]}}, "verify.checks[0].name",
        "'a;reboot'"),
    Bad("check-name-quote", {"verify": {"checks": [{"name": "a\"b", "run": "true"}]}}, "verify.checks[0].name", "a\"b"),
    Bad("check-run-nul", {"verify": {"checks": [{"name": "nul", "run": "true\x00"}]}}, "verify.checks[0].run", "\\x00"),
    Bad("check-run-carriage-return", {"verify": {"checks": [{"name": "cr", "run": "true\r\nreboot"}]}},
        "verify.checks[0].run", "control characters other than newline and tab"),
    Bad("check-without-run", {"verify": {"checks": [{"name": "x"}]}}, "verify.checks[0].run", "is required"),
    # --- overrides: what TOML, JSON and the check can all carry, and never a key a typed setting owns
    Bad("override-null", {"config": {"overrides": {"debug": {"level": None}}}}, "config.overrides.debug.level",
        "got null"),
    Bad("override-nul", {"config": {"overrides": {"debug": {"level": "x\x00"}}}}, "config.overrides.debug.level",
        "NUL character"),
    Bad("override-date", "config:\n  overrides:\n    debug:\n      when: 2024-01-01\n", "config.overrides.debug.when",
        "datetime.date(2024, 1, 1)"),
    Bad("override-huge-int", {"config": {"overrides": {"grpc": {"max_recv_message_size": 2 ** 64}}}},
        "config.overrides.grpc.max_recv_message_size", str(2 ** 64)),
    Bad("override-typed-key", {"config": {"overrides": {"oom_score": 0}}}, "config.overrides.oom_score",
        "got 0, which sets oom_score: use config.oom_score instead"),
    Bad("override-replaces-table", {"config": {"overrides": {"plugins": {"io.containerd.grpc.v1.cri": "off"}}}},
        "config.overrides.plugins.io.containerd.grpc.v1.cri", "got 'off'"),
    Bad("override-mirrors-in-hosts-mode", {"config": {"overrides": {"plugins": {"io.containerd.grpc.v1.cri": {
        "registry": {"mirrors": {"docker.io": {"endpoint": ["https://m.example"]}}}}}}}},
        "config.overrides.plugins.io.containerd.grpc.v1.cri.registry.mirrors.docker.io.endpoint",
        "use config.registry instead"),
    Bad("override-version", {"config": {"overrides": {"version": 3}}}, "config.overrides.version",
        "use containerd.version instead"),
    # --- override key paths the family's own default lacks (spec.override_keys); moved keys stay renames'
    Bad("override-typo-2.3", {"containerd": {"version": "2.3.7"}, "config": {"overrides": {
        'plugins."io.containerd.cri.v1.runtime".enable_cdl': True}}},
        "config.overrides.plugins.io.containerd.cri.v1.runtime.enable_cdl",
        "containerd 2.3 (config version 4) has no key enable_cdl under plugins.io.containerd.cri.v1.runtime in "
        "its default config, and would ignore it; nearest real key: plugins.io.containerd.cri.v1.runtime.enable_cdi"),
    Bad("override-v2-path-on-2.1", {"containerd": {"version": "2.1.9"}, "config": {"overrides": {
        'plugins."io.containerd.grpc.v1.cri".containerd.snapshotter': "native"}}},
        "config.overrides.plugins.io.containerd.grpc.v1.cri.containerd.snapshotter",
        "reads it at plugins.io.containerd.cri.v1.images.snapshotter"),
    Bad("override-unknown-plugin", {"containerd": {"version": "2.3.7"}, "config": {"overrides": {
        "plugins": {"io.containerd.snapshoter.v1.overlayfs": {"sync_remove": True}}}}},
        "config.overrides.plugins.io.containerd.snapshoter.v1.overlayfs",
        "containerd 2.3 (config version 4) has no plugin io.containerd.snapshoter.v1.overlayfs under plugins in its "
        "default config, and would ignore it; nearest real plugin: plugins.io.containerd.snapshotter.v1.overlayfs; "
        "a plugin outside the default config (a third-party proxy plugin) goes in config.extra_plugins"),
    Bad("override-runc-option-typo", {"containerd": {"version": "2.3.7"}, "config": {"overrides": {
        "plugins.io.containerd.cri.v1.runtime.containerd.runtimes.runc.options": {"NoNewKeyrin": True}}}},
        "config.overrides.plugins.io.containerd.cri.v1.runtime.containerd.runtimes.runc.options.NoNewKeyrin",
        "nearest real key: plugins.io.containerd.cri.v1.runtime.containerd.runtimes.runc.options.NoNewKeyring"),
    Bad("override-own-runtime-key-typo", {"containerd": {"version": "1.7.24"}, "config": {"overrides": {
        'plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata': {"runtime_typ": "io.containerd.kata.v2"}}}},
        "config.overrides.plugins.io.containerd.grpc.v1.cri.containerd.runtimes.kata.runtime_typ",
        "containerd 1.7 (config version 2) has no key runtime_typ under "
        "plugins.io.containerd.grpc.v1.cri.containerd.runtimes.kata"),
    Bad("extra-plugin-bad-name", {"config": {"extra_plugins": ["a b"]}}, "config.extra_plugins[0]", "'a b'"),
    # containerd 1.x's TOML parser refuses `"a\"b" = ...` (2.x reads it): the config would not load.
    Bad("override-key-quote-1x", {"config": {"overrides": {"timeouts": {'my"timeout': "5s"}}}},
        'config.overrides.timeouts.my"timeout', "containerd 1.x cannot read a key holding a double quote"),
    # typed overrides: a key containerd's own default has is checked against the type it has there
    Bad("override-string-for-int", {"config": {"overrides": {"grpc": {"max_recv_message_size": "16MB"}}}},
        "config.overrides.grpc.max_recv_message_size",
        "got '16MB' (string), expected an integer, the type containerd 1.6 gives this key (its default: 16777216)"),
    Bad("override-dotted-string-for-int", {"config": {"overrides": {"grpc.max_recv_message_size": "16MB"}}},
        "config.overrides.grpc.max_recv_message_size", "got '16MB' (string), expected an integer"),
    Bad("override-bool-for-string", {"config": {"overrides": {"debug.level": True}}}, "config.overrides.debug.level",
        "got True (boolean), expected a string"),
    Bad("override-yes-for-bool", "config:\n  overrides:\n    plugins.io.containerd.grpc.v1.cri.enable_selinux: yes\n",
        "config.overrides.plugins.io.containerd.grpc.v1.cri.enable_selinux", "got 'yes' (string), expected a boolean"),
    Bad("override-int-for-bool-2x", {"containerd": {"version": "2.1.9"}, "config": {"overrides": {
        "plugins": {"io.containerd.cri.v1.runtime": {"enable_cdi": 1}}}}},
        "config.overrides.plugins.io.containerd.cri.v1.runtime.enable_cdi",
        "got 1 (integer), expected a boolean, the type containerd 2.1 gives this key (its default: True)"),
    Bad("override-scalar-for-table", {"config": {"overrides": {"grpc": 5}}}, "config.overrides.grpc",
        "got 5 (integer), expected a table"),
    Bad("override-dotted-into-a-value", {"config": {"overrides": {"grpc.max_recv_message_size.x": 1}}},
        "config.overrides.grpc.max_recv_message_size",
        "got a table (from config.overrides.grpc.max_recv_message_size.x), "
        "expected an integer"),
    Bad("override-string-for-list", {"config": {"overrides": {"disabled_plugins": "io.containerd.snapshotter.v1.zfs"}}},
        "config.overrides.disabled_plugins", "got 'io.containerd.snapshotter.v1.zfs' (string), expected a list"),
    Bad("override-list-item-type", {"containerd": {"version": "1.7.24"}, "config": {"overrides": {
        "plugins": {"io.containerd.grpc.v1.cri": {
            "cdi_spec_dirs": ["/etc/cdi", 7]}}}}},
        "config.overrides.plugins.io.containerd.grpc.v1.cri.cdi_spec_dirs[1]", "got 7 (integer), expected a string"),
    Bad("override-list-of-tables-type", {"containerd": {"version": "1.7.24"}, "config": {"overrides": {
        "plugins.io.containerd.transfer.v1.local.unpack_config": [{"platform": "linux/amd64", "snapshotter": 1}]}}},
        "config.overrides.plugins.io.containerd.transfer.v1.local.unpack_config[0].snapshotter",
        "got 1 (integer), expected a string"),
    Bad("override-set-twice", {"config": {"overrides": {"grpc.max_recv_message_size": 1 << 23,
                                                        "grpc": {"max_recv_message_size": 1 << 24}}}},
        "config.overrides.grpc.max_recv_message_size", "set twice"),
    Bad("override-surrogate", '{"config": {"overrides": {"debug": {"level": "a\\ud800"}}}}',
        "config.overrides.debug.level", "lone UTF-16 surrogate"),
    Bad("description-surrogate", 'unit:\n  description: "containerd \\udfff"\n', "unit.description",
        "lone UTF-16 surrogate"),
    # --- keys a containerd family moved or removed (imagebuild/spec/renames.py): the replacement is named
    Bad("removed-2.4-enable-cdi", {"containerd": {"version": "2.4.2"}, "config": {"overrides": {
        "plugins": {"io.containerd.cri.v1.runtime": {"enable_cdi": False}}}}},
        "config.overrides.plugins.io.containerd.cri.v1.runtime.enable_cdi",
        "got False, but containerd 2.4 has no plugins.io.containerd.cri.v1.runtime.enable_cdi: CDI is always on"),
    Bad("removed-2.4-cni-bin-dir", {"containerd": {"version": "2.4.2"}, "config": {"overrides": {
        "plugins.io.containerd.cri.v1.runtime.cni.bin_dir": "/usr/lib/cni"}}},
        "config.overrides.plugins.io.containerd.cri.v1.runtime.cni.bin_dir",
        "got '/usr/lib/cni', but containerd 2.4 (config version 4) reads it at "
        "plugins.io.containerd.cri.v1.runtime.cni.bin_dirs (containerd 2.4 removed the single CNI bin_dir (bin_dirs "
        "is a list)), and ignores it here: set config.overrides.plugins.io.containerd.cri.v1.runtime.cni.bin_dirs "
        "instead"),
    Bad("removed-2.4-v2-cni-bin-dir", {"containerd": {"version": "2.4.0"}, "config": {"overrides": {
        "plugins": {"io.containerd.grpc.v1.cri": {"cni": {"bin_dir": "/usr/lib/cni"}}}}}},
        "config.overrides.plugins.io.containerd.grpc.v1.cri.cni.bin_dir",
        "set config.overrides.plugins.io.containerd.cri.v1.runtime.cni.bin_dirs instead"),
    Bad("removed-2.4-otlp", {"containerd": {"version": "2.4.2"}, "config": {"overrides": {
        "plugins": {"io.containerd.tracing.processor.v1.otlp": {"endpoint": "otel.example:4317"}}}}},
        "config.overrides.plugins.io.containerd.tracing.processor.v1.otlp.endpoint",
        "got 'otel.example:4317', but containerd 2.4 has no plugins.io.containerd.tracing.processor.v1.otlp: "
        "containerd 2.4 reads tracing settings only from OTEL_* environment variables"),
    Bad("removed-2.4-tracing", {"containerd": {"version": "2.4.2"}, "config": {"overrides": {
        "plugins.io.containerd.internal.v1.tracing.sampling_ratio": 0.5}}},
        "config.overrides.plugins.io.containerd.internal.v1.tracing.sampling_ratio", "OTEL_TRACES_SAMPLER"),
    Bad("removed-2.4-restore-via-create", {"containerd": {"version": "2.4.2"}, "config": {"overrides": {
        "plugins.io.containerd.cri.v1.runtime.enable_experimental_restore_via_create": True}}},
        "config.overrides.plugins.io.containerd.cri.v1.runtime.enable_experimental_restore_via_create",
        "got True, but containerd 2.4 has no"),
    Bad("moved-v4-grpc", {"containerd": {"version": "2.3.7"}, "config": {"overrides": {
        "grpc": {"max_recv_message_size": 33554432}}}}, "config.overrides.grpc.max_recv_message_size",
        "got 33554432, but containerd 2.3 (config version 4) reads it at "
        "plugins.io.containerd.server.v1.grpc.max_recv_message_size (config version 4 moved the server settings into "
        "plugins), and ignores it here: set "
        "config.overrides.plugins.io.containerd.server.v1.grpc.max_recv_message_size"),
    Bad("moved-v4-grpc-dotted", {"containerd": {"version": "2.4.2"}, "config": {"overrides": {
        "grpc.max_send_message_size": 33554432}}}, "config.overrides.grpc.max_send_message_size",
        "set config.overrides.plugins.io.containerd.server.v1.grpc.max_send_message_size instead"),
    Bad("moved-v4-grpc-tcp", {"containerd": {"version": "2.3.7"}, "config": {"overrides": {
        "grpc": {"tcp_address": "0.0.0.0:1234"}}}}, "config.overrides.grpc.tcp_address",
        "set config.overrides.plugins.io.containerd.server.v1.grpc-tcp.address instead"),
    Bad("moved-v4-ttrpc", {"containerd": {"version": "2.3.7"}, "config": {"overrides": {
        "ttrpc": {"uid": 1000}}}}, "config.overrides.ttrpc.uid",
        "set config.overrides.plugins.io.containerd.server.v1.ttrpc.uid instead"),
    Bad("moved-v4-debug-address", {"containerd": {"version": "2.3.7"}, "config": {"overrides": {
        "debug": {"level": "info", "address": "/run/containerd/debug.sock"}}}}, "config.overrides.debug.address",
        "set config.overrides.plugins.io.containerd.server.v1.debug.address instead"),
    Bad("moved-v4-metrics", {"containerd": {"version": "2.4.2"}, "config": {"overrides": {
        "metrics": {"address": "127.0.0.1:1338", "grpc_histogram": True}}}}, "config.overrides.metrics.grpc_histogram",
        "set config.overrides.plugins.io.containerd.metrics.v1.grpc-prometheus.grpc_histogram instead"),
    Bad("moved-v3-cri-runtime-key", {"containerd": {"version": "2.1.9"}, "config": {"overrides": {
        "plugins.io.containerd.grpc.v1.cri.enable_selinux": True}}},
        "config.overrides.plugins.io.containerd.grpc.v1.cri.enable_selinux",
        "got True, but containerd 2.1 (config version 3) reads it at "
        "plugins.io.containerd.cri.v1.runtime.enable_selinux (config version 3 moved the CRI plugin's settings), "
        "and ignores it here: set "
        "config.overrides.plugins.io.containerd.cri.v1.runtime.enable_selinux instead"),
    Bad("moved-v3-cri-images-key", {"containerd": {"version": "2.3.7"}, "config": {"overrides": {
        "plugins": {"io.containerd.grpc.v1.cri": {"max_concurrent_downloads": 5}}}}},
        "config.overrides.plugins.io.containerd.grpc.v1.cri.max_concurrent_downloads",
        "set config.overrides.plugins.io.containerd.cri.v1.images.max_concurrent_downloads instead"),
    Bad("moved-v3-sandbox-image", {"containerd": {"version": "2.2.10"}, "config": {"overrides": {
        "plugins": {"io.containerd.grpc.v1.cri": {"sandbox_image": "registry.k8s.io/pause:3.10"}}}}},
        "config.overrides.plugins.io.containerd.grpc.v1.cri.sandbox_image",
        "reads it at plugins.io.containerd.cri.v1.images.pinned_images.sandbox (config version 3 moved the CRI "
        "plugin's settings), and ignores it here: set config.sandbox_image instead"),
    Bad("grpc-message-limit-too-small-v4", {"containerd": {"version": "2.3.7"}, "config": {"overrides": {
        "plugins": {"io.containerd.server.v1.grpc": {"max_recv_message_size": 1024}}}}},
        "config.overrides.plugins.io.containerd.server.v1.grpc.max_recv_message_size", "got 1024, expected at least"),
    # --- spec versions and renamed keys
    Bad("api-version-unknown", {"apiVersion": "imagebuild/v2"}, "apiVersion",
        "got 'imagebuild/v2', expected one of imagebuild/v1 (the spec versions this imagebuild reads)"),
    Bad("api-version-kubernetes-style", "apiVersion: v1\nname: x\n", "apiVersion", "got 'v1', expected one of"),
    Bad("api-version-number", "apiVersion: 1\n", "apiVersion", "got 1, expected one of imagebuild/v1"),
    Bad("api-version-null", "apiVersion: null\n", "apiVersion", "got None, expected one of imagebuild/v1"),
    Bad("renamed-key-beside-new-name", {"image": {"aws": {"share_with": ["111122223333"],
                                                          "share_with_accounts": ["111122223333"]}}},
        "image.aws.share_with", "set together with its new name image.aws.share_with_accounts"),
    Bad("renamed-key-bad-value", {"image": {"aws": {"share_with": ["1234"]}}}, "image.aws.share_with[0]",
        "got '1234', expected a 12-digit account id (image.aws.share_with is now image.aws.share_with_accounts)"),
    Bad("tag-key-aws-prefix", tags({"aws:created-by": "me"}), "image.aws.tags.aws:created-by", "are reserved"),
    Bad("tag-key-imagebuild-other-case", tags({"ImageBuild:family": "x"}), "image.aws.tags.ImageBuild:family",
        "keys starting with aws: or imagebuild: are reserved, in any case"),
    Bad("aws-region-no-number", {"image": {"aws": {"region": "eu-west"}}}, "image.aws.region", "'eu-west'"),
    # --- what AWS would refuse only after an upload: refused when the spec is read
    Bad("disk-bigger-than-root-volume", {"image": {"disk_size_gb": 20}}, "image.aws.volume_size_gb",
        "got 8 with image.disk_size_gb 20: an AMI's root volume cannot be smaller"),
    Bad("share-org-encrypted-default-key", {"image": {"aws": {"encrypt_boot": True, "share_with_organizations": [
        "arn:aws:organizations::123456789012:organization/o-abcdefghij"]}}}, "image.aws.share_with_organizations",
        "with encrypt_boot: true and no kms_keys: AWS cannot share an AMI encrypted with the default key"),
    Bad("share-ou-encrypted-default-key", {"image": {"aws": {"encrypt_boot": True, "share_with_ous": [
        "arn:aws:organizations::123456789012:ou/o-abcdefghij/ou-ab12-cdefgh34"]}}}, "image.aws.share_with_ous",
        "with encrypt_boot: true and no kms_keys"),
    Bad("aws-region-misspelt", {"image": {"aws": {"region": "eu-wset-1"}}}, "image.aws.region",
        "got 'eu-wset-1', which is no AWS region (did you mean 'eu-west-1'?); expected a region botocore"),
    Bad("aws-copy-region-unknown", {"image": {"aws": {"region": "eu-west-1", "copy_regions": ["us-west-2",
        "mars-north-1"]}}}, "image.aws.copy_regions[1]", "got 'mars-north-1', which is no AWS region"),
    Bad("aws-copy-region-other-partition", {"image": {"aws": {"region": "eu-west-1", "copy_regions": [
        "cn-north-1"]}}}, "image.aws.copy_regions[0]", "got 'cn-north-1' (partition aws-cn), but the home region "
        "eu-west-1 is in partition aws"),
    Bad("kms-key-other-partition", {"image": {"aws": {"region": "us-gov-west-1", "encrypt_boot": True, "kms_keys": {
        "us-gov-west-1": "arn:aws:kms:us-gov-west-1:123456789012:key/abcd"}}}}, "image.aws.kms_keys.us-gov-west-1",
        "(partition aws), expected a key ARN of partition aws-us-gov"),
    Bad("share-org-other-partition", {"image": {"aws": {"region": "cn-north-1", "share_with_organizations": [
        "arn:aws:organizations::123456789012:organization/o-abcdefghij"]}}},
        "image.aws.share_with_organizations[0]", "(partition aws), expected an ARN of partition aws-cn"),
    Bad("ssm-reserved-aws", {"image": {"aws": {"ssm_parameter": "/aws/service/imagebuild/latest"}}},
        "image.aws.ssm_parameter", "got '/aws/service/imagebuild/latest': AWS reserves names starting with aws or ssm"),
    Bad("ssm-reserved-ssm-any-case", {"image": {"aws": {"ssm_parameter": "/SSM-images/latest"}}},
        "image.aws.ssm_parameter", "got '/SSM-images/latest': AWS reserves names"),
    Bad("ssm-reserved-aws-prefix-of-a-word", {"image": {"aws": {"ssm_parameter": "/awsome/latest"}}},
        "image.aws.ssm_parameter", "'/awsome/latest'"),
    Bad("lock-table-name", {"image": {"aws": {"lock_table": "locks table"}}}, "image.aws.lock_table",
        "got 'locks table', expected a DynamoDB table name"),
    Bad("ssm-too-deep", {"image": {"aws": {"ssm_parameter": "/a" * 16}}}, "image.aws.ssm_parameter",
        "with 16 levels, expected at most 15"),
    # --- documents that are not a spec at all
    Bad("top-level-list", "- name: x\n", "<spec>", "got list, expected a mapping"),
    Bad("invalid-yaml", "config: {oom_score: -999\n", "<spec>", "not valid YAML at {spec}:2:1: expected ','"),
    Bad("invalid-yaml-tab", "config:\n\toom_score: 0\n", "<spec>", "not valid YAML at {spec}:2:1: found character"),
    Bad("invalid-yaml-unclosed-quote", 'name: "golden\n', "<spec>", "not valid YAML at {spec}:2:1:"),
    Bad("raw-control-character", "name: golden\nunit:\n  description: a\x01b\n", "<spec>",
        "not valid YAML at {spec}:3:17: got the character #x0001, expected printable text"),
    Bad("raw-nul", "name: golden\n\x00", "<spec>", "not valid YAML at {spec}:2:1: got the character #x0000"),
    Bad("empty-file", "", "<spec>", "the file holds no spec (it is empty or only comments)"),
    Bad("only-comments", "# name: golden\n\n# nothing else\n", "<spec>", "the file holds no spec"),
    Bad("only-document-marker", "---\n", "<spec>", "the file holds no spec"),
    Bad("top-level-null", "null\n", "<spec>", "the file holds no spec"),
    # --- YAML 1.2 booleans: yes/no/on/off are text, and a boolean field says so
    Bad("boolean-field-no", "config:\n  systemd_cgroup: no\n", "config.systemd_cgroup",
        "got 'no', expected a boolean (the spec is read with YAML 1.2 booleans: write true or false)"),
    Bad("boolean-field-on", "image:\n  hygiene: On\n", "image.hygiene",
        "got 'On', expected a boolean (the spec is read"),
    # --- keys that are not text
    Bad("complex-key-list", "config:\n  overrides:\n    ? [a, b]\n    : 1\n", "<spec>",
        "bad key at {spec}:3:7: got a sequence as a mapping key, expected a plain text key"),
    Bad("complex-key-mapping", "{? {name: x} : 1}\n", "<spec>",
        "bad key at {spec}:1:4: got a mapping as a mapping key"),
    Bad("key-integer", "system:\n  sysctls:\n    1: 2\n", "<spec>",
        "bad key at {spec}:3:5: got the key '1', which YAML reads as an integer, expected text (quote it)"),
    Bad("key-boolean", "config:\n  overrides:\n    true: 1\n", "<spec>",
        "got the key 'true', which YAML reads as a boolean"),
    Bad("key-null", "~: 1\n", "<spec>", "got the key '~', which YAML reads as null"),
    Bad("key-float", "unit:\n  1.5: x\n", "<spec>", "got the key '1.5', which YAML reads as a number"),
    Bad("key-date", "config:\n  overrides:\n    2024-01-01: x\n", "<spec>", "which YAML reads as a date"),
    # --- variants: each variant is a whole spec, named under variants.<name>
    Bad("variant-name-upper", {"variants": {"Arm_64": {}}}, "variants.Arm_64", "bad key 'Arm_64'"),
    Bad("variant-sets-name", {"variants": {"a": {"name": "other"}}}, "variants.a.name",
        "unknown key; allowed keys: containerd, config, unit, proxy, system, image"),
    Bad("variant-nested", {"variants": {"a": {"variants": {"b": {}}}}}, "variants.a.variants", "unknown key"),
    Bad("variant-bad-os", {"variants": {"d14": {"image": {"os": "debian-14"}}}}, "variants.d14.image.os",
        "got 'debian-14', expected one of debian-12, debian-13"),
    Bad("variant-bad-arch", {"variants": {"x": {"image": {"architecture": "riscv64"}}}},
        "variants.x.image.architecture", "got 'riscv64'"),
    Bad("variant-os-without-containerd", {"variants": {"d13": {"image": {"os": "debian-13"}}}},
        "variants.d13.containerd.version", "got '1.6.20' with image.os debian-13"),
    Bad("variant-bad-containerd", {"variants": {"x": {"containerd": {"version": "9.9.9"}}}},
        "variants.x.containerd.version", "got '9.9.9'"),
    Bad("variant-bad-profile", {"variants": {"x": {"system": {"profile": "gpu"}}}}, "variants.x.system.profile",
        "got 'gpu'"),
    Bad("variant-section-scalar", {"variants": {"x": {"image": "debian-13"}}}, "variants.x.image",
        "got 'debian-13', expected a mapping"),
    Bad("variant-family-too-long", {"name": "golden", "variants": {"v" * 60: {}}}, "variants." + "v" * 60,
        "the variant's family 'golden-" + "v" * 60 + "' is 67 characters, expected at most 63"),
    Bad("variant-shared-ssm", {"image": {"aws": {"ssm_parameter": "/fleet/latest"}}, "variants": {"a": {}, "b": {}}},
        "variants.b.image.aws.ssm_parameter", "got '/fleet/latest', the same as variant a's"),
    Bad("matrix-runner-label", {"matrix": {"github_runners": {"arm64": "arm $(x)"}}},
        "matrix.github_runners.arm64", "got 'arm $(x)'"),
    # --- input limits: each refused at once (the test carries a timeout), in bounded memory
    Bad("billion-laughs", lambda: billion_laughs(9), "<spec>",
        "more than 100000 values (aliases counted expanded), expected at most 100000"),
    Bad("alias-bomb-small-file", lambda: billion_laughs(30, width=2), "<spec>", "more than 100000 values"),
    Bad("alias-recursive", "config:\n  overrides:\n    x: &a [*a]\n", "<spec>",
        "alias *a refers to a node that contains it"),
    Bad("alias-recursive-mapping", "config:\n  overrides: &o {x: *o}\n", "<spec>", "alias *o refers to a node"),
    Bad("too-many-aliases", lambda: "x: &x 1\ny: [" + ", ".join(["*x"] * 300) + "]\n", "<spec>",
        "more than 256 aliases (*name), expected at most 256"),
    Bad("nesting-flow-5000", lambda: "config:\n  overrides:\n    x: " + "[" * 5000 + "]" * 5000 + "\n", "<spec>",
        "over a limit at {spec}:3:69: nested more than 64 levels deep, expected at most 64"),
    Bad("nesting-flow-mapping-5000", lambda: "config: {overrides: " + "{a: " * 5000 + "1" + "}" * 5001 + "\n",
        "<spec>", "nested more than 64 levels deep"),
    Bad("nesting-block-5000", lambda: "config:\n  overrides:\n    x:\n" + "    " + "- " * 5000 + "1\n", "<spec>",
        "nested more than 64 levels deep"),
    Bad("nesting-block-mapping-100", lambda: "config:\n  overrides:\n" + "".join(
        "  " * (i + 2) + f"k{i}:\n" for i in range(100)) + "  " * 102 + "v\n", "<spec>", "nested more than 64 levels"),
    Bad("nesting-json-5000", lambda: '{"config": {"overrides": {"x": ' + "[" * 5000 + "]" * 5000 + "}}}\n", "<spec>",
        "nested more than 64 levels deep"),
    Bad("nesting-json-900", lambda: '{"config": {"overrides": {"x": ' + "[" * 900 + "]" * 900 + "}}}\n", "<spec>",
        "nested more than 64 levels deep"),
    Bad("nesting-through-aliases", lambda: "a0: &a0 [1]\n" + "".join(
        f"a{i}: &a{i} [[[[*a{i - 1}]]]]\n" for i in range(1, 20)), "<spec>",
        "nested more than 64 levels deep once aliases are expanded"),
    Bad("file-50mb", lambda: "name: golden\n" + ("# " + "x" * 1021 + "\n") * 50 * 1024, "<spec>",
        f"got {13 + 50 * 1024 * 1024} bytes, expected a spec of at most 262144 bytes (256 KiB)"),
    Bad("file-just-over-limit", lambda: "name: golden\n#" + "x" * (256 * 1024 - 14) + "\n", "<spec>",
        "got 262145 bytes, expected a spec of at most 262144 bytes"),
]


def billion_laughs(levels: int, width: int = 9) -> str:
    """The classic alias bomb: width**levels strings from a file of a few hundred bytes."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"

IDS = [case.id for case in CASES]
assert len(set(IDS)) == len(IDS), "case ids must be unique"


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """An earlier render of the default spec, and its snapshot (contents, modes, mtimes)."""
    out = tmp_path_factory.mktemp("earlier") / "render"
    code, _, err = run_main(["render", "-o", str(out)])
    assert code == 0, err
    return out, snapshot(out)


def _spec_file(tmp_path, doc):
    if callable(doc):
        doc = doc()
    return write_spec(tmp_path, doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))


# Hostile input (alias bombs, deep nesting, a 50 MB file) must be refused quickly: the timeout is the
# bound (a normal case takes well under a second, both renders included).
@pytest.mark.timeout(20)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_spec_is_refused(tmp_path, earlier, case):
    spec_path = _spec_file(tmp_path, case.doc)
    case = dataclasses.replace(case, value=case.value.replace("{spec}", str(spec_path)))
    out = tmp_path / "out"
    code, stdout, err = run_main(["render", str(spec_path), "-o", str(out)])
    assert code == 2, err
    assert stdout == ""
    assert err.startswith(f"imagebuild: {spec_path}: ")
    assert f"  {case.path}: " in err, f"message does not name {case.path}:\n{err}"
    line = next(line for line in err.splitlines() if line.startswith(f"  {case.path}: "))
    assert case.value in line, f"message does not show the bad value {case.value!r}:\n{err}"
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 + sum(1 for line in err.splitlines() if line.startswith("  ")), \
        f"one line per problem:\n{err}"
    assert not out.exists()
    # An earlier render in the way is left exactly as it was.
    directory, before = earlier
    assert run_main(["render", str(spec_path), "-o", str(directory)])[0] == 2
    assert snapshot(directory) == before
    assert sorted(p.name for p in directory.parent.iterdir()) == ["render"]


@pytest.mark.parametrize("case", [c for c in CASES if c.id in
                                  ("sandbox-nul", "duplicate-yaml-key", "unknown-verison", "header-newline")],
                         ids=lambda c: c.id)
def test_bad_spec_through_the_real_entry_point(tmp_path, case):
    spec_path = _spec_file(tmp_path, case.doc)
    proc = run_cli("render", str(spec_path), "-o", str(tmp_path / "out"))
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert f"  {case.path}: " in err and case.value in err
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_the_table_is_big_enough():
    assert len(CASES) >= 45


# ---------------------------------------------------------------- allowed, and rendered inert

HEADER_VALUES = {
    "X-Quote": 'say "hi" and \'bye\'',
    "X-Dollar": "$HOME ${PATH} $(reboot)",
    "X-Backtick": "`id`",
    "X-Backslash": "C:\\path\\n",
    "X-Toml": '"]\tserver = "x'.replace("\t", " "),  # tries to close the string and the table
    "Authorization": "Basic dXNlcjpwYXNz",
    "X-Unicode": "snowman \u2603",
}


def test_header_values_with_quotes_and_dollars_render_inert(tmp_path):
    doc = mirror(headers=HEADER_VALUES)
    out = tmp_path / "out"
    code, _, err = run_main(["render", str(_spec_file(tmp_path, doc)), "-o", str(out)])
    assert code == 0, err
    hosts = out / "payload/etc/containerd/certs.d/docker.io/hosts.toml"
    parsed = tomllib.loads(hosts.read_text())
    assert parsed["server"] == "https://registry-1.docker.io"
    assert parsed["host"]["https://mirror.example"]["header"] == {k: [v] for k, v in HEADER_VALUES.items()}
    assert set(parsed) == {"server", "host"}
    assert (hosts.stat().st_mode & 0o777) == 0o600  # headers are often credentials
    # They reach no shell: the install script carries only paths and checksums.
    install = (out / "install.sh").read_text()
    assert "$(reboot)" not in install and "dXNlcjpwYXNz" not in install


def test_description_with_quotes_and_backticks_is_allowed():
    spec = spec_of({"unit": {"description": 'containerd "tuned" `golden`'}})
    assert spec.unit.description == 'containerd "tuned" `golden`'


def test_sandbox_images_containerd_accepts_are_accepted():
    for ref in ("registry.k8s.io/pause:3.9", "pause", "localhost:5000/pause:3.9", "Registry.Example.com/a/b_c/d__e:T-1",
                "k8s.gcr.io/pause@sha256:" + SHA, "registry.k8s.io/pause:3.9@sha256:" + SHA, "localhost/pause"):
        assert spec_of({"config": {"sandbox_image": ref}}).config.sandbox_image == ref


def test_an_unwritable_output_is_named_not_a_temporary_directory(tmp_path):
    # sysfs refuses new directories even to root: the output's parent cannot take the render.
    out = "/sys/imagebuild-render"
    code, _, err = run_main(["render", "-o", out])
    assert code == 1, err
    assert without_eol(err) == (f"imagebuild: error: cannot write the render to {out}: Operation not permitted "
                                f"(writing {out}); nothing was written\n")
    # A file where a parent directory should be: named as it is.
    (tmp_path / "file").write_text("")
    code, _, err = run_main(["render", "-o", str(tmp_path / "file" / "out")])
    assert code == 1 and f"(writing {tmp_path / 'file'})" in err and ".out." not in err, err


@pytest.mark.parametrize("case", [c for c in CASES if c.id.startswith("url-credentials-")], ids=lambda c: c.id)
def test_credentials_in_a_url_are_never_repeated(tmp_path, case):
    """The refusal names the key and shows the URL, but not its credentials (an error goes to CI logs)."""
    code, stdout, err = run_main(["render", str(_spec_file(tmp_path, case.doc)), "-o", str(tmp_path / "out")])
    assert code == 2 and "<credentials>@" in err
    assert "s3cret" not in err + stdout and "bob" not in err + stdout


def test_a_number_is_shown_as_the_file_wrote_it():
    """The hint's text comes from the file: YAML's 1.10 is the number 1.1, the message shows 1.10."""
    from imagebuild.spec.load import written_numbers

    look = written_numbers("image:\n  packer_version: 1.10\n  copy_regions: [1.50, x]\nname: golden\n")
    assert look(("image", "packer_version")) == "1.10" and look(("image", "copy_regions", 0)) == "1.50"
    assert look(("name",)) is None and look(("image", "copy_regions", 1)) is None  # text, no number
    assert look(("image", "missing")) is None and look(("image", "copy_regions", 5)) is None
    assert written_numbers("{not: [valid")(("not",)) is None  # unreadable text: no hint, no error


#: Overrides of names that are the user's own: an opt-out plugin (everything under it unchecked), a
#: runtime with its shim's options, runc's options with what other shims take, a proxy plugin, a timeout.
OWN_NAMES = {
    "proxy_plugins": {"stargz": {"type": "snapshot", "address": "/run/stargz.sock"}},
    "plugins.io.containerd.snapshotter.v1.stargz": {"watch": {"any": 1}},
    "plugins.io.containerd.cri.v1.runtime.containerd.runtimes.kata": {
        "runtime_type": "io.containerd.kata.v2", "options": {"ConfigPath": "/etc/kata/configuration.toml", "Own": 1}},
    "plugins.io.containerd.cri.v1.runtime.containerd.runtimes.runc.options": {"NoNewKeyring": True,
                                                                               "TypeUrl": "x"},
    "timeouts": {"io.containerd.timeout.own": "1s"},
}


def test_overrides_of_the_users_own_names_are_accepted():
    spec = spec_of({"containerd": {"version": "2.3.7"},
                    "config": {"extra_plugins": ["io.containerd.snapshotter.v1.stargz"], "overrides": OWN_NAMES}})
    plugins = spec.config.overrides["plugins"]
    assert plugins["io.containerd.snapshotter.v1.stargz"] == {"watch": {"any": 1}}
    assert plugins["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["kata"]["options"]["Own"] == 1


def test_a_plugin_outside_the_default_is_refused_without_the_opt_out():
    with pytest.raises(SpecError) as caught:
        spec_of({"containerd": {"version": "2.3.7"}, "config": {"overrides": OWN_NAMES}})
    assert [p.path for p in caught.value.problems] == ["config.overrides.plugins.io.containerd.snapshotter.v1.stargz"]
    assert caught.value.problems[0].message.startswith("containerd 2.3 (config version 4) has no plugin "
                                                       "io.containerd.snapshotter.v1.stargz under plugins")
    assert "config.extra_plugins" in caught.value.problems[0].message


def test_registry_host_maps_left_out_of_the_2x_default_are_accepted():
    spec = spec_of({"containerd": {"version": "2.3.7"}, "config": {"overrides": {
        "plugins.io.containerd.cri.v1.images.registry.configs": {"r.example": {"tls": {"ca_file": "/ca.pem"}}}}}})
    assert "r.example" in spec.config.overrides["plugins"]["io.containerd.cri.v1.images"]["registry"]["configs"]
