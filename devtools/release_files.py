"""containerd's, runc's and the CNI plugins' release files as their releases lay them out, written
reproducibly (fixed mtime, owner and order, gzip without name or time) with their upstream-style checksum
files beside them: what `make golden` and the tests serve on 127.0.0.1, from upstream's builds
(devtools.upstream) or Debian's (devtools.debian_artifacts)."""
from __future__ import annotations

import gzip
import os
import shutil
import tarfile
from collections.abc import Mapping
from pathlib import Path

from imagebuild.digest import sha256_file
from imagebuild.verify.testimage import tar_info

#: What containerd's release tarball holds under bin/.
TARBALL_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr")


def write_tarball(path: Path, members: Mapping[str, Path], compresslevel: int) -> None:
    """A reproducible .tar.gz at *path* (atomically): *members* is {name in the archive: file},
    each 0755 with fixed mtime and owner, in the given order; gzip without name or time."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                          compresslevel=compresslevel) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, src in members.items():
            with open(src, "rb") as fh:
                tar.addfile(tar_info(name, src.stat().st_size), fh)
    os.replace(tmp, path)


def _described(path: Path, version: str, suffix: str) -> dict[str, str]:
    """{"path", "sha256", "version"} of *path*, with `<file><suffix>` (`<sha256>  <name>`) written beside it."""
    sha256 = sha256_file(path)
    path.with_name(path.name + suffix).write_text(f"{sha256}  {path.name}\n")
    return {"path": str(path), "sha256": sha256, "version": version}


def containerd_and_runc(out_dir: Path | str, arch: str, containerd_version: str, binaries: Mapping[str, Path],
                        runc_version: str, runc: Path, compresslevel: int = 6) -> dict[str, dict[str, str]]:
    """`containerd-<v>-linux-<arch>.tar.gz` (bin/<each of TARBALL_BINARIES>, from *binaries*) and
    `runc.<arch>` in *out_dir*, each with its `.sha256sum`. {"containerd": {...}, "runc": {...}}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tarball = out / f"containerd-{containerd_version}-linux-{arch}.tar.gz"
    write_tarball(tarball, {f"bin/{name}": binaries[name] for name in TARBALL_BINARIES}, compresslevel)
    runc_file = out / f"runc.{arch}"
    shutil.copyfile(runc, runc_file.with_name(runc_file.name + ".tmp"))
    os.chmod(runc_file.with_name(runc_file.name + ".tmp"), 0o755)
    os.replace(runc_file.with_name(runc_file.name + ".tmp"), runc_file)
    return {"containerd": _described(tarball, containerd_version, ".sha256sum"),
            "runc": _described(runc_file, runc_version, ".sha256sum")}


def cni_plugins_tarball(out_dir: Path | str, arch: str, version: str, plugins: Path,
                        compresslevel: int = 6) -> dict:
    """`cni-plugins-linux-<arch>-v<v>.tgz` (every plugin of the directory *plugins* at `./<name>`) and its
    `.sha256` in *out_dir*. {"path", "sha256", "version", "plugins": [names]}."""
    names = sorted(p.name for p in plugins.iterdir() if p.is_file() and not p.name.startswith("."))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tarball = out / f"cni-plugins-linux-{arch}-v{version}.tgz"
    write_tarball(tarball, {f"./{name}": plugins / name for name in names}, compresslevel)
    return _described(tarball, version, ".sha256") | {"plugins": names}
