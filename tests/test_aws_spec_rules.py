"""The spec's AWS rules that AWS's own data decides (imagebuild.spec.aws_rules): what they accept, and
that their data is botocore's. The refusals are rows of tests/test_bad_specs.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagebuild.spec import aws_rules
from tests.support import spec_of

KEY = "arn:{partition}:kms:{region}:123456789012:key/abcd"


def test_regions_are_botocores_partition_data():
    import botocore

    data = json.loads((Path(botocore.__file__).parent / "data" / "partitions.json").read_text())
    known = aws_rules.partitions()
    assert set(known) == {p["id"] for p in data["partitions"]}
    assert "eu-west-1" in known["aws"] and "cn-north-1" in known["aws-cn"]
    assert "us-gov-west-1" in known["aws-us-gov"]
    assert not any(r.endswith("-global") for regions in known.values() for r in regions)  # pseudo-regions
    assert aws_rules.partition_of("eu-west-1") == "aws" and aws_rules.partition_of("eu-wset-1") is None


@pytest.mark.parametrize("aws", [
    {"region": "eu-west-1", "copy_regions": ["us-west-2", "ap-southeast-2"]},
    {"region": "cn-north-1", "copy_regions": ["cn-northwest-1"], "encrypt_boot": True,
     "kms_keys": {"cn-north-1": KEY.format(partition="aws-cn", region="cn-north-1"),
                  "cn-northwest-1": KEY.format(partition="aws-cn", region="cn-northwest-1")}},
    {"region": "us-gov-west-1", "share_with_organizations": [
        "arn:aws-us-gov:organizations::123456789012:organization/o-abcdefghij"]},
    {"region": "eu-west-1", "encrypt_boot": True, "kms_keys": {"eu-west-1": KEY.format(partition="aws",
                                                                                          region="eu-west-1")},
     "share_with_organizations": ["arn:aws:organizations::123456789012:organization/o-abcdefghij"]},
    {"ssm_parameter": "/awesome/latest"},   # "awe": not aws
    {"ssm_parameter": "/images/aws/latest"},  # aws deeper in the path is allowed
    {"ssm_parameter": "/a" * 15},
])
def test_what_aws_accepts_is_accepted(aws):
    assert spec_of({"image": {"aws": aws}}).image.aws.region == aws.get("region", "us-east-1")


def test_a_root_volume_as_big_as_the_disk_is_accepted():
    spec = spec_of({"image": {"disk_size_gb": 20, "aws": {"volume_size_gb": 20}}})
    assert (spec.image.disk_size_gb, spec.image.aws.volume_size_gb) == (20, 20)


def test_the_ssm_rule_is_the_one_botocores_model_documents():
    """If AWS's documented naming constraint changes, this says so."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("ssm")
    text = model.operation_model("PutParameter").input_shape.members["Name"].documentation
    assert "can't be prefixed with \"<code>aws</code>\" or \"<code>ssm</code>\" (case-insensitive)" in text
    assert "maximum depth of fifteen levels" in text
    assert aws_rules.SSM_RESERVED_PREFIXES == ("aws", "ssm") and aws_rules.SSM_MAX_LEVELS == 15


def test_a_publish_target_obeys_the_same_rules():
    from imagebuild.aws.documents import PublishTarget
    from imagebuild.errors import ImagebuildError

    with pytest.raises(ImagebuildError, match=r"publish target: copy_regions\[0\]: got 'cn-north-1' \(partition "
                                              r"aws-cn\)"):
        PublishTarget(region="eu-west-1", copy_regions=["cn-north-1"])
    with pytest.raises(ImagebuildError, match="ssm_parameter: got '/ssm/x': AWS reserves"):
        PublishTarget(region="eu-west-1", ssm_parameter="/ssm/x")
