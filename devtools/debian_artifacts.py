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
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from devtools import release_files
from imagebuild.build import aptsources, lab_ledger
from imagebuild.build.aptsources import Source
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

#: Suite Debian's CNI plugins (`containernetworking-plugins`) are taken from.
CNI_SUITE = "bookworm"

#: Architectures (Debian names, as in the release file names: `linux-arm64`, `runc.arm64`) whose
#: binaries can be fetched; the host's is the default.
ARCHITECTURES: tuple[str, ...] = ("amd64", "arm64")

#: image.os -> the family whose suite's runc runs there. Debian's runc of trixie (1.1.15) and sid
#: (1.3.6) need GLIBC_2.38 (Debian 12 has 2.36, Debian 13 2.41): on Debian 12 only bookworm's runc
#: runs; on Debian 13 each family's own suite's runc (None) does.
RUNC_FAMILY_ON: Mapping[str, str | None] = MappingProxyType({"debian-12": "1.6", "debian-13": None})

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


def _arch(arch: str | None) -> str:
    """*arch*, checked, or the host's architecture when None."""
    if arch is None:
        return _deb_arch()
    if arch not in ARCHITECTURES:
        raise ImagebuildError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return arch


def _foreign(name: str, arch: str) -> str:
    """A cache name for *arch*: the host's keeps the plain name (the caches of before), another
    gets `-<arch>`."""
    return name if arch == _deb_arch() else f"{name}-{arch}"


def runc_family(family: str, os_name: str = "debian-12") -> str:
    """The family whose suite's runc runs beside *family*'s containerd on *os_name*."""
    if os_name not in RUNC_FAMILY_ON:
        raise ImagebuildError(f"unknown image.os {os_name!r}; known: {', '.join(RUNC_FAMILY_ON)}")
    return RUNC_FAMILY_ON[os_name] or family


def _apt_options(suite: str, arch: str | None = None) -> list[str]:
    """`-o` options of a private apt configuration for *suite* and *arch* (default: the host's),
    created on demand.

    Sources, lists, package cache, dpkg status and pinning are all private; the system's
    apt.conf.d (proxy, validity settings) still applies, so downloads behave like the system's.
    Another architecture gets its own state, with apt told it is the native one, so `apt-get
    download NAME` fetches that architecture's package.
    """
    arch = _arch(arch)
    root = cache_dir("apt", _foreign(suite, arch))
    parts = root / "sources.list.d"
    prefs = root / "preferences.d"
    for d in (parts, prefs, root / "lists" / "partial", root / "cache" / "archives" / "partial"):
        d.mkdir(parents=True, exist_ok=True)
    status = root / "status"
    if not status.exists():
        status.touch()
    src = system_debian_source()
    lines = ["Types: deb", f"URIs: {' '.join(src.uris)}", f"Suites: {suite}", "Components: main",
             f"Architectures: {arch}"]
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
    if arch != _deb_arch():
        opts |= {"APT::Architecture": arch, "APT::Architectures": arch}
    if os.geteuid() == 0:
        # private dirs belong to root; apt's `_apt` sandbox user could not write them
        opts["APT::Sandbox::User"] = "root"
    return [arg for k, v in opts.items() for arg in ("-o", f"{k}={v}")]


def _download_debs(suite: str, packages: tuple[str, ...], dest: Path, arch: str | None = None) -> dict[str, str]:
    """`apt-get update` + `apt-get download` of *packages* from *suite* (of *arch*) into *dest*.

    Returns {package: Debian version}. The suite's private apt state is locked meanwhile.
    """
    arch = _arch(arch)
    with _locked(cache_dir("apt") / f".{_foreign(suite, arch)}.lock"):
        opts = _apt_options(suite, arch)
        step(f"apt-get update ({suite}, {arch}, private sources)")
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
                    check=None, arch: str | None = None) -> Path:
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
            versions = _download_debs(suite, packages, Path(tmp), arch)
            if check:
                check(versions)
            for deb in sorted(Path(tmp).glob("*.deb")):
                _run(["dpkg", "-x", str(deb), str(target)], what=f"dpkg -x {deb.name}")
        stamp = {"suite": suite, "architecture": _arch(arch), "packages": versions}
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


def fetch(family: str, arch: str | None = None) -> Path:
    """Unpacked `containerd` + `runc` .debs of *family*'s suite, of *arch* (default: the host's);
    returns the tree's root.

    Why: real binaries for tests and offline builds (another architecture's only to be served to
    a guest of that architecture). Cached in `cache_dir("containerd", family)` (`family-<arch>`
    for a foreign one; binaries under usr/bin, runc under usr/sbin); a second call returns at once.
    """
    suite = _family_suite(family)
    arch = _arch(arch)

    def check(versions: dict[str, str]) -> None:
        got = upstream_version(versions["containerd"])
        if not got.startswith(family + "."):
            raise ImagebuildError(
                f"Debian {suite} now carries containerd {versions['containerd']}, "
                f"not the {family} family; update FAMILIES")

    target = cache_dir("containerd", _foreign(family, arch))
    lock = cache_dir("containerd") / f".{_foreign(family, arch)}.lock"
    return _fetch_unpacked(target, lock, suite, PACKAGES, check, arch)


def fetched_versions(family: str, arch: str | None = None) -> dict[str, str]:
    """Debian package versions of *family*'s fetched tree, e.g. {"containerd": "1.6.20~ds1-…"}."""
    return json.loads((fetch(family, arch) / _STAMP).read_text())["packages"]


def binary(family: str, name: str = "containerd", arch: str | None = None) -> Path:
    """Path of the unpacked binary *name* (containerd, ctr, containerd-shim-runc-v2, runc)."""
    root = fetch(family, arch)
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


def release_tarballs(family: str, out_dir: Path | str, compresslevel: int = 6, *,
                     arch: str | None = None, runc_from: str | None = None) -> dict[str, dict[str, str]]:
    """Official-release-shaped artifacts of *family* and *arch* (default: the host's) in *out_dir*,
    from the Debian binaries.

    Writes `containerd-<v>-linux-<arch>.tar.gz` (bin/containerd, bin/containerd-shim-runc-v2,
    bin/ctr; mode 0755, fixed mtime/owner/order, gzip without name/time, so the sha256 is
    reproducible), `runc.<arch>` (from family *runc_from*'s suite, default *family*'s; see
    `runc_family` for which runc runs where), and upstream-style `<file>.sha256sum` files next
    to them. Why: exercises the real download + sha256 path against a 127.0.0.1 server.
    Returns {"containerd": {"path", "sha256", "version"}, "runc": {...}}. gzip level 6 takes
    ~4 s per family here; the sha256 is only stable for a given level (and zlib).
    """
    arch = _arch(arch)
    runc_from = runc_from or family
    _family_suite(runc_from)
    result = release_files.containerd_and_runc(
        out_dir, arch, upstream_version(fetched_versions(family, arch)["containerd"]),
        {name: binary(family, name, arch) for name in release_files.TARBALL_BINARIES},
        upstream_version(fetched_versions(runc_from, arch)["runc"]), binary(runc_from, "runc", arch), compresslevel)
    for item in result.values():
        lab_ledger.record(item["sha256"], f"{Path(item['path']).name}: Debian's build {item['version']}, "
                          "release-shaped by imagebuild's developer tools (not an upstream release)")
    return result


def cni_plugins(arch: str | None = None) -> tuple[str, Path]:
    """(upstream version, directory of the plugin binaries) of Debian's CNI plugins of *arch*
    (default: the host's; cached).

    Why: the install path for `containerd.install.cni_plugins` runs against real plugins.
    """
    arch = _arch(arch)
    target = cache_dir("cni-plugins", _foreign(CNI_SUITE, arch))
    root = _fetch_unpacked(target, cache_dir("cni-plugins") / f".{_foreign(CNI_SUITE, arch)}.lock",
                           CNI_SUITE, ("containernetworking-plugins",), arch=arch)
    plugins = root / "usr" / "lib" / "cni"
    if not (plugins / "loopback").is_file():
        raise ImagebuildError("containernetworking-plugins did not contain usr/lib/cni/loopback")
    stamp = json.loads((root / _STAMP).read_text())
    return upstream_version(stamp["packages"]["containernetworking-plugins"]), plugins


def cni_tarball(out_dir: Path | str, compresslevel: int = 6, *, arch: str | None = None) -> dict[str, Any]:
    """An official-release-shaped `cni-plugins-linux-<arch>-v<v>.tgz` (plugins at `./<name>`,
    reproducible like :func:`release_tarballs`) and its upstream-style `.sha256` in *out_dir*.

    Returns {"path", "sha256", "version", "plugins": [names]}.
    """
    arch = _arch(arch)
    version, plugins = cni_plugins(arch)
    made = release_files.cni_plugins_tarball(out_dir, arch, version, plugins, compresslevel)
    lab_ledger.record(made["sha256"], f"{Path(made['path']).name}: Debian's containernetworking-plugins {version}, "
                      "release-shaped by imagebuild's developer tools (not an upstream release)")
    return made
