"""The spec's AWS settings as the publish target the aws package works with."""
from __future__ import annotations

from ..model import Spec
from .model import PublishTarget


def target_of(spec: Spec) -> PublishTarget:
    aws = spec.image.aws
    return PublishTarget(region=aws.region, copy_regions=list(aws.copy_regions), share_with=list(aws.share_with),
                         ssm_parameter=aws.ssm_parameter, keep=aws.keep, tags=dict(aws.tags), family=spec.name,
                         volume_size_gb=aws.volume_size_gb, encrypt_boot=aws.encrypt_boot, kms_keys=dict(aws.kms_keys),
                         share_with_organizations=list(aws.share_with_organizations),
                         share_with_ous=list(aws.share_with_ous), ssm_all_regions=aws.ssm_all_regions,
                         deprecate_after_days=aws.deprecate_after_days)
