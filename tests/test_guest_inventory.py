"""The in-guest inventory program's readers (imagebuild/guest/inventory.py), against the real tools that read the
same things: dpkg-query for a dpkg database, `go version -m` for a Go binary's build information."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from imagebuild.guest import inventory
from imagebuild.paths import cache_dir

STATUS = Path("/var/lib/dpkg/status")


def dpkg_query(admindir: Path) -> set[tuple[str, str, str]]:
    out = subprocess.run(["dpkg-query", f"--admindir={admindir}", "-W", "-f",
                          "${db:Status-Status} ${Package} ${Version} ${Architecture}\n"],
                         capture_output=True, text=True, check=True).stdout
    return {tuple(line.split()[1:]) for line in out.splitlines() if line.startswith("installed ")}


def test_dpkg_packages_are_what_dpkg_query_lists_as_installed(tmp_path):
    admin = tmp_path / "dpkg"
    admin.mkdir()
    (admin / "status").write_bytes(STATUS.read_bytes())
    mine = {(p["name"], p["version"], p["architecture"]) for p in inventory.dpkg_packages(STATUS.read_text())}
    assert len(mine) > 100 and mine == dpkg_query(admin)


def test_a_package_removed_but_not_purged_is_not_listed_and_source_versions_are_read(tmp_path):
    text = ("Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1.0-1\n\n"
            "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc (2.36-9)\n"
            "Version: 2.36-9+deb12u1\nDescription: GNU C Library\n multi-line: not a field\n\n"
            "Package: adduser\nStatus: install ok installed\nArchitecture: all\nVersion: 3.134\n")
    admin = tmp_path / "dpkg"
    admin.mkdir()
    (admin / "status").write_text(text)
    packages = inventory.dpkg_packages(text)
    assert {(p["name"], p["version"], p["architecture"]) for p in packages} == dpkg_query(admin)
    assert [(p["name"], p["source"], p["source_version"]) for p in packages] == [
        ("adduser", "adduser", "3.134"), ("libc6", "glibc", "2.36-9")]


def _go_version_m(path: str) -> dict:
    out = subprocess.run(["go", "version", "-m", path], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    info = {"go": lines[0].split(": ", 1)[1].strip(), "path": None, "main": None}
    for line in lines[1:]:
        fields = line.strip().split("\t")
        if fields[0] == "path":
            info["path"] = fields[1]
        elif fields[0] == "mod":
            info["main"] = {"path": fields[1], "version": fields[2], "sum": fields[3] if len(fields) > 3 else ""}
    return info


def test_go_build_information_is_what_go_version_m_prints(tmp_path):
    """A Go program with a released main module (built here from the module proxy's cache: the toolchain's own
    `gofmt` has no module version, so a tiny module is built), and the go command itself."""
    go = shutil.which("go")
    assert go, "Go is on every machine of this project (ENVIRONMENT.md)"
    (tmp_path / "go.mod").write_text("module example.test/hello\n\ngo 1.21\n")
    (tmp_path / "main.go").write_text('package main\n\nfunc main() { println("hello") }\n')
    built = tmp_path / "hello"
    subprocess.run([go, "build", "-o", str(built), "."], cwd=tmp_path, check=True, capture_output=True,
                   env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local",
                        "GOCACHE": str(cache_dir("go", "build")), "GOPATH": str(tmp_path / "gopath"),
                        "CGO_ENABLED": "0"})
    for path in (str(built), str(Path(go).resolve())):
        mine = inventory.go_buildinfo(Path(path))
        assert mine is not None and {k: mine[k] for k in ("go", "path", "main")} == _go_version_m(path), path
    assert inventory.go_buildinfo(Path(built))["main"]["path"] == "example.test/hello"


def test_a_binary_that_is_not_go_has_no_build_information():
    assert inventory.go_buildinfo(Path("/bin/ls")) is None


@pytest.mark.parametrize("said, version", [
    ("containerd github.com/containerd/containerd v1.6.20 gomod-h1:+itjwpdq", "v1.6.20"),
    ("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3", "1.6.20~ds1"),
    ("ctr github.com/containerd/containerd v1.7.24", "v1.7.24"),
    ("runc version 1.4.4\ncommit: gomod-h1:mvhKT\nspec: 1.3.0\ngo: go1.26.8", "1.4.4"),
    ("containerd-shim-runc-v2:\n  Version:  v1.6.20\n  Revision: gomod-h1:x\n  Go version: go1.26.8", "v1.6.20"),
    ("CNI bridge plugin v1.10.0\nCNI protocol versions supported: 0.1.0, 1.0.0", "v1.10.0"),
    ("usage: something went wrong", None),
])
def test_printed_version(said, version):
    assert inventory.printed_version(said) == version


def test_a_credential_in_the_config_dump_is_masked():
    dump = ('[plugins."io.containerd.grpc.v1.cri".registry.configs."r.example".auth]\n'
            '  username = "me"\n  password = "hunter2"\n  identitytoken = "abc"\n  auth = "bWU6aHVudGVyMg=="\n'
            '[plugins."io.containerd.grpc.v1.cri".cni]\n  bin_dir = "/opt/cni/bin"\n')
    masked = inventory.SECRET_KEY.sub(r'\1"<redacted>"', dump)
    assert "hunter2" not in masked and "abc" not in masked and "bWU6" not in masked
    assert 'username = "me"' in masked and 'bin_dir = "/opt/cni/bin"' in masked


def test_ctr_images_ls_lines_give_name_digest_and_pinning():
    listing = (
        "REF                                             TYPE                                                 "
        "DIGEST                                                                  SIZE      PLATFORMS   LABELS\n"
        "localhost/imagebuild/pause:catatonit            application/vnd.oci.image.manifest.v1+json           "
        "sha256:" + "ab" * 32 + " 612.4 KiB linux/amd64 "
        "io.cri-containerd.image=managed,io.cri-containerd.pinned=pinned\n"
        "docker.io/library/busybox:1.36                  application/vnd.oci.image.index.v1+json              "
        "sha256:" + "cd" * 32 + " 2.1 MiB   linux/amd64,linux/arm64 -\n")
    images = inventory.parse_images("k8s.io", listing)
    assert [(i["name"], i["digest"], i["pinned"]) for i in images] == [
        ("localhost/imagebuild/pause:catatonit", "sha256:" + "ab" * 32, True),
        ("docker.io/library/busybox:1.36", "sha256:" + "cd" * 32, False)]
    assert images[0]["labels"]["io.cri-containerd.image"] == "managed" and images[1]["labels"] == {}
