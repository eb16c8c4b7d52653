"""sha256 of files: images, base images and artifacts are identified by their bytes."""
import hashlib
import os


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of the file at *path*, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
