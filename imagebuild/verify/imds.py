"""An EC2 instance metadata service (IMDSv2 only) for verify boots, served on 127.0.0.1.

The EC2 verify boot (``imagebuild verify --platform ec2``) puts QEMU's user network in
link-local space and forwards the guest's 169.254.169.254:80 to this server (a ``guestfwd``
that runs :func:`relay` per connection), so the image's cloud-init finds what it finds on EC2:

- ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` (1..21600) returns a
  session token; a request with ``X-Forwarded-For`` is refused (403), as EC2 does;
- every GET needs a live token in ``X-aws-ec2-metadata-token``: none, an unknown one or an
  expired one gets 401 (IMDSv2 only, ``HttpTokens: required``);
- the tree cloud-init 22.4 crawls, under ``latest`` and any dated version: ``meta-data/``
  (instance-id, local-hostname, local-ipv4, mac, placement, public-keys, services,
  network/interfaces/macs/<mac>/...), ``dynamic/instance-identity/document`` and ``user-data``,
  served byte for byte (gzipped user-data stays gzipped: cloud-init unpacks it, as on EC2);
- with a role (``Instance.role``), ``meta-data/iam/info`` and ``iam/security-credentials/<role>``: the
  credentials an instance profile gives (those of a local AWS stand-in, for the tests of what reads them).

Every request is logged (:attr:`ImdsServer.log`): method, path, status, and whether it carried
a token (``none``, ``valid``, ``invalid``, ``expired``). :func:`token_violations` reads that log
for the verify report.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
MAX_TTL = 21600
IMDS_ADDRESS = "169.254.169.254"
_VERSION = re.compile(r"^(latest|\d{4}-\d{2}-\d{2})$")


#: The instance type the EC2 verify boot presents, per architecture (a Graviton type for arm64).
INSTANCE_TYPES = {"x86_64": "m6i.large", "arm64": "m7g.large"}


@dataclasses.dataclass(frozen=True)
class Instance:
    """What the emulator says about the instance."""
    instance_id: str
    mac: str
    local_ipv4: str
    public_key: str                       # OpenSSH public key line
    user_data: bytes | None = None
    key_name: str = "imagebuild-verify"
    region: str = "us-east-1"
    availability_zone: str = "us-east-1a"
    instance_type: str = INSTANCE_TYPES["x86_64"]
    architecture: str = "x86_64"          # EC2's name (x86_64, arm64): the identity document's
    image_id: str = "ami-0123456789abcdef0"
    account_id: str = "123456789012"
    role: str | None = None               # the instance profile's role: its credentials are served
    role_credentials: tuple[str, str, str] = ("", "", "")   # AccessKeyId, SecretAccessKey, Token

    @property
    def local_hostname(self) -> str:
        """EC2's resource-name style: ip-a-b-c-d.<region>.compute.internal (ec2.internal in us-east-1)."""
        domain = "ec2.internal" if self.region == "us-east-1" else f"{self.region}.compute.internal"
        return f"ip-{self.local_ipv4.replace('.', '-')}.{domain}"

    def tree(self) -> dict:
        """The metadata tree: dicts are directories, str/bytes are leaves."""
        mac = self.mac.lower()
        nic = {
            "device-number": "0", "interface-id": "eni-0123456789abcdef0", "local-hostname": self.local_hostname,
            "local-ipv4s": self.local_ipv4, "mac": mac, "owner-id": self.account_id,
            "security-group-ids": "sg-0123456789abcdef0", "security-groups": "default",
            "subnet-id": "subnet-0123456789abcdef0", "subnet-ipv4-cidr-block": "169.254.0.0/16",
            "vpc-id": "vpc-0123456789abcdef0", "vpc-ipv4-cidr-block": "169.254.0.0/16",
            "vpc-ipv4-cidr-blocks": "169.254.0.0/16",
        }
        meta = {
            "ami-id": self.image_id, "ami-launch-index": "0", "ami-manifest-path": "(unknown)",
            "block-device-mapping": {"ami": "/dev/xvda", "root": "/dev/xvda"},
            "hostname": self.local_hostname, "instance-action": "none", "instance-id": self.instance_id,
            "instance-life-cycle": "on-demand", "instance-type": self.instance_type,
            "local-hostname": self.local_hostname, "local-ipv4": self.local_ipv4, "mac": mac,
            "network": {"interfaces": {"macs": {mac: nic}}},
            "placement": {"availability-zone": self.availability_zone, "availability-zone-id": "use1-az1",
                          "region": self.region},
            "public-keys": {},   # listed here, served by ImdsServer._public_keys
            "profile": "default-hvm", "reservation-id": "r-0123456789abcdef0", "security-groups": "default",
            "services": {"domain": "amazonaws.com", "partition": "aws"},
        }
        document = {
            "accountId": self.account_id, "architecture": self.architecture, "availabilityZone": self.availability_zone,
            "billingProducts": None, "devpayProductCodes": None, "marketplaceProductCodes": None,
            "imageId": self.image_id, "instanceId": self.instance_id, "instanceType": self.instance_type,
            "kernelId": None, "pendingTime": "2026-01-01T00:00:00Z", "privateIp": self.local_ipv4,
            "ramdiskId": None, "region": self.region, "version": "2017-09-30",
        }
        if self.role:
            key, secret, token = self.role_credentials
            profile = f"arn:aws:iam::{self.account_id}:instance-profile/{self.role}"
            meta["iam"] = {
                "info": json.dumps({"Code": "Success", "LastUpdated": "2026-01-01T00:00:00Z",
                                    "InstanceProfileArn": profile,
                                    "InstanceProfileId": "AIPA0123456789ABCDEFG"}),
                "security-credentials": {self.role: json.dumps({
                    "Code": "Success", "LastUpdated": "2026-01-01T00:00:00Z", "Type": "AWS-HMAC",
                    "AccessKeyId": key, "SecretAccessKey": secret, "Token": token,
                    "Expiration": "2099-01-01T00:00:00Z"})}}
        return {"meta-data": meta,
                "dynamic": {"instance-identity": {"document": json.dumps(document, indent=2)}}}


@dataclasses.dataclass
class Request:
    at: float          # seconds since the server started
    method: str
    path: str
    status: int
    token: str         # none | valid | invalid | expired | issued


class ImdsServer(ThreadingHTTPServer):
    """The emulator: ``with ImdsServer(instance) as imds: ... imds.port ...``."""

    daemon_threads = True

    def __init__(self, instance: Instance, host: str = "127.0.0.1", port: int = 0,
                 clock=time.monotonic):
        super().__init__((host, port), _Handler)
        self.instance = instance
        self.clock = clock
        self.started = clock()
        self.tokens: dict[str, float] = {}        # token -> expiry (clock seconds)
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def __enter__(self) -> ImdsServer:
        self._thread = threading.Thread(target=self.serve_forever, name="imds", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()

    # --- used by the handler ---------------------------------------------------------------
    def issue(self, ttl: int) -> str:
        token = secrets.token_urlsafe(40)
        with self._lock:
            self.tokens[token] = self.clock() + ttl
        return token

    def token_state(self, token: str | None) -> str:
        if not token:
            return "none"
        with self._lock:
            expiry = self.tokens.get(token)
        if expiry is None:
            return "invalid"
        return "valid" if self.clock() < expiry else "expired"

    def record(self, method: str, path: str, status: int, token: str) -> None:
        with self._lock:
            self.log.append(Request(round(self.clock() - self.started, 3), method, path, status, token))

    def lookup(self, path: str) -> bytes | None:
        """The body for GET *path* (no leading slash), or None (404)."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return b"latest\n"
        if not _VERSION.match(parts[0]):
            return None
        rest = parts[1:]
        tree = self.instance.tree()
        if not rest:
            names = ["dynamic", "meta-data"] + (["user-data"] if self.instance.user_data is not None else [])
            return "\n".join(names).encode()
        if rest == ["user-data"]:
            return self.instance.user_data
        if rest[:2] == ["meta-data", "public-keys"]:
            return self._public_keys(rest[2:])
        node = tree
        for name in rest:
            if not isinstance(node, dict) or name not in node:
                return None
            node = node[name]
        if isinstance(node, dict):
            return "\n".join(k + "/" if isinstance(v, dict) else k for k, v in node.items()).encode()
        return node if isinstance(node, bytes) else node.encode()

    def _public_keys(self, rest: list[str]) -> bytes | None:
        if not rest:
            return f"0={self.instance.key_name}".encode()
        if rest[0] not in ("0", f"0={self.instance.key_name}"):
            return None
        if len(rest) == 1:
            return b"openssh-key"
        if rest[1:] == ["openssh-key"]:
            return (self.instance.public_key.strip() + "\n").encode()
        return None


class _Handler(BaseHTTPRequestHandler):
    server: ImdsServer
    protocol_version = "HTTP/1.1"
    server_version = "EC2ws"
    sys_version = ""

    def log_message(self, *args) -> None:   # the server keeps its own log
        pass

    def _send(self, status: int, body: bytes = b"", token_state: str = "none",
              content_type: str = "text/plain", extra: dict | None = None) -> None:
        self.server.record(self.command, self.path, status, token_state)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.rstrip("/") != "/latest/api/token":
            self._send(404 if self.path.startswith("/latest/") else 405)
            return
        if self.headers.get("X-Forwarded-For"):
            self._send(403, b"Forbidden")
            return
        raw = self.headers.get(TTL_HEADER)
        try:
            ttl = int(raw) if raw is not None else 0
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= MAX_TTL:
            self._send(400, b"Bad Request")
            return
        self._send(200, self.server.issue(ttl).encode(), "issued", extra={TTL_HEADER: str(ttl)})

    def do_GET(self) -> None:
        state = self.server.token_state(self.headers.get(TOKEN_HEADER))
        if state != "valid":
            self._send(401, b"Unauthorized", state)
            return
        path = self.path.split("?", 1)[0].lstrip("/")
        body = self.server.lookup(path)
        if body is None:
            self._send(404, b"Not Found", state)
            return
        ctype = "application/octet-stream" if path.endswith("user-data") else "text/plain"
        self._send(200, body, state, content_type=ctype)

    do_HEAD = do_GET

    def _refuse(self) -> None:
        self._send(405)

    do_POST = do_DELETE = do_PATCH = _refuse


def token_violations(log: list[Request]) -> list[str]:
    """Why a guest's use of the IMDS was not IMDSv2-only; [] when it was: it PUT for a token
    before anything else, and no request without a valid token was answered 200."""
    problems = []
    if not log:
        return ["the guest never contacted the IMDS"]
    first = log[0]
    if not (first.method == "PUT" and first.status == 200):
        problems.append(f"the first request was {first.method} {first.path} ({first.status}), not the token PUT")
    for r in log:
        if r.method != "PUT" and r.status == 200 and r.token != "valid":
            problems.append(f"{r.method} {r.path} answered 200 with token {r.token}")
    if not any(r.method == "GET" and r.token == "valid" and r.status == 200 for r in log):
        problems.append("no GET with a valid token was answered")
    return problems


def relay_command(port: int, python: str = sys.executable) -> str:
    """A shell command that relays its stdin/stdout to 127.0.0.1:*port* (QEMU ``guestfwd=...-cmd:``)."""
    return f"{python} -m imagebuild.verify.imds --relay {int(port)}"


def relay(port: int, infd: int = 0, outfd: int = 1) -> None:
    """Copy bytes between *infd*/*outfd* and a TCP connection to 127.0.0.1:*port* until both close."""
    sock = socket.create_connection(("127.0.0.1", port))
    open_in = True
    try:
        while True:
            readers = [sock] + ([infd] if open_in else [])
            ready, _, _ = select.select(readers, [], [])
            if infd in ready:
                data = os.read(infd, 65536)
                if data:
                    sock.sendall(data)
                else:
                    open_in = False
                    sock.shutdown(socket.SHUT_WR)
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                while data:
                    data = data[os.write(outfd, data):]
    finally:
        sock.close()


if __name__ == "__main__":   # python -m imagebuild.verify.imds --relay PORT
    if len(sys.argv) == 3 and sys.argv[1] == "--relay":
        relay(int(sys.argv[2]))
    else:
        sys.exit("usage: python -m imagebuild.verify.imds --relay PORT")
