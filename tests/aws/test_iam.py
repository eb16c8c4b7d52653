"""The documented IAM policy per command (docs/iam/<command>.json) covers every API call the command makes
(recorded through botocore's events on moto), and the check can fail."""
from __future__ import annotations

from imagebuild.aws import PublishTarget
from imagebuild.aws.prune import prune
from imagebuild.aws.publish import publish
from imagebuild.pipeline import decide
from tests.aws import model_check
from tests.aws.fixtures import ec2_answer
from tests.support import spec_of

HOME, COPY = "eu-west-1", "us-west-2"
ORG = "arn:aws:organizations::123456789012:organization/o-abcdefghij"


def _target(**changes):
    values = dict(region=HOME, copy_regions=[COPY], share_with_accounts=["111122223333"],
                  share_with_organizations=[ORG],
                  ssm_parameter="/imagebuild/containerd-golden/latest", keep=1, ssm_all_regions=True,
                  deprecate_after_days=30, family="containerd-golden")
    return PublishTarget(**(values | changes))


def test_each_command_stays_within_its_documented_policy(aws, boto, boto_session, make_image, clients, api_calls,
                                                         iam_policies):
    # moto 5.2.5 lacks these two; AWS's answers (registered before the clients are made)
    never_launched = "<DescribeImageAttributeResponse><lastLaunchedTime/></DescribeImageAttributeResponse>"
    boto_session.events.register_first(  # moto lacks lastLaunchedTime; AWS's answer for a never launched AMI
        "before-send.ec2.DescribeImageAttribute",
        lambda request, **_: ec2_answer(200, never_launched) if "lastLaunchedTime" in str(request.body) else None)
    boto_session.events.register_first(
        "before-send.ec2.EnableImageDeprecation",
        lambda request, **_: ec2_answer(200, "<EnableImageDeprecationResponse><return>true</return>"
                                             "</EnableImageDeprecationResponse>"))
    for day in ("2026-11-25T00:00:00Z", "2026-11-26T00:00:00Z"):
        publish(make_image(build_time=day)[0], _target(), progress=lambda p: None, clients=clients, poll_interval=0.01)
    published = api_calls.actions()
    assert {"ebs:StartSnapshot", "ec2:CopyImage", "ec2:ModifySnapshotAttribute", "ec2:EnableImageDeprecation",
            "ssm:PutParameter"} <= published
    assert not model_check.uncovered(published, iam_policies["publish"]), published

    api_calls.clear()
    boto("autoscaling", HOME).create_launch_configuration(LaunchConfigurationName="lc", ImageId="ami-12345678",
                                                         InstanceType="t3.micro")
    decisions = prune(_target(), clients=clients, apply=True)
    assert any(d.result == "deleted" for d in decisions), [(d.ami_id, d.action, d.reason) for d in decisions]
    pruned = api_calls.actions()
    assert {"ec2:DeregisterImage", "ec2:DescribeImageReferences", "autoscaling:DescribeLaunchConfigurations"} <= pruned
    assert not model_check.uncovered(pruned, iam_policies["prune"]), pruned

    api_calls.clear()
    pinned = {"tarball": {"sha256": "aa" * 32}, "runc": {"sha256": "bb" * 32}}
    decide(spec_of({"containerd": {"install": pinned}, "image": {"aws": {"region": HOME, "copy_regions": [COPY]}}}),
           "sha256:" + "ab" * 32,
           clients=clients)
    assert api_calls.actions() and not model_check.uncovered(api_calls.actions(), iam_policies["prune"])


def test_a_call_outside_the_policy_is_reported():
    calls = {"ec2:CopyImage", "ebs:PutSnapshotBlock"}
    assert model_check.uncovered(calls, {"ec2:CopyImage"}) == {"ebs:PutSnapshotBlock"}
    assert model_check.uncovered({"ebs:PutSnapshotBlock"}, {"ebs:*"}) == set()


def test_policies_are_read_per_command_from_their_files(tmp_path):
    (tmp_path / "publish.json").write_text('{"Statement": [{"Effect": "Allow", "Action": ["ec2:A", "ebs:B"]}, '
                                           '{"Effect": "Deny", "Action": "ec2:C"}]}')
    (tmp_path / "prune.json").write_text('{"Statement": [{"Effect": "Allow", "Action": "ec2:D"}]}')
    assert model_check.documented_policies(tmp_path) == {"publish": {"ec2:A", "ebs:B"}, "prune": {"ec2:D"}}


def test_the_pipeline_policy_is_the_union_of_publish_and_prune(iam_policies):
    """pipeline runs publish and prune (and decides with prune's read calls): its policy is exactly both."""
    assert iam_policies["pipeline"] == iam_policies["publish"] | iam_policies["prune"]
    assert iam_policies["publish"] - iam_policies["prune"] and iam_policies["prune"] - iam_policies["publish"]
