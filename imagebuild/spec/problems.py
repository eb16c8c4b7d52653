"""What the model yields besides validation: pydantic's errors as one line each (key path, bad value,
what is allowed), the JSON Schema, the commented default spec, plain data."""
from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Callable
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from imagebuild.spec.fields import ALLOWED, KEY_ALLOWED, YAML11_BOOLEANS, Problem, show
from imagebuild.spec.model import Spec

# --- what the model yields: JSON Schema, the commented default -------------------------------------

def json_schema() -> dict:
    """The spec's JSON Schema (draft 2020-12) for editors: `imagebuild schema`."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **Spec.model_json_schema(), "title": "imagebuild spec"}


def plain(value: Any) -> Any:
    """*value* as YAML/JSON data: models as mappings, tuples as lists."""
    if isinstance(value, BaseModel):
        return {name: plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The section class of a field, when the field is a (non-optional) section."""
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def commented_default(spec: Spec | None = None, header: tuple[str, ...] = ()) -> str:
    """*spec* (default: the built-in default spec) as YAML, every key preceded by its description:
    `imagebuild init` (which gives the starting point of spec.load.init_spec and its *header*)."""
    lines = list(header) or ["# imagebuild spec: every key below is the built-in default (containerd's seed setup)."]
    lines.append("# Delete what you do not change; `imagebuild schema` prints the JSON Schema for editors.")

    def emit(section: BaseModel, indent: int) -> None:
        pad = "  " * indent
        for key, info in type(section).model_fields.items():
            lines.append(f"{pad}# {info.description}")
            value = getattr(section, key)
            if _section_type(info.annotation) is not None:
                lines.append(f"{pad}{key}:")
                emit(value, indent + 1)
                continue
            text = yaml.safe_dump({key: plain(value)}, default_flow_style=False, sort_keys=False, width=4096)
            lines.extend(pad + line for line in text.rstrip("\n").split("\n"))
    emit(spec or Spec(), 0)
    return "\n".join(lines) + "\n"


# --- pydantic's errors, one line each: key path, the bad value, what is allowed ----------------------

_EXPECTED = {"string_type": "a string", "int_type": "an integer", "bool_type": "a boolean", "list_type": "a list",
             "tuple_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
             "model_attributes_type": "a mapping", "float_type": "a number"}


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def bare(hint: Any) -> Any:
    """*hint* without Annotated metadata and without `| None`."""
    while True:
        if typing.get_origin(hint) is typing.Annotated:
            hint = typing.get_args(hint)[0]
        elif typing.get_origin(hint) in (types.UnionType, typing.Union):
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        else:
            return hint


def _section_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    """The section (model class) at key path *loc*, or None when it is no section."""
    hint: Any = root
    for part in loc:
        hint = bare(hint)
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            if part not in hint.model_fields:
                return None
            hint = hint.model_fields[part].annotation
        elif typing.get_origin(hint) in (tuple, dict):
            hint = typing.get_args(hint)[-1 if typing.get_origin(hint) is dict else 0]
        else:
            return None
    hint = bare(hint)
    return hint if isinstance(hint, type) and issubclass(hint, BaseModel) else None


#: The text a number was written as in the spec, by key path (None: unknown); see load.written_numbers.
Written = Callable[[tuple], "str | None"]
#: A section's keys named in full up to this many; more end in "...".
MAX_KEYS_SHOWN = 8


def _problems(error: Any, root: type[BaseModel], written: Written | None = None) -> list[Problem]:
    """One pydantic error as Problems (a section's rules report several in one error)."""
    ctx = error.get("ctx") or {}
    if error["type"] == "imagebuild" and "problems" in ctx:
        base = _path(tuple(error["loc"]))
        return [Problem(f"{base}.{sub}" if base else sub, message) for sub, message in ctx["problems"]]
    return [_problem(error, root, written)]


def _quote_hint(loc: tuple, value: Any, written: Written | None) -> str:
    """For a number where text belongs: what YAML made of it, and how to write it (`packer_version: 1.10`
    is the number 1.1)."""
    text = written(loc) if written else None
    if text and text != repr(value) and text != str(value):
        return f": YAML reads the unquoted {text} as the number {value!r}; quote it: \"{text}\""
    return f": quote it: \"{text or value}\"" if isinstance(value, int) or text else ": quote it"


def _section_hint(loc: tuple, value: Any, root: type[BaseModel]) -> str:
    """For a section given as a scalar (`image.base: https://...`): the section's keys, and where a URL goes."""
    section = _section_at(loc, root)
    if section is None:
        return ""
    fields = section.model_fields
    keys = [f"{name} (required)" if info.is_required() else name for name, info in fields.items()]
    shown = ", ".join(keys[:MAX_KEYS_SHOWN]) + (", ..." if len(keys) > MAX_KEYS_SHOWN else "")
    hint = f" with the keys {shown}"
    target = next((name for name in ("source", "url") if name in fields), None)
    if isinstance(value, str) and target and re.match(r"^([a-z]+://|/)", value):
        hint += f"; the URL goes in {_path(loc)}.{target}"
    return hint


def _problem(error: Any, root: type[BaseModel], written: Written | None = None) -> Problem:
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    is_key = bool(loc) and loc[-1] == "[key]"
    path = _path(loc[:-1] if is_key else loc)
    if kind == "imagebuild":
        return Problem(path + (f"[{ctx['index']}]" if "index" in ctx else ""), ctx["message"])
    if is_key:
        return Problem(path, f"bad key {show(value)}, expected {KEY_ALLOWED.get(str(ctx.get('pattern')), 'text')}")
    if kind == "missing":
        return Problem(path, "is required")
    if kind == "extra_forbidden":
        section = _section_at(loc[:-1], root)
        names = list(section.model_fields) if section else []
        near = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return Problem(path, f"unknown key{hint}; allowed keys: {', '.join(names)}")
    if kind == "literal_error" and isinstance(value, str):
        names = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        near = difflib.get_close_matches(value, names, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return Problem(path, f"got {show(value)}, expected one of {', '.join(names)}{hint}")
    if kind == "string_pattern_mismatch":
        allowed = ALLOWED.get(ctx["pattern"], "text matching " + ctx["pattern"])
        return Problem(path, f"got {show(value)}, expected {allowed}")
    if kind == "string_unicode":
        return Problem(path, f"got {show(value)}: a lone UTF-16 surrogate (\\ud800-\\udfff) is not a character "
                       "and cannot be written to a file")
    expected = _EXPECTED.get(kind) or ("a string" if kind == "literal_error" else None)
    if expected:
        if kind == "bool_type" and isinstance(value, str) and value.lower() in YAML11_BOOLEANS:
            expected += " (the spec is read with YAML 1.2 booleans: write true or false)"
        if kind == "string_type" and isinstance(value, int | float) and not isinstance(value, bool):
            expected += _quote_hint(loc, value, written)
        if kind in ("model_type", "model_attributes_type"):
            expected += _section_hint(loc, value, root)
        return Problem(path, f"got {show(value)}, expected {expected}")
    return Problem(path, f"got {show(value)}: {error['msg']}")


def problems_of(exc: ValidationError, root: type[BaseModel] | None = None,
                written: Written | None = None) -> list[Problem]:
    """pydantic's errors as Problems: key path, the bad value, what is allowed. *root*: the model
    validated (the whole spec when None); *written*: the text of each number as the spec wrote it."""
    return [p for error in exc.errors(include_url=False) for p in _problems(error, root or Spec, written)]
