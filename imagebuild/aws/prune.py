"""Remove a family's old AMIs (and their snapshots) that nothing uses any more.

Per region, the family's own AMIs (owner self, tag imagebuild:family) are sorted newest first
by their imagebuild:build-time tag (CreationDate when the tag is missing); the newest `keep`
stay. Of the rest, an AMI also stays when:
- an instance that is pending, running, stopping or stopped uses it;
- any version of a launch template names it (directly or through `resolve:ssm:`), which covers
  Auto Scaling groups pinned to any version; an Auto Scaling group's own launch template
  version or launch configuration names it;
- DescribeImageReferences lists a reference to it (where the endpoint offers that API);
- the target's SSM parameter names it (home region; every region with ssm_all_regions);
- its deregistration protection is on (someone chose to keep it; prune never turns it off);
- it is shared with other accounts, organizations or OUs and an image usage report (one per
  such AMI, resource types ec2:Instance and ec2:LaunchTemplate) shows one of them using it, or
  the report failed or was not ready within `usage_report_wait` seconds (fail safe). Where the
  endpoint lacks image usage reports, the AMI stays when it was launched in the last
  SHARED_LAUNCH_DAYS days or its last launch time cannot be read; the plan says which rule ran.
Everything else is deleted, but only with apply=True: DeregisterImage with
DeleteAssociatedSnapshots, then the snapshots its block device mappings name plus those tagged
imagebuild:image-id=<ami> (publish tags its upload that way) that are still there. Family-tagged
snapshots whose AMI is gone (a delete that failed after deregistration) are swept as well.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, NamedTuple

from imagebuild.aws.clients import ClientFactory, boto3_clients, describe_error, error_code, is_aws_error
from imagebuild.aws.documents import Decision, PublishTarget, parse_build_time
from imagebuild.aws.hold import hold_of
from imagebuild.aws.lock import family_lock
from imagebuild.aws.lookup import IMAGE_ID_TAG, block_device_snapshots, ssm_parameter_value
from imagebuild.errors import ImagebuildError
from imagebuild.progress import step

FAMILY_TAG = "imagebuild:family"
BUILD_TIME_TAG = "imagebuild:build-time"
INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]
_CHUNK = 100  # image ids per describe_instances filter
_REFERENCE_CHUNK = 10  # DescribeImageReferences takes at most 10 image ids (its model)
SHARED_LAUNCH_DAYS = 30
USAGE_RESOURCE_TYPES = ("ec2:Instance", "ec2:LaunchTemplate")
USAGE_REPORT_WAIT_S = 600.0  # how long prune waits for image usage reports (like botocore's waiter)
USAGE_REPORT_POLL_S = 15.0
_USAGE_CHUNK = 200  # report ids per DescribeImageUsageReports(Entries) request; account ids per report
# What EC2 answers for a launch template, or a version of one, that no longer exists.
GONE_TEMPLATE = ("InvalidLaunchTemplateId.NotFound", "InvalidLaunchTemplateName.NotFoundException",
                 "InvalidLaunchTemplateId.VersionNotFound")
# What an endpoint without an API answers (a partition or emulator that lacks it).
UNSUPPORTED = ("InvalidAction", "UnsupportedOperation", "NotImplemented", "InvalidParameterValue")


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
    usage_report_wait: float = USAGE_REPORT_WAIT_S,
    poll_interval: float = USAGE_REPORT_POLL_S,
) -> list[Decision]:
    """Decide (and with apply=True, carry out) what to delete of target.family in *regions*.

    *regions* defaults to the home region plus the copy regions. Returns one Decision per AMI,
    by region, newest first. Raises PruneError (with the decisions) if a deletion failed.
    Image usage reports of shared AMIs are waited for at most *usage_report_wait* seconds, polled
    every *poll_interval*.
    """
    regions = list(dict.fromkeys(regions if regions is not None else target.regions))
    if clients is None:
        clients = boto3_clients()
    # with apply, one publish or prune of the family at a time (imagebuild.aws.lock); a dry run changes nothing
    lock = family_lock(clients, target, "prune") if apply else contextlib.nullcontext(None)
    try:
        with lock as lease:
            decisions: list[Decision] = []
            for region in regions:
                ssm_image = _ssm_image(clients, target, region)
                decisions.extend(_decide_region(clients, target, region, ssm_image,
                                                (usage_report_wait, poll_interval)))
            if lease is not None:
                lease.check()
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


def _ssm_image(clients: ClientFactory, target: PublishTarget, region: str) -> str | None:
    if not target.ssm_parameter or (region != target.region and not target.ssm_all_regions):
        return None
    return ssm_parameter_value(clients("ssm", region), target.ssm_parameter) or None


def _decide_region(clients: ClientFactory, target: PublishTarget, region: str, ssm_image: str | None,
                   usage_wait: tuple[float, float]) -> list[Decision]:
    ec2 = clients("ec2", region)
    images = list(family_images(ec2, target.family))
    images.sort(key=newest_first_key)
    ids = [image["ImageId"] for image in images]
    protected: dict[str, list[str]] = {}
    for image_id, reason in _instance_users(ec2, ids):
        protected.setdefault(image_id, []).append(reason)
    for source in (_launch_template_users(clients, ec2, region), _auto_scaling_users(clients, ec2, region),
                   _image_references(ec2, ids[target.keep:])):
        for image_id, reason in source:
            protected.setdefault(image_id, []).append(reason)
    if ssm_image:
        protected.setdefault(ssm_image, []).append(f"named by SSM parameter {target.ssm_parameter}")

    for image in images:
        protection = image.get("DeregistrationProtection") or "disabled"
        if protection != "disabled":
            protected.setdefault(image["ImageId"], []).append(f"deregistration protection is {protection}")
        if hold_of(image):
            protected.setdefault(image["ImageId"], []).append(f"held by an operator ({hold_of(image)})")
    candidates = [image_id for image_id in ids[target.keep:] if not protected.get(image_id)]
    shared = _shared_use(ec2, region, candidates, *usage_wait)

    decisions = []
    for position, image in enumerate(images):
        image_id = image["ImageId"]
        reasons = protected.get(image_id, [])
        if image_id in shared and shared[image_id].keep:
            reasons = shared[image_id].keep
        if position < target.keep:
            action, reason = "keep", f"newest {target.keep} (#{position + 1})"
            if reasons:
                reason += "; " + "; ".join(dict.fromkeys(reasons))
        elif reasons:
            action, reason = "keep", "; ".join(dict.fromkeys(reasons))
        else:
            action, reason = "delete", f"older than the newest {target.keep}, unused"
            if image_id in shared:
                reason += f" ({shared[image_id].note})"
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
    return decisions + _orphan_snapshots(ec2, target.family, region)


def _orphan_snapshots(ec2: Any, family: str, region: str) -> list[Decision]:
    """Family snapshots tagged with an AMI that no longer exists and that no AMI uses."""
    tagged = [s for page in ec2.get_paginator("describe_snapshots").paginate(
        OwnerIds=["self"], Filters=[{"Name": f"tag:{FAMILY_TAG}", "Values": [family]}]) for s in page["Snapshots"]]
    tagged = [s for s in tagged if _tags(s).get(FAMILY_TAG) == family and _tags(s).get(IMAGE_ID_TAG)]
    if not tagged:
        return []
    # IncludeDisabled: DescribeImages leaves disabled AMIs out by default, even for their owner, and
    # their snapshots would look orphaned (DeleteSnapshot then fails InvalidSnapshot.InUse every night)
    images = [i for page in ec2.get_paginator("describe_images").paginate(Owners=["self"], IncludeDisabled=True)
              for i in page["Images"] if i.get("State") != "deregistered"]
    existing = {i["ImageId"] for i in images}
    in_use = {snapshot for image in images for snapshot in block_device_snapshots(image)}
    decisions = []
    for snapshot in tagged:
        image_id = _tags(snapshot)[IMAGE_ID_TAG]
        if image_id in existing or snapshot["SnapshotId"] in in_use:
            continue
        decisions.append(Decision(region=region, ami_id=image_id, name=snapshot["SnapshotId"], action="delete",
                                  reason=f"snapshot of {image_id}, which no longer exists",
                                  build_time=_tags(snapshot).get(BUILD_TIME_TAG, ""),
                                  snapshot_ids=(snapshot["SnapshotId"],), kind="snapshot"))
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
    return datetime.min.replace(tzinfo=UTC)


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
    """AMIs named by any version of any launch template: an Auto Scaling group, a fleet or a
    person may launch from any version, not only $Default and $Latest."""
    for page in ec2.get_paginator("describe_launch_templates").paginate():
        for template in page["LaunchTemplates"]:
            template_id = template["LaunchTemplateId"]
            label = template.get("LaunchTemplateName") or template_id
            try:
                pages = list(ec2.get_paginator("describe_launch_template_versions").paginate(
                    LaunchTemplateId=template_id))
            except Exception as exc:
                if error_code(exc) not in GONE_TEMPLATE:
                    raise
                step(f"{region}: launch template {label} was deleted while prune read it; it keeps no AMI")
                continue
            for version_page in pages:
                for version in version_page["LaunchTemplateVersions"]:
                    named = _template_image(clients, region, version)
                    if named:
                        image_id, how = named
                        which = "default " if version.get("DefaultVersion") else ""
                        yield image_id, f"{which}version {version.get('VersionNumber')} of launch template {label}{how}"


def _template_image(clients: ClientFactory, region: str, version: dict[str, Any]) -> tuple[str, str] | None:
    image_id = version.get("LaunchTemplateData", {}).get("ImageId")
    if not image_id:
        return None
    if image_id.startswith("resolve:ssm:"):
        parameter = image_id[len("resolve:ssm:"):]
        resolved = ssm_parameter_value(clients("ssm", region), parameter)
        return (resolved, f" via {parameter}") if resolved else None
    return image_id, ""


def _auto_scaling_users(clients: ClientFactory, ec2: Any, region: str) -> Iterator[tuple[str, str]]:
    """AMIs an Auto Scaling group launches: its launch template version (pinned, $Default or
    $Latest, also inside a mixed instances policy) or its launch configuration."""
    autoscaling = clients("autoscaling", region)
    configurations = {}
    for page in autoscaling.get_paginator("describe_launch_configurations").paginate():
        for config in page["LaunchConfigurations"]:
            configurations[config["LaunchConfigurationName"]] = config.get("ImageId")
            if config.get("ImageId"):
                yield config["ImageId"], f"launch configuration {config['LaunchConfigurationName']}"
    for page in autoscaling.get_paginator("describe_auto_scaling_groups").paginate():
        for group in page["AutoScalingGroups"]:
            name = group["AutoScalingGroupName"]
            mixed = (group.get("MixedInstancesPolicy") or {}).get("LaunchTemplate", {})
            specs = [group.get("LaunchTemplate"), mixed.get("LaunchTemplateSpecification")]
            for spec in filter(None, specs):
                ref = ({"LaunchTemplateId": spec["LaunchTemplateId"]} if spec.get("LaunchTemplateId")
                       else {"LaunchTemplateName": spec["LaunchTemplateName"]})
                wanted = spec.get("Version") or "$Default"
                try:
                    versions = ec2.describe_launch_template_versions(**ref, Versions=[wanted])["LaunchTemplateVersions"]
                except Exception as exc:
                    if error_code(exc) not in GONE_TEMPLATE:
                        raise
                    # a reference to nothing launches nothing: it cannot keep an AMI in use
                    step(f"{region}: Auto Scaling group {name} names launch template {next(iter(ref.values()))} "
                         f"version {wanted}, which no longer exists ({error_code(exc)}); it keeps no AMI")
                    continue
                for version in versions:
                    named = _template_image(clients, region, version)
                    if named:
                        yield named[0], (f"Auto Scaling group {name} (launch template "
                                         f"{version.get('LaunchTemplateName')} version {wanted}){named[1]}")
            config = group.get("LaunchConfigurationName")
            if config and configurations.get(config):
                yield configurations[config], f"Auto Scaling group {name} (launch configuration {config})"


def _image_references(ec2: Any, image_ids: list[str]) -> Iterator[tuple[str, str]]:
    """DescribeImageReferences: what in this account refers to the AMIs (instances, launch
    templates, SSM parameters, Image Builder recipes...). An endpoint without the API is skipped:
    the scans above still ran."""
    for start in range(0, len(image_ids), _REFERENCE_CHUNK):
        chunk = image_ids[start: start + _REFERENCE_CHUNK]
        try:
            pages = ec2.get_paginator("describe_image_references").paginate(ImageIds=chunk,
                                                                            IncludeAllResourceTypes=True)
            for page in pages:
                for ref in page.get("ImageReferences", []):
                    kind = ref.get("ResourceType", "a resource")
                    yield ref["ImageId"], f"referenced by {kind} {ref.get('Arn', '')}".rstrip()
        except Exception as exc:
            if error_code(exc) not in UNSUPPORTED:
                raise
            step(f"DescribeImageReferences is not available here ({error_code(exc)}); using the scans alone")
            return


class _SharedUse(NamedTuple):
    """What the shared-use check found for one shared AMI: reasons to keep it, or a note on why not."""

    keep: list[str]
    note: str = ""


def _shared_use(ec2: Any, region: str, image_ids: list[str], wait: float, poll: float) -> dict[str, _SharedUse]:
    """For each AMI of *image_ids* shared with other accounts, organizations or OUs: whether they use it.

    Their instances and launch templates are invisible here: an image usage report shows them.
    Where the endpoint lacks image usage reports, the lastLaunchedTime rule decides instead."""
    shared = {}
    for image_id in image_ids:
        permissions = ec2.describe_image_attribute(ImageId=image_id,
                                                   Attribute="launchPermission").get("LaunchPermissions", [])
        if permissions:
            shared[image_id] = permissions
    if not shared:
        return {}
    try:
        return _usage_reports(ec2, region, shared, wait, poll)
    except Exception as exc:
        if error_code(exc) not in UNSUPPORTED:
            raise
        code = error_code(exc)
    step(f"{region}: image usage reports are not available here ({code}); shared AMIs are judged by their last launch")
    fallback = f"image usage reports not available here ({code})"
    result = {}
    for image_id, permissions in shared.items():
        keep = _last_launch(ec2, image_id, len(permissions))
        result[image_id] = _SharedUse([f"{reason} ({fallback})" for reason in keep],
                                      f"shared; {fallback}; not launched in the last {SHARED_LAUNCH_DAYS} days")
    return result


def _usage_reports(ec2: Any, region: str, shared: dict[str, list[dict[str, Any]]], wait: float,
                   poll: float) -> dict[str, _SharedUse]:
    """One image usage report per shared AMI, waited for at most *wait* seconds; a report that
    failed or is not ready keeps its AMI."""
    reports: dict[str, str] = {}  # report id -> image id
    for image_id, permissions in shared.items():
        accounts = [p["UserId"] for p in permissions if p.get("UserId")]
        request: dict[str, Any] = {"ImageId": image_id,
                                   "ResourceTypes": [{"ResourceType": kind} for kind in USAGE_RESOURCE_TYPES]}
        if len(accounts) == len(permissions) and len(accounts) <= _USAGE_CHUNK:
            request["AccountIds"] = accounts  # else (organizations, OUs, public): every account
        reports[ec2.create_image_usage_report(**request)["ReportId"]] = image_id
    states: dict[str, tuple[str, str]] = {report_id: ("pending", "") for report_id in reports}
    started = time.monotonic()
    while True:
        pending = [r for r, (state, _) in states.items() if state not in ("available", "failed")]
        for start in range(0, len(pending), _USAGE_CHUNK):
            pages = ec2.get_paginator("describe_image_usage_reports").paginate(
                ReportIds=pending[start: start + _USAGE_CHUNK])
            for page in pages:
                for report in page.get("ImageUsageReports", []):
                    if report.get("ReportId") in states:
                        states[report["ReportId"]] = (report.get("State", "pending"), report.get("StateReason", ""))
        pending = [r for r, (state, _) in states.items() if state not in ("available", "failed")]
        waited = time.monotonic() - started
        if not pending or waited >= wait:
            break
        step(f"{region}: waiting for {len(pending)} of {len(states)} image usage reports "
             f"({waited:.0f} s of {wait:.0f} s)")
        time.sleep(min(poll, max(wait - waited, 0)))

    used: dict[str, list[str]] = {}
    available = [r for r, (state, _) in states.items() if state == "available"]
    for start in range(0, len(available), _USAGE_CHUNK):
        pages = ec2.get_paginator("describe_image_usage_report_entries").paginate(
            ReportIds=available[start: start + _USAGE_CHUNK])
        for page in pages:
            for entry in page.get("ImageUsageReportEntries", []):
                report_id = entry.get("ReportId")
                if report_id in reports and entry.get("UsageCount", 0) > 0:
                    used.setdefault(reports[report_id], []).append(
                        f"used by account {entry.get('AccountId', '?')}: {entry['UsageCount']} "
                        f"{entry.get('ResourceType', 'resources')} (image usage report {report_id})")
    result = {}
    for report_id, image_id in reports.items():
        state, why = states[report_id]
        if state == "available":
            result[image_id] = _SharedUse(used.get(image_id, []),
                                          f"shared; image usage report {report_id} shows no use")
        elif state == "failed":
            result[image_id] = _SharedUse([f"shared and its image usage report {report_id} failed"
                                           f"{': ' + why if why else ''}; kept to be safe"])
        else:
            result[image_id] = _SharedUse([f"shared and its image usage report {report_id} was still {state} "
                                           f"after {wait:.0f} s; kept to be safe"])
    return result


def _last_launch(ec2: Any, image_id: str, permissions: int) -> list[str]:
    """Why a shared AMI must stay without usage reports: launched recently, or its last launch cannot be read."""
    try:
        last = ec2.describe_image_attribute(ImageId=image_id, Attribute="lastLaunchedTime").get("LastLaunchedTime", {})
    except Exception as exc:
        if error_code(exc) not in UNSUPPORTED:
            raise
        return [f"shared ({permissions} launch permissions) and its last launch time cannot be read"]
    text = (last or {}).get("Value")
    if not text:
        return []  # shared, never launched by anyone
    try:
        when = parse_build_time(text.replace("Z", "+00:00"))
    except ImagebuildError:
        return [f"shared and its last launch time {text!r} cannot be read"]
    age = (datetime.now(UTC) - when).days
    if age < SHARED_LAUNCH_DAYS:
        return [f"shared and launched {age} days ago (within {SHARED_LAUNCH_DAYS})"]
    return []


def _apply(clients: ClientFactory, decision: Decision) -> Decision:
    ec2 = clients("ec2", decision.region)
    if decision.kind == "snapshot":
        failed = _delete_snapshots(ec2, decision.region, list(decision.snapshot_ids))
        return replace(decision, result=failed or "deleted")
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
        ec2.deregister_image(ImageId=decision.ami_id, DeleteAssociatedSnapshots=True)
    except Exception as exc:
        if not is_aws_error(exc):
            raise
        return replace(decision, result=f"failed: {describe_error(exc)}")
    problem = _delete_snapshots(ec2, decision.region, snapshots)
    result = "deleted" if not problem else "failed: deregistered, but " + problem
    return replace(decision, snapshot_ids=tuple(snapshots), result=result)


def _delete_snapshots(ec2: Any, region: str, snapshots: list[str]) -> str:
    """Delete what is left of *snapshots* (DeleteAssociatedSnapshots may have taken them); '' or the problems."""
    problems = []
    for snapshot_id in snapshots:
        try:
            ec2.delete_snapshot(SnapshotId=snapshot_id)
            step(f"{region}: deleted snapshot {snapshot_id}")
        except Exception as exc:
            if not is_aws_error(exc):
                raise
            if error_code(exc) == "InvalidSnapshot.NotFound":
                continue
            problems.append(f"snapshot {snapshot_id}: {describe_error(exc)}")
    return "; ".join(problems)


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
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for row in [headers, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    images = [d for d in decisions if d.kind == "image"]
    deletes = sum(1 for d in images if d.action == "delete")
    lines.append(f"{len(images)} AMIs: {len(images) - deletes} kept, {deletes} to delete")
    orphans = len(decisions) - len(images)
    if orphans:
        lines.append(f"{orphans} snapshots of AMIs that no longer exist: to delete")
    return "\n".join(lines)
