"""Real containerd/runc binaries taken from Debian packages.

Why: the official containerd release tarballs cannot always be downloaded (air-gapped builds, CI
without internet), but Debian's mirror carries three containerd families. Their binaries let
tests parse rendered configs with the real parser, regenerate the packaged `config default`
files, and serve release-shaped tarballs from 127.0.0.1 for local builds.

Everything is fetched with `apt-get download` under a private apt configuration (own sources,
lists and cache below `cache_dir()`), so the system's apt sources and state are never touched.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from imagebuild.digest import sha256_file
from imagebuild.errors import ImagebuildError
from imagebuild.paths import cache_dir
from imagebuild.progress import step
from imagebuild.run import locked as _locked
from imagebuild.run import run as _run

#: containerd family -> Debian suite carrying it (runc is taken from the same suite).
#: On the mirror: bookworm 1.6.20 (runc 1.1.5), trixie 1.7.24 (runc 1.1.15), sid 2.1.9 (runc 1.3.6).
FAMILIES: Mapping[str, str] = MappingProxyType({"1.6": "bookworm", "1.7": "trixie", "2.1": "sid"})

#: Binary packages unpacked for every family.
PACKAGES: tuple[str, ...] = ("containerd", "runc")

#: The three binaries of an official `containerd-<v>-linux-<arch>.tar.gz` we reproduce.
TARBALL_BINARIES: tuple[str, ...] = ("containerd", "containerd-shim-runc-v2", "ctr")

#: Suite Debian's CNI plugins (`containernetworking-plugins`) are taken from.
CNI_SUITE = "bookworm"

#: Name under which the registry-free test image is imported.
TEST_IMAGE_REF = "docker.io/library/imagebuild-busybox:latest"

#: Suite the static busybox of the test image comes from.
BUSYBOX_SUITE = "bookworm"

#: Applets linked next to /bin/busybox in the test image (enough for shell one-liners).
BUSYBOX_APPLETS: tuple[str, ...] = (
    "cat", "echo", "env", "false", "grep", "head", "hostname", "id", "ls", "mkdir", "printf",
    "ps", "rm", "sh", "sleep", "tail", "test", "touch", "true", "uname", "wc",
)

_STAMP = ".fetched.json"
_FIXED_MTIME = 0  # every archive member gets this mtime, so sha256s are reproducible
_DEBIAN_SUITE_NAMES = frozenset(
    {"stable", "testing", "unstable", "oldstable", "sid", "buster", "bullseye", "bookworm",
     "trixie", "forky", "duke"}
)


# --------------------------------------------------------------------------- apt sources


def parse_sources(text: str, deb822: bool) -> list[dict[str, str]]:
    """Parse one apt sources file into deb822-style entries (keys: Types, URIs, Suites, ...).

    Why: the private configuration copies the system's Debian archive URI and keyring instead
    of naming a mirror itself. One-line entries are converted to the same shape.
    """
    entries: list[dict[str, str]] = []
    if deb822:
        current: dict[str, str] = {}
        key = None
        for raw in text.splitlines() + [""]:
            if raw.startswith("#"):
                continue
            if not raw.strip():
                if current:
                    entries.append(current)
                current, key = {}, None
            elif raw[0] in " \t" and key:
                current[key] += "\n" + raw
            elif ":" in raw:
                key, value = raw.split(":", 1)
                key = key.strip()
                current[key] = value.strip()
        return entries
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        options: dict[str, str] = {}
        m = re.match(r"^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if not m:
            continue
        for opt in (m.group(2) or "").split():
            if "=" in opt:
                name, value = opt.split("=", 1)
                options[name.lower()] = value
        entry = {"Types": m.group(1), "URIs": m.group(3), "Suites": m.group(4),
                 "Components": m.group(5).strip()}
        if "signed-by" in options:
            entry["Signed-By"] = options["signed-by"]
        entries.append(entry)
    return entries


def _system_codename() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return ""


def pick_debian_source(entries: list[dict[str, str]], codename: str = "") -> dict[str, str]:
    """The first enabled `deb` entry serving a plain Debian suite's `main` (not -security etc.).

    Why: only the archive proper carries all three suites; security/updates mirrors and
    third-party repositories must not be copied.
    """
    known = _DEBIAN_SUITE_NAMES | set(FAMILIES.values()) | ({codename} if codename else set())
    for entry in entries:
        if entry.get("Enabled", "yes").strip().lower() in ("no", "false", "0"):
            continue
        if "deb" not in entry.get("Types", "").split():
            continue
        if "main" not in entry.get("Components", "").split():
            continue
        if known & set(entry.get("Suites", "").split()) and entry.get("URIs", "").split():
            return entry
    raise ImagebuildError(
        "no Debian archive entry (a `deb` line for a Debian suite with component `main`) in the "
        "system's apt sources; cannot fetch Debian packages"
    )


def system_debian_source() -> dict[str, str]:
    """The system's Debian archive entry, read from apt's configured source files at runtime."""
    out = _run(["apt-config", "shell", "SL", "Dir::Etc::SourceList/f",
                "SP", "Dir::Etc::SourceParts/d"], what="apt-config").stdout
    conf = dict(re.findall(r"^(\w+)='(.*)'$", out, flags=re.M))
    files: list[Path] = []
    if conf.get("SL"):
        files.append(Path(conf["SL"]))
    if conf.get("SP") and Path(conf["SP"]).is_dir():
        files += sorted(p for p in Path(conf["SP"]).iterdir() if p.suffix in (".list", ".sources"))
    entries: list[dict[str, str]] = []
    for path in files:
        with contextlib.suppress(OSError):
            entries += parse_sources(path.read_text(), deb822=path.suffix == ".sources")
    return pick_debian_source(entries, _system_codename())


# --------------------------------------------------------------------------- helpers


@functools.cache
def _deb_arch() -> str:
    return _run(["dpkg", "--print-architecture"], what="dpkg --print-architecture").stdout.strip()


def _apt_options(suite: str) -> list[str]:
    """`-o` options of a private apt configuration for *suite*, created on demand.

    Sources, lists, package cache, dpkg status and pinning are all private; the system's
    apt.conf.d (proxy, validity settings) still applies, so downloads behave like the system's.
    """
    root = cache_dir("apt", suite)
    parts = root / "sources.list.d"
    prefs = root / "preferences.d"
    for d in (parts, prefs, root / "lists" / "partial", root / "cache" / "archives" / "partial"):
        d.mkdir(parents=True, exist_ok=True)
    status = root / "status"
    if not status.exists():
        status.touch()
    src = system_debian_source()
    lines = ["Types: deb", f"URIs: {src['URIs']}", f"Suites: {suite}", "Components: main",
             f"Architectures: {_deb_arch()}"]
    if src.get("Signed-By"):
        lines.append(f"Signed-By: {src['Signed-By']}")
    (parts / "imagebuild.sources").write_text("\n".join(lines) + "\n")
    opts = {
        "Dir::Etc::SourceList": str(root / "sources.list"),  # absent on purpose
        "Dir::Etc::SourceParts": str(parts),
        "Dir::Etc::Preferences": str(root / "preferences"),
        "Dir::Etc::PreferencesParts": str(prefs),
        "Dir::State::Lists": str(root / "lists"),
        "Dir::State::status": str(status),
        "Dir::Cache": str(root / "cache"),
        "Acquire::Languages": "none",
        "APT::Get::List-Cleanup": "true",
    }
    if os.geteuid() == 0:
        # private dirs belong to root; apt's `_apt` sandbox user could not write them
        opts["APT::Sandbox::User"] = "root"
    return [arg for k, v in opts.items() for arg in ("-o", f"{k}={v}")]


def _download_debs(suite: str, packages: tuple[str, ...], dest: Path) -> dict[str, str]:
    """`apt-get update` + `apt-get download` of *packages* from *suite* into *dest*.

    Returns {package: Debian version}. The suite's private apt state is locked meanwhile.
    """
    with _locked(cache_dir("apt") / f".{suite}.lock"):
        opts = _apt_options(suite)
        step(f"apt-get update ({suite}, private sources)")
        _run(["apt-get", "-q", *opts, "update"], what=f"apt-get update for {suite}")
        versions = {}
        for pkg in packages:
            out = _run(["apt-cache", *opts, "show", "--no-all-versions", pkg],
                       what=f"apt-cache show {pkg} ({suite})").stdout
            m = re.search(r"^Version: (\S+)", out, flags=re.M)
            if not m:
                raise ImagebuildError(f"package {pkg} has no version in {suite}")
            versions[pkg] = m.group(1)
        step(f"apt-get download {' '.join(packages)} ({suite})")
        _run(["apt-get", "-q", *opts, "download", *packages], what=f"apt-get download ({suite})",
             cwd=dest)
    return versions


def _fetch_unpacked(target: Path, lock: Path, suite: str, packages: tuple[str, ...],
                    check=None) -> Path:
    """Download *packages* from *suite* and `dpkg -x` them into *target*, once.

    A stamp file is written last, so an interrupted fetch is redone; the lock makes concurrent
    callers wait for the first one and then reuse its result.
    """
    if (target / _STAMP).exists():
        return target
    with _locked(lock):
        if (target / _STAMP).exists():
            return target
        for child in target.iterdir():  # leftovers of an interrupted fetch
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
            versions = _download_debs(suite, packages, Path(tmp))
            if check:
                check(versions)
            for deb in sorted(Path(tmp).glob("*.deb")):
                _run(["dpkg", "-x", str(deb), str(target)], what=f"dpkg -x {deb.name}")
        stamp = {"suite": suite, "packages": versions}
        (target / (_STAMP + ".tmp")).write_text(json.dumps(stamp, indent=2) + "\n")
        os.replace(target / (_STAMP + ".tmp"), target / _STAMP)
    return target


def _family_suite(family: str) -> str:
    try:
        return FAMILIES[family]
    except KeyError:
        raise ImagebuildError(
            f"unknown containerd family {family!r}; known: {', '.join(FAMILIES)}") from None


def upstream_version(debian_version: str) -> str:
    """`1.6.20~ds1-1+deb12u3` -> `1.6.20`: the upstream release a Debian version packages."""
    version = debian_version.split(":", 1)[-1]
    m = re.match(r"\d+(?:\.\d+)+(?:-(?:alpha|beta|rc)\.?\d+)?", version)
    if not m:
        raise ImagebuildError(f"cannot read an upstream version from {debian_version!r}")
    return m.group(0)


# --------------------------------------------------------------------------- public API


def fetch(family: str) -> Path:
    """Unpacked `containerd` + `runc` .debs of *family*'s suite; returns the tree's root.

    Why: real binaries for tests and offline builds. Cached in `cache_dir("containerd", family)`
    (binaries under usr/bin, runc under usr/sbin); a second call returns at once.
    """
    suite = _family_suite(family)

    def check(versions: dict[str, str]) -> None:
        got = upstream_version(versions["containerd"])
        if not got.startswith(family + "."):
            raise ImagebuildError(
                f"Debian {suite} now carries containerd {versions['containerd']}, "
                f"not the {family} family; update FAMILIES")

    target = cache_dir("containerd", family)
    lock = cache_dir("containerd") / f".{family}.lock"
    return _fetch_unpacked(target, lock, suite, PACKAGES, check)


def fetched_versions(family: str) -> dict[str, str]:
    """Debian package versions of *family*'s fetched tree, e.g. {"containerd": "1.6.20~ds1-…"}."""
    return json.loads((fetch(family) / _STAMP).read_text())["packages"]


def binary(family: str, name: str = "containerd") -> Path:
    """Path of the unpacked binary *name* (containerd, ctr, containerd-shim-runc-v2, runc)."""
    root = fetch(family)
    for sub in ("usr/bin", "usr/sbin", "usr/lib/containerd"):
        path = root / sub / name
        if path.is_file():
            return path
    raise ImagebuildError(f"no binary {name!r} in the Debian packages of containerd {family}")


def version(family: str) -> str:
    """The version field `containerd --version` prints (third word), e.g. `1.6.20~ds1`.

    Why: the Debian build reports Debian's repack version, not the bare upstream one (use
    `upstream_version()` for `1.6.20`). Exact lines measured (`$` = end of line):
      1.6  containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3$
           ctr github.com/containerd/containerd 1.6.20~ds1$
      1.7  containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1$
           ctr github.com/containerd/containerd 1.7.24~ds1$
      2.1  containerd github.com/containerd/containerd/v2 2.1.9+unknown $   (empty revision)
           ctr github.com/containerd/containerd/v2 2.1.9+unknown$
    So 1.x put the full Debian package version where upstream prints the git revision, and
    `ctr version` prints `Revision: 1.6.20~ds1-1+deb12u3` (1.7 likewise); 2.1 prints
    `2.1.9+unknown` and `Revision: ` (empty); `ctr version` then fails dialling the daemon.
    Upstream release binaries print `v1.6.20` plus a git commit instead.
    """
    out = _run([str(binary(family)), "--version"], what="containerd --version").stdout
    words = out.split()
    if len(words) < 3:
        raise ImagebuildError(f"unexpected `containerd --version` output: {out!r}")
    return words[2]


def _tar_info(name: str, size: int = 0, mode: int = 0o755, kind: bytes = tarfile.REGTYPE,
              linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type, info.linkname = size, mode, kind, linkname
    info.mtime, info.uid, info.gid, info.uname, info.gname = _FIXED_MTIME, 0, 0, "root", "root"
    return info


def _write_tarball(path: Path, members: Mapping[str, Path], compresslevel: int) -> None:
    """A reproducible .tar.gz at *path* (atomically): *members* is {name in the archive: file},
    each 0755 with fixed mtime and owner, in the given order; gzip without name or time."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                          compresslevel=compresslevel) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, src in members.items():
            with open(src, "rb") as fh:
                tar.addfile(_tar_info(name, src.stat().st_size), fh)
    os.replace(tmp, path)


def release_tarballs(family: str, out_dir: Path | str,
                     compresslevel: int = 6) -> dict[str, dict[str, str]]:
    """Official-release-shaped artifacts of *family* in *out_dir*, from the Debian binaries.

    Writes `containerd-<v>-linux-<arch>.tar.gz` (bin/containerd, bin/containerd-shim-runc-v2,
    bin/ctr; mode 0755, fixed mtime/owner/order, gzip without name/time, so the sha256 is
    reproducible), `runc.<arch>`, and upstream-style `<file>.sha256sum` files next to them.
    Why: exercises the real download + sha256 path against a 127.0.0.1 server.
    Returns {"containerd": {"path", "sha256", "version"}, "runc": {...}}. gzip level 6 takes
    ~4 s per family here; the sha256 is only stable for a given level (and zlib).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    versions = fetched_versions(family)
    arch = _deb_arch()
    c_version = upstream_version(versions["containerd"])
    tarball = out / f"containerd-{c_version}-linux-{arch}.tar.gz"
    _write_tarball(tarball, {f"bin/{name}": binary(family, name) for name in TARBALL_BINARIES}, compresslevel)
    runc = out / f"runc.{arch}"
    shutil.copyfile(binary(family, "runc"), runc.with_name(runc.name + ".tmp"))
    os.chmod(runc.with_name(runc.name + ".tmp"), 0o755)
    os.replace(runc.with_name(runc.name + ".tmp"), runc)
    result = {
        "containerd": {"path": str(tarball), "sha256": sha256_file(tarball), "version": c_version},
        "runc": {"path": str(runc), "sha256": sha256_file(runc),
                 "version": upstream_version(versions["runc"])},
    }
    for item in result.values():
        path = Path(item["path"])
        path.with_name(path.name + ".sha256sum").write_text(f"{item['sha256']}  {path.name}\n")
    return result


def cni_plugins() -> tuple[str, Path]:
    """(upstream version, directory of the plugin binaries) of Debian's CNI plugins (cached).

    Why: the install path for `containerd.install.cni_plugins` runs against real plugins.
    """
    target = cache_dir("cni-plugins", CNI_SUITE)
    root = _fetch_unpacked(target, cache_dir("cni-plugins") / f".{CNI_SUITE}.lock",
                           CNI_SUITE, ("containernetworking-plugins",))
    plugins = root / "usr" / "lib" / "cni"
    if not (plugins / "loopback").is_file():
        raise ImagebuildError("containernetworking-plugins did not contain usr/lib/cni/loopback")
    stamp = json.loads((root / _STAMP).read_text())
    return upstream_version(stamp["packages"]["containernetworking-plugins"]), plugins


def cni_tarball(out_dir: Path | str, compresslevel: int = 6) -> dict[str, Any]:
    """An official-release-shaped `cni-plugins-linux-<arch>-v<v>.tgz` (plugins at `./<name>`,
    reproducible like :func:`release_tarballs`) and its upstream-style `.sha256` in *out_dir*.

    Returns {"path", "sha256", "version", "plugins": [names]}.
    """
    version, plugins = cni_plugins()
    names = sorted(p.name for p in plugins.iterdir() if p.is_file())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tarball = out / f"cni-plugins-linux-{_deb_arch()}-v{version}.tgz"
    _write_tarball(tarball, {f"./{name}": plugins / name for name in names}, compresslevel)
    sha256 = sha256_file(tarball)
    tarball.with_name(tarball.name + ".sha256").write_text(f"{sha256}  {tarball.name}\n")
    return {"path": str(tarball), "sha256": sha256, "version": version, "plugins": names}


def busybox_static() -> Path:
    """Path of a static busybox unpacked from Debian's `busybox-static` (cached).

    Fetched rather than taken from the host, so the test image is the same on every machine.
    """
    target = cache_dir("busybox-static", BUSYBOX_SUITE)
    root = _fetch_unpacked(target, cache_dir("busybox-static") / f".{BUSYBOX_SUITE}.lock",
                           BUSYBOX_SUITE, ("busybox-static",))
    path = root / "bin" / "busybox"
    if not path.is_file():
        raise ImagebuildError("busybox-static did not contain bin/busybox")
    return path


def _blob(blobs: dict[str, bytes], data: bytes, media_type: str) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def test_oci_image(out_path: Path | str, cmd: tuple[str, ...] = ("/bin/sh",)) -> dict[str, str]:
    """Registry-free OCI image-layout tarball with a static busybox; for `ctr image import`.

    Why: lets a test run a real container with no registry. One uncompressed layer (/bin/busybox
    plus applet symlinks, /etc/passwd, /etc/group, /tmp), Cmd ["/bin/sh"], linux/amd64; all
    members have fixed metadata, so every sha256 is reproducible. *cmd* replaces the Cmd (a pod
    sandbox image needs one that stays up, e.g. ("/bin/sleep", "3600")).
    Returns {"path", "ref", "digest"} (digest = the manifest's).
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    busybox = busybox_static().read_bytes()
    arch = _deb_arch()

    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        files = {
            "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
            "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        }
        tar.addfile(_tar_info("bin/", mode=0o755, kind=tarfile.DIRTYPE))
        tar.addfile(_tar_info("bin/busybox", len(busybox)), io.BytesIO(busybox))
        for applet in BUSYBOX_APPLETS:
            tar.addfile(_tar_info(f"bin/{applet}", mode=0o777, kind=tarfile.SYMTYPE,
                                  linkname="busybox"))
        tar.addfile(_tar_info("etc/", mode=0o755, kind=tarfile.DIRTYPE))
        for name, data in files.items():
            tar.addfile(_tar_info(name, len(data), mode=0o644), io.BytesIO(data))
        tar.addfile(_tar_info("root/", mode=0o700, kind=tarfile.DIRTYPE))
        tar.addfile(_tar_info("tmp/", mode=0o1777, kind=tarfile.DIRTYPE))
    layer = layer_buf.getvalue()

    blobs: dict[str, bytes] = {}
    layer_desc = _blob(blobs, layer, "application/vnd.oci.image.layer.v1.tar")
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": list(cmd),
                   "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    config_desc = _blob(blobs, _json_bytes(config), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = _blob(blobs, _json_bytes(manifest),
                          "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["annotations"] = {"io.containerd.image.name": TEST_IMAGE_REF,
                                    "org.opencontainers.image.ref.name": TEST_IMAGE_REF}
    manifest_desc["platform"] = {"architecture": arch, "os": "linux"}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}

    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        members = [("oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"})),
                   ("index.json", _json_bytes(index))]
        for name, data in members:
            tar.addfile(_tar_info(name, len(data), mode=0o644), io.BytesIO(data))
        tar.addfile(_tar_info("blobs/", kind=tarfile.DIRTYPE))
        tar.addfile(_tar_info("blobs/sha256/", kind=tarfile.DIRTYPE))
        for digest in sorted(blobs):
            data = blobs[digest]
            tar.addfile(_tar_info(f"blobs/sha256/{digest.split(':', 1)[1]}", len(data), mode=0o644),
                        io.BytesIO(data))
    os.replace(tmp, out)
    return {"path": str(out), "ref": TEST_IMAGE_REF, "digest": manifest_desc["digest"]}


test_oci_image.__dict__["__test__"] = False  # a builder, not a pytest test (its name starts with test_)


def defaults_dir() -> Path:
    """Package directory holding the `config default` outputs (imagebuild/defaults)."""
    return Path(__file__).resolve().parent / "defaults"


_DEFAULTS_README = """\
# containerd default configurations

`config-<family>.toml` is, byte for byte, what `containerd config default` prints for that
containerd family, run with the real binary from Debian's `containerd` package:

| file | Debian suite | containerd |
|---|---|---|
{rows}

They are generated, not edited: `make regen-defaults`
(`python -m imagebuild.debian_artifacts defaults`) fetches the packages with a private apt
configuration (see `imagebuild/debian_artifacts.py`) and rewrites every file here.
"""


def regenerate_defaults() -> list[Path]:
    """Write imagebuild/defaults/config-<family>.toml (real `config default` output) + README.

    Why: rendering and tests compare against what each containerd family really defaults to.
    """
    target = defaults_dir()
    target.mkdir(parents=True, exist_ok=True)
    written, rows = [], []
    for family, suite in FAMILIES.items():
        proc = subprocess.run([str(binary(family)), "config", "default"], capture_output=True,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        if proc.returncode != 0:
            raise ImagebuildError(f"containerd {family} config default failed: "
                                  f"{proc.stderr.decode(errors='replace').strip()}")
        path = target / f"config-{family}.toml"
        path.write_bytes(proc.stdout)
        written.append(path)
        rows.append(f"| `config-{family}.toml` | {suite} | "
                    f"`{fetched_versions(family)['containerd']}` (`containerd --version`: "
                    f"{version(family)}) |")
    readme = target / "README.md"
    readme.write_text(_DEFAULTS_README.format(rows="\n".join(rows)))
    written.append(readme)
    return written


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:   # the stdlib's signature
        pass


@contextlib.contextmanager
def serve(directory: Path | str) -> Iterator[str]:
    """Serve *directory* over HTTP on 127.0.0.1 (ephemeral port); yields the base URL.

    Why: release tarballs and images are "downloaded" from a local server in offline builds.
    The server (threaded, no request logging) is shut down when the block exits.
    """
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="imagebuild-serve", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """`python -m imagebuild.debian_artifacts fetch|defaults|tarballs OUT|oci-image OUT`."""
    parser = argparse.ArgumentParser(prog="python -m imagebuild.debian_artifacts",
                                     description="containerd binaries from Debian packages")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="download and unpack the families (default: all)")
    p.add_argument("families", nargs="*", metavar="FAMILY")
    sub.add_parser("defaults", help="rewrite imagebuild/defaults/ from `config default`")
    p = sub.add_parser("tarballs", help="release-shaped artifacts into OUT/<family>/")
    p.add_argument("out", type=Path)
    p.add_argument("--family", action="append", choices=list(FAMILIES))
    p = sub.add_parser("oci-image", help="write the busybox OCI image-layout tarball to OUT")
    p.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            for family in args.families or FAMILIES:
                print(f"{family}\t{fetch(family)}\t{version(family)}")
        elif args.command == "defaults":
            for path in regenerate_defaults():
                print(path)
        elif args.command == "tarballs":
            result = {f: release_tarballs(f, args.out / f) for f in args.family or FAMILIES}
            print(json.dumps(result, indent=2))
        elif args.command == "oci-image":
            print(json.dumps(test_oci_image(args.out), indent=2))
    except ImagebuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
