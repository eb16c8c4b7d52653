"""The verify boot's AWS stand-in for registry headers read on the node (imagebuild.render.secret_refs).

A baked image reads those values at every boot (imagebuild-resolve-secrets.service) with the instance's role.
The EC2 verify boot gives it one: the lab IMDS (imagebuild.verify.imds) serves the stand-in's role credentials,
and a drop-in for the unit points the resolver at the stand-in's SSM and Secrets Manager (a server on the
host's 127.0.0.1, which the guest reaches as vm.EC2_HOST through QEMU's user network). Nothing of it is in the
image: the drop-in is written by this boot's user-data (bootcmd, in cloud-init's init stage, which runs before
network-online.target and so before the unit) into the throwaway overlay, followed by a daemon-reload so the
queued start of the unit runs with it.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass

from imagebuild import vm
from imagebuild.render.secret_refs import UNIT
from imagebuild.render.templating import render_template

DROPIN = f"/etc/systemd/system/{UNIT}.d/50-imagebuild-verify-lab.conf"


@dataclass(frozen=True)
class AwsStandIn:
    """SSM and Secrets Manager on the host's 127.0.0.1:*port*, and the role whose credentials the lab IMDS
    serves (AccessKeyId, SecretAccessKey, Token)."""

    port: int
    role: str
    credentials: tuple[str, str, str]
    region: str = "us-east-1"

    def guest_url(self) -> str:
        return f"http://{vm.EC2_HOST}:{self.port}"


def dropin(stand_in: AwsStandIn) -> str:
    """The unit's drop-in: the resolver's endpoints (as the AWS SDKs read them) at the stand-in."""
    url = stand_in.guest_url()
    return render_template("resolve-secrets-lab.conf.j2", environment={
        "AWS_ENDPOINT_URL_SSM": url, "AWS_ENDPOINT_URL_SECRETSMANAGER": url})


def bootcmd(stand_in: AwsStandIn) -> list[list[str]]:
    """cloud-init bootcmd that writes :func:`dropin` and reloads systemd, before the unit starts."""
    script = (f"install -d -m 0755 {shlex.quote(DROPIN.rsplit('/', 1)[0])} && "
              f"printf '%s' {shlex.quote(dropin(stand_in))} > {shlex.quote(DROPIN)} && systemctl daemon-reload")
    return [["sh", "-c", script]]
