"""The last steps of a publish, once every region has its AMI: share the AMIs, mark when they
deprecate, and point the SSM parameter at them (last, so nothing launches an AMI before it is
shared everywhere)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from imagebuild.aws.clients import describe_error, error_code
from imagebuild.aws.hold import held_parameter
from imagebuild.aws.job import PublishJob
from imagebuild.aws.lookup import launch_permission_set, launch_permissions, snapshot_volume_accounts
from imagebuild.errors import ImagebuildError
from imagebuild.progress import step


def share(job: PublishJob) -> None:
    """Launch permission for every account, organization and OU; createVolumePermission on
    each AMI's snapshots for the accounts (so they can copy the AMI or create volumes from it;
    snapshots cannot be shared with organizations)."""
    record, target = job.record, job.target
    want = launch_permission_set(target)
    accounts = sorted(set(target.share_with_accounts))
    for region, entry in record.images.items():
        ec2 = job.ec2(region)
        current = launch_permissions(ec2, entry["id"])
        missing = sorted(want - current)
        if missing:
            step(f"{region}: sharing {entry['id']} with {', '.join(value for _, value in missing)}")
            ec2.modify_image_attribute(
                ImageId=entry["id"], LaunchPermission={"Add": [{key: value} for key, value in missing]}
            )
            current = launch_permissions(ec2, entry["id"])
            still = sorted(want - current)
            if still:
                raise ImagebuildError(f"{region}: {entry['id']} is still not shared with "
                                      f"{', '.join(value for _, value in still)}")
        for snapshot_id in entry.get("snapshots", []) if accounts else []:
            have = snapshot_volume_accounts(ec2, snapshot_id)
            lacking = [account for account in accounts if account not in have]
            if lacking:
                ec2.modify_snapshot_attribute(SnapshotId=snapshot_id, Attribute="createVolumePermission",
                                              OperationType="add", UserIds=lacking)
        if current or region in record.shared:
            record.shared[region] = sorted(value for _, value in current)
            record.save()


def point_ssm_parameter(job: PublishJob) -> None:
    """The SSM parameter names each region's new AMI, unless an operator holds it at another AMI
    (imagebuild.aws.hold): then it stays, and `ssm_held` in the record says where and why."""
    record, target = job.record, job.target
    name = target.ssm_parameter
    if not name:
        return
    regions = list(record.images) if target.ssm_all_regions else [job.home]
    done = record.data.setdefault("ssm_regions", {})
    held = record.data["ssm_held"] = {}
    earlier = record.data.get("ssm_parameter") or {}
    if earlier.get("name") == name and job.home not in done:  # a record written before ssm_regions
        done[job.home] = earlier.get("value")
    for region in regions:
        image_id = record.image_id(region)
        if done.get(region) == image_id:
            continue  # set by this publish already; never move it back if a newer publish moved it
        ssm = job.clients("ssm", region)
        hold = held_parameter(job.ec2(region), ssm, name)
        if hold is not None and hold[0] != image_id:
            held[region] = {"image": hold[0], "reason": hold[1]}
            message = f"{region}: SSM parameter {name} stays at {hold[0]}: held ({hold[1]}); not moved to {image_id}"
            record.note(message)
            record.save()
            step(message + "; remove the tag to release it")
            continue
        step(f"{region}: SSM parameter {name} -> {image_id}")
        response = ssm.put_parameter(
            Name=name,
            Value=image_id,
            Type="String",
            DataType="aws:ec2:image",
            Overwrite=True,
            Description=f"latest {target.family} AMI (imagebuild)",
        )
        done[region] = image_id
        if region == job.home:
            record.data["ssm_parameter"] = {"name": name, "region": region, "value": image_id,
                                            "version": response.get("Version")}
        record.note(f"{region}: SSM parameter {name} = {image_id}")
        record.save()


def deprecate(job: PublishJob) -> None:
    """EnableImageDeprecation on every region's AMI at build time + deprecate_after_days."""
    record = job.record
    days = job.target.deprecate_after_days
    if not days:
        return
    at = job.manifest.build_datetime + timedelta(days=days)
    at = max(at, datetime.now(UTC) + timedelta(minutes=10))  # AWS refuses a time in the past
    stamp = at.strftime("%Y-%m-%dT%H:%M:00Z")
    done = record.data.setdefault("deprecation", {})
    for region, entry in record.images.items():
        if done.get(region, {}).get("image") == entry["id"]:
            continue
        try:
            job.ec2(region).enable_image_deprecation(ImageId=entry["id"],
                                                     DeprecateAt=at.replace(second=0, microsecond=0))
        except Exception as exc:
            if error_code(exc) not in ("InvalidAction", "UnsupportedOperation"):
                raise
            record.note(f"{region}: deprecation of {entry['id']} not set: {describe_error(exc)}")
            record.save()
            step(f"{region}: cannot deprecate {entry['id']} here ({error_code(exc)})")
            continue
        done[region] = {"image": entry["id"], "at": stamp}
        record.note(f"{region}: {entry['id']} deprecates at {stamp}")
        record.save()
