"""Publish a verified image as an AMI: upload, register, copy, share, point the SSM parameter.

Only an image whose verification passed, for exactly the bytes on disk, is published. Every
step updates `publish.json` in the image directory (see imagebuild.aws.record), so a publish
that fails half-way says what exists, and running it again finishes the job: it never uploads
again once the home AMI exists, copies only to regions that lack the AMI, and is a no-op once
everything is done. The SSM parameter is set last, once every region has the shared AMI.

The family's lock (imagebuild.aws.lock) is held throughout; what an earlier run left is read by
imagebuild.aws.recover, and sharing, deprecation and the SSM parameter are imagebuild.aws.release's.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from imagebuild.aws import recover
from imagebuild.aws.clients import ClientFactory, boto3_clients, describe_error, error_code, is_aws_error
from imagebuild.aws.documents import PublishTarget
from imagebuild.aws.job import PublishJob
from imagebuild.aws.lock import family_lock
from imagebuild.aws.lookup import (
    IMAGE_ID_TAG,
    block_device_snapshots,
    check_publishable,
    find_image_by_name,
    wait_image,
    wait_snapshot,
)
from imagebuild.aws.record import PublishRecord
from imagebuild.aws.recover import await_visible, reconcile, stamp, sweep_own_orphans
from imagebuild.aws.release import deprecate, point_ssm_parameter, share
from imagebuild.aws.request import (
    ami_name,
    ami_tags,
    check_tags,
    register_request,
    root_volume_gib,
    tag_list,
)
from imagebuild.aws.upload import (
    DEFAULT_WORKERS,
    ProgressCallback,
    UploadFailed,
    upload_bar,
    upload_raw,
    volume_size_gib,
)
from imagebuild.digest import sha256_file
from imagebuild.errors import ImagebuildError
from imagebuild.progress import step
from imagebuild.vm.disks import convert

WAIT_TIMEOUT = 3600.0  # seconds to wait for a snapshot or an AMI copy
POLL_INTERVAL = 10.0


# --------------------------------------------------------------------------- publish


def publish(
    image_dir: Path | str,
    target: PublishTarget,
    *,
    progress: ProgressCallback | None = None,
    clients: ClientFactory | None = None,
    workers: int = DEFAULT_WORKERS,
    wait_timeout: float = WAIT_TIMEOUT,
    poll_interval: float = POLL_INTERVAL,
) -> dict[str, Any]:
    """Publish the verified image in *image_dir* to *target*; returns the publish record.

    *progress* receives UploadProgress updates during the upload (default: a bar on stderr; the
    conversion to raw before it always shows its own).
    *clients* is a `(service, region) -> boto3 client` factory (default: boto3's default
    session). Raises ImagebuildError when the image is not publishable or a step fails; the
    record in `publish.json` then says what exists.
    """
    image_dir = Path(image_dir)
    manifest, qcow2 = check_publishable(image_dir)
    # a record of another publish is refused before any call; the record is used once the lock is ours
    PublishRecord.open(image_dir, image=manifest.image, image_sha256=manifest.sha256, family=target.family,
                       name=ami_name(manifest, target), home_region=target.region)
    if clients is None:
        clients = boto3_clients(max_pool_connections=max(workers, 1) + 4)
    check_tags(ami_tags(manifest, target), clients, target.region)  # as many as snapshots get with IMAGE_ID_TAG
    root_volume_gib(manifest, target)
    # one publish or prune of the family at a time (imagebuild.aws.lock)
    with family_lock(clients, target, f"publish {ami_name(manifest, target)}") as lease:
        record = PublishRecord.open(image_dir, image=manifest.image, image_sha256=manifest.sha256,
                                    family=target.family, name=ami_name(manifest, target), home_region=target.region)
        job = _Publish(
            image_dir, qcow2, manifest, target, record, clients,
            progress=progress if progress is not None else upload_bar(),
            workers=workers, wait_timeout=wait_timeout, poll_interval=poll_interval,
        )
        job.check_lock = lease.check
        try:
            job.run()
        except KeyboardInterrupt:
            if not record.data.get("last_error"):
                record.set("last_error", "interrupted; run publish again to finish")
            raise
        except ImagebuildError as exc:
            record.set("last_error", str(exc))
            raise
        except Exception as exc:
            if not is_aws_error(exc):
                raise
            message = f"publish stopped: {describe_error(exc)}"
            record.set("last_error", message)
            raise ImagebuildError(f"{message}. What exists is recorded in {record.path}; "
                                  "run publish again to finish.") from None
        return record.as_dict()


class _Publish(PublishJob):
    """The publish's flow: home image, copies, then release (imagebuild.aws.release)."""

    # ------------------------------------------------------------------ flow

    def run(self) -> None:
        self.record.data["last_error"] = None
        self.record.data["complete"] = False
        steps = [lambda: reconcile(self), self.make_home_image, lambda: self.finish_image(self.home), self.make_copies,
                 lambda: share(self), lambda: deprecate(self), lambda: point_ssm_parameter(self)]
        for action in steps:
            self.check_lock()  # the lease is still ours: nothing changes after another run took it over
            action()
        self.record.set("complete", True, note="publish complete")
        step(f"published {self.name}: " + ", ".join(f"{r} {e['id']}" for r, e in self.record.images.items()))

    # ------------------------------------------------------------------ home region

    def make_home_image(self) -> None:
        if self.record.image_id(self.home) is not None:
            return
        ec2 = self.ec2(self.home)
        if self.adopt_existing(self.home):
            return
        snap = self.record.snapshot
        if snap is not None and snap.get("state") == "completing" and snap.get("id"):
            step(f"waiting for snapshot {snap['id']}, uploaded by an earlier run")
            snapshot_id = self.finish_snapshot(snap["id"])
        elif snap is None or snap.get("state") != "completed":
            snapshot_id = self.upload()
        else:
            snapshot_id = snap["id"]
            step(f"reusing uploaded snapshot {snapshot_id}")
        step(f"{self.home}: registering AMI {self.name}")
        request = register_request(self.manifest, self.target, snapshot_id)
        try:
            image_id = ec2.register_image(**request)["ImageId"]
        except Exception as exc:
            if error_code(exc) != "InvalidAMIName.Duplicate":
                raise
            # RegisterImage takes no client token: when its answer was lost (a timeout) botocore sends it
            # again, and AWS answers that the name is taken, by the AMI the first send made
            self.record.note(f"{self.home}: RegisterImage answered {describe_error(exc)}; adopting that AMI")
            self.adopt_after_duplicate()
            return
        self.record.set_image(
            self.home,
            {"id": image_id, "state": "pending", "source": "register", "snapshots": [snapshot_id],
             "created_at": stamp()},
            note=f"{self.home}: registered {image_id} from {snapshot_id}",
        )

    def adopt_existing(self, region: str) -> bool:
        """Take over an AMI of our name made from this image (e.g. a run killed after registering)."""
        found = find_image_by_name(self.ec2(region), self.name)
        if found is None:
            return False
        tags = {t["Key"]: t["Value"] for t in found.get("Tags", [])}
        ours = tags.get("imagebuild:image-sha256") == self.manifest.sha256 or self.manifest.sha256 in (
            found.get("Description") or ""
        )
        if not ours:
            raise ImagebuildError(
                f"{region}: an AMI named {self.name} already exists ({found['ImageId']}) and was not "
                f"made from this image; AMI names are unique per region"
            )
        snapshots = block_device_snapshots(found)
        self.record.set_image(
            region,
            {"id": found["ImageId"], "state": found.get("State", "pending"), "source": "adopted",
             "snapshots": snapshots},
            note=f"{region}: adopted existing {found['ImageId']} named {self.name}",
        )
        step(f"{region}: found {found['ImageId']} ({self.name}) from an earlier run; using it")
        return True

    def adopt_after_duplicate(self) -> None:
        """Adopt the AMI that holds our name now; DescribeImages may take AWS's consistency window to show it."""
        window = recover.CONSISTENCY_WINDOW_S
        deadline = time.monotonic() + window
        while not self.adopt_existing(self.home):
            if time.monotonic() >= deadline:
                raise ImagebuildError(f"{self.home}: RegisterImage says an AMI named {self.name} exists, but "
                                      f"DescribeImages did not show it within {window:.0f} s; run "
                                      "publish again to adopt it")
            time.sleep(self.poll_interval)

    def upload(self) -> str:
        # Scratch beside the image: the raw disk is as large as the image's virtual size, and a
        # killed run leaves it where the image is, not in a possibly small /tmp.
        workdir = Path(tempfile.mkdtemp(prefix=".publish-scratch-", dir=self.qcow2.parent))
        try:
            raw = workdir / "disk.raw"
            step(f"converting {self.qcow2.name} to raw")
            convert(self.qcow2, raw, source_format="qcow2", dest_format="raw")
            size = raw.stat().st_size
            if size != self.manifest.virtual_size:
                raise ImagebuildError(
                    f"the raw image is {size} bytes, but manifest.json says the virtual size is "
                    f"{self.manifest.virtual_size}; refusing to publish"
                )
            if sha256_file(self.qcow2) != self.manifest.sha256:
                raise ImagebuildError(
                    f"refusing to publish {self.qcow2}: the file changed while it was being converted")

            # The client token is saved before StartSnapshot: a run killed before the answer is
            # saved asks again with the same token, and AWS hands back the same snapshot.
            earlier = self.record.snapshot or {}
            token = earlier.get("client_token") if earlier.get("state") == "starting" else None
            token_reused = token is not None
            token = token or str(uuid.uuid4())
            self.record.set("snapshot", {"id": None, "region": self.home, "state": "starting", "client_token": token},
                            note=f"starting a snapshot with client token {token}")

            def started(snapshot_id: str) -> None:
                self.record.set(
                    "snapshot",
                    {"id": snapshot_id, "region": self.home, "state": "uploading", "client_token": token},
                    note=f"started snapshot {snapshot_id}",
                )

            step(f"{self.home}: uploading {volume_size_gib(size)} GiB volume through the EBS direct APIs")
            try:
                result = upload_raw(
                    self.clients("ebs", self.home),
                    raw,
                    description=self.description,
                    tags=self.tags,
                    client_token=token,
                    on_started=started,
                    progress=self.progress,
                    workers=self.workers,
                    encrypted=self.target.encrypt_boot,
                    kms_key_arn=self.target.kms_key(self.home),
                )
            except UploadFailed as failed:
                self.upload_failed(failed)
                raise AssertionError("unreachable") from failed  # upload_failed always raises
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        snapshot_id = result.snapshot_id
        if token_reused:
            sweep_own_orphans(self)  # now that the record names the snapshot the token gave back
        self.record.set(
            "snapshot",
            {
                "id": snapshot_id,
                "region": self.home,
                "state": "completing",
                "blocks_written": result.blocks_written,
                "checksum": result.checksum,
            },
        )
        return self.finish_snapshot(snapshot_id)

    def finish_snapshot(self, snapshot_id: str) -> str:
        """Wait for AWS to finish a snapshot it accepted as complete. One still pending when the wait
        ends is kept, recorded as completing, for the next run to wait for; one in error is deleted."""
        state = wait_snapshot(self.ec2(self.home), snapshot_id, self.wait_timeout, self.poll_interval)
        if state == "pending":
            self.record.note(f"snapshot {snapshot_id} still pending after {self.wait_timeout:.0f} s; kept")
            raise ImagebuildError(f"snapshot {snapshot_id} is still pending after {self.wait_timeout:.0f} s; it is "
                                  "kept: run publish again to keep waiting for it")
        if state != "completed":
            self.delete_incomplete_snapshot(snapshot_id, f"it ended in state {state}")
            raise ImagebuildError(
                f"snapshot {snapshot_id} ended in state {state!r} instead of completed; it was deleted")
        snap = dict(self.record.snapshot or {})
        snap["state"] = "completed"
        self.record.set("snapshot", snap, note=f"snapshot {snapshot_id} completed ({snap.get('blocks_written')} "
                        "blocks)")
        step(f"snapshot {snapshot_id} completed: {snap.get('blocks_written')} blocks written")
        return snapshot_id

    def upload_failed(self, failed: UploadFailed) -> None:
        cause = failed.cause
        if isinstance(cause, KeyboardInterrupt):
            what = "interrupted"
        elif isinstance(cause, ImagebuildError):
            what = f"failed: {cause}"
        elif is_aws_error(cause):
            what = f"failed: {describe_error(cause)}"
        else:
            what = f"failed: {type(cause).__name__}: {cause}"
        deleted = self.delete_incomplete_snapshot(failed.snapshot_id, f"upload {what}")
        fate = (
            f"the incomplete snapshot {failed.snapshot_id} was deleted"
            if deleted
            else f"the incomplete snapshot {failed.snapshot_id} could NOT be deleted (AWS errors it out "
            "when its upload times out; delete it by hand or run publish again)"
        )
        message = f"upload {what} after {failed.written} of {failed.total} blocks; {fate}"
        self.record.set("last_error", message)
        step(message)
        if isinstance(cause, KeyboardInterrupt):
            raise cause
        raise ImagebuildError(message) from None

    # ------------------------------------------------------------------ per-region AMIs

    def finish_image(self, region: str) -> None:
        """Wait until the region's AMI is available, then tag it and its snapshots.

        An AMI that failed is deregistered and dropped from the record; one still pending when
        the wait times out stays recorded, for the next run to wait for.
        """
        entry = dict(self.record.images[region])
        ec2 = self.ec2(region)
        image = wait_image(ec2, entry["id"], self.wait_timeout, self.poll_interval)
        if image is None and await_visible(self, region, entry) is not None:  # AWS was not consistent yet
            image = wait_image(ec2, entry["id"], self.wait_timeout, self.poll_interval)
        if image is None or image.get("State") == "deregistered":
            self.record.set_image(region, None, note=f"{region}: {entry['id']} disappeared")
            raise _RegionFailed(region, f"AMI {entry['id']} disappeared before it became available")
        state = image.get("State")
        if state == "pending":
            raise _RegionFailed(
                region,
                f"AMI {entry['id']} is still pending after {self.wait_timeout:.0f} s; "
                "run publish again to keep waiting",
            )
        if state != "available":
            reason = image.get("StateReason", {}).get("Message") or state
            self.drop_image(region, f"it is {state}")
            raise _RegionFailed(region, f"AMI {entry['id']} became {state} ({reason})")
        snapshots = list(dict.fromkeys([*entry.get("snapshots", []), *block_device_snapshots(image)]))
        ec2.create_tags(Resources=[entry["id"]], Tags=tag_list(self.ami_tags))
        if snapshots:
            ec2.create_tags(Resources=snapshots, Tags=tag_list({**self.tags, IMAGE_ID_TAG: entry["id"]}))
        if entry.get("state") != "available" or entry.get("snapshots") != snapshots:
            entry.update(state="available", snapshots=snapshots)
            self.record.set_image(region, entry, note=f"{region}: {entry['id']} available")

    def make_copies(self) -> None:
        home_id = self.record.image_id(self.home)
        for region in list(self.record.failed_regions):
            if region not in self.target.copy_regions:
                self.record.failed_regions.pop(region)
        failures: dict[str, str] = {}
        started: list[str] = []
        for region in self.target.copy_regions:
            if self.record.image_id(region) is not None:
                started.append(region)  # recorded by an earlier run: make sure it is finished
                continue
            try:
                if self.adopt_existing(region):
                    started.append(region)
                    continue
                step(f"{region}: copying {home_id} from {self.home}")
                encryption: dict[str, Any] = {"Encrypted": True} if self.target.encrypt_boot else {}
                if self.target.kms_key(region):
                    encryption["KmsKeyId"] = self.target.kms_key(region)
                image_id = self.ec2(region).copy_image(
                    Name=self.name,
                    Description=self.description,
                    SourceImageId=home_id,
                    SourceRegion=self.home,
                    ClientToken=str(uuid.uuid4()),
                    TagSpecifications=[{"ResourceType": "image", "Tags": tag_list(self.ami_tags)}],
                    **encryption,
                )["ImageId"]
            except Exception as exc:
                if not (is_aws_error(exc) or isinstance(exc, ImagebuildError)):
                    raise
                failures[region] = describe_error(exc) if is_aws_error(exc) else str(exc)
                self.region_failed(region, failures[region])
                continue
            self.record.set_image(
                region,
                {"id": image_id, "state": "pending", "source": "copy", "snapshots": [], "created_at": stamp()},
                note=f"{region}: copy {image_id} of {home_id} started",
            )
            started.append(region)
        for region in started:
            try:
                self.finish_image(region)
            except _RegionFailed as exc:
                failures[region] = exc.reason
                self.region_failed(region, exc.reason)
            except Exception as exc:
                if not is_aws_error(exc):
                    raise
                failures[region] = describe_error(exc)
                self.region_failed(region, failures[region])
        if failures:
            have = ", ".join(f"{r} {e['id']}" for r, e in self.record.images.items())
            lines = "; ".join(f"{r}: {why}" for r, why in failures.items())
            raise ImagebuildError(
                f"copying the AMI failed for {', '.join(failures)} ({lines}). These exist and are kept: {have}. "
                f"Sharing and the SSM parameter wait for every region. {self.record.path} records this; "
                "run publish again to retry the missing regions."
            )

    def region_failed(self, region: str, reason: str) -> None:
        self.record.failed_regions[region] = reason
        self.record.note(f"{region}: copy failed: {reason}")
        self.record.save()
        step(f"{region}: copy failed: {reason}")


class _RegionFailed(ImagebuildError):
    def __init__(self, region: str, reason: str) -> None:
        super().__init__(f"{region}: {reason}")
        self.region = region
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.region}: {self.reason}"
