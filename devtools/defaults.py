"""Regenerate imagebuild/defaults/: containerd's own `config default` of every family: upstream's build
(defaults/upstream/, what a tarball install renders from) and, for the families Debian packages, Debian's
(defaults/debian/, what a package install renders from), of the same release. The families Debian does not
package (2.0, 2.2, 2.3, 2.4) are upstream's latest patch release (`devtools.families`).

Why: rendering and tests compare against what each containerd family really defaults to, as the install
method installs it; these files are generated from the real binaries, never edited.
"""
from __future__ import annotations

import os
from pathlib import Path

import imagebuild
from devtools import families, upstream
from devtools.debian_artifacts import FAMILIES, binary, fetched_versions, version
from imagebuild.run import run


def defaults_dir() -> Path:
    """Package directory holding the `config default` outputs (imagebuild/defaults)."""
    return Path(imagebuild.__file__).resolve().parent / "defaults"


_DEFAULTS_README = """\
# containerd default configurations

`<source>/config-<family>.toml` is, byte for byte, what `containerd config default` prints for that
containerd family, run with the real binary of one release built two ways:

- `upstream/`: upstream's own build at the release tag, from the Go module proxy
  (`devtools/upstream.py`): what a tarball install (`containerd.install.method: tarball`)
  installs, so what its config.toml is rendered from;
- `debian/`: Debian's `containerd` package, with Debian's patches (its 1.7, for one, looks for CNI
  plugins in `/usr/lib/cni`, upstream's in `/opt/cni/bin`): what a package install renders from. Only
  the families Debian packages have one; the others install from upstream's tarball only.

| family | release | upstream: `containerd --version` | Debian suite and package |
|---|---|---|---|
{rows}

They are generated, not edited: `make regen-defaults` (`python -m devtools defaults`)
builds the upstream releases, fetches the packages with a private apt configuration (see
`devtools/debian_artifacts.py`) and rewrites every file here.
"""


def _config_default(containerd: Path, what: str) -> bytes:
    return run([str(containerd), "config", "default"], what=f"{what} config default", text=False,
               env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}).stdout


def regenerate_defaults() -> list[Path]:
    """Write imagebuild/defaults/{upstream,debian}/config-<family>.toml (real `config default` output) + README."""
    target = defaults_dir()
    written, rows = [], []
    every = sorted({*FAMILIES, *families.UPSTREAM_ONLY}, key=lambda f: tuple(int(p) for p in f.split(".")))
    for family in every:
        release = families.release(family)
        built = upstream.containerd(release) / "bin" / "containerd"
        outputs = {"upstream": _config_default(built, f"upstream containerd {release}")}
        if family in FAMILIES:
            package = fetched_versions(family)["containerd"]
            outputs["debian"] = _config_default(binary(family), f"Debian's containerd {package}")
            debian = f"{FAMILIES[family]}: `{package}` (`--version`: {version(family)})"
        else:
            debian = "none (not packaged by Debian: tarball installs only)"
        for source, text in outputs.items():
            path = target / source / f"config-{family}.toml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text)
            written.append(path)
        said = run([str(built), "--version"], what="containerd --version").stdout.strip()
        rows.append(f"| {family} | {release} | `{said}` | {debian} |")
    readme = target / "README.md"
    readme.write_text(_DEFAULTS_README.format(rows="\n".join(rows)))
    written.append(readme)
    return written
