"""The spec's AWS settings as the publish target the aws package works with."""
from __future__ import annotations

from imagebuild.aws.documents import PublishTarget
from imagebuild.spec.model import Aws, Spec


def target_of(spec: Spec) -> PublishTarget:
    """The spec's image.aws section as a publish target of the spec's family."""
    aws = spec.image.aws
    return PublishTarget(family=spec.name, **{name: getattr(aws, name) for name in Aws.model_fields})
