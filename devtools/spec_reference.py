"""docs/spec.md, the spec reference, generated from the model: every key path with its type, default,
allowed values and description, then the model's own tables (supported containerd versions per Debian
release, renamed keys, system profiles, the EC2 architectures).

Types and allowed values come from the model's JSON Schema (what `imagebuild schema` prints), with the
words the model gives its patterns; defaults and descriptions from the model's fields. Never edited by
hand: `make docs` (`python -m devtools spec-reference`) rewrites it, and
tests/test_docs.py fails when it is not what this module writes.
"""
from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import imagebuild
from imagebuild.spec import containerd, fields, model, problems

#: Where the reference lives: docs/ of the checkout the imagebuild package sits in.
SPEC_MD = Path(imagebuild.__file__).resolve().parent.parent / "docs" / "spec.md"
REGENERATE = "make docs"

_HEADER = """\
# Spec reference

<!-- Generated from the model by `python -m devtools spec-reference` (`{regenerate}`); do not edit. -->

Every key of an imagebuild spec, generated from the model that validates it. A key left out takes its
default; `imagebuild init` writes the whole default spec with these descriptions as comments, and
`imagebuild schema` prints the same model as JSON Schema for editors. How a spec file is read and the
rules that span keys: [spec-rules.md](spec-rules.md).

Key paths: `a.b` is key `b` in section `a`; `a[]` is each entry of the list `a`; `a.<name>` is each key
of the mapping `a`.
"""


def _text(value: str) -> str:
    """*value* for a table cell: pipes escaped; `<`, `>` and `*` outside code spans escaped."""
    parts = value.split("`")
    for index in range(0, len(parts), 2):  # outside code spans
        parts[index] = parts[index].replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
    return "`".join(parts).replace("|", "\\|").replace("\n", " ")


def _code(value: Any) -> str:
    """A value as the spec writes it, in a code span."""
    if value is None:
        shown = "null"
    elif isinstance(value, bool):
        shown = "true" if value else "false"
    elif isinstance(value, str):
        shown = value if value.strip() == value and value else json.dumps(value)
    else:
        shown = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return f"`{shown}`"


def _resolve(fragment: dict, defs: dict) -> dict:
    return defs[fragment["$ref"].rsplit("/", 1)[-1]] if "$ref" in fragment else fragment


def _type(fragment: dict, defs: dict) -> str:
    """The JSON Schema type of *fragment*, in words."""
    if "anyOf" in fragment:
        kinds = [_type(f, defs) for f in fragment["anyOf"] if f.get("type") != "null"]
        nullable = any(f.get("type") == "null" for f in fragment["anyOf"])
        return " or ".join(kinds) + (" or null" if nullable else "")
    if "$ref" in fragment:
        return "mapping (keys below)"
    kind = fragment.get("type")
    if kind == "array":
        items = fragment.get("items", {})
        return "list of mappings (keys below)" if "$ref" in items else f"list of {_type(items, defs)}"
    if kind == "object":
        if fragment.get("additionalProperties") is True:
            return "mapping (free-form)"
        values: dict = next(iter(fragment.get("patternProperties", {}).values()), {})
        return f"mapping of name to {_type(values, defs)}"
    if isinstance(kind, list):
        return " or ".join(kind)
    return str(kind or "any")


def _allowed(fragment: dict) -> list[str]:
    """What *fragment* allows beyond its type, in the model's words where it has some."""
    if "anyOf" in fragment:
        return [a for f in fragment["anyOf"] if f.get("type") != "null" for a in _allowed(f)]
    found = []
    if "const" in fragment:
        found.append(f"only {_code(fragment['const'])}")
    if "enum" in fragment:
        found.append("one of " + ", ".join(_code(v) for v in fragment["enum"]))
    if "pattern" in fragment:
        found.append(fields.ALLOWED.get(fragment["pattern"]) or f"matching `{fragment['pattern']}`")
    if "minimum" in fragment or "maximum" in fragment:
        found.append(f"from {fragment.get('minimum', '…')} to {fragment.get('maximum', '…')}")
    if fragment.get("type") == "array":
        found += [f"each: {a}" for a in _allowed(fragment.get("items", {}))]
        if fragment.get("uniqueItems"):
            found.append("entries unique")
    if fragment.get("type") == "object" and "propertyNames" in fragment:
        pattern = fragment["propertyNames"]["pattern"]
        found.append("keys: " + (fields.KEY_ALLOWED.get(pattern) or f"matching `{pattern}`"))
        values: dict = next(iter(fragment.get("patternProperties", {}).values()), {})
        found += [f"values: {a}" for a in _allowed(values)]
    return found


def _section_of(fragment: dict) -> tuple[str, str] | None:
    """(the $defs name of the section *fragment* holds, how its path continues: "" for a section,
    "[]" for a list of them, ".<name>" for a mapping of them), or None for a plain value."""
    for option in fragment.get("anyOf", [fragment]):
        if "$ref" in option:
            return option["$ref"].rsplit("/", 1)[-1], ""
        items = option.get("items", {})
        if "$ref" in items:
            return items["$ref"].rsplit("/", 1)[-1], "[]"
        values: dict = next(iter(option.get("patternProperties", {}).values()), {})
        if "$ref" in values:
            return values["$ref"].rsplit("/", 1)[-1], ".<name>"
    return None


def _held_section(hint: Any, name: str) -> type[BaseModel]:
    """The section class named *name* inside the type hint *hint* (`X`, `X | None`, `tuple[X, ...]`,
    `dict[K, X]`, any of them Annotated): found in the hint, wherever the model's modules define it."""
    if isinstance(hint, type) and issubclass(hint, BaseModel) and hint.__name__ == name:
        return hint
    for arg in typing.get_args(hint):
        try:
            return _held_section(arg, name)
        except LookupError:
            continue
    raise LookupError(f"no section {name} in {hint!r}")


def _doc(section: type[BaseModel]) -> str:
    """A section's one-line description (its docstring)."""
    return " ".join((section.__doc__ or "").split())


def _default(cls: type[BaseModel], key: str, fragment: dict) -> str:
    """The key's default as a spec writes it: the schema's where the model gives one for editors (the
    seed's mirrors, without every endpoint key spelled out), else the field's."""
    info = cls.model_fields[key]
    if info.is_required():
        return "required"
    if "default" in fragment:
        return _code(fragment["default"])
    return _code(problems.plain(info.get_default(call_default_factory=True)))


def _sections(cls: type[BaseModel], schema: dict, defs: dict, path: str, out: list[str]) -> None:
    """One heading and table for the section *cls* at *path*, then one for each section inside it (a
    list or mapping of sections has its row here, a single section only its heading)."""
    rows, inner = [], []
    for key, info in cls.model_fields.items():
        fragment = schema["properties"][key]
        key_path = f"{path}.{key}" if path else key
        held = _section_of(fragment)
        if held is not None:
            name, tail = held
            optional = not info.is_required() and info.get_default(call_default_factory=True) is None
            inner.append((_held_section(info.annotation, name), defs[name], key_path + tail, optional))
            if not tail:
                continue
        rows.append(f"| `{key_path}` | {_type(fragment, defs)} | {_default(cls, key, fragment)} | "
                    f"{_text('; '.join(_allowed(fragment)))} | {_text(info.description or '')} |")
    if rows:
        out += ["| key | type | default | allowed | description |", "|---|---|---|---|---|", *rows, ""]
    for section, section_schema, section_path, optional in inner:
        note = " Optional: null (the default) leaves it out." if optional else ""
        out += [f"## `{section_path}`", "", f"*{_text(_doc(section))}*.{note}", ""]
        _sections(section, section_schema, defs, section_path, out)


def _tables() -> list[str]:
    """The model's own tables: what each Debian release supports, renamed keys, profiles, EC2 names."""
    out = ["## Supported containerd versions", "",
           f"`containerd.version` takes the versions whose own `config default` imagebuild carries: "
           f"{containerd.supported_versions()}.", "",
           "| `image.os` | Debian suite | containerd | `install.method: package` installs |", "|---|---|---|---|"]
    for name, release in model.OS_RELEASES.items():
        package = _code(release["package_version"]) if release["package_version"] else "the suite's containerd"
        out.append(f"| `{name}` | {release['suite']} | {containerd.supported_versions(release['families'])} | "
                   f"{package} |")
    out += ["", "## Renamed keys", "", "An old name still loads, with a warning naming the new one.", "",
            "| old key | new key |", "|---|---|"]
    out += [f"| `{old}` | `{new}` |" for old, new in fields.RENAMES]
    out += ["", "## System profiles", "",
            "`system.profile` adds these before the spec's own `system.sysctls` (which win) and installs these "
            "Debian packages, for tarball and package installs alike.", ""]
    for name, profile in model.PROFILES.items():
        out.append(f"### `{name}`\n")
        if not profile["sysctls"] and not profile["packages"]:
            out.append("Adds nothing: only what `system` lists.\n")
            continue
        out += ["| sysctl | value | why |", "|---|---|---|"]
        out += [f"| `{key}` | `{value}` | {_text(why)} |" for key, (value, why) in profile["sysctls"].items()]
        out += ["", "| package | why | the verify boot runs |", "|---|---|---|"]
        out += [f"| `{pkg}` | {_text(why)} | `{' '.join(probe)}` |"
                for pkg, (why, probe) in profile["packages"].items()]
        out.append("")
    out += ["## Architectures on EC2", "",
            "| `image.architecture` | EC2 architecture | default `image.aws.instance_type` (amazon-ebs build) |",
            "|---|---|---|"]
    out += [f"| `{arch}` | `{ec2}` | `{model.BUILD_INSTANCE_TYPES[arch]}` |"
            for arch, ec2 in model.EC2_ARCHITECTURES.items()]
    return out + [""]


def render() -> str:
    """docs/spec.md's text."""
    schema = problems.json_schema()
    defs = schema.get("$defs", {})
    out = [_HEADER.format(regenerate=REGENERATE), "## Top level\n",
           f"*{_text(_doc(model.Spec))}*.\n"]
    _sections(model.Spec, schema, defs, "", out)
    out += _tables()
    return "\n".join(out).rstrip("\n") + "\n"


def write(path: Path = SPEC_MD) -> Path:
    """Write the reference to *path* (docs/spec.md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(), encoding="utf-8")
    return path
