"""Read-only look-ups: what AWS holds for an image (AMIs, snapshots, launch permissions, SSM), and
whether an image directory may be published at all.

publish, prune and the pipeline all ask these questions; none of them changes anything.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from imagebuild.aws.clients import error_code
from imagebuild.aws.documents import Manifest, PublishTarget, VerifyResult
from imagebuild.build import records
from imagebuild.digest import sha256_file
from imagebuild.errors import ImagebuildError

IMAGE_ID_TAG = "imagebuild:image-id"  # on snapshots: the AMI they back


def check_publishable(image_dir: Path) -> tuple[Manifest, Path]:
    """The manifest and qcow2 path, or ImagebuildError unless the image on disk passed verification and its
    SBOM and provenance records are beside it, as the bake wrote them."""
    manifest = Manifest.load(image_dir)
    if manifest.lab_content:
        raise ImagebuildError(f"refusing to publish {image_dir}: it holds lab content, which must never ship: "
                              + "; ".join(manifest.lab_content))
    # Its SBOM and provenance, unchanged since the bake and about this image (the AMI's tags name them).
    try:
        records.check(Path(image_dir), manifest.records, manifest.sha256)
    except ImagebuildError as exc:
        raise ImagebuildError(f"refusing to publish {image_dir}: {exc}") from None
    # An AMI boots only on EC2: the boot that proves it is the one that boots the image as EC2 does, and it
    # must have passed. A NoCloud verify beside it (the qcow2's own, `imagebuild verify`) must have passed too.
    for name, what in (("verify.json", "verification"), ("verify-ec2.json", "EC2 verification")):
        if not (Path(image_dir) / name).is_file():
            if name == "verify.json":
                continue
            raise ImagebuildError(f"refusing to publish {image_dir}: it has no {name}; run "
                                  f"`imagebuild verify --platform ec2` on it first")
        verify = VerifyResult.load(image_dir, name)
        if not verify.passed:
            failed = verify.failed_checks()
            detail = f" (failed checks: {'; '.join(failed)})" if failed else " (the report names no failed check)"
            raise ImagebuildError(f"refusing to publish {image_dir}: its {what} did not pass{detail}")
        if verify.image_sha256 != manifest.sha256:
            raise ImagebuildError(
                f"refusing to publish {image_dir}: {name} is for image sha256 {verify.image_sha256}, "
                f"but manifest.json describes {manifest.sha256}; verify this image again"
            )
    qcow2 = Path(image_dir) / manifest.image
    if not qcow2.is_file():
        raise ImagebuildError(f"refusing to publish: the image file {qcow2} does not exist")
    actual = sha256_file(qcow2)
    if actual != manifest.sha256:
        raise ImagebuildError(
            f"refusing to publish {qcow2}: its sha256 is {actual}, but it was verified as "
            f"{manifest.sha256}; the file changed after verification"
        )
    return manifest, qcow2


def describe_image(ec2: Any, image_id: str) -> dict[str, Any] | None:
    try:
        images = ec2.describe_images(ImageIds=[image_id])["Images"]
    except Exception as exc:
        if error_code(exc) in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
            return None
        raise
    return images[0] if images else None


def image_state(ec2: Any, image_id: str) -> str | None:
    image = describe_image(ec2, image_id)
    return image.get("State") if image else None


def snapshot_state(ec2: Any, snapshot_id: str) -> str | None:
    try:
        snapshots = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    except Exception as exc:
        if error_code(exc) == "InvalidSnapshot.NotFound":
            return None
        raise
    return snapshots[0].get("State") if snapshots else None


def find_image_by_name(ec2: Any, name: str) -> dict[str, Any] | None:
    images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]
    images = [image for image in images if image.get("Name") == name and image.get("State") != "deregistered"]
    return images[0] if images else None


def block_device_snapshots(image: dict[str, Any]) -> list[str]:
    return [
        mapping["Ebs"]["SnapshotId"]
        for mapping in image.get("BlockDeviceMappings", [])
        if mapping.get("Ebs", {}).get("SnapshotId")
    ]


LAUNCH_PERMISSION_KEYS = ("UserId", "OrganizationArn", "OrganizationalUnitArn")


def launch_permission_set(target: PublishTarget) -> set[tuple[str, str]]:
    """What the target shares with, as (LaunchPermission key, value) pairs."""
    return ({("UserId", a) for a in target.share_with_accounts}
            | {("OrganizationArn", o) for o in target.share_with_organizations}
            | {("OrganizationalUnitArn", u) for u in target.share_with_ous})


def launch_permissions(ec2: Any, image_id: str) -> set[tuple[str, str]]:
    response = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
    return {(key, perm[key]) for perm in response.get("LaunchPermissions", []) for key in LAUNCH_PERMISSION_KEYS
            if key in perm}


def snapshot_volume_accounts(ec2: Any, snapshot_id: str) -> set[str]:
    response = ec2.describe_snapshot_attribute(SnapshotId=snapshot_id, Attribute="createVolumePermission")
    return {perm["UserId"] for perm in response.get("CreateVolumePermissions", []) if "UserId" in perm}


def ssm_parameter_value(ssm: Any, name: str) -> str | None:
    """The value of SSM parameter *name*, or None when it does not exist."""
    try:
        return ssm.get_parameter(Name=name)["Parameter"]["Value"].strip()
    except Exception as exc:
        if error_code(exc) == "ParameterNotFound":
            return None
        raise


def wait_snapshot(ec2: Any, snapshot_id: str, timeout: float, poll: float) -> str | None:
    """The snapshot's state once it is no longer pending, or at *timeout* seconds (None: it is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        state = snapshot_state(ec2, snapshot_id)
        if state != "pending" or time.monotonic() >= deadline:
            return state
        time.sleep(poll)


def wait_image(ec2: Any, image_id: str, timeout: float, poll: float) -> dict[str, Any] | None:
    """The image once it is no longer pending, or at *timeout* seconds (None: it is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        image = describe_image(ec2, image_id)
        if image is None or image.get("State") != "pending" or time.monotonic() >= deadline:
            return image
        time.sleep(poll)
