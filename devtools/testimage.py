"""Re-assemble the test image's program (imagebuild/verify/testimage/<arch>.s) with binutils.

Why: the package carries the program's bytes so verify needs no toolchain; this proves (and
redoes, after an edit of the source) that those bytes are what the source assembles to.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from imagebuild.errors import ImagebuildError
from imagebuild.run import run
from imagebuild.verify import testimage

#: Debian architecture -> the binutils commands (assembler, objcopy) that target it.
TOOLS = {"amd64": (["as", "--64"], ["objcopy"]),
         "arm64": (["aarch64-linux-gnu-as"], ["aarch64-linux-gnu-objcopy"])}


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    if shutil.which(cmd[0]) is None:
        package = "binutils" if cmd[0] in ("as", "objcopy", "readelf") else "binutils-aarch64-linux-gnu"
        raise ImagebuildError(f"{cmd[0]} not found: install {package}")
    return run(cmd, what=" ".join(cmd))


def assemble(arch: str = "amd64", source: Path | None = None) -> bytes:
    """The program *source* (default: the package's `<arch>.s`) assembles to.

    The source holds the ELF headers itself: `as` makes an object whose .text section is the whole
    executable, `objcopy -O binary` takes it out. An object with relocations would be a program
    with holes, so it is refused.
    """
    assembler, objcopy = TOOLS[arch]
    src = source or testimage.source_path(arch)
    with tempfile.TemporaryDirectory(prefix="imagebuild-testimage-") as tmp:
        obj, out = Path(tmp) / "program.o", Path(tmp) / "program.bin"
        _run([*assembler, "-o", str(obj), str(src)])
        relocs = _run(["readelf", "-r", str(obj)]).stdout
        if "There are no relocations" not in relocs:
            raise ImagebuildError(f"{src} assembles to an object with relocations:\n{relocs.strip()}")
        _run([*objcopy, "-O", "binary", "-j", ".text", str(obj), str(out)])
        return out.read_bytes()


def regenerate(arch: str = "amd64") -> tuple[Path, str]:
    """Rewrite the package's `<arch>.bin` from its source; returns (path, sha256).

    PROGRAM_SHA256 in imagebuild/verify/testimage must then carry that sha256 (the package refuses other bytes).
    """
    data = assemble(arch)
    path = testimage.program_path(arch)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()
