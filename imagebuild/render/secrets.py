"""Where a spec's literal secrets go among the outputs, kept root-only, and said.

The outputs that hold a literal secret (imagebuild.spec.secrets: a mirror endpoint's header values) are
known by construction (:func:`outputs`): the registry's payload hosts.toml (or the document the node writes
it from, when another of its headers is read on the node: imagebuild.render.secret_refs), spec.json (when the
spec holds it, not when it names a file or env the build host read) and user-data (it carries the payload).
imagebuild.render.render_all writes each 0600, and write_tree makes
a tree holding one 0700. install.sh, expected.json and the Packer template carry none of them
(only paths and sha256), nor does a bake's manifest.json. The user-data goes into instance metadata, which
anything on the instance that reaches the metadata service can read: it is written only when the user
accepts that (`--accept-secret-in-metadata`).
"""
from __future__ import annotations

import stat
from collections.abc import Iterable
from pathlib import Path

from imagebuild.render import secret_refs
from imagebuild.spec.model import Spec
from imagebuild.spec.secrets import Secret, literal_secrets

#: The flag that lets user-data carry a literal secret into instance metadata.
ACCEPT_FLAG = "--accept-secret-in-metadata"
PRIVATE = 0o600


def outputs(spec: Spec) -> dict[str, list[Secret]]:
    """Render-relative path -> the literal secrets it holds (only the outputs that hold one)."""
    found: dict[str, list[Secret]] = {}
    written_on_node = {refs[0].path: secret_refs.refs_path(host) for host, refs in secret_refs.on_node(spec).items()}
    for secret in literal_secrets(spec):
        for rel in (f"payload{written_on_node.get(secret.path, secret.path)}",
                    *(["spec.json"] if secret.recorded else []), "user-data"):
            found.setdefault(rel, []).append(secret)
    return found


def private(mode: int) -> bool:
    """A file mode no one but its owner can read."""
    return not mode & 0o077


def where_they_went(spec: Spec, written: Iterable[str], base: Path | str) -> list[str]:
    """One warning per literal secret naming every place it went: the files *written* under *base* (paths
    relative to it: a render tree or a Packer directory), and the node file it is installed to."""
    holding = outputs(spec)
    lines = []
    for secret in literal_secrets(spec):
        places = [str(Path(base) / rel) for rel in written if secret in holding.get(rel, ())]
        kind = "a literal secret" if secret.recorded else "a secret read on this host (spec.json records where)"
        lines.append(f"{secret.key} is {kind}; it is in {', '.join(places)} (each 0600, in a 0700 "
                     f"directory) and goes to {secret.path} (0600) on every node")
    return lines


def refused_in_metadata(spec: Spec) -> list[str]:
    """The key paths of the literal secrets user-data would carry into instance metadata."""
    return [secret.key for secret in literal_secrets(spec)]


def open_to_others(directory: Path) -> bool:
    """Whether users other than the owner can enter *directory* (a place a 0600 file should not sit in)."""
    try:
        return bool(directory.stat().st_mode & (stat.S_IXGRP | stat.S_IXOTH))
    except OSError:
        return False
