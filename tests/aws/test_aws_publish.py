"""publish() against a real moto server: upload, AMI, copies, sharing, SSM, failures, reruns."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuild.aws import PublishTarget
from imagebuild.aws.documents import Manifest
from imagebuild.aws.publish import publish
from imagebuild.aws.request import register_request
from imagebuild.errors import ImagebuildError

MIB = 1024 * 1024
BLOCK = 512 * 1024

HOME = "eu-west-1"
COPIES = ["us-west-2", "eu-central-1"]
ACCOUNT = "111122223333"
PARAM = "/imagebuild/containerd-golden/latest"


def target(checked: bool = True, **changes) -> PublishTarget:
    """A publish target; *checked* False builds it without the model's checks (to reach publish's own)."""
    values = dict(
        region=HOME,
        copy_regions=list(COPIES),
        share_with_accounts=[ACCOUNT],
        ssm_parameter=PARAM,
        keep=2,
        tags={"team": "platform"},
        family="containerd-golden",
    )
    values.update(changes)
    return PublishTarget(**values) if checked else PublishTarget.model_construct(**values)


def record_of(image_dir):
    return json.loads((image_dir / "publish.json").read_text())


def tags_of(resource):
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def family_snapshots(ec2):
    return ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:imagebuild:family", "Values": ["containerd-golden"]}]
    )["Snapshots"]


def read_snapshot(ebs, snapshot_id):
    listing = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)
    blocks = {}
    for entry in listing["Blocks"]:
        got = ebs.get_snapshot_block(
            SnapshotId=snapshot_id, BlockIndex=entry["BlockIndex"], BlockToken=entry["BlockToken"]
        )
        data = got["BlockData"].read()
        assert got["Checksum"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
        blocks[entry["BlockIndex"]] = data
    return listing, blocks


def expected_blocks(content: bytes) -> dict[int, bytes]:
    blocks = {}
    for index in range(-(-len(content) // BLOCK)):
        data = content[index * BLOCK : (index + 1) * BLOCK].ljust(BLOCK, b"\0")
        if data.count(0) != len(data):
            blocks[index] = data
    return blocks


def test_publish_end_to_end(aws, boto, make_image, recording_clients):
    image_dir, content = make_image()
    clients = recording_clients()
    events = []
    record = publish(image_dir, target(), progress=events.append, clients=clients, poll_interval=0.01)

    # the snapshot holds exactly the non-zero blocks, byte for byte
    snapshot_id = record["snapshot"]["id"]
    listing, blocks = read_snapshot(boto("ebs"), snapshot_id)
    want = expected_blocks(content)
    assert sorted(want) == [0, 3, 7, 15]  # block 5 was written as zeros: skipped like the holes
    assert sorted(blocks) == sorted(want)
    for index, data in want.items():
        assert blocks[index] == data, f"block {index} differs"
    start = clients.kwargs("start_snapshot")[0]
    assert start["VolumeSize"] == 1 and start["ClientToken"] and start["Description"]
    assert {"Key": "imagebuild:family", "Value": "containerd-golden"} in start["Tags"]
    puts = clients.kwargs("put_snapshot_block")
    assert sorted(p["BlockIndex"] for p in puts) == [0, 3, 7, 15]
    assert all(p["ChecksumAlgorithm"] == "SHA256" and p["DataLength"] == BLOCK for p in puts)
    # LINEAR aggregate: SHA256 over the raw per-block digests in block order, base64
    (complete,) = clients.kwargs("complete_snapshot")
    aggregate = hashlib.sha256(b"".join(hashlib.sha256(want[i]).digest() for i in sorted(want))).digest()
    assert complete["Checksum"] == base64.b64encode(aggregate).decode()
    assert complete["ChangedBlocksCount"] == 4
    assert complete["ChecksumAggregationMethod"] == "LINEAR" and complete["ChecksumAlgorithm"] == "SHA256"
    assert events and events[-1].blocks_done == events[-1].blocks_total and events[-1].blocks_written == 4

    # RegisterImage got what AWS needs (moto keeps only the name and description of it)
    (register,) = clients.kwargs("register_image")
    assert register["Name"] == "containerd-golden-20261126T181500Z"
    assert register["Architecture"] == "x86_64" and register["BootMode"] == "uefi-preferred"
    assert register["RootDeviceName"] == "/dev/xvda" and register["VirtualizationType"] == "hvm"
    assert register["EnaSupport"] is True
    assert register["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == snapshot_id

    # the AMIs: home and copies, tagged, shared
    home_id = record["images"][HOME]["id"]
    ec2 = boto("ec2", HOME)
    (image,) = ec2.describe_images(ImageIds=[home_id])["Images"]
    tags = tags_of(image)
    assert tags["imagebuild:family"] == "containerd-golden"
    assert tags["imagebuild:spec-hash"] == "ab" * 32
    assert tags["imagebuild:containerd-version"] == "1.6.20"
    assert tags["imagebuild:build-time"] == "2026-11-26T18:15:00Z"
    assert tags["imagebuild:source-image"] == "debian-12-genericcloud-amd64.qcow2"
    assert tags["imagebuild:inputs-hash"] and tags["team"] == "platform"
    (snapshot,) = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    assert tags_of(snapshot)["imagebuild:image-id"] == home_id
    assert tags_of(snapshot)["imagebuild:spec-hash"] == "ab" * 32
    for region in [HOME, *COPIES]:
        regional = boto("ec2", region)
        image_id = record["images"][region]["id"]
        (found,) = regional.describe_images(ImageIds=[image_id])["Images"]
        assert found["Name"] == "containerd-golden-20261126T181500Z"
        assert tags_of(found)["imagebuild:family"] == "containerd-golden"
        perms = regional.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
        assert perms["LaunchPermissions"] == [{"UserId": ACCOUNT}]
        assert record["shared"][region] == [ACCOUNT]
    assert len({record["images"][r]["id"] for r in [HOME, *COPIES]}) == 3

    # SSM points at the home AMI
    parameter = boto("ssm", HOME).get_parameter(Name=PARAM)["Parameter"]
    assert parameter["Value"] == home_id and parameter["DataType"] == "aws:ec2:image"

    # the record says the same, and holds no secrets
    on_disk = record_of(image_dir)
    assert on_disk == record and on_disk["complete"] is True and on_disk["failed_regions"] == {}
    assert on_disk["ssm_parameter"]["value"] == home_id
    text = (image_dir / "publish.json").read_text()
    assert "testing" not in text and "127.0.0.1" not in text
    assert not list(image_dir.glob(".publish.json.*"))  # no temp file left behind


def test_rerun_of_complete_publish_changes_nothing(aws, boto, make_image, recording_clients):
    image_dir, _ = make_image()
    first = publish(image_dir, target(), progress=lambda p: None, poll_interval=0.01)
    clients = recording_clients()
    second = publish(image_dir, target(), progress=lambda p: None, clients=clients, poll_interval=0.01)
    assert second["images"] == first["images"]
    for operation in ("start_snapshot", "put_snapshot_block", "register_image", "copy_image",
                      "modify_image_attribute", "put_parameter"):
        assert clients.count(operation) == 0, operation
    assert boto("ssm").get_parameter(Name=PARAM)["Parameter"]["Version"] == 1


def test_refuses_failed_verification(aws, make_image, recording_clients):
    image_dir, _ = make_image(passed=False)
    clients = recording_clients()
    with pytest.raises(ImagebuildError) as caught:
        publish(image_dir, target(), clients=clients)
    # verify.json as verify writes it: checks are {"check", "ok", "expected", "actual"}
    assert str(caught.value).endswith(
        "its verification did not pass (failed checks: containerd.active (expected active, got failed))")
    assert "{" not in str(caught.value)
    assert clients.calls == [] and not (image_dir / "publish.json").exists()


def test_the_verify_report_is_read_in_the_shape_verify_writes(make_image):
    from imagebuild.aws.documents import VerifyResult

    image_dir, _ = make_image(passed=False)
    written = json.loads((image_dir / "verify.json").read_text())
    assert written["failed"] == ["containerd.active"] and written["checks"][0]["check"] == "containerd.active"
    result = VerifyResult.load(image_dir)
    assert result.passed is False and result.failed_checks() == ["containerd.active (expected active, got failed)"]
    passing = VerifyResult.load(make_image()[0])
    assert passing.passed and passing.failed_checks() == []
    # a report of another shape is refused by name, not misread
    written["checks"] = [{"name": "x", "passed": False}]
    (image_dir / "verify.json").write_text(json.dumps(written))
    with pytest.raises(ImagebuildError, match="'checks' must be a list of"):
        VerifyResult.load(image_dir)


def test_refuses_an_image_that_holds_lab_content(aws, make_image, recording_clients):
    """Negative: a verified image whose manifest names lab content (bake found a download in the lab
    ledger: a Debian build in a release-shaped tarball) never reaches AWS."""
    what = "http://10.0.2.2:8000/containerd-1.6.20-linux-amd64.tar.gz: Debian's build 1.6.20, release-shaped"
    image_dir, _ = make_image(lab_content=(what,))
    clients = recording_clients()
    with pytest.raises(ImagebuildError, match="it holds lab content, which must never ship: http://10.0.2.2"):
        publish(image_dir, target(), clients=clients)
    assert clients.calls == [] and not (image_dir / "publish.json").exists()


def test_refuses_an_image_without_a_record_of_its_content(aws, make_image, recording_clients):
    """An image baked before bake recorded where its sandbox image and downloads came from is refused."""
    image_dir, _ = make_image()
    manifest = json.loads((image_dir / "manifest.json").read_text())
    del manifest["sandbox_image"], manifest["lab_content"]
    (image_dir / "manifest.json").write_text(json.dumps(manifest))
    clients = recording_clients()
    with pytest.raises(ImagebuildError, match="no record of where the image's content came from"):
        publish(image_dir, target(), clients=clients)
    assert clients.calls == []


def test_refuses_image_changed_after_verification(aws, make_image, recording_clients):
    image_dir, _ = make_image()
    qcow2 = image_dir / "golden.qcow2"
    with open(qcow2, "r+b") as handle:  # one byte changed after verify and manifest were written
        handle.seek(qcow2.stat().st_size - 1)
        last = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([last[0] ^ 0xFF]))
    clients = recording_clients()
    with pytest.raises(ImagebuildError, match="changed after verification"):
        publish(image_dir, target(), clients=clients)
    assert clients.calls == []


def test_refuses_an_image_never_verified_as_ec2(aws, make_image, recording_clients):
    image_dir, _ = make_image()
    (image_dir / "verify-ec2.json").unlink()
    clients = recording_clients()
    with pytest.raises(ImagebuildError, match="no verify-ec2.json; run `imagebuild verify --platform ec2`"):
        publish(image_dir, target(), clients=clients)
    assert clients.calls == []


def test_an_image_verified_as_ec2_alone_publishes(aws, make_image, recording_clients):
    """An AMI boots only on EC2: the EC2 verify is the one publish requires (the pipeline runs only it); a
    NoCloud verify.json is not needed, and when there is one it must have passed (the tests above)."""
    image_dir, _ = make_image()
    (image_dir / "verify.json").unlink()
    record = publish(image_dir, target(), clients=recording_clients())
    assert record["complete"] and record["images"]


def test_refuses_an_image_whose_ec2_verify_failed(aws, make_image, recording_clients):
    """The NoCloud boot passed, the EC2 boot did not: verify-ec2.json as verify writes it."""
    from tests.aws.fixtures import write_verify_report

    image_dir, _ = make_image()
    nocloud = json.loads((image_dir / "verify.json").read_text())
    write_verify_report(image_dir, Path(nocloud["image"]), nocloud["image_sha256"], passed=False, platform="ec2")
    clients = recording_clients()
    with pytest.raises(ImagebuildError, match=r"its EC2 verification did not pass \(failed checks: "
                                              r"containerd\.active \(expected active, got failed\)\)"):
        publish(image_dir, target(), clients=clients)
    assert clients.calls == []


def test_refuses_verify_of_another_image(aws, make_image, recording_clients):
    image_dir, _ = make_image()
    verify = json.loads((image_dir / "verify.json").read_text())
    verify["image_sha256"] = "0" * 64
    (image_dir / "verify.json").write_text(json.dumps(verify))
    with pytest.raises(ImagebuildError, match="verify.json is for image sha256 0000"):
        publish(image_dir, target(), clients=recording_clients())


def test_copy_failure_is_recorded_and_rerun_finishes(aws, boto, make_image, recording_clients, client_error):
    image_dir, _ = make_image()
    def outage(n):
        return client_error("RequestLimitExceeded", "Request limit exceeded.", "CopyImage")

    failing = recording_clients(fail_on={("ec2", "eu-central-1", "copy_image"): outage})
    with pytest.raises(ImagebuildError, match="copying the AMI failed for eu-central-1") as caught:
        publish(image_dir, target(), progress=lambda p: None, clients=failing, poll_interval=0.01)
    assert "RequestLimitExceeded" in str(caught.value) and "run publish again" in str(caught.value)

    record = record_of(image_dir)
    assert set(record["images"]) == {HOME, "us-west-2"}
    assert "RequestLimitExceeded" in record["failed_regions"]["eu-central-1"]
    assert record["complete"] is False and record["ssm_parameter"] is None and record["shared"] == {}
    # the record is exactly what exists
    for region, entry in record["images"].items():
        assert boto("ec2", region).describe_images(ImageIds=[entry["id"]])["Images"][0]["State"] == "available"
    assert boto("ec2", "eu-central-1").describe_images(Owners=["self"])["Images"] == []
    with pytest.raises(boto("ssm").exceptions.ParameterNotFound):
        boto("ssm").get_parameter(Name=PARAM)

    rerun = recording_clients()
    finished = publish(image_dir, target(), progress=lambda p: None, clients=rerun, poll_interval=0.01)
    assert rerun.count("start_snapshot") == rerun.count("put_snapshot_block") == 0
    assert rerun.count("register_image") == 0
    assert [kw["SourceImageId"] for kw in rerun.kwargs("copy_image")] == [record["images"][HOME]["id"]]
    assert rerun.count("copy_image", region="eu-central-1") == 1
    assert finished["complete"] is True and finished["failed_regions"] == {}
    assert finished["images"][HOME] == {**record["images"][HOME]}
    assert finished["images"]["us-west-2"]["id"] == record["images"]["us-west-2"]["id"]
    assert set(finished["shared"]) == {HOME, *COPIES}
    assert boto("ssm").get_parameter(Name=PARAM)["Parameter"]["Value"] == record["images"][HOME]["id"]


def test_copy_to_a_region_the_server_rejects(aws, boto, make_image, recording_clients, monkeypatch, capsys):
    """An honest failure from the real server: moto has no backend for a made-up region (HTTP 500).
    The spec refuses the name (tests/test_bad_specs.py); a target built past the model's checks shows
    what publish does when a region fails all the same."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    image_dir, _ = make_image()
    bad = target(checked=False, copy_regions=["us-west-2", "xx-nowhere-9"])
    with pytest.raises(ImagebuildError, match="copying the AMI failed for xx-nowhere-9"):
        publish(image_dir, bad, poll_interval=0.01)  # default clients and progress bar
    err = capsys.readouterr().err
    assert re.search(r"upload (\d+)/\1 blocks, 2\.0 MiB sent, [\d.]+ MiB/s", err), err
    assert "xx-nowhere-9: copy failed: the endpoint did not answer like AWS" in err
    record = record_of(image_dir)
    assert set(record["images"]) == {HOME, "us-west-2"} and set(record["failed_regions"]) == {"xx-nowhere-9"}
    assert record["snapshot"]["state"] == "completed"

    fixed = target(copy_regions=["us-west-2"])
    clients = recording_clients()
    done = publish(image_dir, fixed, progress=lambda p: None, clients=clients, poll_interval=0.01)
    assert done["complete"] is True and done["failed_regions"] == {}
    assert clients.count("copy_image") == 0 and clients.count("start_snapshot") == 0


def _boom_after(k):
    def fault(n):
        return RuntimeError("injected: network went away") if n > k else None
    return fault


def test_failed_upload_leaves_no_snapshot_and_rerun_publishes(aws, boto, make_image, recording_clients):
    image_dir, _ = make_image()
    failing = recording_clients(fail_on={("ebs", HOME, "put_snapshot_block"): _boom_after(2)})
    with pytest.raises(ImagebuildError, match=r"upload failed: RuntimeError: injected.*was deleted"):
        publish(image_dir, target(), progress=lambda p: None, clients=failing, workers=1, poll_interval=0.01)
    (started,) = [kw for s, r, op, kw in failing.calls if op == "start_snapshot"]
    assert failing.count("delete_snapshot") == 1
    ec2 = boto("ec2")
    assert family_snapshots(ec2) == []
    assert ec2.describe_images(Owners=["self"])["Images"] == []
    record = record_of(image_dir)
    assert record["snapshot"] is None and record["images"] == {}
    assert any("deleted incomplete snapshot" in note for note in record["notes"])
    assert "upload failed" in record["last_error"]

    done = publish(image_dir, target(), progress=lambda p: None, poll_interval=0.01)
    assert done["complete"] is True
    assert len(family_snapshots(ec2)) >= 1


def test_interrupted_upload_deletes_snapshot_and_reraises(aws, boto, make_image, recording_clients):
    image_dir, _ = make_image()
    def interrupt(n):
        return KeyboardInterrupt() if n == 2 else None

    failing = recording_clients(fail_on={("ebs", HOME, "put_snapshot_block"): interrupt})
    with pytest.raises(KeyboardInterrupt):
        publish(image_dir, target(), progress=lambda p: None, clients=failing, workers=2, poll_interval=0.01)
    assert family_snapshots(boto("ec2")) == []
    record = record_of(image_dir)
    assert record["snapshot"] is None and "interrupted" in record["last_error"]


def test_killed_upload_is_cleaned_up_by_the_rerun(aws, boto, make_image, recording_clients):
    """A record left by a killed process (snapshot still 'uploading'): the rerun deletes it first."""
    image_dir, _ = make_image()
    ebs = boto("ebs")
    orphan = ebs.start_snapshot(VolumeSize=1, Tags=[{"Key": "imagebuild:family", "Value": "containerd-golden"}])
    manifest = json.loads((image_dir / "manifest.json").read_text())
    (image_dir / "publish.json").write_text(json.dumps({
        "version": 1, "image": "golden.qcow2", "image_sha256": manifest["sha256"],
        "family": "containerd-golden", "name": "containerd-golden-20261126T181500Z",
        "home_region": HOME, "snapshot": {"id": orphan["SnapshotId"], "region": HOME, "state": "uploading"},
        "images": {}, "failed_regions": {}, "shared": {}, "ssm_parameter": None,
        "complete": False, "last_error": None, "notes": [], "updated_at": None,
    }))
    done = publish(image_dir, target(copy_regions=[]), progress=lambda p: None, poll_interval=0.01)
    assert done["snapshot"]["id"] != orphan["SnapshotId"]
    with pytest.raises(boto("ec2").exceptions.ClientError, match="InvalidSnapshot.NotFound"):
        boto("ec2").describe_snapshots(SnapshotIds=[orphan["SnapshotId"]])


def test_partial_last_block_is_padded(aws, boto, make_image, recording_clients):
    size = 2 * MIB + 64 * 1024  # 4 full blocks and a 64 KiB tail
    image_dir, content = make_image(size=size, blocks={4: b"tail data" * 10, 1: b"x" * BLOCK})
    record = publish(image_dir, target(copy_regions=[], share_with_accounts=[], ssm_parameter=""),
                     progress=lambda p: None, poll_interval=0.01)
    _, blocks = read_snapshot(boto("ebs"), record["snapshot"]["id"])
    assert sorted(blocks) == [1, 4]
    assert blocks[4] == content[4 * BLOCK :].ljust(BLOCK, b"\0")
    assert record["shared"] == {} and record["ssm_parameter"] is None


def test_register_request_follows_manifest(make_image):
    image_dir, _ = make_image()
    manifest = Manifest.load(image_dir)
    request = register_request(manifest, target(), "snap-0123")
    assert request["Name"] == "containerd-golden-20261126T181500Z"
    assert request["BlockDeviceMappings"] == [{
        "DeviceName": "/dev/xvda",
        "Ebs": {"SnapshotId": "snap-0123", "VolumeSize": 1, "VolumeType": "gp3", "DeleteOnTermination": True},
    }]
    assert request["BootMode"] == "uefi-preferred" and request["Architecture"] == "x86_64"


def test_target_validation():
    with pytest.raises(ImagebuildError, match="12-digit"):
        target(share_with_accounts=["12345"])
    with pytest.raises(ImagebuildError, match="home region"):
        target(copy_regions=[HOME])
    with pytest.raises(ImagebuildError, match="keep"):
        target(keep=0)
    with pytest.raises(ImagebuildError, match="set by imagebuild"):
        target(tags={"imagebuild:family": "other"})


def test_importing_imagebuild_does_not_import_boto3():
    code = (
        "import sys, imagebuild, imagebuild.aws, imagebuild.aws.publish, imagebuild.aws.prune;"
        "bad = [m for m in ('boto3', 'botocore') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rerun_adopts_an_ami_registered_but_not_recorded(aws, boto, make_image, recording_clients):
    """Killed right after RegisterImage returned: the rerun finds the AMI by name and keeps it."""
    image_dir, _ = make_image()
    first = publish(image_dir, target(copy_regions=[]), progress=lambda p: None, poll_interval=0.01)
    record = record_of(image_dir)
    record["images"], record["shared"], record["ssm_parameter"], record["complete"] = {}, {}, None, False
    (image_dir / "publish.json").write_text(json.dumps(record))
    clients = recording_clients()
    again = publish(image_dir, target(copy_regions=[]), progress=lambda p: None, clients=clients, poll_interval=0.01)
    assert again["images"][HOME]["id"] == first["images"][HOME]["id"]
    assert again["images"][HOME]["source"] == "adopted"
    assert clients.count("register_image") == 0 and clients.count("start_snapshot") == 0
    assert len(boto("ec2").describe_images(Owners=["self"])["Images"]) == 1


def test_refuses_to_take_over_a_foreign_ami_of_the_same_name(aws, boto, make_image, recording_clients):
    image_dir, _ = make_image()
    boto("ec2").register_image(Name="containerd-golden-20261126T181500Z", Description="someone else's")
    with pytest.raises(ImagebuildError, match="already exists .* not made from this image"):
        publish(image_dir, target(), progress=lambda p: None, clients=recording_clients(), poll_interval=0.01)


def test_throttled_blocks_are_retried_adaptively(aws, boto, make_image, recording_clients, answers):
    """Three RequestThrottledException answers for one block: botocore's default (3 attempts)
    would fail the upload; the EBS client's adaptive retries finish it."""
    image_dir, content = make_image()
    def block3(request):
        return "/blocks/3" in request.url

    throttle = answers("ebs.PutSnapshotBlock", 3, 400, "RequestThrottledException", when=block3)
    record = publish(image_dir, target(copy_regions=[], share_with_accounts=[]), progress=lambda p: None,
                     clients=recording_clients(), poll_interval=0.01)
    assert throttle.answered == 3
    listing, blocks = read_snapshot(boto("ebs"), record["snapshot"]["id"])
    assert blocks == expected_blocks(content)


def test_the_ebs_client_retry_budget(aws, boto_session):
    from imagebuild.aws.clients import boto3_clients

    ebs = boto3_clients(session=boto_session)("ebs", HOME)
    assert ebs.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 10}
    assert boto3_clients(session=boto_session)("ec2", HOME).meta.config.retries["mode"] == "standard"


def test_a_snapshot_not_found_right_after_start_is_retried(aws, boto, make_image, recording_clients, answers):
    image_dir, content = make_image()
    missing = answers("ebs.PutSnapshotBlock", 2, 404, "ResourceNotFoundException")
    record = publish(image_dir, target(copy_regions=[], share_with_accounts=[]), progress=lambda p: None,
                     clients=recording_clients(), poll_interval=0.01)
    assert missing.answered == 2
    assert read_snapshot(boto("ebs"), record["snapshot"]["id"])[1] == expected_blocks(content)


def test_a_snapshot_not_found_later_fails_the_upload(aws, make_image, recording_clients, answers, monkeypatch):
    from imagebuild.aws import upload

    monkeypatch.setattr(upload, "NOT_FOUND_GRACE_S", 0.0)  # the snapshot is no longer young
    image_dir, _ = make_image()
    answers("ebs.PutSnapshotBlock", 100, 404, "ResourceNotFoundException")
    with pytest.raises(ImagebuildError, match="ResourceNotFoundException"):
        publish(image_dir, target(copy_regions=[], share_with_accounts=[]), progress=lambda p: None,
                clients=recording_clients(), poll_interval=0.01)


def test_three_throttles_fail_a_client_with_botocore_defaults(aws, boto_session, answers):
    """The negative of the retry test: the same answers beat a client with the default 3 attempts."""
    import botocore.config
    from botocore.exceptions import ClientError

    answers("ebs.PutSnapshotBlock", 3, 400, "RequestThrottledException")
    ebs = boto_session.client("ebs", region_name=HOME,
                              config=botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 3}))
    snapshot_id = ebs.start_snapshot(VolumeSize=1, Timeout=60)["SnapshotId"]
    data = bytes(BLOCK)
    with pytest.raises(ClientError, match="RequestThrottledException"):
        ebs.put_snapshot_block(SnapshotId=snapshot_id, BlockIndex=0, BlockData=data, DataLength=BLOCK,
                               Checksum=base64.b64encode(hashlib.sha256(data).digest()).decode(),
                               ChecksumAlgorithm="SHA256")


def test_tag_limits_come_from_each_api_model(aws, boto_session):
    from imagebuild.aws.clients import boto3_clients
    from imagebuild.aws.request import tag_limits

    clients = boto3_clients(session=boto_session)
    assert tag_limits(clients("ebs", HOME), "StartSnapshot") == {"key": 127, "value": 255, "count": 50}
    assert tag_limits(clients("ec2", HOME), "RegisterImage") == {"key": 128, "value": 256, "count": 50}


@pytest.mark.parametrize("tags, message", [
    ({"team": "x" * 256}, "value is 256 characters, StartSnapshot takes at most 255"),
    ({"k" * 128: "v"}, "is 128 characters, StartSnapshot takes 1-127"),
    ({f"t{i}": "v" for i in range(42)}, "51 tags, StartSnapshot takes at most 50"),
])
def test_tags_over_an_api_limit_are_refused_before_any_call(aws, make_image, recording_clients, tags, message):
    image_dir, _ = make_image()
    clients = recording_clients()
    with pytest.raises(ImagebuildError, match="publish target: tags"):
        target(tags=tags)  # the model (the spec's image.aws section) refuses them first
    with pytest.raises(ImagebuildError, match=re.escape(message)):  # publish's own check, from botocore's model
        publish(image_dir, target(checked=False, tags=tags), progress=lambda p: None, clients=clients)
    assert clients.calls == []


def test_tags_at_the_limits_are_published_whole_and_long_own_values_cut(aws, boto, make_image, recording_clients):
    image_dir, _ = make_image()
    manifest = json.loads((image_dir / "manifest.json").read_text())
    manifest["base_image"]["source"] = "https://example.invalid/" + "d" * 400 + ".qcow2"
    (image_dir / "manifest.json").write_text(json.dumps(manifest))
    tags = {"k" * 127: "v" * 255}
    clients = recording_clients()
    record = publish(image_dir, target(tags=tags, copy_regions=[], share_with_accounts=[]), progress=lambda p: None,
                     clients=clients, poll_interval=0.01)
    (start,) = clients.kwargs("start_snapshot")
    sent = {t["Key"]: t["Value"] for t in start["Tags"]}
    assert sent["k" * 127] == "v" * 255 and len(sent["imagebuild:source-image"]) == 255
    (image,) = boto("ec2", HOME).describe_images(ImageIds=[record["images"][HOME]["id"]])["Images"]
    assert tags_of(image)["k" * 127] == "v" * 255


def test_a_kill_right_after_start_snapshot_reuses_the_saved_client_token(aws, boto, boto_session, make_image,
                                                                         recording_clients):
    image_dir, content = make_image()
    saved_at_call = []

    def token_already_saved(params, **_):
        saved_at_call.append((params["ClientToken"], (record_of(image_dir).get("snapshot") or {}).get("client_token")))

    def killed(**_):
        raise KeyboardInterrupt

    boto_session.events.register("before-parameter-build.ebs.StartSnapshot", token_already_saved)
    boto_session.events.register("after-call.ebs.StartSnapshot", killed, unique_id="kill")
    with pytest.raises(KeyboardInterrupt):
        publish(image_dir, target(copy_regions=[], share_with_accounts=[]), progress=lambda p: None,
                clients=recording_clients(), poll_interval=0.01)
    first = record_of(image_dir)["snapshot"]
    assert first["state"] == "starting" and first["id"] is None
    assert saved_at_call == [(first["client_token"], first["client_token"])]
    (orphan,) = family_snapshots(boto("ec2"))  # the snapshot AWS started, recorded nowhere

    boto_session.events.unregister("after-call.ebs.StartSnapshot", unique_id="kill")
    record = publish(image_dir, target(copy_regions=[], share_with_accounts=[]), progress=lambda p: None,
                     clients=recording_clients(), poll_interval=0.01)
    assert [call[0] for call in saved_at_call] == [first["client_token"]] * 2  # the same token again
    # AWS answers the same token with the same snapshot; moto 5.2.5 ignores ClientToken and makes
    # a second one, so the first is found by this image's sha256 tag and deleted
    snapshots = family_snapshots(boto("ec2"))
    assert {s["SnapshotId"] for s in snapshots} == {record["snapshot"]["id"], *record["images"][HOME]["snapshots"]}
    assert orphan["SnapshotId"] not in {s["SnapshotId"] for s in snapshots}
    assert read_snapshot(boto("ebs"), record["snapshot"]["id"])[1] == expected_blocks(content)


# ------------------------------------------------------------ encryption, volume, sharing, SSM, deprecation

KMS = {HOME: f"arn:aws:kms:{HOME}:123456789012:key/1111aaaa-22bb-33cc-44dd-555555eeeeee",
       "us-west-2": "arn:aws:kms:us-west-2:123456789012:key/mrk-1234abcd",
       "eu-central-1": "arn:aws:kms:eu-central-1:123456789012:key/abcd-ef01"}
ORG = "arn:aws:organizations::123456789012:organization/o-abcdefghij"
OU = "arn:aws:organizations::123456789012:ou/o-abcdefghij/ou-ab12-cdefgh34"


def test_encryption_and_kms_keys_reach_start_snapshot_and_copy_image(aws, make_image, recording_clients):
    """moto 5.2.5 ignores Encrypted/KmsKeyArn on StartSnapshot; the requests are asserted and model-checked."""
    image_dir, _ = make_image()
    clients = recording_clients()
    publish(image_dir, target(encrypt_boot=True, kms_keys=KMS), progress=lambda p: None, clients=clients,
            poll_interval=0.01)
    (start,) = clients.kwargs("start_snapshot")
    assert start["Encrypted"] is True and start["KmsKeyArn"] == KMS[HOME]
    copies = {kw["Name"] + str(i): kw for i, kw in enumerate(clients.kwargs("copy_image"))}
    assert sorted(kw["KmsKeyId"] for kw in copies.values()) == sorted([KMS["us-west-2"], KMS["eu-central-1"]])
    assert all(kw["Encrypted"] is True for kw in copies.values())


def test_unencrypted_by_default_and_default_key_when_no_keys(aws, make_image, recording_clients):
    image_dir, _ = make_image()
    clients = recording_clients()
    publish(image_dir, target(share_with_accounts=[]), progress=lambda p: None, clients=clients, poll_interval=0.01)
    (start,) = clients.kwargs("start_snapshot")
    assert "Encrypted" not in start and "KmsKeyArn" not in start
    assert all("Encrypted" not in kw for kw in clients.kwargs("copy_image"))
    image_dir, _ = make_image(build_time="2026-11-27T00:00:00Z")
    clients = recording_clients()
    publish(image_dir, target(share_with_accounts=[], encrypt_boot=True), progress=lambda p: None, clients=clients,
            poll_interval=0.01)
    (start,) = clients.kwargs("start_snapshot")
    assert start["Encrypted"] is True and "KmsKeyArn" not in start


def test_root_volume_size_and_imds_v2(aws, make_image, recording_clients):
    image_dir, _ = make_image()
    clients = recording_clients()
    publish(image_dir, target(copy_regions=[], share_with_accounts=[], volume_size_gb=30), progress=lambda p: None,
            clients=clients, poll_interval=0.01)
    (register,) = clients.kwargs("register_image")
    assert register["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 30
    assert register["ImdsSupport"] == "v2.0"


def test_a_root_volume_smaller_than_the_image_is_refused(aws, make_image, recording_clients):
    image_dir, _ = make_image()
    manifest = json.loads((image_dir / "manifest.json").read_text())
    manifest["virtual_size"] = 5 * 1024 * MIB // 2  # as a 2.5 GiB disk would say: needs 3 GiB
    (image_dir / "manifest.json").write_text(json.dumps(manifest))
    clients = recording_clients()
    with pytest.raises(ImagebuildError, match="volume_size_gb is 2 GiB, but the image is 3 GiB"):
        publish(image_dir, target(volume_size_gb=2), progress=lambda p: None, clients=clients)
    assert clients.calls == []


def test_sharing_with_accounts_organizations_and_ous(aws, boto, make_image, recording_clients):
    image_dir, _ = make_image()
    clients = recording_clients()
    record = publish(image_dir, target(share_with_organizations=[ORG], share_with_ous=[OU]), progress=lambda p: None,
                     clients=clients, poll_interval=0.01)
    for region, entry in record["images"].items():
        ec2 = boto("ec2", region)
        perms = ec2.describe_image_attribute(ImageId=entry["id"], Attribute="launchPermission")["LaunchPermissions"]
        assert {"UserId": ACCOUNT} in perms and {"OrganizationArn": ORG} in perms
        assert {"OrganizationalUnitArn": OU} in perms
        assert entry["snapshots"]
        for snapshot_id in entry["snapshots"]:
            volume = ec2.describe_snapshot_attribute(SnapshotId=snapshot_id, Attribute="createVolumePermission")
            assert volume["CreateVolumePermissions"] == [{"UserId": ACCOUNT}], (region, snapshot_id)
    # a rerun adds nothing twice
    again = recording_clients()
    publish(image_dir, target(share_with_organizations=[ORG], share_with_ous=[OU]), progress=lambda p: None,
            clients=again, poll_interval=0.01)
    assert again.count("modify_image_attribute") == 0 and again.count("modify_snapshot_attribute") == 0


def test_ssm_parameter_in_every_region(aws, boto, make_image, recording_clients):
    image_dir, _ = make_image()
    record = publish(image_dir, target(ssm_all_regions=True), progress=lambda p: None, clients=recording_clients(),
                     poll_interval=0.01)
    for region, entry in record["images"].items():
        assert boto("ssm", region).get_parameter(Name=PARAM)["Parameter"]["Value"] == entry["id"]
    assert record["ssm_regions"] == {r: e["id"] for r, e in record["images"].items()}


def test_deprecation_at_the_spec_age(aws, boto_session, make_image, recording_clients, api_calls):
    """moto 5.2.5 lacks EnableImageDeprecation (HTTP 500); AWS's answer is given, the request model-checked."""
    from tests.aws.fixtures import ec2_answer

    boto_session.events.register_first(
        "before-send.ec2.EnableImageDeprecation",
        lambda request, **_: ec2_answer(200, "<EnableImageDeprecationResponse><return>true</return>"
                                             "</EnableImageDeprecationResponse>"))
    image_dir, _ = make_image(build_time="2099-01-01T10:20:30Z")
    record = publish(image_dir, target(deprecate_after_days=90), progress=lambda p: None,
                     clients=recording_clients(), poll_interval=0.01)
    sent = api_calls.params("ec2:EnableImageDeprecation")
    assert sorted(p["ImageId"] for p in sent) == sorted(e["id"] for e in record["images"].values())
    assert {p["DeprecateAt"].isoformat() for p in sent} == {"2099-04-01T10:20:00+00:00"}
    assert {v["at"] for v in record["deprecation"].values()} == {"2099-04-01T10:20:00Z"}


def test_deprecation_where_the_api_is_missing_is_noted_not_fatal(aws, make_image, recording_clients):
    image_dir, _ = make_image()
    record = publish(image_dir, target(copy_regions=[], deprecate_after_days=90), progress=lambda p: None,
                     clients=recording_clients(), poll_interval=0.01)
    assert record["complete"] and record["deprecation"] == {}
    assert any("deprecation of" in note and "InvalidAction" in note for note in record["notes"])


def test_a_publish_leaves_no_scratch_behind(aws, make_image, recording_clients):
    """The raw disk is converted beside the image and removed: nothing in the image directory or the
    temporary directory afterwards."""
    from tests.support import temp_dir_of_its_own

    image_dir, _ = make_image()
    before = sorted(p.name for p in image_dir.iterdir())
    with temp_dir_of_its_own() as tmp:
        publish(image_dir, target(), clients=recording_clients())
        assert sorted(p.name for p in tmp.iterdir()) == []
    assert sorted(p.name for p in image_dir.iterdir() if p.name.startswith(".publish-scratch-")) == []
    assert set(before) <= {p.name for p in image_dir.iterdir()}


# ------------------------------------------------------------------ architecture and boot mode


@pytest.mark.parametrize(("architecture", "boot_mode", "ec2_architecture"), [
    ("x86_64", "legacy-bios", "x86_64"),      # a BIOS-only base of your own (image.base.boot_mode)
    ("x86_64", "uefi-preferred", "x86_64"),   # an amd64 hybrid image (BIOS + UEFI): Debian 12 and 13
    ("amd64", "uefi-preferred", "x86_64"),
    ("arm64", "uefi", "arm64"),               # Graviton: UEFI only
    ("aarch64", "uefi", "arm64"),
])
def test_publish_registers_the_manifests_architecture_and_boot_mode(aws, make_image, recording_clients,
                                                                    architecture, boot_mode, ec2_architecture):
    """RegisterImage carries Architecture and BootMode from the manifest. moto 5.2.5 keeps neither
    (DescribeImages answers no Architecture and BootMode uefi whatever was sent), so the recorded
    request is what is asserted; botocore's model checked it on the way out (boto_session)."""
    image_dir, _ = make_image(architecture=architecture, boot_mode=boot_mode)
    clients = recording_clients()
    publish(image_dir, target(copy_regions=[]), clients=clients, poll_interval=0.01)
    (register,) = clients.kwargs("register_image")
    assert (register["Architecture"], register["BootMode"]) == (ec2_architecture, boot_mode)
    assert clients.count("copy_image") == 0


@pytest.mark.parametrize("boot_mode", ["legacy-bios", "uefi-preferred"])
def test_an_arm64_image_that_would_boot_bios_is_refused_before_any_call(aws, make_image, recording_clients, boot_mode):
    """AWS refuses arm64 + legacy-bios (moto accepts it): publish stops at the manifest, nothing is uploaded."""
    image_dir, _ = make_image(architecture="arm64", boot_mode=boot_mode)
    clients = recording_clients()
    with pytest.raises(ImagebuildError, match=rf"'boot_mode' '{boot_mode}' with architecture 'arm64': arm64 AMIs "
                                              "boot only under UEFI"):
        publish(image_dir, target(), clients=clients, poll_interval=0.01)
    assert clients.calls == []


def test_boot_modes_and_architectures_are_botocores(_botocore_loader):
    """What publish sends as BootMode and Architecture are values of botocore's ec2 model enums."""
    from imagebuild.aws.documents import ARCHITECTURES, BOOT_MODES

    shapes = _botocore_loader.load_service_model("ec2", "service-2")["shapes"]
    assert sorted(BOOT_MODES) == sorted(shapes["BootModeValues"]["enum"])
    assert set(ARCHITECTURES.values()) <= set(shapes["ArchitectureValues"]["enum"])
