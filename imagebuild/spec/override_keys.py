"""config.overrides key paths checked against the family's own `config default`.

containerd reads a key it does not know without a word (a typo like `enable_cdl` parses, and the daemon
runs on its defaults), so a key path the family's reference default (imagebuild/defaults/upstream/
config-<family>.toml, spec.containerd_keys.reference_tree) lacks is a spec error naming the nearest real
key. Keys containerd moved or removed are left to spec.renames, whose message names the replacement.
Maps whose keys are the user's own (FREE_FORM), tables the default leaves empty, and plugins listed in
config.extra_plugins are not checked.
"""
from __future__ import annotations

import difflib
import re
from fnmatch import fnmatchcase
from typing import Any

from imagebuild.spec.containerd_keys import reference_tree
from imagebuild.spec.fields import Problem
from imagebuild.spec.renames import moved

#: Tables whose keys are the user's own names, not containerd's (dotted paths as config.overrides spells
#: them; `*` is one component, `**` any number), and why each is free-form.
FREE_FORM: dict[str, str] = {
    # the CRI registry's host maps (1.x CRI plugin and 2.x images plugin; deprecated, still read until 2.7,
    # and left out of 2.x's default): keys are registry hosts
    "plugins.*.registry.mirrors": "keys are registry hosts",
    "plugins.*.registry.configs": "keys are registry hosts",
    "plugins.*.registry.auths": "keys are registry hosts (deprecated credentials)",
    "plugins.*.registry.headers": "keys are HTTP header names",
    # external plugins and stream processors: keys are the plugin's or processor's own name
    "proxy_plugins": "keys are the names of the user's proxy plugins (stargz, ...), absent from the default",
    "stream_processors": "keys are stream processor names (the default lists only ocicrypt's two)",
    # timeouts: keys are the timeout names plugins register, the default lists only the built-in ones
    "timeouts": "keys are timeout names registered by plugins, the default shows only those built in",
    # the options a non-runc runtime's shim takes (gVisor's TypeUrl/ConfigPath, kata's ConfigPath, ...)
    "plugins.*.containerd.runtimes.*.options": "a runtime of the user's own passes its shim's own options",
    "plugins.*.containerd.*_runtime.options": "1.x default/untrusted runtime options belong to its shim",
}

#: Options the shims of other runtimes take beside runc's (gVisor runsc and kata read ConfigPath; CRI reads
#: TypeUrl for every runtime) and runc options some families' defaults leave out.
SHIM_OPTIONS = ("TypeUrl", "ConfigPath", "NoPivotRoot", "CriuPath", "CriuImagePath", "CriuWorkPath",
                "TaskApiAddress", "TaskApiVersion")


def _free(path: tuple[str, ...]) -> bool:
    """Whether *path* is one of the FREE_FORM tables (matched component by component: plugin names have
    dots of their own)."""
    return any(len(parts) == len(path) and all(fnmatchcase(p, q) for p, q in zip(path, parts, strict=True))
               for parts in (pattern.split(".") for pattern in FREE_FORM))


def unknown_keys(overrides: dict, family: str, config_version: int,
                 extra_plugins: tuple[str, ...] = ()) -> list[Problem]:
    """Problems for key paths in *overrides* (nested, as normalise_overrides leaves them) that *family*'s
    own default lacks, each naming the nearest real key among the siblings where the path goes astray."""
    problems: list[Problem] = []
    _walk(overrides, reference_tree(family), (), family, config_version, set(extra_plugins), problems)
    return problems


def _leaves(value: Any, path: tuple[str, ...]) -> list[tuple[str, ...]]:
    if isinstance(value, dict) and value:
        return [leaf for key, item in value.items() for leaf in _leaves(item, path + (key,))]
    return [path]


def _walk(value: dict, reference: dict, path: tuple[str, ...], family: str, version: int,
          extra: set[str], problems: list[Problem]) -> None:
    runtimes = path[-1:] == ("runtimes",) and isinstance(reference.get("runc"), dict)
    for key, item in value.items():
        here = path + (key,)
        if path == ("plugins",) and key in extra:
            continue
        ref = reference.get(key)
        if ref is None and runtimes:
            ref = {k: v for k, v in reference["runc"].items() if k != "options"} | {"options": {}}
        if ref is None and _free(here):
            continue  # a map of the user's own names that the default leaves out (mirrors on 2.x, proxy_plugins)
        if ref is None:
            _unknown(item, here, reference, family, version, problems)
            continue
        if not isinstance(item, dict) or not isinstance(ref, dict):
            continue
        if here[-3:-1] == ("runtimes", "runc") and key == "options":
            ref = {name: "" for name in SHIM_OPTIONS} | ref  # runc's own: checked, with what other shims take
        elif _free(here) or not ref:
            continue  # the user's own names, or a table the default leaves empty
        _walk(item, ref, here, family, version, extra, problems)


def _unknown(item: Any, here: tuple[str, ...], siblings: dict, family: str, version: int,
             problems: list[Problem]) -> None:
    leaves = [leaf for leaf in _leaves(item, here) if not moved(".".join(leaf), family, version)[1]]
    if not leaves:
        return  # moved or removed: spec.renames names the replacement
    plugin = here[:-1] == ("plugins",)
    if plugin:  # a dotted key of a plugin the default lacks splits at its dots: name it whole (type.vN.name)
        at = next((i for i, part in enumerate(leaves[0]) if re.fullmatch(r"v[0-9]+", part)), None)
        if at is not None and at + 1 < len(leaves[0]):
            here = ("plugins", ".".join(leaves[0][1:at + 2]))
    parent = ".".join(here[:-1])
    near = difflib.get_close_matches(here[-1], list(siblings), n=1, cutoff=0.6)
    what = "no plugin" if plugin else "no key"
    where = f"{here[-1]} under {parent}" if parent else here[-1]
    message = (f"containerd {family} (config version {version}) has {what} {where} in its default config, "
               "and would ignore it")
    if near:
        message += f"; nearest real {'plugin' if plugin else 'key'}: {'.'.join(here[:-1] + (near[0],))}"
    elif siblings:
        message += f"; its keys there: {', '.join(sorted(siblings)[:12])}"
    if plugin:
        message += "; a plugin outside the default config (a third-party proxy plugin) goes in config.extra_plugins"
    problems.append(Problem("config.overrides." + ".".join(here), message))
