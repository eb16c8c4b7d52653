"""Rules of the spec's AWS settings that AWS itself decides, checked when the spec is read, never after
an upload: region names that exist (botocore's own partition data), one partition for the home
region, the copy regions and every ARN, SSM parameter names AWS reserves, what AWS cannot share,
and a root volume that holds the image.

`section_problems` checks the image.aws section alone (the spec's and a publish target's, through the
section's validator); `volume_problems` spans image and image.aws (the spec's cross-key rules). Each
returns (key path, message) pairs; nothing here raises.
"""
from __future__ import annotations

import difflib
import functools
import importlib.metadata
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from imagebuild.errors import ImagebuildError
from imagebuild.spec.fields import show

#: SSM's naming constraints (botocore's ssm model, PutParameter Name): a name "can't be prefixed with
#: aws or ssm (case-insensitive)", and hierarchies are at most fifteen levels deep.
SSM_RESERVED_PREFIXES = ("aws", "ssm")
SSM_MAX_LEVELS = 15


@functools.cache
def partitions() -> dict[str, tuple[str, ...]]:
    """partition id (aws, aws-cn, aws-us-gov, ...) -> the region names botocore knows in it, from
    botocore's data/partitions.json (data/endpoints.json where an older botocore has none). The files
    are read without importing botocore (render and its friends never load it). Pseudo-regions
    (aws-global) are left out: a region name matches its partition's regionRegex."""
    found: dict[str, tuple[str, ...]] = {}
    partitions_json = _botocore_data() / "partitions.json"
    if partitions_json.is_file():
        for part in json.loads(partitions_json.read_text(encoding="utf-8"))["partitions"]:
            regex = re.compile(part["regionRegex"])
            found[part["id"]] = tuple(sorted(r for r in part.get("regions", {}) if regex.match(r)))
    else:
        endpoints = json.loads((_botocore_data() / "endpoints.json").read_text(encoding="utf-8"))
        for part in endpoints["partitions"]:
            found[part["partition"]] = tuple(sorted(part.get("regions", {})))
    return found


def _botocore_data() -> Path:
    spec = importlib.util.find_spec("botocore")  # finds the package without running it
    if spec is None or spec.origin is None:
        raise ImagebuildError("checking AWS region names needs botocore (pip install boto3)")
    return Path(spec.origin).parent / "data"


def partition_of(region: str) -> str | None:
    """The partition *region* is in, or None for a region botocore does not know."""
    return next((name for name, regions in partitions().items() if region in regions), None)


def arn_partition(arn: str) -> str:
    """The partition field of an ARN (arn:<partition>:service:...)."""
    parts = arn.split(":")
    return parts[1] if len(parts) > 1 else ""


def _botocore_version() -> str:
    return importlib.metadata.version("botocore")


def region_problem(region: str) -> str | None:
    """Why *region* is no region AWS has (None when botocore knows it)."""
    if partition_of(region) is not None:
        return None
    known = [r for regions in partitions().values() for r in regions]
    close = difflib.get_close_matches(region, known, n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (f"got {region!r}, which is no AWS region{hint}; expected a region botocore "
            f"{_botocore_version()} knows: " + ", ".join(known)
            + " (a region launched after this botocore needs a newer boto3)")


def ssm_name_problem(name: str) -> str | None:
    """Why AWS refuses *name* as a parameter name it lets you create (None when it is allowed)."""
    bare = name.lstrip("/")
    if bare.lower().startswith(SSM_RESERVED_PREFIXES):
        return (f"got {show(name)}: AWS reserves names starting with aws or ssm in any case (after the leading "
                "/; /aws/... holds AWS's public parameters), expected a path such as /imagebuild/<name>/latest")
    levels = len([part for part in name.split("/") if part])
    if levels > SSM_MAX_LEVELS:
        return f"got {show(name)} with {levels} levels, expected at most {SSM_MAX_LEVELS} (AWS's limit)"
    return None


def section_problems(aws: Any) -> list[tuple[str, str]]:
    """The image.aws section's rules that AWS's data decides; *aws* is the validated section."""
    found: list[tuple[str, str]] = []
    home = partition_of(aws.region)
    problem = region_problem(aws.region)
    if problem:
        found.append(("region", problem))
    for index, region in enumerate(aws.copy_regions):
        problem = region_problem(region)
        if problem:
            found.append((f"copy_regions[{index}]", problem))
        elif home is not None and partition_of(region) != home:
            found.append((f"copy_regions[{index}]", f"got {region!r} (partition {partition_of(region)}), but the "
                          f"home region {aws.region} is in partition {home}: AWS copies AMIs only within a "
                          f"partition; expected a region of {home}"))
    for region, arn in aws.kms_keys.items():
        want = partition_of(region) or home
        if want is not None and arn_partition(arn) != want:
            found.append((f"kms_keys.{region}", f"got {show(arn)} (partition {arn_partition(arn)}), expected a "
                          f"key ARN of partition {want} (arn:{want}:kms:...), the partition of {region}"))
    for key in ("share_with_organizations", "share_with_ous"):
        for index, arn in enumerate(getattr(aws, key)):
            if home is not None and arn_partition(arn) != home:
                found.append((f"{key}[{index}]", f"got {show(arn)} (partition {arn_partition(arn)}), expected an "
                              f"ARN of partition {home}, the home region's"))
        if aws.encrypt_boot and not aws.kms_keys and getattr(aws, key):
            found.append((key, f"got {show(list(getattr(aws, key)))} with encrypt_boot: true and no kms_keys: AWS "
                          "cannot share an AMI encrypted with the default key (aws/ebs); set kms_keys to customer "
                          "managed keys, or share it unencrypted"))
    if aws.ssm_parameter:
        problem = ssm_name_problem(aws.ssm_parameter)
        if problem:
            found.append(("ssm_parameter", problem))
    return found


def volume_problems(doc: dict) -> list[tuple[str, str]]:
    """image.aws.volume_size_gb must hold image.disk_size_gb: an AMI's root volume is never smaller
    than its snapshot (RegisterImage refuses it; publish found out only after the upload)."""
    disk, volume = doc["image"]["disk_size_gb"], doc["image"]["aws"]["volume_size_gb"]
    if volume is not None and volume < disk:
        return [("image.aws.volume_size_gb", f"got {volume} with image.disk_size_gb {disk}: an AMI's root volume "
                 f"cannot be smaller than the image it is made from; expected at least {disk}")]
    return []
