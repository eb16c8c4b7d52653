"""The arm64 (Graviton) golden end to end: the Debian 13 arm64 base image (GPT: ESP + root, built by mmdebstrap
under qemu-user), baked by Packer 1.6.6's qemu builder on qemu-system-aarch64 (machine virt,
`-cpu max,pauth-impdef=on`, AAVMF through pflash, the NoCloud seed on virtio-scsi), and verified under AAVMF
with every check, under NoCloud and as a Graviton EC2 instance. containerd 1.7 and trixie's runc, arm64
binaries from Debian served as release tarballs from 127.0.0.1 (10.0.2.2 in the guest), as the amd64 goldens are.

Marked arm64: only `make test-arm64` runs it (the base image alone takes ~37 min here under load;
see the CI split in docs/contributing.md).
"""
from __future__ import annotations

import json
import time

import pytest

from devtools.golden import local_mirror
from imagebuild.build import baseimage
from imagebuild.build.bake import bake
from imagebuild.verify.boot import verify_image
from tests.support import default_spec_on

pytestmark = [pytest.mark.e2e, pytest.mark.arm64]

FLAVOR = baseimage.Flavor.of("debian-13", "arm64")
FAMILY = "1.7"


@pytest.fixture(scope="module")
def arm64_golden(tmp_path_factory):
    """(spec, image, seconds per step) of the arm64 golden, baked once for the module."""
    times = {}
    t0 = time.monotonic()
    baseimage.build(flavor=FLAVOR)           # cached by recipe hash; the bake below finds it
    times["base_image_s"] = round(time.monotonic() - t0, 1)
    with local_mirror(default_spec_on("debian-13", "arm64", FAMILY)) as spec:
        t0 = time.monotonic()
        image = bake(spec, tmp_path_factory.mktemp("golden-arm64") / "output")
        times["bake_s"] = round(time.monotonic() - t0, 1)
        yield spec, image, times

def test_arm64_golden_is_baked_on_aarch64_under_aavmf(arm64_golden):
    spec, image, times = arm64_golden
    assert spec.containerd.install.tarball.filename == f"containerd-{spec.containerd.version}-linux-arm64.tar.gz"
    manifest = json.loads((image.parent / "manifest.json").read_text())
    assert (manifest["boot_mode"], manifest["architecture"], manifest["build_firmware"]) == ("uefi", "arm64", "uefi")
    assert manifest["base_image"]["source"].endswith("/" + baseimage.names(FLAVOR)[0])
    log = (image.parent / f"{spec.name}.packer.log").read_text()
    assert "Connected to SSH" in log   # the build VM (its command line: tests/test_packer_arm64.py) read its seed
    print(f"\narm64 golden: base image {times['base_image_s']} s, bake {times['bake_s']} s "
          f"({manifest.get('durations_s')})")


def test_arm64_golden_verifies_with_every_check(arm64_golden, tmp_path):
    spec, image, _ = arm64_golden
    report = verify_image(image, spec, log_dir=str(tmp_path))
    by_name = {c["check"]: c for c in report["checks"]}
    assert report["passed"], [c for c in report["checks"] if not c["ok"]]
    assert report["firmware"] == "uefi"
    assert by_name["boot.firmware"]["ok"] and by_name["boot.firmware"]["actual"].startswith("uefi (64-bit")
    assert by_name["boot.build_firmware"]["actual"] == "uefi"   # the build VM booted under AAVMF
    assert {"cri.runtime_ready", "cri.pod_sandbox", "container.survives_restart"} <= set(by_name)
    serial = (tmp_path / f"{image.stem}.verify.serial.log").read_text(errors="replace")
    assert "-cloud-arm64" in serial      # the arm64 kernel booted (its console: the PL011, ttyAMA0)
    print(f"\narm64 verify under AAVMF: {report['timings']}")


def test_arm64_golden_verifies_as_a_graviton_ec2_instance(arm64_golden, tmp_path):
    """The same image booted as EC2 presents a Graviton instance (SMBIOS product and the IMDS identity
    document: m7g.large, arm64), IMDSv2 only, a new NIC in another slot, a larger disk, no NoCloud seed,
    under AAVMF as every arm64 instance boots."""
    spec, image, _ = arm64_golden
    report = verify_image(image, spec, log_dir=str(tmp_path), platform="ec2")
    by_name = {c["check"]: c for c in report["checks"]}
    assert report["passed"], [c for c in report["checks"] if not c["ok"]]
    assert report["platform"] == "ec2" and report["firmware"] == "uefi" and report["imds_requests"] > 10
    assert {"ec2.datasource", "ec2.instance_id", "ec2.public_key", "ec2.imds_v2_only", "hygiene.hostname",
            "network.dhcp", "disk.rootfs_grown", "platform.console", "cri.pod_sandbox"} <= set(by_name)
    print(f"\narm64 EC2 verify under AAVMF: {report['timings']}")
