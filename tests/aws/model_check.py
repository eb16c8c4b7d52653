"""Check every request against botocore's own service model, and record every API call.

moto accepts requests AWS rejects (a 256-character tag value on StartSnapshot, a ClientToken
over 255 characters, an unknown enum value). botocore itself checks types and required members
but not max lengths, patterns or enums; `install(session)` adds those checks through botocore's
event system (`before-parameter-build`), on every client later made from that session, and
records `(IAM action, region)` of each call for the IAM policy test. boto3 is not modified.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any


class ModelViolation(AssertionError):
    """A request that AWS would reject by its service model."""


def violations(shape: Any, value: Any, path: str) -> list[str]:
    """What in *value* breaks the constraints of botocore *shape* (empty when nothing does)."""
    problems: list[str] = []
    meta = shape.metadata
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{path}: expected a structure, got {type(value).__name__}"]
        for name in shape.required_members:
            if name not in value:
                problems.append(f"{path}.{name}: required")
        for name, item in value.items():
            member = shape.members.get(name)
            if member is None:
                problems.append(f"{path}.{name}: not a member of {shape.name}")
                continue
            problems += violations(member, item, f"{path}.{name}")
        return problems
    if kind == "list":
        if not isinstance(value, (list, tuple)):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        problems += _range(meta, len(value), path, "items")
        for index, item in enumerate(value):
            problems += violations(shape.member, item, f"{path}[{index}]")
        return problems
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{path}: expected a map"]
        problems += _range(meta, len(value), path, "entries")
        for key, item in value.items():
            problems += violations(shape.key, key, f"{path} key {key!r}")
            problems += violations(shape.value, item, f"{path}[{key!r}]")
        return problems
    if kind == "string":
        if not isinstance(value, str):
            return [f"{path}: expected a string, got {type(value).__name__}"]
        problems += _range(meta, len(value), path, "characters")
        enum = getattr(shape, "enum", None) or []
        if enum and value not in enum:
            problems.append(f"{path}: {value!r} is not one of {enum}")
        pattern = meta.get("pattern")
        if pattern and not re.search(_python_pattern(pattern), value, re.DOTALL):
            problems.append(f"{path}: {value!r} does not match {pattern!r}")
        return problems
    if kind in ("integer", "long", "float", "double"):
        for bound, ok in (("min", lambda b: value >= b), ("max", lambda b: value <= b)):
            if bound in meta and not ok(meta[bound]):
                problems.append(f"{path}: {value} breaks {bound} {meta[bound]}")
        return problems
    if kind == "blob":
        if isinstance(value, (bytes, bytearray)):
            problems += _range(meta, len(value), path, "bytes")
        return problems
    return problems


def _range(meta: dict, size: int, path: str, unit: str) -> list[str]:
    problems = []
    if "min" in meta and size < meta["min"]:
        problems.append(f"{path}: {size} {unit}, the model's minimum is {meta['min']}")
    if "max" in meta and size > meta["max"]:
        problems.append(f"{path}: {size} {unit}, the model's maximum is {meta['max']}")
    return problems


_PATTERNS: dict[str, str] = {}


def _python_pattern(pattern: str) -> str:
    """The model's (Java-flavoured) pattern for Python's re; fails loudly on what re cannot read."""
    if pattern not in _PATTERNS:
        translated = pattern.replace(r"\p{L}", "a-zA-Z\u00c0-\uffff").replace(r"\p{Z}", " \u00a0\u2000-\u200a")
        translated = translated.replace(r"\p{N}", "0-9")
        re.compile(translated)  # an unreadable pattern is an error of this checker, not a pass
        _PATTERNS[pattern] = translated
    return _PATTERNS[pattern]


def iam_action(operation_model: Any) -> str:
    """`ebs:StartSnapshot`: the IAM action of an operation (its signing name and operation name)."""
    service = operation_model.service_model
    prefix = service.signing_name or service.endpoint_prefix
    return f"{prefix}:{operation_model.name}"


class CallLog:
    """Every call made by clients of the sessions it is installed on: (IAM action, params)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self._lock = threading.Lock()

    def actions(self) -> set[str]:
        return {action for action, _ in self.calls}

    def params(self, action: str) -> list[dict]:
        return [params for name, params in self.calls if name == action]

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()


def install(session: Any, log: CallLog | None = None) -> None:
    """Check (and with *log*, record) every request of clients made from boto3/botocore *session*."""
    events = session.events if hasattr(session, "events") else session.get_component("event_emitter")

    def check(params: dict, model: Any, **_: Any) -> None:
        if log is not None:
            with log._lock:
                log.calls.append((iam_action(model), {k: v for k, v in params.items() if k != "BlockData"}))
        if model.input_shape is None:
            return
        problems = violations(model.input_shape, params, model.name)
        if problems:
            raise ModelViolation(f"{iam_action(model)} would be rejected by AWS: " + "; ".join(problems))

    events.register("before-parameter-build", check, unique_id="imagebuild-model-check")


# --------------------------------------------------------------------------- the documented IAM policies

def documented_policies(directory: Path) -> dict[str, set[str]]:
    """The documented IAM policy per command: docs/iam/<command>.json -> {command: the actions it allows}."""
    import json

    policies: dict[str, set[str]] = {}
    for path in sorted(directory.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        actions = set()
        for statement in document["Statement"]:
            if statement["Effect"] == "Allow":
                actions.update([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
        policies[path.stem] = actions
    return policies


def uncovered(actions: set[str], allowed: set[str]) -> set[str]:
    """Actions that no entry of *allowed* (exact, or a trailing-* wildcard) grants."""
    def granted(action: str) -> bool:
        return any(action == a or (a.endswith("*") and action.startswith(a[:-1])) for a in allowed)

    return {action for action in actions if not granted(action)}
