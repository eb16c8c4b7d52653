"""Virtual machines in QEMU, one concern per module; this package's names are their public ones:

- :mod:`.accel`   the accelerator: KVM only when a probe boot proves it works, else TCG
- :mod:`.disks`   qemu-img (info, overlays, conversion with a progress bar), ISO seeds, offline reading
- :mod:`.channel` the results channel: a virtio-serial port, marked lines, tailing a log file
- :mod:`.ec2`     how an EC2 instance looks to its guest (SMBIOS identity, IMDS network, MAC)
- :mod:`.guest`   one watched QEMU guest (:class:`~.guest.Guest`) and :func:`~.guest.boot`
- :mod:`.firmware` firmware files per boot mode and architecture
"""
from __future__ import annotations

from imagebuild.vm.accel import QEMU, accel_args, accelerator, probe_boot, probe_kvm
from imagebuild.vm.channel import (
    DONE_PREFIX,
    RESULT_PREFIX,
    RESULTS_DEVICE,
    RESULTS_PORT,
    RESULTS_PORT_NAME,
    SERIAL_DEVICE,
    Line,
    parse_marked_lines,
    strip_ansi,
    tail,
)
from imagebuild.vm.disks import convert, data_iso, image_info, overlay, seed_iso, virtual_size
from imagebuild.vm.ec2 import EC2_GUEST_IP, EC2_HOST, EC2_NET, EC2_NIC_SLOT, ec2_netdev, ec2_smbios, random_mac
from imagebuild.vm.guest import DEFAULT_MARKERS, BootResult, Guest, boot

__all__ = [
    "DEFAULT_MARKERS", "DONE_PREFIX", "EC2_GUEST_IP", "EC2_HOST", "EC2_NET", "EC2_NIC_SLOT", "QEMU",
    "RESULTS_DEVICE", "RESULTS_PORT", "RESULTS_PORT_NAME", "RESULT_PREFIX", "SERIAL_DEVICE", "BootResult",
    "Guest", "Line", "accel_args", "accelerator", "boot", "convert", "data_iso", "ec2_netdev", "ec2_smbios",
    "image_info", "overlay", "parse_marked_lines", "probe_boot", "probe_kvm", "random_mac", "seed_iso",
    "strip_ansi", "tail", "virtual_size",
]
