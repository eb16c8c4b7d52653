"""The amazon-ebs build instance is IMDSv2-only, run for real: the Packer release and the amazon and qemu plugins
that the template's `required_plugins` names (imagebuild.render.packer_plugins), built from the Go module proxy
by devtools.packer, run the template's plumbing build against moto (as tests/aws/test_packer_amazon.py does
with Debian's Packer 1.6.6), and moto's own record of the build instance it launched says HttpTokens
"required". Packer 1.6.6's amazon builder has no `metadata_options`, so only these tests can show it.

Building Packer and the plugins costs minutes the first time (then cached; docs/aws.md has the figures).
"""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from imagebuild.render import packer_plugins
from tests.aws.test_packer_amazon import DOC, HOME, _render
from tests.e2e.test_packer_amazon import _client, _packer_env, _recording_proxy
from tests.support import ZERO_CHECKSUM, spec_of

TESTED = ".".join(packer_plugins.PACKER.split(".")[:2])  # image.packer_version of the Packer the tests run
pytestmark = [pytest.mark.e2e, pytest.mark.extra]


@pytest.fixture(scope="module")
def new_packer():
    """(packer binary, environment with its plugin directory): built once, then cached."""
    from devtools import packer as built

    binary, plugins = built.tools()
    return binary, built.env(plugins)


def _doc(version: str) -> dict:
    return {**DOC, "image": {**DOC["image"], "packer_version": version}}


def _packer(new_packer, packer_dir, *args, env=None, timeout=120) -> subprocess.CompletedProcess:
    binary, packer_env = new_packer
    return subprocess.run([str(binary), *args], cwd=packer_dir, env=env or packer_env, capture_output=True,
                          text=True, timeout=timeout)


def _plumbing_build(new_packer, moto_canonical, tmp_path, version: str):
    """`packer build -only <name>.amazon-ebs.plumbing` of a template rendered for image.packer_version
    *version*, through a recording proxy in front of moto: (moto's description of the build instance, the
    requests Packer sent, {region: AMI id})."""
    url, amis = moto_canonical
    spec = spec_of(_doc(version))
    packer_dir = _render(tmp_path, _doc(version))
    env = _packer_env(tmp_path) | {"PACKER_PLUGIN_PATH": new_packer[1]["PACKER_PLUGIN_PATH"]}
    with _recording_proxy(url) as (proxy, bodies):
        # The amazon plugin checks the credentials with STS GetCallerIdentity (Packer 1.6.6 did not), and
        # its copy to the other regions ignores custom_endpoint_ec2: both reach moto through the SDK's own
        # endpoint settings, as they would reach AWS's regional endpoints without them.
        env |= {"AWS_ENDPOINT_URL_STS": proxy, "AWS_ENDPOINT_URL_EC2": proxy}
        proc = _packer(new_packer, packer_dir, "build", "-color=false", "-only", f"{spec.name}.amazon-ebs.plumbing",
                       "-var", f"aws_endpoint={proxy}", "-var", f"output_directory={tmp_path / 'out'}",
                       "imagebuild.pkr.hcl", env=env, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"Packer v{packer_plugins.PACKER}" in _packer(new_packer, packer_dir, "version").stdout
    launched = set(re.findall(r"Instance ID: (i-[0-9a-f]+)", log))
    assert len(launched) == 1, log[-4000:]
    reservations = _client(url, "ec2", HOME).describe_instances(InstanceIds=sorted(launched))["Reservations"]
    instance = reservations[0]["Instances"][0]
    assert instance["ImageId"] in {a["ami_id"] for a in amis}
    manifest = json.loads((tmp_path / "out-packer-manifest.json").read_text())
    build = next(b for b in manifest["builds"] if b["packer_run_uuid"] == manifest["last_run_uuid"])
    return instance, bodies, dict(pair.split(":", 1) for pair in build["artifact_id"].split(","))


def imdsv2_problems(instance: dict, bodies: list[dict], made: dict[str, str]) -> list[str]:
    """What keeps the build from being IMDSv2-only: the build instance's metadata options as moto recorded
    them at RunInstances, and the AMIs' ImdsSupport as Packer asked EC2 for it (moto 5 keeps no ImdsSupport
    of its own, so that is read at the proxy)."""
    options = instance.get("MetadataOptions", {})
    want = {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1}
    problems = [f"{key} is {options.get(key)!r}, not {value!r}" for key, value in want.items()
                if options.get(key) != value]
    imds = {body["ImageId"][0] for body in bodies if body.get("Action") == ["ModifyImageAttribute"]
            and body.get("ImdsSupport.Value") == ["v2.0"]}
    problems += [f"{region}'s AMI {image} was not given ImdsSupport v2.0" for region, image in made.items()
                 if image not in imds]
    return problems


@pytest.mark.timeout(3600)  # the first run builds Packer and the plugins
def test_the_plumbing_build_instance_requires_imds_tokens(new_packer, moto_canonical, tmp_path):
    instance, bodies, made = _plumbing_build(new_packer, moto_canonical, tmp_path, TESTED)
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert imdsv2_problems(instance, bodies, made) == []
    assert len(made) == 2  # the home region and the copy


@pytest.mark.timeout(3600)  # as any of these tests, when it is the first to run
def test_the_check_fails_for_a_template_without_metadata_options(new_packer, moto_canonical, tmp_path):
    """image.packer_version 1.6 renders neither metadata_options nor imds_support: the same Packer then
    launches a build instance that answers IMDSv1, and the check says so."""
    instance, bodies, made = _plumbing_build(new_packer, moto_canonical, tmp_path, "1.6")
    assert instance["MetadataOptions"]["HttpTokens"] == "optional"
    problems = imdsv2_problems(instance, bodies, made)
    assert "HttpTokens is 'optional', not 'required'" in problems
    assert sum("ImdsSupport" in p for p in problems) == len(made) == 2


# ------------------------------------------------------------------ validate and init with the new Packer


def _validate(new_packer, packer_dir) -> subprocess.CompletedProcess:
    return _packer(new_packer, packer_dir, "validate", "-var", "base_image=/nonexistent/base.qcow2",
                   "-var", f"base_checksum={ZERO_CHECKSUM}", "imagebuild.pkr.hcl")


@pytest.mark.timeout(3600)
def test_both_sources_validate_and_a_misspelt_setting_is_refused(new_packer, tmp_path):
    """`packer validate` checks the qemu and amazon-ebs sources against the plugins' own schemas: the template
    passes, and a misspelt setting in either source is refused (so passing means the plugin knows each)."""
    packer_dir = _render(tmp_path, _doc(TESTED))
    path = packer_dir / "imagebuild.pkr.hcl"
    template = path.read_text()
    assert f'version = "~> {packer_plugins.PLUGINS["amazon"][1]}"' in template
    proc = _validate(new_packer, packer_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for setting in ("http_tokens", "disk_discard"):
        path.write_text(template.replace(f"  {setting} ", f"  {setting}_x ", 1))
        proc = _validate(new_packer, packer_dir)
        assert proc.returncode != 0 and f'"{setting}_x" is not expected here' in proc.stdout + proc.stderr


@pytest.mark.timeout(3600)
def test_packer_init_finds_the_tested_plugins_offline_and_not_others(new_packer, tmp_path):
    """required_plugins names the releases the plugin directory holds: `packer init` is satisfied without
    the network; a constraint on another release makes it go looking (and fail offline)."""
    packer_dir = _render(tmp_path, _doc(TESTED))
    env = _packer_env(tmp_path) | {"PACKER_PLUGIN_PATH": new_packer[1]["PACKER_PLUGIN_PATH"]}
    proc = _packer(new_packer, packer_dir, "init", "imagebuild.pkr.hcl", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = packer_dir / "imagebuild.pkr.hcl"
    source, version = packer_plugins.PLUGINS["amazon"]
    path.write_text(path.read_text().replace(f'"~> {version}"', '"~> 1.0.0"'))
    proc = _packer(new_packer, packer_dir, "init", "imagebuild.pkr.hcl", env=env)
    assert proc.returncode != 0 and source in proc.stdout + proc.stderr
