"""The firmware a guest boots under, chosen in one place for every QEMU this package starts (the
verify boot, Packer's build VM): SeaBIOS (QEMU's default on x86), OVMF (UEFI on x86_64) or AAVMF
(UEFI on arm64), and the machine that goes with the architecture.

UEFI firmware is two flash devices: the firmware code, read-only and shared, and a variable store
that the firmware writes (boot entries), so every boot gets its own copy of the store's template.
An image with no NVRAM boot entry boots through the removable path of its ESP
(EFI/BOOT/BOOTX64.EFI, BOOTAA64.EFI), as EC2 does.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from imagebuild.errors import ImagebuildError
from imagebuild.spec.platforms import _arch

FIRMWARES = ("bios", "uefi")

#: EC2's BootMode of an image -> the firmware its verify boot uses. uefi-preferred (a hybrid image)
#: boots under UEFI, what a UEFI-capable instance type gives it (its Packer build proves BIOS).
BOOT_MODE_FIRMWARE = {"legacy-bios": "bios", "uefi": "uefi", "uefi-preferred": "uefi"}


#: ... and the firmware its Packer build uses: a hybrid image is built under SeaBIOS, so the build boot
#: proves its BIOS path and the verify boot (UEFI) the other: both on every image, at no extra boot.
BAKE_FIRMWARE = {"legacy-bios": "bios", "uefi": "uefi", "uefi-preferred": "bios"}


def for_bake(boot_mode: str) -> str:
    """The firmware the Packer build of an image registered with *boot_mode* uses."""
    for_boot_mode(boot_mode)
    return BAKE_FIRMWARE[boot_mode]


def packer_variables(arch: str, firmware: str, work: str | os.PathLike) -> dict[str, str]:
    """The Packer template's firmware_code/firmware_vars (empty: SeaBIOS); a UEFI build's variable
    store is copied into *work*."""
    check(arch, firmware)
    if firmware == "bios":
        return {"firmware_code": "", "firmware_vars": ""}
    return {"firmware_code": str(_arch(arch)["uefi_code"]), "firmware_vars": str(vars_copy(arch, work))}


def for_boot_mode(boot_mode: str) -> str:
    """The firmware a verify boot of an image registered with *boot_mode* uses."""
    try:
        return BOOT_MODE_FIRMWARE[boot_mode]
    except KeyError:
        raise ImagebuildError(f"unknown boot mode {boot_mode!r}: expected one of "
                              f"{', '.join(BOOT_MODE_FIRMWARE)}") from None


def check(arch: str, firmware: str) -> None:
    """Refuse what cannot boot: an unknown firmware, BIOS on arm64, UEFI firmware files not installed."""
    info = _arch(arch)
    if firmware not in FIRMWARES:
        raise ImagebuildError(f"unknown firmware {firmware!r}: expected one of {', '.join(FIRMWARES)}")
    if firmware == "bios" and not info["bios"]:
        raise ImagebuildError(f"{arch} machines boot only under UEFI (there is no BIOS for them)")
    if firmware == "uefi":
        for path in (info["uefi_code"], info["uefi_vars"]):
            if not Path(path).is_file():
                raise ImagebuildError(f"UEFI firmware {path} is missing; install the Debian package "
                                      f"{info['uefi_package']}")


def vars_copy(arch: str, work: str | os.PathLike) -> Path:
    """A fresh copy of *arch*'s UEFI variable-store template in *work* (one per boot: the firmware writes it)."""
    check(arch, "uefi")
    dest = Path(work) / f"uefi-vars-{arch}.fd"
    shutil.copyfile(_arch(arch)["uefi_vars"], dest)
    dest.chmod(0o600)
    return dest


def pflash_drives(arch: str, vars_file: str | os.PathLike) -> list[str]:
    """The two pflash -drive values of a UEFI boot: the code read-only, *vars_file* writable."""
    code = _arch(arch)["uefi_code"]
    return [f"if=pflash,format=raw,unit=0,readonly=on,file={_option(code)}",
            f"if=pflash,format=raw,unit=1,file={_option(vars_file)}"]


def qemu_args(arch: str, firmware: str, work: str | os.PathLike) -> list[str]:
    """QEMU arguments selecting *firmware* for an *arch* guest (nothing for BIOS: QEMU's default);
    a UEFI boot's variable store is copied into *work*."""
    check(arch, firmware)
    if firmware == "bios":
        return []
    args: list[str] = []
    for drive in pflash_drives(arch, vars_copy(arch, work)):
        args += ["-drive", drive]
    return args


def _option(value: str | os.PathLike) -> str:
    """A path as a QEMU option value (commas are doubled)."""
    return os.fspath(value).replace(",", ",,")
