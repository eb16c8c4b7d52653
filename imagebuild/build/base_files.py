"""The configuration files the base image's tree gets, relative to its root (read by
:mod:`imagebuild.build.baseimage`, whose recipe hash covers them)."""
from __future__ import annotations

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
insmod part_gpt
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
