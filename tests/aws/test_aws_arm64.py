"""arm64 (Graviton) on AWS: the amazon-ebs source's defaults per image.os and image.architecture, the
instance type rule (held to moto's DescribeInstanceTypes data), and a Packer 1.6.6 plumbing build of
an arm64 spec against moto. The publish side (RegisterImage Architecture and BootMode) is in
test_aws_publish.py.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from imagebuild.spec.model import BUILD_INSTANCE_TYPES, EC2_ARCHITECTURES
from imagebuild.spec.rules import is_graviton
from tests.aws.test_packer_amazon import _client, _packer_env
from tests.support import packer_validate, run_cli, spec_of, write_spec

DEBIAN = "136693071363"   # Debian's AMI owner


def _template(tmp_path, doc: dict) -> str:
    out = tmp_path / "render"
    proc = run_cli("packer", str(write_spec(tmp_path, doc)), "-o", str(out))
    assert proc.returncode == 0, proc.stderr.decode()
    return (out / "packer" / "imagebuild.pkr.hcl").read_text()


def _ebs_source(template: str) -> str:
    start = template.index('source "amazon-ebs" "golden" {')
    return template[start:template.index("\n}\n", start)]


@pytest.mark.parametrize(("os_name", "arch", "containerd", "name", "ec2_arch", "instance_type"), [
    ("debian-12", "amd64", "1.6.20", "debian-12-amd64-*", "x86_64", "t3.small"),
    ("debian-13", "amd64", "1.7.24", "debian-13-amd64-*", "x86_64", "t3.small"),
    ("debian-12", "arm64", "1.6.20", "debian-12-arm64-*", "arm64", "t4g.small"),
    ("debian-13", "arm64", "2.1.9", "debian-13-arm64-*", "arm64", "t4g.small"),
])
def test_amazon_ebs_defaults_follow_os_and_architecture(tmp_path, os_name, arch, containerd, name, ec2_arch,
                                                        instance_type):
    template = _template(tmp_path, {"image": {"os": os_name, "architecture": arch},
                                    "containerd": {"version": containerd}})
    source = _ebs_source(template)
    assert f'instance_type = "{instance_type}"' in source
    assert f'name                  = "{name}"' in source
    assert f'architecture          = "{ec2_arch}"' in source
    assert f'owners      = ["{DEBIAN}"]' in source
    proc = packer_validate(tmp_path / "render" / "packer")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_set_source_ami_name_and_instance_type_win(tmp_path):
    source = _ebs_source(_template(tmp_path, {"image": {"architecture": "arm64", "aws": {
        "source_ami_name": "my-base-arm64-*", "instance_type": "c7g.large"}}}))
    assert 'instance_type = "c7g.large"' in source and 'name                  = "my-base-arm64-*"' in source
    assert 'architecture          = "arm64"' in source


def test_defaults_are_botocores_values(_botocore_loader):
    """The instance types and architectures the template names are values of botocore's ec2 model enums."""
    shapes = _botocore_loader.load_service_model("ec2", "service-2")["shapes"]
    assert set(BUILD_INSTANCE_TYPES.values()) <= set(shapes["InstanceType"]["enum"])
    assert set(EC2_ARCHITECTURES.values()) <= set(shapes["ArchitectureValues"]["enum"])


def test_graviton_rule_agrees_with_every_instance_type_moto_knows():
    """is_graviton (the spec rule's test, by family name) against DescribeInstanceTypes data as moto
    carries it (ProcessorInfo.SupportedArchitectures), for every non-Mac type: no disagreement."""
    from moto.utilities.utils import load_resource

    types = load_resource("ec2/resources/instance_types.json")
    checked = 0
    for name, info in types.items():
        archs = info["ProcessorInfo"]["SupportedArchitectures"]
        if any(a.endswith("_mac") for a in archs):
            continue
        assert is_graviton(name) == ("arm64" in archs), (name, archs)
        checked += 1
    assert checked > 1000 and is_graviton("t4g.small") and not is_graviton("t3.small")
    for name in ("m7i.large", "g4dn.xlarge", "c5n.large", "inf2.xlarge"):   # g families, n suffixes: x86
        assert not is_graviton(name) and "x86_64" in types[name]["ProcessorInfo"]["SupportedArchitectures"]


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


@pytest.mark.e2e
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
