"""Debian 12 and 13 generic-cloud-style base images (amd64, arm64), built locally from the Debian mirror.

Vendor cloud images cannot always be downloaded, so this module builds a stand-in that
behaves like one. A :class:`Flavor` (release x architecture) picks the disk layout: amd64 (Debian
12 and 13) is GPT hybrid (BIOS boot partition + ESP + root: SeaBIOS and UEFI boot it), arm64 GPT
with an ESP (UEFI only), their GRUB images made by the tree's own grub-mkimage (see
``base_disk.make_gpt_disk``). Every flavor: one ext4 root partition, the Debian
cloud kernel (ENA and NVMe drivers, checked at build time), cloud-init (ds-identify picks
NoCloud, Ec2 or ConfigDrive; Ec2 talks IMDSv2), openssh-server, sudo, growpart/resizefs,
chrony (Amazon Time Sync on EC2, Debian's NTP pool elsewhere), apt-daily timers masked,
serial console on ttyS0, first-boot state left unset (empty machine-id, no SSH host keys).

How it is built (no mounts, no loop devices):

1. ``mmdebstrap`` the release into a directory, from the Debian mirror configured in the
   system's apt sources (read at run time; ``IMAGEBUILD_DEBIAN_MIRROR`` overrides it).
2. Configuration files are written into that tree from Python.
3. ``sfdisk`` writes a GPT on a sparse raw file; ``mkfs.ext4 -d TREE -E offset=128MiB``
   creates the populated root filesystem directly inside the root partition.
4. GRUB, made by the tree's own ``grub-mkimage`` with an embedded config that finds the root
   filesystem by UUID and loads ``/boot/grub/grub.cfg`` from it: EFI GRUB at the removable
   path of a FAT32 ESP (``mkfs.vfat`` on a file, mtools); on amd64 also an i386-pc core.img
   in the BIOS boot partition and ``boot.img`` (440 bytes) in the protective MBR pointing at it.
5. ``qemu-img convert -c -O qcow2``.

The result is cached under ``cache_dir("base", RECIPE_HASH)``: the hash covers everything
that shapes the image (package list, file contents, disk layout, GRUB modules, this
recipe's version), so a changed recipe builds a new image and an unchanged one returns at
once. A build happens in a temporary directory beside the final one and is renamed into
place only when complete; a file lock serialises concurrent callers.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path

from imagebuild.build import aptsources
from imagebuild.build.base_disk import (
    DISK_SIZE,
    ESP_END,
    FS_LABEL,
    GRUB_EARLY_CFG,
    GRUB_EFI_MODULES,
    GRUB_MODULES,
    MKFS_FEATURES,
    make_gpt_disk,
)
from imagebuild.build.base_files import FILES
from imagebuild.digest import sha256_file
from imagebuild.errors import ImagebuildError
from imagebuild.paths import cache_dir
from imagebuild.progress import step, warning
from imagebuild.run import PIPE, STDOUT, locked, run
from imagebuild.vm.disks import convert

# Bump when the build procedure changes in a way the other constants do not capture.
RECIPE_VERSION = 2

SUITE = "bookworm"
IMAGE_NAME = "debian-12-base.qcow2"
KERNEL_NAME = "debian-12-base.vmlinuz"     # beside the image: for direct -kernel boots and
INITRD_NAME = "debian-12-base.initrd.img"  # for probing KVM (qemu.probe_kvm)
HOSTNAME = "debian"
PART_OFFSET = 1024 * 1024        # recipe key only (the MBR layout's root partition, at 1 MiB); see recipe()
KERNEL_CMDLINE = "ro console=tty0 console=ttyS0,115200"

# Per Debian release: its version, the ext4 features its GRUB cannot read, and how the guest's network
# is configured. Debian 12: ifupdown (cloud-init's eni renderer, dhclient). Debian 13: netplan.io on
# systemd-networkd with systemd-resolved, as Debian's own cloud images do: cloud-init 25.1's fallback
# network config asks for DHCPv6 too, and ifupdown's `dhclient -6` holds networking.service (and every
# unit after network.target) for its 5-minute timeout where nothing answers DHCPv6 (QEMU's user
# network); networkd does not block the boot on it.
RELEASES: dict[str, dict] = {
    "bookworm": {"version": 12, "mkfs_features": MKFS_FEATURES,
                 "network": ("ifupdown", "isc-dhcp-client"), "enable": ()},
    # GRUB 2.12 reads metadata_csum_seed and ignores orphan_file (a compat feature): mke2fs's defaults.
    "trixie": {"version": 13, "mkfs_features": "",
               "network": ("netplan.io", "systemd-resolved"),
               "enable": ("systemd-networkd.service", "systemd-resolved.service")},
}
# Per architecture: kernel, EFI GRUB (target, package, removable-path binary), serial consoles (the
# last is /dev/console). arm64: QEMU virt's PL011 is ttyAMA0, while Graviton's serial console (like
# x86 instances') is ttyS0; the kernel skips a console that does not exist, so both are named.
ARCHES: dict[str, dict] = {
    "amd64": {"kernel": "linux-image-cloud-amd64", "efi_target": "x86_64-efi", "efi_grub": "grub-efi-amd64-bin",
              "efi_binary": "BOOTX64.EFI", "consoles": ("ttyS0",)},
    "arm64": {"kernel": "linux-image-cloud-arm64", "efi_target": "arm64-efi", "efi_grub": "grub-efi-arm64-bin",
              "efi_binary": "BOOTAA64.EFI", "consoles": ("ttyAMA0", "ttyS0")},
}
#: What each firmware layout is registered as (EC2 RegisterImage BootMode).
BOOT_MODES = {"hybrid": "uefi-preferred", "uefi": "uefi"}


@dataclasses.dataclass(frozen=True)
class Flavor:
    """Which base image: the Debian release (suite) and the architecture; the disk layout follows.

    ``hybrid`` (amd64, Debian 12 and 13): GPT with a BIOS boot partition
    (i386-pc core.img), an EFI system partition (x86_64-efi GRUB at the removable path
    EFI/BOOT/BOOTX64.EFI: no NVRAM entry needed) and the root partition; it boots under SeaBIOS and
    OVMF alike, so its AMI is registered ``uefi-preferred``. ``uefi`` (arm64): GPT with the ESP
    (EFI/BOOT/BOOTAA64.EFI) and the root partition. Both GRUBs embed the same early config, so one
    /boot/grub/grub.cfg serves every firmware.
    """
    release: str = SUITE
    arch: str = "amd64"

    @classmethod
    def of(cls, os_name: str, architecture: str) -> Flavor:
        """The flavor of a spec's image.os and image.architecture."""
        from imagebuild.spec.model import OS_RELEASES

        return cls(OS_RELEASES[os_name]["suite"], architecture)

    @property
    def firmware(self) -> str:
        return "hybrid" if self.arch == "amd64" else "uefi"

    @property
    def boot_mode(self) -> str:
        return BOOT_MODES[self.firmware]

    @property
    def ec2_architecture(self) -> str:
        from imagebuild.spec.model import EC2_ARCHITECTURES  # the one table (the model loads lazily here

        return EC2_ARCHITECTURES[self.arch]

    @property
    def version(self) -> int:
        return int(RELEASES[self.release]["version"])


DEFAULT = Flavor()

PACKAGES = (
    "linux-image-cloud-amd64",
    "grub-pc-bin",
    "systemd-sysv",
    "udev",
    "dbus",
    "cloud-init",
    "cloud-guest-utils",       # growpart, used by cloud-init to grow the root partition
    "chrony",                  # time sync: see etc/chrony/sources.d below
    "openssh-server",
    "sudo",
    "ca-certificates",
    "curl",
    "gpg",
    "iproute2",
    "ifupdown",                # cloud-init's "eni" renderer on Debian 12
    "isc-dhcp-client",
    "netbase",
    "e2fsprogs",
    "kmod",
    "procps",
    "util-linux",
    "less",
    "tar",
    "gzip",
    "xz-utils",
)

# Masked (linked to /dev/null): the apt-daily timers. A first boot must never take the apt lock
# while the user's user-data installs packages; images are updated by rebuilding them (the
# nightly pipeline). Unmask them in user-data to let instances update themselves.
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer")

# Kernel drivers an EC2 (Nitro) instance needs: the ENA NIC and the NVMe disks (root on NVMe:
# also in the initrd). Checked in the tree at build time, and in every verify boot.
REQUIRED_MODULES = ("ena", "nvme")

# Removed from the tree: per-instance state that must be created on first boot.
REMOVE_GLOBS = (
    "etc/ssh/ssh_host_*",
    "var/lib/dbus/machine-id",
    "var/lib/cloud/*",
    "var/log/*.log",
    "var/cache/apt/*.bin",
)


def check_flavor(flavor: Flavor) -> Flavor:
    if flavor.release not in RELEASES:
        raise ImagebuildError(f"base image: release {flavor.release!r} is not one of {sorted(RELEASES)}")
    if flavor.arch not in ARCHES:
        raise ImagebuildError(f"base image: architecture {flavor.arch!r} is not one of {sorted(ARCHES)}")
    return flavor


def names(flavor: Flavor = DEFAULT) -> tuple[str, str, str]:
    """(image, kernel, initrd) file names of *flavor*'s base image."""
    if flavor == DEFAULT:
        return IMAGE_NAME, KERNEL_NAME, INITRD_NAME
    stem = f"debian-{flavor.version}-base" + ("" if flavor.arch == "amd64" else f"-{flavor.arch}")
    return f"{stem}.qcow2", f"{stem}.vmlinuz", f"{stem}.initrd.img"


def recipe(flavor: Flavor = DEFAULT) -> dict:
    """Everything that determines the image, as plain JSON-able data.

    The keys of ``base`` are those of the recipe before flavors existed (Debian 12 amd64 on MBR),
    kept so that no other flavor's hash (and cached image) changes: ``part_offset`` describes that MBR
    layout and no image today. Each flavor then sets what it is."""
    check_flavor(flavor)
    base = {
        "recipe_version": RECIPE_VERSION,
        "suite": SUITE,
        "packages": sorted(PACKAGES),
        "files": {k: FILES[k] for k in sorted(FILES)},
        "remove": sorted(REMOVE_GLOBS),
        "masked_units": sorted(MASKED_UNITS),
        "required_modules": sorted(REQUIRED_MODULES),
        "grub_modules": sorted(GRUB_MODULES),
        "grub_early_cfg": GRUB_EARLY_CFG,
        "hostname": HOSTNAME,
        "fs_label": FS_LABEL,
        "disk_size": DISK_SIZE,
        "part_offset": PART_OFFSET,
        "kernel_cmdline": KERNEL_CMDLINE,
        "mkfs_features": MKFS_FEATURES,
    }
    arch, release = ARCHES[flavor.arch], RELEASES[flavor.release]
    packages = [p for p in PACKAGES if p not in ("linux-image-cloud-amd64", "grub-pc-bin")
                and p not in RELEASES["bookworm"]["network"]]
    packages += [arch["kernel"], *release["network"]]
    if flavor.firmware == "hybrid":
        packages.append("grub-pc-bin")
    packages.append(arch["efi_grub"])
    base.update({
        "flavor": {"release": flavor.release, "arch": flavor.arch, "firmware": flavor.firmware},
        "suite": flavor.release,
        "packages": sorted(packages),
        "files": _flavor_files(flavor),
        "enabled_units": sorted(release["enable"]),
        "grub_modules": sorted(GRUB_MODULES),
        "grub_efi_modules": sorted(GRUB_EFI_MODULES),
        "esp_end": ESP_END,
        "kernel_cmdline": _cmdline(flavor),
        "mkfs_features": release["mkfs_features"],
    })
    return base


def _cmdline(flavor: Flavor) -> str:
    return f"ro console=tty0 {_consoles(flavor)}"


def _consoles(flavor: Flavor) -> str:
    return " ".join(f"console={tty},115200" for tty in ARCHES[flavor.arch]["consoles"])


def _flavor_files(flavor: Flavor) -> dict[str, str]:
    """FILES as *flavor* needs them: its Debian version in grub.cfg, its console,
    and (Debian 13) no ifupdown configuration and no resolv.conf (systemd-resolved owns it)."""
    files = dict(FILES)
    grub = files["boot/grub/grub.cfg"].replace("Debian GNU/Linux 12", f"Debian GNU/Linux {flavor.version}")
    if flavor.arch != "amd64":   # no 8250 UART: GRUB talks through the firmware's console
        grub = grub.replace("serial --unit=0 --speed=115200\n", "")
        grub = grub.replace("terminal_input serial console\nterminal_output serial console\n",
                            "terminal_input console\nterminal_output console\n")
    files["boot/grub/grub.cfg"] = grub
    default = files["etc/default/grub"].replace("console=ttyS0,115200", _consoles(flavor))
    if flavor.arch != "amd64":
        default = default.replace('GRUB_TERMINAL="serial console"', 'GRUB_TERMINAL="console"')
        default = default.replace('GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n', "")
    files["etc/default/grub"] = default
    if "ifupdown" not in RELEASES[flavor.release]["network"]:
        del files["etc/network/interfaces"], files["etc/resolv.conf"]
    return {k: files[k] for k in sorted(files)}


def recipe_hash(spec: dict | None = None, flavor: Flavor = DEFAULT) -> str:
    """sha256 (hex) of the canonical JSON of *spec* (default: this module's recipe of *flavor*)."""
    data = json.dumps(recipe(flavor) if spec is None else spec, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(data.encode()).hexdigest()


def checksum(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of the file at *path*."""
    return "sha256:" + sha256_file(path)


def cached_image(out_dir: str | os.PathLike | None = None, flavor: Flavor = DEFAULT) -> Path | None:
    """The finished image for the current recipe if it is already built, else None."""
    target = _target_dir(out_dir, flavor) / names(flavor)[0]
    return target if _complete(target, flavor) else None


def built_from_recipe(image: str | os.PathLike, flavor: Flavor = DEFAULT) -> bool:
    """Is *image* a base image `build` made from *flavor*'s current recipe (its .recipe stamp says so)?"""
    return _complete(Path(image), flavor)


def kernel_files(out_dir: str | os.PathLike | None = None,
                 flavor: Flavor = DEFAULT) -> tuple[Path, Path] | None:
    """(vmlinuz, initrd.img) of the built base image, if it is built (else None).

    Boot them with ``-kernel/-initrd`` and :func:`kernel_cmdline` to skip GRUB (~7 s
    under TCG); valid for the base image and images whose kernel was not upgraded.
    """
    image = cached_image(out_dir, flavor)
    if image is None:
        return None
    _, kernel, initrd = names(flavor)
    return image.with_name(kernel), image.with_name(initrd)


def kernel_cmdline(flavor: Flavor = DEFAULT) -> str:
    """The kernel command line the image's grub.cfg uses."""
    return f"root=UUID={_fs_uuid(flavor)} {_cmdline(flavor)}"


def build(out_dir: str | os.PathLike | None = None, flavor: Flavor = DEFAULT) -> Path:
    """Build (or reuse) the base image and return the path of its qcow2.

    *out_dir* defaults to ``cache_dir("base", recipe_hash())``. A finished image there,
    built from the same recipe, is returned at once. Beside it: ``IMAGE.sha256``
    (``sha256sum`` format) and ``IMAGE.recipe`` (the recipe hash it was built from).
    """
    check_flavor(flavor)
    image_name, kernel_name, initrd_name = names(flavor)
    target_dir = _target_dir(out_dir, flavor)
    target = target_dir / image_name
    if _complete(target, flavor):
        return target
    _preflight()

    with locked(target_dir / ".lock", waiting="base image: another process is building it; waiting for its lock"):
        if _complete(target, flavor):  # another process finished it while we waited
            return target
        for stale in target_dir.glob(".build-*"):
            _remove_tree(stale)         # left by a build that was killed outright
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=target_dir))
        try:
            image = _build_into(work, flavor)
            digest = checksum(image)
            (work / (image_name + ".sha256")).write_text(
                f"{digest.split(':', 1)[1]}  {image_name}\n")
            (work / (image_name + ".recipe")).write_text(recipe_hash(flavor=flavor) + "\n")
            # The qcow2 is renamed last: its presence means "complete".
            for name in (kernel_name, initrd_name, image_name + ".sha256",
                         image_name + ".recipe", image_name):
                os.replace(work / name, target_dir / name)
        finally:
            _remove_tree(work)
    step(f"base image ready: {target} ({target.stat().st_size / 2**20:.0f} MiB)")
    return target


# --- internals ---------------------------------------------------------------------------

#: The host's tools a base image build runs (GRUB is the tree's own).
BUILD_TOOLS = ("mmdebstrap", "sfdisk", "mkfs.ext4", "qemu-img", "mkfs.vfat", "mmd", "mcopy")


def _preflight() -> None:
    for tool in BUILD_TOOLS:
        if shutil.which(tool) is None:
            raise ImagebuildError(
                f"building the base image needs `{tool}`; install the Debian packages "
                "mmdebstrap, fdisk, e2fsprogs, qemu-utils, dosfstools and mtools")
    if os.geteuid() != 0:
        raise ImagebuildError("building the base image needs root (mmdebstrap --mode=root)")


def _target_dir(out_dir: str | os.PathLike | None, flavor: Flavor = DEFAULT) -> Path:
    if out_dir is None:
        return cache_dir("base", recipe_hash(flavor=flavor))
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _complete(image: Path, flavor: Flavor = DEFAULT) -> bool:
    stamp = image.with_name(image.name + ".recipe")
    sums = image.with_name(image.name + ".sha256")
    _, kernel_name, initrd_name = names(flavor)
    try:
        return (image.is_file() and sums.is_file()
                and image.with_name(kernel_name).is_file()
                and image.with_name(initrd_name).is_file()
                and stamp.read_text().strip() == recipe_hash(flavor=flavor))
    except OSError:
        return False


def _mounts_inside(path: Path) -> list[str]:
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if len(line.split()) > 1]
    points = [p.encode().decode("unicode_escape") for p in points]   # \040 etc.
    return [p for p in points if p == real or p.startswith(real + "/")]


def _remove_tree(path: Path) -> None:
    """rm -rf, but never through a mount point: mmdebstrap mounts /proc, /sys and /dev
    inside its tree, and a build killed outright can leave them. Those are unmounted
    (lazily) first; if that fails the directory is left alone with a warning."""
    if not path.exists():
        return
    for point in sorted(_mounts_inside(path), key=len, reverse=True):
        run(["umount", "-R", "-l", point], check=False)
    left = _mounts_inside(path)
    if left:
        warning(f"not removing {path}: still mounted inside it: {', '.join(left)}")
        return
    for _ in range(5):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.5)
    warning(f"could not remove all of {path}")


def _run_mmdebstrap(cmd: list[str]) -> None:
    """Run mmdebstrap in its own process group; if we are interrupted, let it clean up its mounts
    (SIGTERM to the group, which it handles) before giving up on it and what it started (apt,
    dpkg, maintainer scripts in the chroot) with SIGKILL. Its TMPDIR is a directory of its own,
    removed afterwards: stopped early, mmdebstrap leaves its `mmdebstrap.gpghome.*` there (in the
    system's temporary directory, so the gpg-agent socket path inside stays short)."""
    tmp = tempfile.mkdtemp(prefix="imagebuild-mmdebstrap-")
    try:
        run(cmd, what="mmdebstrap", stdout=PIPE, stderr=STDOUT,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive", TMPDIR=tmp),
            stop_signal=signal.SIGTERM, grace=60, long_step=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: binfmt_misc entry (qemu-user-static) that runs a foreign architecture's programs in the tree.
BINFMT = {"arm64": "qemu-aarch64"}


def _need_binfmt(arch: str, root: Path = Path("/proc/sys/fs/binfmt_misc")) -> None:
    """A foreign tree runs its maintainer scripts through binfmt_misc, with the F flag (the
    interpreter opened at registration, so it works inside the chroot). Say how, before mmdebstrap
    fails halfway."""
    name = BINFMT[arch]
    entry = root / name
    text = entry.read_text() if entry.is_file() else ""
    flags = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("flags:")), "")
    if text.startswith("enabled") and "F" in flags:
        return
    raise ImagebuildError(
        f"building an {arch} base image needs binfmt_misc to run {arch} programs: {entry} is "
        f"{'missing' if not text else 'not enabled with the F flag'}; install qemu-user-static and run "
        f"`mount -t binfmt_misc binfmt_misc {root}` (if not mounted) and "
        f"`cat /usr/lib/binfmt.d/{name}.conf > {root}/register` as root "
        f"(undo: `echo -1 > {entry}`)")


def _fs_uuid(flavor: Flavor = DEFAULT) -> str:
    """Deterministic per recipe, so identical recipes give identical fstab/grub.cfg."""
    return str(uuid.UUID(hashlib.sha256(("fs-uuid:" + recipe_hash(flavor=flavor)).encode()).hexdigest()[:32],
                         version=4))


def _build_into(work: Path, flavor: Flavor = DEFAULT) -> Path:
    tree = work / "tree"
    t0 = time.monotonic()
    sources = aptsources.debian_sources(suite=flavor.release)
    packages = recipe(flavor)["packages"]
    foreign = flavor.arch != DEFAULT.arch
    if foreign:
        _need_binfmt(flavor.arch)
    # Measured on 2 cores: ~75 s natively; a foreign architecture runs every maintainer script under qemu-user.
    took = "~20-30 min: every maintainer script runs under qemu-user" if foreign else "~75 s"
    step(f"base image: mmdebstrap {flavor.release} {flavor.arch} with {len(packages)} packages (takes {took})")
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
           "--include=" + ",".join(packages)]
    if foreign:
        cmd.append(f"--architectures={flavor.arch}")
    cmd += [f"--aptopt={opt}" for opt in aptsources.host_proxy_options()]
    cmd += [flavor.release, str(tree), *sources]
    _run_mmdebstrap(cmd)
    step(f"base image: root tree ready in {time.monotonic() - t0:.0f} s; configuring it")

    fs_uuid = _fs_uuid(flavor)
    _configure_tree(tree, fs_uuid, flavor)
    _, kernel_name, initrd_name = names(flavor)
    shutil.copyfile(tree / "vmlinuz", work / kernel_name)      # follows the symlinks
    shutil.copyfile(tree / "initrd.img", work / initrd_name)

    raw = work / "disk.raw"
    make_gpt_disk(raw, tree, fs_uuid, work, flavor.firmware, mkfs_features=RELEASES[flavor.release]["mkfs_features"],
                  arch=ARCHES[flavor.arch])
    _remove_tree(tree)

    image = work / names(flavor)[0]
    convert(raw, image, source_format="raw", dest_format="qcow2", options=("-c", "-m", "4", "-W"),
            what="base image: qemu-img convert")
    raw.unlink()
    return image


def _configure_tree(tree: Path, fs_uuid: str, flavor: Flavor = DEFAULT) -> None:
    values = {"uuid": fs_uuid, "cmdline": _cmdline(flavor), "hostname": HOSTNAME}
    for pattern in REMOVE_GLOBS:
        for hit in glob.glob(str(tree / pattern)):
            p = Path(hit)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    for rel, template in _flavor_files(flavor).items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            path.unlink()
        path.write_text(template.format(**values))
        path.chmod(0o644)
    for unit in MASKED_UNITS:
        for wants in (tree / "etc/systemd/system").glob(f"*.wants/{unit}"):
            wants.unlink()
        link = tree / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    for unit in RELEASES[flavor.release]["enable"]:
        run(["chroot", str(tree), "systemctl", "enable", unit], what=f"systemctl enable {unit}")
    _check_drivers(tree)
    # GRUB modules where grub.cfg's insmod (and a later grub-install) expect them.
    targets = ["i386-pc"] if flavor.firmware == "hybrid" else []
    for target in [*targets, ARCHES[flavor.arch]["efi_target"]]:
        mods = tree / "usr/lib/grub" / target
        dest = tree / "boot/grub" / target
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(mods, dest)
    for name in ("vmlinuz", "initrd.img"):
        if not (tree / name).exists():
            raise ImagebuildError(f"the root tree has no /{name}; did the kernel install fail?")


def _check_drivers(tree: Path) -> None:
    """ENA and NVMe are in the kernel (module or built-in) and the initrd gets NVMe too."""
    kernels = sorted((tree / "lib/modules").iterdir())
    if len(kernels) != 1:
        raise ImagebuildError(f"expected one kernel in the tree, found {[k.name for k in kernels]}")
    kdir = kernels[0]
    listed = ""
    for name in ("modules.dep", "modules.builtin"):
        listed += (kdir / name).read_text() if (kdir / name).exists() else ""
    for module in REQUIRED_MODULES:
        if not re.search(rf"(^|/){re.escape(module)}\.ko(\.[a-z]+)?:?\s", listed, re.M):
            raise ImagebuildError(f"kernel {kdir.name} has no {module} driver (EC2 needs it)")
    # initramfs-tools' MODULES=most puts every block driver (nvme included) into the initrd.
    conf = tree / "etc/initramfs-tools/initramfs.conf"
    modules = re.findall(r"^MODULES=(\S+)", conf.read_text(), re.M) if conf.exists() else []
    if modules[-1:] != ["most"]:
        raise ImagebuildError(f"{conf.relative_to(tree)}: MODULES={modules[-1:] or '(unset)'}, want most: "
                              "the initrd might lack the nvme driver a root disk on NVMe needs")
