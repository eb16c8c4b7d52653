"""The request checker used by every moto test can fail: AWS's limits that moto does not enforce."""
from __future__ import annotations

import pytest

from tests.aws import model_check


def test_a_too_long_start_snapshot_tag_is_caught_though_moto_accepts_it(boto_session, boto, api_calls):
    too_long = [{"Key": "k", "Value": "v" * 256}]
    plain = boto("ebs").start_snapshot(VolumeSize=1, Tags=too_long, Timeout=60)  # moto says yes
    assert plain["SnapshotId"]
    too_long_message = r"Tags\[0\]\.Value: 256 characters, the model's maximum is 255"
    with pytest.raises(model_check.ModelViolation, match=too_long_message):
        boto_session.client("ebs", region_name="eu-west-1").start_snapshot(VolumeSize=1, Tags=too_long)
    assert api_calls.actions() == {"ebs:StartSnapshot"}


def test_enum_pattern_and_required_are_checked(boto_session):
    ec2 = boto_session.client("ec2", region_name="eu-west-1")
    with pytest.raises(model_check.ModelViolation, match=r"ImdsSupport: 'v3' is not one of"):
        ec2.register_image(Name="x", ImdsSupport="v3")
    ebs = boto_session.client("ebs", region_name="eu-west-1")
    with pytest.raises(model_check.ModelViolation, match=r"KmsKeyArn: 'alias/mine' does not match"):
        ebs.start_snapshot(VolumeSize=1, Encrypted=True, KmsKeyArn="alias/mine")


def test_violations_names_every_problem():
    import botocore.session

    model = botocore.session.get_session().get_service_model("ebs").operation_model("StartSnapshot")
    problems = model_check.violations(model.input_shape, {"Tags": [{"Key": "k" * 128, "Value": ""}],
                                                          "Timeout": 0}, "StartSnapshot")
    assert any("VolumeSize: required" in p for p in problems)
    assert any("Key: 128 characters" in p for p in problems)
    assert any("Timeout: 0 breaks min" in p for p in problems)
