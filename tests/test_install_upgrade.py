"""install.sh over an earlier install: upgrade containerd 1.6 -> 1.7 in one scratch root
(IMAGEBUILD_ROOT), settle, and refuse a tampered artifact without touching what is installed.

Release-shaped tarballs of real Debian binaries (1.6.20 and 1.7.24) are served from 127.0.0.1,
so the script's own curl + sha256 path runs; every spec pins the sha256 of what it should get.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from devtools import debian_artifacts
from devtools.serve import serve
from tests.support import run_main, snapshot, write_spec

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root"),
              pytest.mark.slow]  # 2-4 s each: every run downloads and unpacks real binaries

BINARIES = {"/usr/local/bin/containerd": "containerd", "/usr/local/bin/ctr": "ctr",
            "/usr/local/bin/containerd-shim-runc-v2": "containerd-shim-runc-v2", "/usr/local/sbin/runc": "runc"}
CONFIG = "etc/containerd/config.toml"


@pytest.fixture(scope="module")
def release_17(tmp_path_factory):
    """Release-shaped containerd 1.7 + runc artifacts, served like conftest's release_16."""
    directory = tmp_path_factory.mktemp("release-1.7")
    artifacts = debian_artifacts.release_tarballs("1.7", directory, compresslevel=1)
    with serve(directory) as url:
        yield {"url": url, "dir": directory, **artifacts}


def _doc(release: dict, url: str | None = None) -> dict:
    """A tarball spec installing exactly *release* (sha256 pinned), downloaded from *url*."""
    url = url or release["url"]
    ctd, runc = Path(release["containerd"]["path"]).name, Path(release["runc"]["path"]).name
    # insecure: the lab's server is plain HTTP on 127.0.0.1; the pinned sha256 still proves every byte.
    return {"containerd": {"version": release["containerd"]["version"], "install": {
        "tarball": {"url": f"{url}/{ctd}", "sha256": release["containerd"]["sha256"], "insecure": True},
        "runc": {"version": release["runc"]["version"], "url": f"{url}/{runc}", "sha256": release["runc"]["sha256"],
                 "insecure": True}}}}


def _render(tmp_path: Path, doc: dict, name: str) -> Path:
    out = tmp_path / name
    code, _, err = run_main(["render", str(write_spec(tmp_path, doc, f"{name}.yaml")), "-o", str(out)])
    assert code == 0, err
    return out


def _install(render_dir: Path, root: Path, tmpdir: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMAGEBUILD_ROOT": str(root)}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run(["bash", str(render_dir / "install.sh"), str(render_dir / "payload")], env=env,
                          capture_output=True, text=True, timeout=300)


def _version(binary: Path, *args: str) -> str:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30).stdout


@pytest.fixture(scope="module")
def installed_16(tmp_path_factory, release_16):
    """containerd 1.6.20 installed once into a scratch root; tests work on copies of it."""
    tmp = tmp_path_factory.mktemp("installed-1.6")
    out = _render(tmp, _doc(release_16), "r16")
    root = tmp / "root"
    root.mkdir()
    proc = _install(out, root)
    assert proc.returncode == 0, proc.stderr
    assert "1.6.20" in _version(root / "usr/local/bin/containerd", "--version")
    return root


def _copy(root: Path, target: Path) -> Path:
    shutil.copytree(root, target, symlinks=True)  # copy2 keeps contents, modes and mtimes
    return target


def test_upgrade_to_17_replaces_binaries_and_config_then_changes_nothing(tmp_path, installed_16, release_17):
    root = _copy(installed_16, tmp_path / "root")
    config_16 = (root / CONFIG).read_bytes()
    r17 = _render(tmp_path, _doc(release_17), "r17")

    proc = _install(r17, root)
    assert proc.returncode == 0, proc.stderr
    assert "sha256 verified: containerd-1.7.24-linux-" in proc.stderr
    for path, name in BINARIES.items():
        assert (root / path.lstrip("/")).read_bytes() == debian_artifacts.binary("1.7", name).read_bytes(), path
        assert (root / path.lstrip("/")).stat().st_mode & 0o777 == 0o755
    reported = _version(root / "usr/local/bin/containerd", "--version")
    assert " 1.7.24" in reported and "1.6.20" not in reported, reported
    assert " 1.7.24" in _version(root / "usr/local/bin/ctr", "--version")
    # (runc is checked by its bytes only: trixie's runc needs glibc 2.38 and does not run on Debian 12.)
    # config.toml is 1.7's now; the 1.6 one is kept beside it, byte for byte.
    assert (root / CONFIG).read_bytes() == (r17 / "payload" / CONFIG).read_bytes()
    assert (root / CONFIG).read_bytes() != config_16
    assert (root / (CONFIG + ".imagebuild-backup")).read_bytes() == config_16
    changed = next(line for line in proc.stderr.splitlines() if "imagebuild-install: changed " in line)
    for path in [*BINARIES, "/" + CONFIG]:
        assert path in changed, changed
    stamp = (root / "var/lib/imagebuild/installed/containerd").read_text().splitlines()[0]
    assert stamp == f"{release_17['url']}/{Path(release_17['containerd']['path']).name}"

    # A third run, the 1.7 script again: nothing to change, nothing downloaded, no mtime moves.
    before = snapshot(root)
    proc = _install(r17, root)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to change: containerd 1.7.24 and its configuration are already in place" in proc.stderr
    assert "downloading" not in proc.stderr
    assert snapshot(root) == before


@pytest.mark.parametrize("tampered", ["containerd", "runc"])
def test_tampered_artifact_fails_loudly_keeps_the_old_install_and_a_rerun_completes(tmp_path, installed_16, release_17,
                                                                                  tampered):
    """The spec pins the right sha256 but the server hands out other bytes (a corrupted mirror):
    the script stops before installing anything; once the artifact is right, the same script runs."""
    served = tmp_path / "served"
    shutil.copytree(release_17["dir"], served)
    artifact = served / Path(release_17[tampered]["path"]).name
    good = artifact.read_bytes()
    artifact.write_bytes(good[: len(good) // 2])  # a truncated download the server thinks is whole
    bad_sha = hashlib.sha256(artifact.read_bytes()).hexdigest()
    root = _copy(installed_16, tmp_path / "root")
    before = snapshot(root)
    scratch_tmp = tmp_path / "tmp"
    scratch_tmp.mkdir()
    with serve(served) as url:
        r17 = _render(tmp_path, _doc(release_17, url), "r17")
        proc = _install(r17, root, scratch_tmp)
        assert proc.returncode != 0
        assert (f"ERROR: sha256 mismatch for {url}/{artifact.name}: expected {release_17[tampered]['sha256']}, "
                f"got {bad_sha}; nothing was installed") in proc.stderr
        assert snapshot(root) == before  # the 1.6 install, byte for byte, mtimes included
        assert list(scratch_tmp.iterdir()) == []  # the script's work directory is gone too

        artifact.write_bytes(good)
        proc = _install(r17, root, scratch_tmp)
    assert proc.returncode == 0, proc.stderr
    assert (root / "usr/local/bin/containerd").read_bytes() == debian_artifacts.binary("1.7").read_bytes()
    assert (root / "usr/local/sbin/runc").read_bytes() == debian_artifacts.binary("1.7", "runc").read_bytes()
    assert (root / CONFIG).read_bytes() == (r17 / "payload" / CONFIG).read_bytes()
    assert (root / (CONFIG + ".imagebuild-backup")).read_bytes() == before[CONFIG][3]
    assert list(scratch_tmp.iterdir()) == []
