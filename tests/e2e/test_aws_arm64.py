"""Packer 1.6.6's amazon-ebs source of an arm64 spec, built for real against moto (the source's defaults
per image.os and image.architecture: tests/aws/test_aws_arm64.py)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.aws.test_aws_arm64 import DEBIAN, _template
from tests.e2e.test_packer_amazon import _client, _packer_env
from tests.support import spec_of

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def moto_debian(start_moto, tmp_path_factory):
    """A moto server whose only public AMIs are a Debian 13 amd64 and a Debian 13 arm64 one (moto's own
    Amazon Linux AMIs of each architecture, renamed and owned as Debian's are)."""
    from moto.utilities.utils import load_resource

    amis = load_resource("ec2/resources/amis.json")
    arm = next(a for a in amis if a.get("architecture") == "arm64" and a.get("platform") != "windows")
    x86 = next(a for a in amis if a.get("architecture") == "x86_64" and a.get("platform") != "windows")
    ours = [arm | {"name": "debian-13-arm64-20261121-1", "owner_id": DEBIAN, "image_location": "debian/arm64"},
            x86 | {"name": "debian-13-amd64-20261121-1", "owner_id": DEBIAN, "image_location": "debian/amd64"}]
    path = tmp_path_factory.mktemp("moto-amis") / "amis.json"
    path.write_text(json.dumps(ours))
    with start_moto({"MOTO_AMIS_PATH": str(path), "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}) as url:
        yield url, {"arm64": arm["ami_id"], "x86_64": x86["ami_id"]}


@pytest.mark.arm64
@pytest.mark.timeout(600)
def test_arm64_plumbing_build_starts_a_graviton_instance_from_the_arm64_ami(moto_debian, tmp_path):
    """Packer 1.6.6's amazon-ebs source of an arm64 spec, run against moto: with a name filter that
    matches both Debian 13 AMIs (debian-13-*), only the architecture filter picks the arm64 one, and
    the build instance is the Graviton default, t4g.small."""
    assert shutil.which("packer"), "packer is not installed"
    url, ami = moto_debian
    doc = {"name": "plumbing-arm64", "image": {"os": "debian-13", "architecture": "arm64", "aws": {
        "region": "us-east-1", "source_ami_name": "debian-13-*"}}, "containerd": {"version": "2.1.9"}}
    spec = spec_of(doc)
    _template(tmp_path, doc)
    proc = subprocess.run(
        ["packer", "build", "-color=false", "-only", f"{spec.name}.amazon-ebs.plumbing",
         "-var", f"aws_endpoint={url}", "-var", f"output_directory={tmp_path / 'out'}", "imagebuild.pkr.hcl"],
        cwd=tmp_path / "render" / "packer", env=_packer_env(tmp_path), capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert ami["arm64"] in log and ami["x86_64"] not in log, log[-4000:]
    ec2 = _client(url, "ec2", "us-east-1")
    launched = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert [(i["ImageId"], i["InstanceType"]) for i in launched] == [(ami["arm64"], "t4g.small")]
    made = re.findall(r"ami-[0-9a-f]+", log.split("Builds finished", 1)[-1])
    assert made and ami["arm64"] not in made
