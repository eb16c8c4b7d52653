"""Secrets by reference through a bake (issue 22, item 1): a spec with one SSM SecureString reference (read on the
node) and one `file` reference (read on the build host) bakes with Packer's qemu builder; the image holds the
resolver, its boot unit and the 0600 document with a placeholder, never the SSM value, while the file's value
is in the image in its 0600 hosts.toml (as a literal secret would be). The EC2 verify boot gives the image a
role (the lab IMDS serves the credentials of a role on a moto server, authentication on) and points the unit at
that server through a drop-in on the throwaway overlay: the unit writes the hosts.toml before containerd starts,
and the in-guest check finds it resolved, root's, 0600."""
from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest
import yaml

from imagebuild.build.bake import bake
from imagebuild.render import secret_refs
from imagebuild.spec import load, parse
from imagebuild.verify.boot import verify_image
from imagebuild.verify.node_secrets import AwsStandIn
from imagebuild.vm.disks import OfflineImage
from tests.aws.fixtures import IAM_DIR, moto_process

pytestmark = [pytest.mark.e2e, pytest.mark.extra]

SSM_VALUE = "ssm-b00t-t0ken-9f8e7d6c5b4a3f2e"
FILE_VALUE = "f1le-baked-t0ken-1a2b3c4d5e6f7a"
PARAMETER = "/team/registry-token"
ROLE = "imagebuild-node"
DOCKER = "/etc/containerd/certs.d/docker.io/hosts.toml"
QUAY = "/etc/containerd/certs.d/quay.io/hosts.toml"


@pytest.fixture(scope="module")
def stand_in():
    """A moto server holding the SecureString, and the credentials of a role with the documented node policy;
    authentication on once all is made (the signature and the role's permissions are checked)."""
    import boto3

    with moto_process() as url:
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                        region_name="us-east-1")
        iam, sts = session.client("iam", endpoint_url=url), session.client("sts", endpoint_url=url)
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                         "Principal": {"Service": "ec2.amazonaws.com"}}]}
        documented = json.loads((IAM_DIR / "node-registry-secrets.json").read_text())
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*", "Action": [
            s["Action"] for s in documented["Statement"]]}]}
        iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust))
        iam.put_role_policy(RoleName=ROLE, PolicyName="registry-secrets", PolicyDocument=json.dumps(policy))
        creds = sts.assume_role(RoleArn=f"arn:aws:iam::123456789012:role/{ROLE}",
                                RoleSessionName="i-verify")["Credentials"]
        session.client("ssm", endpoint_url=url).put_parameter(Name=PARAMETER, Value=SSM_VALUE, Type="SecureString")
        request = urllib.request.Request(f"{url}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        yield AwsStandIn(port=int(url.rsplit(":", 1)[1]), role=ROLE,
                         credentials=(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]))


def _spec(mirror, token_file):
    doc = yaml.safe_load(yaml.safe_dump(mirror(load(), "1.6").document))
    mirrors = {m["host"]: m for m in doc["config"]["registry"]["mirrors"]}
    mirrors["docker.io"]["endpoints"][0]["headers"] = {"Authorization": {"ssm": PARAMETER, "prefix": "Bearer "}}
    mirrors["quay.io"]["endpoints"][0]["headers"] = {"X-Registry-Token": {"file": str(token_file)}}
    return parse(yaml.safe_dump(doc), "e2e spec with secrets by reference")


def _in_raw(raw, needle: str) -> bool:
    return subprocess.run(["grep", "-q", "-a", "-F", needle, str(raw)]).returncode == 0


def test_a_node_reference_bakes_without_its_value_and_verifies_as_ec2(mirror, base_image, stand_in, tmp_path):
    token = tmp_path / "registry-token"
    token.write_text(FILE_VALUE + "\n")
    token.chmod(0o600)
    spec = _spec(mirror, token)
    started = time.monotonic()
    image = bake(spec, tmp_path / "output", base=str(base_image))
    baked_s = time.monotonic() - started
    packer_log = (image.parent / f"{spec.name}.packer.log").read_text()
    assert f"image build: {DOCKER} is not written now" in packer_log
    assert f"secret.not_in_image.{DOCKER}" in packer_log and SSM_VALUE not in packer_log
    records = {p.name: p.read_text() for p in image.parent.glob("*.json")}  # manifest, provenance, SBOM, inventory
    assert {"manifest.json", f"{image.stem}.provenance.json"} <= set(records)
    assert [name for name, text in records.items() if SSM_VALUE in text or FILE_VALUE in text] == []
    assert PARAMETER in records[f"{image.stem}.provenance.json"]  # the spec as written: the reference

    with OfflineImage(image, tmp_path) as disk:
        assert disk.read(DOCKER) is None  # written at each boot of a machine, never by the build
        document = json.loads(disk.read(secret_refs.refs_path("docker.io")) or b"{}")
        assert document["values"][0]["name"] == PARAMETER and "imagebuild-secret:" in document["template"]
        assert secret_refs.UNIT in (disk.listdir("/etc/systemd/system/multi-user.target.wants") or [])
        assert disk.read(secret_refs.UNIT_PATH) == secret_refs.unit(["docker.io"]).encode()
        assert FILE_VALUE.encode() in (disk.read(QUAY) or b"")  # read on the build host: baked in, 0600
        # the whole disk, every block: the SSM value is nowhere, the file's value is (in that hosts.toml)
        assert not _in_raw(disk.raw, SSM_VALUE)
        assert _in_raw(disk.raw, FILE_VALUE)

    started = time.monotonic()
    report = verify_image(image, secret_refs.stage(spec), log_dir=str(tmp_path), platform="ec2", aws=stand_in)
    verified_s = time.monotonic() - started
    by_name = {c["check"]: c for c in report["checks"]}
    assert report["passed"], [c for c in report["checks"] if not c["ok"]]
    resolved = by_name[f"secret.resolved.{DOCKER}"]
    assert resolved["ok"] and resolved["note"] == f"{secret_refs.UNIT}: ActiveState=active Result=success"
    assert by_name[f"secret.file.{DOCKER}"]["actual"] == "root 0600"
    assert by_name[f"secret.file.{QUAY}"]["actual"] == "root 0600"
    assert by_name["secret.readable"]["ok"] and by_name["ec2.imds_v2_only"]["ok"]
    assert by_name["cri.pull.docker.io"]["ok"] and by_name["cri.mirror.docker.io"]["ok"]
    serial = (tmp_path / f"{image.stem}.verify-ec2.serial.log").read_text(errors="replace")
    assert SSM_VALUE not in serial and FILE_VALUE not in serial
    print(f"\nmeasured: bake {baked_s:.0f}s, EC2 verify boot {verified_s:.0f}s")
