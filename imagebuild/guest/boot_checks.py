#!/usr/bin/env python3
"""The verify boot's checks of what the boot presented: firmware, console, drivers, time, apt policy,
root grown, DHCP, hostname, no build identity left; on EC2 datasource, instance-id, IMDS key. Standard
library only; staged beside check.py (which imports it for --boot), never installed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

try:
    from check import run  # in the guest: beside check.py
except ImportError:                # on the host (tests)
    from imagebuild.guest.check import run


#: Where per-build network configuration lives (cloud-init's renderers, udev NIC naming rules).
NETWORK_CONFIG_DIRS = ("/etc/network/interfaces.d", "/etc/udev/rules.d", "/etc/netplan", "/etc/systemd/network")
#: The Amazon Time Sync Service; the image's chrony prefers it where it answers.
AWS_TIME_SYNC = "169.254.169.123"
APT_TIMERS = ("apt-daily.timer", "apt-daily-upgrade.timer")
REQUIRED_DRIVERS = ("ena", "nvme")
EFI_SIZE = "/sys/firmware/efi/fw_platform_size"  # only under UEFI
LEASES = "/run/systemd/netif/leases"                # networkd's, by ifindex


def files_mentioning(needles: list[str], dirs=NETWORK_CONFIG_DIRS) -> list[str]:
    """Files in or under *dirs* (directories or files) whose text contains any of *needles*
    (case-insensitive)."""
    hits = []
    lowered = [n.lower() for n in needles if n]
    for top in dirs:
        top = Path(top)
        for path in sorted(top.rglob("*")) if top.is_dir() else [top] if top.is_file() else []:
            try:
                text = path.read_text(errors="replace").lower() if path.is_file() else ""
            except OSError:
                continue
            if any(n in text for n in lowered):
                hits.append(str(path))
    return hits


def instance_data(path: str = "/run/cloud-init/instance-data.json") -> dict:
    """cloud-init's v1 instance data (platform, cloud_name, instance_id, local_hostname), or {}."""
    try:
        return json.loads(Path(path).read_text()).get("v1", {})
    except (OSError, ValueError, AttributeError):
        return {}


def key_holders(public_key: str, home: str = "/home") -> list[str]:
    """Users under *home* whose ~/.ssh/authorized_keys carries *public_key* (type and key)."""
    want = " ".join(public_key.split()[:2])
    users = []
    for keys in sorted(Path(home).glob("*/.ssh/authorized_keys")):
        lines = keys.read_text(errors="replace").splitlines()
        if any(" ".join(line.split()[:2]) == want or f" {want}" in line for line in lines):
            users.append(keys.parent.parent.name)
    return users


def nic_by_mac(mac: str) -> str | None:
    for dev in sorted(Path("/sys/class/net").iterdir()):
        try:
            if (dev / "address").read_text().strip().lower() == mac.lower():
                return dev.name
        except OSError:
            continue
    return None


def firmware_check(rep, boot: dict, size: str = EFI_SIZE) -> None:
    try:
        actual = f"uefi ({Path(size).read_text().strip()}-bit, {size})"
    except OSError:
        actual = f"bios (no {size})"
    rep.check("boot.firmware", boot["firmware"], actual, actual.split()[0] == boot["firmware"])


def build_firmware_check(rep, boot: dict, facts: dict) -> None:
    """The bake booted its build VM under the firmware its manifest says (hygiene.sh records it)."""
    actual = facts.get("firmware") or "<not recorded in build-facts.json>"
    rep.check("boot.build_firmware", boot["build_firmware"], actual, actual == boot["build_firmware"])


def rootfs_grown(disk: int, start: int, size: int, fs: int) -> tuple[str, bool]:
    """The partition ENDS at the disk's end less the backup GPT (33 sectors), wherever it starts."""
    return (f"disk {disk}, partition {start}..{start + size} ({size}), filesystem {fs} bytes",
            start + size >= disk - 33 * 512 - 4 * 2**20 and fs >= size - 2**20)


def dhcp_configured(dev: str, ifindex: str, leases: str = LEASES, dhclient: str = "/var/lib/dhcp",
                    eni: str = "/etc/network/interfaces.d/50-cloud-init") -> tuple[str, bool]:
    """networkd's lease (Debian 13), or ifupdown's `iface DEV inet dhcp` and a dhclient lease (12)."""
    lease = Path(leases) / ifindex
    if ifindex and lease.is_file():
        m = re.search(r"^ADDRESS=(\S+)", lease.read_text(errors="replace"), re.M)
        return f"a networkd DHCP lease ({lease}: {m.group(1) if m else 'no ADDRESS'})", bool(m)
    stanza = Path(eni).exists() and re.search(rf"^iface {re.escape(dev)} inet dhcp$", Path(eni).read_text(), re.M)
    got = any(Path(dhclient).glob(f"dhclient*{dev}*.leases"))
    return (f"{'dhcp' if stanza else 'not dhcp'} in {eni}, {'a' if got else 'no'} dhclient lease, "
            f"no {lease}"), bool(stanza) and got


def platform_checks(rep, boot: dict) -> None:
    """What a cloud image owes any platform: console, drivers, time, apt policy, root grown, network."""
    cmdline = Path("/proc/cmdline").read_text().split()
    rep.check("platform.console", "console=ttyS0 on the kernel command line",
              " ".join(a for a in cmdline if a.startswith("console=")) or "<none>",
              any(a.startswith("console=ttyS0") for a in cmdline))
    for driver in REQUIRED_DRIVERS:
        found = run("modinfo", "-F", "filename", driver).stdout.strip()
        rep.check(f"platform.driver.{driver}", "module or built-in", found or "<missing>", bool(found))
    active = run("systemctl", "is-active", "chrony").stdout.strip()
    ntp = run("timedatectl", "show", "-p", "NTP", "--value").stdout.strip()
    sources = run("chronyc", "-n", "sources").stdout
    rep.check("time.sync", f"chrony active, NTP=yes, source {AWS_TIME_SYNC}",
              f"chrony {active or '<absent>'}, NTP={ntp or '?'}, source {AWS_TIME_SYNC} "
              + ("listed" if AWS_TIME_SYNC in sources else "missing"),
              active == "active" and ntp == "yes" and AWS_TIME_SYNC in sources)
    states = [f"{t} {run('systemctl', 'is-enabled', t).stdout.strip() or '?'}/"
              f"{run('systemctl', 'is-active', t).stdout.strip() or '?'}" for t in APT_TIMERS]
    rep.check("apt.daily_timers", " ".join(f"{t} masked/inactive" for t in APT_TIMERS), " ".join(states))
    root = run("findmnt", "-no", "SOURCE", "/").stdout.strip()
    part = Path("/sys/class/block") / Path(root).name
    try:
        disk = part.resolve().parent
        start_b = int((part / "start").read_text()) * 512
        part_b = int((part / "size").read_text()) * 512
        disk_b = int((disk / "size").read_text()) * 512
        tune = dict(line.split(":", 1) for line in run("tune2fs", "-l", root).stdout.splitlines() if ":" in line)
        fs_b = int(tune["Block count"]) * int(tune["Block size"])
        actual, ok = rootfs_grown(disk_b, start_b, part_b, fs_b)
    except (OSError, ValueError, KeyError) as exc:
        actual, ok = f"<{type(exc).__name__}: {exc}>", False
    rep.check("disk.rootfs_grown", "partition and filesystem fill the disk", actual, ok)
    mac = boot.get("mac")
    if mac:
        dev = nic_by_mac(mac)
        route = run("ip", "-4", "route", "show", "default").stdout.split()
        route_dev = route[route.index("dev") + 1] if "dev" in route else None
        how, dhcp = "", False
        if dev:
            ifindex = Path(f"/sys/class/net/{dev}/ifindex").read_text().strip()
            how, dhcp = dhcp_configured(dev, ifindex)
        # boot.routed false: a network with no router (the lab's proxy-only one: its DHCP offers no gateway, and
        # everything the guest reaches is on the link), where a default route would be a way out.
        routed = boot.get("routed", True)
        rep.check("network.dhcp", f"the NIC with MAC {mac}: {'default route' if routed else 'no default route'}, "
                  "configured by DHCP",
                  f"{dev or '<no such NIC>'}: default route via {route_dev or '<none>'}, {how}",
                  bool(dev) and dhcp and (route_dev == dev if routed else not route))


def ec2_checks(rep, boot: dict) -> None:
    """cloud-init took the instance from EC2's metadata service (IMDS), not from anything else."""
    v1 = instance_data()
    rep.check("ec2.datasource", {"cloud_name": "aws", "platform": "ec2"},
              {"cloud_name": v1.get("cloud_name", "<absent>"), "platform": v1.get("platform", "<absent>")})
    rep.check("ec2.instance_id", boot["instance_id"], v1.get("instance_id", "<absent>"))
    holders = key_holders(boot["public_key"])
    rep.check("ec2.public_key", "in the default user's authorized_keys",
              f"in {', '.join(holders)}'s authorized_keys" if holders else "in nobody's authorized_keys", bool(holders))


def identity_checks(rep, boot: dict, facts: dict) -> None:
    """The boot's hostname is the platform's, and nothing of the build's identity is left."""
    hostname = run("hostname").stdout.strip()
    built = facts.get("hostname")
    if boot.get("hostname"):
        rep.check("hygiene.hostname", boot["hostname"], hostname,
                  hostname == boot["hostname"] and hostname != built)
    build_macs = list(facts.get("nics", {}).values())
    build_host = [built] if built and built != "localhost" else []
    if build_macs:
        hits = files_mentioning(build_macs + build_host)
        rep.check("hygiene.network_config", "no config naming the build's NIC or host", hits or "none", not hits)
    if build_host:
        hits = files_mentioning(build_host, ("/etc/hostname", "/etc/hosts"))
        rep.check("hygiene.build_hostname", f"{built} in neither /etc/hostname nor /etc/hosts", hits or "none",
                  not hits)


def run_all(rep, boot: dict, facts: dict) -> None:
    if boot.get("firmware"):
        firmware_check(rep, boot)
    if boot.get("build_firmware"):
        build_firmware_check(rep, boot, facts)
    platform_checks(rep, boot)
    identity_checks(rep, boot, facts)
    if boot.get("platform") == "ec2":
        ec2_checks(rep, boot)
