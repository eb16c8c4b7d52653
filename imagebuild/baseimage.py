"""A Debian 12 generic-cloud-style base image, built locally from the Debian mirror.

Vendor cloud images cannot always be downloaded, so this module builds a stand-in that
behaves like one: BIOS/GRUB boot on an MBR disk, one ext4 root partition, the Debian
cloud kernel (ENA and NVMe drivers, checked at build time), cloud-init (ds-identify picks
NoCloud, Ec2 or ConfigDrive; Ec2 talks IMDSv2), openssh-server, sudo, growpart/resizefs,
chrony (Amazon Time Sync on EC2, Debian's NTP pool elsewhere), apt-daily timers masked,
serial console on ttyS0, first-boot state left unset (empty machine-id, no SSH host keys).

How it is built (no mounts, no loop devices):

1. ``mmdebstrap`` bookworm into a directory, from the Debian mirror configured in the
   system's apt sources (read at run time; ``IMAGEBUILD_DEBIAN_MIRROR`` overrides it).
2. Configuration files are written into that tree from Python.
3. ``sfdisk`` writes an MBR partition table on a sparse raw file; ``mkfs.ext4 -d TREE
   -E offset=1MiB`` creates the populated root filesystem directly inside the partition.
4. GRUB for BIOS: ``boot.img`` (440 bytes) into the MBR and a ``grub-mkimage -O i386-pc``
   core.img into sectors 1.., with an embedded config that finds the root filesystem by
   UUID and loads ``/boot/grub/grub.cfg`` from it.
5. ``qemu-img convert -c -O qcow2``.

The result is cached under ``cache_dir("base", RECIPE_HASH)``: the hash covers everything
that shapes the image (package list, file contents, disk layout, GRUB modules, this
recipe's version), so a changed recipe builds a new image and an unchanged one returns at
once. A build happens in a temporary directory beside the final one and is renamed into
place only when complete; a file lock serialises concurrent callers.
"""
from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path

from imagebuild import aptsources
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
FS_LABEL = "root"
DISK_SIZE = 3 * 1024**3          # virtual size of the disk; the partition fills it
PART_OFFSET = 1024 * 1024        # the root partition starts at 1 MiB (sector 2048)
KERNEL_CMDLINE = "ro console=tty0 console=ttyS0,115200"
MKFS_FEATURES = "^orphan_file,^metadata_csum_seed"  # keep GRUB 2.06 able to read the fs

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

GRUB_MODULES = (
    "biosdisk", "part_msdos", "ext2", "search", "search_fs_uuid", "configfile",
    "normal", "linux", "gzio", "serial", "terminal", "echo", "test",
)

# Embedded in core.img; {uuid} is the root filesystem's UUID.
GRUB_EARLY_CFG = """\
search --no-floppy --fs-uuid --set=root {uuid}
set prefix=($root)/boot/grub
configfile $prefix/grub.cfg
"""

# Files written into the tree, relative to its root. {uuid}, {cmdline} and {hostname} are
# filled in. /vmlinuz and /initrd.img are the symlinks Debian's kernel packages maintain,
# so a kernel upgrade inside the guest keeps booting without update-grub.
FILES: dict[str, str] = {
    "etc/cloud/cloud.cfg.d/90_imagebuild.cfg": """\
# imagebuild base image. No list that leaves a platform out: ds-identify picks NoCloud (a cidata
# seed), Ec2 (EC2's DMI identity) or ConfigDrive; with none of them cloud-init stays off.
datasource_list: [ NoCloud, Ec2, ConfigDrive, None ]
datasource:
  Ec2:
    # Only what identifies itself as EC2 (DMI): never probe 169.254.169.254 elsewhere.
    strict_id: true
# The instance's own hostname (from the datasource) on 127.0.1.1, so sudo and friends resolve it.
manage_etc_hosts: localhost
# C.UTF-8 is built into glibc: nothing to generate (cloud-init's en_US default fails here)
locale: C.UTF-8
""",
    "etc/fstab": """\
UUID={uuid} / ext4 rw,discard,errors=remount-ro 0 1
""",
    "etc/hostname": "{hostname}\n",
    "etc/hosts": """\
127.0.0.1\tlocalhost
127.0.1.1\t{hostname}
::1\t\tlocalhost ip6-localhost ip6-loopback
ff02::1\t\tip6-allnodes
ff02::2\t\tip6-allrouters
""",
    "etc/network/interfaces": """\
# interfaces(5); cloud-init writes the network configuration into interfaces.d
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
""",
    "etc/default/grub": """\
# Used only if update-grub runs inside the guest; the image boots from a static grub.cfg.
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200"
GRUB_TERMINAL="serial console"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
""",
    "boot/grub/grub.cfg": """\
set default=0
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
insmod part_msdos
insmod ext2
insmod gzio
search --no-floppy --fs-uuid --set=root {uuid}
menuentry 'Debian GNU/Linux 12 (imagebuild base)' {{
    linux /vmlinuz root=UUID={uuid} {cmdline}
    initrd /initrd.img
}}
""",
    "etc/chrony/sources.d/aws-time-sync.sources": """\
# imagebuild: the Amazon Time Sync Service, preferred where it answers (EC2, link-local).
# Elsewhere it never answers and chrony uses the pool of /etc/chrony/chrony.conf.
server 169.254.169.123 prefer iburst minpoll 4 maxpoll 4
""",
    "etc/resolv.conf": "",
    "etc/machine-id": "",
}

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


def recipe() -> dict:
    """Everything that determines the image, as plain JSON-able data."""
    return {
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


def recipe_hash(spec: dict | None = None) -> str:
    """sha256 (hex) of the canonical JSON of *spec* (default: this module's recipe)."""
    data = json.dumps(recipe() if spec is None else spec, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(data.encode()).hexdigest()


def checksum(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of the file at *path*."""
    return "sha256:" + sha256_file(path)


def cached_image(out_dir: str | os.PathLike | None = None) -> Path | None:
    """The finished image for the current recipe if it is already built, else None."""
    target = _target_dir(out_dir) / IMAGE_NAME
    return target if _complete(target) else None


def kernel_files(out_dir: str | os.PathLike | None = None) -> tuple[Path, Path] | None:
    """(vmlinuz, initrd.img) of the built base image, if it is built (else None).

    Boot them with ``-kernel/-initrd`` and :func:`kernel_cmdline` to skip GRUB (~7 s
    under TCG); valid for the base image and images whose kernel was not upgraded.
    """
    image = cached_image(out_dir)
    if image is None:
        return None
    return image.with_name(KERNEL_NAME), image.with_name(INITRD_NAME)


def kernel_cmdline() -> str:
    """The kernel command line the image's grub.cfg uses."""
    return f"root=UUID={_fs_uuid()} {KERNEL_CMDLINE}"


def build(out_dir: str | os.PathLike | None = None) -> Path:
    """Build (or reuse) the base image and return the path of its qcow2.

    *out_dir* defaults to ``cache_dir("base", recipe_hash())``. A finished image there,
    built from the same recipe, is returned at once. Beside it: ``IMAGE.sha256``
    (``sha256sum`` format) and ``IMAGE.recipe`` (the recipe hash it was built from).
    """
    target_dir = _target_dir(out_dir)
    target = target_dir / IMAGE_NAME
    if _complete(target):
        return target
    _preflight()

    with locked(target_dir / ".lock", waiting="base image: another process is building it; waiting for its lock"):
        if _complete(target):          # another process finished it while we waited
            return target
        for stale in target_dir.glob(".build-*"):
            _remove_tree(stale)         # left by a build that was killed outright
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=target_dir))
        try:
            image = _build_into(work)
            digest = checksum(image)
            (work / (IMAGE_NAME + ".sha256")).write_text(
                f"{digest.split(':', 1)[1]}  {IMAGE_NAME}\n")
            (work / (IMAGE_NAME + ".recipe")).write_text(recipe_hash() + "\n")
            # The qcow2 is renamed last: its presence means "complete".
            for name in (KERNEL_NAME, INITRD_NAME, IMAGE_NAME + ".sha256",
                         IMAGE_NAME + ".recipe", IMAGE_NAME):
                os.replace(work / name, target_dir / name)
        finally:
            _remove_tree(work)
    step(f"base image ready: {target} ({target.stat().st_size / 2**20:.0f} MiB)")
    return target


# --- internals ---------------------------------------------------------------------------

def _preflight() -> None:
    for tool in ("mmdebstrap", "sfdisk", "mkfs.ext4", "grub-mkimage", "qemu-img"):
        if shutil.which(tool) is None:
            raise ImagebuildError(
                f"building the base image needs `{tool}`; install the Debian packages "
                "mmdebstrap, fdisk, e2fsprogs, grub-pc-bin and qemu-utils")
    if os.geteuid() != 0:
        raise ImagebuildError("building the base image needs root (mmdebstrap --mode=root)")


def _target_dir(out_dir: str | os.PathLike | None) -> Path:
    if out_dir is None:
        return cache_dir("base", recipe_hash())
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _complete(image: Path) -> bool:
    stamp = image.with_name(image.name + ".recipe")
    sums = image.with_name(image.name + ".sha256")
    try:
        return (image.is_file() and sums.is_file()
                and image.with_name(KERNEL_NAME).is_file()
                and image.with_name(INITRD_NAME).is_file()
                and stamp.read_text().strip() == recipe_hash())
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


def _fs_uuid() -> str:
    """Deterministic per recipe, so identical recipes give identical fstab/grub.cfg."""
    return str(uuid.UUID(hashlib.sha256(("fs-uuid:" + recipe_hash()).encode()).hexdigest()[:32],
                         version=4))


def _build_into(work: Path) -> Path:
    tree = work / "tree"
    t0 = time.monotonic()
    sources = debian_sources()
    step(f"base image: mmdebstrap {SUITE} with {len(PACKAGES)} packages (takes ~75 s)")
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
           "--include=" + ",".join(PACKAGES)]
    cmd += [f"--aptopt={opt}" for opt in _host_proxy_options()]
    cmd += [SUITE, str(tree), *sources]
    _run_mmdebstrap(cmd)
    step(f"base image: root tree ready in {time.monotonic() - t0:.0f} s; configuring it")

    fs_uuid = _fs_uuid()
    _configure_tree(tree, fs_uuid)
    shutil.copyfile(tree / "vmlinuz", work / KERNEL_NAME)      # follows the symlinks
    shutil.copyfile(tree / "initrd.img", work / INITRD_NAME)

    raw = work / "disk.raw"
    _make_disk(raw, tree, fs_uuid, work)
    _remove_tree(tree)

    image = work / IMAGE_NAME
    convert(raw, image, source_format="raw", dest_format="qcow2", options=("-c", "-m", "4", "-W"),
            what="base image: qemu-img convert")
    raw.unlink()
    return image


def _configure_tree(tree: Path, fs_uuid: str) -> None:
    values = {"uuid": fs_uuid, "cmdline": KERNEL_CMDLINE, "hostname": HOSTNAME}
    for pattern in REMOVE_GLOBS:
        for hit in glob.glob(str(tree / pattern)):
            p = Path(hit)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    for rel, template in FILES.items():
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
    _check_drivers(tree)
    # GRUB modules where grub.cfg's insmod (and a later grub-install) expect them.
    mods = tree / "usr/lib/grub/i386-pc"
    dest = tree / "boot/grub/i386-pc"
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


def _make_disk(raw: Path, tree: Path, fs_uuid: str, work: Path) -> None:
    step(f"base image: ext4 root filesystem from the tree ({DISK_SIZE / 2**30:.0f} GiB disk)")
    with open(raw, "wb") as f:
        f.truncate(DISK_SIZE)
    start = PART_OFFSET // 512
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(raw)], what="sfdisk",
        input=f"label: dos\nlabel-id: 0x{fs_uuid[:8]}\nstart={start}, type=83, bootable\n")
    fs_blocks = (DISK_SIZE - PART_OFFSET) // 4096
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", FS_LABEL, "-U", fs_uuid,
         "-O", MKFS_FEATURES, "-E", f"offset={PART_OFFSET},hash_seed={fs_uuid}",
         "-d", str(tree), str(raw), str(fs_blocks)], what="mkfs.ext4", long_step=True)

    step("base image: installing GRUB (BIOS) into the MBR")
    grub_dir = tree / "usr/lib/grub/i386-pc"
    early = work / "early.cfg"
    early.write_text(GRUB_EARLY_CFG.format(uuid=fs_uuid))
    core = work / "core.img"
    run(["grub-mkimage", "-O", "i386-pc", "-d", str(grub_dir), "-o", str(core),
         "-c", str(early), "-p", "(hd0,msdos1)/boot/grub", *GRUB_MODULES], what="grub-mkimage")
    core_bytes = core.read_bytes()
    boot_bytes = (grub_dir / "boot.img").read_bytes()
    if len(boot_bytes) != 512:
        raise ImagebuildError(f"unexpected GRUB boot.img size {len(boot_bytes)}")
    if 512 + len(core_bytes) > PART_OFFSET:
        raise ImagebuildError(f"GRUB core.img ({len(core_bytes)} bytes) does not fit before "
                              "the first partition")
    with open(raw, "r+b") as f:
        f.seek(0)
        f.write(boot_bytes[:440])      # boot code only: keep the disk id and partition table
        f.seek(512)                    # core.img in sectors 1..; boot.img loads sector 1
        f.write(core_bytes)


# --- the Debian mirror the system uses ----------------------------------------------------

def debian_sources(root: str | os.PathLike | None = None) -> list[str]:
    """One-line apt sources for bookworm (+updates, +security), from the system's mirror.

    The mirror is the one the system's apt sources already use (its suites renamed from the
    host's release to bookworm), or ``$IMAGEBUILD_DEBIAN_MIRROR`` (the Debian archive URI;
    security updates are then taken from the same host's ``debian-security``).
    """
    override = os.environ.get("IMAGEBUILD_DEBIAN_MIRROR")
    if override:
        base = override.rstrip("/")
        security = re.sub(r"/debian$", "/debian-security", base)
        out: list[str] = [f"deb {base} {SUITE} main", f"deb {base} {SUITE}-updates main"]
        if security != base:
            out.append(f"deb {security} {SUITE}-security main")
        return out
    host = aptsources.os_release(root or "/")
    codenames = {SUITE}
    if host.get("ID") == "debian" and host.get("VERSION_CODENAME"):
        codenames.add(host["VERSION_CODENAME"])
    out = []
    for entry in aptsources.read(root):
        if not entry.binary or "main" not in entry.components:
            continue
        for uri, suite, name in itertools.product(entry.uris, entry.suites, sorted(codenames)):
            if suite == name or suite.startswith(name + "-"):
                line = f"deb {uri} {SUITE}{suite[len(name):]} main"
                if line not in out:
                    out.append(line)
    if not any(line.split()[2] == SUITE for line in out):
        raise ImagebuildError(
            "cannot find a Debian mirror in the system's apt sources (/etc/apt/sources.list"
            "[.d]); set IMAGEBUILD_DEBIAN_MIRROR to the Debian archive URI")
    return out


def _host_proxy_options() -> list[str]:
    """The host's apt proxy settings, passed through (mmdebstrap does not read them)."""
    try:
        out = run(["apt-config", "dump"], check=False, timeout=20).stdout
    except ImagebuildError:   # no apt-config, or it hangs
        return []
    opts = []
    for line in out.splitlines():
        m = re.match(r'^(Acquire::(?:http|https)::Proxy(?:::[^ ]+)?) "(.*)";$', line)
        if m and m.group(2):
            opts.append(f'{m.group(1)} "{m.group(2)}";')
    return opts
