"""The inputs publish and prune work from, and the decisions prune makes.

`Manifest` and `VerifyResult` are read from a baked image directory (`manifest.json`,
`verify.json`); `PublishTarget` says where and how to publish (it is the spec's image.aws section);
`Decision` is one line of a prune.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError

from imagebuild.errors import ImagebuildError
from imagebuild.spec.fields import Int, Name, Text
from imagebuild.spec.model import Aws
from imagebuild.spec.problems import problems_of

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX = re.compile(r"^[0-9a-f]+$")

#: RegisterImage's BootMode values (botocore's BootModeValues): legacy-bios (a BIOS-only base of your own),
#: uefi (arm64), uefi-preferred (amd64 hybrid images: BIOS and UEFI, UEFI where the instance type has it).
BOOT_MODES = ("legacy-bios", "uefi", "uefi-preferred")
# manifest architecture -> EC2 architecture
ARCHITECTURES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ImagebuildError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ImagebuildError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImagebuildError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ImagebuildError(f"{what} {path} must hold a JSON object")
    return data


def _need(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in data:
        raise ImagebuildError(f"{where}: missing field {key!r}")
    value = data[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ImagebuildError(f"{where}: field {key!r} must be {kind.__name__}, got {value!r}")
    return value


def parse_build_time(text: str, where: str = "build_time") -> datetime:
    """An ISO-8601 time (with `Z` or an offset) as an aware UTC datetime."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ImagebuildError(f"{where}: not an ISO-8601 time: {text!r}") from None
    if moment.tzinfo is None:
        raise ImagebuildError(f"{where}: time {text!r} has no time zone (expected UTC, e.g. ...Z)")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class BaseImage:
    source: str
    checksum: str


@dataclass(frozen=True)
class Manifest:
    """`manifest.json` of a baked image directory."""

    image: str
    sha256: str
    virtual_size: int
    disk_size: int
    family: str
    spec_hash: str
    inputs_hash: str
    containerd_version: str
    runc_version: str
    base_image: BaseImage
    build_time: str
    boot_mode: str
    architecture: str
    sandbox_image: dict[str, Any]      # where the baked sandbox image came from (image.sandbox), or source none
    lab_content: tuple[str, ...]       # what of the image the developer tools made up (imagebuild.build.lab_ledger)
    records: dict[str, Any] = field(default_factory=dict)  # inventory, SBOM, provenance (imagebuild.build.records)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest.json") -> Manifest:
        image = _need(data, "image", str, where)
        if not image or "/" in image or "\\" in image or image in (".", ".."):
            raise ImagebuildError(f"{where}: 'image' must be a file name in the image directory, got {image!r}")
        sha = _need(data, "sha256", str, where).lower()
        if not _HEX64.match(sha):
            raise ImagebuildError(f"{where}: 'sha256' must be 64 hex digits, got {sha!r}")
        virtual_size = _need(data, "virtual_size", int, where)
        if virtual_size <= 0:
            raise ImagebuildError(f"{where}: 'virtual_size' must be positive, got {virtual_size}")
        base = _need(data, "base_image", dict, where)
        boot_mode = _need(data, "boot_mode", str, where)
        if boot_mode not in BOOT_MODES:
            raise ImagebuildError(f"{where}: 'boot_mode' must be one of {', '.join(BOOT_MODES)}, got {boot_mode!r}")
        arch = _need(data, "architecture", str, where)
        if arch not in ARCHITECTURES:
            raise ImagebuildError(f"{where}: 'architecture' {arch!r} is not one of {', '.join(ARCHITECTURES)}")
        if ARCHITECTURES[arch] == "arm64" and boot_mode != "uefi":
            raise ImagebuildError(f"{where}: 'boot_mode' {boot_mode!r} with architecture {arch!r}: arm64 AMIs boot "
                                  "only under UEFI (AWS refuses to register arm64 with legacy-bios); expected uefi")
        build_time = _need(data, "build_time", str, where)
        parse_build_time(build_time, f"{where}: build_time")
        for key in ("spec_hash", "inputs_hash"):
            if not _HEX.match(_need(data, key, str, where).lower()):
                raise ImagebuildError(f"{where}: {key!r} must be hex")
        if not isinstance(data.get("sandbox_image"), dict) or not isinstance(data.get("lab_content"), list):
            raise ImagebuildError(f"{where}: no record of where the image's content came from ('sandbox_image', "
                                  "'lab_content'): it was baked by an older imagebuild; bake it again")
        sandbox = data["sandbox_image"]
        if sandbox.get("source") not in ("registry", "archive", "none"):
            raise ImagebuildError(f"{where}: 'sandbox_image.source' must be registry, archive or none, "
                                  f"got {sandbox.get('source')!r}")
        return cls(
            image=image,
            sha256=sha,
            virtual_size=virtual_size,
            disk_size=_need(data, "disk_size", int, where),
            family=_need(data, "family", str, where),
            spec_hash=data["spec_hash"].lower(),
            inputs_hash=data["inputs_hash"].lower(),
            containerd_version=_need(data, "containerd_version", str, where),
            runc_version=_need(data, "runc_version", str, where),
            base_image=BaseImage(
                source=_need(base, "source", str, f"{where}: base_image"),
                checksum=_need(base, "checksum", str, f"{where}: base_image"),
            ),
            build_time=build_time,
            boot_mode=boot_mode,
            architecture=arch,
            sandbox_image=sandbox,
            lab_content=tuple(str(x) for x in data["lab_content"]),
            records=data["records"] if isinstance(data.get("records"), dict) else {},
        )

    @classmethod
    def load(cls, image_dir: Path) -> Manifest:
        path = Path(image_dir) / "manifest.json"
        return cls.from_dict(_read_json(path, "manifest"), str(path))

    @property
    def build_datetime(self) -> datetime:
        return parse_build_time(self.build_time)

    @property
    def build_time_compact(self) -> str:
        """The build time as `20261126T181500Z`, for AMI names."""
        return self.build_datetime.strftime("%Y%m%dT%H%M%SZ")

    @property
    def ec2_architecture(self) -> str:
        return ARCHITECTURES[self.architecture]


@dataclass(frozen=True)
class VerifyResult:
    """A verify report of a baked image directory (imagebuild.verify.boot writes `verify.json`).

    Its shape is the one `imagebuild.verify.boot.verify_image` writes: `passed`, `image_sha256`,
    `checks` (each `{"check": name, "ok": bool, "expected": ..., "actual": ...}`), `failed` (the
    names of the checks that failed) and `summary` (the guest's counts). This is the one place
    that reads a verify report; *name* selects another report file of the same shape.
    """

    passed: bool
    image_sha256: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    name: str = "verify.json"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "verify.json", name: str = "verify.json") -> VerifyResult:
        passed = _need(data, "passed", bool, where)
        sha = _need(data, "image_sha256", str, where).lower()
        checks = data.get("checks", [])
        if not isinstance(checks, list) or not all(isinstance(c, dict) and "check" in c for c in checks):
            raise ImagebuildError(f"{where}: 'checks' must be a list of {{\"check\": name, \"ok\": bool, ...}}")
        failed = data.get("failed", [])
        if not isinstance(failed, list):
            raise ImagebuildError(f"{where}: 'failed' must be a list of check names")
        return cls(passed=passed, image_sha256=sha, checks=checks, failed=[str(f) for f in failed], name=name)

    @classmethod
    def load(cls, image_dir: Path, name: str = "verify.json") -> VerifyResult:
        path = Path(image_dir) / name
        return cls.from_dict(_read_json(path, "verification result"), str(path), name)

    def failed_checks(self) -> list[str]:
        """One line per failed check: `name (expected X, got Y)`, in the report's order."""
        names = list(dict.fromkeys([*self.failed, *(str(c["check"]) for c in self.checks if c.get("ok") is not True)]))
        by_name = {str(c["check"]): c for c in self.checks}
        lines = []
        for name in names:
            check = by_name.get(name, {})
            if "expected" in check or "actual" in check:
                lines.append(f"{name} (expected {_short(check.get('expected'))}, got {_short(check.get('actual'))})")
            else:
                lines.append(name)
        return lines


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


class PublishTarget(Aws):
    """Where an image is published: the spec's image.aws section (`target_of`) and the family it names.

    The same declaration and the same rules as the spec's (imagebuild.spec.model.Aws); a bad value is an
    ImagebuildError naming the key, the value and what is allowed.
    """

    family: Name = Field("containerd-golden", description="image family: AMI names and tags")
    ssm_parameter: Annotated[str, Text(r"^(/[A-Za-z0-9_./-]+)?$", "an SSM parameter path, or empty for none")] = Field(
        "", description="SSM parameter that holds the newest AMI id; empty: none")
    volume_size_gb: Annotated[int, Int(2, 16384)] | None = Field(  # type: ignore[assignment]
        None, description="AMI root volume in GiB; None: the image's virtual size")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            problems = "; ".join(str(p) for p in problems_of(exc, PublishTarget))
            raise ImagebuildError(f"publish target: {problems}") from None


@dataclass(frozen=True)
class Decision:
    """What prune does (or did) with one AMI in one region, and why."""

    region: str
    ami_id: str
    name: str
    action: str  # "keep" or "delete"
    reason: str
    build_time: str = ""
    snapshot_ids: tuple[str, ...] = ()
    result: str = ""  # after apply: "deleted", "failed: ...", or "" when nothing was done
    kind: str = "image"  # "image", or "snapshot": a family snapshot whose AMI is gone (ami_id)
