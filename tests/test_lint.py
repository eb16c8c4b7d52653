"""Lint as a test: ruff and mypy, configured in pyproject.toml, pass on the tree (`make lint`)."""
from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT

RUFF = [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(ROOT / "pyproject.toml")]
MYPY = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]


def _run(cmd: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_passes():
    proc = _run(RUFF, str(ROOT))
    assert proc.returncode == 0, f"ruff check found problems (`ruff check --fix` fixes some):\n{proc.stdout}"


def test_mypy_passes_on_the_package():
    proc = _run(MYPY)
    assert proc.returncode == 0, f"mypy found problems:\n{proc.stdout}{proc.stderr}"


def test_the_lint_fails_on_bad_code(tmp_path):
    """Both checks can fail: an unused import, a stray noqa and a long line for ruff; a type error for mypy."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\nx = 1  # noqa: E501\n" + f"y = {'1 + ' * 40}1\n")
    proc = _run(RUFF, str(bad))
    assert proc.returncode == 1
    assert all(code in proc.stdout for code in ("F401", "RUF100", "E501")), proc.stdout
    typed = tmp_path / "typed.py"
    typed.write_text("def f(n: int) -> str:\n    return n\n")
    proc = _run(MYPY, "--no-incremental", str(typed))
    assert proc.returncode == 1 and "Incompatible return value type" in proc.stdout, proc.stdout
