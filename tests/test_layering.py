"""Product code never imports the developer tools or the tests.

Every module of the package is read with `ast` (imports inside functions count too). Only
`imagebuild.golden` (the `make golden` job: local mirror, release-shaped tarballs) may import
`imagebuild.devtools`; no product module imports `tests`.
"""
import ast
from pathlib import Path

import imagebuild

PACKAGE = Path(imagebuild.__file__).resolve().parent
DEVTOOLS = "imagebuild.devtools"
MAY_IMPORT_DEVTOOLS = {"imagebuild.golden"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of every module *source* (the module *module*) imports, anywhere in it."""
    names = set()
    package = module if is_package else module.rpartition(".")[0]
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


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of *module* that break the layering (empty when it keeps to it)."""
    bad = []
    for name in sorted(imported(source, module, is_package)):
        if module.startswith(DEVTOOLS) or module in MAY_IMPORT_DEVTOOLS:
            forbidden = name == "tests" or name.startswith("tests.")
        else:
            forbidden = (name == DEVTOOLS or name.startswith(DEVTOOLS + ".") or name == "tests"
                         or name.startswith("tests."))
        if forbidden:
            bad.append(f"{module} imports {name}")
    return bad


def test_product_modules_import_neither_devtools_nor_tests():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 30 and any(_module_name(p) == "imagebuild.verify" for p in modules)
    bad = []
    for path in modules:
        bad += violations(path.read_text(), _module_name(path), path.name == "__init__.py")
    assert bad == []


def test_golden_is_the_one_that_imports_devtools():
    """The exception is real: golden does import devtools (so the check above sees such imports)."""
    source = (PACKAGE / "golden.py").read_text()
    assert any(n.startswith(DEVTOOLS) for n in imported(source, "imagebuild.golden"))


def test_the_check_finds_every_form_of_import():
    """Negatives: each way to import devtools or tests from a product module is reported."""
    forms = {
        "import imagebuild.devtools.serve": "imagebuild.devtools.serve",
        "from imagebuild.devtools import debian_artifacts": "imagebuild.devtools",
        "from imagebuild import devtools": "imagebuild.devtools",
        "def f():\n    from .devtools import testimage\n": "imagebuild.devtools",
        "def f():\n    from ..devtools.serve import serve\n": "imagebuild.devtools.serve",
        "import tests.support": "tests.support",
        "from tests import cri": "tests",
    }
    for source, name in forms.items():
        module = "imagebuild.aws.publish" if "..devtools" in source else "imagebuild.verify"
        assert f"{module} imports {name}" in violations(source, module), source
    assert violations("from . import testimage\nfrom .render import userdata\n", "imagebuild.verify") == []
    assert violations("from imagebuild.devtools import serve\n", "imagebuild.golden") == []
    assert violations("from tests import support\n", "imagebuild.devtools.serve") == \
        ["imagebuild.devtools.serve imports tests", "imagebuild.devtools.serve imports tests.support"]
