#!/usr/bin/env bash
# Image hygiene, run as root as the build's last change to the disk: whatever would make two
# machines from this image look alike, or leak the build, goes. What it removes is recorded in
# /var/lib/imagebuild/build-facts.json so the verify boot can prove it came back fresh.
set -euo pipefail

STATE_DIR=/var/lib/imagebuild
mkdir -p "$STATE_DIR"

# Record the build's identities before removing them.
{
  printf '{"machine_id": "%s", "ssh_host_keys": {' "$(cat /etc/machine-id 2>/dev/null || true)"
  sep=""
  for key in /etc/ssh/ssh_host_*_key.pub; do
    [[ -f $key ]] || continue
    printf '%s"%s": "%s"' "$sep" "${key##*/}" "$(sha256sum "$key" | cut -d' ' -f1)"
    sep=", "
  done
  printf '}}\n'
} > "$STATE_DIR/build-facts.json"

# cloud-init runs again, as on a new instance, on the next boot.
cloud-init clean --logs --seed
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
