"""install.sh: static checks (bash -n, shellcheck) and real runs as root into a scratch root
(IMAGEBUILD_ROOT), downloading release-shaped tarballs of real containerd 1.6 binaries from a
127.0.0.1 server through the script's own curl + sha256 path.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from devtools import debian_artifacts
from imagebuild import render
from imagebuild.render.templating import shipped_dir
from tests.support import PACKAGE_VERSIONS, run_main, snapshot, spec_of, ungzip, write_spec

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root")
pytestmark = pytest.mark.usefixtures("checksums_at_render")  # the default: checksum_url read at render


# ------------------------------------------------------------------------------ static checks

STATIC_SPECS = {
    "tarball": {},
    "tarball-cni-pinned": {"containerd": {"install": {
        "tarball": {"sha256": "ab" * 32}, "runc": {"sha256": "cd" * 32}, "cni_plugins": {"sha256": "ef" * 32}}}},
    "tarball-2.1": {"containerd": {"version": "2.1.9"}},
    "package-hold": {"containerd": {"install": {"method": "package", "package": {"version": PACKAGE_VERSIONS["1.6"]}}}},
    "package-no-hold": {"containerd": {"install": {"method": "package", "package": {
        "version": PACKAGE_VERSIONS["1.6"], "hold": False}}}},
    # the proxy's lines for curl and apt (tests/test_install_proxy.py), with and without apt-get in the script
    "tarball-proxy": {"proxy": {"http": "http://p.example:3128", "https": "http://p.example:3129",
                                "no_proxy": [".svc", "10.96.0.0/12", "::1", "db.internal:5432"]}},
    "tarball-proxy-no-apt": {"proxy": {"https": "http://p.example:3129"}, "system": {"profile": "none"}},
    "package-proxy": {"proxy": {"http": "http://p.example:3128"}, "containerd": {"install": {
        "method": "package", "package": {"version": PACKAGE_VERSIONS["1.6"]}}}},
}


def _shell_checks(path: Path) -> None:
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    lint = subprocess.run(["shellcheck", "--shell=bash", str(path)], capture_output=True, text=True)
    assert lint.returncode == 0 and lint.stdout == "", lint.stdout + lint.stderr


@pytest.mark.parametrize("name", STATIC_SPECS)
def test_install_script_passes_bash_n_and_shellcheck(tmp_path, name):
    files = render.guest_files(spec_of(STATIC_SPECS[name]))
    script = tmp_path / "install.sh"
    script.write_bytes(files["install.sh"].content)
    assert files["install.sh"].mode == 0o755
    assert files["install.sh"].content.startswith(b"#!/usr/bin/env bash\n")
    _shell_checks(script)


def test_hygiene_script_passes_bash_n_and_shellcheck():
    _shell_checks(shipped_dir("packer") / "hygiene.sh")


# ------------------------------------------------------------------------------ real runs


def _doc(release: dict, *, pinned: bool = True, **config) -> dict:
    url = release["url"]
    ctd, runc = Path(release["containerd"]["path"]).name, Path(release["runc"]["path"]).name
    # insecure: the lab's server is plain HTTP on 127.0.0.1 (sha256 pinned, or its checksum file read at render)
    tarball = {"url": f"{url}/{ctd}", "sha256": release["containerd"]["sha256"], "insecure": True}
    runc_art = {"version": release["runc"]["version"], "url": f"{url}/{runc}", "sha256": release["runc"]["sha256"],
                "insecure": True}
    if not pinned:
        tarball = {"url": f"{url}/{ctd}", "sha256": None, "checksum_url": "{url}.sha256sum", "insecure": True}
        runc_art = {**runc_art, "sha256": None, "checksum_url": "{url}.sha256sum"}
    return {"containerd": {"version": release["containerd"]["version"],
                           "install": {"tarball": tarball, "runc": runc_art}}, **({"config": config} if config else {})}


def _render(tmp_path: Path, doc: dict, name: str = "render", *options: str) -> Path:
    out = tmp_path / name
    code, _, err = run_main(["render", str(write_spec(tmp_path, doc, f"{name}.yaml")), "-o", str(out), *options])
    assert code == 0, err
    return out


def _install(render_dir: Path, scratch: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(render_dir / "install.sh"), str(render_dir / "payload")],
                          env={**os.environ, "IMAGEBUILD_ROOT": str(scratch)}, capture_output=True, text=True,
                          timeout=300)


def _payload(render_dir: Path) -> dict[str, Path]:
    base = render_dir / "payload"
    return {"/" + str(p.relative_to(base)): p for p in sorted(base.rglob("*")) if p.is_file()}


def _installed_files(scratch: Path) -> set[str]:
    return {"/" + str(p.relative_to(scratch)) for p in scratch.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def first_install(tmp_path_factory, release_16):
    """The default-shaped spec installed once into a scratch root: (render dir, scratch, first run)."""
    if os.geteuid() != 0:
        pytest.skip("install.sh runs as root")
    tmp = tmp_path_factory.mktemp("install")
    out = _render(tmp, _doc(release_16))
    scratch = tmp / "scratch"
    scratch.mkdir()
    return out, scratch, _install(out, scratch)


def _copy_root(scratch: Path, target: Path) -> Path:
    shutil.copytree(scratch, target, symlinks=True)  # copy2: contents, modes and mtimes
    return target


@needs_root
def test_first_run_installs_binaries_and_every_payload_file(first_install):
    out, scratch, proc = first_install
    assert proc.returncode == 0, proc.stderr
    binaries = {"/usr/local/bin/containerd": debian_artifacts.binary("1.6"),
                "/usr/local/bin/ctr": debian_artifacts.binary("1.6", "ctr"),
                "/usr/local/bin/containerd-shim-runc-v2": debian_artifacts.binary("1.6", "containerd-shim-runc-v2"),
                "/usr/local/sbin/runc": debian_artifacts.binary("1.6", "runc")}
    for path, source in binaries.items():
        installed = scratch / path.lstrip("/")
        assert installed.read_bytes() == source.read_bytes(), path
        assert installed.stat().st_mode & 0o777 == 0o755
    payload = _payload(out)
    assert len(payload) == 8  # config.toml, 4 hosts.toml, unit, modules-load.d, sysctl.d
    for path, source in payload.items():
        installed = scratch / path.lstrip("/")
        assert installed.read_bytes() == source.read_bytes(), path
        assert installed.stat().st_mode & 0o777 == source.stat().st_mode & 0o777, path
    state = {"/var/lib/imagebuild/installed/containerd", "/var/lib/imagebuild/installed/runc",
             "/var/lib/imagebuild/installed/files"}
    assert _installed_files(scratch) == set(binaries) | set(payload) | state
    assert "sha256 verified: containerd-1.6.20-linux-" in proc.stderr
    assert "sha256 verified: runc." in proc.stderr
    changed = next(line for line in proc.stderr.splitlines() if "changed 12:" in line)
    for path in list(binaries) + list(payload):
        assert path in changed
    assert "scratch root: systemctl, modprobe and sysctl skipped" in proc.stderr


@needs_root
def test_second_run_changes_nothing(first_install, tmp_path):
    out, scratch, first = first_install
    assert first.returncode == 0, first.stderr
    root = _copy_root(scratch, tmp_path / "root")
    before = snapshot(root)
    proc = _install(out, root)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to change: containerd 1.6.20 and its configuration are already in place" in proc.stderr
    assert "downloading" not in proc.stderr
    assert snapshot(root) == before  # every file: content, mode and mtime


@pytest.fixture(scope="module")
def cni_release(release_16):
    """Release-shaped CNI plugins (Debian's) beside release_16's artifacts, on the same server."""
    return debian_artifacts.cni_tarball(release_16["dir"], compresslevel=1)


@needs_root
def test_cni_plugins_are_verified_installed_and_then_left_alone(tmp_path, release_16, cni_release):
    doc = _doc(release_16)
    url = f"{release_16['url']}/{Path(cni_release['path']).name}"
    # no sha256: the default checksum_url ({url}.sha256, upstream's layout) is fetched and checked
    doc["containerd"]["install"]["cni_plugins"] = {"version": cni_release["version"], "url": url, "insecure": True}
    out = _render(tmp_path, doc)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = _install(out, scratch)
    assert proc.returncode == 0, proc.stderr
    assert f"sha256 verified: {Path(cni_release['path']).name}" in proc.stderr
    _, plugins = debian_artifacts.cni_plugins()
    installed = sorted(p.name for p in (scratch / "opt/cni/bin").iterdir())
    assert installed == cni_release["plugins"] and "loopback" in installed
    for name in installed:
        path = scratch / "opt/cni/bin" / name
        assert path.read_bytes() == (plugins / name).read_bytes(), name
        assert path.stat().st_mode & 0o777 == 0o755, name
    stamp = (scratch / "var/lib/imagebuild/installed/cni-plugins").read_text().splitlines()
    assert stamp[0] == url and len(stamp) == 1 + len(installed)

    root = _copy_root(scratch, tmp_path / "again")
    before = snapshot(root)
    again = _install(out, root)
    assert again.returncode == 0, again.stderr
    assert "nothing to change" in again.stderr and "downloading" not in again.stderr
    assert snapshot(root) == before


@needs_root
def test_wrong_sha256_fails_loudly_and_installs_nothing(tmp_path, release_16):
    doc = _doc(release_16)
    doc["containerd"]["install"]["tarball"]["sha256"] = "0" * 64
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = _install(_render(tmp_path, doc), scratch)
    assert proc.returncode != 0
    assert f"sha256 mismatch for {release_16['url']}/containerd-1.6.20-linux-" in proc.stderr
    assert f"expected {'0' * 64}, got {release_16['containerd']['sha256']}; nothing was installed" in proc.stderr
    assert list(scratch.iterdir()) == []


@needs_root
@pytest.mark.parametrize("when", ["render", "install"])
def test_checksum_url_mode(tmp_path, release_16, when):
    """sha256 not pinned: the published checksum file is read (by the render, which pins the sha256 into
    install.sh, or with --checksums-at-install by install.sh itself); a multi-entry file (runc's own
    release has one runc.sha256sum for every architecture) is searched for the right name."""
    runc_name = Path(release_16["runc"]["path"]).name
    sums = release_16["dir"] / "runc-all.sha256sum"
    sums.write_text(f"{'1' * 64}  runc.arm64\n{release_16['runc']['sha256']} *{runc_name}\n{'2' * 64}  runc.386\n")
    doc = _doc(release_16, pinned=False)
    doc["containerd"]["install"]["runc"]["checksum_url"] = f"{release_16['url']}/runc-all.sha256sum"
    out = _render(tmp_path, doc, "render", *(["--checksums-at-install"] if when == "install" else []))
    script = (out / "install.sh").read_text()
    pinned = [release_16[name]["sha256"] in script for name in ("containerd", "runc")]
    assert pinned == ([True, True] if when == "render" else [False, False])
    assert ("runc-all.sha256sum" in script) == (when == "install")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = _install(out, scratch)
    assert proc.returncode == 0, proc.stderr
    assert (scratch / "usr/local/bin/containerd").read_bytes() == debian_artifacts.binary("1.6").read_bytes()
    assert (scratch / "usr/local/sbin/runc").read_bytes() == debian_artifacts.binary("1.6", "runc").read_bytes()
    assert proc.stderr.count("sha256 verified") == 2


def test_pinned_checksum_does_not_follow_the_checksum_file_after_the_render(tmp_path, release_16):
    """The render reads checksum_url once: a checksum file changed afterwards (a release replaced behind
    the same URL) changes nothing in install.sh or user-data; only a new render reads it again."""
    name = Path(release_16["runc"]["path"]).name
    sums = release_16["dir"] / "runc-later.sha256sum"
    sums.write_text(f"{release_16['runc']['sha256']}  {name}\n")
    doc = _doc(release_16)
    doc["containerd"]["install"]["runc"] |= {"sha256": None,
                                             "checksum_url": f"{release_16['url']}/runc-later.sha256sum"}
    first = (_render(tmp_path, doc, "first") / "install.sh").read_text()
    sums.write_text(f"{'9' * 64}  {name}\n")
    assert (_render(tmp_path, doc, "first") / "install.sh").read_text() != first   # a new render reads it anew
    sums.write_text(f"{release_16['runc']['sha256']}  {name}\n")
    assert release_16["runc"]["sha256"] in first and "runc-later.sha256sum" not in first
    code, _, err = run_main(["user-data", str(write_spec(tmp_path, doc, "ud.yaml")), "-o", str(tmp_path / "ud")])
    assert code == 0, err
    user_data = ungzip((tmp_path / "ud").read_bytes()).decode()
    assert "runc-later.sha256sum" not in user_data and release_16["runc"]["sha256"] in user_data


def test_unreadable_checksum_url_fails_the_render_naming_key_and_url(tmp_path, release_16):
    doc = _doc(release_16)
    doc["containerd"]["install"]["runc"] |= {"sha256": None, "checksum_url": f"{release_16['url']}/missing.sha256sum"}
    out = tmp_path / "render"
    code, _, err = run_main(["render", str(write_spec(tmp_path, doc)), "-o", str(out)])
    assert code == 1 and not out.exists()
    assert (f"containerd.install.runc.checksum_url: cannot read checksum_url {release_16['url']}/missing.sha256sum"
            in err), err
    assert "--checksums-at-install" in err and "containerd.install.runc.sha256" in err
    code, _, err = run_main(["render", str(write_spec(tmp_path, doc)), "-o", str(out), "--checksums-at-install"])
    assert code == 0, err
    assert f"{release_16['url']}/missing.sha256sum" in (out / "install.sh").read_text()


@pytest.fixture(scope="module")
def both_arches(tmp_path_factory):
    """containerd 1.6 and runc of amd64 and of arm64, release-shaped side by side on a 127.0.0.1 server,
    as GitHub serves a release: {"url", "amd64": {...}, "arm64": {...}}."""
    from devtools.serve import serve

    directory = tmp_path_factory.mktemp("release-1.6-both")
    arts = {arch: debian_artifacts.release_tarballs("1.6", directory, compresslevel=1, arch=arch)
            for arch in ("amd64", "arm64")}
    with serve(directory) as url:
        yield {"url": url, **arts}


def _arch_doc(both: dict, arch: str) -> dict:
    """One spec for both architectures but image.architecture: URLs with {arch}, checksums from `{url}.sha256sum`."""
    return {"image": {"architecture": arch}, "containerd": {"version": "1.6.20", "install": {
        "tarball": {"url": f"{both['url']}/containerd-{{version}}-linux-{{arch}}.tar.gz", "insecure": True},
        "runc": {"version": both["amd64"]["runc"]["version"], "url": f"{both['url']}/runc.{{arch}}",
                 "checksum_url": "{url}.sha256sum", "insecure": True}}}}


@needs_root
def test_arch_template_installs_this_machines_binaries(tmp_path, both_arches):
    """{arch} is image.architecture: the amd64 render downloads and installs the amd64 files."""
    out = _render(tmp_path, _arch_doc(both_arches, "amd64"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = _install(out, scratch)
    assert proc.returncode == 0, proc.stderr
    assert f"downloading {both_arches['url']}/containerd-1.6.20-linux-amd64.tar.gz" in proc.stderr
    assert f"downloading {both_arches['url']}/runc.amd64" in proc.stderr
    assert (scratch / "usr/local/bin/containerd").read_bytes() == debian_artifacts.binary("1.6").read_bytes()


@needs_root
def test_arm64_script_names_the_arm64_files_and_refuses_this_amd64_machine(tmp_path, both_arches):
    """The arm64 render of the same spec picks the arm64 tarball and runc (their sha256 from the
    arm64 checksum files), and on a machine of another architecture it stops before any download."""
    out = _render(tmp_path, _arch_doc(both_arches, "arm64"))
    script = (out / "install.sh").read_text()
    url, arm64 = both_arches["url"], both_arches["arm64"]
    assert (f"fetch {url}/containerd-1.6.20-linux-arm64.tar.gz \"$WORK/containerd.tar.gz\" "
            f"{arm64['containerd']['sha256']} '' =http,https =http,https") in script
    assert f"fetch {url}/runc.arm64 \"$WORK/runc\" {arm64['runc']['sha256']} '' =http,https =http,https" in script
    assert "amd64" not in script.replace("MACHINE=amd64", "")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = _install(out, scratch)
    assert proc.returncode == 1
    assert ("ERROR: this machine is amd64; this script installs containerd for arm64 (image.architecture): "
            "render the spec with image.architecture: amd64") in proc.stderr
    assert "downloading" not in proc.stderr and list(scratch.iterdir()) == []


@needs_root
def test_checksum_file_without_the_artifact_fails(tmp_path, release_16):
    (release_16["dir"] / "other.sha256sum").write_text(f"{'1' * 64}  something-else.tar.gz\n")
    doc = _doc(release_16, pinned=False)
    doc["containerd"]["install"]["tarball"]["checksum_url"] = f"{release_16['url']}/other.sha256sum"
    out = tmp_path / "refused"
    code, _, err = run_main(["render", str(write_spec(tmp_path, doc)), "-o", str(out)])   # read at render: refused
    assert code == 1 and not out.exists()
    assert f"checksum_url {release_16['url']}/other.sha256sum names no sha256 for containerd-1.6.20-linux-" in err
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = _install(_render(tmp_path, doc, "render", "--checksums-at-install"), scratch)   # read at install
    assert proc.returncode != 0
    assert "no sha256 for containerd-1.6.20-linux-" in proc.stderr
    assert list(scratch.iterdir()) == []


@needs_root
def test_changed_spec_replaces_only_config_toml_and_keeps_a_backup(first_install, tmp_path, release_16):
    out, scratch, first = first_install
    assert first.returncode == 0, first.stderr
    root = _copy_root(scratch, tmp_path / "root")
    before = snapshot(root)
    changed = _render(tmp_path, _doc(release_16, oom_score=-500), "changed")
    proc = _install(changed, root)
    assert proc.returncode == 0, proc.stderr
    assert "changed 1: /etc/containerd/config.toml" in proc.stderr
    after = snapshot(root)
    config = "etc/containerd/config.toml"
    assert set(after) - set(before) == {config + ".imagebuild-backup"}
    assert after[config + ".imagebuild-backup"][3] == before[config][3]  # the old file, byte for byte
    assert after[config][3] == (changed / "payload" / config).read_bytes()
    assert b"oom_score = -500" in after[config][3]
    unchanged = {k for k in before if k != config and not k.startswith("var/lib/imagebuild")}
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}


@needs_root
def test_dropped_mirror_moves_its_stale_hosts_toml_aside(first_install, tmp_path, release_16):
    out, scratch, first = first_install
    assert first.returncode == 0, first.stderr
    root = _copy_root(scratch, tmp_path / "root")
    seed = spec_of({}).document["config"]["registry"]["mirrors"]
    fewer = _render(tmp_path, _doc(release_16, registry={"mirrors": [m for m in seed if m["host"] != "quay.io"]}),
                    "fewer")
    stale = root / "etc/containerd/certs.d/quay.io/hosts.toml"
    old = stale.read_bytes()
    proc = _install(fewer, root)
    assert proc.returncode == 0, proc.stderr
    assert "removed /etc/containerd/certs.d/quay.io/hosts.toml" in proc.stderr
    assert not stale.exists()
    assert stale.with_name("hosts.toml.imagebuild-backup").read_bytes() == old
    assert (root / "etc/containerd/certs.d/docker.io/hosts.toml").is_file()
    listed = (root / "var/lib/imagebuild/installed/files").read_text().split()
    assert "/etc/containerd/certs.d/quay.io/hosts.toml" not in listed and len(listed) == 7
    # And the run after that is quiet again.
    assert "nothing to change" in _install(fewer, root).stderr


@needs_root
@pytest.mark.slow  # ~3.5 s idle, past 5 s on a loaded machine: 120 mirrors, three runs
def test_rerun_with_many_files_changes_nothing(first_install, tmp_path, release_16):
    """Regression: the stale-file scan piped the file list into `grep -q` under pipefail; past a
    few KB of paths the writer died of SIGPIPE and current hosts.toml files were moved aside."""
    out, scratch, first = first_install
    assert first.returncode == 0, first.stderr
    mirrors = [{"host": f"registry{i:03d}.example.com", "endpoints": [{"url": f"https://mirror{i}.example.com"}]}
               for i in range(120)]
    spec = spec_of(_doc(release_16, registry={"mirrors": mirrors}))
    big = tmp_path / "big"
    for rel, f in render.guest_files(spec).items():  # (its user-data would not fit EC2's 16 KB)
        path = big / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f.content)
        path.chmod(f.mode)
    root = _copy_root(scratch, tmp_path / "root")
    proc = _install(big, root)
    assert proc.returncode == 0, proc.stderr
    before = snapshot(root)
    proc = _install(big, root)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to change" in proc.stderr, proc.stderr[-2000:]
    assert snapshot(root) == before
    assert len(list((root / "etc/containerd/certs.d").glob("*/hosts.toml"))) == 120


@needs_root
def test_payload_that_differs_from_the_render_is_refused(first_install, tmp_path):
    out, _, _ = first_install
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    config = tampered / "payload/etc/containerd/config.toml"
    config.write_text(config.read_text().replace("oom_score = -999", "oom_score = 0"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = _install(tampered, scratch)
    assert proc.returncode != 0
    assert f"payload file differs from the rendered one: {tampered}/payload/etc/containerd/config.toml" in proc.stderr
    assert list(scratch.iterdir()) == []
