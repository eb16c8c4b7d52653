"""The spec's modules form layers, not a circle (issue 12): the model at the bottom, containerd's
key paths above it, render and checks above those, spec (the reader) on top.

Imports are read from the source (module level and inside functions alike), so a circle cannot
hide behind an import inside a function.
"""
from __future__ import annotations

import ast
from pathlib import Path

import imagebuild

PACKAGE = Path(imagebuild.__file__).parent
LAYER = ["imagebuild.model", "imagebuild.containerd_keys", "imagebuild.render", "imagebuild.render.config_toml",
         "imagebuild.render.expected", "imagebuild.render.hosts_toml", "imagebuild.render.userdata",
         "imagebuild.render.templating", "imagebuild.checks", "imagebuild.spec"]


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(module: str) -> set[str]:
    """Every imagebuild module *module* imports, wherever in the file the import is."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    return imports_in(path.read_text(), module, is_package=path.name == "__init__.py")


def imports_in(source: str, module: str, is_package: bool = False) -> set[str]:
    package = module if is_package else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for name in candidates:
            where = PACKAGE.parent / name.replace(".", "/")
            exists = where.with_suffix(".py").exists() or (where / "__init__.py").exists()
            if name.startswith("imagebuild") and exists:
                found.add(name)
    return found - {module}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in *graph*, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None
    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_model_imports_nothing_of_the_package():
    assert imports("imagebuild.model") == set()


def test_key_paths_know_only_the_model_and_render_never_reads_the_spec_module():
    assert imports("imagebuild.containerd_keys") == {"imagebuild.model"}
    for module in LAYER:
        if module.startswith("imagebuild.render"):
            assert not imports(module) & {"imagebuild.spec", "imagebuild.checks"}, module


def test_no_circle_through_the_spec_modules():
    graph = {module: imports(module) for module in LAYER}
    assert cycle(graph) is None, cycle(graph)


def test_the_circle_finder_finds_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]



def test_an_import_inside_a_function_counts():
    # as the old spec.py hid its circle: render imported inside from_document
    source = "import json\n\ndef from_document():\n    from .render.config_toml import normalise_overrides\n"
    assert "imagebuild.render.config_toml" in imports_in(source, "imagebuild.spec")
    assert cycle({"imagebuild.spec": imports_in(source, "imagebuild.spec"),
                  "imagebuild.render.config_toml": {"imagebuild.spec"}}) is not None
