"""OCI image archives (an image layout in a tar: oci-layout, index.json, blobs/sha256/*), read on the
build host: the sandbox image of an air-gapped bake (image.sandbox.archive), checked before the build
VM sees it.

An archive names its images in the index's annotations: `io.containerd.image.name` (what `ctr images
import` uses, a full reference) or `org.opencontainers.image.ref.name` (a full reference, or only a
tag, which names nothing here). Names are compared as containerd normalizes them: `pause:3.10` is
`docker.io/library/pause:3.10`.
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from pathlib import Path

from imagebuild.errors import ImagebuildError
from imagebuild.render.downloads import open_url
from imagebuild.spec.fields import normalized

NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
MAX_INDEX = 1 << 20  # index.json is a few hundred bytes; refuse a hostile one


def fetch(url: str, sha256: str, dest: Path, timeout: float = 300) -> Path:
    """Copy the archive at *url* (https://, file:// or an absolute path) to *dest*, atomically, only
    if its sha256 is *sha256*."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    tmp = Path(name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            if url.startswith("https://"):
                with open_url(url, timeout=timeout) as response:  # https only, redirects included
                    _copy(response, out, digest)
            else:
                with open(url.removeprefix("file://"), "rb") as source:
                    _copy(source, out, digest)
        if digest.hexdigest() != sha256:
            raise ImagebuildError(f"image.sandbox.archive: {url} has sha256 {digest.hexdigest()}, the spec expects "
                                  f"{sha256}; nothing was built")
        os.replace(tmp, dest)
    except (OSError, ValueError) as exc:
        raise ImagebuildError(f"image.sandbox.archive: cannot read {url}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _copy(source, out, digest) -> None:
    while chunk := source.read(1 << 20):
        digest.update(chunk)
        out.write(chunk)


def images(path: Path) -> dict[str, str]:
    """{normalized name: manifest digest} of every named image in the archive at *path*."""
    try:
        with tarfile.open(path) as tar:
            member = tar.getmember("index.json")
            if member.size > MAX_INDEX:
                raise ImagebuildError(f"{path}: index.json is {member.size} bytes, not an image index")
            raw = tar.extractfile(member)
            index = json.loads(raw.read() if raw else b"")
    except (OSError, KeyError, ValueError, tarfile.TarError) as exc:
        raise ImagebuildError(f"{path} is not an OCI image archive (no readable index.json: {exc})") from None
    out = {}
    for desc in index.get("manifests", []) if isinstance(index, dict) else []:
        annotations = desc.get("annotations") or {}
        for key in NAME_ANNOTATIONS:
            name = annotations.get(key, "")
            if "/" in name or (name and ":" in name and not name.startswith(":")):
                out[normalized(name)] = desc.get("digest", "")
                break
    return out


def blobs(path: Path) -> set[str]:
    """The digests (sha256:...) of every blob the archive at *path* carries."""
    with tarfile.open(path) as tar:
        return {"sha256:" + m.name.rsplit("/", 1)[1] for m in tar.getmembers()
                if m.isfile() and m.name.lstrip("./").startswith("blobs/sha256/")}


def _blob(tar: tarfile.TarFile, digest: str, limit: int | None = MAX_INDEX) -> bytes:
    member = tar.getmember(f"blobs/sha256/{digest.removeprefix('sha256:')}")
    if limit is not None and member.size > limit:
        raise ImagebuildError(f"blob {digest} is {member.size} bytes, more than a manifest or config holds")
    raw = tar.extractfile(member)
    return raw.read() if raw else b""


def program(path: Path, manifest_digest: str) -> dict | None:
    """The program the image of *manifest_digest* runs ({"path", "sha256"}: its entrypoint, else its
    command's first word, as a regular file in the top-most layer that has it); None when it has none."""
    try:
        with tarfile.open(path) as tar:
            manifest = json.loads(_blob(tar, manifest_digest))
            config = json.loads(_blob(tar, manifest["config"]["digest"])).get("config") or {}
            argv = (config.get("Entrypoint") or []) + (config.get("Cmd") or [])
            if not argv:
                return None
            want = argv[0].lstrip("/")
            for layer in reversed(manifest.get("layers", [])):
                raw = tar.extractfile(tar.getmember(f"blobs/sha256/{layer['digest'].removeprefix('sha256:')}"))
                with tarfile.open(fileobj=raw, mode="r|*") as files:
                    for member in files:
                        if member.name.lstrip("./") == want and member.isfile():
                            data = files.extractfile(member)
                            return {"path": argv[0], "sha256": hashlib.sha256(data.read() if data else b"").hexdigest()}
    except (OSError, KeyError, ValueError, TypeError, tarfile.TarError) as exc:
        raise ImagebuildError(f"{path}: cannot read the image {manifest_digest}: {exc}") from None
    return None


def sandbox_archive(url: str, sha256: str, image: str, dest: Path) -> dict:
    """Fetch and check the sandbox archive: it must hold *image* under that name. Returns what the
    manifest records: {"name", "digest", "archive_sha256", "program", "blobs"}."""
    fetch(url, sha256, dest)
    held = images(dest)
    want = normalized(image)
    if want not in held:
        dest.unlink(missing_ok=True)
        names = ", ".join(sorted(held)) or "no named image"
        raise ImagebuildError(f"image.sandbox.archive: {url} holds {names}, not config.sandbox_image {image} "
                              f"({want}); nothing was built")
    return {"name": want, "digest": held[want], "archive_sha256": sha256, "program": program(dest, held[want]),
            "blobs": sorted(blobs(dest))}
