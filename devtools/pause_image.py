"""A real pause image with no registry: Debian's `catatonit` (podman's infra process; `catatonit -P` is its
pause mode, what a pod sandbox runs) in an OCI archive, for bakes whose sandbox image comes from an
archive (image.sandbox.source archive): the Debian 13 golden's e2e test and the fast CRI tests.

Its name is a local one that says what it is (`localhost/imagebuild/catatonit-pause:<version>`), never a
registry's: the image is what that name says, so it may be baked in.
"""
from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

from imagebuild.digest import sha256_file
from imagebuild.errors import ImagebuildError
from imagebuild.verify.testimage import oci_archive, tar_info

CATATONIT = Path("/usr/bin/catatonit")
REPOSITORY = "localhost/imagebuild/catatonit-pause"


def catatonit_version() -> str:
    """The Debian package's upstream version (`dpkg-query`), e.g. 0.1.7."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "catatonit"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        raise ImagebuildError("the Debian package catatonit is not installed (apt-get install catatonit)") from None
    return out.split(":", 1)[-1].split("-", 1)[0]


def reference() -> str:
    return f"{REPOSITORY}:{catatonit_version()}"


def pause_archive(out: Path, arch: str = "amd64") -> dict[str, str]:
    """Write the pause image's OCI archive to *out*; {"path", "ref", "digest", "sha256"} (the archive file's)."""
    if arch != "amd64" or not CATATONIT.is_file():
        raise ImagebuildError(f"a catatonit pause image is made for amd64 from {CATATONIT} (apt-get install "
                              f"catatonit); asked for {arch}")
    program = CATATONIT.read_bytes()
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(tar_info("catatonit", len(program)), io.BytesIO(program))
    made = oci_archive(out, layer.getvalue(), {"Entrypoint": ["/catatonit", "-P"]}, reference(), arch=arch)
    return made | {"sha256": sha256_file(out)}
