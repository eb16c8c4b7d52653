"""Everything `make test` builds or fetches once into the cache: Debian's containerd families, upstream's
containerd of every family with its runc, the CNI plugins, crictl and actionlint (all from the Go module proxy),
and the Debian 12 and 13 base images.

`make test` starts this beside its two pytest processes (devtools/testrun.py), one process per lane, so that
the first build on a fresh machine overlaps the tests: the Go lane builds first what the boots serve (BOOTED),
while the fast tests and the boots that need no build run, then the rest; the fast tests that use a Go build
(marked `builds`) run last. Each piece is built under its own lock, exactly as a
test builds it on demand: a test that needs a piece not built yet waits for this build of it or builds it
itself, never both. Once cached, this is a few seconds of stamp reads.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

from devtools import actionlint, debian_artifacts, families, upstream
from imagebuild.build import baseimage
from imagebuild.progress import step

#: The two lanes `make test` runs side by side: Go builds use the CPUs, image builds mostly the network and disk.
LANES = ("go", "images")
#: The families whose upstream builds `make test`'s boots serve, in the order the boots first need them
#: (tests/e2e: the golden bake's 1.6, the user-data boot's 1.7 with the CNI plugins, Debian 13's 2.3 LTS): the
#: Go lane builds each with its runc first, the CNI plugins after BOOTED_WITH_CNI, so the first boot waits only
#: for its own family.
BOOTED = ("1.6", "1.7", "2.3")
BOOTED_WITH_CNI = "1.7"


def pieces(lane: str | None = None) -> list[tuple[str, Callable[[], object]]]:
    """(what, build) of *lane* (default: both, Go first), each lane in the order the suite first needs it:
    the boots' pieces, then the fast `builds` tests' (tests/conftest.py runs them last)."""
    go: list[tuple[str, Callable[[], object]]] = []
    for family in BOOTED:
        go += [(f"containerd {family}", partial(_containerd, family))]
        go += [(f"runc {upstream.RUNC[family][1]}", partial(upstream.runc, upstream.RUNC[family][1]))]
        go += [("CNI plugins", upstream.cni_plugins)] if family == BOOTED_WITH_CNI else []
    go += [(f"containerd {family}", partial(_containerd, family)) for family in upstream.RUNC if family not in BOOTED]
    go += [(f"runc {version}", partial(upstream.runc, version))
           for version in dict.fromkeys(runc for _, runc in upstream.RUNC.values())]
    go = list({what: (what, build) for what, build in go}.values())   # each piece once, where first named
    go += [("crictl", upstream.crictl), ("actionlint", actionlint.actionlint)]
    images: list[tuple[str, Callable[[], object]]] = []
    images += [(f"Debian's containerd {family}", partial(debian_artifacts.fetch, family))
               for family in debian_artifacts.FAMILIES]
    images += [(f"base image {flavor.release} {flavor.arch}", partial(baseimage.build, flavor=flavor))
               for flavor in (baseimage.DEFAULT, baseimage.Flavor.of("debian-13", "amd64"))]
    return {"go": go, "images": images, None: go + images}[lane]


def _containerd(family: str) -> object:
    """Upstream's build of *family*'s release (families.release: the Debian package's release, or the latest
    patch of a family Debian does not package)."""
    return upstream.containerd(families.release(family))


def run(lane: str | None = None) -> int:
    """Build every piece of *lane* (default: all); the first failure stops it (the test that needs the piece
    builds it again and fails there, with the error in its own output)."""
    for what, build in pieces(lane):
        started = time.monotonic()
        build()
        step(f"prebuild: {what} ready ({time.monotonic() - started:.0f} s)")
    return 0
