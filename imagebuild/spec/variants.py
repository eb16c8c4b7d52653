"""`variants`: named partial specs merged over the spec, each validated as a whole spec (`imagebuild matrix`).

A variant sets some of the spec's sections (model.VARIANT_SECTIONS); they are merged over the spec as written
(a mapping key by key, a list or a value replaces), the variant's family becomes <name>-<variant>, and the
result goes through the same loader and rules as any spec. A problem in a variant is reported under
`variants.<variant>.` and the key path; rules between variants (names, SSM parameters) are checked here.
"""
from __future__ import annotations

import copy
from typing import Any

from imagebuild.spec.fields import Problem, show

MAX_NAME = 63


def merged(base: Any, over: Any) -> Any:
    """*over* merged over *base*: mappings key by key (recursively), anything else replaced by *over*."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = merged(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def family(name: str, variant: str) -> str:
    """The family (spec name) of *variant* of the spec named *name*."""
    return f"{name}-{variant}"


def documents(raw: dict, name: str, variants: dict[str, dict]) -> dict[str, dict]:
    """variant -> its whole spec document: *raw* (the spec as written, in the current version) with each
    variant's sections merged over it, named <name>-<variant>, without `variants`."""
    base = {key: value for key, value in raw.items() if key != "variants"}
    out = {}
    for variant, sections in variants.items():
        doc = dict(base)
        for section, value in sections.items():
            if value is not None:
                doc[section] = merged(doc.get(section, {}), value)
        doc["name"] = family(name, variant)
        out[variant] = doc
    return out


def name_problems(name: str, variants: dict[str, Any]) -> list[Problem]:
    """A variant whose family name <name>-<variant> is longer than a spec name may be."""
    problems = []
    for variant in variants:
        full = family(name, variant)
        if len(full) > MAX_NAME:
            problems.append(Problem(f"variants.{variant}", f"the variant's family {show(full)} is {len(full)} "
                                    f"characters, expected at most {MAX_NAME} (name and variant joined by -): "
                                    "shorten the spec's name or the variant's"))
    return problems


def within(variant: str, problem: Problem) -> Problem:
    """*problem* of a variant's merged spec, named under `variants.<variant>`."""
    return Problem(f"variants.{variant}" + (f".{problem.path}" if problem.path else ""), problem.message)


def collisions(ssm: dict[str, str | None]) -> list[Problem]:
    """Variants that would publish to one SSM parameter (*ssm*: variant -> its image.aws.ssm_parameter)."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for variant, parameter in ssm.items():
        if parameter is None:
            continue  # the default, /imagebuild/<family>/latest, differs per variant
        if parameter in seen:
            problems.append(Problem(f"variants.{variant}.image.aws.ssm_parameter", f"got {show(parameter)}, the "
                                    f"same as variant {seen[parameter]}'s (set in the variant or the spec); each "
                                    "variant publishes its own family, expected a parameter of its own (or none: "
                                    "/imagebuild/<family>/latest)"))
        else:
            seen[parameter] = variant
    return problems
