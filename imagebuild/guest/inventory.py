#!/usr/bin/env python3
"""What a baked image holds, read inside its build VM: one JSON document. Python 3.11 standard library only.

The Packer build runs it as root after hygiene, just before the in-build check (the same boot: no boot of its
own), downloads its output beside the image, and the check's step removes both from the guest with the rest of
the staging; nothing of it stays in the image. `imagebuild bake` turns the document into the image's SBOM
(CycloneDX), and `imagebuild diff` compares two of them.

    python3 inventory.py --output FILE

It lists: the Debian packages (/var/lib/dpkg/status: name, version, architecture, source), containerd's,
runc's and the CNI plugins' binaries (path, sha256, size, what `--version` prints, the Go build
information embedded in the binary, the dpkg package that owns the file), every image in containerd's
store in every namespace (name, digest, media type) and the content store's blobs, `containerd config
dump`, the unit files and drop-ins imagebuild installed (systemd's, modules-load.d's, sysctl.d's text;
every other file it installed by sha256 only: a hosts.toml may carry credentials), `systemctl cat
containerd`, the unit files' enablement, the kernel (running and installed) and /etc/os-release.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

SCHEMA = "imagebuild-inventory/1"
STATE_DIR = Path("/var/lib/imagebuild")
DPKG_DIR = Path("/var/lib/dpkg")
#: Where containerd's and runc's binaries are looked for (tarball installs: /usr/local; packages: /usr).
BIN_DIRS = ("/usr/local/bin", "/usr/local/sbin", "/usr/bin", "/usr/sbin", "/bin", "/sbin")
BINARIES = ("containerd", "ctr", "containerd-shim", "containerd-shim-runc-v1", "containerd-shim-runc-v2",
            "containerd-stress", "runc")
#: Where CNI plugins are looked for, besides the directories containerd's config names.
CNI_DIRS = ("/opt/cni/bin", "/usr/lib/cni")
#: Files imagebuild installs whose text is recorded (no secret ever goes there); others by sha256 only.
TEXT_PREFIXES = ("/etc/systemd/", "/etc/modules-load.d/", "/etc/sysctl.d/")
#: `containerd config dump` lines whose value could be a credential (a free-form override can set one).
SECRET_KEY = re.compile(r"^(\s*(?:password|auth|identitytoken|registrytoken|token|secret)\s*=\s*).*$",
                        re.IGNORECASE | re.MULTILINE)
GO_BUILDINFO_MAGIC = b"\xff Go buildinf:"
VERSION = re.compile(r"\bv?\d+\.\d+(?:\.\d+)?[0-9A-Za-z.+~:-]*")


def run(*cmd: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env=env)
    except (FileNotFoundError, PermissionError) as exc:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]}: {exc.strerror}")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"{' '.join(cmd)}: timed out after {timeout}s")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ dpkg

def dpkg_stanzas(text: str) -> list[dict[str, str]]:
    """The stanzas of a dpkg status file (RFC 822-like: `Field: value`, continuation lines start with a
    space), as dicts of their single-line fields."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if fields.get("Package"):
            out.append(fields)
    return out


def dpkg_packages(text: str) -> list[dict[str, str]]:
    """The installed packages of a dpkg status file: name, version, architecture and source package
    (`Source: name (version)`, default the package itself); only `Status: install ok installed`."""
    packages = []
    for fields in dpkg_stanzas(text):
        if fields.get("Status", "").split()[-1:] != ["installed"]:
            continue
        source, _, source_version = fields.get("Source", fields["Package"]).partition(" ")
        packages.append({"name": fields["Package"], "version": fields.get("Version", ""),
                         "architecture": fields.get("Architecture", ""), "source": source,
                         "source_version": source_version.strip("()") or fields.get("Version", "")})
    return sorted(packages, key=lambda p: (p["name"], p["architecture"]))


def dpkg_owners(paths: list[str], info: Path = DPKG_DIR / "info") -> dict[str, str]:
    """For each of *paths* that a package's file list names, that package (name[:arch] as dpkg writes it)."""
    wanted, owners = set(paths), {}
    for listing in sorted(info.glob("*.list")) if info.is_dir() else []:
        try:
            names = set(listing.read_text(errors="replace").splitlines())
        except OSError:
            continue
        for path in wanted & names:
            owners[path] = listing.name[:-len(".list")]
    return owners


# ------------------------------------------------------------------------------------------ binaries

def _uvarint(data: bytes | mmap.mmap, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def go_buildinfo(path: Path) -> dict | None:
    """The build information the Go toolchain embeds in a binary (what `go version -m` prints): the Go
    version, the main package's path, the main module (path, version, sum) and the build settings.
    None for a binary without it (not Go, or older than Go 1.18's format)."""
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            start = data.find(GO_BUILDINFO_MAGIC)
            while start >= 0:
                parsed = _buildinfo_at(data, start)
                if parsed is not None:
                    return parsed
                start = data.find(GO_BUILDINFO_MAGIC, start + 1)
    except (OSError, ValueError):
        return None
    return None


def _buildinfo_at(data: mmap.mmap, start: int) -> dict | None:
    header = data[start:start + 32]
    if len(header) < 32 or not header[15] & 0x2:  # flag 2: the version and module strings follow inline
        return None
    try:
        length, pos = _uvarint(data, start + 32)
        version = data[pos:pos + length].decode("utf-8", "replace")
        length, pos = _uvarint(data, pos + length)
        modinfo = data[pos:pos + length].decode("utf-8", "replace")
    except (IndexError, ValueError):
        return None
    if not version.startswith("go"):
        return None
    if len(modinfo) >= 33 and modinfo[-17] == "\n":  # the 16-byte sentinels around the module information
        modinfo = modinfo[16:-16]
    info: dict = {"go": version, "path": None, "main": None, "settings": {}}
    for line in modinfo.splitlines():
        fields = line.split("\t")
        if fields[0] == "path" and len(fields) > 1:
            info["path"] = fields[1]
        elif fields[0] == "mod" and len(fields) > 2:
            info["main"] = {"path": fields[1], "version": fields[2], "sum": fields[3] if len(fields) > 3 else ""}
        elif fields[0] == "build" and len(fields) > 1 and "=" in fields[1]:
            key, _, value = fields[1].partition("=")
            if key in ("-ldflags", "-tags", "CGO_ENABLED", "GOARCH", "GOOS", "-buildmode", "-trimpath"):
                info["settings"][key] = value
    return info


def printed_version(text: str) -> str | None:
    """The version a program prints about itself: the first version-looking word after its name
    (`containerd github.com/containerd/containerd v1.6.20 ...`, `runc version 1.4.4`, `CNI bridge
    plugin v1.10.0`, the shim's `Version:  v1.6.20`)."""
    for line in text.splitlines():
        for word in line.split()[1:] if not line.strip().startswith("Version:") else line.split()[1:2]:
            if VERSION.fullmatch(word):
                return word
    return None


def _about(path: Path, kind: str) -> str:
    """What the binary prints about itself: `--version` (containerd, ctr, runc), `-v` (the shims), or,
    for a CNI plugin, its answer when called without CNI_COMMAND."""
    if kind == "cni":
        done = run(str(path), timeout=30, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    else:
        done = run(str(path), "-v" if "shim" in path.name else "--version", timeout=30)
    return (done.stdout + done.stderr).strip()[:2000]


def binary(path: Path, kind: str) -> dict:
    """One binary: path, sha256, size, what it prints about itself, its version, its Go build information."""
    about = _about(path, kind)
    info = go_buildinfo(path)
    version = printed_version(about)
    if version is None and info and info["main"] and info["main"]["version"] not in ("", "(devel)"):
        version = info["main"]["version"]
    return {"path": str(path), "name": path.name, "kind": kind, "sha256": sha256_of(path),
            "size": path.stat().st_size, "version": version, "about": about, "go": info}


def binaries(cni_dirs: list[str]) -> list[dict]:
    """containerd's and runc's binaries wherever they are installed, and every CNI plugin in *cni_dirs*."""
    found: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for directory in BIN_DIRS:
        for name in BINARIES:
            path = Path(directory) / name
            real = path.resolve()
            if path.is_file() and os.access(path, os.X_OK) and real not in seen:
                seen.add(real)
                found.append((path, "runc" if name == "runc" else "containerd"))
    for directory in dict.fromkeys(cni_dirs):
        base = Path(directory)
        for path in sorted(base.iterdir()) if base.is_dir() else []:
            real = path.resolve()
            if path.is_file() and os.access(path, os.X_OK) and real not in seen:
                seen.add(real)
                found.append((path, "cni"))
    records = [binary(path, kind) for path, kind in found]
    owners = dpkg_owners([r["path"] for r in records])
    for record in records:
        record["package"] = owners.get(record["path"])
    return sorted(records, key=lambda r: r["path"])


# ------------------------------------------------------------------------------------------ containerd

def config_dump() -> tuple[str, dict]:
    """`containerd config dump` (credential-like values masked) and its parsed form."""
    done = run("containerd", "config", "dump")
    if done.returncode != 0:
        raise SystemExit(f"inventory: containerd config dump failed (exit {done.returncode}): {done.stderr[-500:]}")
    text = SECRET_KEY.sub(r'\1"<redacted>"', done.stdout)
    return text, tomllib.loads(done.stdout)


def cni_dirs(effective: dict) -> list[str]:
    """CRI's CNI plugin directories of a config dump (1.x: io.containerd.grpc.v1.cri, 2.x:
    io.containerd.cri.v1.runtime), then the usual ones."""
    plugins = effective.get("plugins") or {}
    dirs: list[str] = []
    for name in ("io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri"):
        cni = (plugins.get(name) or {}).get("cni")
        if isinstance(cni, dict):
            dirs += [cni["bin_dir"]] if cni.get("bin_dir") else []
            dirs += [d for d in cni.get("bin_dirs") or [] if isinstance(d, str)]
    return list(dict.fromkeys(dirs + list(CNI_DIRS)))


def parse_images(namespace: str, listing: str) -> list[dict]:
    """The images of one namespace in `ctr -n NS images ls` output: its first three columns, REF TYPE DIGEST,
    hold no spaces, nor does the last, LABELS (`-` for none); whether CRI pinned an image is its label
    io.cri-containerd.pinned=pinned (kubelet's image GC leaves it alone)."""
    out = []
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3:
            labels = dict(item.partition("=")[::2] for item in fields[-1].split(",")) \
                if len(fields) > 5 and "=" in fields[-1] else {}
            out.append({"namespace": namespace, "name": fields[0], "media_type": fields[1], "digest": fields[2],
                        "labels": labels, "pinned": labels.get("io.cri-containerd.pinned") == "pinned"})
    return out


def images() -> list[dict]:
    """Every image in containerd's store, in every namespace."""
    listed = run("ctr", "namespaces", "ls", "-q")
    if listed.returncode != 0:
        raise SystemExit(f"inventory: ctr namespaces ls failed: {listed.stderr[-500:]}")
    out = []
    for namespace in sorted(listed.stdout.split()):
        done = run("ctr", "-n", namespace, "images", "ls")
        if done.returncode != 0:
            raise SystemExit(f"inventory: ctr -n {namespace} images ls failed: {done.stderr[-500:]}")
        out += parse_images(namespace, done.stdout)
    return sorted(out, key=lambda i: (i["namespace"], i["name"]))


def content_blobs(root: str) -> list[dict]:
    """The blobs of containerd's content store under *root*: digest and size."""
    base = Path(root) / "io.containerd.content.v1.content" / "blobs" / "sha256"
    return [{"digest": f"sha256:{p.name}", "size": p.stat().st_size}
            for p in sorted(base.iterdir()) if p.is_file()] if base.is_dir() else []


# ------------------------------------------------------------------------------------------ system

def installed_files(state_dir: Path = STATE_DIR) -> list[dict]:
    """The files imagebuild's install placed (its record, installed/files): path, mode, sha256, and the
    text of the unit files, drop-ins, modules-load.d and sysctl.d files."""
    record = state_dir / "installed" / "files"
    out: list[dict] = []
    for line in record.read_text().splitlines() if record.is_file() else []:
        path = Path(line.strip())
        if not line.strip():
            continue
        if not path.is_file():
            out.append({"path": str(path), "missing": True})
            continue
        entry = {"path": str(path), "mode": f"{path.stat().st_mode & 0o7777:04o}", "sha256": sha256_of(path)}
        if str(path).startswith(TEXT_PREFIXES):
            entry["text"] = path.read_text(errors="replace")
        out.append(entry)
    return sorted(out, key=lambda f: f["path"])


def unit_files() -> dict[str, str]:
    """Every unit file systemd knows and its state (enabled, disabled, masked, static...)."""
    done = run("systemctl", "list-unit-files", "--no-legend", "--no-pager", "--plain")
    states = {}
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            states[fields[0]] = fields[1]
    return dict(sorted(states.items()))


def os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        key, sep, value = line.partition("=")
        if sep and key in ("ID", "VERSION_ID", "VERSION_CODENAME", "PRETTY_NAME"):
            out[key.lower()] = value.strip().strip('"')
    return out


def kernel(packages: list[dict]) -> dict:
    """The running kernel (the image's own: the build VM booted it) and the installed ones."""
    uname = os.uname()
    return {"release": uname.release, "version": uname.version, "machine": uname.machine,
            "installed": sorted(p.name[len("vmlinuz-"):] for p in Path("/boot").glob("vmlinuz-*")),
            "packages": [f"{p['name']}={p['version']}" for p in packages if p["name"].startswith("linux-image-")]}


def collect() -> dict:
    started = time.monotonic()
    timings: dict[str, float] = {}

    def timed(name: str, value):
        timings[name] = round(time.monotonic() - started - sum(timings.values()), 2)
        return value

    status = (DPKG_DIR / "status").read_bytes()
    packages = timed("dpkg", dpkg_packages(status.decode("utf-8", "replace")))
    dump, effective = timed("config_dump", config_dump())
    root = effective.get("root") or "/var/lib/containerd"
    document = {
        "schema": SCHEMA,
        "os": os_release(),
        "kernel": kernel(packages),
        "dpkg": {"status_sha256": hashlib.sha256(status).hexdigest(), "packages": packages},
        "binaries": timed("binaries", binaries(cni_dirs(effective))),
        "containerd": {"config_dump": dump, "root": root, "images": timed("images", images()),
                       "content": content_blobs(root),
                       "unit": run("systemctl", "cat", "--no-pager", "containerd.service").stdout},
        "imagebuild_files": installed_files(),
        "unit_files": timed("units", unit_files()),
    }
    return document | {"timings_s": timings}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="where the JSON document goes")
    args = parser.parse_args(argv)
    document = collect()
    out = Path(args.output)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    tmp.chmod(0o644)   # the build user downloads it
    tmp.replace(out)
    print(f"inventory: {len(document['dpkg']['packages'])} packages, {len(document['binaries'])} binaries, "
          f"{len(document['containerd']['images'])} images -> {out} (seconds: {document['timings_s']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
