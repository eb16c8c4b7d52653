"""A versioned spec: apiVersion at the top, older specs read with a notice, renamed keys with a warning.

The table of renames is the real one (imagebuild.spec.model.RENAMES); the CLI is the real entry point.
"""
from __future__ import annotations

import json

import pytest

from imagebuild.spec import SpecError, fields, load, model
from tests.support import run_main, spec_of, without_eol

NOTICE = "imagebuild: note: the spec has no apiVersion; read as imagebuild/v1 (add `apiVersion: imagebuild/v1`)\n"


def _render(tmp_path, text: str) -> tuple[int, str, str]:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    code, out, err = run_main(["render", str(path), "-o", str(tmp_path / "out")])
    return code, out, without_eol(err)   # the seed's containerd 1.6 is past upstream's support: said on every run


def test_the_current_version_is_the_last_and_the_first_is_v1():
    assert fields.API_VERSIONS[0] == "imagebuild/v1" and fields.API_VERSION == fields.API_VERSIONS[-1]
    assert load().document["apiVersion"] == fields.API_VERSION


def test_a_spec_without_apiversion_is_the_first_version_with_a_one_line_notice(tmp_path):
    code, _, err = _render(tmp_path, "name: golden\n")
    assert code == 0, err
    assert err == NOTICE
    assert json.loads((tmp_path / "out" / "spec.json").read_text())["apiVersion"] == "imagebuild/v1"
    assert spec_of("name: golden\n") == spec_of("apiVersion: imagebuild/v1\nname: golden\n")


def test_a_spec_with_apiversion_and_the_built_in_default_say_nothing(tmp_path):
    code, _, err = _render(tmp_path, "apiVersion: imagebuild/v1\nname: golden\n")
    assert (code, err) == (0, "")
    code, _, err = run_main(["render", "-o", str(tmp_path / "default")])
    assert (code, without_eol(err)) == (0, "")
    assert load().notices == () and spec_of("name: x\n").notices != ()


@pytest.mark.parametrize("text, shown", [
    ("apiVersion: imagebuild/v2\n", "'imagebuild/v2'"),
    ("apiVersion: v1\n", "'v1'"),
    ("apiVersion: 1\n", "1"),
    ("apiVersion:\n", "None"),
])
def test_an_unknown_apiversion_is_exit_2_naming_the_supported_ones(tmp_path, text, shown):
    code, out, err = _render(tmp_path, text + "name: golden\n")
    assert code == 2 and out == ""
    assert f"  apiVersion: got {shown}, expected one of imagebuild/v1 (the spec versions this imagebuild reads)" \
        in err.splitlines()
    assert not (tmp_path / "out").exists()


def test_every_rename_keeps_the_old_name_working_with_a_warning(tmp_path):
    assert fields.RENAMES, "the table of renames is empty"
    for old, new in fields.RENAMES:
        *parents, old_key = old.split(".")
        new_key = new.split(".")[-1]
        assert new.split(".")[:-1] == parents, f"{old} -> {new} moves the key to another section"
        new_value = getattr(_section(model.Spec(), parents), new_key)
        assert not hasattr(_section(model.Spec(), parents), old_key), f"{old} is still a field"
        value = _sample(new_value)
        old_spec, new_spec = spec_of(_nest(parents, old_key, value)), spec_of(_nest(parents, new_key, value))
        assert old_spec == new_spec and old_spec.spec_hash == new_spec.spec_hash
        assert f"{old} is renamed {new}; the old name still works, use the new one" in old_spec.warnings
        assert not any(old in w for w in new_spec.warnings)
        with pytest.raises(SpecError, match=f"{old}: set together with its new name {new}; keep only {new}"):
            spec_of(_merge(_nest(parents, old_key, value), _nest(parents, new_key, value)))


def _section(section, parents):
    for part in parents:
        section = getattr(section, part)
    return section


def _sample(default):
    return ["111122223333"] if default == () else default


def _nest(parents, key, value) -> dict:
    doc: dict = {key: value}
    for part in reversed(parents):
        doc = {part: doc}
    return doc


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def test_share_with_through_the_cli_warns_and_renders_the_new_name(tmp_path):
    code, _, err = _render(tmp_path, "apiVersion: imagebuild/v1\nimage:\n  aws:\n    share_with: ['111122223333']\n")
    assert code == 0, err
    assert err == ("imagebuild: warning: image.aws.share_with is renamed image.aws.share_with_accounts; the old name "
                   "still works, use the new one\n")
    effective = json.loads((tmp_path / "out" / "spec.json").read_text())
    assert effective["image"]["aws"]["share_with_accounts"] == ["111122223333"]
    assert "share_with" not in effective["image"]["aws"]


def test_a_bad_value_under_an_old_name_is_named_as_written(tmp_path):
    code, _, err = _render(tmp_path, "image:\n  aws:\n    share_with: ['1234']\n")
    assert code == 2
    assert ("  image.aws.share_with[0]: got '1234', expected a 12-digit account id "
            "(image.aws.share_with is now image.aws.share_with_accounts)") in err.splitlines()
