"""The base image built for real (mmdebstrap, ~110 s cold, into the imagebuild cache), then served from
the cache at once."""
import json
import subprocess
import time

import pytest

from imagebuild.build import base_disk, baseimage

pytestmark = pytest.mark.e2e


def test_real_build_and_cache():
    t0 = time.monotonic()
    path = baseimage.build()
    first = time.monotonic() - t0
    t0 = time.monotonic()
    assert baseimage.build() == path
    assert time.monotonic() - t0 < 1.0, "a cached build must return at once"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == base_disk.DISK_SIZE
    assert info["actual-size"] < 400 * 2**20
    recorded = path.with_name(path.name + ".sha256").read_text().split()[0]
    assert baseimage.checksum(path) == "sha256:" + recorded
    kernel, initrd = baseimage.kernel_files()
    assert kernel.stat().st_size > 5 * 2**20 and initrd.stat().st_size > 5 * 2**20
    print(f"base image: {path} ({path.stat().st_size / 2**20:.0f} MiB), build call {first:.1f} s")
