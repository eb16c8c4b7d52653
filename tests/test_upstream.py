"""Upstream's containerd, runc and CNI plugins built from the Go module proxy at their release tags
(devtools.upstream): what make golden and the end-to-end tests serve as release files."""
from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from devtools import families, upstream
from imagebuild.errors import ImagebuildError
from tests.support import FAMILY_VERSIONS

pytestmark = [pytest.mark.slow, pytest.mark.builds]   # builds: Go-built pieces, run after the boots


def test_the_wrapper_module_repeats_upstreams_replace_and_exclude_directives():
    go_mod = """module github.com/containerd/containerd

go 1.19

require github.com/a/b v1.0.0

replace (
\tgithub.com/gogo/googleapis => github.com/gogo/googleapis v1.3.2

\t// urfave/cli must be <= v1.22.1
\tgithub.com/urfave/cli => github.com/urfave/cli v1.22.1
\tgithub.com/containerd/containerd/api => ./api
)

replace google.golang.org/genproto => google.golang.org/genproto v0.0.0-20200224152610-e50cd9704f63

// Workaround
exclude github.com/mitchellh/osext v0.0.0-20151018003038-5e2d6d41470f
"""
    assert upstream.directives(go_mod).splitlines() == [
        "replace github.com/gogo/googleapis => github.com/gogo/googleapis v1.3.2",
        "replace github.com/urfave/cli => github.com/urfave/cli v1.22.1",
        "replace google.golang.org/genproto => google.golang.org/genproto v0.0.0-20200224152610-e50cd9704f63",
        "exclude github.com/mitchellh/osext v0.0.0-20151018003038-5e2d6d41470f",
    ]


def test_the_release_files_hold_upstreams_static_binaries_printing_the_release_version(tmp_path):
    """containerd prints the release's version (Debian's build printed 1.6.20~ds1), runc and the CNI
    plugins theirs; each is static, so it runs on every image.os."""
    version = FAMILY_VERSIONS["1.6"]
    made = upstream.release_tarballs(version, tmp_path)
    with tarfile.open(made["containerd"]["path"]) as tar:
        assert tar.getnames() == ["bin/containerd", "bin/containerd-shim-runc-v2", "bin/ctr"]
        tar.extractall(tmp_path / "x", filter="data")
    out = subprocess.run([tmp_path / "x/bin/containerd", "--version"], capture_output=True, text=True).stdout.split()
    assert out[:3] == ["containerd", "github.com/containerd/containerd", f"v{version}"]
    assert out[3].startswith("gomod-h1:")  # the module's go.sum hash: the proxy names no commit
    runc = subprocess.run([made["runc"]["path"], "--version"], capture_output=True, text=True).stdout
    assert runc.startswith(f"runc version {upstream.runc_version(version)}\n") and "libseccomp:" in runc
    for binary in (tmp_path / "x/bin/containerd", tmp_path / "x/bin/ctr", Path(made["runc"]["path"])):
        kind = subprocess.run(["file", "-L", binary], capture_output=True, text=True).stdout
        assert "statically linked" in kind or "static-pie linked" in kind, kind
    cni = upstream.cni_tarball(tmp_path / "cni")
    assert {"bridge", "host-local", "loopback", "portmap"} <= set(cni["plugins"])
    bridge = subprocess.run([upstream.cni_plugins() / "bridge"], capture_output=True, text=True, env={})
    assert f"CNI bridge plugin v{upstream.CNI_VERSION}\n" in bridge.stderr + bridge.stdout


def test_a_release_the_module_proxy_does_not_have_fails_loudly():
    """Never replaced by another build: the error names the module and version."""
    with pytest.raises(ImagebuildError, match=r"github.com/containerd/containerd@v1\.6\.999"):
        upstream.containerd("1.6.999")


def test_each_family_gets_the_runc_its_release_names_as_far_as_the_proxy_serves_it():
    """Every row of upstream.RUNC against upstream's own file (script/setup/runc-version in the module of
    the family's release) and the runc releases the Go module proxy lists today."""
    assert set(upstream.RUNC) == set(FAMILY_VERSIONS)
    served = upstream.module_versions("github.com/opencontainers/runc")
    for family, (named, built) in upstream.RUNC.items():
        release = families.release(family)
        assert release == FAMILY_VERSIONS[family]
        module = "github.com/containerd/containerd" + ("/v2" if release.startswith("2.") else "")
        pin = Path(upstream.module_info(module, release)["Dir"]) / "script/setup/runc-version"
        assert pin.read_text().strip() == named, (family, release)
        assert upstream.runc_for(named, served) == built, (family, named, built)
        assert f"v{built}" in served


@pytest.mark.parametrize(("named", "built"), [
    ("v1.5.2", "1.5.2"),          # named and served
    ("v1.5.9", "1.5.3"),          # a patch the proxy lacks: that minor's newest
    ("v1.4.0", "1.4.0"),
    ("v1.3.6", "1.4.4"),          # a minor before 1.4: 1.4's newest
    ("v1.1.5", "1.4.4"),          # served, but not a minor imagebuild builds
])
def test_the_runc_chosen_for_what_a_release_names(named, built):
    served = ["v1.1.5", "v1.3.6", "v1.4.0", "v1.4.4", "v1.5.0-rc.3", "v1.5.2", "v1.5.3", "v1.6.0-rc.1"]
    assert upstream.runc_for(named, served) == built


@pytest.mark.parametrize(("named", "served", "error"), [
    ("v1.6.0", ["v1.5.3", "v1.6.0"], r"runc v1\.6\.0, newer than the runc minors imagebuild builds \(1\.4, 1\.5\)"),
    ("v1.5.2", ["v1.4.4"], r"serves no runc 1\.5\.x \(served: v1\.4\.4\)"),
    ("main", ["v1.4.4"], r"runc-version 'main' is not a runc release"),
])
def test_a_runc_imagebuild_cannot_choose_is_an_error_naming_it(named, served, error):
    with pytest.raises(ImagebuildError, match=error):
        upstream.runc_for(named, served)
    with pytest.raises(ImagebuildError, match=r"containerd 2\.9\.0 \(family 2\.9\); upstream\.RUNC knows 1\.6"):
        upstream.runc_version("2.9.0")


def test_a_23_familys_runc_prints_15_and_a_17_familys_14():
    """The release files of 2.3 LTS come with runc 1.5 (what containerd 2.3.7 names), 1.7's with 1.4's newest:
    two different builds, each printing its own version."""
    printed = {}
    for family in ("2.3", "1.7"):
        release = upstream.runc_version(FAMILY_VERSIONS[family])
        out = subprocess.run([upstream.runc(release) / "runc", "--version"], capture_output=True, text=True).stdout
        printed[family] = out.splitlines()[0]
        assert "libseccomp:" in out
    assert printed == {"2.3": "runc version 1.5.2", "1.7": "runc version 1.4.4"}


PRIORITY_PROGRAM = """package main

import (
\t"fmt"
\t"os"
\t"syscall"
)

func main() {
\tgroup, _ := os.ReadFile("/proc/self/autogroup")
\tnice, _ := syscall.Getpriority(syscall.PRIO_PROCESS, 0)
\tfmt.Printf("%s|%d\\n", group, 20-nice)
}
"""


def test_go_commands_yield_the_cpus_in_their_own_autogroup_and_process(tmp_path):
    """What a Go command starts (here `go run`'s program) runs at nice 19, and where the kernel has autogroups so
    does its session's autogroup: a boot's QEMU beside a build keeps its CPU share. (Getpriority's raw value
    is 20 - nice.) The negative: `go run` started as run() starts any command reports the nice it inherits."""
    import os
    import re

    from imagebuild.run import run

    (tmp_path / "priority.go").write_text(PRIORITY_PROGRAM)
    group, nice = upstream._go(["run", str(tmp_path / "priority.go")], "go run priority.go").strip().rsplit("|", 1)
    assert int(nice) == 19
    if Path("/proc/self/autogroup").exists():
        assert re.fullmatch(r"/autogroup-\d+ nice 19", group.strip()), group
        assert group.split()[0] != Path("/proc/self/autogroup").read_text().split()[0]   # a session of its own
    plain = run(["go", "run", str(tmp_path / "priority.go")], env=upstream._go_env(False)).stdout
    assert int(plain.strip().rsplit("|", 1)[1]) == os.nice(0) != 19
