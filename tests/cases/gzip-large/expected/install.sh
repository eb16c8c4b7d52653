#!/usr/bin/env bash
# Managed by imagebuild: installs containerd 1.6.20 (tarball)
# with its tuned configuration. The same script serves the Packer build and cloud-init user-data.
#
#   install.sh [PAYLOAD_DIR]     default /var/lib/imagebuild/payload
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
CONTAINERD_VERSION=1.6.20
changes=()

log() { printf 'imagebuild-install: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
live() { [[ -z $ROOT ]]; }
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# fetch URL DEST SHA256 CHECKSUM_URL: download, then prove the bytes before anyone uses them.
fetch() {
  local url=$1 dest=$2 want=$3 sums=$4 name got
  name=${url##*/}
  log "downloading $url"
  curl -fsSL --retry 3 --retry-connrefused -o "$dest" "$url" || die "download failed: $url"
  if [[ -z $want ]]; then
    curl -fsSL --retry 3 --retry-connrefused -o "$WORK/sums" "$sums" || die "download failed: $sums"
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
  if ! installed containerd https://github.com/containerd/containerd/releases/download/v1.6.20/containerd-1.6.20-linux-amd64.tar.gz; then
    fetch https://github.com/containerd/containerd/releases/download/v1.6.20/containerd-1.6.20-linux-amd64.tar.gz "$WORK/containerd.tar.gz" '' https://github.com/containerd/containerd/releases/download/v1.6.20/containerd-1.6.20-linux-amd64.tar.gz.sha256sum
    mkdir "$WORK/containerd"
    tar -xzf "$WORK/containerd.tar.gz" -C "$WORK/containerd"
    [[ -x $WORK/containerd/bin/containerd ]] || die "the containerd tarball has no bin/containerd"
  fi
  if ! installed runc https://github.com/opencontainers/runc/releases/download/v1.1.5/runc.amd64; then
    fetch https://github.com/opencontainers/runc/releases/download/v1.1.5/runc.amd64 "$WORK/runc" '' https://github.com/opencontainers/runc/releases/download/v1.1.5/runc.sha256sum
  fi

}

install_binaries() {
  local bin paths=()
  if [[ -d $WORK/containerd ]]; then
    for bin in "$WORK"/containerd/bin/*; do
      place "$bin" "/usr/local/bin/${bin##*/}" 0755 no-backup
      paths+=("/usr/local/bin/${bin##*/}")
    done
    record containerd https://github.com/containerd/containerd/releases/download/v1.6.20/containerd-1.6.20-linux-amd64.tar.gz "${paths[@]}"
  else
    log "containerd $CONTAINERD_VERSION already installed"
  fi
  if [[ -f $WORK/runc ]]; then
    place "$WORK/runc" /usr/local/sbin/runc 0755 no-backup
    record runc https://github.com/opencontainers/runc/releases/download/v1.1.5/runc.amd64 /usr/local/sbin/runc
  else
    log "runc 1.1.5 already installed"
  fi

}


# mode sha256 path, for every file the payload carries (rendered from the spec).
FILES=(
  '0644 1fdceb47ed6c4656fdc1469798733d77641320a0f29abba44ba19058310b5c8b /etc/containerd/config.toml'
  '0600 a8d789bc03f25d19c415555dba8a5ff44b32e91fb6ab6a6e8f8d8fcef4fb1bcb /etc/containerd/certs.d/registry00.example.com/hosts.toml'
  '0600 643f18c148e337ecf67ac6d492fa77a17666ecec2dee4343cdf81c0bd03ce479 /etc/containerd/certs.d/registry01.example.com/hosts.toml'
  '0600 ae16187b73cbccf0cb14aa9a3809ec70db8790cc33851dec4c00ae387f29e947 /etc/containerd/certs.d/registry02.example.com/hosts.toml'
  '0600 12e64e18e1a2dd49a6f77855c9a1f0ab219bc116e2ead9ca92d34000a28bb7be /etc/containerd/certs.d/registry03.example.com/hosts.toml'
  '0600 1332860890ba9fddc155d9fba6a09447283635e558165a6e58b088d14c60ed24 /etc/containerd/certs.d/registry04.example.com/hosts.toml'
  '0600 5da7289acb134cb5acc10c4d749df525373c37a41be977c1f76da1f69bfc3fa3 /etc/containerd/certs.d/registry05.example.com/hosts.toml'
  '0600 8414d196637008b8d0d3f3c821b56a6436abdc790d79b90f75834f52a6c0e2e9 /etc/containerd/certs.d/registry06.example.com/hosts.toml'
  '0600 2231ac8eed084e27ec9bce580dbb178dcdf0235751391c142e101b66ece534ac /etc/containerd/certs.d/registry07.example.com/hosts.toml'
  '0600 3c0bce5d9235e1f84e0cc39ee36b76fd6f897503a27bac8b3961fd0f84565ad7 /etc/containerd/certs.d/registry08.example.com/hosts.toml'
  '0600 9ddaa86133d9df241df67743a93826d89142527ab5bfb16ed8ccf2228a0d7bd8 /etc/containerd/certs.d/registry09.example.com/hosts.toml'
  '0600 69c8123e0a509e9fc418cb8b5629f4ea02c3ad53ee4bfa8017ca448e037a56e8 /etc/containerd/certs.d/registry10.example.com/hosts.toml'
  '0600 b6623ed62299a9b3906462c99933f12cb92006a2948ded5b13bb001ba159f9f7 /etc/containerd/certs.d/registry11.example.com/hosts.toml'
  '0600 cece2c252d1f7504d5a737131371f549182497a6a6839a773466b9b2a46770c4 /etc/containerd/certs.d/registry12.example.com/hosts.toml'
  '0600 d617e6163e29ee5d86cd8098f77b7c3674d1172605e4912a6824fc872b5d8e33 /etc/containerd/certs.d/registry13.example.com/hosts.toml'
  '0600 6bf21d23769f14c3411a976f50b7a174b0729af15da458307cc57731df281750 /etc/containerd/certs.d/registry14.example.com/hosts.toml'
  '0600 b1da42874ad5b13c7c1244f6b48ea0fb60f91479d6a753a6db7e84a71557b29a /etc/containerd/certs.d/registry15.example.com/hosts.toml'
  '0600 a51bf816b455b13205b7a8a2a8d8e3b0f90786ee491c7f99b3fcc4fb1d98e717 /etc/containerd/certs.d/registry16.example.com/hosts.toml'
  '0600 23466fd7dab1a823670f62f64da1e5b9fd35c4adc3d1704f3f416bbbe7bee05f /etc/containerd/certs.d/registry17.example.com/hosts.toml'
  '0600 e171170875a4e6bb265c22c5592c1d0d6e40fb654d0f4edb5f22803036221d09 /etc/containerd/certs.d/registry18.example.com/hosts.toml'
  '0600 9e0d2d42fe8b46ef9ff404c2e3fd9f2501381f3175a344cc0e810fb99523b0b4 /etc/containerd/certs.d/registry19.example.com/hosts.toml'
  '0600 0fda64df669b7f07b0e653a33dc2975e294103ba7bcc90982f23b9553492637c /etc/containerd/certs.d/registry20.example.com/hosts.toml'
  '0600 21def22546725aeef24802adbb72f09d5af3bdb43476f83fc4de118dafae9b44 /etc/containerd/certs.d/registry21.example.com/hosts.toml'
  '0600 03edf1b389767655cde14984a1c518b2fc976ffdfdaadeff537421b8fe5b1ac2 /etc/containerd/certs.d/registry22.example.com/hosts.toml'
  '0600 3dc886d2d80354d32d470a9c338f1fb0455c093d0f3ede7ef839cea509939ee2 /etc/containerd/certs.d/registry23.example.com/hosts.toml'
  '0600 2bd521fe47d440ff393780e3e702cda94629ab7b9239345b8e986116d0b2d318 /etc/containerd/certs.d/registry24.example.com/hosts.toml'
  '0600 4e965b692e167c64c20f27232f0c6030eb4045f19194043985ab527767863810 /etc/containerd/certs.d/registry25.example.com/hosts.toml'
  '0600 276522b854ed372183c485942c2cbeb026e9793b816b610f9549fcc71535c7b6 /etc/containerd/certs.d/registry26.example.com/hosts.toml'
  '0600 bc31004fcb8264b07a690ccc92ffd029b4427a131b34698911e9b1d4fd9d2af6 /etc/containerd/certs.d/registry27.example.com/hosts.toml'
  '0600 544cd8b72769ce60dfc67764a750b72f6cb81a88a0f95b8567059a049f787c28 /etc/containerd/certs.d/registry28.example.com/hosts.toml'
  '0600 b80e0622e7891cd0a62de51101ce6ddbb77da53773215153e85f188941c19375 /etc/containerd/certs.d/registry29.example.com/hosts.toml'
  '0644 7e9b185961636e9f62e19fd07b19f38b3121936c295f51bd6068e13e40b83301 /etc/systemd/system/containerd.service'
  '0644 99a60363382a7dcb5a5acea071f1db1c7f5c1c1780491622494b3cabef66cb3d /etc/modules-load.d/containerd.conf'
  '0644 0a1f5699442456369c48f99383a04a551192d950bb8c9a4df75388cf1ae14175 /etc/sysctl.d/99-containerd.conf'
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
check_payload
install_binaries
install_files
apply_system
if [[ ${#changes[@]} -eq 0 ]]; then
  log "nothing to change: containerd $CONTAINERD_VERSION and its configuration are already in place"
else
  log "changed ${#changes[@]}: ${changes[*]}"
fi
