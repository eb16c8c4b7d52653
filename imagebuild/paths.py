"""Where imagebuild keeps what it downloads or builds once and reuses."""
import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """`$IMAGEBUILD_CACHE` (or ~/.cache/imagebuild), joined with *parts*, created on demand."""
    root = Path(os.environ.get("IMAGEBUILD_CACHE") or Path.home() / ".cache" / "imagebuild")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
