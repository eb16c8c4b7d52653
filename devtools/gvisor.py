"""gVisor's runsc and its containerd shim (containerd-shim-runsc-v1), built from the Go module proxy: what the
tests and the gVisor verify boot serve as gVisor's release binaries.

gVisor's Go-buildable tree is its `go` branch (generated code included; the main branch builds with Bazel
only). The proxy has no tagged versions of gvisor.dev/gvisor, only pseudo-versions of that branch's commits;
the one pinned here is the `go` branch's merge of release-20260216.0's own commit (the newest release whose
exact commit the proxy serves), so the binaries are that release's source, and runsc reports that release as
its version (the `-X` upstream's build stamps). Static, without cgo, as gVisor ships them.
"""
from __future__ import annotations

from pathlib import Path

from devtools import upstream
from imagebuild.paths import cache_dir

#: The one pin: gVisor release and the `go` branch pseudo-version of exactly that release's commit.
RELEASE = "release-20260216.0"
MODULE = "gvisor.dev/gvisor"
VERSION = "0.0.0-20260213200628-444f74c20034"
#: binary name -> its main package in the module (`go install` names a binary after its package's directory).
BINARIES = {"runsc": f"{MODULE}/runsc", "containerd-shim-runsc-v1": f"{MODULE}/shim"}


def binaries() -> Path:
    """A directory holding `runsc` and `containerd-shim-runsc-v1` of the pinned release (built once, cached)."""
    target = cache_dir("upstream") / f"gvisor-{RELEASE}-linux-amd64"

    def build(tmp: Path) -> dict:
        revision = "gomod-" + upstream.module_info(MODULE, VERSION)["Sum"]
        ldflags = f"-s -w -X {MODULE}/runsc/version.version={RELEASE}"
        packages = [f"{pkg}@v{VERSION}" for pkg in BINARIES.values()]
        upstream._go(["install", "-trimpath", "-ldflags", ldflags, *packages], f"go install gVisor {RELEASE}",
                     env={"GOBIN": str(tmp)})
        for name, pkg in BINARIES.items():
            (tmp / pkg.rsplit("/", 1)[1]).rename(tmp / name)
        return {"module": MODULE, "version": VERSION, "release": RELEASE, "revision": revision}

    upstream._once(target, f"gVisor {RELEASE} (runsc, containerd-shim-runsc-v1)", build)
    return target
