"""A real container registry on the host for the verify boot's CRI checks (and the CRI tests).

- `RegistryServer`: Debian's `docker-registry` (the CNCF distribution registry) as a plain process on
  127.0.0.1 with its own config, storage and access log, optionally with TLS; `push` copies an OCI
  archive into it with `skopeo`; `requests` lists what was asked, with the status answered.
- `lab_ca`: a throwaway CA and one server certificate for a set of host names (openssl), so a guest
  that trusts the CA and resolves those names to the lab reaches the registry as `https://<name>`.
"""
from __future__ import annotations

import re
import socket
import time
import urllib.request
from pathlib import Path

from imagebuild import run as run_module
from imagebuild.errors import ImagebuildError
from imagebuild.run import STDOUT, kill_group, run, spawn

ACCESS = re.compile(r'"(GET|HEAD|POST|PUT|PATCH) (\S+) HTTP/[0-9.]+" (\d{3}) ')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


stop = run_module.stop   # one process, not a group (tests' daemons); `RegistryServer.close` stops its group


class RegistryServer:
    """docker-registry on 127.0.0.1:<port>; config and log in *work*, blobs in *storage* (default
    work/storage; two registries may share one, e.g. a TLS and a plain one serving the same images)."""

    def __init__(self, work: Path, *, storage: Path | None = None, tls: tuple[Path, Path] | None = None):
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.tls = tls
        config = self.work / "config.yml"
        tls_lines = f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else ""
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {storage or self.work / 'storage'}\n"
            f"http:\n  addr: {self.address}\n{tls_lines}")
        self.log_path = self.work / "registry.log"
        self._log = open(self.log_path, "wb")
        try:
            self.proc = spawn(["docker-registry", "serve", str(config)], stdout=self._log, stderr=STDOUT)
        except ImagebuildError as exc:
            raise ImagebuildError(f"{exc} (the registry comes from Debian's docker-registry package)") from None
        deadline = time.monotonic() + 20
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise ImagebuildError(f"docker-registry did not start:\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        if self.tls:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2):
                return True
        except OSError:
            return False

    def push(self, archive: Path, name: str) -> None:
        """Push the OCI archive as <name> (repo:tag)."""
        run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci-archive:{archive}",
             f"docker://{self.address}/{name}"], what=f"skopeo push of {name} to {self.address}", timeout=120)

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path with query, status) of every request so far, in order."""
        self._log.flush()
        return [(m, p, int(s)) for m, p, s in ACCESS.findall(self.log_path.read_text(errors="replace"))]

    def close(self) -> None:
        kill_group(self.proc, grace=10)
        self._log.close()

    def __enter__(self) -> RegistryServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def lab_ca(work: Path, names: list[str]) -> dict[str, Path]:
    """A CA (ca.crt) and a certificate for *names* signed by it (server.crt, server.key) in *work*."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = work / "ca.key", work / "ca.crt"
    key, csr, crt, ext = work / "server.key", work / "server.csr", work / "server.crt", work / "server.ext"
    ext.write_text("subjectAltName = " + ",".join(f"DNS:{n}" for n in names) + "\n"
                   "extendedKeyUsage = serverAuth\nbasicConstraints = CA:FALSE\n")
    steps = [
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_crt),
         "-days", "2", "-subj", "/CN=imagebuild verify lab CA"],
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
         "-subj", f"/CN={names[0]}"],
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
         "-out", str(crt), "-days", "2", "-extfile", str(ext)],
    ]
    for cmd in steps:
        run(cmd, what=" ".join(cmd[:3]), timeout=60)
    return {"ca": ca_crt, "cert": crt, "key": key}
