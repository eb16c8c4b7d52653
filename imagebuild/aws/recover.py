"""What a publish finds when it starts: the record of an earlier run held against what AWS holds now.

`reconcile` drops from the record what no longer exists, so the run recreates it, and deletes what an
interrupted upload left. An AMI that AWS has only just created may not show in DescribeImages yet
(eventual consistency, which AWS documents for RegisterImage and CopyImage): `await_visible` waits
through that window with boto3's own `image_exists` waiter before anything is called gone.
"""
from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from imagebuild.aws.clients import error_code
from imagebuild.aws.job import PublishJob
from imagebuild.aws.lookup import IMAGE_ID_TAG, describe_image, image_state, snapshot_state
from imagebuild.progress import step

#: How long after RegisterImage/CopyImage a NotFound from DescribeImages may still be AWS's eventual
#: consistency: botocore's ImageExists waiter gives an AMI 40 polls of 15 s.
CONSISTENCY_WINDOW_S = 600.0


def stamp() -> str:
    """Now, as the record writes when an AMI was created (`created_at`)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _age_s(entry: dict[str, Any]) -> float:
    """Seconds since the record's AMI was created; infinite for a record without the time."""
    try:
        created = datetime.strptime(entry["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except (KeyError, TypeError, ValueError):
        return math.inf
    return (datetime.now(UTC) - created).total_seconds()


def await_visible(job: PublishJob, region: str, entry: dict[str, Any]) -> dict[str, Any] | None:
    """The AMI of *entry* once DescribeImages shows it, or None when the consistency window since it
    was created passed without it (then it is gone)."""
    import botocore.exceptions

    remaining = CONSISTENCY_WINDOW_S - _age_s(entry)
    if remaining <= 0:
        return None
    step(f"{region}: {entry['id']} is not visible yet (AWS is eventually consistent); waiting up to "
         f"{remaining:.0f} s")
    delay = max(job.poll_interval, 0.001)
    waiter = job.ec2(region).get_waiter("image_exists")
    try:
        waiter.wait(ImageIds=[entry["id"]],
                    WaiterConfig={"Delay": delay, "MaxAttempts": max(1, math.ceil(remaining / delay))})
    except botocore.exceptions.WaiterError as exc:
        code = ((exc.last_response or {}).get("Error") or {}).get("Code", "")
        if code not in ("", "InvalidAMIID.NotFound"):
            raise  # not "not there yet": the caller reports it as AWS's answer
        return None
    return describe_image(job.ec2(region), entry["id"])


def reconcile(job: PublishJob) -> None:
    """Drop from the record what no longer exists, so the rerun recreates it."""
    record = job.record
    for region, entry in list(record.images.items()):
        state = image_state(job.ec2(region), entry["id"])
        if state is None and await_visible(job, region, entry) is not None:
            state = image_state(job.ec2(region), entry["id"])
        if state in (None, "deregistered"):
            step(f"{region}: recorded AMI {entry['id']} is gone; will publish it again")
            record.set_image(region, None, note=f"{region}: {entry['id']} no longer exists")
        elif state not in ("available", "pending"):
            job.drop_image(region, f"it is {state}")
    snap = record.snapshot
    if snap is not None and snap.get("state") == "starting":
        # a start whose answer never arrived: upload() asks again with the saved client token, and AWS
        # answers with the snapshot that start made. Sweeping first would delete exactly that one; the
        # upload sweeps once the answer names it.
        return
    sweep_own_orphans(job)
    if snap is None or not snap.get("id"):
        return
    actual = snapshot_state(job.ec2(job.home), snap["id"])
    if actual is None:
        record.set("snapshot", None, note=f"snapshot {snap['id']} no longer exists")
        return
    if snap.get("state") == "completing" and actual == "completed":
        # killed while waiting for AWS to finish a snapshot it had accepted as complete
        record.set("snapshot", {**snap, "state": "completed"}, note=f"snapshot {snap['id']} completed")
    elif snap.get("state") not in ("completed", "completing") and record.image_id(job.home) is None:
        # (a completing one AWS is still at: make_home_image waits for it)
        # an earlier upload died without cleaning up (e.g. the process was killed)
        job.delete_incomplete_snapshot(snap["id"], "left by an interrupted earlier upload")


def sweep_own_orphans(job: PublishJob) -> None:
    """Delete snapshots of this image that nothing records or uses (a run killed between
    StartSnapshot and saving its answer, whose client token AWS no longer honoured: its new start made
    another snapshot). Only snapshots tagged with this image's sha256 are looked at; one an AMI uses,
    and the one the record holds, are kept. Never called while a start's answer is outstanding."""
    record = job.record
    if record.image_id(job.home) is not None:
        return
    ec2 = job.ec2(job.home)
    recorded = (record.snapshot or {}).get("id")
    found = ec2.describe_snapshots(
        OwnerIds=["self"],
        Filters=[{"Name": "tag:imagebuild:image-sha256", "Values": [job.manifest.sha256]},
                 {"Name": "tag:imagebuild:family", "Values": [job.target.family]}],
    )["Snapshots"]
    for snapshot in found:
        tags = {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])}
        if snapshot["SnapshotId"] == recorded or tags.get("imagebuild:image-sha256") != job.manifest.sha256:
            continue
        if IMAGE_ID_TAG in tags:
            continue  # registered once: prune's business
        try:
            ec2.delete_snapshot(SnapshotId=snapshot["SnapshotId"])
        except Exception as exc:
            if error_code(exc) not in ("InvalidSnapshot.NotFound", "InvalidSnapshot.InUse"):
                raise
            continue
        record.note(f"deleted snapshot {snapshot['SnapshotId']} of this image that no record held")
        record.save()
        step(f"deleted snapshot {snapshot['SnapshotId']}: left by an interrupted earlier upload of this image")
