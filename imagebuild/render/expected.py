"""expected.json: what the in-guest check must find on a machine built from this spec.

A pure function of the spec, shared by the guest check (imagebuild/guest/check.py) and by the
host-side tests that load rendered configs into real containerd binaries.
"""
from __future__ import annotations

import hashlib

from imagebuild.guest.secret_checks import secret_words
from imagebuild.spec.model import Spec
from imagebuild.spec.secrets import literal_secrets, references
from imagebuild.spec.settings import config_expectations

#: Where the install script unpacks the CNI plugins: containerd's default CNI bin_dir.
CNI_BIN_DIR = "/opt/cni/bin"


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


def shim_binary(runtime_type: str) -> str:
    """The shim binary containerd starts for *runtime_type*: io.containerd.<name>.<version> ->
    containerd-shim-<name>-<version>."""
    _, _, rest = runtime_type.partition("io.containerd.")
    return "containerd-shim-" + rest.replace(".", "-")


def runtime_expectations(spec: Spec) -> list[dict]:
    """Every runtime the spec configures besides runc: its shim and the binary it names must be on the image."""
    return [{"name": name, "shim": shim_binary(rt.runtime_type), "binary": rt.binary_name}
            for name, rt in spec.config.runtimes.items()]


def secret_expectations(spec: Spec, files: list[dict]) -> dict:
    """What the check's secret.* checks look for: each payload file holding a literal secret with its owner and
    mode, and the sha256 of every word of every secret (the check hashes the words of world-readable files);
    never a secret itself. A secret without a word of 8+ token characters cannot be searched: counted."""
    found = literal_secrets(spec)
    paths = {s.path for s in found}
    words = [secret_words(s.value.encode()) for s in found]
    # a hosts.toml the node writes from a value it reads (SSM, Secrets Manager) is 0600 root's, like the others
    on_node = sorted({r.path for r in references(spec, on_node=True)} - {f["path"] for f in files})
    return {"files": [{"path": f["path"], "owner": "root", "mode": f["mode"]} for f in files if f["path"] in paths]
            + [{"path": path, "owner": "root", "mode": "0600"} for path in on_node],
            "sha256": sorted({hashlib.sha256(w).hexdigest() for found_words in words for w in found_words}),
            "unsearchable": sum(not found_words for found_words in words)}


def render(spec: Spec, files: list[dict], build_user: str) -> dict:
    """The whole expectation document; *files* are the payload entries (path, sha256, mode)."""
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
        "runtimes": runtime_expectations(spec),
        # containerd applies config.oom_score to itself at start (when non-zero), after systemd's value.
        "oom_score_adj": spec.config.oom_score or spec.unit.oom_score_adjust,
        "modules": list(spec.system.modules),
        "sysctls": dict(spec.system.sysctls),
        "packages": [{"name": name, "probe": list(probe)} for name, probe in spec.system.package_probes.items()],
        "build_user": build_user if spec.image.hygiene else None,
        "extra_checks": [{"name": c.name, "run": c.run} for c in spec.verify.checks],
        "secrets": secret_expectations(spec, files),
    }
