"""Shared pytest configuration and fixtures."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def release_16(tmp_path_factory):
    """Release-shaped containerd 1.6 + runc artifacts served from 127.0.0.1 (ephemeral port).

    Yields {"url": base URL, "dir": Path, "containerd": {...}, "runc": {...}} as
    debian_artifacts.release_tarballs returns them. gzip level 1 keeps the fixture ~1 s.
    """
    from imagebuild import debian_artifacts

    directory = tmp_path_factory.mktemp("release-1.6")
    artifacts = debian_artifacts.release_tarballs("1.6", directory, compresslevel=1)
    with debian_artifacts.serve(directory) as url:
        yield {"url": url, "dir": directory, **artifacts}
