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


def pieces() -> list[tuple[str, Callable[[], object]]]:
    """(what, build) in the order the suite first needs them (tests/conftest.py runs the boots last)."""
    out: list[tuple[str, Callable[[], object]]] = []
    out += [(f"Debian's containerd {family}", partial(debian_artifacts.fetch, family))
            for family in debian_artifacts.FAMILIES]
    out += [(f"containerd {version}", partial(upstream.containerd, version))
            for version in families.UPSTREAM_ONLY.values()]
    out += [(f"runc {version}", partial(upstream.runc, version))
            for version in sorted({built for _, built in upstream.RUNC.values()})]
    out += [("CNI plugins", upstream.cni_plugins), ("crictl", upstream.crictl), ("actionlint", actionlint.actionlint)]
    out += [(f"containerd {family} (upstream's)", partial(_upstream_of_debian_family, family))
            for family in debian_artifacts.FAMILIES]
    out += [(f"base image {flavor.release} {flavor.arch}", partial(baseimage.build, flavor=flavor))
            for flavor in (baseimage.DEFAULT, baseimage.Flavor.of("debian-13", "amd64"))]
    return out


def _upstream_of_debian_family(family: str) -> object:
    """Upstream's build of the release Debian packages for *family* (the e2e boots serve it)."""
    return upstream.containerd(families.release(family))


def run() -> int:
    """Build every piece; the first failure stops it (the test that needs the piece builds it again and
    fails there, with the error in its own output)."""
    for what, build in pieces():
        started = time.monotonic()
        build()
        step(f"prebuild: {what} ready ({time.monotonic() - started:.0f} s)")
    return 0
