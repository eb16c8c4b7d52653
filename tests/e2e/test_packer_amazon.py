"""The rendered template's amazon-ebs source, run for real by Packer 1.6.6 against moto.

`packer build -only=<name>.amazon-ebs.plumbing` runs the whole AMI pipeline without provisioning
(find the source AMI by the spec's filter, launch, stop, create the AMI, copy, share, tag, clean
up). The source AMI is one of moto's own built-in Canonical AMIs: a separate moto server loads
just those (MOTO_AMIS_PATH) instead of the ~1,300 defaults. Packer only ever talks to 127.0.0.1:
its EC2 endpoint is the `aws_endpoint` variable, and a proxy that does not exist catches anything
else it might try (Go never proxies loopback).
"""
from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.parse

import pytest

from tests.aws.test_packer_amazon import ACCOUNT, COPY, DOC, HOME, _render
from tests.support import spec_of

pytestmark = pytest.mark.e2e


def _packer_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BOTO_"))}
    dead = "http://127.0.0.1:9"  # nothing listens: any request off this machine fails at once
    return env | {
        "CHECKPOINT_DISABLE": "1",
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead,
        "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
        "PACKER_CONFIG_DIR": str(tmp_path / "packer-config"),
    }


def _client(url, service, region):
    import boto3

    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing").client(
        service, region_name=region, endpoint_url=url)


@pytest.mark.timeout(600)
def test_plumbing_build_makes_copies_shares_and_tags_in_moto(moto_canonical, tmp_path):
    assert shutil.which("packer"), "packer is not installed"
    url, amis = moto_canonical
    spec = spec_of(DOC)
    packer_dir = _render(tmp_path)
    output = tmp_path / "out"
    proc = subprocess.run(
        ["packer", "build", "-color=false", "-only", f"{spec.name}.amazon-ebs.plumbing",
         "-var", f"aws_endpoint={url}", "-var", f"output_directory={output}", "imagebuild.pkr.hcl"],
        cwd=packer_dir, env=_packer_env(tmp_path), capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert any(a["ami_id"] in log for a in amis), "packer did not start from moto's Canonical AMI"

    manifest = json.loads((tmp_path / "out-packer-manifest.json").read_text())
    build = next(b for b in manifest["builds"] if b["packer_run_uuid"] == manifest["last_run_uuid"])
    # Packer 1.6.6 names the entry after the source block ("golden"), not the override ("plumbing")
    assert build["builder_type"] == "amazon-ebs"
    assert f"{spec.name}.amazon-ebs.plumbing" in log and "qemu.golden" not in log
    assert build["custom_data"] == {"family": spec.name, "spec_hash": spec.spec_hash,
                                    "containerd": spec.containerd.version}
    made = dict(pair.split(":", 1) for pair in build["artifact_id"].split(","))
    assert set(made) == {HOME, COPY}

    want_tags = {"Name": spec.name, "imagebuild:family": spec.name, "imagebuild:spec-hash": spec.spec_hash,
                 "imagebuild:containerd-version": spec.containerd.version, "team": "platform"}
    for region, image_id in made.items():
        assert re.fullmatch(r"ami-[0-9a-f]+", image_id)
        ec2 = _client(url, "ec2", region)
        image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
        assert image["State"] == "available"
        assert image["Name"].startswith(f"{spec.name}-")
        tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
        assert want_tags.items() <= tags.items(), tags
        permissions = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
        assert {"UserId": ACCOUNT} in permissions["LaunchPermissions"]
    # Packer cleaned up after itself: no build instance left running
    ec2 = _client(url, "ec2", HOME)
    running = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
               if i["State"]["Name"] in ("pending", "running")]
    assert running == []


@contextlib.contextmanager
def _recording_proxy(upstream: str):
    """A 127.0.0.1 HTTP server in front of *upstream* (moto) that forwards every request as it came and keeps
    its form-encoded body: moto 5 ignores the `CreateVolumePermission.Add.N.UserId` form of
    ModifySnapshotAttribute that Packer (aws-sdk-go) sends, so what Packer asked for is read here."""
    target = urllib.parse.urlsplit(upstream)
    bodies: list[dict[str, list[str]]] = []

    class Forward(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # the stdlib's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            bodies.append(urllib.parse.parse_qs(body.decode("utf-8", "replace")))
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            conn.request("POST", self.path, body, dict(self.headers.items()))
            answer = conn.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()

        def log_message(self, format: str, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.timeout(600)
def test_plumbing_build_asks_aws_to_share_every_snapshot(moto_canonical, tmp_path):
    """snapshot_users reaches EC2: Packer asks for createVolumePermission for the shared account on the
    snapshot of the AMI in every region (read at a proxy in front of moto, see _recording_proxy)."""
    url, _ = moto_canonical
    spec = spec_of(DOC)
    packer_dir = _render(tmp_path)
    with _recording_proxy(url) as (proxy, bodies):
        proc = subprocess.run(
            ["packer", "build", "-color=false", "-only", f"{spec.name}.amazon-ebs.plumbing",
             "-var", f"aws_endpoint={proxy}", "-var", f"output_directory={tmp_path / 'out'}", "imagebuild.pkr.hcl"],
            cwd=packer_dir, env=_packer_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    manifest = json.loads((tmp_path / "out-packer-manifest.json").read_text())
    build = next(b for b in manifest["builds"] if b["packer_run_uuid"] == manifest["last_run_uuid"])
    made = dict(pair.split(":", 1) for pair in build["artifact_id"].split(","))
    shared = {body["SnapshotId"][0] for body in bodies if body.get("Action") == ["ModifySnapshotAttribute"]
              and body.get("CreateVolumePermission.Add.1.UserId") == [ACCOUNT]}
    for region, image_id in made.items():
        image = _client(url, "ec2", region).describe_images(ImageIds=[image_id])["Images"][0]
        snapshots = {m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"] if "Ebs" in m}
        assert snapshots and snapshots <= shared, (region, snapshots, shared)
