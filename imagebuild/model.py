"""The spec, declared once: a typed, frozen, versioned pydantic model.

Every key is declared here with its type, default, limits and a one-line description. From this one
declaration come validation and defaults (`imagebuild.spec` reads the YAML and formats pydantic's
errors), `imagebuild schema` (JSON Schema), `imagebuild init` (the commented default spec) and the
publish target of the aws package. Rules that span keys live in `imagebuild.checks`.

This module is the bottom of the package: it imports nothing of imagebuild.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import json
import posixpath
import re
import types
import typing
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from annotated_types import GroupedMetadata
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    Strict,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

# --- versions of the spec -----------------------------------------------------------------------

#: The spec versions imagebuild reads, oldest first; a spec without apiVersion is the first.
ApiVersion = Literal["imagebuild/v1"]
API_VERSIONS: tuple[str, ...] = typing.get_args(ApiVersion)
API_VERSION: ApiVersion = API_VERSIONS[-1]  # type: ignore[assignment]

#: Keys renamed: (old key path, new key path), both in the same section. A spec using an old name
#: still loads, with a warning that names the new one (imagebuild.spec.upgrade).
RENAMES: tuple[tuple[str, str], ...] = (
    # It lists account ids, beside share_with_organizations and share_with_ous: the bare name read as
    # "share with everything listed here" and gave no hint that an organization ARN does not belong.
    ("image.aws.share_with", "image.aws.share_with_accounts"),
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: the key path and what is wrong there."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<spec>'}: {self.message}"


#: The credentials part of a URL (scheme://user[:password]@): never repeated in a message.
URL_CREDENTIALS = re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s@]*@")


def show(value: Any) -> str:
    """A value as a message shows it: its repr, cut at 80 characters, credentials in a URL redacted."""
    text = URL_CREDENTIALS.sub(r"\1<credentials>@", repr(value))
    return text if len(text) <= 80 else text[:77] + "..."


# --- text rules -----------------------------------------------------------------------------------

# Strings that end up in files or shell commands must be printable, single-line text.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# The same, for text that may span lines (a shell script): newline and tab are allowed.
CONTROL_CHARS_MULTILINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Words YAML 1.1 read as booleans; the spec is read with YAML 1.2's (true/false only), so they are text.
YAML11_BOOLEANS = {"y", "yes", "n", "no", "on", "off"}
# Half of a UTF-16 surrogate pair (YAML and JSON both let "\ud800" through): not a character,
# and no file can hold it (UTF-8 refuses to encode it).
SURROGATES = re.compile(r"[\ud800-\udfff]")


def _error(message: str, **ctx: Any) -> PydanticCustomError:
    """An error whose message is final: the spec's formatter prints it after the key path."""
    return PydanticCustomError("imagebuild", "{message}", {"message": message, **ctx})


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        if CONTROL_CHARS.search(value):
            raise _error(f"got {show(value)}: control characters (newline, NUL, ...) are not allowed")
        if SURROGATES.search(value):
            raise _error(f"got {show(value)}: a lone UTF-16 surrogate (\\ud800-\\udfff) is not a character "
                         "and cannot be written to a file")
    return value


def _printable_lines(value: Any) -> Any:
    if isinstance(value, str):
        if CONTROL_CHARS_MULTILINE.search(value):
            raise _error(f"got {show(value)}: control characters other than newline and tab (NUL, carriage "
                         "return, ...) are not allowed")
        if SURROGATES.search(value):
            raise _error(f"got {show(value)}: a lone UTF-16 surrogate (\\ud800-\\udfff) is not a character "
                         "and cannot be written to a file")
    return value


#: What each pattern allows, in words: the error message says this instead of the regex.
ALLOWED: dict[str, str] = {}
#: The same for the keys of a mapping.
KEY_ALLOWED: dict[str, str] = {}


@dataclass(frozen=True)
class Text(GroupedMetadata):
    """`Annotated[str, Text(pattern, allowed)]`: printable single-line text (or *multiline*), matching
    *pattern* when given; *allowed* says in words what the pattern allows (for error messages)."""

    pattern: str | None = None
    allowed: str | None = None
    multiline: bool = False

    def __iter__(self) -> Iterator[Any]:
        yield Strict()
        if self.pattern:
            ALLOWED.setdefault(self.pattern, self.allowed or f"text matching {self.pattern}")
            yield StringConstraints(pattern=self.pattern)
        yield BeforeValidator(_printable_lines if self.multiline else _printable)


@dataclass(frozen=True)
class Key(GroupedMetadata):
    """`Annotated[str, Key(pattern, allowed)]`: a mapping key matching *pattern*."""

    pattern: str
    allowed: str

    def __iter__(self) -> Iterator[Any]:
        KEY_ALLOWED.setdefault(self.pattern, self.allowed)
        yield StringConstraints(pattern=self.pattern)
        yield BeforeValidator(_printable)


def keys_schema(pattern: str) -> Any:
    """JSON Schema for a mapping whose keys match *pattern* (pydantic's patternProperties would let
    other keys through)."""
    return Field(json_schema_extra={"propertyNames": {"pattern": pattern}})


@dataclass(frozen=True)
class Int(GroupedMetadata):
    """`Annotated[int, Int(low, high)]`: an integer from *low* to *high* (a boolean is not one)."""

    low: int
    high: int

    def __iter__(self) -> Iterator[Any]:
        low, high = self.low, self.high

        def check(value: int) -> int:
            if not low <= value <= high:
                raise _error(f"got {value}, expected an integer from {low} to {high}")
            return value
        yield Strict()
        yield AfterValidator(check)
        yield WithJsonSchema({"type": "integer", "minimum": low, "maximum": high})


def _unique(values: tuple) -> tuple:
    seen = set()
    for index, item in enumerate(values):
        key = repr(item)
        if key in seen:
            raise _error(f"got {show(item)} twice, entries must be unique", index=index)
        seen.add(key)
    return values


#: `Annotated[tuple[X, ...], UNIQUE, UNIQUE_SCHEMA]`: a list whose entries are unique.
UNIQUE = AfterValidator(_unique)
UNIQUE_SCHEMA = Field(json_schema_extra={"uniqueItems": True})
Bool = Annotated[bool, Strict()]

UNIT_LIMIT = r"^(infinity|[0-9]+)$"
_LIMIT_MAX = (1 << 63) - 1


def _unit_limit(value: Any) -> str:
    """A systemd limit: `infinity` or a number, written as YAML text or as a YAML number; kept as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= _LIMIT_MAX:
            raise _error(f"got {value}, expected an integer from 0 to {_LIMIT_MAX}")
        return str(value)
    if not isinstance(value, str):
        raise _error(f"got {show(value)}, expected a string or an integer")
    _printable(value)
    if not re.match(UNIT_LIMIT, value):
        raise _error(f"got {show(value)}, expected infinity or a number")
    return value


UnitLimit = Annotated[str, PlainValidator(_unit_limit), WithJsonSchema(
    {"type": ["string", "integer"], "pattern": UNIT_LIMIT, "minimum": 0, "maximum": _LIMIT_MAX})]

SYSCTL_VALUE = r"^[A-Za-z0-9 ._:/-]*$"


def _sysctl_value(value: Any) -> str | int:
    """A sysctl value: a number or plain text, kept as written (the document keeps YAML's `1`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise _error(f"got {show(value)}, expected a string or an integer")
    _printable(value)
    if not re.match(SYSCTL_VALUE, value):
        raise _error(f"got {show(value)}, expected a number or plain text")
    return value


SysctlValue = Annotated[str | int, PlainValidator(_sysctl_value),
                        WithJsonSchema({"type": ["string", "integer"], "pattern": SYSCTL_VALUE})]

# --- patterns ---------------------------------------------------------------------------------

ABS_PATH = r"^/[A-Za-z0-9._/+@-]*$"
ABS_PATH_ALLOWED = "an absolute path of letters, digits and ._/+@-"
ABS_GLOB = r"^/[A-Za-z0-9._/+@*-]*$"
HOSTNAME = r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$"
HTTP_URL = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%/+@=-]*)?$"
URL_TEMPLATE = r"^(https?|file)://[A-Za-z0-9.:-]*(/[A-Za-z0-9._~%/+@={}-]*)?$"
CHECKSUM_URL = r"^(\{url\}[A-Za-z0-9._-]*|(https?|file)://[A-Za-z0-9.:-]*(/[A-Za-z0-9._~%/+@={}-]*)?)$"
# An image reference as containerd parses it (distribution/reference): an optional registry host
# (a name with a dot or a port, or localhost), lowercase repository path components, a tag, a digest.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REGISTRY = r"(?:(?:[A-Za-z0-9-]+\.)+[A-Za-z0-9-]+(?::[0-9]+)?|[A-Za-z0-9-]+:[0-9]+|localhost)"
IMAGE_REF = (rf"^(?:{_REGISTRY}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
             r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
             r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$")
SHA256 = r"^[0-9a-f]{64}$"
NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
VERSION = r"^[0-9]+\.[0-9]+\.[0-9]+$"
MODULE = r"^[a-z0-9_-]+$"
SYSCTL = r"^[a-z0-9_]+(\.[A-Za-z0-9_-]+)+$"
RUNTIME_NAME = r"^[A-Za-z0-9_-]+$"
HEADER_NAME = r"^[A-Za-z0-9-]+$"
# As botocore's partitions spell regions (`^(us|eu|...)\-\w+\-\d+$`, `^eusc\-(de)\-\w+\-\d+$`): a
# prefix of 2-4 letters, parts of letters and digits, a number at the end (us-gov-west-1, us-isob-east-1,
# eusc-de-east-1 alike). tests/aws/test_aws_model_target.py holds it to every region botocore knows.
AWS_REGION = r"^[a-z]{2,4}(-[a-z0-9]+)+-[0-9]+$"
AWS_ACCOUNT = r"^[0-9]{12}$"
SSM_NAME = r"^/[A-Za-z0-9_./-]+$"
TAG_KEY = r"^[A-Za-z0-9 _.:/=+@-]{1,127}$"
TAG_VALUE = r"^[A-Za-z0-9 _.:/=+@-]{0,255}$"
#: Tag key prefixes a spec may not use, in any case: AWS reserves aws:, imagebuild sets imagebuild:.
RESERVED_TAG_PREFIXES = ("aws:", "imagebuild:")
KMS_KEY_ARN = r"^arn:aws[a-z-]*:kms:[a-z]{2,4}(-[a-z0-9]+)+-[0-9]+:[0-9]{12}:key/[A-Za-z0-9-]{1,128}$"
ORG_ARN = r"^arn:aws[a-z-]*:organizations::[0-9]{12}:organization/o-[a-z0-9]{10,32}$"
OU_ARN = r"^arn:aws[a-z-]*:organizations::[0-9]{12}:ou/o-[a-z0-9]{10,32}/ou-[0-9a-z]{4,32}-[0-9a-z]{8,32}$"
CHECK_NAME = r"^[a-z0-9][a-z0-9_.-]*$"
SYSTEMD_UNIT = r"^[A-Za-z0-9@._-]+\.(target|service|socket|mount|path)$"
PACKAGE_VERSION = r"^[A-Za-z0-9.+~:-]+$"
NO_PROXY_ENTRY = r"^(\*|\.?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?|[0-9a-fA-F:.]+(/[0-9]{1,3})?)$"

GITHUB = "https://github.com"
DEFAULT_CONTAINERD_URL = (GITHUB + "/containerd/containerd/releases/download/v{version}/"
                          "containerd-{version}-linux-{arch}.tar.gz")
DEFAULT_RUNC_URL = GITHUB + "/opencontainers/runc/releases/download/v{version}/runc.{arch}"
DEFAULT_CNI_URL = (GITHUB + "/containernetworking/plugins/releases/download/v{version}/"
                   "cni-plugins-linux-{arch}-v{version}.tgz")

AbsPath = Annotated[str, Text(ABS_PATH, ABS_PATH_ALLOWED)]
HttpUrl = Annotated[str, Text(HTTP_URL, "an http(s):// URL")]
Region = Annotated[str, Text(AWS_REGION, "an AWS region name")]
Name = Annotated[str, Text(NAME, "lowercase letters, digits and -, at most 63")]


class Section(BaseModel):
    """A part of the spec: immutable, and a key it does not declare is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


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
        version: str
        _arch: str

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


_VERSION_DOC = "upstream version, substituted for {version} in the URLs"
_URL_DOC = "download URL; {version} and {arch} (image.architecture: amd64, arm64) are replaced"
_SHA_DOC = "expected sha256 of the download (64 hex digits); pins the artifact"
_CHECKSUM_DOC = "URL of a published checksum file, used when sha256 is not pinned"
UrlTemplate = Annotated[str, Text(URL_TEMPLATE, "an http(s):// or file:// URL")]
Sha256 = Annotated[str, Text(SHA256, "64 lowercase hex digits")]
ChecksumUrl = Annotated[str, Text(CHECKSUM_URL, "an http(s):// or file:// URL, or {url} plus a suffix")]
Version = Annotated[str, Text(VERSION, "a version like 1.2.3")]


class Tarball(Section, _Download):
    """the containerd release tarball"""

    url: UrlTemplate = Field(DEFAULT_CONTAINERD_URL, description=_URL_DOC)
    sha256: Sha256 | None = Field(None, description=_SHA_DOC)
    checksum_url: ChecksumUrl | None = Field("{url}.sha256sum", description=_CHECKSUM_DOC)
    _version: str = PrivateAttr("")
    _arch: str = PrivateAttr("amd64")

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
    _arch: str = PrivateAttr("amd64")


class CniPlugins(Section, _Download):
    """CNI plugins, unpacked to /opt/cni/bin (optional)"""

    version: Version = Field("1.2.0", description=_VERSION_DOC)
    url: UrlTemplate = Field(DEFAULT_CNI_URL, description=_URL_DOC)
    sha256: Sha256 | None = Field(None, description=_SHA_DOC)
    checksum_url: ChecksumUrl | None = Field("{url}.sha256", description=_CHECKSUM_DOC)
    _arch: str = PrivateAttr("amd64")


#: The name consumers use for any of the three.
Artifact = _Download


class Package(Section):
    """the distro package (package method)"""

    name: Annotated[str, Text(r"^[a-z0-9][a-z0-9.+-]*$", "a Debian package name")] = Field(
        "containerd", description="package name")
    version: Annotated[str, Text(PACKAGE_VERSION, "a Debian version string")] | None = Field(
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
    headers: Annotated[dict[HeaderName, Annotated[str, Text()]], keys_schema(HEADER_NAME)] = Field(
        default_factory=dict, description="HTTP headers sent to this endpoint")

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


RuntimeName = Annotated[str, Key(RUNTIME_NAME, "runtime names of letters, digits, _ and -")]
Glob = Annotated[str, Text(ABS_GLOB, "an absolute path or glob")]


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
                                      "result, last (containerd's key paths; dotted keys are key paths)")


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
    """HTTP(S) proxy for containerd's pulls (a containerd.service.d/http-proxy.conf drop-in)"""

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


SEED_SYSCTLS: dict[str, str | int] = {"net.bridge.bridge-nf-call-iptables": 1,
                                      "net.bridge.bridge-nf-call-ip6tables": 1, "net.ipv4.ip_forward": 1}


class System(Section):
    """kernel set-up containerd and Kubernetes need"""

    profile: Literal["kubernetes-worker", "none"] = Field(
        "kubernetes-worker", description="kubernetes-worker: what a kubelet node expects besides containerd "
        "(sysctls, tools; see `imagebuild schema` or the README); none: only what this section lists")
    modules: Annotated[tuple[Annotated[str, Text(MODULE, "a module name")], ...], UNIQUE, UNIQUE_SCHEMA] = Field(
        ("overlay", "br_netfilter"), description="kernel modules loaded at boot (modules-load.d)")
    sysctls: Annotated[dict[Annotated[str, Key(SYSCTL, "dotted sysctl names")], SysctlValue],
                       keys_schema(SYSCTL)] = Field(
        default_factory=lambda: dict(SEED_SYSCTLS), json_schema_extra={"default": dict(SEED_SYSCTLS)},
        description="sysctls applied at boot (sysctl.d); in the built model the profile's come first, as text")

    @property
    def packages(self) -> tuple[str, ...]:
        """Debian packages the profile installs (tarball and package installs alike)."""
        return tuple(PROFILES[self.profile]["packages"])

    @property
    def package_probes(self) -> dict[str, tuple[str, ...]]:
        """Each profile package's command that proves its tool runs."""
        return {name: probe for name, (_, probe) in PROFILES[self.profile]["packages"].items()}


# --- the image ---------------------------------------------------------------------------------------

#: What each image.os is: its Debian suite, the containerd families imagebuild installs there (a
#: Debian 13 guest has no containerd 1.6: Debian dropped it, and its runc needs glibc 2.38, trixie's;
#: 2.0 and 2.2-2.4 are upstream's static builds, so tarball installs only, see package_families),
#: and the containerd version its own package is (None: no rule, as before image.os existed).
OS_RELEASES: dict[str, dict[str, Any]] = {
    "debian-12": {"suite": "bookworm", "families": ("1.6", "1.7", "2.0", "2.1", "2.2", "2.3", "2.4"),
                  "package_version": None},
    "debian-13": {"suite": "trixie", "families": ("1.7", "2.0", "2.1", "2.2", "2.3", "2.4"),
                  "package_version": "1.7.24"},
}


class BaseImage(Section):
    """base image for the qemu build; null uses `imagebuild base-image`"""

    source: Annotated[str, Text(r"^[A-Za-z0-9._~%/:+@=-]+$", "a URL or path without spaces or quotes")] = Field(
        description="URL or path of a qcow2 cloud image")
    checksum: Annotated[str, Text(r"^sha256:[0-9a-f]{64}$", "sha256: followed by 64 hex digits")] = Field(
        description="sha256:<hex> of the base image")
    boot_mode: Literal["legacy-bios", "uefi", "uefi-preferred"] | None = Field(
        None, description="firmware the base image boots under (uefi-preferred: BIOS and UEFI); it decides the "
        "verify boot's firmware and the AMI's boot mode; null: legacy-bios on amd64, uefi on arm64")


class SandboxArchive(Section):
    """an OCI image archive (`ctr images export`, `skopeo copy ... oci-archive:`) holding the sandbox image"""

    url: Annotated[str, Text(r"^(https://|file:///|/)[A-Za-z0-9._~%/:+@=-]+$",
                             "an https:// or file:// URL, or an absolute path on the build host, without "
                             "spaces, quotes or shell characters")] = Field(
        description="where the bake reads it")
    sha256: Sha256 = Field(description="sha256 of the archive file: checked before anything is read from it")


class Sandbox(Section):
    """where the bake gets the sandbox image (config.sandbox_image) it puts into the image, pinned"""

    source: Literal["registry", "archive", "none"] = Field(
        "registry", description="registry: the build VM pulls config.sandbox_image through CRI, from its "
        "registry through config.registry's mirrors; archive: imported from sandbox.archive, whose image must "
        "carry that name; none: not baked (kubelet pulls it for the first pod)")
    archive: SandboxArchive | None = Field(None, description=SandboxArchive.__doc__)


Account = Annotated[str, Text(AWS_ACCOUNT, "a 12-digit account id")]
TagKey = Annotated[str, Key(TAG_KEY, "tag keys of 1-127 letters, digits and  _.:/=+@-")]
TagValue = Annotated[str, Text(TAG_VALUE, "tag text of at most 255 letters, digits and  _.:/=+@-")]
KmsKeyArn = Annotated[str, Text(KMS_KEY_ARN, "a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>)")]
OuArn = Annotated[str, Text(OU_ARN, "arn:aws:organizations::<account>:ou/o-.../ou-...")]


class Aws(Section):
    """amazon-ebs build, publishing and retention"""

    region: Region = Field("us-east-1", description="home region")
    copy_regions: Annotated[tuple[Region, ...], UNIQUE, UNIQUE_SCHEMA] = Field(
        (), description="regions the AMI is copied to")
    share_with_accounts: Annotated[tuple[Account, ...], UNIQUE, UNIQUE_SCHEMA] = Field(
        (), description="account ids given launch permission")
    ssm_parameter: Annotated[str, Text(SSM_NAME, "an SSM parameter path")] | None = Field(
        None, description="SSM parameter that holds the newest AMI id; default /imagebuild/<name>/latest")
    keep: Annotated[int, Int(1, 1000)] = Field(3, description="AMIs of this family kept per region by prune")
    tags: Annotated[dict[TagKey, TagValue], keys_schema(TAG_KEY)] = Field(
        default_factory=dict, description="extra tags on AMIs and snapshots (EBS StartSnapshot's limits: keys up "
        "to 127, values up to 255 characters; keys starting with aws: or imagebuild: are reserved)")
    source_ami_name: Annotated[str, Text(r"^[A-Za-z0-9 _.*?/()-]+$", "an AMI name filter")] | None = Field(
        None, description="source_ami_filter name for the amazon-ebs build; null: Debian's own AMIs of image.os "
        "and image.architecture (debian-12-amd64-*, debian-13-arm64-*, ...)")
    source_ami_owners: tuple[Annotated[str, Text(r"^([0-9]{12}|self|amazon|aws-marketplace)$",
                                  "an account id, self, amazon")], ...] = Field(
        ("136693071363",), description="owners of the source AMI")
    instance_type: Annotated[str, Text(r"^[a-z0-9]+\.[a-z0-9]+$", "an instance type like t3.small")] | None = Field(
        None, description="build instance type, of image.architecture (arm64: a Graviton type); null: "
        "t3.small (amd64), t4g.small (arm64)")
    volume_size_gb: Annotated[int, Int(2, 16384)] = Field(8, description="gp3 root volume size in GiB")
    encrypt_boot: Bool = Field(False, description="encrypt the AMI's root snapshot")
    kms_keys: Annotated[dict[Annotated[str, Key(AWS_REGION, "region names")], KmsKeyArn],
                        keys_schema(AWS_REGION)] = Field(
        default_factory=dict, description="KMS key ARN per region for encrypt_boot (home and every copy region); "
        "empty uses the account's default EBS key")
    share_with_organizations: Annotated[tuple[Annotated[str, Text(
        ORG_ARN, "arn:aws:organizations::<account>:organization/o-...")], ...], UNIQUE, UNIQUE_SCHEMA] = Field(
        (), description="organization ARNs given launch permission")
    share_with_ous: Annotated[tuple[OuArn, ...], UNIQUE, UNIQUE_SCHEMA] = Field(
        (), description="organizational unit ARNs given launch permission")
    ssm_all_regions: Bool = Field(
        False, description="also set ssm_parameter in every copy region (to that region's AMI)")
    deprecate_after_days: Annotated[int, Int(1, 36500)] | None = Field(
        None, description="publish marks the AMI deprecated this many days after its build "
        "(EnableImageDeprecation); null: never")

    @model_validator(mode="after")
    def _rules(self) -> Aws:
        """Rules between the keys of this section (the spec's image.aws and a publish target alike)."""
        found: list[tuple[str, str]] = []
        if self.region in self.copy_regions:
            found.append(("copy_regions", f"got {self.region!r}, the home region; list only the regions the AMI "
                          "is copied to"))
        if len(self.tags) > 41:
            found.append(("tags", f"got {len(self.tags)} tags, expected at most 41 (AWS takes 50 a resource; "
                          "imagebuild adds 9 of its own)"))
        for key in self.tags:
            if key.lower().startswith(RESERVED_TAG_PREFIXES):
                found.append((f"tags.{key}", "keys starting with aws: or imagebuild: are reserved, in any case "
                              "(AWS reserves aws:, and imagebuild: keys are set by imagebuild)"))
        if self.encrypt_boot and self.share_with_accounts and not self.kms_keys:
            found.append(("share_with_accounts", f"got {show(list(self.share_with_accounts))} with encrypt_boot: "
                          "true, but an AMI encrypted with the default KMS key cannot be shared (Packer refuses "
                          "it); set kms_keys to customer managed keys, or share it unencrypted"))
        if self.kms_keys:
            if not self.encrypt_boot:
                found.append(("kms_keys", "set with encrypt_boot: false; the keys would be ignored, expected "
                              "encrypt_boot: true"))
            for region in self.regions:
                if region not in self.kms_keys:
                    found.append((f"kms_keys.{region}", "missing: a KMS key is region-bound, expected a key ARN "
                                  "for the home region and every copy region"))
            for region, arn in self.kms_keys.items():
                if f":kms:{region}:" not in arn:
                    found.append((f"kms_keys.{region}", f"got {show(arn)}, expected a key of region {region}"))
        if found:
            raise _error("; ".join(message for _, message in found), problems=found)
        return self

    @property
    def regions(self) -> list[str]:
        return [self.region, *self.copy_regions]

    def kms_key(self, region: str) -> str | None:
        """The KMS key for *region* (None: the account's default EBS key, or no encryption)."""
        return self.kms_keys.get(region) if self.encrypt_boot else None


class Image(Section):
    """the image Packer bakes"""

    os: Literal["debian-12", "debian-13"] = Field(
        "debian-12", description="distribution release of the image: the base image recipe (Debian 12 bookworm "
        "or Debian 13 trixie) and the suite of package installs; on debian-13, containerd 1.7 or 2.x (package "
        "installs: 1.7.24, what trixie ships). The default stays debian-12 under apiVersion imagebuild/v1: the "
        "default containerd is the seed's 1.6, which Debian 13 does not ship, and a spec that leaves image.os "
        "out keeps meaning the image it meant (README: why the default stays debian-12)")
    architecture: Literal["amd64", "arm64"] = Field(
        "amd64", description="CPU architecture of the image: amd64 images boot under BIOS and UEFI "
        "(uefi-preferred AMIs), arm64 (Graviton) under UEFI only")
    base: BaseImage | None = Field(None, description=BaseImage.__doc__)
    disk_size_gb: Annotated[int, Int(2, 2048)] = Field(4, description="disk size of the baked image in GiB")
    accelerator: Literal["auto", "kvm", "tcg"] = Field(
        "auto", description="QEMU accelerator; auto uses KVM only when a probe shows it works")
    hygiene: Bool = Field(
        True, description="clean the image before capture: cloud-init state, machine-id, SSH host keys, "
        "apt lists, logs, fstrim")
    sandbox: Sandbox = Field(default_factory=Sandbox, description=Sandbox.__doc__)
    packer_version: Annotated[str, Text(r"^[0-9]+\.[0-9]+$", "a version like 1.6")] = Field(
        "1.6", description="Packer version the template targets; required_plugins from 1.7")
    aws: Aws = Field(default_factory=Aws, description=Aws.__doc__)

    @property
    def ec2_architecture(self) -> str:
        """image.architecture as EC2 names it (x86_64, arm64)."""
        return EC2_ARCHITECTURES[self.architecture]

    @property
    def source_ami_name(self) -> str:
        """The amazon-ebs build's source AMI name filter: image.aws.source_ami_name or Debian's of os and arch."""
        return self.aws.source_ami_name or f"{self.os}-{self.architecture}-*"

    @property
    def instance_type(self) -> str:
        """The amazon-ebs build's instance type: image.aws.instance_type or the architecture's default."""
        return self.aws.instance_type or BUILD_INSTANCE_TYPES[self.architecture]


#: image.architecture -> EC2's Architecture, and the default amazon-ebs build instance type (Graviton for arm64).
EC2_ARCHITECTURES = {"amd64": "x86_64", "arm64": "arm64"}
BUILD_INSTANCE_TYPES = {"amd64": "t3.small", "arm64": "t4g.small"}


class Check(Section):
    """a check"""

    name: Annotated[str, Text(CHECK_NAME, "lowercase letters, digits, ._-")] = Field(description="check name")
    run: Annotated[str, Text(multiline=True)] = Field(
        description="shell command (bash script, several lines allowed) run as root in the guest")


class Verify(Section):
    """the in-guest check that proves an image"""

    timeout: Annotated[int, Int(30, 7200)] = Field(
        900, description="seconds from QEMU start until the check must have reported")
    checks: tuple[Check, ...] = Field((), description="extra checks: a shell command run in the guest; "
                                      "exit 0 passes")


class Spec(Section):
    """imagebuild spec: one file -> containerd config, user-data, Packer template, verified image"""

    apiVersion: ApiVersion = Field(
        API_VERSION, description=f"spec version ({', '.join(API_VERSIONS)}); a spec without it is read as "
        f"{API_VERSIONS[0]}")
    name: Name = Field(
        "containerd-golden", description="image family name: output file names, AMI names and tags")
    containerd: Containerd = Field(default_factory=Containerd, description=Containerd.__doc__)
    config: Config = Field(default_factory=Config, description=Config.__doc__)
    unit: Unit = Field(default_factory=Unit, description=Unit.__doc__)
    proxy: Proxy = Field(default_factory=Proxy, description=Proxy.__doc__)
    system: System = Field(default_factory=System, description=System.__doc__)
    image: Image = Field(default_factory=Image, description=Image.__doc__)
    verify: Verify = Field(default_factory=Verify, description=Verify.__doc__)

    _warnings: tuple[str, ...] = PrivateAttr(())
    _notices: tuple[str, ...] = PrivateAttr(())
    _document: dict = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _download_arch(self) -> Spec:
        # {arch} in the download URLs is image.architecture (set on the model only, like the tarball's version).
        install = self.containerd.install
        for art in (install.tarball, install.runc, install.cni_plugins):
            if art is not None:
                art._arch = self.image.architecture
        return self

    def __eq__(self, other: object) -> bool:
        """Specs are equal when their settings are: how they were read (warnings, notices, the
        document's layout) does not count."""
        if not isinstance(other, Spec):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # it holds mappings

    @property
    def warnings(self) -> tuple[str, ...]:
        """What is legal but questionable in the spec (the CLI prints each)."""
        return self._warnings

    @property
    def notices(self) -> tuple[str, ...]:
        """How the spec was read (an older spec version): worth a line on stderr, not a warning."""
        return self._notices

    @property
    def document(self) -> dict:
        """The effective spec: the document with defaults filled in (spec.json); it loads back as is."""
        return self._document

    @property
    def spec_hash(self) -> str:
        """sha256 of the normalised spec: equal specs hash equal, whatever their YAML layout."""
        canonical = json.dumps(self.document, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


# --- what the model yields: JSON Schema, the commented default -------------------------------------

def json_schema() -> dict:
    """The spec's JSON Schema (draft 2020-12) for editors: `imagebuild schema`."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **Spec.model_json_schema(), "title": "imagebuild spec"}


def plain(value: Any) -> Any:
    """*value* as YAML/JSON data: models as mappings, tuples as lists."""
    if isinstance(value, BaseModel):
        return {name: plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The section class of a field, when the field is a (non-optional) section."""
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def commented_default() -> str:
    """The default spec as YAML, every key preceded by its description: `imagebuild init`."""
    lines = ["# imagebuild spec: every key below is the built-in default (containerd's seed setup).",
             "# Delete what you do not change; `imagebuild schema` prints the JSON Schema for editors."]

    def emit(section: BaseModel, indent: int) -> None:
        pad = "  " * indent
        for key, info in type(section).model_fields.items():
            lines.append(f"{pad}# {info.description}")
            value = getattr(section, key)
            if _section_type(info.annotation) is not None:
                lines.append(f"{pad}{key}:")
                emit(value, indent + 1)
                continue
            text = yaml.safe_dump({key: plain(value)}, default_flow_style=False, sort_keys=False, width=4096)
            lines.extend(pad + line for line in text.rstrip("\n").split("\n"))
    emit(Spec(), 0)
    return "\n".join(lines) + "\n"


# --- pydantic's errors, one line each: key path, the bad value, what is allowed ----------------------

_EXPECTED = {"string_type": "a string", "int_type": "an integer", "bool_type": "a boolean", "list_type": "a list",
             "tuple_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
             "model_attributes_type": "a mapping", "float_type": "a number"}


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _bare(hint: Any) -> Any:
    """*hint* without Annotated metadata and without `| None`."""
    while True:
        if typing.get_origin(hint) is typing.Annotated:
            hint = typing.get_args(hint)[0]
        elif typing.get_origin(hint) in (types.UnionType, typing.Union):
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        else:
            return hint


def _section_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    """The section (model class) at key path *loc*, or None when it is no section."""
    hint: Any = root
    for part in loc:
        hint = _bare(hint)
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            if part not in hint.model_fields:
                return None
            hint = hint.model_fields[part].annotation
        elif typing.get_origin(hint) in (tuple, dict):
            hint = typing.get_args(hint)[-1 if typing.get_origin(hint) is dict else 0]
        else:
            return None
    hint = _bare(hint)
    return hint if isinstance(hint, type) and issubclass(hint, BaseModel) else None


def _problems(error: Any, root: type[BaseModel]) -> list[Problem]:
    """One pydantic error as Problems (a section's rules report several in one error)."""
    ctx = error.get("ctx") or {}
    if error["type"] == "imagebuild" and "problems" in ctx:
        base = _path(tuple(error["loc"]))
        return [Problem(f"{base}.{sub}" if base else sub, message) for sub, message in ctx["problems"]]
    return [_problem(error, root)]


def _problem(error: Any, root: type[BaseModel]) -> Problem:
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    is_key = bool(loc) and loc[-1] == "[key]"
    path = _path(loc[:-1] if is_key else loc)
    if kind == "imagebuild":
        return Problem(path + (f"[{ctx['index']}]" if "index" in ctx else ""), ctx["message"])
    if is_key:
        return Problem(path, f"bad key {show(value)}, expected {KEY_ALLOWED.get(str(ctx.get('pattern')), 'text')}")
    if kind == "missing":
        return Problem(path, "is required")
    if kind == "extra_forbidden":
        section = _section_at(loc[:-1], root)
        names = list(section.model_fields) if section else []
        near = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return Problem(path, f"unknown key{hint}; allowed keys: {', '.join(names)}")
    if kind == "literal_error" and isinstance(value, str):
        names = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        near = difflib.get_close_matches(value, names, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return Problem(path, f"got {show(value)}, expected one of {', '.join(names)}{hint}")
    if kind == "string_pattern_mismatch":
        allowed = ALLOWED.get(ctx["pattern"], "text matching " + ctx["pattern"])
        return Problem(path, f"got {show(value)}, expected {allowed}")
    if kind == "string_unicode":
        return Problem(path, f"got {show(value)}: a lone UTF-16 surrogate (\\ud800-\\udfff) is not a character "
                       "and cannot be written to a file")
    expected = _EXPECTED.get(kind) or ("a string" if kind == "literal_error" else None)
    if expected:
        if kind == "bool_type" and isinstance(value, str) and value.lower() in YAML11_BOOLEANS:
            expected += " (the spec is read with YAML 1.2 booleans: write true or false)"
        return Problem(path, f"got {show(value)}, expected {expected}")
    return Problem(path, f"got {show(value)}: {error['msg']}")


def problems_of(exc: ValidationError, root: type[BaseModel] | None = None) -> list[Problem]:
    """pydantic's errors as Problems: key path, the bad value, what is allowed. *root*: the model
    validated (the whole spec when None)."""
    return [p for error in exc.errors(include_url=False) for p in _problems(error, root or Spec)]
