"""What publish asks AWS for, checked before anything is uploaded: the AMI's name, description and
tags (within the limits botocore's service models give each tagged operation), the RegisterImage
request and the root volume's size."""
from __future__ import annotations

from typing import Any

from imagebuild.aws.clients import ClientFactory
from imagebuild.aws.documents import Manifest, PublishTarget
from imagebuild.aws.upload import (
    volume_size_gib,
)
from imagebuild.build import records
from imagebuild.errors import ImagebuildError

ROOT_DEVICE = "/dev/xvda"
TAG_PREFIX = "imagebuild:"



def ami_name(manifest: Manifest, target: PublishTarget) -> str:
    return f"{target.family}-{manifest.build_time_compact}"


def image_tags(manifest: Manifest, target: PublishTarget) -> dict[str, str]:
    """Tags for the AMIs and snapshots: target.tags plus imagebuild's own (which win)."""
    ours = {
        "imagebuild:family": target.family,
        "imagebuild:spec-hash": manifest.spec_hash,
        "imagebuild:inputs-hash": manifest.inputs_hash,
        "imagebuild:containerd-version": manifest.containerd_version,
        "imagebuild:build-time": manifest.build_time,
        "imagebuild:source-image": manifest.base_image.source,
        "imagebuild:base-checksum": manifest.base_image.checksum,
        "imagebuild:image-sha256": manifest.sha256,
    }
    # our own values are informational (a long base image URL): cut to the smallest limit of the
    # APIs that receive them (StartSnapshot: 255); the spec's tags are checked, never cut
    ours = {key: value[:255] for key, value in ours.items()}
    return {**target.tags, **ours}


# (service, operation) pairs that receive image_tags, and EC2's documented limits where its model
# states none (keys 128, values 256 characters, 50 tags a resource).
TAGGED_OPERATIONS = (("ebs", "StartSnapshot"), ("ec2", "RegisterImage"), ("ec2", "CopyImage"), ("ec2", "CreateTags"))
EC2_TAG_LIMITS = {"key": 128, "value": 256, "count": 50}


def tag_limits(client: Any, operation: str) -> dict[str, int]:
    """Key/value length and count limits of the tags *operation* takes, from botocore's model."""
    shape = client.meta.service_model.operation_model(operation).input_shape
    found = _tag_list_shape(shape, set())
    if found is None:
        raise ImagebuildError(f"{operation} takes no tags in botocore's model")
    tag = found.member
    return {
        "key": tag.members["Key"].metadata.get("max", EC2_TAG_LIMITS["key"]),
        "value": tag.members["Value"].metadata.get("max", EC2_TAG_LIMITS["value"]),
        "count": found.metadata.get("max", EC2_TAG_LIMITS["count"]),
    }


def _tag_list_shape(shape: Any, seen: set[str]) -> Any:
    if shape.name in seen:
        return None
    seen.add(shape.name)
    if shape.type_name == "list":
        member = shape.member
        if member.type_name == "structure" and {"Key", "Value"} <= set(member.members):
            return shape
        return _tag_list_shape(member, seen)
    if shape.type_name == "structure":
        for member in shape.members.values():
            found = _tag_list_shape(member, seen)
            if found is not None:
                return found
    return None


def check_tags(tags: dict[str, str], clients: ClientFactory, region: str, extra: int = 0) -> None:
    """ImagebuildError unless *tags* (plus *extra* more) fit every API that receives them."""
    problems = []
    for service, operation in TAGGED_OPERATIONS:
        limits = tag_limits(clients(service, region), operation)
        if len(tags) + extra > limits["count"]:
            problems.append(f"{len(tags) + extra} tags, {operation} takes at most {limits['count']}")
        for key, value in tags.items():
            if not 1 <= len(key) <= limits["key"]:
                problems.append(f"tag key {key[:40]!r}... is {len(key)} characters, "
                                f"{operation} takes 1-{limits['key']}")
            if len(value) > limits["value"]:
                problems.append(f"tag {key!r}: value is {len(value)} characters, "
                                f"{operation} takes at most {limits['value']}")
    if problems:
        raise ImagebuildError("refusing to publish: " + "; ".join(dict.fromkeys(problems)))


def ami_tags(manifest: Manifest, target: PublishTarget) -> dict[str, str]:
    """The AMIs' tags: image_tags and the one naming the image's SBOM and provenance by sha256 (AMIs only:
    snapshots take imagebuild:image-id in its place, so neither goes over AWS's 50 tags)."""
    return {**image_tags(manifest, target), **records.records_tag(manifest.records)}


def image_description(manifest: Manifest, target: PublishTarget) -> str:
    text = (
        f"{target.family}: containerd {manifest.containerd_version}, runc {manifest.runc_version}, "
        f"built {manifest.build_time}, image sha256 {manifest.sha256}"
    )
    return text[:255]


def register_request(manifest: Manifest, target: PublishTarget, snapshot_id: str) -> dict[str, Any]:
    """The RegisterImage parameters for the home AMI backed by *snapshot_id*."""
    tags = ami_tags(manifest, target)
    return {
        "ImdsSupport": "v2.0",  # instances from this AMI get IMDSv2 only (tokens required)
        "Name": ami_name(manifest, target),
        "Description": image_description(manifest, target),
        "Architecture": manifest.ec2_architecture,
        "RootDeviceName": ROOT_DEVICE,
        "BlockDeviceMappings": [
            {
                "DeviceName": ROOT_DEVICE,
                "Ebs": {
                    "SnapshotId": snapshot_id,
                    "VolumeSize": root_volume_gib(manifest, target),
                    "VolumeType": "gp3",
                    "DeleteOnTermination": True,
                },
            }
        ],
        "VirtualizationType": "hvm",
        "EnaSupport": True,
        "BootMode": manifest.boot_mode,
        "TagSpecifications": [{"ResourceType": "image", "Tags": tag_list(tags)}],
    }


def root_volume_gib(manifest: Manifest, target: PublishTarget) -> int:
    """The AMI's root volume size: the spec's volume_size_gb, never less than the image."""
    image = volume_size_gib(manifest.virtual_size)
    if target.volume_size_gb is None:
        return image
    if target.volume_size_gb < image:
        raise ImagebuildError(f"refusing to publish: volume_size_gb is {target.volume_size_gb} GiB, but the image "
                              f"is {image} GiB (virtual size {manifest.virtual_size} bytes); an AMI's root volume "
                              "cannot be smaller than its snapshot")
    return target.volume_size_gb


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]
