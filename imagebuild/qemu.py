"""Booting guests in QEMU: the public names of :mod:`imagebuild.vm`, for callers that import
``imagebuild.qemu`` (verify, pipeline). The code lives in the package, one concern per module:
:mod:`imagebuild.vm.accel`, :mod:`~imagebuild.vm.disks`, :mod:`~imagebuild.vm.channel`,
:mod:`~imagebuild.vm.ec2`, :mod:`~imagebuild.vm.guest`.
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
