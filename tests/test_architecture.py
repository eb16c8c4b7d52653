"""The package's layout is its architecture: rooms by stage, imports only downward, no circle, small files.

Rooms, lowest first: the foundation (errors, paths, digest, progress, run) and the in-guest code
(guest/, stdlib only), spec/, render/, vm/, build/, verify/, aws/, pipeline, cli. A module imports
only modules of its own room or rooms below; no import circle crosses rooms (the in-guest check's
stdlib-only modules import each other inside guest/). Imports are read with `ast`, at module level
and inside functions alike, so nothing hides behind a lazy import. Product code never imports the
developer tools (devtools/, outside the package) or the tests.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import imagebuild

PACKAGE = Path(imagebuild.__file__).resolve().parent
ROOMS = [  # (room, rank): a module may import its own rank and below
    ("imagebuild.errors", 0), ("imagebuild.paths", 0), ("imagebuild.digest", 0), ("imagebuild.progress", 0),
    ("imagebuild.run", 0), ("imagebuild.guest", 0), ("imagebuild", 0),
    ("imagebuild.spec", 1), ("imagebuild.render", 2), ("imagebuild.vm", 3), ("imagebuild.build", 4),
    ("imagebuild.verify", 5), ("imagebuild.aws", 6), ("imagebuild.pipeline", 7),
    ("imagebuild.cli", 8), ("imagebuild.__main__", 8),
]
MAX_TOP_LEVEL_MODULES = 10
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> tuple[str, int]:
    """The room *module* sits in and its rank: the longest room name that is *module* or contains it."""
    for name, rank in sorted(ROOMS, key=lambda r: -len(r[0])):
        if module == name or module.startswith(name + "."):
            return name, rank
    raise AssertionError(f"{module} is in no room: add it to ROOMS")


def imported(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of every module (or module attribute) *source*, the module *module*, imports."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (an attribute import counts as its module)."""
    modules = package_modules()
    out = {}
    for name, path in modules.items():
        names = imported(path.read_text(), name, path.name == "__init__.py")
        # `from package import submodule` imports the submodule (the package's __init__ runs first in
        # any case): the package itself counts only for a name it defines
        names = {n for n in names if not any(m.startswith(n + ".") and m in modules for m in names)}
        found = {n if n in modules else n.rpartition(".")[0] for n in names}
        out[name] = {n for n in found if n in modules and n != name}
    return out


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Every import that runs up: to a room of a higher rank."""
    return [f"{a} ({room(a)[0]}) imports {b} ({room(b)[0]})" for a, targets in sorted(edges.items())
            for b in sorted(targets) if room(b)[1] > room(a)[1]]


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None
    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def forbidden(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of *module* (product code) of the developer tools or the tests."""
    return [f"{module} imports {n}" for n in sorted(imported(source, module, is_package))
            if n.split(".")[0] in ("devtools", "tests")]


def test_no_import_runs_up():
    edges = graph()
    assert len(edges) > 50 and "imagebuild.verify.boot" in edges
    assert upward(edges) == []


def test_no_circle_crosses_rooms():
    edges = graph()
    crossing = {a: {b for b in targets if room(b)[0] != room(a)[0] or room(a)[0] != "imagebuild.guest"}
                for a, targets in edges.items()}
    assert cycle(crossing) is None, cycle(crossing)


def test_product_code_imports_neither_devtools_nor_tests():
    bad = []
    for name, path in package_modules().items():
        bad += forbidden(path.read_text(), name, path.name == "__init__.py")
    assert bad == []


def test_few_modules_at_the_top_and_no_big_file():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    big = {name: n for name, path in package_modules().items()
           if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert big == {}


# --- the checks can fail ---------------------------------------------------------------------------

def test_an_upward_import_is_found_even_inside_a_function():
    source = "def f():\n    from imagebuild.verify import cri_lab\n"
    edges = {"imagebuild.build.bake": {n for n in imported(source, "imagebuild.build.bake")
                                       if n.count(".") == 2}}
    assert upward(edges) == ["imagebuild.build.bake (imagebuild.build) imports imagebuild.verify.cri_lab "
                             "(imagebuild.verify)"]
    assert upward({"imagebuild.render.userdata": {"imagebuild.spec.model"}}) == []


def test_the_circle_finder_finds_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": {"c"}}) is None


@pytest.mark.parametrize("source, name", [
    ("import devtools.serve", "devtools.serve"),
    ("from devtools import debian_artifacts", "devtools"),
    ("def f():\n    from devtools.golden import run\n", "devtools.golden"),
    ("import tests.support", "tests.support"),
    ("from tests import cri", "tests"),
])
def test_every_form_of_importing_devtools_or_tests_is_found(source, name):
    assert f"imagebuild.verify.boot imports {name}" in forbidden(source, "imagebuild.verify.boot")


def test_a_module_outside_every_room_is_named():
    with pytest.raises(AssertionError, match="in no room"):
        room("elsewhere.module")
