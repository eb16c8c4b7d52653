"""Bake real images with Packer's qemu builder and prove them by booting in QEMU."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from imagebuild import bake, render
from imagebuild.digest import sha256_file
from imagebuild.errors import ImagebuildError
from imagebuild.spec import parse
from imagebuild.verify import verify_image, verify_user_data
from tests.support import qemu_processes_using

pytestmark = pytest.mark.e2e

# Every point of the seed the verify boot must prove, by check name.
SEED_CHECKS = {
    "service.active", "service.enabled", "version.client", "version.server", "version.runc",
    "config.sandbox_image", "config.systemd_cgroup", "config.oom_score", "config.root", "config.state",
    "config.registry.config_path", "unit.Delegate", "unit.KillMode", "unit.OOMScoreAdjust", "unit.LimitNOFILE",
    "unit.LimitNPROC", "unit.LimitCORE", "unit.TasksMax", "unit.Restart", "process.oom_score_adj",
    "module.overlay", "module.br_netfilter", "sysctl.net.ipv4.ip_forward", "container.import", "container.run",
    "container.own_cgroup", "container.restart_containerd", "container.survives_restart",
    "hygiene.cloud_init_fresh", "hygiene.machine_id", "hygiene.ssh_host_keys",
    "file./etc/containerd/certs.d/k8s.gcr.io/hosts.toml", "file./etc/containerd/config.toml",
}


def with_changes(spec, **changes):
    doc = yaml.safe_load(yaml.safe_dump(spec.document))
    for dotted, value in changes.items():
        node = doc
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return parse(yaml.safe_dump(doc), "e2e spec")


def test_golden_image_bakes_with_manifest(golden_bake, golden_spec):
    golden_image, left_in_tmp = golden_bake
    # Nothing left in the temporary directory either (Packer's cd_files staging dir used to stay).
    assert left_in_tmp == []
    manifest = json.loads((golden_image.parent / "manifest.json").read_text())
    assert manifest["image"] == golden_image.name
    assert manifest["sha256"] == sha256_file(golden_image)
    assert manifest["spec_hash"] == golden_spec.spec_hash
    assert manifest["containerd_version"] == "1.6.20"
    assert manifest["virtual_size"] == golden_spec.image.disk_size_gb * 2**30
    assert manifest["disk_size"] == golden_image.stat().st_size
    assert manifest["packer"]["builder_type"] == "qemu"
    assert set(manifest["durations_s"]) >= {"boot", "provision", "total"}
    assert (golden_image.parent / f"{golden_spec.name}.packer.log").read_text().count("Connected to SSH") == 1
    # Nothing of the build's scratch stays beside the image.
    assert sorted(p.name for p in golden_image.parent.iterdir()) == sorted(
        [golden_image.name, "manifest.json", f"{golden_spec.name}.packer.log"])


def test_golden_image_verifies(golden_image, golden_spec, tmp_path):
    before = sha256_file(golden_image)
    report = verify_image(golden_image, golden_spec, log_dir=str(tmp_path))
    failed = [c for c in report["checks"] if not c["ok"]]
    assert report["passed"], failed
    assert SEED_CHECKS <= {c["check"] for c in report["checks"]}
    assert report["timings"]["containerd_active_s"] is not None
    assert report["timings"]["containerd_active_s"] < report["timings"]["check_done_s"]
    assert sha256_file(golden_image) == before, "verify must never write the image"
    written = json.loads((tmp_path / "verify.json").read_text())
    assert written["image_sha256"] == before and written["passed"]


def test_verify_times_out_on_a_guest_that_never_boots(tmp_path, golden_spec):
    blank = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "1G"], check=True)
    short = with_changes(golden_spec, verify__timeout=30)
    with pytest.raises(ImagebuildError) as raised:
        verify_image(blank, short, log_dir=str(tmp_path))
    message = str(raised.value)
    assert "30" in message and "serial" in message.lower()
    assert (tmp_path / "blank.verify.serial.log").exists()
    # QEMU runs on an overlay in verify's scratch dir: it holds blank.qcow2 open (the backing file)
    # and names the serial log in tmp_path; the detector sees both (tests/test_leftovers.py).
    assert qemu_processes_using(tmp_path) == {}, "no QEMU process may outlive a timed-out verify"


def test_containerd_2x_with_cni_plugins_bakes_and_verifies(mirror, base_image, tmp_path):
    spec = mirror(with_changes(parse("{}"), containerd__version="2.1.9", name="containerd-two"), "2.1",
                  with_cni=True)
    assert spec.containerd.config_version == 3
    image = bake.bake(spec, tmp_path / "output", base=str(base_image))
    report = verify_image(image, spec, log_dir=str(tmp_path))
    assert report["passed"], [c for c in report["checks"] if not c["ok"]]
    by_name = {c["check"]: c for c in report["checks"]}
    assert by_name["config.sandbox_image"]["actual"] == spec.config.sandbox_image
    assert by_name["cni.loopback"]["ok"], by_name["cni.loopback"]   # the plugins run in the guest


def test_user_data_path_verifies(mirror, base_image, golden_spec, tmp_path):
    report = verify_user_data(golden_spec, base=str(base_image), log_dir=str(tmp_path))
    assert report["passed"], [c for c in report["checks"] if not c["ok"]]
    assert report["timings"]["containerd_active_s"] is not None
    assert report["user_data_bytes"] == len(render.user_data(golden_spec)) <= 16384
