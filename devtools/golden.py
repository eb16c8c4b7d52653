"""`make golden`: the main job end to end on the built-in default spec, on a machine without GitHub.

0. the matrix of what it can build here (image.os x architecture x containerd family);
1. the spec's base image (`imagebuild base-image`, cached: Debian 12 amd64 for the default spec);
2. containerd and runc release downloads, served from 127.0.0.1 (10.0.2.2 from inside QEMU), so the
   install script downloads and checks sha256 exactly as it would from GitHub: on amd64 upstream's own
   builds at the release tags (devtools.upstream, from the Go module proxy); on arm64 Debian's binaries
   in release-shaped files (lab content, which publish refuses);
3. the default spec with only those two download URLs (and their pinned sha256) redirected, and
   image.sandbox.source none where it says registry: the sandbox image's registry is not reachable
   here, and nothing stands in for it in the image (the verify boot's lab serves one to its throwaway
   overlay only);
4. bake, then verify the baked image, printing the verify table.

    python -m devtools golden [--work DIR] [SPEC]      (make golden)
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from imagebuild.progress import step
from imagebuild.spec import Spec, load, parse

GUEST_HOST = "10.0.2.2"  # the host's loopback as QEMU user-mode networking shows it to the guest


def local_mirror_spec(spec: Spec, containerd: dict, runc: dict, cni: dict | None = None) -> Spec:
    """*spec* with its containerd and runc downloads (and the CNI plugins', given *cni*) pointed at a
    mirror, sha256 pinned, and a sandbox image to pull from its registry not baked (no registry here).

    *containerd*, *runc* and *cni* are {"url", "sha256", "version"}.
    """
    doc = yaml.safe_load(yaml.safe_dump(spec.document))  # a deep copy
    install = doc["containerd"]["install"]
    for key, art in (("tarball", containerd), ("runc", runc), ("cni_plugins", cni)):
        if art is not None:
            # insecure: the lab's mirror is plain HTTP on the host's loopback (10.0.2.2 in the guest);
            # the pinned sha256 still proves every byte.
            install[key] = (install.get(key) or {}) | {"url": art["url"], "sha256": art["sha256"],
                                                       "checksum_url": None, "insecure": True}
    install["runc"]["version"] = runc["version"]
    if cni is not None:
        install["cni_plugins"]["version"] = cni["version"]
    if doc["image"]["sandbox"]["source"] == "registry":
        step(f"image.sandbox.source: none (was registry): {doc['config']['sandbox_image']}'s registry is not "
             "reachable from here; the image gets no sandbox image")
        doc["image"]["sandbox"] = {"source": "none", "archive": None}
    return parse(yaml.safe_dump(doc), "spec (local mirror)")


def mirrored(art: dict, base_url: str, root: Path) -> dict:
    """A release_tarballs() entry as {"url", "sha256", "version"} under *base_url* serving *root*."""
    return {"url": f"{base_url}/{Path(art['path']).relative_to(root)}", "sha256": art["sha256"],
            "version": art["version"]}


def upstream_built(spec: Spec) -> bool:
    """Whether local_mirror serves upstream's own builds for *spec* (the build host's architecture, amd64)
    rather than Debian's builds in release-shaped files (lab content: publish refuses the image)."""
    return spec.image.architecture == "amd64"


def served_dir(spec: Spec) -> Path:
    """Where local_mirror assembles and serves *spec*'s containerd and runc."""
    from imagebuild.paths import cache_dir

    if upstream_built(spec):
        return cache_dir("mirror", "upstream", spec.containerd.version)
    return cache_dir("mirror", spec.containerd.family, spec.image.os)


@contextmanager
def local_mirror(spec: Spec) -> Iterator[Spec]:
    """*spec* with containerd and runc (and the CNI plugins, if the spec installs them) served from
    127.0.0.1, while the server runs.

    On amd64 they are upstream's releases, built from the Go module proxy at their tags
    (`devtools.upstream`): containerd.version itself, runc and the CNI plugins of that module's pinned
    releases (static, so they run on every image.os). On another architecture they are Debian's binaries
    of the spec's family in release-shaped files, with the runc that runs on its image.os
    (`debian_artifacts.runc_family`): the lab ledger marks them, and publish refuses such an image.
    """
    from devtools import debian_artifacts, upstream
    from devtools.serve import serve

    family, arch, os_name = spec.containerd.family, spec.image.architecture, spec.image.os
    mirror_dir = served_dir(spec)
    cni = None
    if upstream_built(spec):
        step(f"upstream containerd {spec.containerd.version}, runc {upstream.runc_version(spec.containerd.version)}"
             + (f" and CNI plugins {upstream.CNI_VERSION}" if spec.containerd.install.cni_plugins else "")
             + " as their release files, built from the Go module proxy")
        artifacts = upstream.release_tarballs(spec.containerd.version, mirror_dir)
        if spec.containerd.install.cni_plugins is not None:
            cni = upstream.cni_tarball(mirror_dir / "cni")
    else:
        runc_from = debian_artifacts.runc_family(family, os_name)
        step(f"assembling release-shaped containerd {family} ({arch}) and runc tarballs from Debian's binaries "
             f"(runc of Debian {debian_artifacts.FAMILIES[runc_from]}, which runs on {os_name}): lab content")
        artifacts = debian_artifacts.release_tarballs(family, mirror_dir, arch=arch, runc_from=runc_from)
        if spec.containerd.install.cni_plugins is not None:
            cni = debian_artifacts.cni_tarball(mirror_dir / "cni", arch=arch)
    with serve(mirror_dir) as url:
        guest_url = f"http://{GUEST_HOST}:{url.rsplit(':', 1)[1]}"
        yield local_mirror_spec(spec, mirrored(artifacts["containerd"], guest_url, mirror_dir),
                                mirrored(artifacts["runc"], guest_url, mirror_dir),
                                mirrored(cni, guest_url, mirror_dir) if cni else None)


def matrix() -> list[tuple[str, str, str, str, str]]:
    """(image.os, architecture, boot mode, containerd families, can it be built here and how)."""

    from imagebuild.build import baseimage
    from imagebuild.spec.model import OS_RELEASES
    from imagebuild.vm.accel import host_arch

    host = host_arch()
    rows = []
    for os_name, release in OS_RELEASES.items():
        families = list(release["families"])   # every family: its runc is one that runs on os_name
        for arch in ("amd64", "arm64"):
            flavor = baseimage.Flavor.of(os_name, arch)
            if arch != host:
                note = f"no: {arch} is not this host's architecture (make golden builds {host} only)"
            else:
                cached = baseimage.cached_image(flavor=flavor) is not None
                note = "yes, base image cached" if cached else "yes, base image builds first (~2-3 min)"
            rows.append((os_name, arch, flavor.boot_mode, ", ".join(families), note))
    return rows


def print_matrix(stream=None) -> None:
    import sys

    stream = stream or sys.stdout
    header = ("image.os", "architecture", "boot mode", "containerd", "make golden here")
    rows = [header, *matrix()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        stream.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")
    stream.write("\n")
    stream.flush()


def run(work: Path, spec_path: str | None = None) -> int:
    """Base image, bake through the local mirror, verify; prints the matrix and the verify table. Exit code."""
    import json

    from imagebuild.build import baseimage
    from imagebuild.build.bake import SANDBOX_SAYS, bake
    from imagebuild.verify.boot import print_report, verify_image

    print_matrix()
    spec = load(spec_path)
    base = baseimage.build(flavor=baseimage.Flavor.of(spec.image.os, spec.image.architecture))
    with local_mirror(spec) as local:
        image = bake(local, work.resolve() / "output", base=str(base))
    report = verify_image(image, local)
    print_report(report)
    manifest = json.loads((image.parent / "manifest.json").read_text())
    sandbox = manifest["sandbox_image"]
    print(f"sandbox image {sandbox['name']}: {SANDBOX_SAYS[sandbox['source']]}")
    for what in manifest["lab_content"]:
        print(f"lab content, so `imagebuild publish` refuses this image: {what}")
    return 0 if report["passed"] else 1
