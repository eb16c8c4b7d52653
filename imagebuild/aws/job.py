"""One publish's state, and the two clean-ups every step of it may need.

`PublishJob` holds what a publish works from (the image, its manifest, the target, the record, the
client factory, the waits); imagebuild.aws.publish drives it, imagebuild.aws.recover reads what an
earlier run left, imagebuild.aws.release shares and announces the AMIs. Deleting an incomplete
snapshot and deregistering a failed AMI live here, beside the state they change.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from imagebuild.aws.clients import ClientFactory, describe_error, error_code, is_aws_error
from imagebuild.aws.documents import Manifest, PublishTarget
from imagebuild.aws.record import PublishRecord
from imagebuild.aws.request import ami_name, ami_tags, image_description, image_tags
from imagebuild.aws.upload import ProgressCallback
from imagebuild.progress import step


class PublishJob:
    """What one publish of one image works from and on."""

    def __init__(
        self,
        image_dir: Path,
        qcow2: Path,
        manifest: Manifest,
        target: PublishTarget,
        record: PublishRecord,
        clients: ClientFactory,
        *,
        progress: ProgressCallback,
        workers: int,
        wait_timeout: float,
        poll_interval: float,
    ) -> None:
        self.image_dir = image_dir
        self.qcow2 = qcow2
        self.manifest = manifest
        self.target = target
        self.record = record
        self.clients = clients
        self.progress = progress
        self.workers = workers
        self.wait_timeout = wait_timeout
        self.poll_interval = poll_interval
        self.home = target.region
        self.name = ami_name(manifest, target)
        self.tags = image_tags(manifest, target)
        self.ami_tags = ami_tags(manifest, target)   # image_tags and the SBOM/provenance record tag
        self.description = image_description(manifest, target)
        self.check_lock: Callable[[], None] = lambda: None  # raises once the family's lock is lost


    def ec2(self, region: str) -> Any:
        return self.clients("ec2", region)

    def delete_incomplete_snapshot(self, snapshot_id: str, why: str) -> bool:
        """Best effort; records the outcome. True when the snapshot is gone."""
        try:
            self.ec2(self.home).delete_snapshot(SnapshotId=snapshot_id)
        except Exception as exc:  # best effort: report, never mask the original failure
            if error_code(exc) == "InvalidSnapshot.NotFound":
                self.record.set("snapshot", None, note=f"snapshot {snapshot_id} ({why}) was already gone")
                return True
            snap = dict(self.record.snapshot or {"id": snapshot_id, "region": self.home})
            snap["state"] = "incomplete"
            self.record.set(
                "snapshot", snap,
                note=f"could not delete incomplete snapshot {snapshot_id} ({why}): {describe_error(exc)}",
            )
            return False
        self.record.set("snapshot", None, note=f"deleted incomplete snapshot {snapshot_id} ({why})")
        step(f"deleted incomplete snapshot {snapshot_id} ({why})")
        return True

    def drop_image(self, region: str, why: str) -> None:
        """Deregister a failed AMI (best effort) and drop it from the record if it is gone."""
        entry = self.record.images.get(region)
        if entry is None:
            return
        try:
            self.ec2(region).deregister_image(ImageId=entry["id"])
        except Exception as exc:
            if not is_aws_error(exc):
                raise
            if error_code(exc) not in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
                self.record.note(f"{region}: could not deregister {entry['id']} ({why}): {describe_error(exc)}")
                self.record.save()
                return
        step(f"{region}: deregistered {entry['id']} ({why})")
        self.record.set_image(region, None, note=f"{region}: deregistered {entry['id']} ({why})")
