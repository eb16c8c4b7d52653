"""Header values given by reference (imagebuild.spec.secret_refs): the spec's errors, what render writes for a
value the node reads (nothing of the value; user-data needs no flag) and for a file or env the build host reads
(the value only in the 0600 payload; spec.json records the reference), and a bake's refusal of node references."""
from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from imagebuild import render
from imagebuild.render import secret_refs
from imagebuild.render.secrets import outputs
from imagebuild.spec import SpecError
from tests.support import run_main, spec_of, ungzip, write_spec

ZERO = "0" * 64
VALUE = "st4ged-t0ken-from-the-build-h0st"
KEY = "config.registry.mirrors[0].endpoints[0].headers.Authorization"
HOSTS = "payload/etc/containerd/certs.d/docker.io/hosts.toml"
REFS = "payload/etc/imagebuild/registry-secrets/docker.io.json"


def _doc(**headers) -> dict:
    return {"containerd": {"install": {"tarball": {"sha256": ZERO}, "runc": {"sha256": ZERO}}},
            "config": {"registry": {"mirrors": [{"host": "docker.io", "endpoints": [
                {"url": "https://mirror.example", "headers": headers}]}]}}}


def _holding(root: Path, needle: str) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")
            if p.is_file() and needle.encode() in ungzip(p.read_bytes())}


@pytest.mark.parametrize("value, message", [
    ({"sm": "/x"}, f"{KEY}.sm: unknown key; allowed keys: ssm, secretsmanager, file, env, prefix"),
    ({}, f"{KEY}: got no source, expected exactly one of ssm, secretsmanager, file, env (with an optional prefix)"),
    ({"ssm": "/a", "env": "B"}, f"{KEY}: got the sources ssm, env, expected exactly one of ssm, secretsmanager"),
    ({"env": "1X"}, f"{KEY}.env: got '1X', expected an environment variable name"),
    ({"file": "token.txt"}, f"{KEY}.file: got 'token.txt', expected an absolute path of letters, digits"),
    ({"ssm": "/a b"}, f"{KEY}.ssm: got '/a b', expected an SSM parameter name (/team/token) or ARN"),
    ({"secretsmanager": "a b"}, f"{KEY}.secretsmanager: got 'a b', expected a Secrets Manager secret name or ARN"),
    ({"ssm": "/a", "prefix": 3}, f"{KEY}.prefix: got 3, expected a string"),
    ({"ssm": "/a", "prefix": "Bearer\n"}, f"{KEY}.prefix: got 'Bearer\\n': control characters"),
    (5, f"{KEY}: got 5, expected a string (the value) or a mapping naming its source: "
        "{ssm|secretsmanager|file|env: NAME, prefix: TEXT}"),
])
def test_a_bad_reference_is_exit_2_naming_the_key_the_value_and_what_is_allowed(tmp_path, value, message):
    out = tmp_path / "render"
    code, _, err = run_main(["render", str(write_spec(tmp_path, _doc(Authorization=value))), "-o", str(out)])
    assert code == 2 and message in err, err
    assert not out.exists()


def test_a_value_read_on_the_node_is_in_no_output_and_user_data_needs_no_flag(tmp_path):
    doc = _doc(Authorization={"ssm": "/team/registry-token", "prefix": "Bearer "}, **{"X-Team": "lit3ral-team-v4lue"})
    out = tmp_path / "render"
    code, _, err = run_main(["render", str(write_spec(tmp_path, doc)), "-o", str(out),
                             "--accept-secret-in-metadata"])  # for the literal X-Team, not the reference
    assert code == 0, err
    assert stat.S_IMODE((out / "user-data").stat().st_mode) == 0o600
    assert not (out / HOSTS).exists()  # written on the node
    refs = json.loads((out / REFS).read_text())
    assert stat.S_IMODE((out / REFS).stat().st_mode) == 0o600
    assert refs["values"] == [{"key": KEY, "placeholder": '"\\u0000imagebuild-secret:0:Authorization"',
                               "source": "ssm", "name": "/team/registry-token", "prefix": "Bearer "}]
    assert 'X-Team = ["lit3ral-team-v4lue"]' in refs["template"]  # the literal one: where outputs() says it is
    assert _holding(out, "lit3ral-team-v4lue") == {REFS: 0o600, "spec.json": 0o600, "user-data": 0o600}
    recorded = json.loads((out / "spec.json").read_text())["config"]["registry"]["mirrors"][0]["endpoints"][0]
    assert recorded["headers"]["Authorization"]["ssm"] == "/team/registry-token"
    expected = json.loads((out / "expected.json").read_text())["secrets"]["files"]
    assert {"path": "/etc/containerd/certs.d/docker.io/hosts.toml", "owner": "root", "mode": "0600"} in expected

    only_ref = _doc(Authorization={"secretsmanager": "team/token"})
    user_data = tmp_path / "user-data"
    code, _, err = run_main(["user-data", str(write_spec(tmp_path, only_ref, "ref.yaml")), "-o", str(user_data)])
    assert code == 0 and "secret" not in err, err
    assert stat.S_IMODE(user_data.stat().st_mode) == 0o644
    assert b"team/token" in ungzip(user_data.read_bytes())  # the reference travels, never a value


def test_install_script_with_references_passes_bash_n_and_shellcheck(tmp_path):
    files = render.guest_files(spec_of(_doc(Authorization={"ssm": "/team/registry-token"})))
    script = tmp_path / "install.sh"
    script.write_bytes(files["install.sh"].content)
    for command in (["bash", "-n", str(script)], ["shellcheck", "--shell=bash", str(script)]):
        proc = subprocess.run(command, capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def test_stage_reads_env_and_file_on_the_build_host_and_the_document_keeps_the_reference(tmp_path):
    token = tmp_path / "token"
    token.write_text(VALUE + "\n")  # as `echo TOKEN > file` writes it: the newline is dropped
    spec = spec_of(_doc(Authorization={"env": "REGISTRY_TOKEN", "prefix": "Bearer "},
                        **{"X-File": {"file": str(token)}}))
    staged = secret_refs.stage(spec, {"REGISTRY_TOKEN": VALUE})
    assert staged.config.registry.mirrors[0].endpoints[0].headers == {"Authorization": f"Bearer {VALUE}",
                                                                      "X-File": VALUE}
    assert staged.document == spec.document and staged.spec_hash == spec.spec_hash
    assert VALUE not in json.dumps(staged.document)
    assert spec.config.registry.mirrors[0].endpoints[0].headers["X-File"].file == str(token)  # left as it was
    held = outputs(staged)
    assert set(held) == {HOSTS, "user-data"}  # not spec.json: it records the reference


@pytest.mark.parametrize("ref, environ, message", [
    ({"env": "REGISTRY_TOKEN"}, {}, "env 'REGISTRY_TOKEN' is not set on this host"),
    ({"env": "REGISTRY_TOKEN"}, {"REGISTRY_TOKEN": ""}, "env 'REGISTRY_TOKEN' is empty on this host"),
    ({"file": "/nonexistent/token"}, {}, "file '/nonexistent/token' cannot be read on this host: No such file"),
])
def test_stage_names_the_key_when_the_build_host_has_no_value(ref, environ, message):
    with pytest.raises(SpecError) as caught:
        secret_refs.stage(spec_of(_doc(Authorization=ref)), environ)
    assert str(caught.value).startswith(f"{KEY}: {message}")


def test_render_with_an_env_reference_keeps_the_value_in_the_0600_payload_only(tmp_path, monkeypatch):
    monkeypatch.setenv("REGISTRY_TOKEN", VALUE)
    doc = _doc(Authorization={"env": "REGISTRY_TOKEN", "prefix": "Bearer "})
    out = tmp_path / "render"
    code, _, err = run_main(["render", str(write_spec(tmp_path, doc)), "-o", str(out)])
    assert code == 0, err
    assert _holding(out, VALUE) == {HOSTS: 0o600}
    assert f"{KEY} is a secret read on this host (spec.json records where); it is in {out / HOSTS} (each 0600" in err
    assert VALUE not in err and "user-data not written" in err  # it would carry the value into metadata
    packer = tmp_path / "packer"
    code, _, err = run_main(["packer", str(write_spec(tmp_path, doc)), "-o", str(packer)])
    assert code == 0, err
    assert _holding(packer, VALUE) == {HOSTS: 0o600}  # not the template: no Packer variable carries it
    assert {stat.S_IMODE(p.stat().st_mode) for p in [packer, *packer.rglob("*")] if p.is_dir()} == {0o700}


def test_a_bake_refuses_a_value_the_node_reads_and_takes_one_the_build_host_gives(tmp_path):
    spec = spec_of(_doc(Authorization={"ssm": "/team/registry-token"}))
    with pytest.raises(SpecError) as caught:
        secret_refs.stage(spec, {}, image=True)
    assert str(caught.value).startswith(f"{KEY}: SSM parameter /team/registry-token is read on the node at install "
                                        "time, and a bake installs in the build VM")
    staged = secret_refs.stage(spec_of(_doc(Authorization={"env": "T"})), {"T": VALUE}, image=True)
    assert staged.config.registry.mirrors[0].endpoints[0].headers["Authorization"] == VALUE
