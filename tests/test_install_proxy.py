"""The spec's proxy covers install.sh's own traffic: curl's downloads and apt-get, not only containerd's pulls
(imagebuild.render.proxy). Rendered values checked, then run for real: the rendered install.sh downloads
through Debian's tinyproxy on 127.0.0.1 (the verify lab's proxy, imagebuild.verify.egress), and the real
apt-get is run with the rendered proxy lines. The download host, HOST_NAME, resolves nowhere: only the
proxy reaches it (through the lab's relay), so a download without the proxy cannot succeed.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from imagebuild import render
from imagebuild.render import downloads
from imagebuild.spec.containerd import Proxy
from imagebuild.verify import egress
from tests.support import PACKAGE_VERSIONS, run_main, spec_of, ungzip, write_spec

pytestmark = pytest.mark.usefixtures("checksums_at_render")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root")

PROXY = {"http": "http://proxy.example:3128", "https": "http://proxy.example:3129",
         "no_proxy": [".svc", "10.96.0.0/12"]}
#: The lines of install.sh that set the proxy for its run (what the shell tests below evaluate).
PROXY_LINES = re.compile(r"^(export (?:http|https|no)_proxy=.*|APT_PROXY=\(.*)$", re.M)


def _script(spec) -> str:
    return render.guest_files(spec)["install.sh"].content.decode()


def _evaluated(script: str, tmp_path: Path) -> dict:
    """What the rendered proxy lines give bash: the exported variables and apt-get's options."""
    lines = "\n".join(PROXY_LINES.findall(script))
    probe = tmp_path / "probe.sh"
    probe.write_text("set -euo pipefail\n" + lines + "\n"
                     'for v in http_proxy https_proxy no_proxy; do printf "%s=%s\\n" "$v" "${!v-<unset>}"; done\n'
                     'printf "apt=%s\\n" "${APT_PROXY[@]}"\n')
    out = subprocess.run(["env", "-i", "bash", str(probe)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    values: dict = {"apt": []}
    for line in out.stdout.splitlines():
        name, _, value = line.partition("=")
        if name == "apt":
            values["apt"].append(value)
        else:
            values[name] = value
    return values


# ------------------------------------------------------------------------------ rendered


@pytest.mark.parametrize("method", ["tarball", "package"])
def test_install_sh_and_user_data_carry_the_proxy_for_curl_and_apt(tmp_path, method):
    doc = {"proxy": PROXY}
    if method == "package":
        doc["containerd"] = {"install": {"method": "package", "package": {"version": PACKAGE_VERSIONS["1.6"]}}}
    spec = spec_of(doc)
    script = _script(spec)
    assert _evaluated(script, tmp_path) == {
        "http_proxy": PROXY["http"], "https_proxy": PROXY["https"],
        # loopback as containerd (Go) leaves it: never proxied (curl would proxy it)
        "no_proxy": ".svc,10.96.0.0/12,localhost,127.0.0.0/8,::1",
        "apt": ["-o", f"Acquire::http::Proxy={PROXY['http']}", "-o", f"Acquire::https::Proxy={PROXY['https']}"]}
    # Every apt-get run of the install takes the options; nothing else runs apt-get.
    runs = [line.strip() for line in script.splitlines() if re.match(r"\s*apt-get ", line)]
    assert len(runs) == (4 if method == "package" else 2) and all(
        run.startswith('apt-get "${APT_PROXY[@]}" ') for run in runs), runs
    # Nothing persists it: no apt.conf.d or environment file in the payload, only containerd's drop-in.
    assert not [p for p in render.payload(spec) if "apt" in p or "environment" in p or "profile" in p]
    # The user-data carries that same install.sh.
    cloud = yaml.safe_load(ungzip(render.user_data(spec)))
    written = {f["path"]: f["content"] for f in cloud["write_files"]}
    assert written[f"{render.GUEST_DIR}/install.sh"] == script


def test_without_a_proxy_nothing_is_set_and_star_proxies_nothing(tmp_path):
    """The negative of the rendering: no proxy in the spec, no proxy in the install (an ambient one is left to
    the node); `no_proxy: ['*']` proxies nothing, so the install gets none either; a proxy for https only
    leaves http:// downloads and apt's http sources direct."""
    unset = {"http_proxy": "<unset>", "https_proxy": "<unset>", "no_proxy": "<unset>", "apt": [""]}
    assert _evaluated(_script(spec_of({})), tmp_path) == unset
    assert _evaluated(_script(spec_of({"proxy": {**PROXY, "no_proxy": ["*"]}})), tmp_path) == unset
    https_only = _evaluated(_script(spec_of({"proxy": {"https": PROXY["https"]}})), tmp_path)
    assert https_only == {"http_proxy": "<unset>", "https_proxy": PROXY["https"],
                          "no_proxy": "localhost,127.0.0.0/8,::1",
                          "apt": ["-o", f"Acquire::https::Proxy={PROXY['https']}"]}
    # profile none, tarball: no apt-get at all, no APT_PROXY (shellcheck would call it unused)
    assert "APT_PROXY" not in _script(spec_of({"system": {"profile": "none"}}))


def test_hostile_proxy_values_stay_inert(tmp_path):
    """The spec's patterns refuse these (tests/test_bad_specs.py); the template must not rely on it: values the
    model never checked (model_construct) reach bash as they are, run nothing, and pass shellcheck."""
    marker = tmp_path / "pwned"
    hostile = f"http://p.example:3128/$(touch {marker})`touch {marker}`'\"~;&|"
    spec = spec_of({"proxy": PROXY})
    spec = spec.model_copy(update={"proxy": Proxy.model_construct(
        http=hostile, https="http://x:1/${IFS}*", no_proxy=("a b", "$HOME", "~"))})
    script = _script(spec)
    values = _evaluated(script, tmp_path)
    assert not marker.exists()
    assert values == {"http_proxy": hostile, "https_proxy": "http://x:1/${IFS}*",
                      "no_proxy": "a b,$HOME,~,localhost,127.0.0.0/8,::1",
                      "apt": ["-o", f"Acquire::http::Proxy={hostile}", "-o", "Acquire::https::Proxy=http://x:1/${IFS}*"]}
    path = tmp_path / "install.sh"
    path.write_text(script)
    # SC2016 (info: "expressions don't expand in single quotes") is the point here: they must not.
    lint = subprocess.run(["shellcheck", "--shell=bash", "--exclude=SC2016", str(path)], capture_output=True,
                          text=True)
    assert lint.returncode == 0 and lint.stdout == "", lint.stdout
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    # A control character is refused by the filter itself.
    with pytest.raises(ValueError, match="control character"):
        _script(spec.model_copy(update={"proxy": Proxy.model_construct(http="http://p:1/\nrm -rf /", https=None,
                                                                       no_proxy=())}))


# ------------------------------------------------------------------------------ real runs


@pytest.fixture
def lab_proxy(tmp_path, release_16):
    """Debian's tinyproxy with the verify lab's relay for HOST_NAME (the release server's 127.0.0.1)."""
    relay = egress.Relay(lambda host, port: port if host == egress.HOST_NAME else None)
    proxy = egress.Tinyproxy(tmp_path / "proxy", {egress.HOST_NAME: f"127.0.0.1:{relay.port}"})
    try:
        yield proxy
    finally:
        proxy.close()
        relay.close()


def _lab_doc(release: dict, proxy: dict | None) -> dict:
    """The release served at HOST_NAME (sha256 pinned, plain HTTP: insecure), with *proxy*."""
    url = release["url"].replace("127.0.0.1", egress.HOST_NAME)
    ctd, runc = Path(release["containerd"]["path"]).name, Path(release["runc"]["path"]).name
    doc = {"containerd": {"version": release["containerd"]["version"], "install": {
        "tarball": {"url": f"{url}/{ctd}", "sha256": release["containerd"]["sha256"], "insecure": True},
        "runc": {"version": release["runc"]["version"], "url": f"{url}/{runc}", "sha256": release["runc"]["sha256"],
                 "insecure": True}}}}
    return doc | ({"proxy": proxy} if proxy else {})


def _install(tmp_path: Path, doc: dict, name: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / name
    code, _, err = run_main(["render", str(write_spec(tmp_path, doc, f"{name}.yaml")), "-o", str(out)])
    assert code == 0, err
    scratch = tmp_path / f"{name}-root"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()} | {"IMAGEBUILD_ROOT": str(scratch)}
    proc = subprocess.run(["bash", str(out / "install.sh"), str(out / "payload")], env=env, capture_output=True,
                          text=True, timeout=300)
    return proc, doc["containerd"]["install"]


@needs_root
@pytest.mark.slow  # ~35 s: the bypassed download is tried RETRIES + 1 times, curl backing off 1+2+4+8+16 s
def test_install_downloads_through_the_spec_proxy_and_honours_no_proxy(tmp_path, release_16, lab_proxy):
    proc, install = _install(tmp_path, _lab_doc(release_16, {"http": lab_proxy.url, "https": lab_proxy.url}), "proxied")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "proxied-root/usr/local/bin/containerd").is_file()
    asked = lab_proxy.requests()
    assert [r for r in asked if r.startswith(f"GET {install['tarball']['url']} ")], asked
    assert [r for r in asked if r.startswith(f"GET {install['runc']['url']} ")], asked
    # The negative: the same download host in the spec's no_proxy goes direct, where it resolves nowhere. The
    # proxy that could serve it is never asked.
    before = len(asked)
    proc, install = _install(tmp_path, _lab_doc(release_16, {"http": lab_proxy.url, "no_proxy": [egress.HOST_NAME]}),
                             "bypassed")
    assert proc.returncode != 0
    assert f"download failed: {install['tarball']['url']}" in proc.stderr
    assert proc.stderr.count("Could not resolve host: " + egress.HOST_NAME) == downloads.RETRIES + 1, proc.stderr
    assert len(lab_proxy.requests()) == before
    assert not (tmp_path / "bypassed-root/usr/local/bin/containerd").exists()


@needs_root
@pytest.mark.slow  # ~31 s: RETRIES + 1 tries, curl backing off 1+2+4+8+16 s between them
def test_without_the_proxy_the_install_has_no_way_to_its_downloads(tmp_path, release_16):
    """A spec without the proxy, where only the proxy reaches the download host: the install tries its first
    download RETRIES + 1 times, then fails naming it, and installs nothing; no hang (curl's connect timeout
    bounds each try, name lookup included)."""
    proc, install = _install(tmp_path, _lab_doc(release_16, None), "unproxied")
    assert proc.returncode == 1
    assert f"ERROR: download failed: {install['tarball']['url']}" in proc.stderr
    assert proc.stderr.count("Could not resolve host: " + egress.HOST_NAME) == downloads.RETRIES + 1, proc.stderr
    assert not (tmp_path / "unproxied-root/usr/local/bin/containerd").exists()
    assert f"--connect-timeout {downloads.CONNECT_TIMEOUT} " in (tmp_path / "unproxied/install.sh").read_text()


def _apt_update(tmp_path: Path, script: str, source: str, node_conf: str = "") -> subprocess.CompletedProcess:
    """The real apt-get update, with the rendered proxy lines, on a scratch state: *source* its one source,
    *node_conf* the node's own apt configuration (APT_CONFIG)."""
    state = tmp_path / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "parts"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "sources.list").write_text(f"deb [trusted=yes] {source} bookworm main\n")
    (state / "apt.conf").write_text(node_conf)
    opts = [f"Dir::Etc::SourceList={state / 'sources.list'}", f"Dir::Etc::SourceParts={state / 'parts'}",
            f"Dir::State::Lists={state / 'lists'}", f"Dir::Cache={state / 'cache'}", "Debug::NoLocking=1",
            "APT::Sandbox::User=root", "Acquire::Retries=0"]
    lines = "\n".join(PROXY_LINES.findall(script))
    probe = (f"{lines}\napt-get -q " + " ".join(f"-o {shlex.quote(o)}" for o in opts)
             + ' "${APT_PROXY[@]}" update\n')
    env = {"PATH": os.environ["PATH"], "APT_CONFIG": str(state / "apt.conf")}
    return subprocess.run(["bash", "-c", probe], env=env, capture_output=True, text=True, timeout=120)


@needs_root
def test_apt_goes_through_the_spec_proxy_over_the_nodes_own_and_honours_no_proxy(tmp_path, release_16, lab_proxy):
    """apt-get with the rendered lines asks the spec's proxy, even when the node's apt configuration names
    another (a dead one here); with the host in no_proxy it goes direct (and cannot resolve it)."""
    source = release_16["url"].replace("127.0.0.1", egress.HOST_NAME) + "/debian"
    node = 'Acquire::http::Proxy "http://127.0.0.1:9";\n'
    proxied = _script(spec_of({"proxy": {"http": lab_proxy.url}}))
    proc = _apt_update(tmp_path, proxied, source, node)
    asked = [r for r in lab_proxy.requests() if r.startswith(f"GET {source}/dists/bookworm/")]
    assert asked, (proc.stdout, proc.stderr, lab_proxy.requests())
    # The negative: without the rendered lines, apt follows the node's configuration (the dead proxy).
    before = len(lab_proxy.requests())
    proc = _apt_update(tmp_path, _script(spec_of({})), source, node)
    assert "127.0.0.1 9" in proc.stdout + proc.stderr or "127.0.0.1:9" in proc.stdout + proc.stderr, proc.stdout
    assert len(lab_proxy.requests()) == before
    # no_proxy: the host is reached directly, and resolves nowhere.
    bypassed = _script(spec_of({"proxy": {"http": lab_proxy.url, "no_proxy": [egress.HOST_NAME]}}))
    proc = _apt_update(tmp_path, bypassed, source, node)
    assert len(lab_proxy.requests()) == before, lab_proxy.requests()
    assert f"Could not resolve '{egress.HOST_NAME}'" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
