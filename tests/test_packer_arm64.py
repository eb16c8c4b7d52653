"""The qemu source of an arm64 spec, as Packer 1.6.6 really runs it: qemu-system-aarch64, machine virt,
`-cpu max,pauth-impdef=on`, AAVMF as two pflash devices, the cidata seed as a SCSI CD on virtio-scsi.

Packer is run for real with a stand-in QEMU (`qemu_binary` is a template variable) that records its
command line: what reaches QEMU is Packer's own assembly of the template, not our reading of it. The
stand-in shows why the firmware is not a `-drive`: Packer 1.6.6 then drops the disk and the seed.
That this command line boots the arm64 base image and the seed is read is the arm64 e2e test's part
(tests/e2e/test_arm64.py).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from imagebuild.run import spawned
from imagebuild.spec import platforms
from imagebuild.vm import firmware as fw
from tests.support import packer_validate, run_cli, write_spec

ARM64 = {"name": "arm-golden", "image": {"os": "debian-13", "architecture": "arm64"},
         "containerd": {"version": "1.7.24"}}

FAKE_QEMU = """#!/bin/sh
if [ "$1" = "--version" ] || [ "$1" = "-version" ]; then echo "QEMU emulator version 7.2.0"; exit 0; fi
printf '%s\\n' "$@" > "$0.args.tmp" && mv "$0.args.tmp" "$0.args"
exec sleep 600
"""


def _packer_dir(tmp_path: Path, doc: dict) -> Path:
    proc = run_cli("packer", str(write_spec(tmp_path, doc)), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr.decode()
    return tmp_path / "out" / "packer"


def test_arm64_template_names_the_aarch64_machine_and_validates(tmp_path):
    packer_dir = _packer_dir(tmp_path, ARM64)
    template = (packer_dir / "imagebuild.pkr.hcl").read_text()
    assert 'default     = "qemu-system-aarch64"' in template and 'machine_type     = "virt"' in template
    assert '[["-cpu", "max,pauth-impdef=on"],' in template and 'cdrom_interface  = "virtio-scsi"' in template
    assert 'default     = "tcg"' in template                      # no KVM for a foreign architecture
    proc = packer_validate(packer_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp_path / "amd64").mkdir()
    amd64 = (_packer_dir(tmp_path / "amd64", {}) / "imagebuild.pkr.hcl").read_text()
    assert 'default     = "qemu-system-x86_64"' in amd64 and 'machine_type     = "pc"' in amd64
    assert "cdrom_interface" not in amd64 and '[["-cpu", "max"],' in amd64


def _qemu_command_line(tmp_path: Path, packer_dir: Path, firmware: str, arch: str = "arm64",
                       name: str = "arm-golden") -> list[str]:
    """The argv Packer gives QEMU for the qemu source of *arch*, with *firmware* (bios, uefi) set as bake sets it."""
    fake = tmp_path / "fake-qemu"
    fake.write_text(FAKE_QEMU)
    fake.chmod(0o755)
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    work = tmp_path / "fw"
    work.mkdir()
    variables = {"base_image": str(base), "base_checksum": "none", "output_directory": str(tmp_path / "output"),
                 "qemu_binary": str(fake), **fw.packer_variables(arch, firmware, work)}
    cmd = ["packer", "build", "-color=false", "-only", f"{name}.qemu.golden",
           *(f"-var={k}={v}" for k, v in variables.items()), "imagebuild.pkr.hcl"]
    env = {**os.environ, "CHECKPOINT_DISABLE": "1", "TMPDIR": str(tmp_path)}
    log = open(tmp_path / "packer.log", "wb")
    with spawned(cmd, cwd=packer_dir, env=env, stdout=log, stderr=subprocess.STDOUT):
        deadline = time.monotonic() + 120
        while not (tmp_path / "fake-qemu.args").exists():
            assert time.monotonic() < deadline, (tmp_path / "packer.log").read_text()[-3000:]
            time.sleep(0.2)
    return (tmp_path / "fake-qemu.args").read_text().splitlines()


def _pairs(argv: list[str]) -> list[tuple[str, str]]:
    return [(argv[i], argv[i + 1]) for i in range(len(argv) - 1) if argv[i].startswith("-")]


def test_packer_gives_qemu_the_disk_the_seed_and_aavmf(tmp_path):
    assert shutil.which("packer") and shutil.which("qemu-img")
    argv = _qemu_command_line(tmp_path, _packer_dir(tmp_path, ARM64), "uefi")
    pairs = _pairs(argv)
    drives = [v for k, v in pairs if k == "-drive"]
    assert any(v.startswith("file=") and "if=virtio" in v and "format=qcow2" in v for v in drives), drives
    (seed,) = [v for v in drives if "media=cdrom" in v]
    assert "if=none" in seed and "id=cdrom0" in seed
    devices = [v for k, v in pairs if k == "-device"]
    assert "virtio-scsi-device" in devices and "scsi-cd,drive=cdrom0" in devices
    assert ("-cpu", "max,pauth-impdef=on") in pairs
    (machine,) = [v for k, v in pairs if k == "-machine"]
    assert machine == "type=virt,accel=tcg,pflash0=fwcode,pflash1=fwvars"
    blockdevs = [v for k, v in pairs if k == "-blockdev"]
    assert f"driver=file,node-name=fwcode,read-only=on,filename={platforms.ARCHES['arm64']['uefi_code']}" in blockdevs
    (vars_dev,) = [v for v in blockdevs if "node-name=fwvars" in v]
    assert vars_dev.endswith(str(tmp_path / "fw" / "uefi-vars-arm64.fd"))   # this build's own copy
    assert not any("if=pflash" in v for v in drives)


def test_firmware_as_a_drive_would_cost_the_disk_and_the_seed(tmp_path):
    """Why the template does not pass the flash as `-drive if=pflash`: Packer 1.6.6 then gives QEMU
    neither the disk nor the seed (the same run with the template's two -blockdev lines and its
    -machine line put back to -drive form)."""
    packer_dir = _packer_dir(tmp_path, ARM64)
    template = packer_dir / "imagebuild.pkr.hcl"
    text = template.read_text()
    start = text.index('    ["-blockdev", "driver=file,node-name=fwcode')
    end = text.index("pflash1=fwvars\"],\n", start) + len("pflash1=fwvars\"],\n")
    as_drives = ('    ["-drive", "if=pflash,format=raw,unit=0,readonly=on,file=${var.firmware_code}"],\n'
                 '    ["-drive", "if=pflash,format=raw,unit=1,file=${var.firmware_vars}"],\n')
    template.write_text(text[:start] + as_drives + text[end:])
    argv = _qemu_command_line(tmp_path, packer_dir, "uefi")
    drives = [v for k, v in _pairs(argv) if k == "-drive"]
    assert all("if=pflash" in v for v in drives) and len(drives) == 2, drives   # no disk, no seed


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_amd64_build_keeps_its_disk_and_seed_under_either_firmware(tmp_path, firmware):
    """The same template for amd64: SeaBIOS leaves Packer's own -machine (pc), OVMF gets the flash the
    same way; the disk and the IDE cdrom seed stay in both."""
    argv = _qemu_command_line(tmp_path, _packer_dir(tmp_path, {"name": "x-golden"}), firmware, "amd64", "x-golden")
    pairs = _pairs(argv)
    drives = [v for k, v in pairs if k == "-drive"]
    assert any("if=virtio" in v and "format=qcow2" in v for v in drives), drives
    assert any(v.endswith("media=cdrom") and "if=none" not in v for v in drives), drives
    (machine,) = [v for k, v in pairs if k == "-machine"]
    if firmware == "bios":
        assert machine == "type=pc,accel=tcg" and not [v for k, v in pairs if k == "-blockdev"]
    else:
        assert machine == "type=pc,accel=tcg,pflash0=fwcode,pflash1=fwvars"
        assert f"filename={platforms.ARCHES['amd64']['uefi_code']}" in " ".join(v for k, v in pairs if k == "-blockdev")
