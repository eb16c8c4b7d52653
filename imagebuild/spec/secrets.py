"""Literal secrets in a spec: where they are, and the one place they may be.

A registry credential is written as a mirror endpoint's `headers` (`Authorization: Bearer ...`): every
header value counts as a secret, since imagebuild cannot tell a token from a harmless value. It lands in
that registry's hosts.toml (0600 on the node), and, because the spec holds it, in spec.json and the
user-data: imagebuild.render.secrets keeps those root-only and says where each went.

Credentials in `config.overrides` (containerd's deprecated CRI `registry.configs.<host>.auth` table) are
refused: they would be written to config.toml, world-readable, and echoed by the in-guest check's
config comparison. URLs with credentials are refused by imagebuild.spec.rules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imagebuild.spec.fields import Problem
from imagebuild.spec.model import Spec


@dataclass(frozen=True)
class Secret:
    """One literal secret: its key path in the spec, its value, and the node file it is written to."""

    key: str
    value: str
    path: str


def literal_secrets(spec: Spec) -> list[Secret]:
    """Every literal secret of *spec*, in spec order (empty: the spec holds none)."""
    registry = spec.config.registry
    found = []
    for m_index, mirror in enumerate(registry.mirrors):
        path = f"{registry.config_path}/{mirror.host}/hosts.toml"
        for e_index, endpoint in enumerate(mirror.endpoints):
            for name, value in endpoint.headers.items():
                found.append(Secret(f"config.registry.mirrors[{m_index}].endpoints[{e_index}].headers.{name}",
                                    value, path))
    return found


def check_overrides_auth(overrides: Any, path: str = "config.overrides") -> list[Problem]:
    """Problems for every `auth` table in config.overrides (registry credentials in config.toml)."""
    problems: list[Problem] = []
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            here = f"{path}.{key}"
            if key == "auth" and isinstance(value, dict) and value:
                problems.append(Problem(here, "registry credentials in config.toml, which is world-readable and "
                                        "which the in-guest check echoes; expected them as an Authorization header "
                                        "on a mirror endpoint (config.registry.mirrors[].endpoints[].headers: "
                                        "hosts.toml, root-only)"))
            else:
                problems += check_overrides_auth(value, here)
    return problems
