"""The machines a spec's image.architecture means: per architecture the QEMU binary, machine type, CPU
model under TCG, the kernel's serial console, and the Debian package and files of its UEFI firmware.
Data for the Packer template (render) and every QEMU this package starts (vm.firmware, vm.guest)."""
from __future__ import annotations

from imagebuild.errors import ImagebuildError

#: Per architecture: QEMU binary, machine, CPU model under TCG, the kernel's serial console, the
#: Debian package and files of its UEFI firmware (code, variable-store template).
ARCHES: dict[str, dict] = {
    "amd64": {"qemu": "qemu-system-x86_64", "machine": "pc", "tcg_cpu": "max", "console": "ttyS0",
              "uefi_package": "ovmf", "uefi_code": "/usr/share/OVMF/OVMF_CODE_4M.fd",
              "uefi_vars": "/usr/share/OVMF/OVMF_VARS_4M.fd", "bios": True},
    # pauth-impdef=on: QEMU's cheaper pointer-authentication algorithm (the architected QARMA one is
    # expensive under TCG).
    "arm64": {"qemu": "qemu-system-aarch64", "machine": "virt", "tcg_cpu": "max,pauth-impdef=on",
              "console": "ttyAMA0", "uefi_package": "qemu-efi-aarch64",
              "uefi_code": "/usr/share/AAVMF/AAVMF_CODE.fd", "uefi_vars": "/usr/share/AAVMF/AAVMF_VARS.fd",
              "bios": False},
}


def _arch(arch: str) -> dict:
    try:
        return ARCHES[arch]
    except KeyError:
        raise ImagebuildError(f"unknown architecture {arch!r}: expected one of {', '.join(ARCHES)}") from None


def qemu_binary(arch: str) -> str:
    return str(_arch(arch)["qemu"])


def machine(arch: str) -> str:
    return str(_arch(arch)["machine"])


def tcg_cpu(arch: str) -> str:
    return str(_arch(arch)["tcg_cpu"])


def console(arch: str) -> str:
    """The serial console the kernel of an *arch* guest writes to (QEMU's first UART there)."""
    return str(_arch(arch)["console"])
