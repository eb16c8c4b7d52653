"""The nightly pipeline for real, against moto: bake (Packer qemu), boot and verify as EC2 (QEMU), publish
(EBS direct APIs, register, copy, share, SSM), prune; then a second night with the same inputs.

The spec is the built-in default with its containerd and runc downloads served from 127.0.0.1 (the e2e
suite's mirror and golden_spec fixtures, tests/e2e/conftest.py: upstream's builds, so no lab content that
publish would refuse), published to moto's us-east-1 with one copy region and one account to share with. The
moto server and boto3 fixtures are tests/aws/fixtures.py's.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import time

import pytest
import yaml

from imagebuild.build import baseimage
from imagebuild.build.bake import inputs_hash
from imagebuild.digest import sha256_file
from imagebuild.pipeline import PUBLISHED, UNCHANGED, run_pipeline
from imagebuild.spec import parse

pytestmark = pytest.mark.e2e

HOME, COPY = "us-east-1", "us-west-2"
ACCOUNT = "111122223333"
BLOCK = 512 * 1024
# the aws fixture points IMAGEBUILD_CACHE at an empty directory; this test wants the real cache
# (the base image, the test OCI image, the Debian packages) as the rest of the e2e suite uses it
_CACHE = os.environ.get("IMAGEBUILD_CACHE")


def tags_of(resource):
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def snapshot_blocks(ebs, snapshot_id) -> dict[int, str]:
    """Block index -> block token of every written block of the snapshot."""
    blocks, token = {}, None
    while True:
        page = ebs.list_snapshot_blocks(SnapshotId=snapshot_id, **({"NextToken": token} if token else {}))
        blocks |= {b["BlockIndex"]: b["BlockToken"] for b in page["Blocks"]}
        token = page.get("NextToken")
        if not token:
            return blocks


@pytest.fixture
def publish_spec(golden_spec):
    doc = yaml.safe_load(yaml.safe_dump(golden_spec.document))
    doc["image"]["aws"] |= {"region": HOME, "copy_regions": [COPY], "share_with_accounts": [ACCOUNT],
                            "encrypt_boot": False}
    # The worker profile's apt install in the guest (60-100 s under TCG) is proved by the golden
    # bake and the EC2 user-data boot; this test is about publishing.
    doc["system"]["profile"] = "none"
    return parse(yaml.safe_dump(doc), "pipeline e2e spec")


# make test-extra (a bake, an EC2 boot and a publish: ~3 min): make test's budget. make test proves the
# pipeline's steps against moto with small images (tests/aws/test_pipeline.py), the bake and the EC2 verify of
# the golden image (tests/e2e/test_bake_verify.py), and publish's refusals and records (tests/aws).
@pytest.mark.extra
@pytest.mark.timeout(2400)
def test_pipeline_publishes_a_verified_image_then_skips(aws, boto, clients, publish_spec, base_image, monkeypatch,
                                                        tmp_path):
    """*clients*: imagebuild's factory on the model-checked session (tests/aws/fixtures.py), IAM-recorded too."""
    if _CACHE:
        monkeypatch.setenv("IMAGEBUILD_CACHE", _CACHE)
    else:
        monkeypatch.delenv("IMAGEBUILD_CACHE", raising=False)
    spec = publish_spec
    work = tmp_path / "work"

    started = time.monotonic()
    assert run_pipeline(spec, work=work, base=str(base_image), clients=clients) == PUBLISHED
    first_s = time.monotonic() - started

    # --- the run manifest: every step ok, with its duration; the AMI of each region
    run = json.loads((work / "last-run.json").read_text())
    assert run["result"] == "published" and run["exit_code"] == 0
    steps = {s["step"]: s for s in run["steps"]}
    for name in ("decide", "render", "bake", "verify", "publish", "prune"):
        assert steps[name]["status"] == "ok", steps[name]
        assert isinstance(steps[name]["duration_s"], (int, float)) and steps[name]["duration_s"] >= 0
    assert steps["decide"]["build"] is True and "no AMI" in steps["decide"]["reason"]
    amis = steps["publish"]["amis"]
    assert set(amis) == {HOME, COPY}
    assert steps["prune"]["kept"] == 2 and steps["prune"]["deleted"] == 0
    print("step durations (s):", {name: steps[name]["duration_s"] for name in steps}, f"total {first_s:.0f}")

    # --- the published image is the very file the verify passed
    image_dir = work / "image"
    manifest = json.loads((image_dir / "manifest.json").read_text())
    image = image_dir / manifest["image"]
    verify = json.loads((image_dir / "verify-ec2.json").read_text())   # the AMI's boot: as EC2 boots it
    assert verify["passed"] is True and verify["platform"] == "ec2"
    assert not (image_dir / "verify.json").exists()                    # one boot: no NoCloud verify
    assert steps["verify"]["report"] == str(image_dir / "verify-ec2.json") and steps["verify"]["platform"] == "ec2"
    assert verify["image_sha256"] == manifest["sha256"] == sha256_file(image) == steps["verify"]["image_sha256"]
    wanted = inputs_hash(spec, baseimage.checksum(base_image))
    assert manifest["inputs_hash"] == wanted == run["inputs_hash"]

    # --- the AMIs in moto: tags, sharing, the SSM parameter
    for region, image_id in amis.items():
        ec2 = boto("ec2", region)
        found = ec2.describe_images(ImageIds=[image_id])["Images"][0]
        assert found["State"] == "available"
        tags = tags_of(found)
        assert tags["imagebuild:family"] == spec.name
        assert tags["imagebuild:inputs-hash"] == wanted
        assert tags["imagebuild:spec-hash"] == spec.spec_hash
        assert tags["imagebuild:image-sha256"] == manifest["sha256"]
        permissions = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
        assert {"UserId": ACCOUNT} in permissions["LaunchPermissions"]
    parameter = boto("ssm", HOME).get_parameter(Name=spec.image.aws.ssm_parameter)["Parameter"]
    assert parameter["Value"] == amis[HOME]

    # --- the snapshot reads back as the raw image, block for block (a sample of the written ones)
    record = json.loads((image_dir / "publish.json").read_text())
    snapshot_id = record["snapshot"]["id"]
    ebs = boto("ebs", HOME)
    written = snapshot_blocks(ebs, snapshot_id)
    assert len(written) == record["snapshot"]["blocks_written"] > 100
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(image), str(raw)], check=True)
    assert raw.stat().st_size == manifest["virtual_size"]
    rng = random.Random(0)
    indices = sorted(written)
    sample = sorted({indices[0], indices[-1], *rng.sample(indices, 40)})
    unwritten = sorted(set(rng.sample(range(raw.stat().st_size // BLOCK), 200)) - set(written))[:40]
    with open(raw, "rb") as disk:
        for index in sample:
            got = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=index, BlockToken=written[index])
            data = got["BlockData"].read()
            assert data == os.pread(disk.fileno(), BLOCK, index * BLOCK), f"block {index} differs"
            assert data.count(0) != len(data)
        for index in unwritten:  # what was not sent must really be zeros
            assert os.pread(disk.fileno(), BLOCK, index * BLOCK).count(0) == BLOCK, f"block {index} was skipped"
    raw.unlink()

    # --- the next night, same inputs: nothing to do, quickly
    before = sha256_file(image)
    started = time.monotonic()
    assert run_pipeline(spec, work=work, base=str(base_image), clients=clients) == UNCHANGED
    second_s = time.monotonic() - started
    assert second_s < 60, f"an unchanged run took {second_s:.0f} s"
    again = json.loads((work / "last-run.json").read_text())
    assert again["result"] == "unchanged" and again["steps"][0]["newest_ami"]["id"] == amis[HOME]
    assert [s["status"] for s in again["steps"][1:]] == ["skipped"] * 5
    assert sha256_file(image) == before and len(list(work.glob("run-*.json"))) == 2
    print(f"second run (unchanged): {second_s:.1f} s")
