"""Golden cases (tests/cases/<name>/): every rendered file of each spec, byte for byte.

On a difference the test prints unified diffs; if the change is intended, run `make regen-cases`
(python -m tests.cases regen) and review the diff of tests/cases/*/expected before committing.
"""
from __future__ import annotations

import pytest

from imagebuild import render
from imagebuild.spec import load
from tests import cases

REQUIRED = {"seed-default", "containerd-2x", "package-dropins", "nvidia-runtime", "legacy-mirrors", "gzip-large"}


def test_the_required_cases_exist():
    assert REQUIRED <= set(cases.names())


@pytest.mark.parametrize("name", cases.names())
def test_case_renders_exactly_as_expected(name):
    assert (cases.CASES_DIR / name / cases.EXPECTED).is_dir(), \
        f"tests/cases/{name} has no expected/ yet: run `make regen-cases`"
    diffs = cases.differences(name)
    assert not diffs, ("rendered output differs from tests/cases/{0}/expected:\n\n{1}\n"
                       "If this change is intended, run `make regen-cases` (python -m tests.cases regen {0}) "
                       "and review the diff.").format(name, "\n".join(diffs))


@pytest.mark.parametrize("name", cases.names())
def test_verbatim_files_are_the_sources(name):
    files = render.render_all(load(cases.CASES_DIR / name / "spec.yaml"))
    for rel, source in cases.verbatim().items():
        assert files[rel].content == source.read_bytes(), rel
        assert files[rel].mode == 0o755


def test_the_cases_cover_what_they_are_named_for():
    def spec(name):
        return load(cases.CASES_DIR / name / "spec.yaml")

    assert spec("seed-default") == load()
    assert spec("containerd-2x").containerd.config_version == 3
    assert spec("package-dropins").containerd.install.method == "package"
    assert "nvidia" in spec("nvidia-runtime").config.runtimes
    assert spec("legacy-mirrors").config.registry.mode == "legacy"
    stored = cases.stored("gzip-large")
    assert stored["user-data"][:2] == b"\x1f\x8b" and len(stored["user-data"]) < 16384
    assert not [rel for rel in cases.stored("legacy-mirrors") if rel.endswith("hosts.toml")]
    assert [rel for rel in cases.stored("package-dropins") if "containerd.service.d" in rel]
