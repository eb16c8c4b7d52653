"""What imagebuild knows of containerd's config: the reference defaults, their key paths and types.

`containerd config default` of each family lives in imagebuild/defaults/<upstream|debian>/config-<family>.toml
(regenerated from real binaries by `make regen-defaults`). From it come where each tuned setting
lives in a config version (`KeyPaths`), and how `config.overrides` reads: dotted keys split into
key paths, each value checked against the type containerd gives that path (`normalise_overrides`).
The renderer and the spec's checks both import this module; it imports only the model.
"""
from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources
from typing import Any

from imagebuild.spec.fields import show as _show

#: Whose `config default` a config is rendered from, by containerd.install.method: a tarball install runs
#: upstream's binaries (defaults/upstream/), a package install Debian's patched ones (defaults/debian/:
#: e.g. its 1.7 looks for CNI plugins in /usr/lib/cni, upstream's in /opt/cni/bin).
DEFAULTS_OF = {"tarball": "upstream", "package": "debian"}


def reference_default(family: str, method: str = "tarball") -> str:
    """The real `containerd config default` output of a family (1.6 ... 2.4) as the install *method*
    installs it: upstream's build for a tarball, Debian's for a package (the families Debian packages)."""
    return resources.files("imagebuild").joinpath("defaults", DEFAULTS_OF[method], f"config-{family}.toml").read_text()


@cache
def reference_tree(family: str) -> dict:
    """The reference default of a family as plain data (key paths and the types containerd gives them;
    upstream's, whose keys Debian's builds share)."""
    return tomllib.loads(reference_default(family))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a table" if isinstance(value, dict) else type(value).__name__


def _fits(value: Any, reference: Any) -> bool:
    if isinstance(reference, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(reference, bool)
    if isinstance(reference, float):
        return isinstance(value, (int, float))
    return _kind(value) == _kind(reference)


def _split_key(key: str, reference: Any) -> list[str]:
    """The table path a key of config.overrides stands for, at a level whose reference is *reference*.

    A key containerd's default has at this level is one key, dots and all (`io.containerd.grpc.v1.cri`
    under `plugins`). A dotted key whose first part the default has here is a TOML dotted key
    (`grpc.max_recv_message_size`, `plugins."io.containerd.grpc.v1.cri".enable_cdi`), and unquoted
    parts are joined back where they spell a key of the default (`plugins.io.containerd.grpc.v1.cri.x`).
    Anything else (a registry host like `docker.io`, keys under tables containerd leaves empty) is one key.
    """
    if not isinstance(reference, dict) or key in reference or "." not in key:
        return [key]
    try:
        parsed = tomllib.loads(f"{key} = 0")
    except tomllib.TOMLDecodeError:
        return [key]
    parts: list[str] = []
    while isinstance(parsed, dict):
        (part, parsed), = parsed.items()
        parts.append(part)
    if parts[0] not in reference:
        return [key]
    path: list[str] = []
    node: Any = reference
    index = 0
    while index < len(parts):
        end = next((end for end in range(len(parts), index, -1)
                    if isinstance(node, dict) and ".".join(parts[index:end]) in node), index + 1)
        part = ".".join(parts[index:end])
        path.append(part)
        node = node.get(part) if isinstance(node, dict) else None
        index = end
    return path


def normalise_overrides(overrides: dict, family: str, where: str = "config.overrides",
                        extra_plugins: tuple[str, ...] = ()) -> tuple[dict, list[tuple[str, str]]]:
    """config.overrides as nested tables (dotted keys split, see _split_key), each value checked against
    the type the same key path has in containerd's own default of *family*: (nested, [(path, problem)]).
    *extra_plugins* (config.extra_plugins) are plugin names too, so a dotted key spells them whole."""
    out: dict = {}
    problems: list[tuple[str, str]] = []
    reference = reference_tree(family)
    if extra_plugins:
        reference = {**reference, "plugins": {**{name: {} for name in extra_plugins}, **reference.get("plugins", {})}}
    _normalise(overrides, reference, out, where, family, problems)
    return out, problems


def _normalise(value: dict, reference: Any, out: dict, where: str, family: str,
               problems: list[tuple[str, str]]) -> None:
    for key, item in value.items():
        path = _split_key(key, reference)
        node, ref, name = out, reference, where
        for part in path[:-1]:
            name = f"{name}.{part}"
            ref = ref.get(part) if isinstance(ref, dict) else None
            if ref is not None and not isinstance(ref, dict):
                problems.append((name, f"got a table (from {where}.{key}), expected {_kind(ref)}, the type "
                                 f"containerd {family} gives this key (its default: {_show(ref)})"))
                break
            if not isinstance(node.setdefault(part, {}), dict):
                problems.append((name, f"set twice: as {_show(node[part])} and as a table by {where}.{key}"))
                break
            node = node[part]
        else:
            last = path[-1]
            name = f"{name}.{last}"
            ref = ref.get(last) if isinstance(ref, dict) else None
            if isinstance(item, dict) and (ref is None or isinstance(ref, dict)):
                if not isinstance(node.setdefault(last, {}), dict):
                    problems.append((name, f"set twice: as {_show(node[last])} and as a table by {where}.{key}"))
                    continue
                _normalise(item, ref, node[last], name, family, problems)
                continue
            if last in node:
                problems.append((name, f"set twice: {_show(node[last])} and {_show(item)} ({where}.{key})"))
                continue
            node[last] = item
            if ref is not None:
                _check_type(item, ref, name, family, problems)


def _check_type(value: Any, reference: Any, name: str, family: str, problems: list[tuple[str, str]]) -> None:
    if not _fits(value, reference):
        problems.append((name, f"got {_show(value)} ({_kind(value)[2:].lstrip()}), expected {_kind(reference)}, "
                         f"the type containerd {family} gives this key (its default: {_show(reference)})"))
    elif isinstance(value, list) and reference:
        for index, item in enumerate(value):
            _check_type(item, reference[0], f"{name}[{index}]", family, problems)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in reference:
                _check_type(item, reference[key], f"{name}.{key}", family, problems)


class KeyPaths:
    """Where each tuned setting lives in one config version: key paths of containerd's own config
    default (imagebuild/defaults/<source>/config-<family>.toml). Version 4 (2.3 on) keeps version 3's CRI
    paths and moves the server settings into plugins."""

    def __init__(self, version: int):
        self.sandbox: tuple[tuple[str, ...], str]
        self.runtime_root: tuple[str, ...]
        self.images: tuple[str, ...]
        self.registry: tuple[str, ...]
        self.log_line: tuple[str, ...]
        #: The server's gRPC table: top-level up to version 3, a plugin from version 4 on (containerd 2.3).
        self.grpc: tuple[str, ...] = ("grpc",) if version < 4 else ("plugins", "io.containerd.server.v1.grpc")
        self.ttrpc: tuple[str, ...] = ("ttrpc",) if version < 4 else ("plugins", "io.containerd.server.v1.ttrpc")
        self.metrics: tuple[str, ...] = ("metrics",) if version < 4 else ("plugins", "io.containerd.server.v1.metrics")
        if version == 2:
            cri = ("plugins", "io.containerd.grpc.v1.cri")
            self.sandbox = (cri, "sandbox_image")
            self.runtime_root = cri + ("containerd",)
            self.images = cri + ("containerd",)
            self.registry = cri + ("registry",)
            self.log_line = cri
        else:
            images = ("plugins", "io.containerd.cri.v1.images")
            runtime = ("plugins", "io.containerd.cri.v1.runtime")
            self.sandbox = (images + ("pinned_images",), "sandbox")
            self.runtime_root = runtime + ("containerd",)
            self.images = images
            self.registry = images + ("registry",)
            self.log_line = runtime
