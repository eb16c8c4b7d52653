"""Remove a family's old AMIs (and their snapshots) that nothing uses any more.

Per region, the family's own AMIs (owner self, tag imagebuild:family) are sorted newest first
by their imagebuild:build-time tag (CreationDate when the tag is missing); the newest `keep`
stay. Of the rest, an AMI also stays when an instance that is pending, running, stopping or
stopped uses it, when the default or latest version of a launch template names it (directly or
through `resolve:ssm:`), or when the target's SSM parameter names it. Everything else is
deleted, but only with apply=True: deregister, then delete the snapshots its block device
mappings name plus those tagged imagebuild:image-id=<ami> (publish tags its upload that way).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from imagebuild.aws.clients import ClientFactory, boto3_clients, describe_error, error_code, is_aws_error
from imagebuild.aws.model import Decision, PublishTarget, parse_build_time
from imagebuild.aws.publish import IMAGE_ID_TAG, block_device_snapshots
from imagebuild.errors import ImagebuildError
from imagebuild.progress import step

FAMILY_TAG = "imagebuild:family"
BUILD_TIME_TAG = "imagebuild:build-time"
INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]
_CHUNK = 100  # image ids per describe_instances filter


class PruneError(ImagebuildError):
    """Some deletions failed; `decisions` holds every decision with its result."""

    def __init__(self, message: str, decisions: list[Decision]) -> None:
        super().__init__(message)
        self.decisions = decisions


def prune(
    target: PublishTarget,
    *,
    regions: Iterable[str] | None = None,
    apply: bool = False,
    clients: ClientFactory | None = None,
) -> list[Decision]:
    """Decide (and with apply=True, carry out) what to delete of target.family in *regions*.

    *regions* defaults to the home region plus the copy regions. Returns one Decision per AMI,
    by region, newest first. Raises PruneError (with the decisions) if a deletion failed.
    """
    target.validate()
    regions = list(dict.fromkeys(regions if regions is not None else target.regions))
    if clients is None:
        clients = boto3_clients()
    try:
        ssm_image = _ssm_image(clients, target)
        decisions: list[Decision] = []
        for region in regions:
            decisions.extend(_decide_region(clients, target, region, ssm_image))
        if apply:
            decisions = [_apply(clients, d) if d.action == "delete" else d for d in decisions]
    except Exception as exc:
        if not is_aws_error(exc):
            raise
        raise ImagebuildError(f"prune stopped: {describe_error(exc)}") from None
    failed = [d for d in decisions if d.result.startswith("failed")]
    if failed:
        raise PruneError(
            "prune could not delete: " + "; ".join(f"{d.region} {d.ami_id}: {d.result}" for d in failed),
            decisions,
        )
    return decisions


def _ssm_image(clients: ClientFactory, target: PublishTarget) -> str | None:
    if not target.ssm_parameter:
        return None
    try:
        value = clients("ssm", target.region).get_parameter(Name=target.ssm_parameter)["Parameter"]["Value"]
    except Exception as exc:
        if error_code(exc) == "ParameterNotFound":
            return None
        raise
    return value.strip() or None


def _decide_region(clients: ClientFactory, target: PublishTarget, region: str, ssm_image: str | None) -> list[Decision]:
    ec2 = clients("ec2", region)
    images = list(family_images(ec2, target.family))
    images.sort(key=newest_first_key)
    ids = [image["ImageId"] for image in images]
    protected: dict[str, list[str]] = {}
    for image_id, reason in _instance_users(ec2, ids):
        protected.setdefault(image_id, []).append(reason)
    for image_id, reason in _launch_template_users(clients, ec2, region):
        protected.setdefault(image_id, []).append(reason)
    if ssm_image and region == target.region:
        protected.setdefault(ssm_image, []).append(f"named by SSM parameter {target.ssm_parameter}")

    decisions = []
    for position, image in enumerate(images):
        image_id = image["ImageId"]
        reasons = protected.get(image_id, [])
        if position < target.keep:
            action, reason = "keep", f"newest {target.keep} (#{position + 1})"
            if reasons:
                reason += "; " + "; ".join(dict.fromkeys(reasons))
        elif reasons:
            action, reason = "keep", "; ".join(dict.fromkeys(reasons))
        else:
            action, reason = "delete", f"older than the newest {target.keep}, unused"
        decisions.append(
            Decision(
                region=region,
                ami_id=image_id,
                name=image.get("Name", ""),
                action=action,
                reason=reason,
                build_time=_tags(image).get(BUILD_TIME_TAG, "") or image.get("CreationDate", ""),
                snapshot_ids=tuple(block_device_snapshots(image)),
            )
        )
    return decisions


def _tags(resource: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def family_images(ec2: Any, family: str) -> Iterator[dict[str, Any]]:
    """The family's own AMIs in one region (owner self, tag imagebuild:family), deregistered ones left out."""
    pages = ec2.get_paginator("describe_images").paginate(
        Owners=["self"], Filters=[{"Name": f"tag:{FAMILY_TAG}", "Values": [family]}]
    )
    for page in pages:
        for image in page["Images"]:
            # filter again: a server that ignores a filter must not widen what we delete
            if _tags(image).get(FAMILY_TAG) == family and image.get("State") != "deregistered":
                yield image


def _sort_time(image: dict[str, Any]) -> datetime:
    for text in (_tags(image).get(BUILD_TIME_TAG), image.get("CreationDate")):
        if text:
            try:
                return parse_build_time(text)
            except ImagebuildError:
                continue
    return datetime.min.replace(tzinfo=timezone.utc)


def newest_first_key(image: dict[str, Any]) -> tuple[float, str]:
    """Sort key: newest build-time tag first (CreationDate without it); the pipeline uses the same order."""
    return (-_sort_time(image).timestamp(), image["ImageId"])


def _instance_users(ec2: Any, image_ids: list[str]) -> Iterator[tuple[str, str]]:
    paginator = ec2.get_paginator("describe_instances")
    for start in range(0, len(image_ids), _CHUNK):
        chunk = image_ids[start : start + _CHUNK]
        pages = paginator.paginate(
            Filters=[
                {"Name": "image-id", "Values": chunk},
                {"Name": "instance-state-name", "Values": INSTANCE_STATES},
            ]
        )
        for page in pages:
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    state = instance.get("State", {}).get("Name")
                    if instance.get("ImageId") in chunk and state in INSTANCE_STATES:
                        yield instance["ImageId"], f"used by {state} instance {instance['InstanceId']}"


def _launch_template_users(clients: ClientFactory, ec2: Any, region: str) -> Iterator[tuple[str, str]]:
    """AMIs named by a launch template's default or latest version (filtered here, client-side)."""
    for page in ec2.get_paginator("describe_launch_templates").paginate():
        for template in page["LaunchTemplates"]:
            template_id = template["LaunchTemplateId"]
            label = template.get("LaunchTemplateName") or template_id
            versions = ec2.describe_launch_template_versions(
                LaunchTemplateId=template_id, Versions=["$Default", "$Latest"]
            )["LaunchTemplateVersions"]
            for version in versions:
                image_id = version.get("LaunchTemplateData", {}).get("ImageId")
                if not image_id:
                    continue
                which = "default" if version.get("DefaultVersion") else "latest"
                how = ""
                if image_id.startswith("resolve:ssm:"):
                    parameter = image_id[len("resolve:ssm:"):]
                    image_id = _resolve_ssm(clients, region, parameter)
                    how = f" via {parameter}"
                    if not image_id:
                        continue
                yield image_id, f"{which} version {version.get('VersionNumber')} of launch template {label}{how}"


def _resolve_ssm(clients: ClientFactory, region: str, parameter: str) -> str | None:
    try:
        return clients("ssm", region).get_parameter(Name=parameter)["Parameter"]["Value"]
    except Exception as exc:
        if error_code(exc) == "ParameterNotFound":
            return None
        raise


def _apply(clients: ClientFactory, decision: Decision) -> Decision:
    ec2 = clients("ec2", decision.region)
    try:
        tagged = ec2.describe_snapshots(
            OwnerIds=["self"], Filters=[{"Name": f"tag:{IMAGE_ID_TAG}", "Values": [decision.ami_id]}]
        )["Snapshots"]
        snapshots = list(
            dict.fromkeys(
                [
                    *decision.snapshot_ids,
                    *(s["SnapshotId"] for s in tagged if _tags(s).get(IMAGE_ID_TAG) == decision.ami_id),
                ]
            )
        )
        step(f"{decision.region}: deregistering {decision.ami_id} ({decision.name})")
        ec2.deregister_image(ImageId=decision.ami_id)
    except Exception as exc:
        if not is_aws_error(exc):
            raise
        return replace(decision, result=f"failed: {describe_error(exc)}")
    problems = []
    for snapshot_id in snapshots:
        try:
            ec2.delete_snapshot(SnapshotId=snapshot_id)
            step(f"{decision.region}: deleted snapshot {snapshot_id}")
        except Exception as exc:
            if not is_aws_error(exc):
                raise
            if error_code(exc) == "InvalidSnapshot.NotFound":
                continue
            problems.append(f"snapshot {snapshot_id}: {describe_error(exc)}")
    result = "deleted" if not problems else "failed: deregistered, but " + "; ".join(problems)
    return replace(decision, snapshot_ids=tuple(snapshots), result=result)


def format_table(decisions: list[Decision]) -> str:
    """The decisions as an aligned text table, for people."""
    headers = ["REGION", "AMI", "NAME", "BUILT", "ACTION", "REASON"]
    with_result = any(d.result for d in decisions)
    if with_result:
        headers.append("RESULT")
    rows = []
    for d in decisions:
        row = [d.region, d.ami_id, d.name, d.build_time, d.action, d.reason]
        if with_result:
            row.append(d.result or "-")
        rows.append(row)
    if not rows:
        return "no AMIs of this family found"
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = []
    for row in [headers, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths)]
        lines.append("  ".join(cells).rstrip())
    deletes = sum(1 for d in decisions if d.action == "delete")
    lines.append(f"{len(decisions)} AMIs: {len(decisions) - deletes} kept, {deletes} to delete")
    return "\n".join(lines)
