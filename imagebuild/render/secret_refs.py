"""Header values given by reference (imagebuild.spec.secret_refs), as the outputs carry them.

Read on the build host (`file`, `env`): :func:`stage` reads each once, when the spec is rendered or baked, and
gives a copy of the spec holding the values as literal secrets, so they travel as those do (root-only outputs,
in a 0700 tree; user-data only with --accept-secret-in-metadata; a bake's staging is removed after the build).
The copy's document is the spec's own: spec.json, spec_hash and the manifest record the reference only.

Read on the node (`ssm`, `secretsmanager`): that registry's hosts.toml is not in the payload. The payload
carries, per registry, REFS_DIR/<host>.json: the hosts.toml rendered as every other (tomlkit, imagebuild's
style) with a placeholder string where each such value goes, and what each placeholder stands for. install.sh
places it with the payload, then runs RESOLVER (imagebuild/guest/resolve_secrets.py), which reads each value
with the instance's role and writes the hosts.toml, 0600. A placeholder starts with NUL, which no literal
header value can hold (the spec refuses control characters), so the text tomlkit writes for it
(`"\\u0000imagebuild-secret:..."`) is found in that file's text nowhere else; the resolver replaces exactly
that text with the value as a TOML basic string.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from imagebuild.render import hosts_toml
from imagebuild.render.toml_items import item
from imagebuild.spec.containerd import Mirror
from imagebuild.spec.fields import Problem
from imagebuild.spec.load import SpecError
from imagebuild.spec.model import Spec
from imagebuild.spec.secrets import Reference, references

#: Where the payload puts the per-registry documents and the resolver on the node.
REFS_DIR = "/etc/imagebuild/registry-secrets"
RESOLVER = "/usr/local/libexec/imagebuild/resolve-secrets"


def placeholder(endpoint: int, header: str) -> str:
    """The string hosts.toml holds, before the node resolves it, for *header* of the mirror's *endpoint*."""
    return f"\x00imagebuild-secret:{endpoint}:{header}"


def refs_path(host: str) -> str:
    return f"{REFS_DIR}/{host}.json"


def on_node(spec: Spec) -> dict[str, list[Reference]]:
    """Mirror host -> its header values the node reads (ssm, secretsmanager), in spec order."""
    found: dict[str, list[Reference]] = {}
    for ref in references(spec, on_node=True):
        found.setdefault(ref.host, []).append(ref)
    return found


def refs_document(mirror: Mirror, path: str, refs: list[Reference]) -> bytes:
    """REFS_DIR/<host>.json: the hosts.toml to write at *path* with placeholders, and where each value is."""
    marks = {(r.endpoint, r.header): placeholder(r.endpoint, r.header) for r in refs}
    doc = {"path": path, "mode": "0600", "template": hosts_toml.render(mirror, marks),
           "values": [{"key": r.key, "placeholder": item(marks[(r.endpoint, r.header)]).as_string(),
                       "source": r.ref.source, "name": r.ref.name, "prefix": r.ref.prefix} for r in refs]}
    return (json.dumps(doc, indent=2) + "\n").encode()


def read_on_build_host(ref: Reference, environ: Mapping[str, str]) -> str:
    """The value of a `file` or `env` reference, prefix included; SpecError naming the key when this host has
    none (never the value)."""
    source, name = ref.ref.source, ref.ref.name
    if source == "env":
        value = environ.get(name)
        if not value:
            raise SpecError([Problem(ref.key, f"env {name!r} is {'empty' if value == '' else 'not set'} on this "
                                     "host; set it to the header's value, or name another source")])
    else:
        try:
            value = Path(name).read_bytes().decode("utf-8")
        except OSError as exc:
            raise SpecError([Problem(ref.key, f"file {name!r} cannot be read on this host: "
                                     f"{exc.strerror or exc}")]) from None
        except UnicodeDecodeError:
            raise SpecError([Problem(ref.key, f"file {name!r} is not UTF-8 text")]) from None
        value = value[:-2] if value.endswith("\r\n") else value[:-1] if value.endswith("\n") else value
        if not value:
            raise SpecError([Problem(ref.key, f"file {name!r} is empty")])
    return ref.ref.prefix + value


def stage(spec: Spec, environ: Mapping[str, str] | None = None, *, image: bool = False) -> Spec:
    """*spec* with every `file`/`env` header value read now on this host (a copy; *spec* itself is left as it
    is, and so is the copy's document: spec.json records the references). SpecError (exit 2) naming each key
    this host has no value for; for an *image* (a bake), naming each value the node would read: the build VM
    would read it instead, with the build's role, and the image would hold it."""
    if image and (node := references(spec, on_node=True)):
        raise SpecError([Problem(r.key, f"{r.ref.describe()} is read on the node at install time, and a bake "
                                 "installs in the build VM: the image would hold the value the build read. Give "
                                 "this spec to the nodes as user-data (imagebuild user-data), or bake the value "
                                 "in from the build host ({file: PATH} or {env: NAME})") for r in node])
    refs = references(spec, on_node=False)
    if not refs:
        return spec
    environ = os.environ if environ is None else environ
    values, problems = {}, []
    for ref in refs:
        try:
            values[ref.key] = read_on_build_host(ref, environ)
        except SpecError as exc:
            problems += exc.problems
    if problems:
        raise SpecError(problems)
    registry = spec.config.registry
    mirrors = []
    for m_index, mirror in enumerate(registry.mirrors):
        endpoints = []
        for e_index, ep in enumerate(mirror.endpoints):
            base = f"config.registry.mirrors[{m_index}].endpoints[{e_index}].headers."
            headers = {name: values.get(base + name, value) for name, value in ep.headers.items()}
            endpoints.append(ep.model_copy(update={"headers": headers}))
        mirrors.append(mirror.model_copy(update={"endpoints": tuple(endpoints)}))
    config = spec.config.model_copy(update={"registry": registry.model_copy(update={"mirrors": tuple(mirrors)})})
    return spec.model_copy(update={"config": config})
