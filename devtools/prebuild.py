"""Everything `make test` builds or fetches once into the cache, in the order the suite needs it: Debian's
containerd families, upstream's containerd of every family with its runc, the CNI plugins, crictl and
actionlint (all from the Go module proxy), then the Debian 12 and 13 base images.

`make test` starts this in the background when pytest starts (tests/conftest.py), so that the first build on
a fresh machine overlaps the tests that need none of it (the spec, render and AWS tests; the end-to-end boots
run last). Each piece is built under its own lock, exactly as a test builds it on demand: a test that needs
a piece not built yet waits for this build of it or builds it itself, never both. Once cached, this is a few
seconds of stamp reads.
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


def pieces(lane: str | None = None) -> list[tuple[str, Callable[[], object]]]:
    """(what, build) of *lane* (default: both, Go first), each lane in the order the suite first needs it
    (tests/conftest.py runs the boots last)."""
    go: list[tuple[str, Callable[[], object]]] = []
    go += [(f"containerd {version}", partial(upstream.containerd, version))
           for version in families.UPSTREAM_ONLY.values()]
    go += [(f"runc {version}", partial(upstream.runc, version))
           for version in sorted({built for _, built in upstream.RUNC.values()})]
    go += [("CNI plugins", upstream.cni_plugins), ("crictl", upstream.crictl), ("actionlint", actionlint.actionlint)]
    go += [(f"containerd {family} (upstream's)", partial(_upstream_of_debian_family, family))
           for family in debian_artifacts.FAMILIES]
    images: list[tuple[str, Callable[[], object]]] = []
    images += [(f"Debian's containerd {family}", partial(debian_artifacts.fetch, family))
               for family in debian_artifacts.FAMILIES]
    images += [(f"base image {flavor.release} {flavor.arch}", partial(baseimage.build, flavor=flavor))
               for flavor in (baseimage.DEFAULT, baseimage.Flavor.of("debian-13", "amd64"))]
    return {"go": go, "images": images, None: go + images}[lane]


def _upstream_of_debian_family(family: str) -> object:
    """Upstream's build of the release Debian packages for *family* (the e2e boots serve it)."""
    return upstream.containerd(families.release(family))


def run(lane: str | None = None) -> int:
    """Build every piece of *lane* (default: all); the first failure stops it (the test that needs the piece
    builds it again and fails there, with the error in its own output)."""
    for what, build in pieces(lane):
        started = time.monotonic()
        build()
        step(f"prebuild: {what} ready ({time.monotonic() - started:.0f} s)")
    return 0
