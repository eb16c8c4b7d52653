"""The markers' rules (tests/conftest.py): arm64 deselected by default (pyproject's addopts) and never without
e2e; e2e only under tests/e2e; the order (fast, boots, `builds`); a Go build used by a fast test unmarked fails it;
`make test`'s two processes (devtools/testrun.py)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import pytest_collection_modifyitems

ROOT = Path(__file__).resolve().parents[1]


class _Item:
    def __init__(self, nodeid: str, *marks: str, fixtures: tuple[str, ...] = ()) -> None:
        self.nodeid, self.marks, self.fixturenames = nodeid, marks, list(fixtures)

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
    """addopts deselects arm64, and a -m option replaces addopts' -m: so each target names arm64 itself (make test
    through its two processes' marker expressions, which together select what `not arm64 and not extra` does)."""
    from devtools import testrun

    makefile = (ROOT / "Makefile").read_text()
    targets = dict(re.findall(r"^([a-z0-9-]+): venv\n\t\$\(PY\) -m pytest (.*)$", makefile, flags=re.M))
    assert re.search(r"^test: venv\n\t\$\(PY\) -m devtools test$", makefile, flags=re.M)
    assert testrun.SUITES == {"fast": "not e2e and not arm64 and not extra", "boots": "e2e and not arm64 and not extra"}
    assert targets["test-fast"].startswith('-m "not e2e and not arm64 and ')
    assert targets["test-e2e"].startswith('-m "e2e and not arm64 and ')
    assert targets["test-arm64"].startswith("-m arm64")
    assert "-m 'not arm64'" in (ROOT / "pyproject.toml").read_text()


def test_what_needs_no_go_build_runs_first_then_the_rest_each_in_the_order_it_came():
    """The fast tests that need no Go build, the boots that need none, the boots that do (a Go-built fixture),
    then the fast tests marked `builds`."""
    items = [_Item("tests/e2e/a::golden", "e2e", fixtures=("golden_bake", "mirror")), _Item("tests/a::built", "builds"),
             _Item("tests/a::fast"), _Item("tests/e2e/b::boot", "e2e", fixtures=("base_image",)),
             _Item("tests/e2e/c::d13", "e2e", fixtures=("debian13",)), _Item("tests/b::fast"),
             _Item("tests/b::built", "builds")]
    pytest_collection_modifyitems(None, items)
    assert [i.nodeid for i in items] == ["tests/a::fast", "tests/b::fast", "tests/e2e/b::boot", "tests/e2e/a::golden",
                                         "tests/e2e/c::d13", "tests/a::built", "tests/b::built"]


def test_the_go_built_fixtures_are_those_the_boots_use():
    """GO_BUILT_FIXTURES names fixtures that exist, and each of them builds from the Go module proxy."""
    from tests.conftest import GO_BUILT_FIXTURES

    for name in GO_BUILT_FIXTURES:
        source = next(text for path in (ROOT / "tests" / "e2e").glob("*.py")
                      if f"def {name}(" in (text := path.read_text()))
        body = source.split(f"def {name}(", 1)[1].split("\n\n\n", 1)[0]
        assert re.search(r"upstream\.|local_mirror\(|default_spec_on\(", body), name


def test_a_fast_test_that_uses_a_go_build_unmarked_fails_naming_what_it_used():
    from tests.conftest import unmarked_build_use

    said = unmarked_build_use(_Item("tests/a::t"), ["containerd 2.3.7", "runc 1.5.2", "containerd 2.3.7"])
    assert said.startswith("tests/a::t used containerd 2.3.7, runc 1.5.2, built from the Go module proxy")
    assert "mark it `builds`" in said
    for marks in (("builds",), ("e2e",), ("extra",)):
        assert unmarked_build_use(_Item("tests/a::t", *marks), ["containerd 2.3.7"]) is None
    assert unmarked_build_use(_Item("tests/a::t"), []) is None


def test_every_use_of_a_go_build_is_seen_even_from_the_cache(tmp_path, request):
    """The watcher sees a piece found built in the cache too, so a warm run fails an unmarked test as a first
    run would (this test takes its record back: it is the one test allowed to use a piece unmarked)."""
    from devtools import upstream
    from tests import conftest

    target = tmp_path / "piece"
    target.mkdir()
    (target / upstream._STAMP).write_text('{"built": "before"}')
    assert upstream._once(target, "a piece built before", lambda tmp: pytest.fail("built again")) == {"built": "before"}
    assert conftest._used.pop(request.node.nodeid) == ["a piece built before"]


def test_make_test_prebuilds_every_family_and_runc_it_tests_the_boots_pieces_first():
    """`make test` (devtools/testrun.py) starts devtools.prebuild's lanes beside the tests, and the prebuild
    covers every family's binaries, each runc the families use, and both base images; the Go lane builds the
    boots' families (BOOTED), their runc and the CNI plugins before anything else, the first boot's family and
    its runc first of all."""
    import inspect

    from devtools import prebuild, testrun, upstream
    from tests.support import FAMILY_VERSIONS

    assert inspect.signature(testrun.run).parameters["prebuild"].default is True
    names = [what for what, _ in prebuild.pieces()]
    assert {f"containerd {family}" for family in FAMILY_VERSIONS} <= set(names)
    assert {f"runc {built}" for _, built in upstream.RUNC.values()} <= set(names)
    assert {"base image bookworm amd64", "base image trixie amd64"} <= set(names)
    go = [what for what, _ in prebuild.pieces("go")]
    booted = {f"containerd {family}" for family in prebuild.BOOTED} | {"CNI plugins"} | {
        f"runc {upstream.RUNC[family][1]}" for family in prebuild.BOOTED}
    assert set(go[:len(booted)]) == booted, go
    # the first boot (the golden bake, the mirror's first family) waits for its own containerd and runc only
    first = prebuild.BOOTED[0]
    assert go[:2] == [f"containerd {first}", f"runc {upstream.RUNC[first][1]}"], go


PROJECT = {
    "pytest.ini": "[pytest]\nmarkers =\n    e2e: a boot\n    arm64: arm64\n    extra: extra\n",
    "test_fast.py": "import pathlib, time\n\ndef test_fast():\n    t = time.time()\n    time.sleep(3)\n"
                    "    pathlib.Path('fast.when').write_text(f'{{t}} {{time.time()}}')\n",
    "test_boot.py": "import pathlib, time\nimport pytest\n\n@pytest.mark.e2e\ndef test_boot():\n    t = time.time()\n"
                    "    time.sleep(3)\n    pathlib.Path('boots.when').write_text(f'{{t}} {{time.time()}}')\n"
                    "    assert {boot_passes}\n",
}


@pytest.mark.parametrize("boot_passes", [True, False])
def test_make_test_runs_the_fast_tests_and_the_boots_side_by_side_and_fails_with_either(tmp_path, boot_passes):
    """Both processes run (each line prefixed with its name), at once, and the exit status fails when either
    suite fails."""
    import io

    from devtools import testrun

    for name, text in PROJECT.items():
        (tmp_path / name).write_text(text.format(boot_passes=boot_passes))
    out = io.StringIO()
    code = testrun.run(["-p", "no:cacheprovider"], cwd=tmp_path, prebuild=False, out=out)
    said = out.getvalue()
    assert re.search(r"^\[fast\] test_fast\.py::test_fast PASSED", said, flags=re.M), said
    assert re.search(rf"^\[boots\] test_boot\.py::test_boot {'PASSED' if boot_passes else 'FAILED'}", said,
                     flags=re.M), said
    assert re.search(r"^\[fast\] .* 1 passed, 1 deselected", said, flags=re.M), said
    (fast_start, fast_end), (boots_start, boots_end) = (
        map(float, (tmp_path / f"{name}.when").read_text().split()) for name in ("fast", "boots"))
    assert max(fast_start, boots_start) < min(fast_end, boots_end)   # at once
    assert (code == 0) is boot_passes and said.splitlines()[-1].startswith(
        f"make test: fast passed, boots {'passed' if boot_passes else 'exit 1'}, in "), said
