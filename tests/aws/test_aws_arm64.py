"""arm64 (Graviton) on AWS: the amazon-ebs source's defaults per image.os and image.architecture, the
instance type rule (held to moto's DescribeInstanceTypes data). The plumbing build of an arm64 spec
against moto: tests/e2e/test_aws_arm64.py. The publish side (RegisterImage Architecture and BootMode) is in
test_aws_publish.py.
"""
from __future__ import annotations

import pytest

from imagebuild.spec.model import BUILD_INSTANCE_TYPES, EC2_ARCHITECTURES
from imagebuild.spec.rules import is_graviton
from tests.support import packer_validate, run_cli, write_spec

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
