"""The spec, parsed and validated once into a typed, immutable model.

Every renderer takes a `Spec` and nothing else; nothing downstream re-reads YAML or re-checks values.
`load()` reports every problem at once (key path, bad value, what is allowed) as a `SpecError`.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import posixpath
import re
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import schema
from .schema import Problem


class SpecError(Exception):
    """A spec that cannot be used; carries one Problem per violation."""

    def __init__(self, problems: list[Problem], source: str = "spec"):
        self.problems = problems
        self.source = source
        super().__init__("\n".join(str(p) for p in problems))

    def report(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def _frozen(cls):
    return dataclass(frozen=True)(cls)


@_frozen
class Artifact:
    url: str
    sha256: str | None
    checksum_url: str | None
    version: str = ""

    @property
    def resolved_url(self) -> str:
        return self.url.replace("{version}", self.version)

    @property
    def resolved_checksum_url(self) -> str | None:
        if self.checksum_url is None:
            return None
        return self.checksum_url.replace("{url}", self.resolved_url).replace("{version}", self.version)

    @property
    def filename(self) -> str:
        return self.resolved_url.rstrip("/").rsplit("/", 1)[-1]


@_frozen
class Package:
    name: str
    version: str | None
    hold: bool


@_frozen
class Install:
    method: str
    tarball: Artifact
    runc: Artifact
    cni_plugins: Artifact | None
    package: Package


@_frozen
class Containerd:
    version: str
    install: Install

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        major, minor, patch = (int(part) for part in self.version.split("."))
        return major, minor, patch

    @property
    def family(self) -> str:
        return family_of(self.version)

    @property
    def config_version(self) -> int:
        major, minor, _ = self.version_tuple
        return 2 if major == 1 else 3 if minor <= 2 else 4


def family_of(version: str) -> str:
    """The reference-default family of a containerd version: 1.6, 1.7 or 2.1 (2.0-2.2 share config
    version 3)."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return _family_of(major, minor) or f"{major}.{minor}"


def _family_of(major: int, minor: int) -> str | None:
    """The reference default (imagebuild/defaults/config-<family>.toml) a containerd minor is rendered
    from, or None when imagebuild carries none: each 1.x minor has its own (config version 2), and
    2.0-2.2 share 2.1's (config version 3; 2.3 would bring version 4)."""
    family = f"1.{minor}" if major == 1 else "2.1" if major == 2 and minor <= 2 else None
    return family if family in _reference_families() else None


@functools.cache
def _reference_families() -> tuple[str, ...]:
    names = [entry.name for entry in resources.files("imagebuild").joinpath("defaults").iterdir()]
    found = [m.group(1) for m in map(re.compile(r"^config-([0-9]+\.[0-9]+)\.toml$").match, names) if m]
    return tuple(sorted(found, key=lambda f: tuple(int(p) for p in f.split("."))))


def supported_versions() -> str:
    """The supported containerd versions, from the reference defaults imagebuild carries."""
    groups = []
    for family in _reference_families():
        major = int(family.split(".")[0])
        minors = [m for m in range(100) if _family_of(major, m) == family]
        span = f"{major}.{minors[0]}.x" if len(minors) == 1 else f"{major}.{minors[0]}.x-{major}.{minors[-1]}.x"
        groups.append(span)
    return ", ".join(groups)


def _url_parts(url: str) -> tuple[str, str]:
    """(scheme://host[:port], the URL's path normalised as containerd's path.Clean would, or "")."""
    parts = urllib.parse.urlsplit(url)
    raw = parts.path.strip("/")
    return f"{parts.scheme}://{parts.netloc}", (posixpath.normpath("/" + raw) if raw else "")


def api_root(url: str, path: str | None, override_path: bool, mode: str) -> str:
    """The path containerd puts before `/<repo>/manifests/<ref>` for this endpoint ("" for none).

    Read from containerd's source and checked with CRI pulls on 1.6, 1.7 and 2.1: in hosts.toml a
    URL path gets `/v2` appended unless it already ends in /v2 or `override_path` is set (then it is
    used as is); the legacy `registry.mirrors` table always uses the path as is (an empty path
    becomes /v2).
    """
    _, clean = _url_parts(url)
    if path == "prefix":
        return "/v2" + clean
    if path == "api-root" or mode == "legacy":
        return clean or ("" if path == "api-root" else "/v2")
    if override_path:
        return clean
    return "/v2" if not clean else clean if clean.endswith("/v2") else clean + "/v2"


@_frozen
class Endpoint:
    url: str
    path: str | None
    capabilities: tuple[str, ...]
    override_path: bool
    ca: str | None
    skip_verify: bool
    headers: dict[str, str]

    def api_root(self, mode: str) -> str:
        return api_root(self.url, self.path, self.override_path, mode)

    @property
    def hosts_entry(self) -> tuple[str, bool]:
        """(the [host."<url>"] key, override_path) of hosts.toml: with `path` set, the URL carries
        the API root and override_path says so; an endpoint without `path` is written as given."""
        base, clean = _url_parts(self.url)
        if self.path is None:
            return self.url, self.override_path
        if not clean and self.path == "prefix":
            return self.url, False
        return base + self.api_root("hosts"), True

    @property
    def legacy_url(self) -> str:
        """The URL in the legacy registry.mirrors table, whose path containerd takes as the API root."""
        base, clean = _url_parts(self.url)
        if not clean and self.path != "api-root":
            return base  # no path: containerd requests /v2 (a lone "/" would make it request /<repo>)
        return base + self.api_root("legacy")


@_frozen
class Mirror:
    host: str
    server: str | None
    endpoints: tuple[Endpoint, ...]

    @property
    def legacy_endpoints(self) -> list[str]:
        return [ep.legacy_url for ep in self.endpoints]

    @property
    def upstream(self) -> str:
        if self.server:
            return self.server
        return "https://registry-1.docker.io" if self.host == "docker.io" else f"https://{self.host}"


@_frozen
class Registry:
    mode: str
    config_path: str
    mirrors: tuple[Mirror, ...]


@_frozen
class Runtime:
    runtime_type: str
    binary_name: str | None
    config_path: str | None
    pod_annotations: tuple[str, ...]
    privileged_without_host_devices: bool


@_frozen
class Config:
    root: str
    state: str
    oom_score: int
    sandbox_image: str
    systemd_cgroup: bool
    registry: Registry
    default_runtime: str
    runtimes: dict[str, Runtime]
    max_container_log_line_size: int
    snapshotter: str
    discard_unpacked_layers: bool
    imports: tuple[str, ...]
    overrides: dict[str, Any]


@_frozen
class Unit:
    description: str
    documentation: str
    after: tuple[str, ...]
    exec_start_pre: tuple[str, ...]
    exec_start: str
    type: str
    delegate: bool
    kill_mode: str
    restart: str
    restart_sec: int
    limit_nproc: str
    limit_core: str
    limit_nofile: str
    tasks_max: str
    oom_score_adjust: int
    wanted_by: str


@_frozen
class Proxy:
    http: str | None
    https: str | None
    no_proxy: tuple[str, ...]

    @property
    def environment(self) -> dict[str, str]:
        """The variables containerd (Go's ProxyFromEnvironment) reads; empty when no proxy is set."""
        if not (self.http or self.https):
            return {}
        env = {"HTTP_PROXY": self.http, "HTTPS_PROXY": self.https,
               "NO_PROXY": ",".join(self.no_proxy) if self.no_proxy else None}
        return {k: v for k, v in env.items() if v}


#: What a Kubernetes worker needs besides containerd: sysctl -> (value, reason), packages -> reason.
#: The spec's own system.sysctls are applied after (and win over) the profile's.
# A profile: sysctls {key: (value, why)} and packages {name: (why, probe command)}.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "kubernetes-worker": {
        "sysctls": {
            "net.ipv6.conf.all.forwarding": ("1", "pods' IPv6 traffic is routed through the node; "
                                             "bridge filtering alone does not forward it"),
            "kernel.panic": ("10", "kubelet's protectKernelDefaults requires it: reboot 10 s after a panic"),
            "kernel.panic_on_oops": ("1", "kubelet's protectKernelDefaults requires it: an oops panics "
                                          "(and reboots) instead of running on in an unknown state"),
            "vm.overcommit_memory": ("1", "kubelet's protectKernelDefaults requires it: kubelet evicts "
                                          "pods itself, the kernel must not refuse allocations"),
        },
        # name: (why, a command that proves the tool runs: the in-guest check runs it)
        "packages": {
            "conntrack": ("kube-proxy deletes stale conntrack entries (UDP services) with it",
                          ("conntrack", "--version")),
            "socat": ("kubelet's port forwarding (kubectl port-forward) and kubeadm's preflight need it",
                      ("socat", "-V")),
            "ebtables": ("kubelet's network plugins and kubeadm's preflight need it", ("ebtables", "--version")),
        },
    },
    "none": {"sysctls": {}, "packages": {}},
}


@_frozen
class System:
    profile: str
    modules: tuple[str, ...]
    sysctls: dict[str, str]

    @property
    def packages(self) -> tuple[str, ...]:
        """Debian packages the profile installs (tarball and package installs alike)."""
        return tuple(PROFILES[self.profile]["packages"])

    @property
    def package_probes(self) -> dict[str, tuple[str, ...]]:
        """Each profile package's command that proves its tool runs."""
        return {name: probe for name, (_, probe) in PROFILES[self.profile]["packages"].items()}


@_frozen
class BaseImage:
    source: str
    checksum: str


@_frozen
class Aws:
    region: str
    copy_regions: tuple[str, ...]
    share_with: tuple[str, ...]
    ssm_parameter: str
    keep: int
    tags: dict[str, str]
    source_ami_name: str
    source_ami_owners: tuple[str, ...]
    instance_type: str
    volume_size_gb: int
    encrypt_boot: bool
    kms_keys: dict[str, str]
    share_with_organizations: tuple[str, ...]
    share_with_ous: tuple[str, ...]
    ssm_all_regions: bool
    deprecate_after_days: int | None


@_frozen
class Image:
    base: BaseImage | None
    disk_size_gb: int
    accelerator: str
    hygiene: bool
    packer_version: str
    aws: Aws


@_frozen
class Check:
    name: str
    run: str


@_frozen
class Verify:
    timeout: int
    checks: tuple[Check, ...]


@_frozen
class Spec:
    name: str
    containerd: Containerd
    config: Config
    unit: Unit
    proxy: Proxy
    system: System
    image: Image
    verify: Verify
    warnings: tuple[str, ...] = field(default=(), compare=False)
    document: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def spec_hash(self) -> str:
        """sha256 of the normalised spec: equal specs hash equal, whatever their YAML layout."""
        canonical = json.dumps(self.document, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


# --- building the model -------------------------------------------------------------------------

def _build(cls: type, data: Any) -> Any:
    """Turn validated, defaulted data into the dataclass *cls* (recursively, by type hints)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in ("warnings", "document"):
            continue
        kwargs[f.name] = _convert(hints[f.name], data.get(f.name))
    return cls(**kwargs)


def _convert(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value)
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        return tuple(_convert(item, v) for v in value)
    if origin is dict:
        _, item = typing.get_args(hint)
        return {k: _convert(item, v) for k, v in value.items()}
    if hint is str and isinstance(value, int):
        return str(value)
    return value


def _semantic_checks(doc: dict) -> tuple[list[Problem], list[str]]:
    """Rules that span keys; returns (problems, warnings)."""
    problems: list[Problem] = []
    warnings: list[str] = []
    ctd, cfg, unit = doc["containerd"], doc["config"], doc["unit"]
    major, minor, _ = (int(p) for p in ctd["version"].split("."))
    if _family_of(major, minor) is None:
        problems.append(Problem("containerd.version", f"got {ctd['version']!r}, expected {supported_versions()} "
                                f"(the versions whose reference config imagebuild carries: "
                                f"{', '.join(_reference_families())})"))
    install = ctd["install"]
    if install["method"] == "tarball":
        for name in ("tarball", "runc") + (("cni_plugins",) if install["cni_plugins"] else ()):
            art = install[name]
            if not art["sha256"] and not art["checksum_url"]:
                problems.append(Problem(f"containerd.install.{name}.sha256",
                                        "got null with checksum_url null, expected a pinned sha256 or a checksum_url"))
    else:
        pkg = install["package"]
        if not pkg["version"]:
            problems.append(Problem("containerd.install.package.version",
                                    "got null, expected the exact package version to pin (package method)"))
        # 1.6.20, 1.6.20~ds1-1 and 2:1.6.20-1 package containerd 1.6.20; 1.6.200-1 does not.
        elif not re.match(rf"{re.escape(ctd['version'])}(?![0-9.])", pkg["version"].split(":", 1)[-1]):
            problems.append(Problem("containerd.install.package.version",
                                    f"got {pkg['version']!r}, expected a version of containerd {ctd['version']} "
                                    f"(starting with {ctd['version']})"))
    registry = cfg["registry"]
    seen: dict[str, int] = {}
    for index, mirror in enumerate(registry["mirrors"]):
        if mirror["host"] in seen:
            problems.append(Problem(f"config.registry.mirrors[{index}].host",
                                    f"got {mirror['host']!r} again (also at [{seen[mirror['host']]}]), "
                                    "each registry host once"))
        seen.setdefault(mirror["host"], index)
        if registry["mode"] == "hosts" and major == 1 and not mirror["endpoints"]:
            problems.append(Problem(f"config.registry.mirrors[{index}].endpoints",
                                    "got [], but containerd 1.x ignores a hosts.toml without [host] entries "
                                    "(\"invalid `host` tree\"), server included; list at least one endpoint "
                                    "(the server itself will do)"))
        urls = [ep["url"] for ep in mirror["endpoints"]]
        for e_index, url in enumerate(urls):
            if url in urls[:e_index]:
                problems.append(Problem(f"config.registry.mirrors[{index}].endpoints[{e_index}].url",
                                        f"got {url!r} again (also at [{urls.index(url)}]), each endpoint once "
                                        "(hosts.toml keys hosts by URL)"))
        for e_index, ep in enumerate(mirror["endpoints"]):
            _check_endpoint_path(ep, registry["mode"], f"config.registry.mirrors[{index}].endpoints[{e_index}]",
                                 problems, warnings)
        if registry["mode"] == "legacy":
            default = "https://registry-1.docker.io" if mirror["host"] == "docker.io" else f"https://{mirror['host']}"
            if mirror["server"] and mirror["server"].rstrip("/") != default:
                problems.append(Problem(f"config.registry.mirrors[{index}].server",
                                        f"got {mirror['server']!r}, but the legacy registry.mirrors table always "
                                        f"falls back to {default} after the endpoints; use mode: hosts"))
            for e_index, ep in enumerate(mirror["endpoints"]):
                extras = [k for k in ("ca", "headers") if ep[k]] + [k for k in ("skip_verify",) if ep[k]]
                if ep["capabilities"] != ["pull", "resolve"] or ep["override_path"]:
                    extras.append("capabilities/override_path")
                if extras:
                    problems.append(Problem(f"config.registry.mirrors[{index}].endpoints[{e_index}]",
                                            f"sets {', '.join(extras)}, which the legacy registry.mirrors table "
                                            "cannot express; use mode: hosts"))
    if registry["mode"] == "legacy":
        warnings.append("config.registry.mode: legacy registry.mirrors is deprecated and removed in containerd 2.4; "
                        "use mode: hosts")
        if major >= 2 and minor >= 1:
            warnings.append("config.registry.mode: with legacy mirrors containerd 2.1+ falls back to local pull mode")
    for path in cfg["imports"]:
        if "*" not in path:
            warnings.append(f"config.imports: {path} names one file, and containerd {major}.x refuses to start "
                            "when it is missing; make sure something creates it, or use a glob "
                            "(/etc/containerd/conf.d/*.toml may match nothing)")
    _check_cri_loads(doc, major, problems)
    if cfg["discard_unpacked_layers"] and major >= 2 and minor >= 1:
        warnings.append("config.discard_unpacked_layers: true makes containerd 2.1+ fall back to local pull mode")
    if "runc" in cfg["runtimes"]:
        problems.append(Problem("config.runtimes.runc", "runc is built in; tune it with config.systemd_cgroup "
                                "or config.overrides"))
    if cfg["default_runtime"] != "runc" and cfg["default_runtime"] not in cfg["runtimes"]:
        problems.append(Problem("config.default_runtime", f"got {cfg['default_runtime']!r}, expected runc or one of "
                                f"config.runtimes ({', '.join(cfg['runtimes']) or 'none defined'})"))
    _check_overrides(cfg["overrides"], "config.overrides", problems)  # key quotes: once split, in from_document
    if not -999 <= cfg["oom_score"] <= 0:
        warnings.append(f"config.oom_score: {cfg['oom_score']} is outside the recommended -999..0 "
                        "(-1000 means never killed; 0 and above put containerd before containers)")
    if unit["oom_score_adjust"] != cfg["oom_score"]:
        warnings.append(f"unit.oom_score_adjust ({unit['oom_score_adjust']}) differs from config.oom_score "
                        f"({cfg['oom_score']}); containerd applies config.oom_score to itself once started")
    if unit["kill_mode"] != "process":
        warnings.append(f"unit.kill_mode: {unit['kill_mode']} kills or orphans running containers when "
                        "containerd restarts; process keeps them")
    if not unit["delegate"]:
        warnings.append("unit.delegate: false lets systemd take over container cgroups")
    for key in ("limit_nproc", "limit_core", "limit_nofile", "tasks_max"):
        unit[key] = str(unit[key])  # `limit_nofile: 1048576` and "1048576" are the same setting
    if unit["exec_start"] is None:
        unit["exec_start"] = ("/usr/local/bin/containerd" if install["method"] == "tarball"
                              else "/usr/bin/containerd")
    for key, value in doc["system"]["sysctls"].items():
        if not str(value).strip():
            problems.append(Problem(f"system.sysctls.{key}", f"got {value!r}, expected a number or plain text "
                                    "(an empty value sets nothing and systemd-sysctl rejects it; remove the key)"))
    aws = doc["image"]["aws"]
    if aws["region"] in aws["copy_regions"]:
        problems.append(Problem("image.aws.copy_regions", f"got {aws['region']!r}, the home region; list only "
                                "the regions the AMI is copied to"))
    if len(aws["tags"]) > 41:
        problems.append(Problem("image.aws.tags", f"got {len(aws['tags'])} tags, expected at most 41 (AWS takes 50 "
                                "a resource; imagebuild adds 9 of its own)"))
    for key in aws["tags"]:
        if key.lower().startswith(("aws:", "imagebuild:")):
            problems.append(Problem(f"image.aws.tags.{key}", "keys starting with aws: or imagebuild: are reserved"))
    if aws["encrypt_boot"] and aws["share_with"] and not aws["kms_keys"]:
        problems.append(Problem("image.aws.share_with", f"got {schema._show(aws['share_with'])} with encrypt_boot: true, "
                                "but an AMI encrypted with the default KMS key cannot be shared (Packer refuses it); "
                                "set image.aws.kms_keys to customer managed keys, or share it unencrypted"))
    if aws["kms_keys"]:
        if not aws["encrypt_boot"]:
            problems.append(Problem("image.aws.kms_keys", "set with encrypt_boot: false; the keys would be ignored, "
                                    "expected encrypt_boot: true"))
        for region in [aws["region"], *aws["copy_regions"]]:
            if region not in aws["kms_keys"]:
                problems.append(Problem(f"image.aws.kms_keys.{region}", "missing: a KMS key is region-bound, "
                                        "expected a key ARN for the home region and every copy region"))
        for region, arn in aws["kms_keys"].items():
            if f":kms:{region}:" not in arn:
                problems.append(Problem(f"image.aws.kms_keys.{region}", f"got {schema._show(arn)}, expected a key "
                                        f"of region {region}"))
    if doc["image"]["aws"]["ssm_parameter"] is None:
        doc["image"]["aws"]["ssm_parameter"] = f"/imagebuild/{doc['name']}/latest"
    for index, check in enumerate(doc["verify"]["checks"]):
        if check["name"] in [c["name"] for c in doc["verify"]["checks"][:index]]:
            problems.append(Problem(f"verify.checks[{index}].name", f"got {check['name']!r} twice, names must be unique"))
    return problems, warnings


#: Snapshotters that load only when configured: (key path in overrides that configures them, why).
_CONFIGURED_SNAPSHOTTERS = {
    "stargz": (("proxy_plugins", "stargz"), "a proxy plugin (the stargz snapshotter daemon) at "
               "config.overrides.proxy_plugins.stargz"),
    "devmapper": (("plugins", "io.containerd.snapshotter.v1.devmapper", "pool_name"), "a thin pool at "
                  "config.overrides.plugins.io.containerd.snapshotter.v1.devmapper.pool_name"),
}


def _dig(value: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _check_cri_loads(doc: dict, major: int, problems: list[Problem]) -> None:
    """Combinations that pass `config dump` but leave containerd without a CRI plugin (seen with the
    real 1.6, 1.7 and 2.1 daemons: CRI answers "unknown service runtime.v1.RuntimeService", or the
    daemon exits)."""
    cfg = doc["config"]
    if posixpath.normpath(cfg["root"]) == posixpath.normpath(cfg["state"]):
        problems.append(Problem("config.state", f"got {cfg['state']!r}, the same path as config.root; containerd "
                                "refuses to start (\"root and state must be different paths\")"))
    needed = _CONFIGURED_SNAPSHOTTERS.get(cfg["snapshotter"])
    if needed and _dig(cfg["overrides"], needed[0]) is None:
        problems.append(Problem("config.snapshotter", f"got {cfg['snapshotter']!r} with no plugin behind it: it "
                                f"needs {needed[1]}, else the CRI plugin does not load (\"failed to find "
                                "snapshotter\")"))
    if major == 1 and cfg["registry"]["mode"] == "hosts":
        configs = _dig(cfg["overrides"], ("plugins", "io.containerd.grpc.v1.cri", "registry", "configs"))
        for host, conf in (configs or {}).items():
            if isinstance(conf, dict) and "tls" in conf:
                problems.append(Problem(f"config.overrides.plugins.io.containerd.grpc.v1.cri.registry.configs.{host}.tls",
                                        f"got {schema._show(conf['tls'])} with registry.config_path set (mode: hosts): "
                                        "containerd 1.x then does not load the CRI plugin; put ca/skip_verify on "
                                        "the mirror's endpoints instead"))


def _check_endpoint_path(ep: dict, mode: str, key: str, problems: list[Problem], warnings: list[str]) -> None:
    """An endpoint URL's path must say what it is, and must lead containerd to a registry API path."""
    _, clean = _url_parts(ep["url"])
    if ep["path"] and ep["override_path"]:
        problems.append(Problem(f"{key}.override_path", f"got true with path: {ep['path']}; path replaces "
                                "override_path, remove override_path"))
        return
    root = api_root(ep["url"], ep["path"], ep["override_path"], mode)
    if "v2" not in root.split("/"):
        hint = (f"path: prefix (requests /v2{clean}/<repo>/...)" if clean
                else "no override_path (requests /v2/<repo>/...)")
        problems.append(Problem(f"{key}.url", f"got {ep['url']!r}: containerd would request "
                                f"{root}/<repo>/manifests/<ref>, which has no /v2 and is no registry API path; "
                                f"use {hint}, or path: api-root with a URL path holding /v2"))
        return
    if ep["override_path"]:
        warnings.append(f"{key}.override_path is deprecated; use path: api-root")
    elif clean and ep["path"] is None:
        warnings.append(f"{key}.url: {ep['url']!r} has a path but no `path`; containerd takes it as the API root "
                        f"{root} (requests {root}/<repo>/manifests/<ref>). Say path: api-root with that URL, "
                        f"or path: prefix to request /v2{clean}/<repo>/manifests/<ref>")


def _check_overrides(value: Any, path: str, problems: list[Problem], *, quote_in_keys: bool = True) -> None:
    """Overrides go to TOML verbatim, so refuse what TOML cannot hold (null), control characters in
    keys, and what containerd's own TOML parser cannot read back.

    containerd 1.x (go-toml v1) refuses a quoted key with an escaped double quote (`"a\\"b" = 1`:
    "invalid bare key character"), so the whole config fails to load: *quote_in_keys* is False there.
    """
    if value is None:
        problems.append(Problem(path, "got null, TOML has no null; remove the key instead"))
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or schema.CONTROL_CHARS.search(key) or schema.SURROGATES.search(key):
                problems.append(Problem(f"{path}.{key!r}", "bad key, expected printable text"))
            elif not quote_in_keys and '"' in key:
                problems.append(Problem(f"{path}.{key}", "bad key: containerd 1.x cannot read a key holding a "
                                        "double quote (its config would not load)"))
            else:
                _check_overrides(item, f"{path}.{key}", problems, quote_in_keys=quote_in_keys)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_overrides(item, f"{path}[{index}]", problems, quote_in_keys=quote_in_keys)
    elif isinstance(value, str):
        if "\x00" in value:
            problems.append(Problem(path, "got a NUL character, which TOML cannot hold"))
        elif schema.SURROGATES.search(value):
            problems.append(Problem(path, f"got {schema._show(value)}: a lone UTF-16 surrogate is not a character "
                                    "and cannot be written to a file"))
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 63):
            problems.append(Problem(path, f"got {value}, outside TOML's 64-bit integers"))
    elif isinstance(value, float):
        if value != value:
            problems.append(Problem(path, "got nan, which can never be checked equal; remove it"))
    else:
        problems.append(Problem(path, f"got {schema._show(value)} ({type(value).__name__}), expected a string, "
                                "number, boolean, list or mapping (quote dates)"))


def from_document(document: Any, source: str = "spec") -> Spec:
    """Validate a parsed YAML document and build the model; raises SpecError listing every problem."""
    if document is None:
        document = {}
    doc, problems = schema.validate(document)
    warnings: list[str] = []
    if not problems:
        problems, warnings = _semantic_checks(doc)
    if not problems:
        from .render.config_toml import normalise_overrides

        family = family_of(doc["containerd"]["version"])
        doc["config"]["overrides"], found = normalise_overrides(doc["config"]["overrides"], family)
        problems = [Problem(path, message) for path, message in found]
        _check_overrides(doc["config"]["overrides"], "config.overrides", problems,
                         quote_in_keys=not family.startswith("1."))
    if problems:
        raise SpecError(problems, source)
    spec = _build(Spec, doc)
    # The containerd tarball's version is containerd's own. Set on the model only: the document
    # (spec.json, spec_hash) stays a valid spec that loads back.
    ctd = spec.containerd
    tarball = dataclasses.replace(ctd.install.tarball, version=ctd.version)
    spec = dataclasses.replace(spec, containerd=dataclasses.replace(
        ctd, install=dataclasses.replace(ctd.install, tarball=tarball)))
    # The profile's sysctls first, the spec's own after them (and over them).
    profile = {key: value for key, (value, _) in PROFILES[spec.system.profile]["sysctls"].items()}
    spec = dataclasses.replace(spec, system=dataclasses.replace(
        spec.system, sysctls={**profile, **spec.system.sysctls}))
    problems = _override_conflicts(spec)
    if problems:
        raise SpecError(problems, source)
    return dataclasses.replace(spec, warnings=tuple(warnings), document=doc)


def _override_conflicts(spec: Spec) -> list[Problem]:
    """config.overrides may not set (or replace a table holding) a key a typed setting owns: the
    rendered file would carry the override while expected.json expects both values."""
    from .render.config_toml import KeyPaths
    from .render.expected import config_expectations

    items = config_expectations(spec)
    owned = {tuple(i["path"]): i["name"] for i in items if not i["name"].startswith("config.overrides.")}
    owned[("version",)] = "containerd.version"
    owned[KeyPaths(spec.containerd.config_version).registry + ("mirrors",)] = "config.registry"
    problems = []
    for item in items:
        if not item["name"].startswith("config.overrides."):
            continue
        path = tuple(item["path"])
        for own, name in owned.items():
            n = min(len(own), len(path))
            if own[:n] == path[:n]:
                problems.append(Problem(item["name"], f"got {schema._show(item['value'])}, which sets "
                                        f"{'.'.join(own)}: use {name} instead"))
                break
    return problems


#: Input limits: a spec is a few KiB and a dozen levels deep; hostile YAML (an alias bomb, thousands
#: of nested brackets, a huge file) fails fast with one clear error instead of hanging or crashing.
MAX_SPEC_BYTES = 256 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_ALIASES = 256

_STR, _MERGE = "tag:yaml.org,2002:str", "tag:yaml.org,2002:merge"
_BOOL = "tag:yaml.org,2002:bool"


class _Limit(yaml.composer.ComposerError):
    """A spec over one of the input limits (raised while composing, before anything is built)."""


class _BadKey(yaml.composer.ComposerError):
    """A mapping key that is not text: a list or mapping (a complex key), a number, a boolean, null."""


_KINDS = {"int": "an integer", "float": "a number", "bool": "a boolean", "null": "null", "timestamp": "a date"}


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans, refusing duplicate and non-text keys, within limits.

    Only true/false (True, TRUE, False, FALSE) are booleans, as in YAML 1.2: `no`, `on`, `yes` and
    `off` are strings, so `restart: no` means "no" and never False. Numbers stay PyYAML's, so a file
    written by yaml.safe_dump reads back the same. Every node is counted as if aliases were expanded,
    so an alias bomb stops at MAX_NODES while composing, before any value is built.
    """

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, "tag:yaml.org,2002:value")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str, name: str):
        super().__init__(stream)
        self.name = name  # marks name the spec file, not "<unicode string>"
        self._depth = 0
        self._nodes = 0
        self._aliases = 0
        self._sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, expanded depth)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Limit(None, None, f"more than {MAX_ALIASES} aliases (*name), expected at most "
                             f"{MAX_ALIASES}", event.start_mark)
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:
                raise _Limit(None, None, f"alias *{event.anchor} refers to a node that contains it "
                             "(a recursive structure), expected a finished anchor", event.start_mark)
            self._count(node, event.start_mark)
            return node
        event = self.peek_event()
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Limit(None, None, f"nested more than {MAX_DEPTH} levels deep, expected at most {MAX_DEPTH}",
                         event.start_mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        if isinstance(node, yaml.MappingNode):
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    raise _BadKey(None, None, f"got a {key.id} as a mapping key, expected a plain text key",
                                  key.start_mark)
                if key.tag not in (_STR, _MERGE):
                    kind = key.tag.rsplit(":", 1)[-1]
                    raise _BadKey(None, None, f"got the key {key.value!r}, which YAML reads as "
                                  f"{_KINDS.get(kind, kind)}, expected text (quote it)", key.start_mark)
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        size = 1 + sum(self._sizes[id(child)][0] for child in children)
        depth = 1 + max((self._sizes[id(child)][1] for child in children), default=0)
        self._sizes[id(node)] = (size, depth)
        self._count(node, event.start_mark, own=True)
        return node

    def _count(self, node, mark, own: bool = False) -> None:
        size, depth = self._sizes[id(node)]
        self._nodes += 1 if own else size
        if self._nodes > MAX_NODES:
            raise _Limit(None, None, f"more than {MAX_NODES} values (aliases counted expanded), expected at "
                         f"most {MAX_NODES}", mark)
        if depth > MAX_DEPTH:
            raise _Limit(None, None, f"nested more than {MAX_DEPTH} levels deep once aliases are expanded, "
                         f"expected at most {MAX_DEPTH}", mark)


_UniqueKeyLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE:
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    loader.flatten_mapping(node)  # `<<: *anchor` merges; keys written here win over merged ones
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _DuplicateJsonKey(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateJsonKey(key)
        out[key] = value
    return out


def _load_document(text: str, source: str = "spec") -> Any:
    """The document in *text*: JSON when it is JSON (spec.json, the effective spec), else YAML.

    JSON is read as JSON, not as the YAML it nearly is: YAML 1.1 reads `1e-05` as a string and a
    `\ud83d\ude00` escape pair as two lone surrogates, so spec.json did not load back as the same spec.
    """
    if text.lstrip().startswith("{"):
        try:
            return _within_depth(json.loads(text, object_pairs_hook=_json_object))
        except _DuplicateJsonKey as exc:
            raise SpecError([Problem("", f"not valid JSON: duplicate key {exc.args[0]!r}")]) from None
        except RecursionError:
            raise SpecError([Problem("", f"nested more than {MAX_DEPTH} levels deep, expected at most "
                                     f"{MAX_DEPTH}")]) from None
        except json.JSONDecodeError:
            pass  # a YAML flow mapping such as {name: x}
    loader = _UniqueKeyLoader(text, source)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _within_depth(document: Any) -> Any:
    """*document* (parsed JSON), unless nested deeper than MAX_DEPTH: checked without recursion."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise RecursionError
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return document


def _yaml_problem(exc: yaml.YAMLError, text: str, source: str) -> Problem:
    """One line for a YAML error: what is wrong, at file:line:column (PyYAML's own text takes 4-8 lines)."""
    if isinstance(exc, yaml.reader.ReaderError) and isinstance(exc.position, int):
        before = text[:exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        return Problem("", f"not valid YAML at {source}:{line}:{column}: got the character "
                       f"#x{exc.character:04x}, expected printable text (control characters must be escaped "
                       "in double quotes)")
    if not isinstance(exc, yaml.MarkedYAMLError) or not (exc.problem_mark or exc.context_mark):
        return Problem("", f"not valid YAML: {' '.join(str(exc).split())}")

    def where(mark) -> str:
        return f"{mark.name}:{mark.line + 1}:{mark.column + 1}"

    what = "over a limit" if isinstance(exc, _Limit) else "bad key" if isinstance(exc, _BadKey) else "not valid YAML"
    mark = exc.problem_mark or exc.context_mark
    text = f"{what} at {where(mark)}: {exc.problem or exc.context}"
    if exc.context and exc.problem and exc.context_mark:
        text += f" ({exc.context} at {exc.context_mark.line + 1}:{exc.context_mark.column + 1})"
    return Problem("", " ".join(text.split()))


def parse(text: str, source: str = "spec") -> Spec:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SPEC_BYTES:
        raise SpecError([_too_big(size)], source)
    try:
        document = _load_document(text, source)
    except SpecError as exc:
        raise SpecError(exc.problems, source) from None
    except yaml.YAMLError as exc:
        raise SpecError([_yaml_problem(exc, text, source)], source) from None
    if document is None:
        raise SpecError([Problem("", "the file holds no spec (it is empty or only comments), expected a mapping "
                                 "such as `name: my-image`; omit SPEC for the built-in default")], source)
    if not isinstance(document, dict):
        raise SpecError([Problem("", f"got {type(document).__name__}, expected a mapping at the top level")], source)
    return from_document(document, source)


def _too_big(size: int | str) -> Problem:
    return Problem("", f"got {size} bytes, expected a spec of at most {MAX_SPEC_BYTES} bytes "
                   f"({MAX_SPEC_BYTES // 1024} KiB)")


def load(path: str | Path | None = None) -> Spec:
    """The spec at *path*, or the built-in default (the seed's tuned setup) when *path* is None."""
    if path is None:
        return from_document({}, "default spec")
    path = Path(path)
    try:
        with path.open("rb") as handle:  # read no more than the limit: a 50 MB file is refused at once
            data = handle.read(MAX_SPEC_BYTES + 1)
            if len(data) > MAX_SPEC_BYTES:
                try:
                    size: int | str = os.fstat(handle.fileno()).st_size or f"more than {MAX_SPEC_BYTES}"
                except OSError:
                    size = f"more than {MAX_SPEC_BYTES}"
                raise SpecError([_too_big(size)], str(path))
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([Problem("", f"cannot read {path}: {exc}")], str(path)) from None
    return parse(text, str(path))
