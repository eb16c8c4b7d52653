"""cloud-init user-data: checked by cloud-init 22.4 itself (`cloud-init schema -c`, and its own
user-data processor from the system python3, which un-gzips and splits MIME as a booting machine
would) and held to EC2's 16384-byte limit.
"""
from __future__ import annotations

import base64
import email
import gzip
import random

import pytest
import yaml

from imagebuild import render
from imagebuild.render import userdata
from tests.support import (
    GZIP_MAGIC,
    PACKAGE_VERSIONS,
    cloud_init_parts,
    cloud_init_schema,
    run_cli,
    spec_of,
    ungzip,
    write_spec,
)

GUEST = render.GUEST_DIR
LIMIT = 16384
SPECS = {
    "default": {},
    "package": {"containerd": {"install": {"method": "package", "package": {"version": PACKAGE_VERSIONS["1.6"]}}}},
    "containerd-2.1": {"containerd": {"version": "2.1.9"}},
}


def _big_spec(mirrors: int = 36) -> dict:
    """Many mirrors with headers and a large override: far past 16 KB raw, well under it gzipped."""
    return {"config": {
        "registry": {"mirrors": [{"host": f"registry{i:02d}.example.com", "endpoints": [
            {"url": f"https://mirror-a.example.com/registry{i:02d}", "path": "prefix",
             "headers": {"Authorization": "Bearer token-for-a-mirror"}},
            {"url": f"https://mirror-b.example.com/{i:02d}", "skip_verify": True}]} for i in range(mirrors)]},
        "overrides": {"plugins": {"io.containerd.grpc.v1.cri": {
            "device_ownership_from_security_context": True,
            "containerd": {"runtimes": {"runc": {"options": {"BinaryName": "/usr/local/sbin/runc"}}}}}}}}}


def _too_big_spec() -> dict:
    """Incompressible: 48 KB of random hex in overrides cannot get under 16 KB even gzipped."""
    return {"config": {"extra_plugins": ["io.containerd.imagebuild.v1.padding"],
                       "overrides": {"plugins": {"io.containerd.imagebuild.v1.padding": {
                           f"k{i}": random.Random(i).randbytes(64).hex() for i in range(384)}}}}}


def _check_cloud_config(tmp_path, text: str, spec) -> dict:
    assert text.startswith("#cloud-config\n")
    path = tmp_path / "user-data.yaml"
    path.write_text(text)
    proc = cloud_init_schema(path)
    assert proc.returncode == 0 and "Valid cloud-config" in proc.stdout, proc.stdout + proc.stderr
    doc = yaml.safe_load(text)
    written = {}
    for entry in doc["write_files"]:
        content = entry["content"].encode()
        if entry.get("encoding") == "b64":
            content = base64.b64decode(content)
        written[entry["path"]] = (content, entry["permissions"], entry["owner"])
    # Exactly what installs and configures: the payload and install.sh, no verification tooling.
    expected = {rel: f for rel, f in render.guest_files(spec).items() if rel not in ("check.py", "expected.json")}
    assert set(written) == {f"{GUEST}/{rel}" for rel in expected}
    for rel, f in expected.items():
        assert written[f"{GUEST}/{rel}"] == (f.content, f"{f.mode:04o}", "root:root"), rel
    for needed in ("install.sh", "payload/etc/containerd/config.toml"):
        assert f"{GUEST}/{needed}" in written
    # The install, then its staging (the payload, hosts.toml headers included) removed.
    assert doc["runcmd"][-2:] == [["bash", f"{GUEST}/install.sh", f"{GUEST}/payload"],
                                  ["rm", "-rf", "--", f"{GUEST}/payload", f"{GUEST}/install.sh"]]
    return doc


@pytest.mark.parametrize("name", SPECS)
def test_user_data_is_valid_cloud_config_carrying_everything(tmp_path, name):
    spec = spec_of(SPECS[name])
    blob = render.user_data(spec)
    assert len(blob) <= LIMIT
    # Script, check and payload are past 16 KB raw, so every user-data is gzipped; cloud-init
    # un-gzips it by itself and sees one cloud-config part.
    assert blob[:2] == GZIP_MAGIC
    parts = cloud_init_parts(blob)
    assert [p["type"] for p in parts] == ["text/cloud-config"]
    assert parts[0]["payload"] == gzip.decompress(blob).decode()
    _check_cloud_config(tmp_path, parts[0]["payload"], spec)


def test_large_spec_gzips_under_the_limit(tmp_path):
    spec = spec_of(_big_spec())
    blob = render.user_data(spec)
    assert blob[:2] == GZIP_MAGIC and len(blob) < LIMIT
    raw = gzip.decompress(blob)
    assert len(raw) > 2 * LIMIT   # almost three times EC2's limit raw
    doc = _check_cloud_config(tmp_path, raw.decode(), spec)
    assert len([e for e in doc["write_files"] if e["path"].endswith("/hosts.toml")]) == 36
    assert render.user_data(spec) == blob  # deterministic (gzip mtime 0)


def test_spec_too_large_even_gzipped_is_a_clear_error(tmp_path):
    spec_path = write_spec(tmp_path, _too_big_spec())
    target = tmp_path / "user-data"
    proc = run_cli("user-data", str(spec_path), "-o", str(target))
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "16384-byte limit" in err and "gzipped" in err and "Traceback" not in err
    assert proc.stdout == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # no file, no temporary
    # `render` needs the user-data too, and writes nothing either.
    proc = run_cli("render", str(spec_path), "-o", str(tmp_path / "out"))
    assert proc.returncode == 1 and b"16384-byte limit" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_fit_keeps_small_documents_raw_and_gzips_at_the_limit():
    small = b"#cloud-config\n" + b"a" * (LIMIT - 14)
    assert userdata.fit(small) == small
    bigger = small + b"a"
    assert userdata.fit(bigger) == gzip.compress(bigger, compresslevel=9, mtime=0)


def test_mime_format_is_multipart_with_a_cloud_config_part(tmp_path):
    spec_path = write_spec(tmp_path, {})
    proc = run_cli("user-data", str(spec_path), "--format", "mime")
    assert proc.returncode == 0, proc.stderr
    blob = proc.stdout
    assert len(blob) <= LIMIT
    message = email.message_from_bytes(ungzip(blob))
    assert message.get_content_type() == "multipart/mixed" and message["MIME-Version"] == "1.0"
    parts = [p for p in message.walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in parts] == ["text/cloud-config"]
    assert parts[0].get_filename() == "imagebuild.cfg"
    text = parts[0].get_payload(decode=True).decode()
    assert text == gzip.decompress(render.user_data(spec_of({}))).decode()
    # cloud-init's own reading of it.
    seen = cloud_init_parts(blob)
    assert [p["type"] for p in seen] == ["text/cloud-config"] and seen[0]["payload"] == text
    _check_cloud_config(tmp_path, text, spec_of({}))


def test_build_seed_user_data_is_valid_cloud_config(tmp_path):
    from imagebuild.build.bake import build_seed

    build_seed(tmp_path / "seed")
    proc = cloud_init_schema(tmp_path / "seed" / "user-data")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = yaml.safe_load((tmp_path / "seed" / "user-data").read_text())
    assert doc["users"][0]["name"] == render.BUILD_USER
    assert doc["users"][0]["ssh_authorized_keys"] == [(tmp_path / "seed" / "id_ed25519.pub").read_text().strip()]


def test_the_check_on_boot_is_opt_in_and_ends_with_the_checks_status(tmp_path):
    """verify.on_boot: the user-data also carries check.py and expected.json, runs the check after the install
    (results root-only in CHECK_LOG), removes it with the staging and ends with the check's exit status (so
    cloud-init's final stage reports a failed check); off (the default) none of it is there."""
    import subprocess

    off = yaml.safe_load(gzip.decompress(render.user_data(spec_of({}))).decode())
    assert not {f"{GUEST}/check.py", f"{GUEST}/expected.json"} & {e["path"] for e in off["write_files"]}
    on_spec = spec_of({"verify": {"on_boot": True}})
    on = yaml.safe_load(gzip.decompress(render.user_data(on_spec)).decode())
    assert {f"{GUEST}/check.py", f"{GUEST}/expected.json"} <= {e["path"] for e in on["write_files"]}
    assert len(render.user_data(on_spec)) <= LIMIT
    install, (shell, flag, script) = on["runcmd"][-2:]
    assert install == render.INSTALL_COMMAND and (shell, flag) == ("sh", "-c")
    assert f"> {render.CHECK_LOG} 2>&1" in script and script.startswith("umask 077; ")
    # Run the very script against a scratch guest dir: a failing check still removes the staging, and its
    # status is the command's; a passing one exits 0.
    for code in (1, 0):
        guest = tmp_path / f"guest{code}"
        (guest / "payload").mkdir(parents=True)
        for name in ("install.sh", "expected.json"):
            (guest / name).write_text("")
        (guest / "check.py").write_text(f"import sys\nprint('DONE')\nsys.exit({code})\n")
        log = tmp_path / f"check{code}.log"
        local = script.replace(GUEST, str(guest)).replace(render.CHECK_LOG, str(log))
        done = subprocess.run(["sh", "-c", local], capture_output=True, text=True)
        assert done.returncode == code, done.stderr
        assert list(guest.iterdir()) == [] and log.read_text() == "DONE\n"
        assert log.stat().st_mode & 0o077 == 0      # root only, through the umask
