#!/usr/bin/env bash
# Managed by imagebuild: installs containerd 2.3.7 (tarball)
# with its tuned configuration. The same script serves the Packer build and cloud-init user-data.
#
#   install.sh [PAYLOAD_DIR [--pull-sandbox CRI_PY]]     default /var/lib/imagebuild/payload
#
# The Packer build bakes the sandbox image in (image.sandbox.source: registry), pinned by
# containerd 1.7+ (kubelet's image GC keeps it), so a pod starts offline. --pull-sandbox pulls it through CRI
# with CRI_PY (cri.py), from its registry through the configured mirrors; --import-sandbox imports it from
# an OCI archive the bake checked (its sha256, and that it holds that image under that name), then removes it.
#
# Every download is checked against its sha256 before anything is unpacked; every file is
# replaced atomically (the replaced one kept as *.imagebuild-backup); a second run changes
# nothing and says so. IMAGEBUILD_ROOT=/some/dir installs into a scratch root instead of /
# (no systemctl, modprobe or sysctl there).
set -euo pipefail

PAYLOAD=${1:-/var/lib/imagebuild/payload}
ROOT=${IMAGEBUILD_ROOT:-}
if [[ -n $ROOT ]]; then
  ROOT=$(realpath -m "$ROOT")
fi
STATE_DIR=$ROOT/var/lib/imagebuild
CONTAINERD_VERSION=2.3.7
changes=()

log() { printf 'imagebuild-install: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
live() { [[ -z $ROOT ]]; }
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# The binaries this script installs are of one architecture (image.architecture): refuse another machine.
case $(uname -m) in
  x86_64) MACHINE=amd64 ;;
  aarch64 | arm64) MACHINE=arm64 ;;
  *) MACHINE=$(uname -m) ;;
esac
[[ $MACHINE == amd64 ]] \
  || die "this machine is $MACHINE; this script installs containerd for amd64 (image.architecture): render the spec with image.architecture: $MACHINE"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

APT_PROXY=()  # apt-get's options: the spec's proxy, if any

# download URL DEST PROTOCOLS REDIRECT_PROTOCOLS: curl over the protocols the spec allows (https; http
# only for an artifact marked insecure), redirects included, failing on HTTP errors, with retries; a
# connection that stalls (no byte for 60 s) counts as a failed try, not a hung first boot.
download() {
  curl --fail --silent --show-error --location --proto "$3" --proto-redir "$4" \
    --connect-timeout 20 --speed-limit 1 --speed-time 60 \
    --retry 5 --retry-connrefused -o "$2" "$1"
}

# fetch URL DEST SHA256 CHECKSUM_URL PROTOCOLS REDIRECT_PROTOCOLS: download, then prove the bytes before
# anyone uses them. SHA256 is pinned at render time; CHECKSUM_URL is read here only when it is not.
fetch() {
  local url=$1 dest=$2 want=$3 sums=$4 proto=$5 redirect=$6 name got
  name=${url##*/}
  log "downloading $url"
  download "$url" "$dest" "$proto" "$redirect" || die "download failed: $url"
  if [[ -z $want ]]; then
    download "$sums" "$WORK/sums" "$proto" "$redirect" || die "download failed: $sums"
    want=$(awk -v n="$name" 'NF == 1 { print $1; exit } $2 == n || $2 == "*" n { print $1; exit }' "$WORK/sums")
    [[ $want =~ ^[0-9a-f]{64}$ ]] || die "no sha256 for $name in $sums"
  fi
  got=$(sha256_of "$dest")
  [[ $got == "$want" ]] || die "sha256 mismatch for $url: expected $want, got $got; nothing was installed"
  log "sha256 verified: $name"
}

# place SRC DEST MODE: replace $ROOT/DEST with SRC atomically unless it is already identical.
place() {
  local src=$1 dest=$ROOT$2 mode=$3
  if [[ -f $dest ]] && cmp -s "$src" "$dest" && [[ $(stat -c %a "$dest") == "${mode#0}" ]]; then
    return 0
  fi
  mkdir -p "$(dirname "$dest")"
  if [[ -f $dest && $4 == backup ]]; then
    cp -p "$dest" "$dest.imagebuild-backup"
  fi
  install -m "$mode" "$src" "$dest.imagebuild-new"
  mv -f "$dest.imagebuild-new" "$dest"
  changes+=("$2")
}

# installed NAME URL: true when the binaries recorded for NAME came from URL and are unchanged.
installed() {
  local stamp=$STATE_DIR/installed/$1
  [[ -f $stamp ]] && [[ $(head -n 1 "$stamp") == "$2" ]] &&
    (cd "${ROOT:-/}" && tail -n +2 "$stamp" | sha256sum --check --status)
}

# record NAME URL PATH...: remember what NAME installed, for the next run's `installed`.
record() {
  local name=$1 url=$2 path
  shift 2
  mkdir -p "$STATE_DIR/installed"
  {
    printf '%s\n' "$url"
    for path in "$@"; do
      printf '%s  %s\n' "$(sha256_of "$ROOT$path")" "${path#/}"
    done
  } > "$STATE_DIR/installed/$name.new"
  mv -f "$STATE_DIR/installed/$name.new" "$STATE_DIR/installed/$name"
}

download_artifacts() {
  if ! installed containerd https://github.com/containerd/containerd/releases/download/v2.3.7/containerd-2.3.7-linux-amd64.tar.gz; then
    fetch https://github.com/containerd/containerd/releases/download/v2.3.7/containerd-2.3.7-linux-amd64.tar.gz "$WORK/containerd.tar.gz" '' https://github.com/containerd/containerd/releases/download/v2.3.7/containerd-2.3.7-linux-amd64.tar.gz.sha256sum =https =https
    mkdir "$WORK/containerd"
    tar -xzf "$WORK/containerd.tar.gz" -C "$WORK/containerd"
    [[ -x $WORK/containerd/bin/containerd ]] || die "the containerd tarball has no bin/containerd"
  fi
  if ! installed runc https://github.com/opencontainers/runc/releases/download/v1.4.4/runc.amd64; then
    fetch https://github.com/opencontainers/runc/releases/download/v1.4.4/runc.amd64 "$WORK/runc" '' https://github.com/opencontainers/runc/releases/download/v1.4.4/runc.sha256sum =https =https
  fi

  if ! installed cni-plugins https://github.com/containernetworking/plugins/releases/download/v1.10.0/cni-plugins-linux-amd64-v1.10.0.tgz; then
    fetch https://github.com/containernetworking/plugins/releases/download/v1.10.0/cni-plugins-linux-amd64-v1.10.0.tgz "$WORK/cni.tgz" '' https://github.com/containernetworking/plugins/releases/download/v1.10.0/cni-plugins-linux-amd64-v1.10.0.tgz.sha256 =https =https
    mkdir "$WORK/cni"
    tar -xzf "$WORK/cni.tgz" -C "$WORK/cni"
  fi

}

install_binaries() {
  local bin paths=()
  if [[ -d $WORK/containerd ]]; then
    for bin in "$WORK"/containerd/bin/*; do
      place "$bin" "/usr/local/bin/${bin##*/}" 0755 no-backup
      paths+=("/usr/local/bin/${bin##*/}")
    done
    record containerd https://github.com/containerd/containerd/releases/download/v2.3.7/containerd-2.3.7-linux-amd64.tar.gz "${paths[@]}"
  else
    log "containerd $CONTAINERD_VERSION already installed"
  fi
  if [[ -f $WORK/runc ]]; then
    place "$WORK/runc" /usr/local/sbin/runc 0755 no-backup
    record runc https://github.com/opencontainers/runc/releases/download/v1.4.4/runc.amd64 /usr/local/sbin/runc
  else
    log "runc 1.4.4 already installed"
  fi

  if [[ -d $WORK/cni ]]; then
    paths=()
    for bin in "$WORK"/cni/*; do
      [[ -f $bin ]] || continue
      place "$bin" "/opt/cni/bin/${bin##*/}" 0755 no-backup
      paths+=("/opt/cni/bin/${bin##*/}")
    done
    record cni-plugins https://github.com/containernetworking/plugins/releases/download/v1.10.0/cni-plugins-linux-amd64-v1.10.0.tgz "${paths[@]}"
  else
    log "CNI plugins 1.10.0 already installed"
  fi

}


# The binaries of config.runtimes (a shim, its runtime): all downloaded and checked against the sha256 the
# spec pins before any is installed, each recorded like the release artifacts.
download_runtime_files() {
  mkdir -p "$WORK/runtime"
}

install_runtime_files() {
  :
}

# mode sha256 path, for every file the payload carries (rendered from the spec).
FILES=(
  '0644 6ef1b035a6df5d71361f7fd7fe7895e44ac39cbf58b496370b9c25eef9661d36 /etc/containerd/config.toml'
  '0644 72b4e5991b6d0576b77e1afb42ab9af6b858db000d2f4360c76063ec94b0f9a3 /etc/containerd/certs.d/docker.io/hosts.toml'
  '0644 63665ea7e262fba9be90d1990dde824fc41ec52309706310d77dd3f32055c5da /etc/containerd/certs.d/gcr.io/hosts.toml'
  '0644 d3b12eddb1bded9959a501d64654ddccdf11452142799ba67c4ecf83726ee658 /etc/containerd/certs.d/k8s.gcr.io/hosts.toml'
  '0644 4e3a009df7139703a158afabe2be873766f15661e0193e21cf87c9ed84cbe364 /etc/containerd/certs.d/quay.io/hosts.toml'
  '0644 7e9b185961636e9f62e19fd07b19f38b3121936c295f51bd6068e13e40b83301 /etc/systemd/system/containerd.service'
  '0644 99a60363382a7dcb5a5acea071f1db1c7f5c1c1780491622494b3cabef66cb3d /etc/modules-load.d/containerd.conf'
  '0644 4b1d2987a3403d495bf3291679f947e6712d73adc299fdfe3822f3c8a282da73 /etc/sysctl.d/99-containerd.conf'
)

check_payload() {
  local entry mode sum path
  for entry in "${FILES[@]}"; do
    read -r mode sum path <<< "$entry"
    [[ -f $PAYLOAD$path ]] || die "payload file missing: $PAYLOAD$path"
    [[ $(sha256_of "$PAYLOAD$path") == "$sum" ]] || die "payload file differs from the rendered one: $PAYLOAD$path"
  done
}

install_files() {
  local entry mode sum path old current
  for entry in "${FILES[@]}"; do
    read -r mode sum path <<< "$entry"
    place "$PAYLOAD$path" "$path" "$mode" backup
  done
  # Files an earlier run installed that this spec no longer has (a dropped mirror, say).
  # grep reads a here-string, not a pipe: under pipefail, grep -q exiting at the first match made
  # the writer die of SIGPIPE on long lists, and current files were moved aside as stale.
  current=$(printf '%s\n' "${FILES[@]}" | cut -d' ' -f3)
  if [[ -f $STATE_DIR/installed/files ]]; then
    while read -r old; do
      if ! grep -qxF -- "$old" <<< "$current" && [[ -f $ROOT$old ]]; then
        mv -f "$ROOT$old" "$ROOT$old.imagebuild-backup"
        changes+=("removed $old")
      fi
    done < "$STATE_DIR/installed/files"
  fi
  mkdir -p "$STATE_DIR/installed" "$ROOT"/etc/containerd/certs.d
  printf '%s\n' "$current" > "$STATE_DIR/installed/files.new"
  # Replaced only when it changed, so a run that changes nothing leaves every file as it was.
  if cmp -s "$STATE_DIR/installed/files.new" "$STATE_DIR/installed/files"; then
    rm -f "$STATE_DIR/installed/files.new"
  else
    mv -f "$STATE_DIR/installed/files.new" "$STATE_DIR/installed/files"
  fi
}

# The system profile's tools (kubernetes-worker: conntrack, socat, ebtables), from the distro.
install_tools() {

  local pkg missing=()
  for pkg in conntrack socat ebtables; do
    if ! dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Status}' "$pkg" 2>/dev/null | grep -q ' installed$'; then
      missing+=("$pkg")
    fi
  done
  [[ ${#missing[@]} -gt 0 ]] || return 0
  if ! live; then
    log "scratch root: packages not installed: ${missing[*]}"
    return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get "${APT_PROXY[@]}" update -q
  apt-get "${APT_PROXY[@]}" install -y -q --no-install-recommends "${missing[@]}"
  changes+=("packages ${missing[*]}")

}

# cloud-init's logs record what user-data did: root-only, like the stored user-data (cloud-init 22.4 creates
# cloud-init.log 0640 root:adm and cloud-init-output.log with tee, 0644). The image's hygiene creates them
# 0600 for the next boot; cloud-init keeps an existing file's mode.
private_logs() {
  local log
  live || return 0
  for log in /var/log/cloud-init.log /var/log/cloud-init-output.log; do
    if [[ -f $log ]] && [[ $(stat -c %a "$log") != 600 ]]; then
      chmod 0600 "$log"
    fi
  done
}

apply_system() {
  if ! live; then
    log "scratch root: systemctl, modprobe and sysctl skipped"
    return 0
  fi

  modprobe overlay || log "warning: modprobe overlay failed"

  modprobe br_netfilter || log "warning: modprobe br_netfilter failed"

  sysctl -q --load=/etc/sysctl.d/99-containerd.conf || log "warning: some sysctls did not apply"
  if [[ ${#changes[@]} -gt 0 ]]; then
    systemctl daemon-reload
  fi
  if ! systemctl is-enabled --quiet containerd; then
    systemctl enable containerd
    changes+=("enabled containerd.service")
  fi
  if [[ ${#changes[@]} -gt 0 ]] || ! systemctl is-active --quiet containerd; then
    systemctl restart containerd
    log "containerd restarted"
  fi
  systemctl is-active --quiet containerd || die "containerd is not active; see: journalctl -u containerd"
}

[[ $(id -u) == 0 ]] || die "run as root"
download_artifacts
download_runtime_files
check_payload
install_binaries
install_runtime_files
install_tools
install_files
private_logs
apply_system
if [[ ${2:-} == --pull-sandbox ]] && live; then
  log "pulling the sandbox image registry.k8s.io/pause:3.10.2 through CRI"
  python3 "$3" --wait 120 PullImage '{"image": {"image": "registry.k8s.io/pause:3.10.2"}}' >/dev/null || die "pulling the sandbox image failed"
fi
if [[ ${#changes[@]} -eq 0 ]]; then
  log "nothing to change: containerd $CONTAINERD_VERSION and its configuration are already in place"
else
  log "changed ${#changes[@]}: ${changes[*]}"
fi
