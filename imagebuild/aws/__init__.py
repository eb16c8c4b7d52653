"""Publishing verified images to AWS as AMIs, and pruning old ones.

`imagebuild.aws.publish.publish` uploads a verified qcow2 through the EBS direct APIs, registers
an AMI, copies it to other regions, shares it and points an SSM parameter at it;
`imagebuild.aws.prune.prune` removes a family's old AMIs that nothing uses. boto3 is imported
inside the functions that talk to AWS, never on import. Credentials come from boto3's own chain
(environment, profile); an endpoint override goes through boto3's own `AWS_ENDPOINT_URL` support.

The functions are not re-exported here: a package attribute named `publish` would shadow the
`publish` submodule.
"""
from imagebuild.aws.documents import Decision, Manifest, PublishTarget, VerifyResult

__all__ = ["Decision", "Manifest", "PublishTarget", "VerifyResult"]
