"""Literal secrets (a mirror endpoint's headers): every output that holds one is 0600 in a 0700 directory,
a warning names each place it went (never the value), and user-data refuses it unless the user accepts it
in instance metadata (--accept-secret-in-metadata). Through the real CLI; every written file is searched
for the token, gunzipped where it is gzip."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.support import run_main, ungzip, write_spec

TOKEN = "Bearer lit3ral-t0ken-9f8e7d6c5b4a"
ZERO = "0" * 64
PINNED = {"tarball": {"sha256": ZERO}, "runc": {"sha256": ZERO}}


def _doc(headers: dict | None = None, **config) -> dict:
    endpoint = {"url": "https://mirror.example", **({"headers": headers} if headers else {})}
    return {"containerd": {"install": PINNED}, "config": {
        "registry": {"mirrors": [{"host": "docker.io", "endpoints": [endpoint]},
                                 {"host": "quay.io", "endpoints": [{"url": "https://quay.mirror.example"}]}]},
        **config}}


def _holding(root: Path, needle: str = TOKEN.split()[1]) -> dict[str, int]:
    """Every file under *root* whose bytes (gunzipped) hold *needle*: relative path -> mode."""
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")
            if p.is_file() and needle.encode() in ungzip(p.read_bytes())}


def _dir_modes(root: Path) -> set[int]:
    return {stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")] if p.is_dir()}


HOSTS = "payload/etc/containerd/certs.d/docker.io/hosts.toml"
KEY = "config.registry.mirrors[0].endpoints[0].headers.Authorization"


def test_render_keeps_each_file_with_the_secret_root_only_and_says_where_it_went(tmp_path):
    out = tmp_path / "render"
    code, _, err = run_main(["render", str(write_spec(tmp_path, _doc({"Authorization": TOKEN}))), "-o", str(out)])
    assert code == 0, err
    assert _holding(out) == {HOSTS: 0o600, "spec.json": 0o600}
    assert _dir_modes(out) == {0o700}
    assert not (out / "user-data").exists()
    assert (f"warning: {KEY} is a literal secret; it is in {out / HOSTS}, {out / 'spec.json'} (each 0600, in a 0700 "
            "directory) and goes to /etc/containerd/certs.d/docker.io/hosts.toml (0600) on every node") in err
    assert f"user-data not written: it would carry {KEY} into instance metadata" in err
    assert "--accept-secret-in-metadata" in err and TOKEN.split()[1] not in err
    # the rest of the tree is as without a secret
    assert stat.S_IMODE((out / "payload/etc/containerd/certs.d/quay.io/hosts.toml").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "install.sh").stat().st_mode) == 0o755


def test_render_accepting_metadata_writes_user_data_root_only_too(tmp_path):
    out = tmp_path / "render"
    code, _, err = run_main(["render", str(write_spec(tmp_path, _doc({"Authorization": TOKEN}))), "-o", str(out),
                             "--accept-secret-in-metadata"])
    assert code == 0, err
    assert _holding(out) == {HOSTS: 0o600, "spec.json": 0o600, "user-data": 0o600}
    assert str(out / "user-data") in err and "user-data not written" not in err


def test_without_a_secret_nothing_changes(tmp_path):
    """The negative control: a spec without headers renders as before, user-data included, no warning."""
    out = tmp_path / "render"
    code, _, err = run_main(["render", str(write_spec(tmp_path, _doc())), "-o", str(out)])
    assert code == 0, err
    assert "secret" not in err
    assert _dir_modes(out) == {0o755}
    assert {stat.S_IMODE((out / name).stat().st_mode) for name in ("spec.json", "user-data", HOSTS)} == {0o644}


def test_user_data_refuses_a_literal_secret_by_default_and_writes_nothing(tmp_path):
    target = tmp_path / "ud"
    code, _, err = run_main(["user-data", str(write_spec(tmp_path, _doc({"Authorization": TOKEN}))), "-o", str(target)])
    assert code == 2 and not target.exists()
    assert f"{KEY}: a literal secret: user-data would carry it into instance metadata" in err
    assert "--accept-secret-in-metadata" in err and TOKEN.split()[1] not in err


def test_user_data_accepting_metadata_is_0600_and_says_so(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    target = private / "ud"
    code, _, err = run_main(["user-data", str(write_spec(tmp_path, _doc({"Authorization": TOKEN}))), "-o", str(target),
                             "--accept-secret-in-metadata"])
    assert code == 0, err
    assert _holding(private) == {"ud": 0o600}
    assert f"{KEY} is a literal secret; it is in {target} (0600), in the instance metadata of every machine" in err
    assert "can be entered by other users" not in err
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    code, _, err = run_main(["user-data", str(write_spec(tmp_path, _doc({"Authorization": TOKEN}))), "-o",
                             str(shared / "ud"), "--accept-secret-in-metadata"])
    assert code == 0 and f"{shared} can be entered by other users: keep {shared / 'ud'} in a 0700 directory" in err


def test_packer_directory_keeps_the_payload_root_only_and_its_template_clean(tmp_path):
    out = tmp_path / "packer-dir"
    code, _, err = run_main(["packer", str(write_spec(tmp_path, _doc({"Authorization": TOKEN}))), "-o", str(out)])
    assert code == 0, err
    assert _holding(out) == {HOSTS: 0o600, "spec.json": 0o600}   # not the template, its variables or the seed
    assert 0o755 not in _dir_modes(out) and stat.S_IMODE(out.stat().st_mode) == 0o700
    assert f"it is in {out / HOSTS}, {out / 'spec.json'}" in err


@pytest.mark.parametrize("auth", [{"username": "registry-user-31", "password": "lit3ral-t0ken-9f8e7d6c5b4a"},
                                  {"auth": "dTpsaXQzcmFsLXQwa2Vu"}])
def test_credentials_in_overrides_are_refused_without_echoing_them(tmp_path, auth):
    doc = _doc(overrides={"plugins": {"io.containerd.grpc.v1.cri": {"registry": {"configs": {
        "auth.example.com": {"auth": auth}}}}}})
    out = tmp_path / "render"
    code, _, err = run_main(["render", str(write_spec(tmp_path, doc)), "-o", str(out)])
    assert code == 2 and not out.exists()
    assert ("config.overrides.plugins.io.containerd.grpc.v1.cri.registry.configs.auth.example.com.auth: registry "
            "credentials in config.toml") in err
    assert all(value not in err for value in auth.values())


def test_a_registry_host_named_auth_is_not_a_credential(tmp_path):
    doc = _doc(overrides={"plugins": {"io.containerd.grpc.v1.cri": {"registry": {"configs": {
        "auth.example.com": {"tls": {"insecure_skip_verify": True}}}}}}})
    doc["config"]["registry"]["mode"] = "legacy"
    doc["config"]["registry"]["mirrors"] = []
    code, _, err = run_main(["render", str(write_spec(tmp_path, doc)), "-o", str(tmp_path / "render")])
    assert code == 0, err
