"""Packer and its qemu and amazon plugins, built from the Go module proxy at the releases the template's
`required_plugins` names (imagebuild.render.packer_plugins), for the tests that run a Packer newer than
Debian's 1.6.6 (whose amazon builder knows no `metadata_options`).

Each is a `main` package at its module's root whose go.mod replaces go-cty, so `go install module@v` refuses
it: it builds in a small wrapper module that requires the release and repeats the replace directive
(devtools.upstream). Static, without cgo, as upstream's release builds are; the version comes from the
module itself (an embedded VERSION file, the plugins' version package), so no ldflags are needed for it.

`tools()` is Packer and a plugin directory laid out by Packer's own `packer plugins install --path`
(github.com/hashicorp/<name>/packer-plugin-<name>_v<version>_x<api>_linux_amd64 and its _SHA256SUM):
run Packer with PACKER_PLUGIN_PATH set to it (`env()`), and it finds the plugins without `packer init`.
Everything is built once into the cache, under a lock.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from devtools.upstream import _go, _once, module_info, wrapper_module
from imagebuild.paths import cache_dir
from imagebuild.render import packer_plugins
from imagebuild.run import run

PACKER_MODULE = "github.com/hashicorp/packer"


def _module(source: str) -> str:
    """The Go module of plugin *source*: github.com/hashicorp/amazon -> github.com/hashicorp/packer-plugin-amazon."""
    owner, name = source.rsplit("/", 1)
    return f"{owner}/packer-plugin-{name}"


def _build(module: str, version: str, name: str) -> Path:
    """`<cache>/<name>-<version>-linux-amd64/<name>`: *module*'s root package at *version*, built once."""
    target = cache_dir("upstream") / f"{name}-{version}-linux-amd64"

    def build(tmp: Path) -> dict:
        info = module_info(module, version)
        wrapper = wrapper_module(tmp, name, module, version, info, [module])
        _go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp / name), module],
            f"go build {name} v{version}", cwd=wrapper)
        shutil.rmtree(wrapper)
        return {"module": module, "version": version, "revision": "gomod-" + info["Sum"]}

    _once(target, f"{name} {version}", build)
    return target / name


def packer() -> Path:
    """The `packer` binary of release packer_plugins.PACKER."""
    return _build(PACKER_MODULE, packer_plugins.PACKER, "packer")


def plugin(name: str) -> Path:
    """The binary of plugin *name* (a key of packer_plugins.PLUGINS) at its tested release."""
    source, version = packer_plugins.PLUGINS[name]
    return _build(_module(source), version, f"packer-plugin-{name}")


def plugin_dir() -> Path:
    """A directory for PACKER_PLUGIN_PATH holding every plugin of packer_plugins.PLUGINS, installed by Packer."""
    versions = "-".join(f"{name}{version}" for name, (_, version) in sorted(packer_plugins.PLUGINS.items()))
    target = cache_dir("upstream") / f"packer-{packer_plugins.PACKER}-plugins-{versions}"

    def build(tmp: Path) -> dict:
        binary = packer()
        installed = {}
        for name, (source, version) in packer_plugins.PLUGINS.items():
            run([binary, "plugins", "install", "--path", plugin(name), source], what=f"packer plugins install {name}",
                env=env(tmp), timeout=300)
            installed[name] = {"source": source, "version": version}
        return {"packer": packer_plugins.PACKER, "plugins": installed}

    _once(target, f"the Packer {packer_plugins.PACKER} plugin directory", build)
    return target


def env(plugins: Path | None = None) -> dict[str, str]:
    """The environment to run the built Packer in: its plugins from *plugins* (default: plugin_dir()), no
    checkpoint (version check) calls."""
    return {**os.environ, "PACKER_PLUGIN_PATH": str(plugins or plugin_dir()), "CHECKPOINT_DISABLE": "1"}


def tools() -> tuple[Path, Path]:
    """(packer binary, plugin directory), built on first use."""
    return packer(), plugin_dir()
