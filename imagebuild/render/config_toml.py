"""config.toml: containerd's own `config default` of the target family (upstream's for a tarball install,
Debian's for a package install), tuned by the spec.

The reference defaults (imagebuild/spec/containerd_keys.py reads them from imagebuild/defaults/) keep
every key containerd ships visible and documented. The spec's settings land at the key paths of the
file's config version, the one the family's own default prints (2 for containerd 1.x, 3 for 2.0-2.2, 4 for
2.3 and 2.4; version 4 keeps version 3's CRI paths); `config.overrides` is deep-merged last.
"""
from __future__ import annotations

from typing import Any

import tomlkit
from tomlkit.items import Table

from imagebuild.render.toml_items import dumps, item
from imagebuild.spec.containerd_keys import KeyPaths, reference_default
from imagebuild.spec.model import Spec

#: Shims that decode their options only when told the type: containerd hands a runtime that is not runc
#: its options as runtimeoptions (TypeUrl, ConfigPath); gVisor's shim rejects them without its TypeUrl.
TYPE_URLS = {"io.containerd.runsc.v1": "io.containerd.runsc.v1.options"}

HEADER = "Managed by imagebuild: change the spec and re-render rather than editing this file."


def _table(parent: Any, *keys: str) -> Table:
    """The nested table at *keys* under *parent*, created (as a super-table chain) where missing."""
    node = parent
    for key in keys:
        if key not in node:
            node[key] = tomlkit.table()
        node = node[key]
    return node


def _deep_merge(target: Any, overrides: dict) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and key in target and isinstance(target[key], dict):
            _deep_merge(target[key], value)
        else:
            target[key] = item(value)


def render(spec: Spec) -> str:
    cfg = spec.config
    doc = tomlkit.parse(reference_default(spec.containerd.family, spec.containerd.install.method))
    paths = KeyPaths(spec.containerd.config_version)

    doc["root"] = item(cfg.root)
    doc["state"] = item(cfg.state)
    doc["oom_score"] = item(cfg.oom_score)
    doc["imports"] = item(list(cfg.imports))

    table, key = paths.sandbox
    _table(doc, *table)[key] = item(cfg.sandbox_image)
    _table(doc, *paths.log_line)["max_container_log_line_size"] = item(cfg.max_container_log_line_size)
    images = _table(doc, *paths.images)
    images["snapshotter"] = item(cfg.snapshotter)
    images["discard_unpacked_layers"] = item(cfg.discard_unpacked_layers)

    containerd = _table(doc, *paths.runtime_root)
    containerd["default_runtime_name"] = item(cfg.default_runtime)
    runtimes = _table(containerd, "runtimes")
    _table(runtimes, "runc", "options")["SystemdCgroup"] = item(cfg.systemd_cgroup)
    for name, rt in cfg.runtimes.items():
        handler = _table(runtimes, name)
        handler["runtime_type"] = item(rt.runtime_type)
        handler["pod_annotations"] = item(list(rt.pod_annotations))
        handler["privileged_without_host_devices"] = item(rt.privileged_without_host_devices)
        options = _table(handler, "options")
        if rt.binary_name:
            options["BinaryName"] = item(rt.binary_name)
        if rt.config_path:
            if rt.runtime_type in TYPE_URLS:
                options["TypeUrl"] = item(TYPE_URLS[rt.runtime_type])
            options["ConfigPath"] = item(rt.config_path)
        if rt.runtime_type == "io.containerd.runc.v2":
            options["SystemdCgroup"] = item(cfg.systemd_cgroup)

    registry = _table(doc, *paths.registry)
    if cfg.registry.mode == "hosts":
        registry["config_path"] = item(cfg.registry.config_path)
        registry.pop("mirrors", None)
    else:
        registry["config_path"] = item("")
        mirrors = _table(registry, "mirrors")
        for mirror in cfg.registry.mirrors:
            _table(mirrors, mirror.host)["endpoint"] = item(mirror.legacy_endpoints)

    _deep_merge(doc, cfg.overrides)
    return f"# {HEADER}\n" + dumps(doc)
