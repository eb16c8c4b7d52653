"""Fixtures for the end-to-end tests: the base image, a local artifact mirror, baked images.

Everything is real: mmdebstrap'd Debian 12 base image, Packer 1.6.6's qemu builder, QEMU (TCG
unless a probe proves KVM works), upstream's containerd and runc built from the Go module proxy and
served as their release files from 127.0.0.1 (10.0.2.2 inside the guest). Expensive products are
session-scoped and built once.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from devtools import upstream
from devtools.golden import GUEST_HOST, local_mirror_spec, mirrored
from devtools.serve import serve
from imagebuild.build import baseimage
from imagebuild.build.bake import bake
from imagebuild.spec import load
from tests.support import FAMILY_VERSIONS, temp_dir_of_its_own


@pytest.fixture(scope="session")
def base_image() -> Path:
    return baseimage.build()


@pytest.fixture(scope="session")
def mirror(tmp_path_factory):
    """Upstream's release files of containerd 1.6 and 1.7 (FAMILY_VERSIONS) with their runc, and the CNI plugins,
    built from the Go module proxy (`devtools.upstream`, as `make golden` serves them), on 127.0.0.1 for amd64
    guests. Yields a function: (spec, family) -> spec with downloads mirrored. A family's files (and the CNI
    plugins) are made when a spec first asks for them, so a first run's golden bake waits only for 1.6 and runc
    (devtools.prebuild.BOOTED: the order the Go lane builds them in). (Debian 13 and arm64 specs:
    `golden.local_mirror`.)
    """
    root = tmp_path_factory.mktemp("mirror")
    made: dict[str, dict] = {}

    def files(family: str) -> dict:
        if family not in made:
            made[family] = (upstream.cni_tarball(root / "cni") if family == "cni" else
                            upstream.release_tarballs(FAMILY_VERSIONS[family], root / family))
        return made[family]

    with serve(root) as url:
        port = url.rsplit(':', 1)[1]

        def mirrored_spec(spec, family: str, *, guest_host: str = GUEST_HOST):
            """*spec* downloading *family*'s containerd and runc from the mirror, sha256 pinned, each artifact
            `insecure: true` (the lab's mirror is plain HTTP; local_mirror_spec sets it). Not through
            `{url}.sha256`: the bake reads a checksum_url on the host (to pin it and for the inputs hash) at
            the guest's address, and the lab has no address both reach (127.0.0.1 here, 10.0.2.2 there); the
            checksum_url paths are proved by tests/test_install_script.py and tests/test_tls_downloads.py
            against real servers. *guest_host*: the host as the guest sees it (qemu.EC2_HOST on the EC2 verify
            boot's network)."""
            if family not in ("1.6", "1.7"):
                raise ValueError(f"the e2e mirror serves containerd 1.6 and 1.7, not {family!r}")
            guest_url = f"http://{guest_host}:{port}"
            artifacts = files(family)
            return local_mirror_spec(spec, mirrored(artifacts["containerd"], guest_url, root),
                                     mirrored(artifacts["runc"], guest_url, root),
                                     mirrored(files("cni"), guest_url, root) if spec.containerd.install.cni_plugins
                                     else None)
        yield mirrored_spec


@pytest.fixture(scope="session")
def golden_spec(mirror):
    return mirror(load(), "1.6")


@pytest.fixture(scope="session")
def golden_bake(golden_spec, base_image, tmp_path_factory) -> tuple[Path, list[str]]:
    """The default spec's golden image, baked once for the session, and what the bake left in
    the temporary directory (it runs with one of its own: see temp_dir_of_its_own)."""
    with temp_dir_of_its_own() as tmp:
        image = bake(golden_spec, tmp_path_factory.mktemp("golden") / "output", base=str(base_image))
        left = sorted(p.name for p in tmp.iterdir())
    return image, left


@pytest.fixture(scope="session")
def golden_image(golden_bake) -> Path:
    return golden_bake[0]
