"""The arm64 marker: deselected by default (pyproject's addopts), and never without e2e (tests/conftest.py)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import pytest_collection_modifyitems

ROOT = Path(__file__).resolve().parents[1]


class _Item:
    def __init__(self, nodeid: str, *marks: str) -> None:
        self.nodeid, self.marks = nodeid, marks

    def get_closest_marker(self, name: str):
        return name if name in self.marks else None


def test_an_arm64_test_without_e2e_stops_the_collection():
    pytest_collection_modifyitems(None, [_Item("tests/e2e/t::ok", "e2e", "arm64"), _Item("tests/e2e/t::amd64", "e2e"),
                                         _Item("tests/t::fast")])
    with pytest.raises(pytest.UsageError, match="marked arm64 but not e2e: tests/t::loose"):
        pytest_collection_modifyitems(None, [_Item("tests/e2e/t::ok", "e2e", "arm64"),
                                             _Item("tests/t::loose", "arm64")])


def test_an_e2e_test_outside_tests_e2e_stops_the_collection():
    with pytest.raises(pytest.UsageError, match="outside tests/e2e/.*: tests/aws/t::boot$"):
        pytest_collection_modifyitems(None, [_Item("tests/e2e/t::ok", "e2e"), _Item("tests/aws/t::boot", "e2e")])
    with pytest.raises(pytest.UsageError, match="not marked e2e: tests/e2e/t::unmarked$"):
        pytest_collection_modifyitems(None, [_Item("tests/e2e/t::unmarked")])


def test_every_make_target_says_what_it_does_with_arm64():
    """addopts deselects arm64, and a -m option replaces addopts' -m: so each target names arm64 itself."""
    targets = dict(re.findall(r"^([a-z0-9-]+): venv\n\t\$\(PY\) -m pytest (.*)$", (ROOT / "Makefile").read_text(),
                              flags=re.M))
    assert targets["test"].startswith('-m "not arm64 and ')
    assert targets["test-fast"].startswith('-m "not e2e and not arm64 and ')
    assert targets["test-e2e"].startswith('-m "e2e and not arm64 and ')
    assert targets["test-arm64"].startswith("-m arm64")
    assert "-m 'not arm64'" in (ROOT / "pyproject.toml").read_text()
