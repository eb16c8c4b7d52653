"""The inventory of a baked image: the JSON document imagebuild/guest/inventory.py writes inside the build
VM (packages, binaries, containerd's images and config dump, units, kernel), read back and checked here.

Everything the SBOM and `imagebuild diff` say about an image comes from this one document.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imagebuild.errors import ImagebuildError

SCHEMA = "imagebuild-inventory/1"

#: key path -> the JSON type it must have (the parts the SBOM and diff read).
SHAPE: dict[tuple[str, ...], type] = {
    ("os",): dict,
    ("kernel",): dict,
    ("kernel", "release"): str,
    ("dpkg",): dict,
    ("dpkg", "packages"): list,
    ("binaries",): list,
    ("containerd",): dict,
    ("containerd", "config_dump"): str,
    ("containerd", "images"): list,
    ("containerd", "content"): list,
    ("containerd", "unit"): str,
    ("imagebuild_files",): list,
    ("unit_files",): dict,
}
#: The keys every element of a list must have.
ITEM_KEYS = {
    ("dpkg", "packages"): ("name", "version", "architecture"),
    ("binaries",): ("path", "name", "kind", "sha256", "version"),
    ("containerd", "images"): ("namespace", "name", "digest"),
    ("imagebuild_files",): ("path",),
}


def check(document: Any, where: str) -> dict:
    """*document* if it is an inventory of this schema with every part the SBOM and diff read, else an
    ImagebuildError naming the key path, what it holds and what is expected."""
    if not isinstance(document, dict):
        raise ImagebuildError(f"{where}: an inventory is a JSON object, got {type(document).__name__}")
    if document.get("schema") != SCHEMA:
        raise ImagebuildError(f"{where}: schema: got {document.get('schema')!r}, expected {SCHEMA!r} "
                              "(written by imagebuild's in-guest inventory)")
    for path, kind in SHAPE.items():
        node: Any = document
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, kind):
            raise ImagebuildError(f"{where}: {'.'.join(path)}: got {_show(node)}, expected a JSON "
                                  f"{'object' if kind is dict else 'array' if kind is list else 'string'}")
    for path, keys in ITEM_KEYS.items():
        items = document[path[0]] if len(path) == 1 else document[path[0]][path[1]]
        for index, item in enumerate(items):
            missing = [k for k in keys if not isinstance(item, dict) or k not in item]
            if missing:
                raise ImagebuildError(f"{where}: {'.'.join(path)}[{index}]: missing {', '.join(missing)}")
    return document


def load(path: Path) -> dict:
    """The inventory in the file at *path*, checked."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ImagebuildError(f"cannot read the inventory {path}: {exc.strerror or exc}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ImagebuildError(f"{path}: not JSON: {exc}") from None
    return check(document, str(path))


def _show(value: Any) -> str:
    text = json.dumps(value) if value is not None else "nothing"
    return text if len(text) <= 40 else text[:37] + "..."


def image_digest(document: dict, name: str, namespace: str = "k8s.io") -> str | None:
    """The digest containerd holds for the image *name* (normalized) in *namespace* (CRI's), or None."""
    return next((image["digest"] for image in document["containerd"]["images"]
                 if image["name"] == name and image["namespace"] == namespace), None)
