"""The base image a spec builds on: `--base`, the spec's image.base (checksum-verified), or the built-in
one of its image.os and architecture; and the firmware that image boots under."""
from __future__ import annotations

from pathlib import Path

from imagebuild.build import baseimage
from imagebuild.digest import sha256_file
from imagebuild.errors import ImagebuildError
from imagebuild.spec import Spec


def resolve_base(spec: Spec, base: str | None) -> tuple[str, str]:
    """(source, sha256:checksum) of the base image: --base, the spec's, or the built-in base image."""
    if base:
        path = Path(base).resolve()
        if not path.is_file():
            raise ImagebuildError(f"base image {base} does not exist")
        return str(path), "sha256:" + sha256_file(path)
    if spec.image.base:
        source = spec.image.base.source
        if "://" not in source:
            path = Path(source).resolve()
            if not path.is_file():
                raise ImagebuildError(f"image.base.source: {source} does not exist")
            actual = "sha256:" + sha256_file(path)
            if actual != spec.image.base.checksum:
                raise ImagebuildError(f"image.base.checksum: {source} has {actual}, the spec expects "
                                      f"{spec.image.base.checksum}; nothing was built")
            source = str(path)
        return source, spec.image.base.checksum
    path = baseimage.build(flavor=baseimage.Flavor.of(spec.image.os, spec.image.architecture))
    return str(path), baseimage.checksum(path)


def boot_mode(spec: Spec, base_source: str) -> str:
    """The firmware the image boots under, as EC2's BootMode: the built-in base image's layout
    (amd64 hybrid: uefi-preferred, arm64: uefi), or for a base of your own its image.base.boot_mode
    (default legacy-bios on amd64: an image of unknown layout boots under BIOS; uefi on arm64)."""
    flavor = baseimage.Flavor.of(spec.image.os, spec.image.architecture)
    if baseimage.built_from_recipe(base_source, flavor):
        return flavor.boot_mode
    if spec.image.base and spec.image.base.boot_mode:
        return spec.image.base.boot_mode
    return "uefi" if spec.image.architecture == "arm64" else "legacy-bios"
