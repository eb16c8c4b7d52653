"""The spec's SSM name rule agrees with the server: what the rule refuses PutParameter refuses, what it
accepts PutParameter takes (moto models SSM's reserved prefixes)."""
from __future__ import annotations

import pytest

from imagebuild.spec.aws_rules import ssm_name_problem

NAMES = ["/aws/service/imagebuild/latest", "/AWS/x", "/ssm/x", "/SsmImages/latest", "/awsome/latest",
         "/imagebuild/golden/latest", "/awesome/latest", "/images/aws/latest", "/ss/m"]


@pytest.mark.parametrize("name", NAMES)
def test_the_rule_and_put_parameter_agree(aws, boto, name):
    from botocore.exceptions import ClientError

    refused_by_rule = ssm_name_problem(name) is not None
    try:
        boto("ssm").put_parameter(Name=name, Value="ami-12345678", Type="String")
        refused_by_server = False
    except ClientError as exc:
        assert exc.response["Error"]["Code"] in ("ValidationException", "AccessDeniedException"), exc
        refused_by_server = True
    assert refused_by_rule == refused_by_server, name


def test_both_kinds_are_tried():
    assert {ssm_name_problem(name) is None for name in NAMES} == {True, False}
