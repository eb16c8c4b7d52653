"""Header values the node reads (ssm, secretsmanager), at boot: the render's imagebuild-resolve-secrets.service
(only for a spec with such a value; ordered before containerd, after the network, never required by it), a
bake's install that reads nothing (IMAGEBUILD_IMAGE_BUILD=1, as the Packer template runs it) and its in-build
check, the verify boot's secret.resolved check, and the EC2 verify boot's AWS stand-in (a unit drop-in written
by bootcmd). Each with the case that fails."""
from __future__ import annotations

import configparser
import io
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from imagebuild import render
from imagebuild.errors import ImagebuildError
from imagebuild.guest import check, resolve_secrets, secret_checks
from imagebuild.render import secret_refs
from imagebuild.verify import boot, node_secrets
from tests.support import spec_of

ZERO = "0" * 64
HOSTS = "/etc/containerd/certs.d/docker.io/hosts.toml"
VALUE = "b00t-res0lved-t0ken-4b5c6d7e"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root")


def _doc(*mirrors: tuple[str, dict]) -> dict:
    return {"containerd": {"install": {"tarball": {"sha256": ZERO}, "runc": {"sha256": ZERO}}},
            "config": {"registry": {"mirrors": [{"host": host, "endpoints": [
                {"url": f"https://{host}.mirror.example", "headers": headers}]} for host, headers in mirrors]}}}


NODE = _doc(("docker.io", {"Authorization": {"ssm": "/team/registry-token", "prefix": "Bearer "}}),
            ("quay.io", {"X-Token": {"secretsmanager": "team/quay"}}), ("gcr.io", {}))


def _unit(spec_doc: dict) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(render.payload(spec_of(spec_doc))[secret_refs.UNIT_PATH].content.decode())
    return parser


def test_the_unit_is_rendered_only_for_a_spec_with_a_value_the_node_reads(tmp_path, monkeypatch):
    files = render.guest_files(spec_of(NODE))
    assert f"payload{secret_refs.UNIT_PATH}" in files and files[f"payload{secret_refs.UNIT_PATH}"].mode == 0o644
    assert secret_refs.UNIT in files["install.sh"].content.decode()
    # it travels with the user-data payload too (the install enables it: each later boot re-reads the values)
    assert secret_refs.UNIT_PATH.encode() in render.user_data(spec_of(NODE), compress=False)
    monkeypatch.setenv("T", "literal-from-env")
    for doc in ({}, _doc(("docker.io", {"Authorization": "Bearer literal-l1teral"})),
                _doc(("docker.io", {"Authorization": {"env": "T"}}))):
        spec = secret_refs.stage(spec_of(doc))
        files = render.guest_files(spec)
        assert f"payload{secret_refs.UNIT_PATH}" not in files
        assert secret_refs.UNIT not in files["install.sh"].content.decode()
        assert "IMAGEBUILD_IMAGE_BUILD" not in render.packer_template(spec)
        assert "on_node" not in json.loads(files["expected.json"].content)["secrets"]


def test_the_unit_runs_the_resolver_before_containerd_after_the_network_and_containerd_does_not_require_it():
    unit = _unit(NODE)
    assert unit["Unit"]["Before"] == "containerd.service"
    assert unit["Unit"]["After"] == unit["Unit"]["Wants"] == "network-online.target"
    assert "Requires" not in unit["Unit"] and "BindsTo" not in unit["Unit"]
    assert (unit["Service"]["Type"], unit["Service"]["RemainAfterExit"]) == ("oneshot", "yes")
    assert unit["Service"]["StandardError"] == "journal+console"
    assert unit["Service"]["ExecStart"].split() == [
        "/usr/bin/python3", secret_refs.RESOLVER, secret_refs.refs_path("docker.io"), secret_refs.refs_path("quay.io")]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    # containerd's own unit names nothing of it: a failed resolution leaves containerd to start
    containerd = render.payload(spec_of(NODE))["/etc/systemd/system/containerd.service"].content.decode()
    assert secret_refs.UNIT not in containerd


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path):
    path = tmp_path / secret_refs.UNIT
    path.write_bytes(render.payload(spec_of(NODE))[secret_refs.UNIT_PATH].content)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0 and secret_refs.UNIT not in proc.stderr, proc.stderr


def test_the_packer_build_runs_the_install_and_its_check_as_an_image_build_only_with_node_values():
    template = render.packer_template(spec_of(NODE))
    assert '"IMAGEBUILD_IMAGE_BUILD=1 bash /var/lib/imagebuild/install.sh /var/lib/imagebuild/payload' in template
    assert "--expected /var/lib/imagebuild/expected.json --image-build" in template
    plain = render.packer_template(spec_of(_doc(("docker.io", {}))))
    assert '"bash /var/lib/imagebuild/install.sh /var/lib/imagebuild/payload' in plain
    assert "--image-build" not in plain


def _install(release: dict, tmp_path: Path, env: dict) -> tuple[subprocess.CompletedProcess, Path]:
    url = release["url"]
    doc = _doc(("docker.io", {"Authorization": {"ssm": "/team/registry-token"}}), ("gcr.io", {}))
    doc["containerd"] = {"version": release["containerd"]["version"], "install": {
        "tarball": {"url": f"{url}/{Path(release['containerd']['path']).name}",
                    "sha256": release["containerd"]["sha256"], "insecure": True},
        "runc": {"version": release["runc"]["version"], "url": f"{url}/{Path(release['runc']['path']).name}",
                 "sha256": release["runc"]["sha256"], "insecure": True}}}
    out = render.write_tree(render.render_all(spec_of(doc), with_user_data=False), tmp_path / "render")
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    # no metadata service: any attempt to read the value fails
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IMAGEBUILD_"))}
    proc = subprocess.run(["bash", str(out / "install.sh"), str(out / "payload")], capture_output=True, text=True,
                          env=base | {"IMAGEBUILD_ROOT": str(scratch), "AWS_EC2_METADATA_SERVICE_ENDPOINT":
                                      "http://127.0.0.1:9"} | env, timeout=300)
    return proc, scratch


@needs_root
def test_an_image_build_install_reads_nothing_and_installs_the_resolver_its_unit_and_document(tmp_path, release_16):
    proc, scratch = _install(release_16, tmp_path, {"IMAGEBUILD_IMAGE_BUILD": "1"})
    assert proc.returncode == 0, proc.stderr
    assert f"image build: {HOSTS} is not written now; {secret_refs.UNIT} writes it at each boot" in proc.stderr
    assert "resolving" not in proc.stderr and not (scratch / HOSTS.lstrip("/")).exists()
    for path, mode in ((secret_refs.RESOLVER, 0o755), (secret_refs.UNIT_PATH, 0o644),
                       (secret_refs.refs_path("docker.io"), 0o600)):
        assert stat.S_IMODE((scratch / path.lstrip("/")).stat().st_mode) == mode, path
    # the same install, not an image's: it reads the value, and here it cannot
    proc, scratch = _install(release_16, tmp_path / "node", {})
    assert proc.returncode == 1 and "resolving the registry headers" in proc.stderr
    assert "the instance metadata service at http://127.0.0.1:9 cannot be reached" in proc.stderr


@needs_root
def test_an_image_build_refuses_a_base_that_already_holds_such_a_hosts_toml(tmp_path, release_16):
    held = tmp_path / "scratch" / HOSTS.lstrip("/")
    held.parent.mkdir(parents=True)
    held.write_text("# from somewhere\n")
    proc, _ = _install(release_16, tmp_path, {"IMAGEBUILD_IMAGE_BUILD": "1"})
    assert proc.returncode == 1
    assert f"{HOSTS} is in the image being built: an image must not hold a registry header read on the node" \
        in proc.stderr


def _run(monkeypatch, fn, *args) -> dict[str, dict]:
    out = io.StringIO()
    monkeypatch.setattr(check.sys, "stdout", out)
    fn(check.Reporter(None), *args)
    return {r["check"]: r for r in (json.loads(line.split(" ", 1)[1]) for line in out.getvalue().splitlines())}


def _machine(tmp_path: Path, *, value: str | None) -> tuple[dict, Path]:
    """expected.json of NODE, and a root whose docker.io hosts.toml the resolver wrote with *value* (None: the
    template with its placeholder left, as if the resolver had been skipped)."""
    files = render.guest_files(spec_of(NODE))
    exp = json.loads(files["expected.json"].content)
    document = json.loads(files[f"payload{secret_refs.refs_path('docker.io')}"].content)
    root = tmp_path / "root"
    text = document["template"] if value is None else resolve_secrets.fill(
        document["template"], document["values"], [value])
    resolve_secrets.write(str(root), HOSTS, text)
    return exp, root


def test_secret_resolved_passes_for_a_hosts_toml_the_resolver_wrote(tmp_path, monkeypatch):
    exp, root = _machine(tmp_path, value=f"Bearer {VALUE}")
    entry = next(e for e in exp["secrets"]["on_node"] if e["path"] == HOSTS)
    assert entry["headers"] == [{"key": "config.registry.mirrors[0].endpoints[0].headers.Authorization",
                                 "url": "https://docker.io.mirror.example", "name": "Authorization"}]
    results = _run(monkeypatch, secret_checks.resolved_check, entry, root)
    result = results[f"secret.resolved.{HOSTS}"]
    assert result["ok"] and result["actual"] == "resolved: Authorization" and VALUE not in json.dumps(result)
    assert result["note"].startswith(f"{secret_refs.UNIT}: ")


@pytest.mark.parametrize("case, actual", [("placeholder", "placeholder left"), ("missing", "<missing>"),
                                          ("empty", "no value for Authorization")])
def test_secret_resolved_fails_for_a_placeholder_a_missing_file_or_an_empty_value(tmp_path, monkeypatch, case,
                                                                                 actual):
    exp, root = _machine(tmp_path, value=None if case == "placeholder" else "")
    if case == "missing":
        (root / HOSTS.lstrip("/")).unlink()
    results = _run(monkeypatch, secret_checks.run_all, exp, root)
    assert results[f"secret.resolved.{HOSTS}"]["actual"] == actual
    assert not results[f"secret.resolved.{HOSTS}"]["ok"]
    # quay.io's was never written in this root either
    assert results["secret.resolved./etc/containerd/certs.d/quay.io/hosts.toml"]["actual"] == "<missing>"


def test_the_in_build_check_fails_when_the_image_holds_such_a_hosts_toml(tmp_path, monkeypatch):
    held = tmp_path / "hosts.toml"
    exp = {"secrets": {"on_node": [{"path": str(held), "unit": secret_refs.UNIT, "headers": []}]}}
    assert _run(monkeypatch, check.image_build_checks, exp)[f"secret.not_in_image.{held}"]["ok"]
    held.write_text("Authorization = ['x']\n")
    result = _run(monkeypatch, check.image_build_checks, exp)[f"secret.not_in_image.{held}"]
    assert not result["ok"] and result["actual"] == "present: the image would hold a value the build read"


STAND_IN = node_secrets.AwsStandIn(port=45678, role="imagebuild-node", credentials=("AKIA", "secret", "token"))


def test_the_ec2_verify_boot_points_the_unit_at_the_stand_in_before_it_runs(tmp_path):
    text = node_secrets.dropin(STAND_IN)
    assert 'Environment="AWS_ENDPOINT_URL_SSM=http://169.254.0.1:45678"' in text
    assert 'Environment="AWS_ENDPOINT_URL_SECRETSMANAGER=http://169.254.0.1:45678"' in text
    facts = {"platform": "ec2", "instance_id": "i-0123", "hostname": "ip-x", "mac": "52:54:00:00:00:01"}
    user_data = yaml.safe_load(boot._seed_files(spec_of(NODE), install=False, boot=facts, aws=STAND_IN))
    [[shell, flag, script]] = user_data["bootcmd"]  # cloud-init's init stage: before network-online.target
    assert (shell, flag) == ("sh", "-c") and script.endswith("&& systemctl daemon-reload")
    # the script, run in a scratch root, writes exactly the drop-in
    root = tmp_path / "root"
    local = script.replace("/etc/", f"{root}/etc/").replace(" && systemctl daemon-reload", "")
    subprocess.run(["sh", "-c", local], check=True)
    assert (root / node_secrets.DROPIN.lstrip("/")).read_text() == text
    assert "bootcmd" not in yaml.safe_load(boot._seed_files(spec_of(NODE), install=False, boot=facts))


def test_a_stand_in_needs_the_ec2_boot(tmp_path):
    with pytest.raises(ImagebuildError, match="needs the EC2 boot"):
        boot._boot(tmp_path / "disk.qcow2", spec_of(NODE), install=False, test_image=tmp_path / "t.tar",
                   log_dir=tmp_path, label="x", platform="nocloud", aws=STAND_IN)



def test_the_note_gives_the_units_state_in_one_order_whatever_order_systemctl_prints(monkeypatch):
    printed = "Result=exit-code\nActiveState=failed\n"  # systemctl show prints the Service properties first
    monkeypatch.setattr(secret_checks.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=printed, stderr=""))
    assert secret_checks.unit_state(secret_refs.UNIT) == "ActiveState=failed Result=exit-code"
    monkeypatch.setattr(secret_checks.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1, stdout="", stderr="not booted"))
    assert secret_checks.unit_state(secret_refs.UNIT) == "<unknown>"
