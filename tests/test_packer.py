"""The Packer directory (`imagebuild packer -o DIR`), checked by the real Packer 1.6.6:
`packer validate` (offline, even for amazon-ebs), `packer inspect` and `packer console`.
"""
from __future__ import annotations

import re
import subprocess

import pytest

from imagebuild import render
from imagebuild.spec import BaseImage
from tests.support import (
    PACKAGE_VERSIONS,
    ZERO_CHECKSUM,
    packer,
    packer_console,
    packer_validate,
    run_cli,
    spec_of,
    write_spec,
)

SPECS = {
    "default": {},
    "containerd-2.1": {"containerd": {"version": "2.1.9"}},
    "package": {"containerd": {"install": {"method": "package", "package": {"version": PACKAGE_VERSIONS["1.6"]}}}},
    "aws-encrypted": {"image": {"aws": {"encrypt_boot": True, "region": "ap-southeast-2"}}},
    "aws-tuned": {"name": "gpu-workers", "image": {
        "disk_size_gb": 20, "accelerator": "kvm", "hygiene": False, "aws": {
            "region": "eu-west-1", "copy_regions": ["eu-central-1", "us-east-2"],
            "share_with_accounts": ["123456789012"],
            "tags": {"Team": "platform", "cost-center": "cc:42/infra", "Environment": "prod"},
            "source_ami_name": "debian-12-amd64-2024*", "source_ami_owners": ["136693071363", "self"],
            "instance_type": "m6i.large", "volume_size_gb": 30, "encrypt_boot": False, "keep": 5,
            "ssm_parameter": "/golden/gpu-workers"}}},
}


def _packer_dir(tmp_path, doc):
    proc = run_cli("packer", str(write_spec(tmp_path, doc)), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == str(tmp_path / "out")
    return tmp_path / "out" / "packer"


@pytest.mark.parametrize("name", SPECS)
def test_packer_validate_accepts_the_template(tmp_path, name):
    packer_dir = _packer_dir(tmp_path, SPECS[name])
    for seed in ("user-data", "meta-data", "id_ed25519", "id_ed25519.pub"):
        assert (packer_dir / "seed" / seed).is_file()
    proc = packer_validate(packer_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rror" not in proc.stdout + proc.stderr
    template = (packer_dir / "imagebuild.pkr.hcl").read_text()
    assert "required_plugins" not in template  # Packer 1.6 does not know it


def test_inspect_shows_the_build_and_variables(tmp_path):
    spec = spec_of(SPECS["aws-tuned"])
    packer_dir = _packer_dir(tmp_path, SPECS["aws-tuned"])
    proc = packer("inspect", "imagebuild.pkr.hcl", cwd=packer_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "> gpu-workers:" in proc.stdout
    assert "qemu.golden" in proc.stdout and "amazon-ebs.golden" in proc.stdout
    assert 'var.accelerator: "kvm"' in proc.stdout
    assert 'var.base_checksum: "none"' in proc.stdout  # no image.base: passed with -var at bake time
    template = (packer_dir / "imagebuild.pkr.hcl").read_text()
    assert f'"imagebuild:spec-hash" = "{spec.spec_hash}"' in template
    assert '"Team" = "platform"' in template and '"cost-center" = "cc:42/infra"' in template
    assert 'ami_regions   = ["eu-central-1", "us-east-2"]' in template
    assert "hygiene.sh" not in template  # image.hygiene: false


def test_base_image_from_the_spec_needs_no_variables(tmp_path):
    doc = {"image": {"base": {"source": "/srv/images/debian-12.qcow2", "checksum": ZERO_CHECKSUM}}}
    packer_dir = _packer_dir(tmp_path, doc)
    proc = packer("validate", "imagebuild.pkr.hcl", cwd=packer_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert packer_console(packer_dir, "var.base_image") == "/srv/images/debian-12.qcow2"
    assert packer_console(packer_dir, "var.base_checksum") == ZERO_CHECKSUM


@pytest.mark.parametrize("version, expected", [("1.6", False), ("1.7", True), ("1.10", True), ("2.0", True)])
def test_required_plugins_only_from_packer_1_7(version, expected):
    template = render.packer_template(spec_of({"image": {"packer_version": version}}))
    assert ("required_plugins" in template) is expected
    if expected:
        assert 'source  = "github.com/hashicorp/qemu"' in template
        assert 'source  = "github.com/hashicorp/amazon"' in template


def test_packer_1_6_refuses_required_plugins_which_is_why_it_is_gated(tmp_path):
    version = subprocess.run(["packer", "version"], capture_output=True, text=True).stdout
    if not re.search(r"Packer v1\.6\.", version):
        pytest.skip(f"this checks Packer 1.6's behaviour; found {version.strip()}")
    packer_dir = _packer_dir(tmp_path, {"image": {"packer_version": "1.7"}})
    proc = packer_validate(packer_dir)
    assert proc.returncode != 0


WEIRD = 'a"b\\c ${var.does_not_exist} %{ if true }x%{ endif } $${literal} \'q\''


def _escaped_spec():
    """The spec refuses these values (AWS tags allow no $, { or quotes, base paths no quotes), so
    they are put into the model directly: this tests the HCL escaping itself, a last guard."""
    spec = spec_of({})
    # model_construct/model_copy skip validation on purpose: the template must stay inert anyway.
    image = spec.image.model_copy(update={"base": BaseImage.model_construct(source=WEIRD, checksum=ZERO_CHECKSUM),
                                          "aws": spec.image.aws.model_copy(update={"tags": {"Weird": WEIRD,
                                                                                            'k"${x}': WEIRD}})})
    return spec.model_copy(update={"image": image})


def test_hcl_escaping_keeps_interpolation_syntax_literal(tmp_path):
    spec = _escaped_spec()
    out = render.write_tree(render.render_all(spec), tmp_path / "out")
    from imagebuild.build.bake import build_seed

    build_seed(out / "packer" / "seed")
    packer_dir = out / "packer"
    # validate passes: had `${var.does_not_exist}` or `%{ if }` been interpolated, it would fail.
    proc = packer_validate(packer_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # And the value is literal: Packer's own evaluation of var.base_image gives it back exactly.
    assert packer_console(packer_dir, "var.base_image") == WEIRD
    # Sensitivity: the same template without the $${ / %%{ escapes does not validate.
    template = packer_dir / "imagebuild.pkr.hcl"
    template.write_text(template.read_text().replace("$${", "${").replace("%%{", "%{"))
    assert packer_validate(packer_dir).returncode != 0


def test_amazon_ebs_is_imdsv2_only_where_the_packer_version_knows_how(tmp_path):
    """Packer >= 1.7 (the amazon plugin): the build instance requires IMDS tokens (metadata_options) and
    the AMI is registered with ImdsSupport v2.0. Packer 1.6.6 knows neither, so 1.6 templates leave
    them out (and still validate)."""
    packer_dir = _packer_dir(tmp_path, {})
    template = (packer_dir / "imagebuild.pkr.hcl").read_text()
    assert "metadata_options {" not in template and "imds_support  =" not in template
    assert packer_validate(packer_dir).returncode == 0
    newer = render.packer_template(spec_of({"image": {"packer_version": "1.9"}}))
    assert 'imds_support  = "v2.0"' in newer and 'http_tokens                 = "required"' in newer
    assert 'version = "~> 1.8.2"' in newer  # the release tests/aws/test_packer_imdsv2.py runs


@pytest.mark.parametrize("setting", ['imds_support = "v2.0"', 'metadata_options {\n    http_tokens = "required"\n  }'])
def test_packer_1_6_refuses_the_imds_settings_which_is_why_they_are_gated(tmp_path, setting):
    packer_dir = _packer_dir(tmp_path, {})
    path = packer_dir / "imagebuild.pkr.hcl"
    path.write_text(path.read_text().replace("  ena_support   = true\n", f"  ena_support   = true\n  {setting}\n"))
    proc = packer_validate(packer_dir)
    assert proc.returncode != 0 and "Unsupported" in proc.stdout + proc.stderr
