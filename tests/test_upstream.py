"""Upstream's containerd, runc and CNI plugins built from the Go module proxy at their release tags
(devtools.upstream): what make golden and the end-to-end tests serve as release files."""
from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from devtools import upstream
from imagebuild.errors import ImagebuildError
from tests.support import FAMILY_VERSIONS

pytestmark = pytest.mark.slow


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
    assert runc.startswith(f"runc version {upstream.RUNC_VERSION}\n") and "libseccomp:" in runc
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
