"""expected.json: what the in-guest check must find on a machine built from this spec.

A pure function of the spec, shared by the guest check (imagebuild/guest/check.py) and by the
host-side tests that load rendered configs into real containerd binaries.
"""
from __future__ import annotations

from typing import Any

from ..containerd_keys import KeyPaths
from ..model import Spec

#: Where the install script unpacks the CNI plugins: containerd's default CNI bin_dir.
CNI_BIN_DIR = "/opt/cni/bin"


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


def unit_expectations(spec: Spec) -> dict[str, str]:
    """`systemctl show containerd` properties and the values the spec's unit gives them."""
    unit = spec.unit
    return {
        "Type": unit.type,
        "Delegate": "yes" if unit.delegate else "no",
        "KillMode": unit.kill_mode,
        "Restart": unit.restart,
        "OOMScoreAdjust": str(unit.oom_score_adjust),
        "LimitNOFILE": unit.limit_nofile,
        "LimitNPROC": unit.limit_nproc,
        "LimitCORE": unit.limit_core,
        "TasksMax": unit.tasks_max,
    }


def render(spec: Spec, files: list[dict], build_user: str) -> dict:
    """The whole expectation document; *files* are the payload entries (path, sha256)."""
    method = spec.containerd.install.method
    pkg = spec.containerd.install.package
    return {
        "spec_hash": spec.spec_hash,
        "containerd_version": spec.containerd.version,
        "runc_version": spec.containerd.install.runc.version if method == "tarball" else None,
        "package": {"name": pkg.name, "version": pkg.version, "hold": pkg.hold} if method == "package" else None,
        "cni_plugins_dir": CNI_BIN_DIR if method == "tarball" and spec.containerd.install.cni_plugins else None,
        "config_version": spec.containerd.config_version,
        "config": config_expectations(spec),
        "files": [{"path": f["path"], "sha256": f["sha256"]} for f in files],
        "unit": unit_expectations(spec),
        # containerd applies config.oom_score to itself at start (when non-zero), after systemd's value.
        "oom_score_adj": spec.config.oom_score or spec.unit.oom_score_adjust,
        "modules": list(spec.system.modules),
        "sysctls": dict(spec.system.sysctls),
        "packages": [{"name": name, "probe": list(probe)} for name, probe in spec.system.package_probes.items()],
        "build_user": build_user if spec.image.hygiene else None,
        "extra_checks": [{"name": c.name, "run": c.run} for c in spec.verify.checks],
    }
