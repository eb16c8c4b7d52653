"""The in-guest check's own logic, run against this machine's real tools where it can be."""
from __future__ import annotations

import io
import json
import subprocess

import pytest

from imagebuild import debian_artifacts
from imagebuild.guest import check


@pytest.mark.parametrize("reported, ok", [
    ("v1.6.20", True), ("1.6.20~ds1", True), ("2.1.9+unknown", True), ("1.6.20-1", True),
    ("1.6.200", False), ("1.6.2", False), ("v1.7.20", False),
])
def test_version_matches_only_the_same_release(reported, ok):
    expected = "2.1.9" if reported.startswith("2") else "1.6.20"
    assert check.version_matches(expected, reported) is ok


def _results(monkeypatch, exp: dict, func) -> list[dict]:
    out = io.StringIO()
    monkeypatch.setattr(check.sys, "stdout", out)
    func(check.Reporter(None), exp)
    return [json.loads(line.split(" ", 1)[1]) for line in out.getvalue().splitlines()]


def test_package_checks_read_the_real_dpkg_database(monkeypatch):
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "bash"], capture_output=True, text=True,
                             check=True).stdout
    good = _results(monkeypatch, {"package": {"name": "bash", "version": version, "hold": False}}, check.package_checks)
    assert [(r["check"], r["ok"]) for r in good] == [("package.version", True), ("package.hold", True)]
    bad = _results(monkeypatch, {"package": {"name": "bash", "version": version + "x", "hold": True}},
                   check.package_checks)
    assert [(r["check"], r["ok"], r["actual"]) for r in bad] == [
        ("package.version", False, version), ("package.hold", False, "not held")]


def test_tarball_installs_have_no_package_checks(monkeypatch):
    assert _results(monkeypatch, {"package": None}, check.package_checks) == []


def test_cni_check_runs_the_real_loopback_plugin(monkeypatch):
    _, plugins = debian_artifacts.cni_plugins()
    [result] = _results(monkeypatch, {"cni_plugins_dir": str(plugins)}, check.cni_checks)
    assert result["check"] == "cni.loopback" and result["ok"], result
    assert "1.0.0" in result["actual"]


def test_cni_check_fails_on_a_missing_or_broken_plugin(monkeypatch, tmp_path):
    [missing] = _results(monkeypatch, {"cni_plugins_dir": str(tmp_path)}, check.cni_checks)
    assert not missing["ok"] and "FileNotFoundError" in missing["actual"]
    broken = tmp_path / "loopback"
    broken.write_text("#!/bin/sh\necho 'not a plugin' >&2\nexit 1\n")
    broken.chmod(0o755)
    [failed] = _results(monkeypatch, {"cni_plugins_dir": str(tmp_path)}, check.cni_checks)
    assert not failed["ok"] and failed["actual"] == "exit 1: not a plugin"


def test_no_cni_plugins_no_cni_check(monkeypatch):
    assert _results(monkeypatch, {"cni_plugins_dir": None}, check.cni_checks) == []
