"""`imagebuild doctor`: what this machine lacks for each stage, and the command that installs it.

The programs come from the code's own constants where it has them (the base image's
:data:`~imagebuild.build.baseimage.BUILD_TOOLS`, the QEMU binary and UEFI firmware of each architecture in
:data:`~imagebuild.spec.platforms.ARCHES`, the seed ISO writers :data:`~imagebuild.vm.disks.SEED_ISO_TOOLS`);
:data:`PACKAGES` names the Debian package of each. tests/test_doctor.py holds the list to every program the
product runs (read from its code) and every package to the Makefile's APT_PACKAGES. Nothing here prints a
credential: only whether boto3 finds some, and by which method.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from imagebuild.build.baseimage import BINFMT, BUILD_TOOLS, _need_binfmt
from imagebuild.errors import ImagebuildError
from imagebuild.spec.platforms import ARCHES
from imagebuild.vm.accel import _kvm_device_usable, host_arch
from imagebuild.vm.disks import SEED_ISO_TOOLS

STAGES = ("render", "bake", "verify", "publish")

#: The Debian package of each program imagebuild runs on the host (and of xorriso, which Packer runs for the
#: build seed). The last five are of Debian's required packages: on every Debian machine.
PACKAGES: dict[str, str] = {
    "packer": "packer", "qemu-img": "qemu-utils", "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-aarch64": "qemu-system-arm", "mmdebstrap": "mmdebstrap", "sfdisk": "fdisk",
    "mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs", "mkfs.vfat": "dosfstools", "mmd": "mtools",
    "mcopy": "mtools", "xorriso": "xorriso", "genisoimage": "genisoimage", "ssh-keygen": "openssh-client",
    "openssl": "openssl", "docker-registry": "docker-registry", "skopeo": "skopeo", "tinyproxy": "tinyproxy",
    "chroot": "coreutils", "umount": "mount", "apt-config": "apt", "setpriv": "util-linux", "dpkg-query": "dpkg",
}
#: Beside BUILD_TOOLS, what a base image build runs: mmdebstrap's tree is entered, its mounts undone, and the
#: host's apt settings read.
BASE_IMAGE_EXTRA = ("chroot", "umount", "apt-config")
BASE_WHY = "base image (bake builds one on first use, unless image.base names one)"
#: Where Debian puts administrators' programs: off a normal user's PATH.
SBIN = ("/usr/sbin", "/sbin")
#: boto3 as imagebuild depends on it (pyproject.toml).
BOTO3 = "boto3>=1.34,<2"


@dataclass(frozen=True)
class Need:
    """One thing a stage needs. *kind*: program (any one of *names*), files (all of *names*), module,
    credentials, root, binfmt. *package*: the Debian package that brings it; *optional*: reported, never
    counted as missing."""

    stage: str
    kind: str
    names: tuple[str, ...]
    why: str
    package: str | None = None
    optional: bool = False

    @property
    def label(self) -> str:
        return {"files": Path(self.names[0]).parent.name + " firmware", "credentials": "AWS credentials",
                "root": "root", "binfmt": f"binfmt_misc {self.names[0]}"}.get(self.kind, " or ".join(self.names))


@dataclass(frozen=True)
class Result:
    need: Need
    found: str | None          # where or what was found; None: missing
    remedy: str | None = None  # what to do, when it is not (only) a package to install


def _program(stage: str, *names: str, why: str, optional: bool = False) -> Need:
    return Need(stage, "program", names, why, PACKAGES[names[0]], optional)


def _uefi(stage: str, arch: str, why: str, optional: bool = False) -> Need:
    info = ARCHES[arch]
    return Need(stage, "files", (info["uefi_code"], info["uefi_vars"]), why, info["uefi_package"], optional)


def _setpriv(stage: str) -> Need:
    return _program(stage, "setpriv", why="QEMU dies with imagebuild even if it is SIGKILLed (without it: the same "
                    "through prctl, after Python's fork)", optional=True)


def needs(stage: str, arch: str) -> list[Need]:
    """What *stage* needs on this machine for images of *arch*."""
    qemu = ARCHES[arch]["qemu"]
    if stage == "render":
        return []
    if stage == "bake":
        found = [_program(stage, "packer", why="runs the build (packer build)"),
                 _program(stage, qemu, why="the build VM"),
                 _program(stage, "qemu-img", why="reads the built image (manifest.json)"),
                 _program(stage, "ssh-keygen", why="the build VM's one-time SSH key"),
                 _program(stage, "xorriso", why="Packer writes the build seed ISO with it (cd_files)"),
                 _uefi(stage, arch, "UEFI firmware of the build VM" + (
                     "" if not ARCHES[arch]["bios"] else ": only for bake --firmware uefi or a uefi base image"),
                     optional=ARCHES[arch]["bios"])]
        listed = {name for need in found for name in need.names}
        found += [_program(stage, tool, why=BASE_WHY) for tool in (*BUILD_TOOLS, *BASE_IMAGE_EXTRA)
                  if tool not in listed]
        found.append(Need(stage, "root", ("root",), BASE_WHY + ": mmdebstrap --mode=root"))
        found.append(_setpriv(stage))
        found.append(_program(stage, "dpkg-query", why="the provenance record names the host's qemu and firmware "
                              "packages (without it: no versions there)", optional=True))
        if arch in BINFMT and arch != host_arch():
            found.append(Need(stage, "binfmt", (BINFMT[arch],), BASE_WHY + f": runs {arch} programs in its tree",
                              "qemu-user-static"))
        return found
    if stage == "verify":
        return [_program(stage, qemu, why="boots the image"),
                _program(stage, "qemu-img", why="the throwaway overlay the boot writes to"),
                _program(stage, *SEED_ISO_TOOLS, why="the NoCloud seed ISO"),
                _program(stage, "ssh-keygen", why="the boot's one-time SSH key"),
                _program(stage, "openssl", why="the registry lab's CA and certificate"),
                _program(stage, "docker-registry", why="the registry lab the guest pulls from"),
                _program(stage, "skopeo", why="pushes the test image into the registry lab"),
                _program(stage, "tinyproxy", why="the lab's proxy, when the guest's one way out is the spec's proxy"),
                _program(stage, "debugfs", why="reads the image offline (hygiene checks)"),
                _program(stage, "sfdisk", why="finds the image's partitions offline"),
                _uefi(stage, arch, "UEFI firmware: a uefi or uefi-preferred image boots under it"),
                _setpriv(stage)]
    if stage == "publish":
        return [_program(stage, "qemu-img", why="converts the image to raw for the EBS snapshot"),
                Need(stage, "module", ("boto3",), "the AWS API"),
                Need(stage, "credentials", ("aws",), "boto3's chain: environment, shared files, instance role")]
    raise ValueError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")


def programs() -> set[str]:
    """Every program the doctor checks, for any stage and architecture."""
    return {name for stage in STAGES for arch in ARCHES for need in needs(stage, arch)
            if need.kind == "program" for name in need.names}


def packages() -> set[str]:
    """Every Debian package the doctor may ask for."""
    return {need.package for stage in STAGES for arch in ARCHES for need in needs(stage, arch) if need.package}


# --- checking ----------------------------------------------------------------------------------------

def _check_program(need: Need) -> Result:
    for name in need.names:
        if found := shutil.which(name):
            return Result(need, found)
    for name in need.names:
        off_path = next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)
        if off_path:
            return Result(dataclasses.replace(need, package=None), None,
                          f"{off_path} is installed but not on PATH (imagebuild runs it by name): add "
                          f"{Path(off_path).parent} to PATH")
    return Result(need, None)


def _check_credentials(need: Need) -> Result:
    try:
        import boto3
    except ImportError:
        return Result(need, None, "needs boto3 first")
    credentials = boto3.Session().get_credentials()  # resolved, never printed: only how they were found
    if credentials is None:
        return Result(need, None, "configure them: `aws configure`, AWS_PROFILE, AWS_ACCESS_KEY_ID and "
                      "AWS_SECRET_ACCESS_KEY, or an instance role")
    return Result(need, f"found by boto3 ({credentials.method})")


def check(need: Need) -> Result:
    if need.kind == "program":
        return _check_program(need)
    if need.kind == "files":
        absent = [name for name in need.names if not Path(name).is_file()]
        return Result(need, None if absent else " ".join(need.names))
    if need.kind == "module":
        try:
            module = importlib.import_module(need.names[0])
        except ImportError:
            return Result(need, None, f"pip install '{BOTO3}'")
        return Result(need, f"{need.names[0]} {getattr(module, '__version__', '')}".strip())
    if need.kind == "credentials":
        return _check_credentials(need)
    if need.kind == "root":
        uid = os.geteuid()
        return Result(need, "uid 0") if uid == 0 else Result(need, None, f"run it as root (uid {uid} now)")
    if need.kind == "binfmt":
        try:
            _need_binfmt(next(arch for arch, name in BINFMT.items() if name == need.names[0]))
        except ImagebuildError as exc:
            return Result(need, None, str(exc))
        return Result(need, "registered with the F flag")
    raise ValueError(f"unknown need kind {need.kind!r}")


def kvm_line(arch: str) -> str:
    """/dev/kvm as information: it decides speed, never whether a stage can run."""
    if arch != host_arch():
        return f"/dev/kvm: not used: {arch} guests on this {host_arch()} machine run under TCG (emulated, slow)"
    if _kvm_device_usable():
        return "/dev/kvm: usable by this user (bake and verify still probe a kernel boot under it before using it)"
    if os.path.exists("/dev/kvm"):
        return "/dev/kvm: present but not usable by this user (add it to the kvm group); QEMU runs under TCG"
    return "/dev/kvm: missing (no KVM here); QEMU runs under TCG, several times slower"


def report(results: list[Result], stages: list[str], arch: str) -> tuple[str, bool]:
    """The doctor's text, and whether something required is missing."""
    lines = [f"imagebuild doctor: {arch} images, on this {host_arch()} machine"]
    for stage in stages:
        mine = [r for r in results if r.need.stage == stage]
        lines.append(f"{stage}:" + ("" if mine else " nothing beyond imagebuild itself"))
        width = max((len(r.need.label) for r in mine), default=0)
        for r in mine:
            state = "ok" if r.found else "optional" if r.need.optional else "MISSING"
            detail = r.found or r.need.why + (f" (Debian package {r.need.package})" if r.need.package else "")
            if not r.found and r.remedy:
                detail += f": {r.remedy}"
            lines.append(f"  {state:<8} {r.need.label:<{width}}  {detail}")
    lines.append(kvm_line(arch))
    missing = [r for r in results if not r.found and not r.need.optional]
    if not missing:
        lines.append(f"nothing missing for {', '.join(stages)}")
        return "\n".join(lines) + "\n", False
    apt = sorted({r.need.package for r in missing if r.need.package and r.need.kind != "module"})
    count = len({r.need.label for r in missing})  # a program two stages need is one thing to install
    lines.append(f"{count} missing for {', '.join(s for s in stages if any(r.need.stage == s for r in missing))}"
                 + (":" if apt else "; see each line above"))
    if apt:
        lines.append(f"  apt-get install -y {' '.join(apt)}" + ("" if os.geteuid() == 0 else "   (as root)"))
    remedies = {f"  {r.need.label}: {r.remedy}": None for r in missing if r.remedy and r.need.kind != "binfmt"}
    lines += list(remedies)
    return "\n".join(lines) + "\n", True


def examine(stages: list[str], arch: str | None = None) -> int:
    """`imagebuild doctor`: print what *stages* need here; 0 when nothing required is missing, else 1."""
    arch = arch or (host_arch() if host_arch() in ARCHES else "amd64")
    stages = [s for s in STAGES if s in stages]
    results = [check(need) for stage in stages for need in needs(stage, arch)]
    text, missing = report(results, stages, arch)
    sys.stdout.write(text)
    return 1 if missing else 0
