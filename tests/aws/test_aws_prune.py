"""prune() against a real moto server: newest N kept, used AMIs protected, the rest deleted."""
from __future__ import annotations

import pytest

from imagebuild.aws import PublishTarget
from imagebuild.aws.prune import newest_first_key, format_table, prune
from imagebuild.aws.publish import publish


HOME = "eu-west-1"
COPY = "us-west-2"
FAMILY = "containerd-golden"
PARAM = "/imagebuild/containerd-golden/latest"


def target(**changes) -> PublishTarget:
    values = dict(region=HOME, copy_regions=[COPY], share_with=[], ssm_parameter=PARAM, keep=2,
                  tags={}, family=FAMILY)
    values.update(changes)
    return PublishTarget(**values)


def seed(ec2, region, name, build_time, family=FAMILY):
    """An AMI of *family* like publish makes, plus a snapshot tagged as its upload."""
    image_id = ec2.register_image(
        Name=name, RootDeviceName="/dev/xvda", Architecture="x86_64", VirtualizationType="hvm",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 1}}],
    )["ImageId"]
    ec2.create_tags(Resources=[image_id], Tags=[
        {"Key": "imagebuild:family", "Value": family},
        {"Key": "imagebuild:build-time", "Value": build_time},
    ])
    volume = ec2.create_volume(Size=1, AvailabilityZone=f"{region}a")["VolumeId"]
    upload = ec2.create_snapshot(VolumeId=volume, TagSpecifications=[{
        "ResourceType": "snapshot",
        "Tags": [{"Key": "imagebuild:image-id", "Value": image_id}, {"Key": "imagebuild:family", "Value": family}],
    }])["SnapshotId"]
    ec2.delete_volume(VolumeId=volume)
    (image,) = ec2.describe_images(ImageIds=[image_id])["Images"]
    mapped = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]]
    return image_id, {upload, *mapped}


def own_images(ec2):
    return {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}


def own_snapshots(ec2):
    return {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}


@pytest.fixture
def seeded(aws, boto):
    home, copy = boto("ec2", HOME), boto("ec2", COPY)
    ami, snaps = {}, {}
    for n in range(8):
        ami[f"a{n}"], snaps[f"a{n}"] = seed(home, HOME, f"{FAMILY}-2026010{n + 1}T000000Z", f"2026-01-0{n + 1}T00:00:00Z")
    for n in range(4):
        ami[f"b{n}"], snaps[f"b{n}"] = seed(copy, COPY, f"{FAMILY}-2026020{n + 1}T000000Z", f"2026-02-0{n + 1}T00:00:00Z")
    ami["other"], snaps["other"] = seed(home, HOME, "another-family-1", "2025-01-01T00:00:00Z", family="other")

    # instances: a4 running, a0 stopped, a5 only by a terminated one
    def run(ec2, image_id):
        return ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="t3.micro")["Instances"][0]["InstanceId"]
    run(home, ami["a4"])
    home.stop_instances(InstanceIds=[run(home, ami["a0"])])
    home.terminate_instances(InstanceIds=[run(home, ami["a5"])])

    # launch template: v1 a2 (old), v2 a3 (default), v3 a7 (latest)
    template = home.create_launch_template(LaunchTemplateName="nodes", LaunchTemplateData={"ImageId": ami["a2"]})
    template_id = template["LaunchTemplate"]["LaunchTemplateId"]
    home.create_launch_template_version(LaunchTemplateId=template_id, LaunchTemplateData={"ImageId": ami["a3"]})
    home.modify_launch_template(LaunchTemplateId=template_id, DefaultVersion="2")
    home.create_launch_template_version(LaunchTemplateId=template_id, LaunchTemplateData={"ImageId": ami["a7"]})

    # SSM parameter of the target names a1; in the copy region a template resolves b0 through SSM
    boto("ssm", HOME).put_parameter(Name=PARAM, Value=ami["a1"], Type="String", DataType="aws:ec2:image")
    boto("ssm", COPY).put_parameter(Name="/nodes/ami", Value=ami["b0"], Type="String", DataType="aws:ec2:image")
    copy.create_launch_template(LaunchTemplateName="nodes", LaunchTemplateData={"ImageId": "resolve:ssm:/nodes/ami"})
    return ami, snaps


EXPECTED = {
    "a7": "keep", "a6": "keep", "a5": "delete", "a4": "keep", "a3": "keep", "a2": "delete",
    "a1": "keep", "a0": "keep",
    "b3": "keep", "b2": "keep", "b1": "delete", "b0": "keep",
}


def test_dry_run_decides_and_changes_nothing(seeded, boto):
    ami, _ = seeded
    home, copy = boto("ec2", HOME), boto("ec2", COPY)
    before = (own_images(home), own_images(copy), own_snapshots(home), own_snapshots(copy))
    decisions = prune(target())
    assert (own_images(home), own_images(copy), own_snapshots(home), own_snapshots(copy)) == before

    by_id = {d.ami_id: d for d in decisions}
    names = {v: k for k, v in ami.items()}
    assert {names[d.ami_id]: d.action for d in decisions} == EXPECTED
    assert ami["other"] not in by_id
    # newest first per region, home first
    assert [names[d.ami_id] for d in decisions] == ["a7", "a6", "a5", "a4", "a3", "a2", "a1", "a0", "b3", "b2", "b1", "b0"]
    assert "newest 2" in by_id[ami["a7"]].reason
    assert "running instance" in by_id[ami["a4"]].reason
    assert "stopped instance" in by_id[ami["a0"]].reason
    assert "default version 2 of launch template nodes" in by_id[ami["a3"]].reason
    assert "SSM parameter" in by_id[ami["a1"]].reason
    assert "via /nodes/ami" in by_id[ami["b0"]].reason
    assert all(d.result == "" for d in decisions)

    table = format_table(decisions)
    assert table.splitlines()[0].split() == ["REGION", "AMI", "NAME", "BUILT", "ACTION", "REASON"]
    assert ami["a5"] in table and "12 AMIs: 9 kept, 3 to delete" in table


def test_apply_deletes_the_rest_with_their_snapshots(seeded, boto):
    ami, snaps = seeded
    home, copy = boto("ec2", HOME), boto("ec2", COPY)
    decisions = prune(target(), apply=True)
    deleted = {k for k, action in EXPECTED.items() if action == "delete"}
    kept = set(EXPECTED) - deleted
    assert {d.ami_id for d in decisions if d.result == "deleted"} == {ami[k] for k in deleted}

    images = own_images(home) | own_images(copy)
    snapshots = own_snapshots(home) | own_snapshots(copy)
    for key in deleted:
        assert ami[key] not in images
        assert not (snaps[key] & snapshots), f"snapshots of {key} left behind"
    for key in kept | {"other"}:
        assert ami[key] in images
        assert snaps[key] <= snapshots

    # a second run finds nothing more to delete
    again = prune(target(), apply=True)
    assert all(d.action == "keep" for d in again) and len(again) == len(kept)


def test_regions_argument_limits_the_scope(seeded, boto):
    decisions = prune(target(), regions=[COPY])
    assert {d.region for d in decisions} == {COPY}


def test_prune_after_real_publishes(aws, boto, make_image):
    """Two published builds, keep 1: the older AMI and the snapshot publish uploaded for it go."""
    publish_target = target(copy_regions=[], keep=1)
    old_dir, _ = make_image(build_time="2026-03-01T10:00:00Z")
    new_dir, _ = make_image(build_time="2026-03-02T10:00:00Z")
    old = publish(old_dir, publish_target, progress=lambda p: None, poll_interval=0.01)
    new = publish(new_dir, publish_target, progress=lambda p: None, poll_interval=0.01)
    ec2 = boto("ec2", HOME)
    assert boto("ssm").get_parameter(Name=PARAM)["Parameter"]["Value"] == new["images"][HOME]["id"]

    decisions = prune(publish_target, apply=True)
    assert [(d.ami_id, d.action, d.result) for d in decisions] == [
        (new["images"][HOME]["id"], "keep", ""),
        (old["images"][HOME]["id"], "delete", "deleted"),
    ]
    assert own_images(ec2) == {new["images"][HOME]["id"]}
    snapshots = own_snapshots(ec2)
    assert old["snapshot"]["id"] not in snapshots
    assert new["snapshot"]["id"] in snapshots


def test_sort_falls_back_to_creation_date():
    tagged = {"ImageId": "ami-1", "Tags": [{"Key": "imagebuild:build-time", "Value": "2026-01-01T00:00:00Z"}],
              "CreationDate": "2020-01-01T00:00:00.000Z"}
    untagged = {"ImageId": "ami-2", "CreationDate": "2026-06-01T00:00:00.000Z"}
    broken = {"ImageId": "ami-3", "Tags": [{"Key": "imagebuild:build-time", "Value": "yesterday"}]}
    ordered = sorted([tagged, broken, untagged], key=newest_first_key)
    assert [i["ImageId"] for i in ordered] == ["ami-2", "ami-1", "ami-3"]
