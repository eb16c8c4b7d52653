"""Which real containerd runs each family imagebuild carries, for the tests and `make regen-defaults`.

The families Debian packages (1.6, 1.7, 2.1: `debian_artifacts.FAMILIES`) run Debian's binaries, as they
always have here; the others (2.0, 2.2, 2.3 LTS, 2.4) have no Debian package to take them from, so they run
upstream's build of the family's latest patch release on the Go module proxy (`devtools.upstream`). Every
family's runc is upstream's static build of the runc its release names (`upstream.RUNC`), which runs here.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from devtools import debian_artifacts, upstream
from imagebuild.errors import ImagebuildError

#: Families without a Debian package -> the latest patch release of each on the Go module proxy
#: (`go list -m -versions github.com/containerd/containerd/v2`, read 2026-12-07).
UPSTREAM_ONLY: Mapping[str, str] = MappingProxyType({"2.0": "2.0.14", "2.2": "2.2.10", "2.3": "2.3.7",
                                                     "2.4": "2.4.2"})


def release(family: str) -> str:
    """The containerd release whose binaries stand for *family*: Debian's package's upstream version, or
    the latest patch on the Go module proxy."""
    if family in UPSTREAM_ONLY:
        return UPSTREAM_ONLY[family]
    if family in debian_artifacts.FAMILIES:
        return debian_artifacts.upstream_version(debian_artifacts.fetched_versions(family)["containerd"])
    raise ImagebuildError(f"unknown containerd family {family!r}; known: "
                          f"{', '.join(sorted({*debian_artifacts.FAMILIES, *UPSTREAM_ONLY}))}")


def binary(family: str, name: str = "containerd") -> Path:
    """The real binary *name* (containerd, ctr, containerd-shim-runc-v2) of *family*: Debian's where Debian
    packages the family, else upstream's build of its latest patch."""
    if family in UPSTREAM_ONLY:
        path = upstream.containerd(UPSTREAM_ONLY[family]) / "bin" / name
        if not path.is_file():
            raise ImagebuildError(f"no binary {name!r} in upstream's containerd {UPSTREAM_ONLY[family]}")
        return path
    return debian_artifacts.binary(family, name)


def runc(family: str) -> Path:
    """The runc of *family*'s release files (upstream.RUNC: what its release names, as far as the proxy has it)."""
    if family not in upstream.RUNC:
        raise ImagebuildError(f"unknown containerd family {family!r}; upstream.RUNC knows {', '.join(upstream.RUNC)}")
    return upstream.runc(upstream.RUNC[family][1]) / "runc"
