"""The Debian 13 amd64 golden: its hybrid base image (GPT: BIOS boot + ESP + root, systemd-networkd),
baked with Packer's qemu builder under SeaBIOS and verified under OVMF, so every Debian 13 golden boots
through both firmware paths (as the Debian 12 golden, hybrid too, does in test_bake_verify.py).

containerd 2.3 LTS (config version 4) with the CNI plugins, upstream's builds served as release
tarballs from 127.0.0.1 like the Debian 12 golden's: make test's golden of the LTS, its pod network
included; and (make test-extra) containerd 2.x with the CNI plugins, baked under OVMF.
"""
from __future__ import annotations

import hashlib
import json
import time

import pytest
import yaml

from devtools import pause_image
from devtools.golden import local_mirror
from imagebuild.build import baseimage
from imagebuild.build.bake import bake
from imagebuild.spec import parse
from imagebuild.verify.boot import verify_image
from imagebuild.vm.disks import OfflineImage
from tests.e2e.test_bake_verify import BAKED_CHECKS, CRI_CHECKS, SANDBOX_BAKED_CHECKS
from tests.support import FAMILY_VERSIONS, default_spec_on, with_pause_archive

pytestmark = pytest.mark.e2e

FLAVOR = baseimage.Flavor.of("debian-13", "amd64")


@pytest.fixture(scope="module")
def debian13(tmp_path_factory):
    """(spec, image, seconds per step) of the Debian 13 golden, baked once for the module."""
    times = {}
    t0 = time.monotonic()
    baseimage.build(flavor=FLAVOR)           # cached by recipe hash; the bake below finds it
    times["base_image_s"] = round(time.monotonic() - t0, 1)
    # Its sandbox image is a real pause (catatonit) under a local name, from an OCI archive: the Debian 12
    # golden bakes none, this one proves a baked, pinned sandbox image (image.sandbox.source archive).
    # containerd 2.3 LTS (config version 4) with the CNI plugins: the boot also proves a pod's network there.
    doc = yaml.safe_load(yaml.safe_dump(default_spec_on("debian-13", "amd64", "2.3").document))
    doc["containerd"]["install"]["cni_plugins"] = {}
    doc["config"]["imports"] = ["/etc/containerd/conf.d/*.toml"]   # 2.3's own default
    lts = parse(yaml.safe_dump(doc), "Debian 13 golden spec, containerd 2.3 LTS")
    golden, archive = with_pause_archive(lts, tmp_path_factory.mktemp("p"))
    with local_mirror(golden) as spec:
        t0 = time.monotonic()
        image = bake(spec, tmp_path_factory.mktemp("golden13") / "output")
        times["bake_s"] = round(time.monotonic() - t0, 1)
        yield spec, image, times | {"archive": archive}


def test_debian13_golden_is_hybrid_and_built_under_seabios(debian13):
    spec, image, times = debian13
    manifest = json.loads((image.parent / "manifest.json").read_text())
    assert manifest["image"] == image.name and manifest["containerd_version"].startswith("2.3.")
    assert spec.containerd.config_version == 4
    assert (manifest["boot_mode"], manifest["architecture"], manifest["build_firmware"]) == (
        "uefi-preferred", "x86_64", "bios")
    assert manifest["base_image"]["source"].endswith("/" + baseimage.names(FLAVOR)[0])
    log = (image.parent / f"{spec.name}.packer.log").read_text()
    assert "Connected to SSH" in log    # the build VM booted (which firmware: boot.build_firmware at verify)
    archive = times["archive"]
    assert f"importing the sandbox image {archive['ref']}" in log
    sandbox = manifest["sandbox_image"]
    assert (sandbox["source"], sandbox["name"], sandbox["digest"]) == ("archive", archive["ref"], archive["digest"])
    # Read without booting: every blob of containerd's content store is one the archive carries.
    with OfflineImage(image, image.parent) as disk:
        held = disk.listdir("/var/lib/containerd/io.containerd.content.v1.content/blobs/sha256")
    assert held and {f"sha256:{b}" for b in held} <= set(sandbox["blobs"]), (held, sandbox["blobs"])
    print(f"\nDebian 13 golden: base image {times['base_image_s']} s, bake {times['bake_s']} s "
          f"({manifest['durations_s']})")


def test_debian13_golden_verifies_under_uefi(debian13, tmp_path):
    spec, image, _ = debian13
    report = verify_image(image, spec, log_dir=str(tmp_path))
    by_name = {c["check"]: c for c in report["checks"]}
    assert report["passed"], [c for c in report["checks"] if not c["ok"]]
    assert report["firmware"] == "uefi"
    assert by_name["boot.firmware"]["ok"] and by_name["boot.firmware"]["actual"].startswith("uefi (64-bit")
    assert (by_name["boot.build_firmware"]["actual"], by_name["boot.build_firmware"]["ok"]) == ("bios", True)
    assert "networkd DHCP lease" in by_name["network.dhcp"]["actual"]
    assert by_name["disk.rootfs_grown"]["ok"] and by_name["hygiene.network_config"]["ok"]
    assert {"cri.runtime_ready", "cri.pod_sandbox", "container.survives_restart"} <= set(by_name)
    # The baked pause: the only image at boot, pinned, with the archive's digest; the pod started with every
    # registry unreachable, and its process is catatonit.
    assert BAKED_CHECKS | SANDBOX_BAKED_CHECKS <= set(by_name)
    assert by_name["cri.images_at_boot"]["actual"] == [spec.config.sandbox_image]
    assert by_name["cri.sandbox_pinned"]["actual"] is True
    assert by_name["cri.sandbox_process"]["actual"] == hashlib.sha256(pause_image.CATATONIT.read_bytes()).hexdigest()
    assert "every registry unreachable" in by_name["cri.pod_sandbox"]["note"]
    # containerd 2.3 finds the CNI plugins where the tarball install put them: a pod gets an address.
    assert by_name["cri.pod_network"]["ok"] and by_name["cni.bin_dir"]["ok"], by_name.get("cri.pod_network")
    # No 5-minute DHCPv6 wait (ifupdown's dhclient -6 held Debian 13 boots for networking.service's timeout).
    assert report["timings"]["check_done_s"] < 240, report["timings"]
    print(f"\nDebian 13 verify under UEFI: {report['timings']}")


@pytest.mark.extra     # +170 s: over make test's budget; `make test-extra` (CI: a job of its own)
def test_debian13_golden_verifies_as_ec2_presents_it(debian13, tmp_path):
    """Hygiene and the EC2 boot (SMBIOS identity, IMDSv2, a new NIC, a larger disk) unchanged on Debian 13
    (cloud-init 25.1), under UEFI as a uefi-preferred AMI boots on a UEFI instance type."""
    spec, image, _ = debian13
    report = verify_image(image, spec, log_dir=str(tmp_path), platform="ec2")
    by_name = {c["check"]: c for c in report["checks"]}
    assert report["passed"], [c for c in report["checks"] if not c["ok"]]
    assert report["firmware"] == "uefi" and by_name["boot.firmware"]["ok"]
    assert {"ec2.datasource", "ec2.instance_id", "ec2.public_key", "ec2.imds_v2_only", "hygiene.hostname",
            "network.dhcp", "disk.rootfs_grown"} <= set(by_name)
    print(f"\nDebian 13 EC2 verify under UEFI: {report['timings']}")


# 267 s in CI (2026-12-02): over make test's budget beside the rest; `make test-extra`.
@pytest.mark.extra
def test_containerd_2_4_with_cni_plugins_bakes_under_uefi_and_verifies(tmp_path):
    """containerd 2.4 on Debian 13 (config version 4, no enable_cdi and no single CNI bin_dir) with the
    CNI plugins, baked by Packer's qemu builder booting the hybrid disk under OVMF (`bake --firmware
    uefi`, where the golden above is built under SeaBIOS) and verified under OVMF; its pod gets a network.

    profile none: the worker profile's apt install in the guest (60-100 s under TCG) is proved by the
    goldens; this bake is about containerd 2.4, CNI and the UEFI build."""
    two, _ = with_pause_archive(default_spec_on("debian-13", "amd64", "2.4"), tmp_path)
    doc = yaml.safe_load(yaml.safe_dump(two.document))
    doc |= {"name": "containerd-two", "system": {"profile": "none"}}
    doc["containerd"]["install"]["cni_plugins"] = {}
    doc["config"]["imports"] = ["/etc/containerd/conf.d/*.toml"]   # 2.4's own default
    with local_mirror(parse(yaml.safe_dump(doc), "Debian 13 containerd 2.4 e2e spec")) as spec:
        assert spec.containerd.config_version == 4 and spec.containerd.install.cni_plugins is not None
        t0 = time.monotonic()
        image = bake(spec, tmp_path / "output", firmware="uefi")
        bake_s = round(time.monotonic() - t0, 1)
    manifest = json.loads((image.parent / "manifest.json").read_text())
    assert (manifest["boot_mode"], manifest["build_firmware"]) == ("uefi-preferred", "uefi")
    assert manifest["containerd_version"] == FAMILY_VERSIONS["2.4"]
    report = verify_image(image, spec, log_dir=str(tmp_path))
    assert report["passed"], [c for c in report["checks"] if not c["ok"]]
    by_name = {c["check"]: c for c in report["checks"]}
    assert report["firmware"] == "uefi" and by_name["boot.firmware"]["actual"].startswith("uefi (64-bit")
    assert by_name["boot.build_firmware"]["actual"] == "uefi"   # Packer's build VM booted under OVMF
    assert by_name["config.sandbox_image"]["actual"] == spec.config.sandbox_image
    assert by_name["cni.loopback"]["ok"], by_name["cni.loopback"]   # the plugins run in the guest
    assert by_name["cri.pod_network"]["ok"], by_name["cri.pod_network"]   # ... where 2.4's bin_dirs finds them
    # 2.x's Status shows no image config: pulls, sandbox prove it. The pause came from an archive: pinned.
    assert CRI_CHECKS - {"cri.mirror.sandbox_image"} | BAKED_CHECKS | SANDBOX_BAKED_CHECKS <= set(by_name)
    assert by_name["cri.sandbox_pinned"]["actual"] is True
    print(f"\nDebian 13 containerd 2.4: bake under UEFI {bake_s} s, verify {report['timings']}")
