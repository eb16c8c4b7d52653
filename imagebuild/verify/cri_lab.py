"""The verify boot's registry lab: what lets the guest prove, through CRI, that pulls go through the
spec's mirrors, with no internet.

On the host: one CA and certificate naming every mirror endpoint host (and the sandbox image's
registry when no mirror covers it), and one real registry (imagebuild.verify.registry) per port those
endpoints use (TLS for https, plain for http), all serving the same storage. Each mirrored registry
gets an image under the name its first pulling endpoint's API root implies; the sandbox image is
served under its own name the same way, unless the image under test carries its own (baked in): then
the lab serves nothing under that name, and a pull of it would fail.

Everything the lab serves is a test double (the test image's program), for this boot's throwaway
overlay only: `imagebuild bake` runs no lab, so nothing of it reaches an image.

In the guest the boot adds ONLY lab plumbing, never a change to containerd's configuration: /etc/hosts
maps the lab's host names to LAB_IP (QEMU forwards LAB_IP:<port> to the host registry of that port,
one relay per connection), and the lab CA is appended to the system trust store. The upstream
registries (docker.io, quay.io, ...) are mapped to nothing and unreachable, so a pull that succeeds
came through a mirror, and the registry's access log shows which path it asked for.
"""
from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from imagebuild.errors import ImagebuildError
from imagebuild.render import downloads
from imagebuild.spec import Spec, api_root
from imagebuild.spec.fields import normalized
from imagebuild.verify import egress as egress_lab
from imagebuild.verify import imds
from imagebuild.verify.registry import RegistryServer, lab_ca
from imagebuild.verify.testimage import test_oci_image

#: The address of the lab in the guest's user-mode network, per platform (outside the DHCP range).
LAB_IP = {"nocloud": "10.0.2.100", "ec2": "169.254.20.20"}
#: Files the lab puts on the verify seed (or the EC2 data disk).
SEED_FILES = ("cri.py", "cri_hpack.py", "cri_checks.py", "runtime_pods.py", "cri-lab.json", "cri-lab-ca.crt")
TAG = "1"


@dataclass
class Pull:
    host: str             # the mirrored registry (the image's own host)
    image: str            # what the guest asks CRI to pull
    port: int             # the port of the endpoint that must serve it
    manifest: str         # the path (with query) that endpoint must be asked for
    endpoint: str = ""    # that endpoint's URL (scheme://host[:port]...)

    def as_json(self) -> dict:
        return {"host": self.host, "image": self.image, "port": self.port, "manifest": self.manifest}


@dataclass
class Plan:
    names: list[str]                              # host names /etc/hosts points at the lab
    ports: dict[int, bool]                        # port -> TLS
    pulls: list[Pull]                             # one per mirrored registry
    sandbox: Pull | None                          # the sandbox image, as RunPodSandbox would pull it (None:
                                                  # baked in, and no mirror of its registry to watch)
    pushes: list[tuple[str, str]] = field(default_factory=list)  # (image kind, repository:tag in storage)


def _port(parts: urllib.parse.SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def plan(spec: Spec, *, sandbox_baked: bool = False) -> Plan:
    """What the lab serves for *spec*, and what each pull must ask for. *sandbox_baked*: the image holds
    its sandbox image, so the lab serves none (a mirror of its registry is still watched: never asked)."""
    registry = spec.config.registry
    names: list[str] = []
    ports: dict[int, bool] = {}
    pulls: list[Pull] = []
    pushes: list[tuple[str, str]] = []
    by_host = {}
    for index, mirror in enumerate(registry.mirrors):
        serving = [ep for ep in mirror.endpoints if "pull" in ep.capabilities and "resolve" in ep.capabilities]
        for ep in mirror.endpoints:
            parts = urllib.parse.urlsplit(ep.url)
            if parts.hostname and parts.hostname not in names:
                names.append(parts.hostname)
            ports.setdefault(_port(parts), parts.scheme == "https")
        if not serving:
            continue
        ep = serving[0]
        root = api_root(ep.url, ep.path, ep.override_path, registry.mode)
        repo = f"imagebuild/verify-{index}"
        pushes.append(("test", f"{root[len('/v2'):].strip('/')}/{repo}:{TAG}".lstrip("/")))
        pull = Pull(mirror.host, f"{mirror.host}/{repo}:{TAG}", _port(urllib.parse.urlsplit(ep.url)),
                    f"{root}/{repo}/manifests/{TAG}?ns={mirror.host}", ep.url)
        pulls.append(pull)
        by_host[mirror.host] = (ep, root)
    image = spec.config.sandbox_image
    host, rest = normalized(image).split("/", 1)   # the registry host, repository:tag
    repo, _, tag = rest.rpartition(":")
    if host in by_host:
        ep, root = by_host[host]
        port, endpoint = _port(urllib.parse.urlsplit(ep.url)), ep.url
    elif sandbox_baked:
        return Plan(names=names, ports=ports, pulls=pulls, sandbox=None, pushes=pushes)
    else:  # no mirror for it: the lab stands in for its registry itself
        root, port, endpoint = "/v2", 443, f"https://{host}"
        if host not in names:
            names.append(host)
        ports.setdefault(443, True)
    if not sandbox_baked:
        pushes.append(("sandbox", f"{root[len('/v2'):].strip('/')}/{repo}:{tag}".lstrip("/")))
    # containerd names the upstream in `?ns=` only when it asks a mirror, not the registry itself.
    query = f"?ns={host}" if host in by_host else ""
    sandbox = Pull(host, image, port, f"{root}/{repo}/manifests/{tag}{query}", endpoint)
    return Plan(names=names, ports=ports, pulls=pulls, sandbox=sandbox, pushes=pushes)


#: The verify boot's own CNI network for cri.pod_network: a bridge from the CNI plugins' bridge and
#: host-local (CRI adds loopback), written for one pod into the throwaway overlay's CNI config dir and
#: removed after it. Never part of an image; a subnet no default route or pod network of ours uses.
POD_SUBNET = "10.88.250.0/24"
POD_BRIDGE = "ibverify0"  # made by the bridge plugin on the machine (the overlay, or a test's host)


def pod_network(spec: Spec) -> dict | None:
    """What cri.pod_network writes and expects, when *spec* installs the CNI plugins (else None: the node's
    CNI plugin brings its own, and kubelet's pods need nothing imagebuild installed)."""
    install = spec.containerd.install
    if install.method != "tarball" or install.cni_plugins is None:
        return None
    return {"file": "10-imagebuild-verify.conflist", "subnet": POD_SUBNET, "config": {
        "cniVersion": "1.0.0", "name": "imagebuild-verify", "plugins": [
            {"type": "bridge", "bridge": POD_BRIDGE, "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]]}}]}}


def guest_lab(spec: Spec, lab_plan: Plan, *, baked: bool = False, sandbox_baked: bool = False,
              sandbox: dict | None = None) -> dict:
    """What the in-guest CRI checks (check.py --cri-lab) are told: the spec's view and the pulls. *baked*:
    an image imagebuild bake made (not the user-data path): before any registry is reachable, its containerd
    must hold exactly the images it baked. *sandbox_baked*: its sandbox image is one of them (image.sandbox),
    so the pod must start without a registry. *sandbox*: what the bake's manifest records of it (the manifest
    digest its source gave, the program it runs), when known. With the CNI plugins installed, a pod in its own
    network namespace must get an address (pod_network)."""
    registry = spec.config.registry
    sandbox = sandbox or {}
    return {"baked": baked, "sandbox_baked": sandbox_baked, "sandbox_digest": sandbox.get("digest"),
            "sandbox_program": sandbox.get("program"),
            "sandbox_image": spec.config.sandbox_image, "sandbox_name": normalized(spec.config.sandbox_image),
            "registry_mode": registry.mode, "config_path": registry.config_path if registry.mode == "hosts" else None,
            "family": spec.containerd.family, "systemd_cgroup": spec.config.systemd_cgroup,
            "pulls": [p.as_json() for p in lab_plan.pulls],
            "sandbox": lab_plan.sandbox.as_json() if lab_plan.sandbox else None,
            "pod_network": pod_network(spec), "runtime_pods": runtime_pods(spec)}


def runtime_pods(spec: Spec) -> list[dict]:
    """The runtimes the spec installs (config.runtimes.<name>.install), whose pods the guest starts; for gVisor
    (runsc runs the pod's sandbox as a process of its own binary) the sha256 that process's executable must
    have: the runsc the spec installed, or the runsc that binary_name in its config names."""
    pods = []
    for name, rt in spec.config.runtimes.items():
        if not rt.install:
            continue
        exe = None
        if rt.runtime_type == "io.containerd.runsc.v1":
            binary = (rt.config or {}).get("binary_name") or "runsc"
            exe = next((f.sha256 for f in rt.install if f.path == binary or f.path.endswith("/" + binary)), None)
        pods.append({"name": name, "exe_sha256": exe})
    return pods


def mirror_checks(lab_plan: Plan, registries: dict[int, RegistryServer], *, sandbox_baked: bool = False) -> list[dict]:
    """From the registries' access logs (*registries*: port -> the registry serving it): each pull, and
    the sandbox image's, asked its mirror for the expected manifest path, and got it. *sandbox_baked*: the
    sandbox image is the image's own, so its registry must never have been asked for it."""
    checks = []
    sandbox = [(lab_plan.sandbox, "cri.mirror.sandbox_image")] if lab_plan.sandbox else []
    for pull, name in [(p, f"cri.mirror.{p.host}") for p in lab_plan.pulls] + sandbox:
        served = [(m, s) for m, path, s in registries[pull.port].requests() if path == pull.manifest]
        asked = ", ".join(f"{m} {s}" for m, s in served) if served else f"never asked for {pull.manifest}"
        if sandbox_baked and pull is lab_plan.sandbox:
            checks.append({"check": name, "ok": not served, "actual": asked,
                           "expected": f"{pull.image} baked in: the lab's :{pull.port} never asked for "
                                       f"{pull.manifest}"})
            continue
        checks.append({"check": name, "ok": any(status == 200 for _, status in served),
                       "expected": f"{pull.image}: the lab's :{pull.port} asked for {pull.manifest} (200)",
                       "actual": asked})
    return checks


def start(spec: Spec, work: Path, platform: str, test_image: Path, *, baked: bool = False,
          sandbox_baked: bool = False, sandbox: dict | None = None, egress: str = "open",
          proxy_log: Path | None = None) -> Lab:
    """The lab for *spec*: the test image under each mirrored name, and unless the image holds its own
    (*sandbox_baked*), a stand-in sandbox image (the test image's program, sleeping) under the spec's
    sandbox image name, for this boot's overlay. *egress* "proxy": the guest's one way out is the lab's
    proxy (imagebuild.verify.egress), which logs to *proxy_log*."""
    images = {"test": test_image}
    if not sandbox_baked:
        images["sandbox"] = work / "sandbox-image.tar"
        test_oci_image(images["sandbox"], cmd=("/bin/sleep", "3600"), arch=spec.image.architecture)
    return Lab(spec, work / "lab", platform, images, baked=baked, sandbox_baked=sandbox_baked, sandbox=sandbox,
               egress=egress, proxy_log=proxy_log)


class Lab:
    """The running lab of *spec* for a boot on *platform*: registries up, images pushed."""

    def __init__(self, spec: Spec, work: Path, platform: str, images: dict[str, Path], *, baked: bool = False,
                 sandbox_baked: bool = False, sandbox: dict | None = None, egress: str = "open",
                 proxy_log: Path | None = None):
        if egress not in egress_lab.EGRESS:
            raise ImagebuildError(f"unknown egress {egress!r}: use {' or '.join(egress_lab.EGRESS)}")
        self.spec, self.platform, self.baked, self.egress = spec, platform, baked, egress
        self.sandbox_baked, self.sandbox = sandbox_baked, sandbox
        self.plan = plan(spec, sandbox_baked=sandbox_baked)
        self.work = Path(work)
        self.ip = LAB_IP[platform]
        self.tls = lab_ca(self.work / "ca", self.plan.names)
        self.registries: dict[int, RegistryServer] = {}
        self.relay: egress_lab.Relay | None = None
        self.proxy: egress_lab.Tinyproxy | None = None
        storage = self.work / "storage"
        try:
            if egress == "proxy":
                egress_lab.check_spec_proxy(spec.proxy, self.ip)
            for port, tls in sorted(self.plan.ports.items()):
                self.registries[port] = RegistryServer(self.work / f"registry-{port}", storage=storage,
                                                 tls=(self.tls["cert"], self.tls["key"]) if tls else None)
            plain = next((r for r in self.registries.values() if not r.tls), None)
            pusher = plain or RegistryServer(self.work / "registry-push", storage=storage)
            try:
                for kind, name in self.plan.pushes:
                    pusher.push(images[kind], name)
            finally:
                if pusher is not plain:
                    pusher.close()
            if egress == "proxy":
                self._start_proxy(proxy_log)
        except BaseException:
            self.close()
            raise

    def _start_proxy(self, log: Path | None) -> None:
        """The proxy-only network's proxy, and the relay that resolves the lab's names for it."""
        ports = {port: reg.port for port, reg in self.registries.items()}
        names = set(self.plan.names)

        def route(host: str, port: int) -> int | None:
            if host == egress_lab.HOST_NAME:
                return port
            return ports.get(port) if host in names else None

        self.relay = egress_lab.Relay(route)
        self.proxy = egress_lab.Tinyproxy(self.work / "proxy", {
            name: f"127.0.0.1:{self.relay.port}" for name in [*self.plan.names, egress_lab.HOST_NAME]}, log_path=log)

    def netdev_options(self) -> str:
        """``-netdev user`` options: the guest's LAB_IP:<port> relayed to the host registry of that port; in the
        proxy-only network (egress proxy), the guest isolated (restrict=on) but for LAB_IP:PROXY_PORT, the proxy."""
        if self.proxy:
            return (f"restrict=on,guestfwd=tcp:{self.ip}:{egress_lab.PROXY_PORT}-cmd:"
                    f"{imds.relay_command(self.proxy.port)}")
        return ",".join(f"guestfwd=tcp:{self.ip}:{port}-cmd:{imds.relay_command(reg.port)}"
                        for port, reg in sorted(self.registries.items()))

    def seed_files(self, guest_dir: Path) -> dict[str, bytes]:
        """The files the boot's seed carries for the CRI checks (cri.py, cri_hpack.py and cri_checks.py from
        *guest_dir*)."""
        lab = guest_lab(self.spec, self.plan, baked=self.baked, sandbox_baked=self.sandbox_baked,
                        sandbox=self.sandbox) | {"hosts": self.hosts()}
        return {**{name: (guest_dir / name).read_bytes() for name in ("cri.py", "cri_hpack.py")},
                "cri_checks.py": (guest_dir / "cri_checks.py").read_bytes(),
                "runtime_pods.py": (guest_dir / "runtime_pods.py").read_bytes(),
                "cri-lab.json": (json.dumps(lab, indent=2) + "\n").encode(),
                "cri-lab-ca.crt": self.tls["ca"].read_bytes()}

    def hosts(self) -> list[str]:
        """/etc/hosts lines mapping the lab's host names to its address (the CRI checks add them after
        the offline checks)."""
        return [f"{self.ip} {name}" for name in self.plan.names]

    def host_checks(self) -> list[dict]:
        checks = mirror_checks(self.plan, self.registries, sandbox_baked=self.sandbox_baked)
        if self.proxy:
            install = self.spec.containerd.install
            arts = downloads.artifacts(self.spec)
            fetched = [(key, art.resolved_url) for key, art in arts]
            fetched += [(f"{key}.checksum_url", art.resolved_checksum_url) for key, art in arts
                        if not art.pinned_sha256 and art.resolved_checksum_url]
            pulls = [p for p in self.plan.pulls + [self.plan.sandbox] if p and p.endpoint]
            checks += egress_lab.checks(self.proxy.requests(), fetched,
                                        install.method == "package" or bool(self.spec.system.packages),
                                        [(p.host if p is not self.plan.sandbox else "sandbox_image", p.endpoint)
                                         for p in pulls])
        return checks

    def close(self) -> None:
        for reg in self.registries.values():
            reg.close()
        if self.proxy:
            self.proxy.close()
        if self.relay:
            self.relay.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
