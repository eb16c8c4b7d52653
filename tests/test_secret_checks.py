"""The verify boot's secret.* checks (imagebuild/guest/secret_checks.py), run on the host against a temporary
root laid out as a machine would be, with what the render itself writes: the payload's hosts.toml and expected.json of a
spec whose mirror carries `Authorization: Bearer <token>`. Each check can fail: a 0644 hosts.toml, a token in
a world-readable log, cloud-init's logs or stored user-data readable by others."""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from imagebuild import render
from imagebuild.guest import check, secret_checks
from tests.support import spec_of

TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.q7Fz-9_xYw"
HOSTS = "/etc/containerd/certs.d/docker.io/hosts.toml"
DOC = {"config": {"registry": {"mirrors": [
    {"host": "docker.io", "endpoints": [{"url": "https://mirror.example",
                                         "headers": {"Authorization": f"Bearer {TOKEN}"}}]},
    {"host": "quay.io", "endpoints": [{"url": "https://quay.mirror.example"}]}]}}}


@pytest.fixture(scope="module")
def rendered() -> dict:
    return render.guest_files(spec_of(DOC))


def _machine(tmp_path: Path, rendered: dict, hosts_mode: int = 0o600) -> Path:
    """A root where the install placed the payload (hosts.toml at *hosts_mode*) and cloud-init left its logs
    and stored user-data root-only."""
    root = tmp_path / "root"
    for rel, f in rendered.items():
        if rel.startswith("payload/"):
            path = root / rel.removeprefix("payload/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f.content)
            path.chmod(hosts_mode if rel == f"payload{HOSTS}" else f.mode)
    for name in secret_checks.CLOUD_INIT_PRIVATE:
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"cloud-init wrote this; the token stays out: {TOKEN[:6]}\n")
        path.chmod(0o600)
    (root / "run").mkdir()
    return root


def _results(monkeypatch, exp: dict, root: Path) -> dict[str, dict]:
    out = io.StringIO()
    monkeypatch.setattr(check.sys, "stdout", out)
    secret_checks.run_all(check.Reporter(None), exp, root)
    found = [json.loads(line.split(" ", 1)[1]) for line in out.getvalue().splitlines()]
    return {r["check"]: r for r in found}


def test_expected_json_carries_hashes_of_the_secret_never_the_secret(rendered):
    text = rendered["expected.json"].content.decode()
    exp = json.loads(text)["secrets"]
    assert TOKEN not in text and "Bearer" not in text
    assert exp == {"files": [{"path": HOSTS, "owner": "root", "mode": "0600"}],
                   "sha256": [hashlib.sha256(TOKEN.encode()).hexdigest()], "unsearchable": 0}
    assert rendered["expected.json"].mode == 0o600   # the hash of a weak secret could be guessed
    plain = render.guest_files(spec_of({}))["expected.json"]
    assert json.loads(plain.content)["secrets"] == {"files": [], "sha256": [], "unsearchable": 0}
    assert plain.mode == 0o644


def test_a_machine_as_the_install_leaves_it_passes(tmp_path, monkeypatch, rendered):
    exp = json.loads(rendered["expected.json"].content)
    results = _results(monkeypatch, exp, _machine(tmp_path, rendered))
    assert all(r["ok"] for r in results.values()), results
    assert results[f"secret.file.{HOSTS}"]["actual"] == "root 0600"
    assert results["secret.readable"]["actual"] == "none"
    assert "world-readable files searched" in results["secret.readable"]["note"]


def test_a_0644_hosts_toml_with_a_header_fails(tmp_path, monkeypatch, rendered):
    exp = json.loads(rendered["expected.json"].content)
    results = _results(monkeypatch, exp, _machine(tmp_path, rendered, hosts_mode=0o644))
    assert not results[f"secret.file.{HOSTS}"]["ok"]
    assert results[f"secret.file.{HOSTS}"]["actual"] == "root 0644"
    # and, world-readable now, it is also where the token is found
    assert results["secret.readable"]["actual"] == [HOSTS] and not results["secret.readable"]["ok"]


def test_a_missing_hosts_toml_fails(tmp_path, monkeypatch, rendered):
    root = _machine(tmp_path, rendered)
    (root / HOSTS.lstrip("/")).unlink()
    results = _results(monkeypatch, json.loads(rendered["expected.json"].content), root)
    assert results[f"secret.file.{HOSTS}"]["actual"] == "<missing>" and not results[f"secret.file.{HOSTS}"]["ok"]


@pytest.mark.parametrize("where, line", [
    ("var/log/containerd-debug.log", f'level=debug msg="resolving" header="Authorization: Bearer {TOKEN}"'),
    ("etc/motd", f"token={TOKEN}"),
    ("run/cloud-init/instance-data.json", json.dumps({"userdata": f"Bearer {TOKEN}"})),
    ("var/lib/cloud/instance/scripts/runcmd", f"curl -H 'Authorization: Bearer {TOKEN}' https://x"),
])
def test_a_secret_in_a_world_readable_file_fails_and_a_root_only_one_does_not(tmp_path, monkeypatch, rendered,
                                                                              where, line):
    exp = json.loads(rendered["expected.json"].content)
    root = _machine(tmp_path, rendered)
    leak = root / where
    leak.parent.mkdir(parents=True, exist_ok=True)
    leak.write_text(f"something before\n{line}\n")
    leak.chmod(0o644)
    results = _results(monkeypatch, exp, root)
    assert results["secret.readable"]["actual"] == [f"/{where}"] and not results["secret.readable"]["ok"]
    leak.chmod(0o600)
    assert _results(monkeypatch, exp, root)["secret.readable"]["ok"]


def test_a_symlink_to_the_secret_is_not_followed_but_its_target_is_judged(tmp_path, monkeypatch, rendered):
    exp = json.loads(rendered["expected.json"].content)
    root = _machine(tmp_path, rendered)
    os.symlink(root / HOSTS.lstrip("/"), root / "var/log/hosts-link")
    assert _results(monkeypatch, exp, root)["secret.readable"]["ok"]   # the target is 0600


@pytest.mark.parametrize("name", secret_checks.CLOUD_INIT_PRIVATE)
@pytest.mark.parametrize("mode, ok", [(0o600, True), (0o640, False), (0o644, False), (0o400, True)])
def test_cloud_init_logs_and_stored_user_data_must_be_root_only(tmp_path, monkeypatch, rendered, name, mode, ok):
    root = _machine(tmp_path, rendered)
    (root / name.lstrip("/")).chmod(mode)
    result = _results(monkeypatch, json.loads(rendered["expected.json"].content), root)[f"secret.private.{name}"]
    assert result["ok"] is ok and result["actual"] == f"root {mode:04o}"


def test_absent_cloud_init_files_pass_and_a_spec_without_secrets_searches_nothing(tmp_path, monkeypatch):
    exp = json.loads(render.guest_files(spec_of({}))["expected.json"].content)
    results = _results(monkeypatch, exp, tmp_path)
    assert all(r["ok"] for r in results.values()), results
    assert {r["actual"] for n, r in results.items() if n.startswith("secret.private.")} == {"<absent>"}
    assert results["secret.readable"]["actual"] == "the spec has no literal secret"


def test_a_secret_too_short_to_search_is_said(tmp_path, monkeypatch):
    exp = json.loads(render.guest_files(spec_of({"config": {"registry": {"mirrors": [
        {"host": "docker.io", "endpoints": [{"url": "https://m.example", "headers": {"X-Key": "abc"}}]}]}}}))[
        "expected.json"].content)
    assert exp["secrets"]["unsearchable"] == 1 and exp["secrets"]["sha256"] == []
    result = _results(monkeypatch, exp, tmp_path)["secret.readable"]
    assert result["ok"] and "cannot be searched" in result["actual"]


def test_a_basic_credential_is_found_with_or_without_its_padding(tmp_path, monkeypatch):
    value = "Basic dXNlcjpwYXNzd29yZA=="
    exp = json.loads(render.guest_files(spec_of({"config": {"registry": {"mirrors": [
        {"host": "docker.io", "endpoints": [{"url": "https://m.example", "headers": {"Authorization": value}}]}]}}}))[
        "expected.json"].content)
    for text in (f"Authorization: {value}", "auth=dXNlcjpwYXNzd29yZA"):
        log = tmp_path / "var/log/x.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(text + "\n")
        log.chmod(0o644)
        assert _results(monkeypatch, exp, tmp_path)["secret.readable"]["actual"] == ["/var/log/x.log"], text


def test_secret_checks_run_beside_check_py_on_the_guests_python_and_their_absence_fails(tmp_path):
    """In the guest both files sit in one directory, stdlib only (the system python3, isolated); without
    secret_checks.py beside it, check.py reports a failing secret.checks instead of passing silently."""
    import shutil
    import subprocess

    guest = Path(check.__file__).parent
    shutil.copy(guest / "check.py", tmp_path / "check.py")
    probe = ("import io, json, sys, check; sys.stdout = out = io.StringIO(); "
             "check.secret_checks(check.Reporter(None), {'secrets': {}}); sys.stdout = sys.__stdout__; "
             "print(json.dumps([json.loads(l.split(' ', 1)[1]) for l in out.getvalue().splitlines()]))")
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); {probe}"

    def run() -> list[dict]:
        done = subprocess.run(["/usr/bin/python3", "-I", "-c", code], capture_output=True, text=True, cwd="/")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    [missing] = run()
    assert missing["check"] == "secret.checks" and not missing["ok"]
    shutil.copy(guest / "secret_checks.py", tmp_path / "secret_checks.py")
    names = {r["check"] for r in run()}
    assert names == {"secret.readable", *(f"secret.private.{n}" for n in secret_checks.CLOUD_INIT_PRIVATE)}
