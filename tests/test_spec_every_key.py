"""Every key of the model, given a value of the wrong kind, is refused in the spec's own words.

The bad-input table (tests/test_bad_specs.py) holds the examples; this walks the whole model, so a
key added later is held to the same error quality: the message names the key path, shows the bad
value, says what is allowed, and none of pydantic's own phrasing ("Input should ...") leaks out.
"""
from __future__ import annotations

import copy
import typing

import pytest
from pydantic import BaseModel

from imagebuild.spec import SpecError, fields, from_document, model, problems

# Sections inside lists and mappings need an item to hold the bad value: these are valid.
BASE = {"config": {"registry": {"mirrors": [{"host": "docker.io", "endpoints": [{"url": "https://m.example"}]}]},
                   "runtimes": {"x": {}}},
        "verify": {"checks": [{"name": "c", "run": "true"}]},
        "image": {"base": {"source": "/srv/base.qcow2", "checksum": "sha256:" + "0" * 64}}}
FREE_FORM = {("config", "overrides")}  # any TOML goes there (checked by its own rules)


def _section(hint: typing.Any) -> tuple[type[BaseModel] | None, object | None]:
    """(the section class inside *hint*, the step into it: 0 for a list item, "x" for a mapping value)."""
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint, None
    if typing.get_origin(hint) is tuple and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], 0
    if typing.get_origin(hint) is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return args[1], "x"
    if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], None
    return None, None


def leaves(section: type[BaseModel], path: tuple = ()) -> typing.Iterator[tuple]:
    for name, info in section.model_fields.items():
        here = path + (name,)
        inner, step = _section(info.annotation)
        if inner is None:
            yield here
        else:
            yield here  # the section itself, given a scalar
            yield from leaves(inner, here + ((step,) if step is not None else ()))


def _with(path: tuple, value: object) -> dict:
    doc = copy.deepcopy(BASE)
    node: typing.Any = doc
    for part, nxt in zip(path, path[1:] + (None,), strict=True):
        if nxt is None:
            node[part] = value
        elif isinstance(part, int):
            node = node[part]
        else:
            node = node.setdefault(part, [{}] if isinstance(nxt, int) else {})
    return doc


def _name(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


LEAVES = [p for p in leaves(model.Spec) if p not in FREE_FORM and p != ("apiVersion",)]


def test_the_walk_covers_the_model():
    names = {_name(p) for p in LEAVES}
    assert len(names) > 100
    assert {"config.registry.mirrors[0].endpoints[0].headers", "config.runtimes.x.binary_name",
            "containerd.install.cni_plugins.sha256", "verify.checks[0].run", "image.aws.kms_keys"} <= names


@pytest.mark.parametrize("bad", [[["nested"]], 1.5], ids=["list-of-lists", "float"])
def test_every_key_refuses_a_value_of_the_wrong_kind_in_its_own_words(bad):
    assert from_document(copy.deepcopy(BASE))  # the base holds no problem of its own
    for path in LEAVES:
        name = _name(path)
        with pytest.raises(SpecError) as info:
            from_document(_with(path, bad))
        problems = [p for p in info.value.problems if p.path == name or p.path.startswith((name + ".", name + "["))]
        assert problems, f"{name}: no problem names the key: {info.value.problems}"
        for problem in problems:
            assert in_own_words(problem), str(problem)


def in_own_words(problem: fields.Problem) -> bool:
    """The message shows the value and what is allowed, not pydantic's phrasing."""
    text = str(problem)
    return ("Input should" not in text and "pydantic" not in text and problem.message.startswith("got ")
            and " expected " in problem.message)


def test_an_error_the_formatter_does_not_know_would_be_caught():
    # A constraint the spec's types never use (pydantic's own `gt`): the fallback shows pydantic's text,
    # and the walk above would flag it.
    from pydantic import Field, ValidationError

    class Foreign(BaseModel):
        n: int = Field(gt=5)

    with pytest.raises(ValidationError) as info:
        Foreign(n=1)
    (problem,) = problems.problems_of(info.value, Foreign)
    assert problem.path == "n" and not in_own_words(problem)
