"""Real containerd binaries from Debian packages (devtools): fetch, tarballs, defaults, local server.

The first run downloads (~10 s per family, into the imagebuild cache); later runs reuse it.
"""
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from devtools import debian_artifacts as da
from devtools import defaults
from devtools.serve import serve
from imagebuild.build import aptsources
from imagebuild.errors import ImagebuildError

EXPECTED = {"1.6": "1.6.20", "1.7": "1.7.24", "2.1": "2.1.9"}
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------- sources parsing (offline)

DEB822 = """\
Types: deb
# a comment
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main
"""


def test_parse_deb822_and_pick_archive():
    entries = aptsources.parse(DEB822, deb822=True)
    assert len(entries) == 2
    picked = da.pick_debian_source(entries, "bookworm")
    assert picked.uris == ("http://mirror.invalid/debian",)
    assert picked.signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"


def test_parse_one_line_skips_security_and_third_party():
    text = """\
# deb http://commented.invalid/debian bookworm main
deb https://thirdparty.invalid/apt cloud-sdk-bookworm main
deb http://mirror.invalid/debian-security bookworm-security main
deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian bookworm main contrib
"""
    picked = da.pick_debian_source(aptsources.parse(text, deb822=False), "bookworm")
    assert picked.uris == ("http://mirror.invalid/debian",)
    assert picked.signed_by == "/k.gpg"


def test_disabled_or_foreign_sources_are_an_error():
    text = "Types: deb\nURIs: https://x.invalid/node\nSuites: nodistro\nComponents: main\n\n" \
           "Types: deb\nURIs: http://m.invalid/debian\nSuites: bookworm\nComponents: main\n" \
           "Enabled: no\n"
    with pytest.raises(ImagebuildError, match="no Debian archive"):
        da.pick_debian_source(aptsources.parse(text, deb822=True), "bookworm")


def test_upstream_version():
    assert da.upstream_version("1.6.20~ds1-1+deb12u3") == "1.6.20"
    assert da.upstream_version("2.1.9+ds1-5") == "2.1.9"
    assert da.upstream_version("1:1.35.0-4+deb12u1+b1") == "1.35.0"
    assert da.upstream_version("2.0.0-rc.1+ds-1") == "2.0.0-rc.1"


def test_unknown_family():
    with pytest.raises(ImagebuildError, match="unknown containerd family"):
        da.fetch("0.9")


# ----------------------------------------------------------------- caching and locking (offline)


@pytest.fixture
def fake_debs(tmp_path, monkeypatch):
    """Replace the apt download with a locally built tiny .deb; count the downloads."""
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "usr/bin").mkdir(parents=True)
    (pkg / "usr/bin/hello").write_text("#!/bin/sh\necho hi\n")
    (pkg / "DEBIAN/control").write_text(
        "Package: hello\nVersion: 1.0-1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n")
    deb = tmp_path / "hello_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(pkg), str(deb)], check=True,
                   capture_output=True)
    calls = []

    def download(suite, packages, dest, arch=None):
        calls.append(suite)
        if suite == "broken":
            raise ImagebuildError("network down")
        (dest / deb.name).write_bytes(deb.read_bytes())
        return {"hello": "1.0-1"}

    monkeypatch.setattr(da, "_download_debs", download)
    return calls


def test_fetch_unpacks_once_and_redoes_interrupted(tmp_path, fake_debs):
    target = tmp_path / "cache" / "x"
    target.mkdir(parents=True)
    (target / "leftover").write_text("from an interrupted fetch")
    lock = tmp_path / "cache" / ".x.lock"
    assert da._fetch_unpacked(target, lock, "s", ("hello",)) == target
    assert (target / "usr/bin/hello").is_file()
    assert not (target / "leftover").exists()
    assert json.loads((target / ".fetched.json").read_text())["packages"] == {"hello": "1.0-1"}
    da._fetch_unpacked(target, lock, "s", ("hello",))
    assert fake_debs == ["s"]  # cached: no second download


def test_failed_fetch_leaves_no_stamp(tmp_path, fake_debs):
    target = tmp_path / "y"
    target.mkdir()
    with pytest.raises(ImagebuildError, match="network down"):
        da._fetch_unpacked(target, tmp_path / ".y.lock", "broken", ("hello",))
    assert not (target / ".fetched.json").exists()
    assert list(tmp_path.glob(".download-*")) == []


# ----------------------------------------------------------------- serve() (offline)


def test_serve_small_files(tmp_path):
    (tmp_path / "a.bin").write_bytes(os.urandom(70_000))
    with serve(tmp_path) as url:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/a.bin", timeout=10) as resp:
            assert resp.read() == (tmp_path / "a.bin").read_bytes()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{url}/missing", timeout=10)
    with pytest.raises(OSError):  # shut down on exit
        urllib.request.urlopen(f"{url}/a.bin", timeout=2)


# ----------------------------------------------------------------- real Debian binaries


@pytest.mark.parametrize("family", list(da.FAMILIES))
def test_fetch_and_version(family):
    root = da.fetch(family)
    for name in ("containerd", "ctr", "containerd-shim-runc-v2", "runc"):
        assert os.access(da.binary(family, name), os.X_OK), name
    assert da.binary(family).is_relative_to(root)
    out = subprocess.run([da.binary(family), "--version"], capture_output=True, text=True,
                         check=True).stdout
    assert EXPECTED[family] in out
    assert da.upstream_version(da.version(family)) == EXPECTED[family]


def test_second_fetch_is_instant():
    da.fetch("1.6")
    start = time.monotonic()
    da.fetch("1.6")
    assert time.monotonic() - start < 0.1


@pytest.mark.parametrize("source", ["debian", "upstream"])
@pytest.mark.parametrize("family", list(da.FAMILIES))
def test_default_config_parses_with_real_binary(family, source):
    default = defaults.defaults_dir() / source / f"config-{family}.toml"
    proc = subprocess.run([da.binary(family), "--config", default, "config", "dump"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "version = " in proc.stdout


@pytest.mark.builds
@pytest.mark.parametrize("family", list(da.FAMILIES))
def test_packaged_defaults_match_binary(family):
    """imagebuild/defaults/debian is the byte-for-byte `config default` of Debian's build, defaults/upstream
    that of upstream's build of the same release (run `make regen-defaults`)."""
    from devtools import upstream

    proc = subprocess.run([da.binary(family), "config", "default"], capture_output=True, check=True)
    assert (defaults.defaults_dir() / "debian" / f"config-{family}.toml").read_bytes() == proc.stdout
    release = da.upstream_version(da.fetched_versions(family)["containerd"])
    built = upstream.containerd(release) / "bin" / "containerd"
    proc = subprocess.run([built, "config", "default"], capture_output=True, check=True)
    assert (defaults.defaults_dir() / "upstream" / f"config-{family}.toml").read_bytes() == proc.stdout


@pytest.fixture(scope="module")
def tarballs_16(tmp_path_factory):
    return da.release_tarballs("1.6", tmp_path_factory.mktemp("tb"))


@pytest.mark.slow
def test_release_tarball_members_and_runc(tarballs_16):
    c = tarballs_16["containerd"]
    assert Path(c["path"]).name == "containerd-1.6.20-linux-amd64.tar.gz"
    assert c["version"] == "1.6.20"
    assert c["sha256"] == hashlib.sha256(Path(c["path"]).read_bytes()).hexdigest()
    with tarfile.open(c["path"]) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["bin/containerd", "bin/containerd-shim-runc-v2",
                                             "bin/ctr"]
        for m in members:
            assert (m.mode, m.mtime, m.uid, m.gid, m.isfile()) == (0o755, 0, 0, 0, True)
            assert tar.extractfile(m).read() == da.binary("1.6", m.name.split("/")[1]).read_bytes()
    with gzip.open(c["path"]) as gz:
        gz.read(1)
    assert Path(c["path"] + ".sha256sum").read_text() == f"{c['sha256']}  {Path(c['path']).name}\n"
    r = tarballs_16["runc"]
    assert Path(r["path"]).name == "runc.amd64" and r["version"] == "1.1.5"
    assert Path(r["path"]).read_bytes() == da.binary("1.6", "runc").read_bytes()
    assert os.access(r["path"], os.X_OK)


@pytest.mark.slow
def test_release_tarball_is_reproducible(tarballs_16, tmp_path):
    again = da.release_tarballs("1.6", tmp_path)
    assert again["containerd"]["sha256"] == tarballs_16["containerd"]["sha256"]
    assert again["runc"]["sha256"] == tarballs_16["runc"]["sha256"]


@pytest.mark.slow
def test_served_tarball_downloads_byte_identical(tarballs_16):
    path = Path(tarballs_16["containerd"]["path"])
    with serve(path.parent) as url:
        with urllib.request.urlopen(f"{url}/{path.name}", timeout=30) as resp:
            data = resp.read()
        with urllib.request.urlopen(f"{url}/{path.name}.sha256sum", timeout=30) as resp:
            sums = resp.read().decode()
    assert hashlib.sha256(data).hexdigest() == tarballs_16["containerd"]["sha256"]
    assert sums.split()[0] == tarballs_16["containerd"]["sha256"]
    assert data == path.read_bytes()


# ----------------------------------------------------------------- arm64: what an arm64 guest downloads

#: What `file` says of every binary an arm64 guest installs.
AARCH64_ELF = "ELF 64-bit LSB executable, ARM aarch64"


def _file(path: Path) -> str:
    return subprocess.run(["file", "-b", str(path)], capture_output=True, text=True, check=True).stdout


def _machine(path: Path) -> str:
    out = subprocess.run(["readelf", "-h", str(path)], capture_output=True, text=True, check=True).stdout
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("Machine:"))


@pytest.fixture(scope="module")
def arm64_tarballs(tmp_path_factory):
    """The arm64 artifacts a Debian 13 guest gets: 1.7 and 2.1, each with its own suite's runc."""
    root = tmp_path_factory.mktemp("arm64")
    result = {}
    for family in ("1.7", "2.1"):
        result[family] = da.release_tarballs(family, root / family, compresslevel=1, arch="arm64",
                                             runc_from=da.runc_family(family, "debian-13"))
        with tarfile.open(result[family]["containerd"]["path"]) as tar:   # as install.sh unpacks it
            tar.extractall(root / family / "x", filter="data")
    return result


@pytest.fixture(scope="module")
def arm64_libc(tmp_path_factory):
    """Debian's arm64 libc6 (and libseccomp2, which both link) of bookworm and of trixie, unpacked
    with the merged-/usr link a Debian root has: what qemu-user needs to run the dynamically
    linked arm64 binaries (Debian's containerd and runc use cgo)."""
    def libc(suite: str) -> Path:
        target = tmp_path_factory.mktemp(f"libc-{suite}")
        da._fetch_unpacked(target, target.parent / f".{target.name}.lock", suite, ("libc6", "libseccomp2"),
                           arch="arm64")
        if not (target / "lib").exists():
            (target / "lib").symlink_to("usr/lib")
        return target
    return {"bookworm": libc("bookworm"), "trixie": libc("trixie")}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["1.7", "2.1"])
def test_arm64_release_tarballs_hold_aarch64_binaries(arm64_tarballs, family):
    c, r = arm64_tarballs[family]["containerd"], arm64_tarballs[family]["runc"]
    assert Path(c["path"]).name == f"containerd-{EXPECTED[family]}-linux-arm64.tar.gz"
    assert Path(r["path"]).name == "runc.arm64"
    assert r["version"] == {"1.7": "1.1.15", "2.1": "1.3.6"}[family]   # the family's own suite's runc
    assert Path(c["path"] + ".sha256sum").read_text() == f"{c['sha256']}  {Path(c['path']).name}\n"
    assert c["sha256"] == hashlib.sha256(Path(c["path"]).read_bytes()).hexdigest()
    with tarfile.open(c["path"]) as tar:
        assert tar.getnames() == ["bin/containerd", "bin/containerd-shim-runc-v2", "bin/ctr"]
    out = Path(c["path"]).parent / "x"
    for path in [*sorted((out / "bin").iterdir()), Path(r["path"])]:
        assert _file(path).startswith(AARCH64_ELF), (path, _file(path))
        assert _machine(path) == "AArch64"
    assert _machine(da.binary(family, "containerd")) == "Advanced Micro Devices X86-64"   # the host's stay amd64


@pytest.mark.slow
@pytest.mark.parametrize("family", ["1.7", "2.1"])
def test_arm64_binaries_run_on_debian_13s_libc(arm64_tarballs, arm64_libc, family):
    """Under qemu-user with trixie's arm64 libc (what a Debian 13 arm64 guest has), the served
    containerd and runc run and say their version."""
    bindir = Path(arm64_tarballs[family]["containerd"]["path"]).parent / "x" / "bin"
    run = ["qemu-aarch64-static", "-L", str(arm64_libc["trixie"])]
    out = subprocess.run([*run, str(bindir / "containerd"), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and f" {EXPECTED[family]}" in out.stdout, out
    runc = arm64_tarballs[family]["runc"]
    out = subprocess.run([*run, runc["path"], "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and f"runc version {runc['version']}" in out.stdout, out


@pytest.mark.slow
def test_trixie_runc_does_not_run_on_debian_12s_libc(arm64_tarballs, arm64_libc):
    """Why runc_family exists: trixie's runc needs GLIBC_2.38; Debian 12's libc (2.36) refuses it."""
    assert da.runc_family("1.7", "debian-12") == "1.6" and da.runc_family("2.1", "debian-13") == "2.1"
    out = subprocess.run(["qemu-aarch64-static", "-L", str(arm64_libc["bookworm"]),
                          arm64_tarballs["1.7"]["runc"]["path"], "--version"], capture_output=True, text=True)
    assert out.returncode != 0 and "GLIBC_2.38" in out.stderr, out


def test_unknown_architecture_and_os_are_refused(tmp_path):
    with pytest.raises(ImagebuildError, match="unknown architecture 'riscv64'; known: amd64, arm64"):
        da.release_tarballs("1.7", tmp_path, arch="riscv64")
    with pytest.raises(ImagebuildError, match="unknown image.os 'debian-11'"):
        da.runc_family("1.7", "debian-11")
    with pytest.raises(ImagebuildError, match="unknown containerd family '9.9'"):
        da.release_tarballs("1.7", tmp_path, arch="arm64", runc_from="9.9")


# ----------------------------------------------------------------- concurrency and CLI


@pytest.mark.slow
def test_two_processes_fetch_once(tmp_path):
    """Two processes fetching at once into an empty cache: one downloads, both succeed."""
    env = {**os.environ, "IMAGEBUILD_CACHE": str(tmp_path / "cache")}
    code = "from devtools.debian_artifacts import cni_plugins; print(cni_plugins()[1] / 'loopback')"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    outs = {out.strip() for out, _ in results}
    assert len(outs) == 1 and Path(outs.pop()).is_file()
    assert sum(err.count("apt-get download") for _, err in results) == 1


def test_cli_fetch_prints_versions():
    da.fetch("1.6")
    proc = subprocess.run([sys.executable, "-m", "devtools", "fetch", "1.6"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    family, path, version = proc.stdout.strip().split("\t")
    assert (family, Path(path), version) == ("1.6", da.fetch("1.6"), "1.6.20~ds1")


def test_cli_error_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "devtools", "fetch", "0.9"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: unknown containerd family")
    assert "Traceback" not in proc.stderr
