"""Rendered bytes do not depend on which allowed release of the output libraries is installed.

pyproject.toml gives users ranges (tomlkit, PyYAML, Jinja2); the lock pins one release of each for
development and CI. Every golden case (tests/cases) must render to its expected bytes, byte for byte,
under the oldest release each range allows and under the newest one PyPI serves today: the same
`python -m tests.cases check` the suite runs, in a subprocess whose imports come first from a
`pip install --target` directory of exactly those releases. json output is the standard library's.

The negative cases show the check can fail: without imagebuild's own TOML layout (`toml_items.dumps`)
the oldest tomlkit adds a blank line, and without its own values (`toml_items.item`) the newest
writes containerd 2.x's replaced strings in single quotes.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from imagebuild.paths import cache_dir

REPO = Path(__file__).resolve().parent.parent
#: The libraries whose output lands in rendered files, by their names in pyproject.toml.
OUTPUT_LIBRARIES = ("tomlkit", "pyyaml", "jinja2")
#: What each is imported as, to report the version the subprocess really used.
MODULES = {"tomlkit": "tomlkit", "pyyaml": "yaml", "jinja2": "jinja2"}

pytestmark = pytest.mark.slow


def lower_bounds() -> dict[str, str]:
    """{name: oldest allowed version} of OUTPUT_LIBRARIES, from pyproject.toml's dependencies."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = {}
    for dep in deps:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)(,.*)?", dep)
        if match and match.group(1).lower() in OUTPUT_LIBRARIES:
            bounds[match.group(1).lower()] = match.group(2)
    assert set(bounds) == set(OUTPUT_LIBRARIES), f"pyproject.toml gives no lower bound for some of {deps}"
    return bounds


def install(target: Path, requirements: list[str]) -> Path:
    """`pip install --no-deps --target` of *requirements*, once per *target* (made atomically)."""
    if not target.is_dir():
        partial = target.with_name(target.name + ".partial")
        subprocess.run(["rm", "-rf", str(partial)], check=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-input",
                               "--target", str(partial), *requirements], capture_output=True, text=True)
        assert done.returncode == 0, f"pip could not install {requirements}:\n{done.stdout}{done.stderr}"
        partial.rename(target)
    return target


def check_cases(libs: Path, patch: str = "") -> tuple[int, str, dict[str, str]]:
    """Run `tests.cases check` with *libs* first on the path (after *patch*, Python run first);
    returns its exit status, output, and the versions it imported."""
    versions = "; ".join(f"print('version', {n!r}, __import__({m!r}).__version__)" for n, m in MODULES.items())
    code = f"import sys\n{patch}\n{versions}\nfrom tests.cases import main\nsys.exit(main(['check']))\n"
    env = {**os.environ, "PYTHONPATH": f"{libs}{os.pathsep}{REPO}"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    used = dict(line.split()[1:3] for line in done.stdout.splitlines() if line.startswith("version "))
    output = "\n".join(line for line in done.stdout.splitlines() if not line.startswith("version "))
    return done.returncode, output + done.stderr, used


@pytest.fixture(scope="module")
def oldest() -> tuple[Path, dict[str, str]]:
    bounds = lower_bounds()
    key = "-".join(f"{name}{version}" for name, version in sorted(bounds.items()))
    target = install(cache_dir("test-deps") / f"floor-{key}", [f"{n}=={v}" for n, v in bounds.items()])
    return target, bounds


@pytest.fixture(scope="module")
def newest(tmp_path_factory) -> Path:
    """The newest releases PyPI serves today (not cached: tomorrow's release must be tried tomorrow)."""
    return install(tmp_path_factory.mktemp("newest") / "libs", list(OUTPUT_LIBRARIES))


def same_release(a: str, b: str) -> bool:
    pad = lambda v: (tuple(int(p) for p in v.split(".")) + (0, 0, 0))[:3]  # noqa: E731
    return pad(a) == pad(b)


def test_the_oldest_allowed_releases_render_the_expected_bytes(oldest):
    libs, bounds = oldest
    code, output, used = check_cases(libs)
    assert all(same_release(used[n], bounds[n]) for n in bounds), f"imported {used}, wanted {bounds}"
    assert code == 0, f"with {used}, the golden cases render differently:\n{output[-4000:]}"


def test_the_newest_releases_render_the_expected_bytes(newest):
    code, output, used = check_cases(newest)
    assert code == 0, f"with {used}, the golden cases render differently:\n{output[-4000:]}"


def test_without_imagebuilds_layout_the_oldest_tomlkit_differs(oldest):
    """Negative: tomlkit's own blank lines (0.12 puts two before an added runtime table) change the bytes."""
    libs, _ = oldest
    patch = "import tomlkit\nfrom imagebuild.render import config_toml, hosts_toml\n" \
            "config_toml.dumps = hosts_toml.dumps = tomlkit.dumps"
    code, output, used = check_cases(libs, patch)
    assert code == 1, f"the check did not notice tomlkit {used['tomlkit']}'s layout:\n{output[-2000:]}"
    assert "nvidia-runtime: rendered payload/etc/containerd/config.toml" in output


def test_without_imagebuilds_values_a_new_tomlkit_keeps_the_old_quotes(newest):
    """Negative: a string assigned as is takes the replaced value's single quotes (tomlkit 0.13+)."""
    patch = "from imagebuild.render import config_toml, hosts_toml\n" \
            "config_toml.item = hosts_toml.item = lambda value: value"
    code, output, used = check_cases(newest, patch)
    assert code == 1, f"the check did not notice tomlkit {used['tomlkit']}'s quoting:\n{output[-2000:]}"
    assert "+      sandbox = 'registry.cn-hangzhou.aliyuncs.com/google_containers/pause:3.6'" in output
