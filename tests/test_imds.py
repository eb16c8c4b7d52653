"""The IMDSv2 emulator over real HTTP on 127.0.0.1 (and through its per-connection relay)."""
from __future__ import annotations

import gzip
import http.client
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuild.verify import imds

ROOT = Path(__file__).resolve().parents[1]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq5i0yvBQ9dT9QnYk3Pz8vJH0gN2wqR8xF1m7bL3cT4 verify@imagebuild"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def instance(**kw) -> imds.Instance:
    args = dict(instance_id="i-0abc1234def567890", mac="52:54:00:AB:CD:EF", local_ipv4="169.254.10.15",
                public_key=KEY, user_data=b"#cloud-config\n{}\n")
    args.update(kw)
    return imds.Instance(**args)


@pytest.fixture
def server():
    clock = Clock()
    with imds.ImdsServer(instance(), clock=clock) as srv:
        srv.clock_ = clock
        yield srv


def call(srv, method, path, headers=None) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def token(srv, ttl=60) -> str:
    status, body, headers = call(srv, "PUT", "/latest/api/token", {imds.TTL_HEADER: str(ttl)})
    assert status == 200 and headers[imds.TTL_HEADER] == str(ttl)
    return body.decode()


def get(srv, path, tok):
    return call(srv, "GET", path, {imds.TOKEN_HEADER: tok})


def test_a_get_without_a_token_is_refused(server):
    status, _, _ = call(server, "GET", "/latest/meta-data/instance-id")
    assert status == 401
    assert server.log[-1].token == "none" and server.log[-1].status == 401


def test_a_token_opens_the_tree(server):
    tok = token(server)
    assert get(server, "/latest/meta-data/instance-id", tok)[:2] == (200, b"i-0abc1234def567890")
    assert get(server, "/2021-03-23/meta-data/local-hostname", tok)[1] == b"ip-169-254-10-15.ec2.internal"
    assert get(server, "/latest/meta-data/placement/region", tok)[1] == b"us-east-1"


def test_a_wrong_token_is_refused(server):
    token(server)
    status, _, _ = get(server, "/latest/meta-data/instance-id", "not-a-token")
    assert status == 401 and server.log[-1].token == "invalid"


def test_a_token_expires_after_its_ttl(server):
    tok = token(server, ttl=5)
    assert get(server, "/latest/meta-data/instance-id", tok)[0] == 200
    server.clock_.now += 5
    assert get(server, "/latest/meta-data/instance-id", tok)[0] == 401
    assert server.log[-1].token == "expired"


@pytest.mark.parametrize("ttl", [None, "0", "21601", "soon"])
def test_a_token_needs_a_ttl_in_range(server, ttl):
    headers = {} if ttl is None else {imds.TTL_HEADER: ttl}
    assert call(server, "PUT", "/latest/api/token", headers)[0] == 400


def test_a_forwarded_token_request_is_refused(server):
    status, _, _ = call(server, "PUT", "/latest/api/token", {imds.TTL_HEADER: "60", "X-Forwarded-For": "10.0.0.1"})
    assert status == 403


def test_user_data_is_served_byte_for_byte_even_gzipped():
    raw = gzip.compress(b"#cloud-config\n" + os.urandom(3000).hex().encode(), mtime=0)
    with imds.ImdsServer(instance(user_data=raw)) as srv:
        status, body, headers = get(srv, "/latest/user-data", token(srv))
    assert status == 200 and body == raw
    assert headers["Content-Type"] == "application/octet-stream"


def test_no_user_data_is_404():
    with imds.ImdsServer(instance(user_data=None)) as srv:
        tok = token(srv)
        assert get(srv, "/latest/user-data", tok)[0] == 404
        assert b"user-data" not in get(srv, "/latest/", tok)[1]


def test_the_tree_cloud_init_crawls(server):
    tok = token(server)
    listing = get(server, "/latest/meta-data/", tok)[1].decode().splitlines()
    assert {"instance-id", "local-hostname", "local-ipv4", "mac", "placement/", "public-keys/", "services/",
            "network/"} <= set(listing)
    mac = "52:54:00:ab:cd:ef"
    assert get(server, "/latest/meta-data/network/interfaces/macs/", tok)[1] == f"{mac}/".encode()
    assert get(server, f"/latest/meta-data/network/interfaces/macs/{mac}/local-ipv4s", tok)[1] == b"169.254.10.15"
    assert get(server, "/latest/meta-data/public-keys/", tok)[1] == b"0=imagebuild-verify"
    assert get(server, "/latest/meta-data/public-keys/0/", tok)[1] == b"openssh-key"
    assert get(server, "/latest/meta-data/public-keys/0/openssh-key", tok)[1] == (KEY + "\n").encode()
    assert get(server, "/latest/dynamic/instance-identity/", tok)[1] == b"document"
    doc = json.loads(get(server, "/latest/dynamic/instance-identity/document", tok)[1])
    assert doc["instanceId"] == "i-0abc1234def567890" and doc["region"] == "us-east-1"
    assert get(server, "/latest/meta-data/no-such-key", tok)[0] == 404
    assert get(server, "/not-a-version/meta-data/instance-id", tok)[0] == 404


def test_token_violations_reads_the_log(server):
    assert imds.token_violations([]) == ["the guest never contacted the IMDS"]
    call(server, "GET", "/latest/meta-data/instance-id")          # tokenless first: 401
    tok = token(server)
    get(server, "/latest/meta-data/instance-id", tok)
    problems = imds.token_violations(server.log)
    assert problems == ["the first request was GET /latest/meta-data/instance-id (401), not the token PUT"]
    server.log.clear()
    tok = token(server)
    get(server, "/latest/meta-data/instance-id", tok)
    assert imds.token_violations(server.log) == []
    # A (hypothetical) IMDSv1 answer is caught.
    server.log.append(imds.Request(1.0, "GET", "/latest/user-data", 200, "none"))
    assert imds.token_violations(server.log) == ["GET /latest/user-data answered 200 with token none"]


def test_the_relay_carries_one_connection(server):
    request = (f"PUT /latest/api/token HTTP/1.1\r\nHost: {imds.IMDS_ADDRESS}\r\n"
               f"{imds.TTL_HEADER}: 30\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").encode()
    done = subprocess.run(imds.relay_command(server.port), shell=True, input=request, capture_output=True,
                          timeout=20, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and server.token_state(body.decode()) == "valid"


def test_the_relay_command_uses_this_python():
    assert imds.relay_command(8080).split() == [sys.executable, "-m", "imagebuild.verify.imds", "--relay", "8080"]


# cloud-init's own IMDS client (the host's cloud-init package, as in the image) crawls the emulator.
_CRAWL = r"""
import json, sys
from cloudinit import url_helper
from cloudinit.sources.helpers import ec2
base, token_header, ttl_header, use_token = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "yes"
headers = {}
if use_token:
    token = url_helper.readurl(base + "/latest/api/token", request_method="PUT",
                               headers={ttl_header: "21600"}).contents.decode()
    headers = {token_header: token}
cb = lambda url: headers
try:
    meta = ec2.get_instance_metadata("latest", base, headers_cb=cb, retries=0)
    ident = ec2.get_instance_identity("latest", base, headers_cb=cb, retries=0)
    user = ec2.get_instance_userdata("latest", base, headers_cb=cb, retries=0)
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"})); sys.exit(0)
print(json.dumps({"meta": meta, "identity": ident, "user_data": user.hex() if isinstance(user, bytes) else user}))
"""


def _crawl(srv, use_token: bool) -> dict:
    done = subprocess.run(["/usr/bin/python3", "-c", _CRAWL, f"http://127.0.0.1:{srv.port}", imds.TOKEN_HEADER,
                           imds.TTL_HEADER, "yes" if use_token else "no"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cloud_inits_own_crawler_reads_the_tree_with_a_token():
    raw = gzip.compress(b"#cloud-config\nruncmd: [[true]]\n", mtime=0)
    with imds.ImdsServer(instance(user_data=raw)) as srv:
        got = _crawl(srv, use_token=True)
        log = list(srv.log)
    assert "error" not in got, got
    meta = got["meta"]
    assert meta["instance-id"] == "i-0abc1234def567890"
    assert meta["local-hostname"] == "ip-169-254-10-15.ec2.internal"
    assert meta["placement"]["region"] == "us-east-1"
    assert meta["public-keys"] == {"imagebuild-verify": [KEY]}
    assert meta["network"]["interfaces"]["macs"]["52:54:00:ab:cd:ef"]["local-ipv4s"] == "169.254.10.15"
    assert got["identity"]["document"]["instanceId"] == "i-0abc1234def567890"
    assert bytes.fromhex(got["user_data"]) == raw
    assert imds.token_violations(log) == []


def test_cloud_inits_crawler_without_a_token_gets_nothing():
    with imds.ImdsServer(instance()) as srv:
        got = _crawl(srv, use_token=False)
        log = list(srv.log)
    assert "error" in got or not got.get("meta"), got
    assert log and all(r.status == 401 for r in log)
    assert imds.token_violations(log)[0].startswith("the first request was GET")


def test_an_arm64_instance_says_so_in_its_identity_document_and_instance_type():
    """What the verify boot presents for an arm64 image: a Graviton type, architecture arm64 (amd64: x86_64)."""
    for arch, itype in (("arm64", "m7g.large"), ("x86_64", "m6i.large")):
        inst = imds.Instance(instance_id="i-0abc1234def567890", mac="52:54:00:ab:cd:ef", local_ipv4="169.254.10.15",
                             public_key=KEY, architecture=arch, instance_type=imds.INSTANCE_TYPES[arch])
        tree = inst.tree()
        doc = json.loads(tree["dynamic"]["instance-identity"]["document"])
        assert (doc["architecture"], doc["instanceType"], tree["meta-data"]["instance-type"]) == (arch, itype, itype)
