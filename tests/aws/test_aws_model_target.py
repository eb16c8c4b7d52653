"""The publish target is the spec's image.aws section: one declaration, one set of rules.

The spec and `PublishTarget` used to validate twice and had drifted (the region pattern, the case of
the reserved `imagebuild:` tag prefix). Now `PublishTarget` is the model's `Aws` section plus the
family; these tests hold both to the same answers, and the region pattern to botocore's own data.
"""
from __future__ import annotations

import re

import pytest
from botocore.loaders import Loader

from imagebuild.aws.documents import PublishTarget
from imagebuild.aws.target import target_of
from imagebuild.errors import ImagebuildError
from imagebuild.spec import SpecError, fields, model
from tests.support import spec_of


def _botocore_regions() -> list[str]:
    partitions = Loader().load_data("endpoints")["partitions"]
    return [region for partition in partitions for region in partition["regions"]]


def test_every_region_botocore_knows_is_a_region_name():
    regions = _botocore_regions()
    assert len(regions) > 30 and "us-gov-west-1" in regions and "eusc-de-east-1" in regions
    pattern = re.compile(fields.AWS_REGION)
    assert [r for r in regions if not pattern.match(r)] == []
    # ... in the spec and in a publish target alike.
    for region in regions:
        assert spec_of({"image": {"aws": {"region": region}}}).image.aws.region == region
        assert PublishTarget(region=region).region == region


@pytest.mark.parametrize("region", ["mars-north-1a", "US-EAST-1", "us-east", "useast1", "us_east_1", "u-east-1"])
def test_what_is_no_region_is_refused_by_both(region):
    with pytest.raises(SpecError, match=rf"image.aws.region: got '{region}', expected an AWS region name"):
        spec_of({"image": {"aws": {"region": region}}})
    with pytest.raises(ImagebuildError, match=rf"publish target: region: got '{region}', expected an AWS region"):
        PublishTarget(region=region)


@pytest.mark.parametrize("key", ["aws:created-by", "AWS:x", "imagebuild:family", "ImageBuild:family", "IMAGEBUILD:x"])
def test_reserved_tag_prefixes_are_refused_in_any_case_by_both(key):
    # AWS reserves aws: in any case; imagebuild: keys are set by imagebuild (prune and pipeline read
    # them), and a key differing only in case would read as one of them to a person.
    with pytest.raises(SpecError, match="are reserved"):
        spec_of({"image": {"aws": {"tags": {key: "x"}}}})
    with pytest.raises(ImagebuildError, match=f"publish target: tags.{re.escape(key)}: keys starting with aws:"):
        PublishTarget(region="eu-west-1", tags={key: "x"})


def test_tags_that_only_look_alike_are_allowed():
    for key in ("team", "awsome", "imagebuilder", "my:aws:x"):
        assert spec_of({"image": {"aws": {"tags": {key: "x"}}}}).image.aws.tags == {key: "x"}
        assert PublishTarget(region="eu-west-1", tags={key: "x"}).tags == {key: "x"}


def test_the_target_is_the_spec_aws_section_and_its_family():
    assert issubclass(PublishTarget, model.Aws)
    spec = spec_of({"name": "golden-x", "image": {"aws": {
        "region": "eu-west-1", "copy_regions": ["us-west-2"], "share_with_accounts": ["111122223333"],
        "keep": 5, "tags": {"team": "platform"}, "encrypt_boot": True, "deprecate_after_days": 30,
        "kms_keys": {"eu-west-1": "arn:aws:kms:eu-west-1:111122223333:key/a",
                     "us-west-2": "arn:aws:kms:us-west-2:111122223333:key/b"}}}})
    target = target_of(spec)
    assert target.family == "golden-x"
    for name in model.Aws.model_fields:
        assert getattr(target, name) == getattr(spec.image.aws, name), name
    assert target.ssm_parameter == "/imagebuild/golden-x/latest"
    assert target.regions == ["eu-west-1", "us-west-2"]
    assert target.kms_key("us-west-2") == "arn:aws:kms:us-west-2:111122223333:key/b"


@pytest.mark.parametrize("changes, fragment", [
    ({"keep": 0}, "keep: got 0, expected an integer from 1 to 1000"),
    ({"share_with_accounts": ["12345"]}, "share_with_accounts[0]: got '12345', expected a 12-digit account id"),
    ({"copy_regions": ["eu-west-1"]}, "copy_regions: got 'eu-west-1', the home region"),
    ({"copy_regions": ["us-west-2", "us-west-2"]}, "copy_regions[1]: got 'us-west-2' twice"),
    ({"kms_keys": {"eu-west-1": "arn:aws:kms:eu-west-1:111122223333:key/a"}}, "kms_keys: set with encrypt_boot: false"),
    ({"encrypt_boot": True, "share_with_accounts": ["111122223333"]}, "share_with_accounts: got ['111122223333'] with"),
    ({"family": "Not A Family"}, "family: got 'Not A Family', expected lowercase letters"),
    ({"colour": "blue"}, "colour: unknown key"),
])
def test_a_bad_target_names_the_key_and_value(changes, fragment):
    with pytest.raises(ImagebuildError) as info:
        PublishTarget(**({"region": "eu-west-1"} | changes))
    assert str(info.value).startswith("publish target: ") and fragment in str(info.value)
    # The spec says the same under image.aws (family is the spec's name).
    if "family" not in changes and "colour" not in changes:
        with pytest.raises(SpecError) as spec_info:
            spec_of({"image": {"aws": {"region": "eu-west-1"} | changes}})
        assert f"image.aws.{fragment}" in str(spec_info.value)
