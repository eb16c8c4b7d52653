"""The value types every key of the spec is made of: versions and renamed keys, Problem (one line per
bad value), the patterns and limits of text, keys and integers, image names, the Section base class.

The bottom of the spec package: it imports nothing of imagebuild.
"""
from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from annotated_types import GroupedMetadata
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    StringConstraints,
    WithJsonSchema,
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




def normalized(ref: str) -> str:
    """*ref* as containerd names an image: a registry host (docker.io by default, library/ for one-part
    Docker Hub names) and a tag (latest when none and no digest)."""
    first, _, rest = ref.partition("/")
    if not (rest and ("." in first or ":" in first or first == "localhost")):
        first, rest = "docker.io", ref if "/" in ref else "library/" + ref
    name = f"{first}/{rest}"
    if "@" not in name and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name
