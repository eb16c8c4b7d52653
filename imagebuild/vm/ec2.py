"""EC2 as a guest sees it (QEMU options): the SMBIOS identity ds-identify reads (product UUID and
serial starting with "ec2", Amazon EC2 as vendor and product, the instance id as the chassis asset
tag, as on Nitro), a fresh MAC, and a link-local user network whose 169.254.169.254:80 is
forwarded to an IMDS on the host (:mod:`imagebuild.verify.imds`)."""
from __future__ import annotations

import os
import uuid

from imagebuild.vm.guest import option

EC2_NET = "169.254.0.0/16"
EC2_HOST = "169.254.0.1"          # the host's loopback as the guest sees it on that network
EC2_GUEST_IP = "169.254.10.15"    # the first (only) DHCP lease
EC2_NIC_SLOT = 5                  # PCI slot of the NIC: ens5, as on Nitro instances


def random_mac() -> str:
    """A fresh unicast, locally administered MAC (``0a:...`` as on EC2 Nitro), never QEMU's
    default ``52:54:00:12:34:56`` that every build VM gets."""
    return "0a:" + ":".join(f"{b:02x}" for b in os.urandom(5))


def ec2_smbios(instance_id: str, instance_type: str) -> list[str]:
    """``-smbios`` options of an EC2 (Nitro) instance whose id is *instance_id*, of *instance_type*
    (the DMI product name, as the IMDS identity document's instanceType)."""
    ident = "ec2" + uuid.uuid4().hex[3:]
    vm_uuid = str(uuid.UUID(ident))
    return ["-smbios", f"type=1,manufacturer=Amazon EC2,product={option(instance_type)},serial={vm_uuid},"
            f"uuid={vm_uuid}",
            "-smbios", f"type=3,manufacturer=Amazon EC2,asset={option(instance_id)}"]


def ec2_netdev(relay_cmd: str) -> str:
    """``-netdev user`` options (after ``user,id=net0``) of the EC2 network, with the
    guest's 169.254.169.254:80 forwarded to *relay_cmd* (run per connection)."""
    return (f"net={EC2_NET},host={EC2_HOST},dhcpstart={EC2_GUEST_IP},"
            f"guestfwd=tcp:169.254.169.254:80-cmd:{option(relay_cmd)}")
