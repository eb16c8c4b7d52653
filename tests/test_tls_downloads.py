"""TLS only: an http:// download is a spec error unless its artifact says `insecure: true`, and both the
host's read of a checksum_url (at render) and install.sh's curl refuse plain HTTP, redirects to it included.

The HTTPS side is real: a server on localhost with a certificate of a throwaway CA (verify.registry.lab_ca),
trusted through SSL_CERT_FILE (Python) and CURL_CA_BUNDLE (curl), which redirects /to-http/<file> to the
plain-HTTP server of conftest's release_16.
"""
from __future__ import annotations

import functools
import http.server
import os
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from imagebuild import render
from imagebuild.verify.registry import lab_ca
from tests.support import run_main, spec_of, write_spec

ZERO = "0" * 64
pytestmark = pytest.mark.usefixtures("checksums_at_render")  # the default: checksum_url read at render

PLAIN_HTTP = {  # key path -> (spec, the value the message must name)
    "containerd.install.tarball.url": (
        {"containerd": {"install": {"tarball": {"url": "http://m.example/containerd-{version}-linux-{arch}.tar.gz"}}}},
        "http://m.example/containerd-{version}-linux-{arch}.tar.gz"),
    "containerd.install.runc.checksum_url": (
        {"containerd": {"install": {"runc": {"checksum_url": "http://m.example/runc.sha256sum"}}}},
        "http://m.example/runc.sha256sum"),
    "containerd.install.cni_plugins.url": (
        {"containerd": {"install": {"cni_plugins": {"url": "http://m.example/cni-{arch}.tgz", "sha256": ZERO}}}},
        "http://m.example/cni-{arch}.tgz"),
    "image.base.source": (
        {"image": {"base": {"source": "http://images.example/base.qcow2", "checksum": "sha256:" + ZERO}}},
        "http://images.example/base.qcow2"),
}


@pytest.mark.parametrize("key", PLAIN_HTTP)
def test_plain_http_is_a_spec_error_naming_key_value_and_what_is_allowed(tmp_path, key):
    doc, value = PLAIN_HTTP[key]
    out = tmp_path / "out"
    code, _, err = run_main(["render", str(write_spec(tmp_path, doc)), "-o", str(out)])
    assert code == 2 and not out.exists()
    line = next(line for line in err.splitlines() if key + ":" in line)
    assert repr(value) in line and "https://" in line and "insecure: true" in line, line


@pytest.mark.parametrize("key", PLAIN_HTTP)
def test_insecure_true_on_that_artifact_allows_it(key):
    doc, _ = PLAIN_HTTP[key]
    section = doc["image"]["base"] if key.startswith("image.") else next(iter(doc["containerd"]["install"].values()))
    section["insecure"] = True
    spec_of(doc)  # loads: no problem


def test_insecure_is_per_artifact(tmp_path):
    doc = {"containerd": {"install": {"tarball": {"url": "http://m.example/c.tgz", "sha256": ZERO, "insecure": True},
                                      "runc": {"url": "http://m.example/runc", "sha256": ZERO}}}}
    code, _, err = run_main(["user-data", str(write_spec(tmp_path, doc))])
    assert code == 2
    assert "containerd.install.runc.url" in err and "containerd.install.tarball" not in err


def test_install_script_curl_is_https_only_with_timeouts_retries_and_fail():
    script = render.guest_files(spec_of({"containerd": {"install": {
        "tarball": {"sha256": ZERO}, "runc": {"url": "file:///srv/runc.{arch}", "sha256": ZERO},
        "cni_plugins": {"url": "http://m.example/cni.tgz", "sha256": ZERO, "insecure": True}}}}))["install.sh"]
    text = script.content.decode()
    assert ('curl --fail --silent --show-error --location --proto "$3" --proto-redir "$4" \\\n'
            '    --connect-timeout 20 --speed-limit 1 --speed-time 60 \\\n'
            '    --retry 5 --retry-connrefused -o "$2" "$1"') in text   # a stalled transfer is a failed try
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("fetch ")]
    assert [line.split()[-2:] for line in lines] == [["=https", "=https"], ["=file,https", "=https"],
                                                      ["=http,https", "=http,https"]]


# --------------------------------------------------------------------------------- a real HTTPS origin


class _Handler(http.server.SimpleHTTPRequestHandler):
    plain_url = ""

    def do_GET(self) -> None:  # the stdlib's name
        if self.path.startswith("/to-http/"):
            self.send_response(302)
            self.send_header("Location", f"{self.plain_url}/{self.path.removeprefix('/to-http/')}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture(scope="module")
def https_origin(tmp_path_factory, release_16):
    """{"url": https://localhost:PORT serving release_16's files, /to-http/<file> redirecting to its plain-HTTP
    server; "ca": the CA file that trusts it}."""
    tls = lab_ca(tmp_path_factory.mktemp("tls"), ["localhost"])
    handler = type("Handler", (_Handler,), {"plain_url": release_16["url"]})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(handler, directory=str(release_16["dir"])))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls["cert"], tls["key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield {"url": f"https://localhost:{server.server_address[1]}", "ca": tls["ca"]}
    finally:
        server.shutdown()
        server.server_close()


def _doc(origin: str, release: dict, *, ctd_path: str = "", sums_path: str | None = "", insecure: bool = False) -> dict:
    """Containerd and runc from *origin*; the tarball's sha256 read from its checksum file under *sums_path*
    (None: pinned in the spec)."""
    ctd, runc = Path(release["containerd"]["path"]).name, Path(release["runc"]["path"]).name
    tarball = {"url": f"{origin}/{ctd_path}{ctd}", "insecure": insecure}
    tarball |= ({"sha256": None, "checksum_url": f"{origin}/{sums_path}{ctd}.sha256sum"} if sums_path is not None
                else {"sha256": release["containerd"]["sha256"]})
    return {"containerd": {"version": release["containerd"]["version"], "install": {"tarball": tarball, "runc": {
        "version": release["runc"]["version"], "url": f"{origin}/{runc}", "sha256": release["runc"]["sha256"]}}}}


@pytest.mark.parametrize("sums_path, insecure, refused", [("", False, False), ("to-http/", False, True),
                                                          ("to-http/", True, False)])
def test_render_reads_checksum_url_over_https_only(tmp_path, monkeypatch, https_origin, release_16,
                                                   sums_path, insecure, refused):
    monkeypatch.setenv("SSL_CERT_FILE", str(https_origin["ca"]))
    doc = _doc(https_origin["url"], release_16, sums_path=sums_path, insecure=insecure)
    out = tmp_path / "render"
    code, _, err = run_main(["render", str(write_spec(tmp_path, doc)), "-o", str(out)])
    if refused:
        assert code == 1 and not out.exists()
        assert "containerd.install.tarball.checksum_url: cannot read checksum_url" in err
        assert "redirect to http:// refused" in err, err
    else:
        assert code == 0, err
        assert release_16["containerd"]["sha256"] in (out / "install.sh").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root")
@pytest.mark.parametrize("ctd_path, insecure, refused", [("", False, False), ("to-http/", False, True),
                                                         ("to-http/", True, False)])
def test_install_script_downloads_over_https_only(tmp_path, https_origin, release_16, ctd_path, insecure, refused):
    doc = _doc(https_origin["url"], release_16, ctd_path=ctd_path, sums_path=None, insecure=insecure)
    out = tmp_path / "render"
    code, _, err = run_main(["render", str(write_spec(tmp_path, doc)), "-o", str(out)])
    assert code == 0, err
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "IMAGEBUILD_ROOT": str(scratch), "CURL_CA_BUNDLE": str(https_origin["ca"])}
    proc = subprocess.run(["bash", str(out / "install.sh"), str(out / "payload")], capture_output=True, text=True,
                          env=env, timeout=300)
    if refused:
        assert proc.returncode != 0
        assert f"download failed: {https_origin['url']}/to-http/" in proc.stderr
        assert "http" in proc.stderr.lower() and "disabled" in proc.stderr, proc.stderr  # curl: protocol disabled
        assert list(scratch.iterdir()) == []
    else:
        assert proc.returncode == 0, proc.stderr
        assert (scratch / "usr/local/bin/containerd").is_file()


def test_pin_reads_each_checksum_once_into_a_copy_and_leaves_the_spec_document_alone(tmp_path):
    """pin() is the one read: the bake's inputs hash takes the same sha256 (resolved_artifacts), an already
    pinned spec is not read again, and spec.json / spec_hash do not change (the spec still says checksum_url)."""
    from imagebuild.build.bake import resolved_artifacts
    from imagebuild.render import downloads

    sums = tmp_path / "containerd.sha256sum"
    sums.write_text(f"{'a' * 64}  containerd-1.6.20-linux-amd64.tar.gz\n")
    spec = spec_of({"containerd": {"install": {"tarball": {"checksum_url": sums.as_uri()},
                                               "runc": {"sha256": "b" * 64}}}})
    pinned = downloads.pin(spec)
    assert spec.containerd.install.tarball.pinned_sha256 is None          # the input is left as it was
    assert pinned.containerd.install.tarball.pinned_sha256 == "a" * 64
    assert (pinned.document, pinned.spec_hash) == (spec.document, spec.spec_hash)
    sums.write_text(f"{'c' * 64}  containerd-1.6.20-linux-amd64.tar.gz\n")
    assert downloads.pin(pinned) is pinned                                 # nothing left to read
    assert [sha for _, sha in resolved_artifacts(pinned)] == ["a" * 64, "b" * 64]
    assert [sha for _, sha in resolved_artifacts(spec)] == ["c" * 64, "b" * 64]   # a new read: today's file
    script = render.guest_files(pinned)["install.sh"].content.decode()
    assert "a" * 64 in script and sums.as_uri() not in script
