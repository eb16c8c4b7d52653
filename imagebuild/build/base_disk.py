"""The base image's disk: GPT layout (hybrid BIOS+UEFI on amd64, UEFI on arm64), the ext4 root made
in place from the tree, GRUB images from the tree's own grub-mkimage, and the MBR boot code a hybrid
disk needs. Used by :mod:`imagebuild.build.baseimage`; no mounts, no loop devices.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from imagebuild.errors import ImagebuildError
from imagebuild.progress import step
from imagebuild.run import run

FS_LABEL = "root"
DISK_SIZE = 3 * 1024**3          # virtual size of the disk; the partition fills it
MKFS_FEATURES = "^orphan_file,^metadata_csum_seed"  # keep GRUB 2.06 able to read the fs

# GPT partition type GUIDs, and where the ESP ends (the root partition starts) in GPT layouts.
GPT_BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
GPT_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
GPT_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP_END = 128 * 1024 * 1024
GRUB_EFI_MODULES = (
    "part_gpt", "part_msdos", "fat", "ext2", "search", "search_fs_uuid", "configfile",
    "normal", "linux", "gzio", "serial", "terminal", "echo", "test", "efi_gop",
)


# GRUB's i386-pc core.img (BIOS boot partition of a hybrid disk).
GRUB_MODULES = (
    "biosdisk", "part_msdos", "part_gpt", "ext2", "search", "search_fs_uuid", "configfile",
    "normal", "linux", "gzio", "serial", "terminal", "echo", "test",
)

# Embedded in core.img; {uuid} is the root filesystem's UUID.
GRUB_EARLY_CFG = """\
search --no-floppy --fs-uuid --set=root {uuid}
set prefix=($root)/boot/grub
configfile $prefix/grub.cfg
"""


def _tree_grub_mkimage(tree: Path, target: str, early_cfg: str, prefix: str, modules: tuple[str, ...]) -> bytes:
    """A GRUB image made by the tree's own grub-mkimage (chroot; an arm64 tree runs it under
    qemu-user): the host's GRUB may be older than the release's modules (2.06 vs 2.12)."""
    scratch = tree / "tmp/imagebuild-grub"
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "early.cfg").write_text(early_cfg)
    try:
        run(["chroot", str(tree), "grub-mkimage", "-O", target, "-d", f"/usr/lib/grub/{target}",
             "-o", "/tmp/imagebuild-grub/out.img", "-c", "/tmp/imagebuild-grub/early.cfg",
             "-p", prefix, *modules], what=f"grub-mkimage -O {target}")
        return (scratch / "out.img").read_bytes()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def gpt_table(layout: str, label_id: str) -> str:
    """sfdisk's input for a GPT of *layout* (hybrid or uefi): [BIOS boot 1-2 MiB (hybrid)] + ESP up to
    ESP_END + root to the end."""
    mib = 1024 * 1024 // 512
    esp_start = 2 * mib if layout == "hybrid" else mib
    table = [f"label: gpt\nlabel-id: {label_id}\n"]
    if layout == "hybrid":
        table.append(f"start={mib}, size={mib}, type={GPT_BIOS_BOOT}, name=bios\n")
    table.append(f"start={esp_start}, size={ESP_END // 512 - esp_start}, type={GPT_ESP}, name=esp\n")
    table.append(f"start={ESP_END // 512}, type={GPT_LINUX}, name=root\n")
    return "".join(table)


def patch_boot_img(boot: bytes, core: bytes, core_lba: int) -> tuple[bytes, bytes]:
    """(boot code for the protective MBR, core.img) with core.img placed at *core_lba*: what
    grub-bios-setup would write. boot.img reads core.img's first sector from the LBA at 0x5c
    (GRUB_BOOT_MACHINE_KERNEL_SECTOR); that sector (diskboot.img) reads the rest from the blocklist
    at its end (start LBA, 8 bytes at 0x200-12). grub-mkimage leaves them at 1 and 2."""
    if len(boot) != 512:
        raise ImagebuildError(f"unexpected GRUB boot.img size {len(boot)}")
    patched_boot = bytearray(boot)
    patched_boot[0x5c:0x64] = core_lba.to_bytes(8, "little")
    patched = bytearray(core)
    if int.from_bytes(patched[0x200 - 12:0x200 - 4], "little") != 2:
        raise ImagebuildError("GRUB core.img: unexpected blocklist (not at sector 2)")
    patched[0x200 - 12:0x200 - 4] = (core_lba + 1).to_bytes(8, "little")
    return bytes(patched_boot[:440]), bytes(patched)


def make_gpt_disk(raw: Path, tree: Path, fs_uuid: str, work: Path, layout: str, *, mkfs_features: str,
                  arch: dict) -> None:
    """GPT (see gpt_table). hybrid: i386-pc core.img in the BIOS boot partition, boot.img in the
    protective MBR pointing at it; both: EFI GRUB at the removable path of a FAT32 ESP (made
    without a mount: mkfs.vfat on a file, mtools, copied in at its offset)."""
    step(f"base image: GPT disk, {layout} ({DISK_SIZE / 2**30:.0f} GiB), ext4 root from the tree")
    with open(raw, "wb") as f:
        f.truncate(DISK_SIZE)
    mib = 1024 * 1024 // 512
    esp_start = 2 * mib if layout == "hybrid" else mib
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(raw)], what="sfdisk",
        input=gpt_table(layout, fs_uuid))
    fs_blocks = (DISK_SIZE - ESP_END - 1024 * 1024) // 4096    # leave room for the backup GPT
    features = mkfs_features
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", FS_LABEL, "-U", fs_uuid,
         *(["-O", features] if features else []), "-E", f"offset={ESP_END},hash_seed={fs_uuid}",
         "-d", str(tree), str(raw), str(fs_blocks)], what="mkfs.ext4", long_step=True)
    early = GRUB_EARLY_CFG.format(uuid=fs_uuid)
    prefix = f"(hd0,gpt{3 if layout == 'hybrid' else 2})/boot/grub"

    efi = work / arch["efi_binary"]
    efi.write_bytes(_tree_grub_mkimage(tree, arch["efi_target"], early, prefix, GRUB_EFI_MODULES))
    esp = work / "esp.img"
    with open(esp, "wb") as f:
        f.truncate(ESP_END - esp_start * 512)
    run(["mkfs.vfat", "-F", "32", "-n", "EFI", "-i", fs_uuid[:8], str(esp)], what="mkfs.vfat")
    run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], what="mmd")
    run(["mcopy", "-i", str(esp), str(efi), f"::/EFI/BOOT/{arch['efi_binary']}"], what="mcopy")
    with open(raw, "r+b") as f, open(esp, "rb") as src:
        f.seek(esp_start * 512)
        shutil.copyfileobj(src, f, 1024 * 1024)
    esp.unlink()
    step(f"base image: ESP with EFI/BOOT/{arch['efi_binary']} ({efi.stat().st_size} bytes)")

    if layout == "hybrid":
        core = _tree_grub_mkimage(tree, "i386-pc", early, prefix, tuple(sorted(set(GRUB_MODULES) | {"part_gpt"})))
        if len(core) > mib * 512:
            raise ImagebuildError(f"GRUB core.img ({len(core)} bytes) does not fit the BIOS boot partition")
        boot_code, core = patch_boot_img((tree / "usr/lib/grub/i386-pc/boot.img").read_bytes(), core, mib)
        with open(raw, "r+b") as f:
            f.seek(0)
            f.write(boot_code)         # boot code only: keep the protective MBR's table
            f.seek(mib * 512)
            f.write(core)
        step(f"base image: BIOS boot partition with GRUB core.img ({len(core)} bytes)")
