"""The spec's AWS settings as the publish target the aws package works with."""
from __future__ import annotations

from ..spec import Spec
from .model import PublishTarget


def target_of(spec: Spec) -> PublishTarget:
    aws = spec.image.aws
    return PublishTarget(region=aws.region, copy_regions=list(aws.copy_regions), share_with=list(aws.share_with),
                         ssm_parameter=aws.ssm_parameter, keep=aws.keep, tags=dict(aws.tags), family=spec.name)
