"""The registry-free OCI image verify runs in the guest, made from bytes the package carries.

Why: verify must run a real container with no registry, no apt and no network. The image's one
program is a tiny static executable (`<arch>.bin`, assembled from `<arch>.s` beside it; see that
file for what it does) linked as /bin/echo, /bin/sleep, /bin/pause, /bin/true and /bin/false.
Everything here is deterministic: the same package gives the same image sha256s on any machine.
`python -m devtools testimage` re-assembles the program from its source.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

from imagebuild.errors import ImagebuildError

#: Name under which the test image is imported.
TEST_IMAGE_REF = "docker.io/library/imagebuild-test:latest"

#: Where the program sits in the image, and the applets linked to it (its argv[0] picks one).
PROGRAM = "bin/imagebuild-test"
APPLETS: tuple[str, ...] = ("echo", "false", "pause", "sleep", "true")

#: Image architecture (OCI/Debian name) -> sha256 of the committed `<arch>.bin`.
PROGRAM_SHA256 = {"amd64": "542f4755c07b453813f32d110642f519638d2dadcd6f30dee73b96433cd18fcb",
                  "arm64": "93cd83474a358d330571ca76924c98510ff0e8948c68a2f4be99b139522996dc"}

#: Image architecture -> the ELF e_machine its program must carry (EM_X86_64, EM_AARCH64).
ELF_MACHINE = {"amd64": 62, "arm64": 183}

#: The default command: a process that stays up (a pod sandbox's), ending with status 0 on SIGTERM.
DEFAULT_CMD: tuple[str, ...] = ("/bin/pause",)

_FIXED_MTIME = 0  # every archive member gets this mtime, so sha256s are reproducible
_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def source_path(arch: str = "amd64") -> Path:
    """The assembly source of *arch*'s program."""
    return Path(__file__).resolve().parent / f"{arch}.s"


def program_path(arch: str = "amd64") -> Path:
    """The committed program of *arch* (what `source_path(arch)` assembles to)."""
    return Path(__file__).resolve().parent / f"{arch}.bin"


def program(arch: str = "amd64") -> bytes:
    """The bytes of *arch*'s program, checked against their pinned sha256."""
    if arch not in PROGRAM_SHA256:
        raise ImagebuildError(f"no test image program for architecture {arch!r}; "
                              f"carried: {', '.join(sorted(PROGRAM_SHA256))}")
    data = program_path(arch).read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != PROGRAM_SHA256[arch]:
        raise ImagebuildError(f"{program_path(arch)} has sha256 {got}, not the pinned "
                              f"{PROGRAM_SHA256[arch]}: reinstall imagebuild")
    machine = elf_machine(data)
    if machine != ELF_MACHINE[arch]:
        raise ImagebuildError(f"{program_path(arch)} is not a 64-bit little-endian ELF for {arch} "
                              f"(e_machine {machine}, expected {ELF_MACHINE[arch]})")
    return data


def elf_machine(data: bytes) -> int | None:
    """The e_machine of a 64-bit little-endian ELF file, None when *data* is not one."""
    if len(data) < 64 or data[:6] != b"\x7fELF\x02\x01":
        return None
    return int.from_bytes(data[18:20], "little")


def tar_info(name: str, size: int = 0, mode: int = 0o755, kind: bytes = tarfile.REGTYPE,
             linkname: str = "") -> tarfile.TarInfo:
    """A tar member with fixed mtime and owner (root), so archives are reproducible."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type, info.linkname = size, mode, kind, linkname
    info.mtime, info.uid, info.gid, info.uname, info.gname = _FIXED_MTIME, 0, 0, "root", "root"
    return info


def _blob(blobs: dict[str, bytes], data: bytes, media_type: str) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _layer(arch: str) -> bytes:
    """The image's single layer: the program, its applet links, /etc/passwd, /etc/group, /tmp."""
    prog = program(arch)
    files = {
        "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
        "etc/passwd": b"root:x:0:0:root:/root:/bin/false\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(tar_info("bin/", kind=tarfile.DIRTYPE))
        tar.addfile(tar_info(PROGRAM, len(prog)), io.BytesIO(prog))
        for applet in APPLETS:
            tar.addfile(tar_info(f"bin/{applet}", mode=0o777, kind=tarfile.SYMTYPE,
                                 linkname=Path(PROGRAM).name))
        tar.addfile(tar_info("etc/", kind=tarfile.DIRTYPE))
        for name, data in files.items():
            tar.addfile(tar_info(name, len(data), mode=0o644), io.BytesIO(data))
        tar.addfile(tar_info("root/", mode=0o700, kind=tarfile.DIRTYPE))
        tar.addfile(tar_info("tmp/", mode=0o1777, kind=tarfile.DIRTYPE))
    return buf.getvalue()


def test_oci_image(out_path: Path | str, cmd: tuple[str, ...] = DEFAULT_CMD, *,
                   arch: str = "amd64") -> dict[str, str]:
    """Write the test image as an OCI image-layout tarball to *out_path*, for `ctr image import`.

    One uncompressed layer (see `_layer`), Cmd *cmd* (default: /bin/pause, a process that stays
    up, as a pod sandbox image needs), linux/*arch*; every member has fixed metadata, so every
    sha256 is reproducible. Written atomically. Returns {"path", "ref", "digest"} (digest = the
    manifest's).
    """
    return oci_archive(out_path, _layer(arch), {"Cmd": list(cmd), "Env": [_PATH_ENV]}, TEST_IMAGE_REF, arch=arch)


def oci_archive(out_path: Path | str, layer: bytes, config: dict, ref: str, *, arch: str = "amd64") -> dict[str, str]:
    """An OCI image-layout tarball at *out_path* of one image named *ref* (`io.containerd.image.name`, what
    `ctr images import` names it): one uncompressed *layer*, the image config's `config` *config*,
    linux/*arch*. Reproducible and written atomically. Returns {"path", "ref", "digest"} (the manifest's)."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    blobs: dict[str, bytes] = {}
    layer_desc = _blob(blobs, layer, "application/vnd.oci.image.layer.v1.tar")
    image_config = {
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    config_desc = _blob(blobs, _json_bytes(image_config), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = _blob(blobs, _json_bytes(manifest), "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["annotations"] = {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref}
    manifest_desc["platform"] = {"architecture": arch, "os": "linux"}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}

    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")  # concurrent writers don't mix
    tmp = Path(name)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"})),
                           ("index.json", _json_bytes(index))):
            tar.addfile(tar_info(name, len(data), mode=0o644), io.BytesIO(data))
        tar.addfile(tar_info("blobs/", kind=tarfile.DIRTYPE))
        tar.addfile(tar_info("blobs/sha256/", kind=tarfile.DIRTYPE))
        for digest in sorted(blobs):
            data = blobs[digest]
            tar.addfile(tar_info(f"blobs/sha256/{digest.split(':', 1)[1]}", len(data), mode=0o644),
                        io.BytesIO(data))
    tmp.chmod(0o644)
    os.replace(tmp, out)
    return {"path": str(out), "ref": ref, "digest": manifest_desc["digest"]}


test_oci_image.__dict__["__test__"] = False  # a builder, not a pytest test (its name starts with test_)
