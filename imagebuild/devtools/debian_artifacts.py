"""Real containerd/runc binaries taken from Debian packages.

Why: the official containerd release tarballs cannot always be downloaded (air-gapped builds, CI
without internet), but Debian's mirror carries three containerd families. Their binaries let
tests parse rendered configs with the real parser, regenerate the packaged `config default`
files, and serve release-shaped tarballs from 127.0.0.1 for local builds.

Everything is fetched with `apt-get download` under a private apt configuration (own sources,
lists and cache below `cache_dir()`), so the system's apt sources and state are never touched.
"""
from __future__ import annotations

import functools
import gzip
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from imagebuild import aptsources
from imagebuild.aptsources import Source
from imagebuild.digest import sha256_file
from imagebuild.errors import ImagebuildError
from imagebuild.paths import cache_dir
from imagebuild.progress import step
from imagebuild.run import locked as _locked
from imagebuild.run import run as _run
from imagebuild.testimage import tar_info

#: containerd family -> Debian suite carrying it (runc is taken from the same suite).
#: On the mirror: bookworm 1.6.20 (runc 1.1.5), trixie 1.7.24 (runc 1.1.15), sid 2.1.9 (runc 1.3.6).
FAMILIES: Mapping[str, str] = MappingProxyType({"1.6": "bookworm", "1.7": "trixie", "2.1": "sid"})

#: Binary packages unpacked for every family.
PACKAGES: tuple[str, ...] = ("containerd", "runc")

#: The three binaries of an official `containerd-<v>-linux-<arch>.tar.gz` we reproduce.
TARBALL_BINARIES: tuple[str, ...] = ("containerd", "containerd-shim-runc-v2", "ctr")

#: Suite Debian's CNI plugins (`containernetworking-plugins`) are taken from.
CNI_SUITE = "bookworm"

_STAMP = ".fetched.json"
_DEBIAN_SUITE_NAMES = frozenset(
    {"stable", "testing", "unstable", "oldstable", "sid", "buster", "bullseye", "bookworm",
     "trixie", "forky", "duke"}
)


# --------------------------------------------------------------------------- the Debian archive


def pick_debian_source(entries: list[Source], codename: str = "") -> Source:
    """The first enabled `deb` entry serving a plain Debian suite's `main` (not -security etc.).

    Why: only the archive proper carries all three suites; security/updates mirrors and
    third-party repositories must not be copied.
    """
    known = _DEBIAN_SUITE_NAMES | set(FAMILIES.values()) | ({codename} if codename else set())
    for entry in entries:
        if entry.binary and "main" in entry.components and known & set(entry.suites) and entry.uris:
            return entry
    raise ImagebuildError(
        "no Debian archive entry (a `deb` line for a Debian suite with component `main`) in the "
        "system's apt sources; cannot fetch Debian packages"
    )


def system_debian_source() -> Source:
    """The system's Debian archive entry, read from apt's configured source files at run time."""
    return pick_debian_source(aptsources.read(), aptsources.os_release().get("VERSION_CODENAME", ""))


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
    lines = ["Types: deb", f"URIs: {' '.join(src.uris)}", f"Suites: {suite}", "Components: main",
             f"Architectures: {_deb_arch()}"]
    if "\n" in src.signed_by:   # an embedded key block: continuation lines, an empty one as " ."
        lines.append("Signed-By:")
        lines += [f" {line or '.'}" for line in src.signed_by.splitlines()]
    elif src.signed_by:
        lines.append(f"Signed-By: {src.signed_by}")
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
                tar.addfile(tar_info(name, src.stat().st_size), fh)
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
