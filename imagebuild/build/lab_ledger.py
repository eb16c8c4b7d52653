"""The ledger of lab artifacts: files the developer tools fabricate to stand in for a release (Debian's
builds of containerd, runc and the CNI plugins in release-shaped tarballs), recorded by sha256.

`imagebuild bake` looks up every artifact it installs: one found here is lab content, named in the
image's manifest (`lab_content`), and `imagebuild publish` refuses such an image. The ledger is one
small file per sha256 under the cache directory, so concurrent writers never collide.
"""
from __future__ import annotations

import re
from pathlib import Path

from imagebuild.paths import cache_dir


def _entry(sha256: str) -> Path:
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"not a sha256: {sha256!r}")
    return cache_dir("lab-artifacts") / sha256


def record(sha256: str, what: str) -> None:
    """Note that the file of *sha256* is lab-made, and what it stands in for."""
    entry = _entry(sha256)
    tmp = entry.with_name(f".{entry.name}.tmp")
    tmp.write_text(what.strip() + "\n")
    tmp.replace(entry)


def lookup(sha256: str) -> str | None:
    """What the lab-made file of *sha256* stands in for; None when the lab never made it."""
    try:
        return _entry(sha256).read_text().strip()
    except (OSError, ValueError):
        return None
