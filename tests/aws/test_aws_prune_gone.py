"""prune where what names an AMI is gone, or the AMI is hidden: a deleted launch template (or pinned
version) an Auto Scaling group still names, and disabled AMIs DescribeImages leaves out by default."""
from __future__ import annotations

from imagebuild.aws import PublishTarget
from imagebuild.aws.prune import prune

HOME = "eu-west-1"
FAMILY = "containerd-golden"


def target(**changes) -> PublishTarget:
    values = dict(region=HOME, copy_regions=[], share_with_accounts=[], ssm_parameter="", keep=1, tags={},
                  family=FAMILY)
    values.update(changes)
    return PublishTarget(**values)


def seed(ec2, n, family=FAMILY):
    """AMI number *n* of the family as publish leaves it: tagged, its snapshot tagged with its id."""
    image_id = ec2.register_image(
        Name=f"{family}-2026050{n + 1}T000000Z", RootDeviceName="/dev/xvda", Architecture="x86_64",
        VirtualizationType="hvm", BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 1}}],
    )["ImageId"]
    built = f"2026-05-0{n + 1}T00:00:00Z"
    ec2.create_tags(Resources=[image_id], Tags=[{"Key": "imagebuild:family", "Value": family},
                                                {"Key": "imagebuild:build-time", "Value": built}])
    (image,) = ec2.describe_images(ImageIds=[image_id])["Images"]
    snapshots = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]]
    ec2.create_tags(Resources=snapshots, Tags=[{"Key": "imagebuild:family", "Value": family},
                                              {"Key": "imagebuild:image-id", "Value": image_id}])
    return image_id, set(snapshots)


def group(autoscaling, name, template):
    autoscaling.create_auto_scaling_group(AutoScalingGroupName=name, MinSize=0, MaxSize=0,
                                          AvailabilityZones=[f"{HOME}a"], LaunchTemplate=template)


def test_an_asg_naming_a_deleted_launch_template_or_version_does_not_stop_prune(aws, boto, clients, capsys):
    """moto answers as AWS does: InvalidLaunchTemplateId.NotFound for a deleted template and
    InvalidLaunchTemplateId.VersionNotFound for a deleted version. A reference to nothing keeps no
    AMI; prune says so and goes on."""
    home, autoscaling = boto("ec2", HOME), boto("autoscaling", HOME)
    n0, n1, n2, n3, n4 = (seed(home, n)[0] for n in range(5))
    gone = home.create_launch_template(LaunchTemplateName="gone", LaunchTemplateData={"ImageId": n1})
    gone_id = gone["LaunchTemplate"]["LaunchTemplateId"]
    group(autoscaling, "by-id", {"LaunchTemplateId": gone_id, "Version": "1"})
    group(autoscaling, "by-name", {"LaunchTemplateName": "gone", "Version": "$Default"})
    home.delete_launch_template(LaunchTemplateId=gone_id)
    pinned = home.create_launch_template(LaunchTemplateName="pinned", LaunchTemplateData={"ImageId": n2})
    pinned_id = pinned["LaunchTemplate"]["LaunchTemplateId"]
    home.create_launch_template_version(LaunchTemplateId=pinned_id, LaunchTemplateData={"ImageId": n0})
    group(autoscaling, "pinned-v2", {"LaunchTemplateId": pinned_id, "Version": "2"})
    home.delete_launch_template_versions(LaunchTemplateId=pinned_id, Versions=["2"])

    decisions = {d.ami_id: d for d in prune(target(), clients=clients, apply=True)}
    assert {k: decisions[v].action for k, v in dict(n0=n0, n1=n1, n2=n2, n3=n3, n4=n4).items()} == {
        "n0": "delete", "n1": "delete", "n2": "keep", "n3": "delete", "n4": "keep"}
    assert "version 1 of launch template pinned" in decisions[n2].reason  # the version that exists
    assert all(decisions[v].result == "deleted" for v in (n0, n1, n3))
    err = capsys.readouterr().err
    assert (f"{HOME}: Auto Scaling group by-id names launch template {gone_id} version 1, which no longer exists "
            "(InvalidLaunchTemplateId.NotFound); it keeps no AMI") in err
    # created by name, the group holds the template's id as well (as AWS's does), and prune asks by id
    assert (f"Auto Scaling group by-name names launch template {gone_id} version $Default, which no longer "
            "exists") in err
    assert (f"Auto Scaling group pinned-v2 names launch template {pinned_id} version 2, which no longer exists "
            "(InvalidLaunchTemplateId.VersionNotFound)") in err


def test_any_other_error_of_the_lookup_still_stops_prune(aws, boto, boto_session, clients):
    """Negative: only "it no longer exists" is resolved; a throttle or a denial still stops prune."""
    import pytest

    from imagebuild.errors import ImagebuildError
    from tests.aws.fixtures import ec2_answer

    home, autoscaling = boto("ec2", HOME), boto("autoscaling", HOME)
    n0, _ = seed(home, 0)
    template = home.create_launch_template(LaunchTemplateName="t", LaunchTemplateData={"ImageId": n0})
    group(autoscaling, "g", {"LaunchTemplateId": template["LaunchTemplate"]["LaunchTemplateId"], "Version": "1"})
    denied = ("<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized"
              "</Message></Error></Errors><RequestID>r</RequestID></Response>")

    boto_session.events.register_first("before-send.ec2.DescribeLaunchTemplateVersions",
                                       lambda request, **_: ec2_answer(403, denied))
    with pytest.raises(ImagebuildError, match="prune stopped: UnauthorizedOperation"):
        prune(target(), clients=clients, apply=True)
    assert n0 in {i["ImageId"] for i in home.describe_images(Owners=["self"])["Images"]}


class HidesDisabled:
    """DescribeImages as AWS answers it: disabled AMIs are left out unless IncludeDisabled is true,
    even for their owner (moto lists them always). The request is model-checked as usual; the answer
    is filtered in botocore's parsed shape."""

    def __init__(self, session):
        session.events.register("before-parameter-build.ec2.DescribeImages", self.asked)
        session.events.register("after-call.ec2.DescribeImages", self.answer)

    @staticmethod
    def asked(params, context, **_):
        context["include_disabled"] = params.get("IncludeDisabled") is True

    @staticmethod
    def answer(parsed, context, **_):
        if not context.get("include_disabled"):
            parsed["Images"] = [i for i in parsed.get("Images", []) if i.get("State") != "disabled"]


def test_snapshots_of_a_disabled_ami_are_not_orphans(aws, boto, boto_session, clients, api_calls):
    home = boto("ec2", HOME)
    (n0, snaps0), (n1, _), (n2, _) = (seed(home, n) for n in range(3))
    home.disable_image(ImageId=n0)
    HidesDisabled(boto_session)
    decisions = prune(target(), clients=clients, apply=True)
    assert not [d for d in decisions if d.kind == "snapshot"], [d.reason for d in decisions]
    assert snaps0 <= {s["SnapshotId"] for s in home.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    (state,) = [i["State"] for i in home.describe_images(ImageIds=[n0])["Images"]]
    assert state == "disabled"
    assert any(p.get("IncludeDisabled") is True for p in api_calls.params("ec2:DescribeImages"))


def test_snapshots_of_a_deregistered_ami_are_still_swept(aws, boto, boto_session, clients):
    """Negative: IncludeDisabled shows disabled AMIs, not deregistered ones."""
    home = boto("ec2", HOME)
    (n0, snaps0), _, _ = (seed(home, n) for n in range(3))
    HidesDisabled(boto_session)
    home.deregister_image(ImageId=n0)
    decisions = prune(target(), clients=clients, apply=True)
    assert {s for d in decisions if d.kind == "snapshot" for s in d.snapshot_ids} == snaps0
    assert not snaps0 & {s["SnapshotId"] for s in home.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
