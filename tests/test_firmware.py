"""Firmware selection (imagebuild/vm/firmware.py): which firmware an image's build and verify boots
use, the QEMU arguments and Packer variables of each, and what cannot boot. The boots themselves are in
tests/e2e: the Debian 12 and 13 hybrid goldens under SeaBIOS in their builds and OVMF in their verifies;
SeaBIOS for a whole verify of the Debian 12 golden (`verify --firmware bios`, make test-extra) and for a
copy of its base with no manifest (a base of unknown layout: legacy-bios) in the EC2 datasource negative."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagebuild import vm
from imagebuild.build import baseimage
from imagebuild.build.base_source import boot_mode
from imagebuild.errors import ImagebuildError
from imagebuild.spec import platforms
from imagebuild.verify.boot import image_firmware
from imagebuild.vm import firmware as fw
from tests.support import spec_of


@pytest.mark.parametrize("mode, verify_fw, bake_fw", [
    ("legacy-bios", "bios", "bios"), ("uefi", "uefi", "uefi"),
    ("uefi-preferred", "uefi", "bios"),      # a hybrid image: built under SeaBIOS, verified under UEFI
])
def test_firmware_of_each_boot_mode(mode, verify_fw, bake_fw):
    assert (fw.for_boot_mode(mode), fw.for_bake(mode)) == (verify_fw, bake_fw)


def test_unknown_boot_mode_is_refused():
    with pytest.raises(ImagebuildError, match="unknown boot mode 'efi'"):
        fw.for_boot_mode("efi")


def _drives(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "-drive"]


@pytest.mark.parametrize("arch, code, template", [
    ("amd64", "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("arm64", "/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
])
def test_uefi_is_read_only_code_and_a_copy_of_the_variable_store(tmp_path, arch, code, template):
    code_drive, vars_drive = _drives(fw.qemu_args(arch, "uefi", tmp_path))
    assert code_drive == f"if=pflash,format=raw,unit=0,readonly=on,file={code}"
    copy = Path(vars_drive.rsplit("file=", 1)[1])
    assert "readonly" not in vars_drive and copy.parent == tmp_path
    assert copy.read_bytes() == Path(template).read_bytes()           # the installed package's store
    assert fw.packer_variables(arch, "uefi", tmp_path / "..")["firmware_code"] == code


def test_bios_is_qemus_default_and_does_not_exist_on_arm64(tmp_path):
    assert fw.qemu_args("amd64", "bios", tmp_path) == []
    assert fw.packer_variables("amd64", "bios", tmp_path) == {"firmware_code": "", "firmware_vars": ""}
    with pytest.raises(ImagebuildError, match="arm64 machines boot only under UEFI"):
        fw.qemu_args("arm64", "bios", tmp_path)
    with pytest.raises(ImagebuildError, match="unknown firmware 'coreboot'"):
        fw.check("amd64", "coreboot")


def test_missing_firmware_names_its_package(monkeypatch, tmp_path):
    monkeypatch.setitem(platforms.ARCHES, "amd64", platforms.ARCHES["amd64"] | {"uefi_code": str(tmp_path / "nope.fd")})
    with pytest.raises(ImagebuildError, match="install the Debian package ovmf"):
        fw.qemu_args("amd64", "uefi", tmp_path)


def test_guest_command_per_architecture_and_firmware(tmp_path):
    bios = vm.Guest(None, serial_log=tmp_path / "s.log", accel="tcg").command()
    assert bios[0] == "qemu-system-x86_64" and "pc" in bios and not any("pflash" in a for a in bios)
    guest = vm.Guest(None, serial_log=tmp_path / "s.log", accel="tcg", firmware="uefi")
    cmd = guest.command()
    [code, vars_drive] = _drives(cmd)
    assert "OVMF_CODE_4M.fd" in code and Path(vars_drive.rsplit("file=", 1)[1]).is_file()
    guest.stop()                                    # the boot's own variable store goes with it
    assert not Path(vars_drive.rsplit("file=", 1)[1]).exists()
    arm = vm.Guest(None, serial_log=tmp_path / "s.log", accel="auto", arch="arm64", firmware="uefi")
    cmd = arm.command()
    assert cmd[0] == "qemu-system-aarch64" and cmd[cmd.index("-machine") + 1] == "virt"
    assert cmd[cmd.index("-cpu") + 1] == "max,pauth-impdef=on" and "tcg,thread=multi" in cmd   # never KVM
    arm.stop()


def _fake_base(directory: Path, flavor: baseimage.Flavor) -> Path:
    """A file laid out as `baseimage.build` leaves a finished image (the stamps it checks)."""
    image, kernel, initrd = (directory / n for n in baseimage.names(flavor))
    for path in (image, kernel, initrd):
        path.write_bytes(b"x")
    image.with_name(image.name + ".sha256").write_text("0" * 64 + f"  {image.name}\n")
    image.with_name(image.name + ".recipe").write_text(baseimage.recipe_hash(flavor=flavor) + "\n")
    return image


def test_boot_mode_of_the_built_in_base_images_and_of_your_own(tmp_path):
    debian13 = spec_of({"image": {"os": "debian-13"}, "containerd": {"version": "1.7.24"}})
    built = _fake_base(tmp_path, baseimage.Flavor.of("debian-13", "amd64"))
    assert boot_mode(debian13, str(built)) == "uefi-preferred"
    assert boot_mode(spec_of({}), str(_fake_base(tmp_path, baseimage.DEFAULT))) == "uefi-preferred"
    mine = tmp_path / "mine.qcow2"
    mine.write_bytes(b"y")
    assert boot_mode(debian13, str(mine)) == "legacy-bios"            # unknown: what every amd64 image boots
    bios_only = spec_of({"image": {"base": {"source": str(mine), "checksum": "sha256:" + "0" * 64,
                                            "boot_mode": "legacy-bios"}}})
    assert boot_mode(bios_only, str(mine)) == "legacy-bios"           # a BIOS-only base of your own
    assert boot_mode(spec_of({"image": {"architecture": "arm64"}}), str(mine)) == "uefi"
    declared = spec_of({"image": {"base": {"source": str(mine), "checksum": "sha256:" + "0" * 64,
                                           "boot_mode": "uefi-preferred"}}})
    assert boot_mode(declared, str(mine)) == "uefi-preferred"


def test_verify_firmware_comes_from_the_manifest_unless_chosen(tmp_path):
    spec = spec_of({})
    image = tmp_path / "golden.qcow2"
    image.write_bytes(b"x")
    assert image_firmware(image, spec) == "bios"                         # no manifest, not a built-in base
    (tmp_path / "manifest.json").write_text(json.dumps({"image": "golden.qcow2", "boot_mode": "uefi-preferred"}))
    assert image_firmware(image, spec) == "uefi"
    assert image_firmware(image, spec, "bios") == "bios"
    (tmp_path / "manifest.json").write_text(json.dumps({"image": "other.qcow2", "boot_mode": "uefi"}))
    assert image_firmware(image, spec) == "bios"                         # another image's manifest
    with pytest.raises(ImagebuildError, match="arm64 machines boot only under UEFI"):
        image_firmware(image, spec_of({"image": {"architecture": "arm64"}}), "bios")
