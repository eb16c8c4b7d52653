#!/usr/bin/env bash
# Image hygiene, run as root as the build's last change to the disk: whatever would make two
# machines from this image look alike, or leak the build, goes. What it removes is recorded in
# /var/lib/imagebuild/build-facts.json so the verify boot can prove it came back fresh.
set -euo pipefail

STATE_DIR=/var/lib/imagebuild
mkdir -p "$STATE_DIR"

# The build's network identity: NIC names and MACs (its per-build config names them).
nics=()
for dev in /sys/class/net/*; do
  name=${dev##*/}
  [[ $name == lo ]] && continue
  [[ -r $dev/address ]] || continue
  nics+=("$name=$(cat "$dev/address")")
done

# The firmware the build VM booted under: the verify boot's boot.build_firmware compares it with the
# manifest's build_firmware, so a bake that asked for UEFI and booted SeaBIOS (or the reverse) is caught.
build_firmware=bios
[[ -d /sys/firmware/efi ]] && build_firmware=uefi

# Record the build's identities before removing them.
{
  printf '{"machine_id": "%s", "hostname": "%s", "ssh_host_keys": {' \
    "$(cat /etc/machine-id 2>/dev/null || true)" "$(hostname)"
  sep=""
  for key in /etc/ssh/ssh_host_*_key.pub; do
    [[ -f $key ]] || continue
    printf '%s"%s": "%s"' "$sep" "${key##*/}" "$(sha256sum "$key" | cut -d' ' -f1)"
    sep=", "
  done
  printf '}, "nics": {'
  sep=""
  for nic in "${nics[@]}"; do
    printf '%s"%s": "%s"' "$sep" "${nic%%=*}" "${nic#*=}"
    sep=", "
  done
  printf '}, "firmware": "%s"}\n' "$build_firmware"
} > "$STATE_DIR/build-facts.json"

# cloud-init runs again, as on a new instance, on the next boot. Its logs come back root-only: cloud-init
# keeps an existing log's mode (22.4 would create cloud-init.log 0640 root:adm, tee cloud-init-output.log 0644).
cloud-init clean --logs --seed
install -m 0600 /dev/null /var/log/cloud-init.log
install -m 0600 /dev/null /var/log/cloud-init-output.log
# Per-build network configuration: the first boot writes it for the NIC the instance has
# (another MAC, another name). cloud-init 22.4's `clean` leaves these behind.
rm -f /etc/network/interfaces.d/50-cloud-init /etc/network/interfaces.d/50-cloud-init.cfg \
      /etc/udev/rules.d/70-persistent-net.rules /etc/netplan/50-cloud-init.yaml \
      /etc/systemd/network/10-cloud-init-*.network /etc/systemd/network/10-cloud-init-*.link
# The build's hostname: the first boot takes the instance's (cloud-init, manage_etc_hosts).
# Also the running one, so sudo in the build's last steps still resolves its own host name.
echo localhost > /etc/hostname
hostname localhost
sed -i -e '/^127\.0\.1\.1[[:space:]]/d' /etc/hosts
# First boot never races user-data for the apt lock: the apt-daily timers stay off (images are
# updated by rebuilding them).
systemctl mask apt-daily.timer apt-daily-upgrade.timer
# A new machine-id on first boot (an empty file, not a missing one, keeps systemd's first-boot logic).
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
# New SSH host keys on first boot (cloud-init's ssh module makes them).
rm -f /etc/ssh/ssh_host_*
# Package lists, caches and logs of the build.
apt-get clean
rm -rf /var/lib/apt/lists/*
find /var/log -type f -exec truncate -s 0 {} +
rm -rf /tmp/* /var/tmp/*
# Hand freed blocks back so the converted image stays small.
sync
fstrim --all --verbose || true
