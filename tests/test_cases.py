"""Golden cases (tests/cases/<name>/): every rendered file of each spec, byte for byte.

On a difference the test prints unified diffs; if the change is intended, run `make regen-cases`
(python -m tests.cases regen) and review the diff of tests/cases/*/expected before committing.
"""
from __future__ import annotations

import gzip

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
def test_gzipped_files_have_their_text_beside_them(name):
    stored = cases.stored(name)
    assert [rel for rel, data in stored.items() if cases.is_gzip(data)], f"{name}: no gzipped file to check"
    assert not cases.round_trip_errors(name)


def test_round_trip_check_fails_on_a_stale_or_missing_text(tmp_path, monkeypatch):
    """The round-trip check is not vacuous: a text that is not the blob's, or none, is reported."""
    blob = gzip.compress(b"#cloud-config\n", mtime=0)
    expected = tmp_path / "case" / cases.EXPECTED
    expected.mkdir(parents=True)
    (expected / "user-data").write_bytes(blob)
    (expected / "plain").write_bytes(b"x\n")
    monkeypatch.setattr(cases, "CASES_DIR", tmp_path)
    assert cases.round_trip_errors("case") == [
        f"case/{cases.EXPECTED}/user-data is gzipped but user-data.txt is missing"]
    (expected / "user-data.txt").write_bytes(b"#cloud-config\nstale: true\n")
    assert cases.round_trip_errors("case") == [f"case/{cases.EXPECTED}/user-data does not gunzip to user-data.txt"]
    (expected / "user-data.txt").write_bytes(b"#cloud-config\n")
    (expected / "plain.txt").write_bytes(b"x\n")
    assert cases.round_trip_errors("case") == [
        f"case/{cases.EXPECTED}/plain.txt sits beside plain, which is not gzipped"]
    (expected / "plain.txt").unlink()
    assert cases.round_trip_errors("case") == []


def test_a_changed_gzip_render_reads_as_a_text_diff(monkeypatch):
    """What a reviewer sees when user-data changes: a unified diff of its text, not a binary blob."""
    real = cases.rendered

    def changed(name):
        files = {rel: data for rel, data in real(name).items() if not rel.endswith(cases.TEXT_SUFFIX)}
        text = gzip.decompress(files["user-data"]).replace(b"#cloud-config\n", b"#cloud-config\n# changed\n", 1)
        files["user-data"] = gzip.compress(text, mtime=0)
        return cases.with_texts(files)

    monkeypatch.setattr(cases, "rendered", changed)
    diffs = cases.differences("seed-default")
    assert len(diffs) == 2, diffs
    assert "gzip blob differs" in diffs[0] and "its text diff is under user-data.txt" in diffs[0]
    assert "+# changed\n" in diffs[1] and diffs[1].startswith("--- seed-default/expected/user-data.txt")


@pytest.mark.parametrize("name", cases.names())
def test_verbatim_files_are_the_sources(name):
    files = render.render_all(load(cases.CASES_DIR / name / "spec.yaml"))
    for rel, source in cases.verbatim().items():
        assert files[rel].content == source.read_bytes(), rel
        assert files[rel].mode == (0o755 if source.read_bytes().startswith(b"#!") else 0o644), rel  # a script runs


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


def test_a_case_keeps_only_what_it_changes_and_inherits_the_rest(tmp_path, monkeypatch):
    """A case's expected/ holds the files that differ from the default case's, and ABSENT the default's
    paths it does not render; a difference in an inherited file, or a file listed ABSENT yet rendered, fails."""
    monkeypatch.setattr(cases, "CASES_DIR", tmp_path)
    renders = {cases.DEFAULT: {"a": b"1\n", "b": b"2\n", "gone": b"x\n"}, "other": {"a": b"1\n", "b": b"changed\n"}}
    monkeypatch.setattr(cases, "rendered", lambda name: dict(renders[name]))
    for name in renders:
        (tmp_path / name / "spec.yaml").parent.mkdir()
        (tmp_path / name / "spec.yaml").write_text("{}\n")
    cases.regen()
    assert cases._own("other") == {"b": b"changed\n", cases.ABSENT: b"gone\n"}
    assert cases.stored("other") == renders["other"] and cases.differences("other") == []
    renders["other"]["a"] = b"drifted\n"                     # an inherited file now differs
    assert [d for d in cases.differences("other") if "other/expected/a" in d]
    renders["other"]["a"] = b"1\n"
    renders["other"]["gone"] = b"x\n"                        # listed ABSENT, rendered after all
    assert cases.differences("other") == ["+++ other: gone is rendered but not in other/expected (1 lines)\n"]
