"""The spec's containerd sections: the install (tarball, runc, CNI plugins, package), the version
and its family, registries and mirrors, runtimes, config.toml's settings, the systemd unit, the proxy.
"""
from __future__ import annotations

import datetime
import functools
import posixpath
import re
import typing
import urllib.parse
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    model_validator,
)

from imagebuild.spec.fields import (
    ABS_GLOB,
    CHECKSUM_URL,
    DEFAULT_CNI_URL,
    DEFAULT_CONTAINERD_URL,
    DEFAULT_RUNC_URL,
    GITHUB,
    HEADER_NAME,
    HOSTNAME,
    HTTP_URL,
    IMAGE_REF,
    NO_PROXY_ENTRY,
    PACKAGE_VERSION,
    RUNTIME_NAME,
    SHA256,
    SYSTEMD_UNIT,
    UNIQUE,
    UNIQUE_SCHEMA,
    URL_TEMPLATE,
    VERSION,
    AbsPath,
    Bool,
    HttpUrl,
    Int,
    Key,
    Section,
    Text,
    UnitLimit,
    keys_schema,
)
from imagebuild.spec.secret_refs import HeaderValue

# --- containerd -----------------------------------------------------------------------------------

def _families_in(source: str) -> tuple[str, ...]:
    names = [entry.name for entry in resources.files("imagebuild").joinpath("defaults", source).iterdir()]
    found = [m.group(1) for m in map(re.compile(r"^config-([0-9]+\.[0-9]+)\.toml$").match, names) if m]
    return tuple(sorted(found, key=lambda f: tuple(int(p) for p in f.split("."))))


@functools.cache
def reference_families() -> tuple[str, ...]:
    """The families whose `containerd config default` imagebuild carries (imagebuild/defaults/upstream/):
    the versions a spec may name, installed from upstream's release tarball."""
    return _families_in("upstream")


@functools.cache
def package_families() -> tuple[str, ...]:
    """The families a package install supports: those Debian packages, whose own (patched) `config default`
    imagebuild carries beside upstream's (imagebuild/defaults/debian/)."""
    return _families_in("debian")


@functools.cache
def config_version_of(family: str) -> int:
    """The config version (`version = N`) of the family's own `config default`: what its config.toml is
    written as (2 for 1.x, 3 for 2.0-2.2, 4 from 2.3 on, as each release prints it)."""
    text = resources.files("imagebuild").joinpath("defaults", "upstream", f"config-{family}.toml").read_text()
    match = re.search(r"^version = ([0-9]+)$", text, flags=re.M)
    if not match:
        raise ValueError(f"imagebuild/defaults/upstream/config-{family}.toml has no `version = N` line")
    return int(match.group(1))


#: When upstream support of each family ends (containerd's RELEASES.md; the month only where it names no day:
#: its last day counts). A spec of a family past it is warned, never refused: images of it are still built.
END_OF_SUPPORT: dict[str, str] = {
    "1.6": "2025-08-23", "1.7": "2026-09-30", "2.0": "2027-03-31", "2.1": "2026-07-03", "2.2": "2026-11-06",
    "2.3": "2028-04-30", "2.4": "2027-04-26",
}
#: The long-term-support family `imagebuild init` starts from, at the release of its reference default.
LTS_VERSION = "2.3.7"


def end_of_support_warning(family: str, today: datetime.date | None = None) -> str | None:
    """One line when *family* is past upstream's end of support (on *today*, default: the date today)."""
    end = END_OF_SUPPORT.get(family)
    if end is None or (today or datetime.date.today()) <= datetime.date.fromisoformat(end):
        return None
    return (f"containerd {family} left upstream support on {end} (containerd's RELEASES.md): no more fixes; "
            f"{LTS_VERSION.rsplit('.', 1)[0]} is the long-term-support release")


def family_for(major: int, minor: int) -> str | None:
    """The reference default (imagebuild/defaults/<source>/config-<family>.toml) a containerd minor is
    rendered from, or None when imagebuild carries none: every minor has its own."""
    family = f"{major}.{minor}"
    return family if family in reference_families() else None


def family_of(version: str) -> str:
    """The family (major.minor) of a containerd version, whose reference default it renders from."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return family_for(major, minor) or f"{major}.{minor}"


def supported_versions(families: tuple[str, ...] | None = None) -> str:
    """The supported containerd versions, from the reference defaults imagebuild carries (of
    *families* only, when given): consecutive minors of a major as one span (`2.0.x-2.4.x`)."""
    runs: list[list[tuple[int, int]]] = []
    for family in families or reference_families():
        major, minor = (int(part) for part in family.split("."))
        if runs and runs[-1][-1] == (major, minor - 1):
            runs[-1].append((major, minor))
        else:
            runs.append([(major, minor)])
    return ", ".join(f"{r[0][0]}.{r[0][1]}.x" + (f"-{r[-1][0]}.{r[-1][1]}.x" if len(r) > 1 else "") for r in runs)


class _Download:
    """A downloaded artifact: URL templates resolved with its version and the image's architecture."""

    if TYPE_CHECKING:
        url: str
        checksum_url: str | None
        sha256: str | None
        insecure: bool
        version: str
        _arch: str
        _pinned: str | None

    @property
    def arch(self) -> str:
        """image.architecture (amd64, arm64), set by the Spec: what {arch} in the URLs becomes."""
        return self._arch

    @property
    def resolved_url(self) -> str:
        return self.url.replace("{version}", self.version).replace("{arch}", self.arch)

    @property
    def resolved_checksum_url(self) -> str | None:
        if self.checksum_url is None:
            return None
        return (self.checksum_url.replace("{url}", self.resolved_url).replace("{version}", self.version)
                .replace("{arch}", self.arch))

    @property
    def filename(self) -> str:
        return self.resolved_url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def pinned_sha256(self) -> str | None:
        """The sha256 install.sh checks: the spec's, or the one its checksum_url named when the render
        resolved it (imagebuild.render.downloads.pin); None leaves the checksum file to the install."""
        return self.sha256 or self._pinned


_VERSION_DOC = "upstream version, substituted for {version} in the URLs"
_URL_DOC = "download URL; {version} and {arch} (image.architecture: amd64, arm64) are replaced"
_SHA_DOC = "expected sha256 of the download (64 hex digits); pins the artifact"
_CHECKSUM_DOC = ("URL of a published checksum file, used when sha256 is not pinned: render and bake read it "
                 "once and pin the sha256 it names into install.sh and user-data")
_INSECURE_DOC = ("allow plain http:// for url and checksum_url, and redirects to http: (a lab mirror); "
                 "false: https:// or file:// only, an http:// URL is a spec error")
UrlTemplate = Annotated[str, Text(URL_TEMPLATE, "an https:// or file:// URL (http:// with insecure: true)")]
Sha256 = Annotated[str, Text(SHA256, "64 lowercase hex digits")]
ChecksumUrl = Annotated[str, Text(CHECKSUM_URL, "an https:// or file:// URL (http:// with insecure: true), or {url} "
                                                "plus a suffix")]
Version = Annotated[str, Text(VERSION, "a version like 1.2.3")]


class Tarball(Section, _Download):
    """the containerd release tarball"""

    url: UrlTemplate = Field(DEFAULT_CONTAINERD_URL, description=_URL_DOC)
    sha256: Sha256 | None = Field(None, description=_SHA_DOC)
    checksum_url: ChecksumUrl | None = Field("{url}.sha256sum", description=_CHECKSUM_DOC)
    insecure: Bool = Field(False, description=_INSECURE_DOC)
    _version: str = PrivateAttr("")
    _arch: str = PrivateAttr("amd64")
    _pinned: str | None = PrivateAttr(None)

    @property
    def version(self) -> str:  # type: ignore[override]
        """containerd's own version (containerd.version), set by the Containerd section."""
        return self._version


class Runc(Section, _Download):
    """runc, installed to /usr/local/sbin/runc (tarball method)"""

    version: Version = Field("1.1.5", description=_VERSION_DOC)
    url: UrlTemplate = Field(DEFAULT_RUNC_URL, description=_URL_DOC)
    sha256: Sha256 | None = Field(None, description=_SHA_DOC)
    checksum_url: ChecksumUrl | None = Field(
        GITHUB + "/opencontainers/runc/releases/download/v{version}/runc.sha256sum", description=_CHECKSUM_DOC)
    insecure: Bool = Field(False, description=_INSECURE_DOC)
    _arch: str = PrivateAttr("amd64")
    _pinned: str | None = PrivateAttr(None)


class CniPlugins(Section, _Download):
    """CNI plugins, unpacked to /opt/cni/bin (optional)"""

    version: Version = Field("1.2.0", description=_VERSION_DOC)
    url: UrlTemplate = Field(DEFAULT_CNI_URL, description=_URL_DOC)
    sha256: Sha256 | None = Field(None, description=_SHA_DOC)
    checksum_url: ChecksumUrl | None = Field("{url}.sha256", description=_CHECKSUM_DOC)
    insecure: Bool = Field(False, description=_INSECURE_DOC)
    _arch: str = PrivateAttr("amd64")
    _pinned: str | None = PrivateAttr(None)


#: The name consumers use for any of the three.
Artifact = _Download


class Package(Section):
    """the distro package (package method)"""

    name: Annotated[str, Text(r"^[a-z0-9][a-z0-9.+-]*$", "a Debian package name")] = Field(
        "containerd", description="package name")
    version: Annotated[str, Text(PACKAGE_VERSION, "a Debian version string as `apt-cache policy containerd` prints "
                                   "it (letters, digits and .+~:-)")] | None = Field(
        None, description="exact package version to pin; must start with containerd.version")
    hold: Bool = Field(True, description="apt-mark hold the package so upgrades do not "
                                            "replace it")


class Install(Section):
    """how containerd gets onto the machine"""

    method: Literal["tarball", "package"] = Field(
        "tarball", description="tarball: release tarballs to /usr/local; package: the distro package")
    tarball: Tarball = Field(default_factory=Tarball, description=Tarball.__doc__)
    runc: Runc = Field(default_factory=Runc, description=Runc.__doc__)
    cni_plugins: CniPlugins | None = Field(None, description=CniPlugins.__doc__)
    package: Package = Field(default_factory=Package, description=Package.__doc__)


class Containerd(Section):
    """what to install"""

    version: Version = Field("1.6.20", description="containerd version; picks the config version "
                             "(v2 for 1.x, v3 for 2.0-2.2, v4 from 2.3 on)")
    install: Install = Field(default_factory=Install, description=Install.__doc__)

    @model_validator(mode="after")
    def _tarball_version(self) -> Containerd:
        # The containerd tarball's version is containerd's own. Set on the model only: the document
        # (spec.json, spec_hash) stays a valid spec that loads back.
        self.install.tarball._version = self.version
        return self

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        major, minor, patch = (int(part) for part in self.version.split("."))
        return major, minor, patch

    @property
    def family(self) -> str:
        return family_of(self.version)

    @property
    def config_version(self) -> int:
        """The `version = N` of the family's own `config default`, which its config.toml is rendered from."""
        return config_version_of(self.family)


# --- registry -------------------------------------------------------------------------------------

def url_parts(url: str) -> tuple[str, str]:
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
    _, clean = url_parts(url)
    if path == "prefix":
        return "/v2" + clean
    if path == "api-root" or mode == "legacy":
        return clean or ("" if path == "api-root" else "/v2")
    if override_path:
        return clean
    return "/v2" if not clean else clean if clean.endswith("/v2") else clean + "/v2"


HeaderName = Annotated[str, Key(HEADER_NAME, "header names of letters, digits and -")]


class Endpoint(Section):
    """one mirror endpoint, tried in list order"""

    url: Annotated[str, Text(HTTP_URL, "an http(s):// URL without query or fragment")] = Field(
        description="endpoint URL; a path in it needs `path` to say what it is")
    path: Literal["prefix", "api-root"] | None = Field(
        None, description="what the URL's path is. prefix: a repository prefix, pulls request "
        "/v2/<path>/<repo>/manifests/<ref>; api-root: the registry API root itself (it holds /v2), "
        "pulls request <path>/<repo>/manifests/<ref>. Required when the URL has a path")
    capabilities: Annotated[tuple[Literal["pull", "resolve", "push"], ...], UNIQUE, UNIQUE_SCHEMA] = Field(
        ("pull", "resolve"), description="operations this host may serve")
    override_path: Bool = Field(
        False, description="deprecated, use path: api-root (containerd's hosts.toml override_path)")
    ca: AbsPath | None = Field(None, description="path of a CA certificate on the node")
    skip_verify: Bool = Field(False, description="skip TLS verification for this endpoint")
    headers: Annotated[dict[HeaderName, HeaderValue], keys_schema(HEADER_NAME)] = Field(
        default_factory=dict, description="HTTP headers sent to this endpoint (registry credentials: "
        "Authorization); every value is taken for a secret. A value written out is a literal secret: the files "
        "holding it (hosts.toml, spec.json, user-data) are 0600, and `imagebuild user-data` needs "
        "--accept-secret-in-metadata. A value given by reference names its source instead, "
        "{ssm|secretsmanager|file|env: NAME, prefix: TEXT}: ssm and secretsmanager are read on the node at "
        "install time with the instance's role (no output holds the value), file and env on the build host at "
        "render/bake time (spec.json records the reference)")

    def api_root(self, mode: str) -> str:
        return api_root(self.url, self.path, self.override_path, mode)

    @property
    def hosts_entry(self) -> tuple[str, bool]:
        """(the [host."<url>"] key, override_path) of hosts.toml: with `path` set, the URL carries
        the API root and override_path says so; an endpoint without `path` is written as given."""
        base, clean = url_parts(self.url)
        if self.path is None:
            return self.url, self.override_path
        if not clean and self.path == "prefix":
            return self.url, False
        return base + self.api_root("hosts"), True

    @property
    def legacy_url(self) -> str:
        """The URL in the legacy registry.mirrors table, whose path containerd takes as the API root."""
        base, clean = url_parts(self.url)
        if not clean and self.path != "api-root":
            return base  # no path: containerd requests /v2 (a lone "/" would make it request /<repo>)
        return base + self.api_root("legacy")


class Mirror(Section):
    """a registry and its mirrors; written as certs.d/<host>/hosts.toml"""

    host: Annotated[str, Text(HOSTNAME, "a host name, optionally with :port")] = Field(
        description="registry host name, as in image references")
    server: HttpUrl | None = Field(None, description="upstream server; default https://<host> "
                                   "(registry-1.docker.io for docker.io)")
    endpoints: tuple[Endpoint, ...] = Field(description="mirrors, tried in order before the upstream server")

    @property
    def legacy_endpoints(self) -> list[str]:
        return [ep.legacy_url for ep in self.endpoints]

    @property
    def upstream(self) -> str:
        if self.server:
            return self.server
        return "https://registry-1.docker.io" if self.host == "docker.io" else f"https://{self.host}"


SEED_MIRRORS = [
    {"host": "docker.io", "endpoints": [{"url": "https://docker.mirrors.ustc.edu.cn"},
                                        {"url": "http://hub-mirror.c.163.com"}]},
    {"host": "gcr.io", "endpoints": [{"url": "https://gcr.mirrors.ustc.edu.cn"}]},
    {"host": "k8s.gcr.io", "endpoints": [{"url": "https://gcr.mirrors.ustc.edu.cn/google-containers/",
                                          "path": "prefix"}]},
    {"host": "quay.io", "endpoints": [{"url": "https://quay.mirrors.ustc.edu.cn"}]},
]


class Registry(Section):
    """registry hosts and mirrors"""

    mode: Literal["hosts", "legacy"] = Field(
        "hosts", description="hosts: certs.d/<host>/hosts.toml (current); legacy: registry.mirrors table "
        "(deprecated; containerd 2.4 announces its removal for 2.7)")
    config_path: AbsPath = Field("/etc/containerd/certs.d", description="directory of per-host hosts.toml files")
    mirrors: tuple[Mirror, ...] = Field(
        default_factory=lambda: tuple(Mirror.model_validate(m) for m in SEED_MIRRORS),
        json_schema_extra={"default": typing.cast(Any, SEED_MIRRORS)}, description="registries and their mirrors")


class RuntimeFile(Section):
    """a binary of a runtime (its shim, the runtime itself), downloaded by install.sh and checked against its sha256"""

    url: Annotated[str, Text(r"^(https?|file)://[A-Za-z0-9.:-]*(/[A-Za-z0-9._~%+@=-]*)*/[A-Za-z0-9._+@=-]+$",
                             "an https:// or file:// URL ending in a file name (http:// with insecure: true)")] = Field(
        description="download URL; the file is installed to /usr/local/bin/<its name in the URL>, mode 0755")
    sha256: Sha256 = Field(description="sha256 of the file (64 hex digits): the install checks it before "
                           "installing anything")
    insecure: Bool = Field(False, description="allow plain http:// for url, and redirects to http: (a lab "
                           "mirror); false: https:// or file:// only, an http:// URL is a spec error")

    @property
    def path(self) -> str:
        """Where install.sh puts it: /usr/local/bin/<the URL's file name> (containerd finds shims on PATH)."""
        return "/usr/local/bin/" + self.url.rsplit("/", 1)[-1]


class Runtime(Section):
    """an extra OCI runtime handler for the CRI plugin"""

    runtime_type: Annotated[str, Text(r"^io\.containerd\.[a-z0-9.]+$",
                                      "a shim name like io.containerd.runc.v2")] = Field(
        "io.containerd.runc.v2", description="shim name")
    binary_name: AbsPath | None = Field(None, description="runtime binary the shim runs (runc-compatible shims only)")
    config_path: AbsPath | None = Field(None, description="config file passed to the shim (kata, gVisor)")
    pod_annotations: tuple[Annotated[str, Text(r"^[A-Za-z0-9._/*-]+$", "an annotation name or glob")], ...] = Field(
        (), description="pod annotations passed through to the runtime")
    privileged_without_host_devices: Bool = Field(
        False, description="do not pass host devices to privileged pods")
    config: dict[str, Any] | None = Field(
        None, description="the shim's config file (gVisor's runsc.toml, ...), written as TOML to config_path")
    install: tuple[RuntimeFile, ...] = Field(
        (), description="binaries install.sh downloads for this runtime (its shim, the runtime), sha256 pinned")


RuntimeName = Annotated[str, Key(RUNTIME_NAME, "runtime names of letters, digits, _ and -")]
Glob = Annotated[str, Text(ABS_GLOB, "an absolute path or glob")]


#: A plugin name as containerd registers it (type.name, e.g. io.containerd.snapshotter.v1.stargz).
PLUGIN_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class Config(Section):
    """containerd's config.toml, rendered from containerd's own defaults"""

    root: AbsPath = Field("/var/lib/containerd", description="persistent data: snapshots, content, metadata, "
                          "plugin data")
    state: AbsPath = Field("/run/containerd", description="runtime state: sockets, pids, mounts")
    oom_score: Annotated[int, Int(-1000, 1000)] = Field(
        -999, description="containerd's OOM score: -999 on a Kubernetes worker so containers die first")
    sandbox_image: Annotated[str, Text(IMAGE_REF, "an image reference like registry/name:tag "
                        "(the repository path in lowercase)")] = Field(
        "registry.cn-hangzhou.aliyuncs.com/google_containers/pause:3.6", description="pause image for pod sandboxes")
    systemd_cgroup: Bool = Field(
        True, description="runc uses the systemd cgroup driver (SystemdCgroup)")
    registry: Registry = Field(default_factory=Registry, description=Registry.__doc__)
    default_runtime: Annotated[str, Text(RUNTIME_NAME, "a runtime name")] = Field(
        "runc", description="runtime handler used when a pod names none")
    runtimes: Annotated[dict[RuntimeName, Runtime], keys_schema(RUNTIME_NAME)] = Field(
        default_factory=dict, description="extra runtime handlers (nvidia, runsc for gVisor, kata) beside runc")
    max_container_log_line_size: Annotated[int, Int(-1, 1 << 30)] = Field(
        16384, description="longest container log line in bytes; -1 is unlimited")
    snapshotter: Literal["overlayfs", "native", "btrfs", "zfs", "devmapper", "stargz"] = Field(
        "overlayfs", description="snapshotter for container filesystems")
    discard_unpacked_layers: Bool = Field(
        False, description="drop compressed layers once unpacked (saves disk)")
    imports: Annotated[tuple[Glob, ...], UNIQUE, UNIQUE_SCHEMA] = Field(
        (), description="extra config files merged by containerd (conf.d)")
    overrides: dict[Any, Any] = Field(default_factory=dict, description="free-form TOML deep-merged over the "
                                      "result, last (containerd's key paths; dotted keys are key paths, each "
                                      "checked against the family's own default config)")
    extra_plugins: Annotated[tuple[Annotated[str, Text(PLUGIN_NAME, "a containerd plugin name")], ...],
                             UNIQUE, UNIQUE_SCHEMA] = Field(
        (), description="plugins outside the default config, such as third-party proxy plugins, whose "
        "config.overrides.plugins.<name> tables are written unchecked")


# --- the unit, proxy, system ------------------------------------------------------------------------

Command = Annotated[str, Text(r"^-?/[A-Za-z0-9._/ -]*$", "an absolute command with plain arguments")]
UnitName = Annotated[str, Text(SYSTEMD_UNIT, "a systemd unit name")]


class Unit(Section):
    """the systemd unit (full unit for tarball installs, drop-ins for package installs)"""

    description: Annotated[str, Text(r"^[^%$\\]*$", "text without %, $ or \\")] = Field(
        "containerd container runtime", description="Description=")
    documentation: HttpUrl = Field("https://containerd.io", description="Documentation=")
    after: Annotated[tuple[UnitName, ...], UNIQUE, UNIQUE_SCHEMA] = Field(
        ("network.target", "local-fs.target"), description="After=")
    exec_start_pre: tuple[Command, ...] = Field(
        ("-/sbin/modprobe overlay",), description="ExecStartPre= commands; a leading - ignores failure")
    exec_start: Annotated[str, Text(r"^/[A-Za-z0-9._/ =-]*$",
                                    "an absolute command with plain arguments")] | None = Field(
        None, description="ExecStart=; default /usr/local/bin/containerd (tarball) or /usr/bin/containerd")
    type: Literal["notify", "simple", "exec"] = Field("notify", description="Type=")
    delegate: Bool = Field(
        True, description="Delegate=: containerd manages the cgroups of its containers")
    kill_mode: Literal["process", "control-group", "mixed", "none"] = Field(
        "process", description="KillMode=: process keeps containers alive across restarts")
    restart: Literal["always", "on-failure", "on-abnormal", "no"] = Field("always", description="Restart=")
    restart_sec: Annotated[int, Int(0, 3600)] = Field(5, description="RestartSec= seconds")
    limit_nproc: UnitLimit = Field("infinity", description="LimitNPROC= infinity or a number")
    limit_core: UnitLimit = Field("infinity", description="LimitCORE= infinity or a number")
    limit_nofile: UnitLimit = Field("infinity", description="LimitNOFILE= infinity or a number")
    tasks_max: UnitLimit = Field("infinity", description="TasksMax= infinity or a number")
    oom_score_adjust: Annotated[int, Int(-1000, 1000)] = Field(-999, description="OOMScoreAdjust=")
    wanted_by: UnitName = Field("multi-user.target", description="WantedBy=")


NoProxyEntry = Annotated[str, Text(NO_PROXY_ENTRY, "a host, .domain, IP address, CIDR, host:port or *")]


class Proxy(Section):
    """HTTP(S) proxy for containerd's pulls (an http-proxy.conf drop-in) and install.sh's downloads and apt-get"""

    http: HttpUrl | None = Field(None, description="HTTP_PROXY: proxy for http:// registries")
    https: HttpUrl | None = Field(None, description="HTTPS_PROXY: proxy for https:// registries")
    no_proxy: Annotated[tuple[NoProxyEntry, ...], UNIQUE, UNIQUE_SCHEMA] = Field(
        (), description="NO_PROXY: hosts reached directly (host, .domain, IP, CIDR, host:port); "
        "loopback is never proxied")

    @property
    def environment(self) -> dict[str, str]:
        """The variables containerd (Go's ProxyFromEnvironment) reads; empty when no proxy is set."""
        if not (self.http or self.https):
            return {}
        env = {"HTTP_PROXY": self.http, "HTTPS_PROXY": self.https,
               "NO_PROXY": ",".join(self.no_proxy) if self.no_proxy else None}
        return {k: v for k, v in env.items() if v}
