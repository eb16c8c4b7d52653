"""Jinja2 for what is text by nature (shell, unit files, HCL), with an escaping filter per language.

Values reach a template only through a filter that makes them inert in that language; the spec's
patterns already refuse control characters, and the filters refuse them again as a last guard.
"""
from __future__ import annotations

import json
import re
import shlex
from functools import cache
from pathlib import Path

import jinja2

PACKAGE_DIR = Path(__file__).resolve().parent.parent
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def shipped_dir(name: str) -> Path:
    """A top-level template folder (`packer/`, `cloud-init/`): inside the wheel, or in the checkout."""
    packaged = PACKAGE_DIR / "_shipped" / name
    return packaged if packaged.is_dir() else PACKAGE_DIR.parent / name


def _plain(value: object) -> str:
    text = str(value)
    if _CONTROL.search(text):
        raise ValueError(f"refusing a control character in {text!r}")
    return text


def shquote(value: object) -> str:
    """A single shell word, whatever the value holds ($, backticks, quotes)."""
    return shlex.quote(_plain(value))


def systemd(value: object) -> str:
    """A unit-file value: `%` would start a specifier and `\\` an escape."""
    return _plain(value).replace("\\", "\\\\").replace("%", "%%")


def hcl(value: object) -> str:
    """An HCL2 string literal: JSON escaping plus `$${` / `%%{` so nothing interpolates."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(hcl(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{hcl(str(k))} = {hcl(v)}" for k, v in value.items()) + "}"
    return json.dumps(_plain(value)).replace("${", "$${").replace("%{", "%%{")


def yesno(value: bool) -> str:
    return "yes" if value else "no"


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([
            jinja2.FileSystemLoader(PACKAGE_DIR / "templates"),
            jinja2.FileSystemLoader(shipped_dir("packer")),
            jinja2.FileSystemLoader(shipped_dir("cloud-init")),
        ]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=False,
        autoescape=False,
        # Shell's ${#array[@]} would open a Jinja comment; templates use no comments.
        comment_start_string="{{#",
        comment_end_string="#}}",
    )
    env.filters.update(shquote=shquote, systemd=systemd, hcl=hcl, yesno=yesno)
    return env


def render_template(name: str, **context: object) -> str:
    return environment().get_template(name).render(**context)
