"""An operator's rollback, held with the tag imagebuild:hold on the AMI: publish leaves the SSM
parameter there and says so, the pipeline does not rebuild to move it forward, prune keeps the AMI.
Without the tag, each of them behaves as before (the negative cases)."""
from __future__ import annotations

import pytest

from imagebuild.aws import PublishTarget
from imagebuild.aws.prune import prune
from imagebuild.aws.publish import publish

HOME = "eu-west-1"
PARAM = "/imagebuild/containerd-golden/latest"


def target(**changes) -> PublishTarget:
    values = dict(region=HOME, copy_regions=[], share_with_accounts=[], ssm_parameter=PARAM, keep=1, tags={},
                  family="containerd-golden")
    values.update(changes)
    return PublishTarget(**values)


def parameter(boto, region=HOME):
    return boto("ssm", region).get_parameter(Name=PARAM)["Parameter"]["Value"]


def roll_back(boto, image_id, hold="INC-42 rollback", region=HOME):
    """What the operator does: the parameter back to the older AMI, and (with *hold*) the tag on it."""
    boto("ssm", region).put_parameter(Name=PARAM, Value=image_id, Type="String", DataType="aws:ec2:image",
                                      Overwrite=True)
    if hold is not None:
        boto("ec2", region).create_tags(Resources=[image_id], Tags=[{"Key": "imagebuild:hold", "Value": hold}])


def published(make_image, clients, build_time, **changes):
    image_dir, _ = make_image(build_time=build_time)
    return image_dir, publish(image_dir, target(**changes), progress=lambda p: None, clients=clients,
                              poll_interval=0.01)


def test_publish_leaves_a_held_parameter_where_the_operator_put_it(aws, boto, make_image, clients, capsys):
    _, old = published(make_image, clients, "2026-06-01T00:00:00Z")
    _, bad = published(make_image, clients, "2026-06-02T00:00:00Z")
    old_id, bad_id = old["images"][HOME]["id"], bad["images"][HOME]["id"]
    roll_back(boto, old_id)

    new_dir, new = published(make_image, clients, "2026-06-03T00:00:00Z")
    assert parameter(boto) == old_id, "a held parameter was moved forward"
    assert new["complete"] is True and new["images"][HOME]["id"] not in (old_id, bad_id)
    assert new["ssm_held"] == {HOME: {"image": old_id, "reason": "imagebuild:hold=INC-42 rollback"}}
    assert f"{HOME}: SSM parameter {PARAM} stays at {old_id}: held (imagebuild:hold=INC-42 rollback)" \
        in capsys.readouterr().err

    # the operator releases the hold: the next run (a rerun of the same publish) moves it forward
    boto("ec2").delete_tags(Resources=[old_id], Tags=[{"Key": "imagebuild:hold"}])
    again = publish(new_dir, target(), progress=lambda p: None, clients=clients, poll_interval=0.01)
    assert parameter(boto) == new["images"][HOME]["id"] and again["ssm_held"] == {}


@pytest.mark.parametrize("hold", [None, "false"])
def test_without_a_hold_the_parameter_moves_forward(aws, boto, make_image, clients, hold):
    """Negative: a rollback without the tag (or with imagebuild:hold=false) holds nothing."""
    _, old = published(make_image, clients, "2026-06-01T00:00:00Z")
    published(make_image, clients, "2026-06-02T00:00:00Z")
    roll_back(boto, old["images"][HOME]["id"], hold=hold)
    _, new = published(make_image, clients, "2026-06-03T00:00:00Z")
    assert parameter(boto) == new["images"][HOME]["id"] and not new.get("ssm_held")


def test_a_hold_in_a_copy_region_holds_that_regions_parameter_only(aws, boto, make_image, clients):
    copy = "us-west-2"
    _, old = published(make_image, clients, "2026-06-01T00:00:00Z", copy_regions=[copy], ssm_all_regions=True)
    roll_back(boto, old["images"][copy]["id"], region=copy)
    _, new = published(make_image, clients, "2026-06-02T00:00:00Z", copy_regions=[copy], ssm_all_regions=True)
    assert parameter(boto, copy) == old["images"][copy]["id"]
    assert parameter(boto, HOME) == new["images"][HOME]["id"]
    assert set(new["ssm_held"]) == {copy}


def test_prune_keeps_a_held_ami(aws, boto, make_image, clients):
    _, old = published(make_image, clients, "2026-06-01T00:00:00Z")
    _, middle = published(make_image, clients, "2026-06-02T00:00:00Z")
    published(make_image, clients, "2026-06-03T00:00:00Z")
    old_id, middle_id = old["images"][HOME]["id"], middle["images"][HOME]["id"]
    boto("ec2").create_tags(Resources=[old_id], Tags=[{"Key": "imagebuild:hold", "Value": "keep for audit"}])
    decisions = {d.ami_id: d for d in prune(target(), clients=clients)}
    assert decisions[old_id].action == "keep"
    assert "held by an operator (imagebuild:hold=keep for audit)" in decisions[old_id].reason
    assert decisions[middle_id].action == "delete"  # negative: an AMI without the tag goes
