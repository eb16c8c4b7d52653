"""The locally built Debian 12 base image: recipe hash, mirror discovery, cache discipline.

The real build: tests/e2e/test_baseimage_build.py.
"""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imagebuild.build import aptsources, base_disk, baseimage
from imagebuild.errors import ImagebuildError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------ recipe hash (fast)

def test_recipe_hash_is_hex_sha256_and_stable_within_a_process():
    h = baseimage.recipe_hash()
    assert len(h) == 64 and int(h, 16) >= 0
    assert baseimage.recipe_hash() == h
    assert baseimage.recipe_hash(baseimage.recipe()) == h


def test_recipe_hash_is_stable_across_processes():
    code = "from imagebuild.build import baseimage; print(baseimage.recipe_hash())"
    seen = set()
    for seed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONHASHSEED=seed), check=True).stdout.strip()
        seen.add(out)
    assert seen == {baseimage.recipe_hash()}


def test_recipe_hash_follows_the_recipe(monkeypatch):
    before = baseimage.recipe_hash()
    monkeypatch.setattr(baseimage, "PACKAGES", tuple(reversed(baseimage.PACKAGES)))
    assert baseimage.recipe_hash() == before, "package order must not matter"
    monkeypatch.setattr(baseimage, "PACKAGES", baseimage.PACKAGES + ("vim-tiny",))
    with_vim = baseimage.recipe_hash()
    assert with_vim != before
    files = dict(baseimage.FILES)
    files["etc/hostname"] = "other\n"
    monkeypatch.setattr(baseimage, "FILES", files)
    assert baseimage.recipe_hash() not in (before, with_vim)


def test_recipe_covers_what_cloud_images_need():
    r = baseimage.recipe()
    for pkg in ("linux-image-cloud-amd64", "cloud-init", "cloud-guest-utils", "openssh-server",
                "sudo", "grub-pc-bin", "systemd-sysv", "tar", "gzip", "curl", "ca-certificates"):
        assert pkg in r["packages"]
    cfg = r["files"]["etc/cloud/cloud.cfg.d/90_imagebuild.cfg"]
    assert "datasource_list: [ NoCloud, Ec2, ConfigDrive, None ]" in cfg   # ds-identify decides
    assert "strict_id: true" in cfg and "manage_etc_hosts: localhost" in cfg
    assert "chrony" in r["packages"]
    assert "server 169.254.169.123 prefer" in r["files"]["etc/chrony/sources.d/aws-time-sync.sources"]
    assert r["masked_units"] == ["apt-daily-upgrade.timer", "apt-daily.timer"]
    assert r["required_modules"] == ["ena", "nvme"]
    assert "console=ttyS0,115200" in r["kernel_cmdline"]
    assert "set timeout=0" in r["files"]["boot/grub/grub.cfg"]
    assert "serial --unit=0 --speed=115200" in r["files"]["boot/grub/grub.cfg"]
    assert r["files"]["etc/fstab"].startswith("UUID={uuid} / ext4")
    assert "etc/ssh/ssh_host_*" in r["remove"]


def test_filesystem_uuid_is_derived_from_the_recipe():
    u = baseimage._fs_uuid()
    assert u == baseimage._fs_uuid()
    assert len(u) == 36 and u.count("-") == 4
    assert baseimage.kernel_cmdline().startswith(f"root=UUID={u} ")


def test_checksum_format(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    assert baseimage.checksum(f) == \
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# ---------------------------------------------------------------------- mirror discovery (fast)

def _fake_root(tmp_path: Path, codename: str, deb822: str = "", one_line: str = "") -> Path:
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/os-release").write_text(f'ID=debian\nVERSION_CODENAME={codename}\n')
    if deb822:
        (tmp_path / "etc/apt/sources.list.d/debian.sources").write_text(deb822)
    (tmp_path / "etc/apt/sources.list").write_text(one_line)
    return tmp_path


def test_sources_from_deb822(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGEBUILD_DEBIAN_MIRROR", raising=False)
    root = _fake_root(tmp_path, "bookworm", deb822="""\
Types: deb deb-src
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb
URIs: http://other.example/apt
Suites: nodistro
Components: main
""")
    assert aptsources.debian_sources(root) == [
        "deb http://mirror.example/debian bookworm main",
        "deb http://mirror.example/debian bookworm-updates main",
        "deb http://mirror.example/debian-security bookworm-security main",
    ]


def test_sources_from_one_line_format_on_a_newer_host(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGEBUILD_DEBIAN_MIRROR", raising=False)
    root = _fake_root(tmp_path, "trixie", one_line="""\
# deb http://commented.example/debian trixie main
deb [signed-by=/usr/share/keyrings/k.gpg arch=amd64] http://m.example/debian trixie main
deb-src http://m.example/debian trixie main
deb http://m.example/debian-security trixie-security main non-free-firmware
deb http://m.example/debian trixie contrib
""")
    assert aptsources.debian_sources(root) == [
        "deb http://m.example/debian bookworm main",
        "deb http://m.example/debian-security bookworm-security main",
    ]


def test_sources_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGEBUILD_DEBIAN_MIRROR", raising=False)
    root = _fake_root(tmp_path, "bookworm", one_line="deb http://x.example/ubuntu jammy main\n")
    with pytest.raises(ImagebuildError, match="IMAGEBUILD_DEBIAN_MIRROR"):
        aptsources.debian_sources(root)


def test_sources_override(monkeypatch):
    monkeypatch.setenv("IMAGEBUILD_DEBIAN_MIRROR", "http://mirror.example/debian/")
    assert aptsources.debian_sources() == [
        "deb http://mirror.example/debian bookworm main",
        "deb http://mirror.example/debian bookworm-updates main",
        "deb http://mirror.example/debian-security bookworm-security main",
    ]


def test_system_sources_are_found():
    """This machine's own apt sources name a Debian mirror that carries bookworm."""
    lines = aptsources.debian_sources()
    assert lines and lines[0].split()[2] == "bookworm"


# --------------------------------------------------------- cache discipline, no real build (fast)

def _fake_build_into(calls: list, delay: float = 0.0, fail: BaseException | None = None):
    def build_into(work: Path, flavor=baseimage.DEFAULT) -> Path:
        calls.append(work)
        (work / baseimage.KERNEL_NAME).write_bytes(b"kernel")
        (work / baseimage.INITRD_NAME).write_bytes(b"initrd")
        image = work / baseimage.IMAGE_NAME
        image.write_bytes(b"QFI\xfb fake")
        if delay:
            time.sleep(delay)
        if fail is not None:
            raise fail
        return image
    return build_into


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEBUILD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(baseimage, "_preflight", lambda: None)
    return tmp_path / "cache"


def test_build_is_cached_by_recipe_hash(fake_cache, monkeypatch):
    calls: list = []
    monkeypatch.setattr(baseimage, "_build_into", _fake_build_into(calls))
    path = baseimage.build()
    assert path == fake_cache / "base" / baseimage.recipe_hash() / baseimage.IMAGE_NAME
    sums = path.with_name(path.name + ".sha256").read_text()
    assert sums == f"{baseimage.checksum(path).split(':')[1]}  {baseimage.IMAGE_NAME}\n"
    assert baseimage.kernel_files() == (path.with_name(baseimage.KERNEL_NAME),
                                        path.with_name(baseimage.INITRD_NAME))
    assert baseimage.build() == path
    assert len(calls) == 1
    assert not list(path.parent.glob(".build-*"))


def test_interrupted_build_leaves_nothing(fake_cache, monkeypatch):
    calls: list = []
    monkeypatch.setattr(baseimage, "_build_into", _fake_build_into(calls, fail=KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        baseimage.build()
    target = fake_cache / "base" / baseimage.recipe_hash()
    assert sorted(p.name for p in target.iterdir()) == [".lock"]
    assert baseimage.cached_image() is None and baseimage.kernel_files() is None


def test_stale_temp_dirs_are_swept(fake_cache, monkeypatch):
    target = fake_cache / "base" / baseimage.recipe_hash()
    (target / ".build-dead" / "tree").mkdir(parents=True)
    monkeypatch.setattr(baseimage, "_build_into", _fake_build_into([]))
    baseimage.build()
    assert not (target / ".build-dead").exists()


def test_concurrent_callers_build_once(fake_cache, monkeypatch):
    calls: list = []
    monkeypatch.setattr(baseimage, "_build_into", _fake_build_into(calls, delay=0.3))
    results = []
    threads = [threading.Thread(target=lambda: results.append(baseimage.build())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 3


def test_out_dir_and_stale_recipe(tmp_path, monkeypatch):
    monkeypatch.setattr(baseimage, "_preflight", lambda: None)
    calls: list = []
    monkeypatch.setattr(baseimage, "_build_into", _fake_build_into(calls))
    out = tmp_path / "out"
    path = baseimage.build(out)
    assert path == out / baseimage.IMAGE_NAME
    path.with_name(path.name + ".recipe").write_text("0" * 64 + "\n")   # built by another recipe
    assert baseimage.build(out) == path
    assert len(calls) == 2


def _kernel_tree(tmp_path, dep: str, builtin: str, initramfs_modules: str = "most"):
    kdir = tmp_path / "lib/modules/6.1.0-99-cloud-amd64"
    kdir.mkdir(parents=True)
    (kdir / "modules.dep").write_text(dep)
    (kdir / "modules.builtin").write_text(builtin)
    conf = tmp_path / "etc/initramfs-tools/initramfs.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(f"# comment\nMODULES={initramfs_modules}\nBUSYBOX=auto\n")
    return tmp_path


def test_driver_check_accepts_ena_module_and_builtin_nvme(tmp_path):
    tree = _kernel_tree(tmp_path, "kernel/drivers/net/ethernet/amazon/ena/ena.ko: \n",
                        "kernel/drivers/nvme/host/nvme.ko\nkernel/drivers/nvme/host/nvme-core.ko\n")
    baseimage._check_drivers(tree)


@pytest.mark.parametrize("dep, builtin, modules, message", [
    ("kernel/drivers/net/ethernet/intel/e1000/e1000.ko:\n", "kernel/drivers/nvme/host/nvme.ko\n", "most",
     "no ena driver"),
    ("kernel/drivers/net/ethernet/amazon/ena/ena.ko:\n", "kernel/drivers/nvme/host/nvme-core.ko\n", "most",
     "no nvme driver"),
    ("kernel/drivers/net/ethernet/amazon/ena/ena.ko:\nkernel/drivers/nvme/host/nvme.ko.xz:\n", "", "dep",
     "want most"),
])
def test_driver_check_refuses_a_kernel_ec2_cannot_boot(tmp_path, dep, builtin, modules, message):
    tree = _kernel_tree(tmp_path, dep, builtin, modules)
    with pytest.raises(ImagebuildError, match=message):
        baseimage._check_drivers(tree)


# ------------------------------------------------------------ flavors: release x architecture (fast)

# The Debian 12 amd64 recipe's hash, pinned: it changes every cached Debian 12 base image (and every
# inputs hash built on it). Change it only with a deliberate recipe change. Last changed: the move from
# MBR/BIOS-only to GPT hybrid (BIOS + UEFI); before it, be11cd6c1df2...
DEBIAN_12_AMD64_HASH = "650b45a8a6c32a8b21ea551afc690d864ecc1ed881db19f32492382874edf91a"


def test_the_default_flavor_is_debian_12_amd64_hybrid_with_its_recipe_pinned():
    assert baseimage.DEFAULT == baseimage.Flavor("bookworm", "amd64") == baseimage.Flavor.of("debian-12", "amd64")
    assert (baseimage.DEFAULT.firmware, baseimage.DEFAULT.boot_mode) == ("hybrid", "uefi-preferred")
    assert baseimage.recipe()["flavor"] == {"release": "bookworm", "arch": "amd64", "firmware": "hybrid"}
    assert baseimage.recipe_hash() == baseimage.recipe_hash(flavor=baseimage.DEFAULT) == DEBIAN_12_AMD64_HASH
    assert baseimage.names() == (baseimage.IMAGE_NAME, baseimage.KERNEL_NAME, baseimage.INITRD_NAME)


@pytest.mark.parametrize("os_name, arch, firmware, boot_mode, ec2_arch, image", [
    ("debian-12", "amd64", "hybrid", "uefi-preferred", "x86_64", "debian-12-base.qcow2"),
    ("debian-13", "amd64", "hybrid", "uefi-preferred", "x86_64", "debian-13-base.qcow2"),
    ("debian-13", "arm64", "uefi", "uefi", "arm64", "debian-13-base-arm64.qcow2"),
    ("debian-12", "arm64", "uefi", "uefi", "arm64", "debian-12-base-arm64.qcow2"),
])
def test_every_flavor_of_the_spec(os_name, arch, firmware, boot_mode, ec2_arch, image):
    flavor = baseimage.Flavor.of(os_name, arch)
    assert (flavor.firmware, flavor.boot_mode, flavor.ec2_architecture) == (firmware, boot_mode, ec2_arch)
    assert baseimage.names(flavor)[0] == image


def test_flavor_hashes_are_distinct_and_stable_across_processes():
    flavors = [baseimage.Flavor(r, a) for r in ("bookworm", "trixie") for a in ("amd64", "arm64")]
    hashes = [baseimage.recipe_hash(flavor=f) for f in flavors]
    assert len(set(hashes)) == 4
    code = ("from imagebuild.build import baseimage as b; print(*[b.recipe_hash(flavor=b.Flavor(r, a)) "
            "for r in ('bookworm', 'trixie') for a in ('amd64', 'arm64')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONHASHSEED="7"), check=True).stdout.split()
    assert out == hashes


def test_debian_13_amd64_is_hybrid_with_networkd():
    r = baseimage.recipe(baseimage.Flavor("trixie", "amd64"))
    assert r["suite"] == "trixie" and r["flavor"]["firmware"] == "hybrid"
    packages = set(r["packages"])
    assert {"grub-pc-bin", "grub-efi-amd64-bin", "linux-image-cloud-amd64", "netplan.io",
            "systemd-resolved"} <= packages
    assert not {"ifupdown", "isc-dhcp-client"} & packages       # their dhclient -6 held the boot 300 s
    assert r["enabled_units"] == ["systemd-networkd.service", "systemd-resolved.service"]
    assert "etc/network/interfaces" not in r["files"] and "etc/resolv.conf" not in r["files"]
    grub = r["files"]["boot/grub/grub.cfg"]
    assert "Debian GNU/Linux 13" in grub and "insmod part_gpt" in grub and "serial --unit=0" in grub
    assert "part_gpt" in r["grub_modules"] and "x86_64-efi" not in r["grub_modules"]
    assert r["mkfs_features"] == ""                     # GRUB 2.12 reads mke2fs's defaults


def test_debian_12_amd64_is_hybrid_and_keeps_ifupdown():
    """Only the disk and the bootloader moved to the hybrid layout: the network stays ifupdown + dhclient,
    the ext4 features GRUB 2.06 reads stay off."""
    r = baseimage.recipe(baseimage.Flavor("bookworm", "amd64"))
    packages = set(r["packages"])
    assert {"grub-pc-bin", "grub-efi-amd64-bin", "linux-image-cloud-amd64", "ifupdown", "isc-dhcp-client"} <= packages
    assert not {"netplan.io", "systemd-resolved"} & packages and r["enabled_units"] == []
    assert "etc/network/interfaces" in r["files"] and "etc/resolv.conf" in r["files"]
    grub = r["files"]["boot/grub/grub.cfg"]
    assert "Debian GNU/Linux 12" in grub and "insmod part_gpt" in grub and "part_msdos" not in grub
    assert "part_gpt" in r["grub_modules"] and "biosdisk" in r["grub_modules"]
    assert r["mkfs_features"] == "^orphan_file,^metadata_csum_seed"
    assert r["kernel_cmdline"] == "ro console=tty0 console=ttyS0,115200"


def test_arm64_is_uefi_only_with_the_arm64_kernel_and_both_serial_consoles():
    r = baseimage.recipe(baseimage.Flavor("trixie", "arm64"))
    assert {"linux-image-cloud-arm64", "grub-efi-arm64-bin"} <= set(r["packages"])
    assert not {"linux-image-cloud-amd64", "grub-pc-bin"} & set(r["packages"])
    # QEMU virt's PL011 and Graviton's ttyS0 (what platform.console checks); the last one is /dev/console
    consoles = [a for a in r["kernel_cmdline"].split() if a.startswith("console=")]
    assert consoles == ["console=tty0", "console=ttyAMA0,115200", "console=ttyS0,115200"]
    assert 'GRUB_CMDLINE_LINUX="console=tty0 console=ttyAMA0,115200 console=ttyS0,115200"' in \
        r["files"]["etc/default/grub"]
    assert "serial --unit=0" not in r["files"]["boot/grub/grub.cfg"]


@pytest.mark.parametrize("flavor, word", [
    (baseimage.Flavor("buster", "amd64"), "release 'buster'"),
    (baseimage.Flavor("trixie", "riscv64"), "architecture 'riscv64'"),
])
def test_flavors_that_cannot_exist_are_refused(flavor, word):
    with pytest.raises(ImagebuildError, match=word):
        baseimage.recipe(flavor)
    with pytest.raises(ImagebuildError, match=word):
        baseimage.build("/nonexistent-never-created", flavor)


def test_gpt_tables_run_through_sfdisk(tmp_path):
    """The hybrid and uefi tables, written by the real sfdisk: partitions where the GRUBs expect them."""
    for flavor, types in ((baseimage.Flavor("bookworm", "amd64"), [base_disk.GPT_BIOS_BOOT, base_disk.GPT_ESP,
                                                                     base_disk.GPT_LINUX]),
                          (baseimage.Flavor("trixie", "amd64"), [base_disk.GPT_BIOS_BOOT, base_disk.GPT_ESP,
                                                                   base_disk.GPT_LINUX]),
                          (baseimage.Flavor("trixie", "arm64"), [base_disk.GPT_ESP, base_disk.GPT_LINUX])):
        raw = tmp_path / f"{flavor.release}-{flavor.arch}.raw"
        with open(raw, "wb") as f:
            f.truncate(base_disk.DISK_SIZE)
        subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(raw)], check=True,
                       input=base_disk.gpt_table(flavor.firmware, "6b1a6f0e-0a43-4c5f-9d0c-2b8b0e9d3a11"), text=True)
        table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True,
                                          check=True).stdout)["partitiontable"]
        assert table["label"] == "gpt"
        assert [p["type"] for p in table["partitions"]] == types
        root = table["partitions"][-1]
        assert root["start"] * 512 == base_disk.ESP_END
        assert (root["start"] + root["size"]) * 512 <= base_disk.DISK_SIZE - 33 * 512   # the backup GPT


def test_boot_img_is_patched_as_grub_bios_setup_would():
    boot = bytes(range(256)) * 2
    core = bytearray(1024)
    core[0x200 - 12:0x200 - 4] = (2).to_bytes(8, "little")
    code, patched = base_disk.patch_boot_img(boot, bytes(core), 2048)
    assert len(code) == 440 and int.from_bytes(code[0x5c:0x64], "little") == 2048
    assert int.from_bytes(patched[0x200 - 12:0x200 - 4], "little") == 2049
    with pytest.raises(ImagebuildError, match="unexpected blocklist"):
        base_disk.patch_boot_img(boot, bytes(1024), 2048)
    with pytest.raises(ImagebuildError, match="boot.img size"):
        base_disk.patch_boot_img(boot[:500], bytes(core), 2048)


def test_sources_for_another_release_rename_the_hosts_suites(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGEBUILD_DEBIAN_MIRROR", raising=False)
    root = _fake_root(tmp_path, "bookworm", one_line="""\
deb http://m.example/debian bookworm main
deb http://m.example/debian bookworm-updates main
deb http://m.example/debian-security bookworm-security main
""")
    assert aptsources.debian_sources(root, suite="trixie") == [
        "deb http://m.example/debian trixie main",
        "deb http://m.example/debian trixie-updates main",
        "deb http://m.example/debian-security trixie-security main",
    ]


def test_golden_matrix_names_every_os_and_architecture(monkeypatch, tmp_path):
    from devtools import golden

    monkeypatch.setenv("IMAGEBUILD_CACHE", str(tmp_path / "cache"))      # nothing cached
    rows = {(r[0], r[1]): r for r in golden.matrix()}
    assert set(rows) == {(o, a) for o in ("debian-12", "debian-13") for a in ("amd64", "arm64")}
    assert rows["debian-13", "amd64"][2:] == ("uefi-preferred", "1.7, 2.0, 2.1, 2.2, 2.3, 2.4",
                                              "yes, base image builds first (~2-3 min)")
    assert rows["debian-12", "amd64"][2:4] == ("uefi-preferred", "1.6, 1.7, 2.0, 2.1, 2.2, 2.3, 2.4")
    assert rows["debian-13", "arm64"][2] == "uefi" and rows["debian-13", "arm64"][4].startswith("no: arm64")


# What the kernel shows in /proc/sys/fs/binfmt_misc/<name> (qemu-user-static's registration).
BINFMT_ENTRY = ("{state}\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: {flags}\noffset 0\n"
                "magic 7f454c460201010000000000000000000200b700\n")


@pytest.mark.parametrize("entry, problem", [
    (None, "missing"),
    (BINFMT_ENTRY.format(state="disabled", flags="POF"), "not enabled with the F flag"),
    (BINFMT_ENTRY.format(state="enabled", flags="PO"), "not enabled with the F flag"),
])
def test_a_foreign_base_image_without_binfmt_says_how_to_register_it(tmp_path, entry, problem):
    if entry is not None:
        (tmp_path / "qemu-aarch64").write_text(entry)
    with pytest.raises(ImagebuildError) as err:
        baseimage._need_binfmt("arm64", tmp_path)
    assert problem in str(err.value) and "/usr/lib/binfmt.d/qemu-aarch64.conf" in str(err.value)


def test_a_foreign_base_image_with_binfmt_registered_goes_ahead(tmp_path):
    (tmp_path / "qemu-aarch64").write_text(BINFMT_ENTRY.format(state="enabled", flags="POF"))
    baseimage._need_binfmt("arm64", tmp_path)
