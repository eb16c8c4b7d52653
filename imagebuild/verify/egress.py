"""The verify lab's proxy-only network (egress "proxy"): the guest's one way out is an HTTP proxy.

QEMU's user network runs with `restrict=on`: no packet of the guest is routed to the host or beyond (no DNS
either); only the explicit forwards work (the EC2 boot's IMDS, and this one). The guest's LAB_IP:PROXY_PORT is
forwarded to Debian's `tinyproxy` on 127.0.0.1, a real forward proxy whose log lists every request, and the
spec's `proxy:` must name it as the guest sees it (:func:`proxy_url`). The lab's registries get no forward of
their own in this network, so a pull that succeeds came through the proxy.

What the proxy resolves on the host side: names it does not know it looks up (the Debian archive of the base
image's apt sources). The lab's own names it hands to :class:`Relay` as to a next proxy: the registries' names
(cri_lab's plan) and HOST_NAME, the host's loopback as the proxy sees it, where a test's download server is
(a spec downloads from `http://HOST_NAME:<port>/...`). The relay knows only those names and refuses others.
"""
from __future__ import annotations

import re
import select
import socket
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from imagebuild.errors import ImagebuildError
from imagebuild.run import STDOUT, kill_group, spawn
from imagebuild.verify.registry import free_port

EGRESS = ("open", "proxy")
#: The port of the lab's proxy on LAB_IP, as the guest sees it.
PROXY_PORT = 3128
#: The host's 127.0.0.1 as the lab's proxy sees it (a name under the reserved .test domain).
HOST_NAME = "host.imagebuild-lab.test"
_REQUEST = re.compile(r"Request \(file descriptor \d+\): (.+)$", re.M)


def proxy_url(lab_ip: str) -> str:
    """The lab proxy's URL in the guest: what a spec's proxy.http/https must be in a proxy-only boot."""
    return f"http://{lab_ip}:{PROXY_PORT}"


def check_spec_proxy(proxy, lab_ip: str) -> None:
    """Refuse a spec whose proxy names something else than the lab's proxy (it could never be reached). A spec
    without a proxy is allowed: its install has no way out (the negative case)."""
    want = proxy_url(lab_ip)
    for key in ("http", "https"):
        value = getattr(proxy, key)
        if value and value.rstrip("/") != want:
            raise ImagebuildError(f"proxy.{key}: {value!r} is not the verify lab's proxy; a proxy-only boot "
                                  f"(egress proxy) reaches the outside only through {want}")


class Relay:
    """A next proxy for the lab's names only, on 127.0.0.1: `CONNECT name:port` and absolute-form requests
    (`GET http://name:port/path`), one per connection (tinyproxy closes each), go to 127.0.0.1:*route(name,
    port)*; an unknown name gets 502."""

    def __init__(self, route: Callable[[str, int], int | None]):
        self.route = route
        relay = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                relay._handle(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="imagebuild-egress-relay", daemon=True)
        self.thread.start()

    def _handle(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(65536)
            if not data or len(head) > 1 << 16:
                return
            head += data
        line, _, rest = head.partition(b"\r\n")
        try:
            method, target, version = line.decode("latin-1").split(" ")
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                path = ""
            else:
                parts = urllib.parse.urlsplit(target)
                host, port = parts.hostname or "", str(parts.port or 80)
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            to = self.route(host.strip("[]").lower(), int(port))
        except ValueError:
            to = None
        if to is None:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            return
        with socket.create_connection(("127.0.0.1", to), timeout=30) as upstream:
            upstream.settimeout(None)
            if method == "CONNECT":
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest.partition(b"\r\n\r\n")[2]:
                    upstream.sendall(rest.partition(b"\r\n\r\n")[2])
            else:
                upstream.sendall(f"{method} {path} {version}\r\n".encode("latin-1") + rest)
            _splice(client, upstream)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _splice(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both sides have closed their end."""
    open_ends = {a: b, b: a}
    while open_ends:
        ready, _, _ = select.select(list(open_ends), [], [], 300)
        if not ready:
            return
        for sock in ready:
            data = sock.recv(65536)
            if data:
                open_ends[sock].sendall(data)
            else:
                other = open_ends.pop(sock)
                try:
                    other.shutdown(socket.SHUT_WR)
                except OSError:
                    pass


class Tinyproxy:
    """Debian's tinyproxy on 127.0.0.1:<port>: requests for the hosts of *upstreams* (site -> host:port; a
    site is a name, or .domain for its subdomains) go on to that next proxy, every other host is looked up and
    reached directly. Its log (*log_path*) lists every request."""

    def __init__(self, work: Path, upstreams: dict[str, str], *, log_path: Path | None = None):
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path or self.work / "tinyproxy.log")
        config = self.work / "tinyproxy.conf"
        config.write_text(f"Port {self.port}\nListen 127.0.0.1\nAllow 127.0.0.1\nLogFile \"{self.log_path}\"\n"
                          "LogLevel Info\nMaxClients 50\nTimeout 120\nDisableViaHeader Yes\n"
                          + "".join(f"upstream http {to} \"{site}\"\n" for site, to in upstreams.items()))
        self._out = open(self.work / "tinyproxy.out", "wb")
        try:
            self.proc = spawn(["tinyproxy", "-d", "-c", str(config)], stdout=self._out, stderr=STDOUT,
                              die_with_parent=True)
        except ImagebuildError as exc:
            self._out.close()
            raise ImagebuildError(f"{exc} (the lab's proxy is Debian's tinyproxy package)") from None
        deadline = time.monotonic() + 10
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise ImagebuildError("tinyproxy did not start:\n"
                                      + (self.work / "tinyproxy.out").read_text(errors="replace")[-2000:])
            time.sleep(0.05)

    def _listening(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def requests(self) -> list[str]:
        """The request lines it received ("GET http://host/path HTTP/1.1", "CONNECT host:443 HTTP/1.1")."""
        if not self.log_path.exists():
            return []
        return _REQUEST.findall(self.log_path.read_text(errors="replace"))

    def close(self) -> None:
        kill_group(self.proc, grace=10)
        self._out.close()


def _asked(requests: list[str], url: str, *, exact: bool = True) -> bool:
    """Whether a request for *url* passed: CONNECT host:port for https; for http the absolute URL (*exact*), or
    any URL on its host and port."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return any(r.startswith(f"CONNECT {parts.hostname}:{parts.port or 443} ") for r in requests)
    targets = [r.split(" ")[1] for r in requests if r.count(" ") >= 2]
    hosts = {f"http://{parts.netloc}", f"http://{parts.hostname}" if (parts.port or 80) == 80 else ""} - {""}
    if exact:
        return any(t in {f"{h}{parts.path}" for h in hosts} for t in targets)
    return any(t.startswith(tuple(f"{h}/" for h in hosts)) for t in targets)


def checks(requests: list[str], downloads: list[tuple[str, str]], apt: bool,
           registries: list[tuple[str, str]]) -> list[dict]:
    """What must have passed through the lab's proxy (its request lines, *requests*): every download (key, URL),
    an apt fetch when the install runs apt (*apt*), and each registry pull (what, endpoint URL)."""
    out = []
    for key, url in downloads:
        out.append({"check": f"egress.proxy.download.{key}", "ok": _asked(requests, url),
                    "expected": f"install.sh's curl fetched {url} through the proxy",
                    "actual": "in the proxy's log" if _asked(requests, url) else "not in the proxy's log"})
    if apt:
        fetched = [r for r in requests if re.search(r"/(dists/\S+|\S+\.deb) HTTP/", r)]
        out.append({"check": "egress.proxy.apt", "ok": bool(fetched),
                    "expected": "apt-get fetched its indexes and packages through the proxy",
                    "actual": f"{len(fetched)} apt requests, e.g. {fetched[0]}" if fetched else "no apt request"})
    for what, url in registries:
        ok = _asked(requests, url, exact=False)
        out.append({"check": f"egress.proxy.registry.{what}", "ok": ok,
                    "expected": f"containerd reached {url} through the proxy",
                    "actual": "in the proxy's log" if ok else "not in the proxy's log"})
    return out
