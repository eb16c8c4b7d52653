"""A small CRI test harness: a real registry, a real containerd on scratch directories, a real CRI
v1 client over gRPC.

- `RegistryServer`: imagebuild.verify.registry's (Debian's `docker-registry` on 127.0.0.1, `skopeo` pushes, its
  access log says which paths were requested, with which status).
- `Containerd`: the real daemon of a family (Debian's build where Debian packages the family, else
  upstream's, `devtools.families`) started with a rendered config.toml on its own root,
  state and socket. Host-only rewrites, stated here once: the gRPC/ttrpc sockets move to the scratch
  directory, and on this host (PID 1 is not systemd, CAP_SYS_RESOURCE may be missing) the CRI
  runtime gets `restrict_oom_score_adj = true`; a metrics address gets a free port (daemons share
  the host); tests also pass `systemd_cgroup: false` in the spec.
- `cri(sock)`: (runtime stub, image stub) of `cri_api.v1` (PyPI container-runtime-interface-api).
"""
from __future__ import annotations

import atexit
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import tomlkit

from devtools import families
from imagebuild.spec.containerd_keys import KeyPaths
from imagebuild.verify import egress, registry
from tests.daemons import Daemon, DaemonExited

__all__ = ["Containerd", "DaemonExited", "RegistryServer", "Tinyproxy", "cri", "free_port", "host_only", "scratch"]

free_port = registry.free_port
_stop = registry.stop
RegistryServer = registry.RegistryServer  # the product's: verify's lab serves from it too


def Tinyproxy(work: Path, domain: str, upstream: str) -> egress.Tinyproxy:
    """Debian's tinyproxy, a real forward proxy, on 127.0.0.1: the verify lab's (imagebuild.verify.egress).
    Requests for hosts under *domain* go on to *upstream* (host:port) as to a next proxy, so names that do
    not resolve here (`.test`) still reach a local registry; anything else is looked up and fails. Its log
    lists every request (`requests()`)."""
    return egress.Tinyproxy(work, {domain: upstream})


def unit_environment(dropin: str) -> dict[str, str]:
    """The Environment= assignments of a systemd drop-in, unquoted as systemd does for these values."""
    env = {}
    for line in dropin.splitlines():
        if line.startswith("Environment="):
            for word in shlex.split(line[len("Environment="):]):
                name, value = word.split("=", 1)
                env[name] = value.replace("%%", "%")
    return env


def _table(doc, keys: tuple[str, ...]):
    node = doc
    for key in keys:
        node = node.setdefault(key, tomlkit.table())
    return node


def host_only(config_text: str, config_version: int, work: Path) -> str:
    """The rendered config with this host's rewrites (see the module docstring), at the key paths of its
    config version (version 4: the server plugins)."""
    paths = KeyPaths(config_version)
    doc = tomlkit.parse(config_text)
    _table(doc, paths.grpc)["address"] = str(work / "c.sock")
    _table(doc, paths.ttrpc)["address"] = str(work / "c.sock.ttrpc")
    metrics = _table(doc, paths.metrics)
    if metrics.get("address"):   # a fixed port would collide between daemons on one host
        metrics["address"] = f"127.0.0.1:{free_port()}"
    _table(doc, paths.log_line)["restrict_oom_score_adj"] = True   # the CRI runtime plugin's table
    return tomlkit.dumps(doc)


class Containerd:
    """The real containerd of *family* with *config_text* (already host-rewritten)."""

    BOOTED = "containerd successfully booted"   # logged once every plugin has loaded, failed or been skipped

    def __init__(self, family: str, config_text: str, work: Path, env: dict[str, str] | None = None,
                 start_timeout: float = 30.0):
        self.work = Path(work)
        self.sock = self.work / "c.sock"
        self.config = self.work / "config.toml"
        self.config.write_text(config_text)
        self.log_path = self.work / "containerd.log"
        self.daemon = Daemon([str(families.binary(family)), "--config", str(self.config)], self.log_path,
                             env={**{k: v for k, v in os.environ.items() if "proxy" not in k.lower()}, **(env or {})})
        self.proc = self.daemon.proc
        self.daemon.wait_ready(self.sock.exists, start_timeout, f"serving {self.sock}")

    def wait_booted(self, timeout: float = 30.0) -> None:
        """Until the daemon logs that it booted (all plugins loaded, failed or skipped)."""
        self.daemon.wait_ready(lambda: self.BOOTED in self.log(), timeout, "booted")

    def log(self) -> str:
        return self.daemon.log()

    def close(self) -> None:
        self.daemon.stop()
        # Sandboxes leave mounts under the root: unmount before removing (best effort, own dirs only).
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.work))]
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)


def scratch(prefix: str) -> Path:
    """A short directory (unix socket paths are limited to 108 bytes) in /tmp, removed when the test
    process exits (the tests stop the daemons and registries in it first; they left these behind)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def cri(sock: Path):
    """(RuntimeServiceStub, ImageServiceStub, channel) over the daemon's socket."""
    import grpc
    from cri_api.v1 import api_pb2_grpc

    channel = grpc.insecure_channel(f"unix://{sock}")
    return api_pb2_grpc.RuntimeServiceStub(channel), api_pb2_grpc.ImageServiceStub(channel), channel
