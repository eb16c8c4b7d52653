"""Regenerate imagebuild/defaults/: containerd's own `config default` of every family.

Why: rendering and tests compare against what each containerd family really defaults to; these
files are generated from the real binaries (Debian's), never edited.
"""
from __future__ import annotations

import os
from pathlib import Path

from imagebuild.devtools.debian_artifacts import FAMILIES, binary, fetched_versions, version
from imagebuild.run import run


def defaults_dir() -> Path:
    """Package directory holding the `config default` outputs (imagebuild/defaults)."""
    return Path(__file__).resolve().parents[1] / "defaults"


_DEFAULTS_README = """\
# containerd default configurations

`config-<family>.toml` is, byte for byte, what `containerd config default` prints for that
containerd family, run with the real binary from Debian's `containerd` package:

| file | Debian suite | containerd |
|---|---|---|
{rows}

They are generated, not edited: `make regen-defaults`
(`python -m imagebuild.devtools defaults`) fetches the packages with a private apt
configuration (see `imagebuild/devtools/debian_artifacts.py`) and rewrites every file here.
"""


def regenerate_defaults() -> list[Path]:
    """Write imagebuild/defaults/config-<family>.toml (real `config default` output) + README.

    Why: rendering and tests compare against what each containerd family really defaults to.
    """
    target = defaults_dir()
    target.mkdir(parents=True, exist_ok=True)
    written, rows = [], []
    for family, suite in FAMILIES.items():
        proc = run([str(binary(family)), "config", "default"], what=f"containerd {family} config default",
                   text=False, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        path = target / f"config-{family}.toml"
        path.write_bytes(proc.stdout)
        written.append(path)
        rows.append(f"| `config-{family}.toml` | {suite} | "
                    f"`{fetched_versions(family)['containerd']}` (`containerd --version`: "
                    f"{version(family)}) |")
    readme = target / "README.md"
    readme.write_text(_DEFAULTS_README.format(rows="\n".join(rows)))
    written.append(readme)
    return written
