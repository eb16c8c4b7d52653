"""TOML values whose text imagebuild decides, not the installed tomlkit.

tomlkit keeps the style of a value it replaces (0.13+ writes a new string in the quotes of the old
one), and its defaults for new values may change between releases. Every value the renderers write
goes through `item()`: strings are basic ("double-quoted", escaped), arrays one line, tables
standard, and `dumps()` lays out blank lines itself, so the bytes of config.toml and hosts.toml
depend on the spec and imagebuild alone.
"""
from __future__ import annotations

import re
from typing import Any

import tomlkit
from tomlkit.items import Item


def item(value: Any) -> Item:
    """*value* (str, bool, int, float, list/tuple, dict) as a tomlkit item in imagebuild's style."""
    if isinstance(value, Item):
        raise TypeError("item() takes plain values, not tomlkit items")
    if isinstance(value, str):
        return tomlkit.string(value, literal=False, multiline=False)
    if isinstance(value, bool | int | float):
        return tomlkit.item(value)
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, dict) for v in value):
            tables = tomlkit.aot()
            for entry in value:
                tables.append(table(entry))
            return tables
        array = tomlkit.array()
        for entry in value:
            array.append(item(entry))
        return array
    if isinstance(value, dict):
        return table(value)
    raise TypeError(f"no TOML form for {type(value).__name__}")


def table(values: dict) -> Item:
    """A standard table of *values*, each through `item()`."""
    out = tomlkit.table()
    for key, value in values.items():
        out[key] = item(value)
    return out


def dumps(doc: Any) -> str:
    """*doc* as text, with at most one blank line between blocks: tomlkit releases differ in the
    blank lines they put before a table added to a parsed document (0.12 wrote two). Safe because
    no value holds a blank line: `item()` writes no multi-line strings and containerd's reference
    defaults have none (tests/test_config_toml.py checks both)."""
    return re.sub(r"\n{3,}", "\n\n", tomlkit.dumps(doc))
