#!/usr/bin/env bash
# Managed by imagebuild: installs containerd 1.6.20 (tarball)
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
CONTAINERD_VERSION=1.6.20
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
  if ! installed containerd https://github.com/containerd/containerd/releases/download/v1.6.20/containerd-1.6.20-linux-amd64.tar.gz; then
    fetch https://github.com/containerd/containerd/releases/download/v1.6.20/containerd-1.6.20-linux-amd64.tar.gz "$WORK/containerd.tar.gz" '' https://github.com/containerd/containerd/releases/download/v1.6.20/containerd-1.6.20-linux-amd64.tar.gz.sha256sum =https =https
    mkdir "$WORK/containerd"
    tar -xzf "$WORK/containerd.tar.gz" -C "$WORK/containerd"
    [[ -x $WORK/containerd/bin/containerd ]] || die "the containerd tarball has no bin/containerd"
  fi
  if ! installed runc https://github.com/opencontainers/runc/releases/download/v1.1.5/runc.amd64; then
    fetch https://github.com/opencontainers/runc/releases/download/v1.1.5/runc.amd64 "$WORK/runc" '' https://github.com/opencontainers/runc/releases/download/v1.1.5/runc.sha256sum =https =https
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
  '0644 bb1ed12249dedbfe7c2374c4bb3c9562eeaf63a125026b48857bcad2f504aaa8 /etc/containerd/config.toml'
  '0600 4288de646b3d9546b9ad293d8577826b8aed8b20e3d2111da07f4fcd49150f88 /etc/containerd/certs.d/registry00.example.com/hosts.toml'
  '0600 4289392cbdbaf4f1387adeb8b5ca951d93c0edf846aa6cc08b6f5b65b32ff7c6 /etc/containerd/certs.d/registry01.example.com/hosts.toml'
  '0600 4399c138cc2a222773a71f54e4fd904d68bc6cc3dd5e454af3e82769555abafc /etc/containerd/certs.d/registry02.example.com/hosts.toml'
  '0600 6469e9289b55d5a951003c736e934ec75835522b142b6c9ce5add6a810d71db8 /etc/containerd/certs.d/registry03.example.com/hosts.toml'
  '0600 952ed1e4ba8e46ca708c9265e0094480f5583811046077edb6f06ce6e5bf2b81 /etc/containerd/certs.d/registry04.example.com/hosts.toml'
  '0600 0a579d26067d156309d277b21580fcf679318e7ccfde5182c44c4865fc57b621 /etc/containerd/certs.d/registry05.example.com/hosts.toml'
  '0600 28661142b93136eca8efb0a0aa20349940f3caf371eff36856cb0f83792bbaeb /etc/containerd/certs.d/registry06.example.com/hosts.toml'
  '0600 1ee2856409fe83bf06c334209c406bc025edd47f3258b771a547db84a6200524 /etc/containerd/certs.d/registry07.example.com/hosts.toml'
  '0600 9e8b2fb1a30138fefc29951cf82e214d6cee69d0590dbb2ec5395adfe1335fa2 /etc/containerd/certs.d/registry08.example.com/hosts.toml'
  '0600 555d2b0ea881e16094e04c111622e4c46ea229c7aa52a39cc1a704751a22a485 /etc/containerd/certs.d/registry09.example.com/hosts.toml'
  '0600 5e39dfc0808536704f61a411c5c4f805eccfc937e2153e05b9b46d4434baafe6 /etc/containerd/certs.d/registry10.example.com/hosts.toml'
  '0600 6a4f1cd01324707ba19cef4bc8958677bd2bbf5f8c9f0129025920a82c23c1f4 /etc/containerd/certs.d/registry11.example.com/hosts.toml'
  '0600 e7fa8fe76dd8764e9f6db6f59bc3eb6da498b4162f096b4bd5adf9747af05e21 /etc/containerd/certs.d/registry12.example.com/hosts.toml'
  '0600 5bb8673b66de29ad81e4876be6a203814700d393f2dc50d5e0f322a5dd36df96 /etc/containerd/certs.d/registry13.example.com/hosts.toml'
  '0600 197dd6fcf75a282a31719438d522e1a71c7f7b06fbc8296f186a811db8d5e0a9 /etc/containerd/certs.d/registry14.example.com/hosts.toml'
  '0600 9d4e48c6fba837b5ef2224f6fffc1e0a7aee17f05fdbae96c4583bb58149a0b5 /etc/containerd/certs.d/registry15.example.com/hosts.toml'
  '0600 70cf38bfeed4a8a8c37dc619b11bc536b0b550eab75436438cffb9e29bf03443 /etc/containerd/certs.d/registry16.example.com/hosts.toml'
  '0600 721a5768cef07986c1e0d7b1ed0527b447f058da8c7c1b6e97c4fd3a9ba2fdc7 /etc/containerd/certs.d/registry17.example.com/hosts.toml'
  '0600 a463ffb76826c062f6223788f32730284b6595f19ce332cdbbe88717968064a3 /etc/containerd/certs.d/registry18.example.com/hosts.toml'
  '0600 8d15bb550add1e2fa988963f869f0b24a8e758ae4cdf5bdb631525d811b276f8 /etc/containerd/certs.d/registry19.example.com/hosts.toml'
  '0600 219a8ab7be151edc5d74a72c038b70b7a3a709cf3581bb2e2de37ff180a44939 /etc/containerd/certs.d/registry20.example.com/hosts.toml'
  '0600 1934d8dd921d7840d0e6d5061b0ce2ee7882e5a6a39ac5fa3d0ffec25fa9704d /etc/containerd/certs.d/registry21.example.com/hosts.toml'
  '0600 ec3945e14dabf6f2a2c4461f1b5718dcf481b9152ca5f53ebad003ed958112e7 /etc/containerd/certs.d/registry22.example.com/hosts.toml'
  '0600 ae907364d2d364003cc82ddf9a98c6fba1b4714e0d6ffcef0427d02ae2e4cbdf /etc/containerd/certs.d/registry23.example.com/hosts.toml'
  '0600 deb70dbbfce684b1aec9adb4e4d68887f228a5d9db28d9186eda4a5fed743d9b /etc/containerd/certs.d/registry24.example.com/hosts.toml'
  '0600 e83cd8f36cb403b37125dbba82b32fc162a053d0ecbf480a3e1ade6010da8b1c /etc/containerd/certs.d/registry25.example.com/hosts.toml'
  '0600 fc3e5dd6a1112357fba8fd9a2002fb90a825235a5429f1d11a8692130a3eb639 /etc/containerd/certs.d/registry26.example.com/hosts.toml'
  '0600 3ea9cecae77638ae1fae5b1bdb44d934eea7823b20593031afad3ef5efd5b05f /etc/containerd/certs.d/registry27.example.com/hosts.toml'
  '0600 adb24989d361f551c82f2cd5a42438d04e66749d832c15cd18f4c80cd92d19dd /etc/containerd/certs.d/registry28.example.com/hosts.toml'
  '0600 a75bf509c8d34c6736b25000968d3152c890efd5d5f795852b0e1502ee404cd1 /etc/containerd/certs.d/registry29.example.com/hosts.toml'
  '0644 7e9b185961636e9f62e19fd07b19f38b3121936c295f51bd6068e13e40b83301 /etc/systemd/system/containerd.service'
  '0644 99a60363382a7dcb5a5acea071f1db1c7f5c1c1780491622494b3cabef66cb3d /etc/modules-load.d/containerd.conf'
  '0644 6893014469d904743af5e53d3640cd4b0f7fccc663c4ba41c83bf3f9485475fd /etc/sysctl.d/99-containerd.conf'
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
  log "pulling the sandbox image registry.cn-hangzhou.aliyuncs.com/google_containers/pause:3.6 through CRI"
  python3 "$3" --wait 120 PullImage '{"image": {"image": "registry.cn-hangzhou.aliyuncs.com/google_containers/pause:3.6"}}' >/dev/null || die "pulling the sandbox image failed"
fi
if [[ ${#changes[@]} -eq 0 ]]; then
  log "nothing to change: containerd $CONTAINERD_VERSION and its configuration are already in place"
else
  log "changed ${#changes[@]}: ${changes[*]}"
fi
