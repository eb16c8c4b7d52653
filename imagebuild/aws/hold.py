"""An operator's hold: the tag `imagebuild:hold` on an AMI pins the family's SSM parameter to it.

A rollback is two commands: point the SSM parameter back at the older AMI, and tag that AMI
`imagebuild:hold=<why>` (any value but `false`; the value is shown as the reason). While the AMI the
parameter names is held, publish leaves the parameter where it is (and says so in publish.json and
its output), the pipeline does not count that as an unfinished publish to build again, and prune
keeps every held AMI. Removing the tag releases it: the next publish moves the parameter forward.
"""
from __future__ import annotations

from typing import Any

from imagebuild.aws.lookup import describe_image, ssm_parameter_value

HOLD_TAG = "imagebuild:hold"


def hold_of(image: dict[str, Any] | None) -> str | None:
    """Why *image* (a DescribeImages entry) is held, or None when it is not."""
    for tag in (image or {}).get("Tags", []):
        if tag.get("Key") == HOLD_TAG and tag.get("Value", "").strip().lower() != "false":
            return f"{HOLD_TAG}={tag.get('Value', '')}"
    return None


def held_parameter(ec2: Any, ssm: Any, name: str) -> tuple[str, str] | None:
    """(AMI id, reason) when SSM parameter *name* (of the region of *ec2* and *ssm*) names a held AMI."""
    value = ssm_parameter_value(ssm, name)
    if not value:
        return None
    why = hold_of(describe_image(ec2, value))
    return (value, why) if why else None
