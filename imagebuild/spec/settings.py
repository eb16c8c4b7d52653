"""Where each setting the spec tunes lands in containerd's config: (name, key path in `containerd config
dump`, value). The rules (spec.rules: overrides may not set what a typed setting owns) and expected.json
(render.expected: what the in-guest check compares with the running daemon's dump) both read it.
"""
from __future__ import annotations

from typing import Any

from imagebuild.spec.containerd_keys import KeyPaths
from imagebuild.spec.model import Spec


def _leaves(value: Any, path: tuple) -> list[tuple[tuple, Any]]:
    """Every value set at *path*: tables and lists of tables are walked (containerd fills in the keys
    a table in a list leaves out, so the list as a whole is not what `config dump` shows)."""
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in _leaves(item, path + (key,))]
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return [leaf for index, item in enumerate(value) for leaf in _leaves(item, path + (index,))]
    return [(path, value)]


def _name(path: tuple) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)


def config_expectations(spec: Spec) -> list[dict]:
    """(name, key path in `containerd config dump`, value) for every setting the spec tunes."""
    cfg = spec.config
    paths = KeyPaths(spec.containerd.config_version)
    runtimes = paths.runtime_root + ("runtimes",)
    table, key = paths.sandbox
    items = [
        ("config.root", ("root",), cfg.root),
        ("config.state", ("state",), cfg.state),
        ("config.oom_score", ("oom_score",), cfg.oom_score),
        ("config.sandbox_image", table + (key,), cfg.sandbox_image),
        ("config.systemd_cgroup", runtimes + ("runc", "options", "SystemdCgroup"), cfg.systemd_cgroup),
        ("config.default_runtime", paths.runtime_root + ("default_runtime_name",), cfg.default_runtime),
        ("config.registry.config_path", paths.registry + ("config_path",),
         cfg.registry.config_path if cfg.registry.mode == "hosts" else ""),
        ("config.snapshotter", paths.images + ("snapshotter",), cfg.snapshotter),
        ("config.max_container_log_line_size", paths.log_line + ("max_container_log_line_size",),
         cfg.max_container_log_line_size),
        ("config.discard_unpacked_layers", paths.images + ("discard_unpacked_layers",), cfg.discard_unpacked_layers),
    ]
    for name, rt in cfg.runtimes.items():
        items.append((f"config.runtimes.{name}.runtime_type", runtimes + (name, "runtime_type"), rt.runtime_type))
        if rt.binary_name:
            items.append((f"config.runtimes.{name}.binary_name", runtimes + (name, "options", "BinaryName"),
                          rt.binary_name))
    if cfg.registry.mode == "legacy":
        for mirror in cfg.registry.mirrors:
            items.append((f"config.registry.mirrors.{mirror.host}",
                          paths.registry + ("mirrors", mirror.host, "endpoint"),
                          mirror.legacy_endpoints))
    for path, value in _leaves(cfg.overrides, ()):
        items.append(("config.overrides" + _name(path), path, value))
    return [{"name": name, "path": list(path), "value": value} for name, path, value in items]
