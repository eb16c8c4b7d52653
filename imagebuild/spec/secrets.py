"""Literal secrets in a spec: where they are, and the one place they may be.

A registry credential is written as a mirror endpoint's `headers` (`Authorization: Bearer ...`): every
header value counts as a secret, since imagebuild cannot tell a token from a harmless value. It lands in
that registry's hosts.toml (0600 on the node), and, because the spec holds it, in spec.json and the
user-data: imagebuild.render.secrets keeps those root-only and says where each went. A header value given by
reference (imagebuild.spec.secret_refs) is no literal secret: :func:`references` lists them; once the build host
has read a file or env reference (imagebuild.render.secret_refs.stage) its value is one, though spec.json,
which records the reference, does not hold it (`Secret.recorded`).

Credentials in `config.overrides` (containerd's deprecated CRI `registry.configs.<host>.auth` table) are
refused: they would be written to config.toml, world-readable, and echoed by the in-guest check's
config comparison. URLs with credentials are refused by imagebuild.spec.rules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imagebuild.spec.fields import Problem
from imagebuild.spec.model import Spec
from imagebuild.spec.secret_refs import SecretRef


@dataclass(frozen=True)
class Secret:
    """One literal secret: its key path in the spec, its value, and the node file it is written to."""

    key: str
    value: str
    path: str
    recorded: bool = True  # spec.json holds it (False: a file/env reference the build host read)


@dataclass(frozen=True)
class Reference:
    """One header value given by reference: its key path, the reference, the node file it is written to, and
    where it sits (mirror host, endpoint index, header name)."""

    key: str
    ref: SecretRef
    path: str
    host: str
    endpoint: int
    header: str


def _headers(spec: Spec):
    """(key path, value, node file, mirror index, mirror host, endpoint index, header name) of every header."""
    registry = spec.config.registry
    for m_index, mirror in enumerate(registry.mirrors):
        path = f"{registry.config_path}/{mirror.host}/hosts.toml"
        for e_index, endpoint in enumerate(mirror.endpoints):
            for name, value in endpoint.headers.items():
                key = f"config.registry.mirrors[{m_index}].endpoints[{e_index}].headers.{name}"
                yield key, value, path, m_index, mirror.host, e_index, name


def _recorded(spec: Spec, m_index: int, e_index: int, name: str) -> bool:
    """Whether spec.json (the document) holds the value at that header: not when it holds a reference."""
    try:
        mirror = spec.document["config"]["registry"]["mirrors"][m_index]
        return isinstance(mirror["endpoints"][e_index]["headers"][name], str)
    except (KeyError, IndexError, TypeError):
        return True  # a spec made without a document: take it as recorded


def literal_secrets(spec: Spec) -> list[Secret]:
    """Every literal secret of *spec*, in spec order (empty: the spec holds none)."""
    return [Secret(key, value, path, _recorded(spec, m_index, e_index, name))
            for key, value, path, m_index, _, e_index, name in _headers(spec) if isinstance(value, str)]


def references(spec: Spec, *, on_node: bool | None = None) -> list[Reference]:
    """Every header value of *spec* given by reference, in spec order; *on_node*: only those the node resolves
    (ssm, secretsmanager: True) or the build host (file, env: False)."""
    return [Reference(key, value, path, host, e_index, name) for key, value, path, _, host, e_index, name
            in _headers(spec) if isinstance(value, SecretRef) and on_node in (None, value.on_node)]


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
