#!/usr/bin/env python3
"""A dependency-free CRI v1 client: gRPC over HTTP/2 cleartext (h2c) on containerd's unix socket,
in Python 3.11's standard library only, for the in-guest checks (shipped beside check.py).

What it implements, and no more:
- HTTP/2 (RFC 9113) as a client on one connection per call: the preface, SETTINGS (with a large
  receive window, so flow control never stalls a response), HEADERS + CONTINUATION, DATA, PING,
  WINDOW_UPDATE, RST_STREAM and GOAWAY;
- HPACK (RFC 7541) from cri_hpack.py, shipped beside this file: a full decoder; requests are sent as
  literals without indexing;
- gRPC (length-prefixed messages; grpc-status/grpc-message in the trailers or a trailers-only reply;
  a grpc-timeout and a socket deadline, so a daemon that does not answer fails, never hangs);
- protobuf for the messages of the calls below (field numbers of k8s.io/cri-api runtime/v1 api.proto);
  unknown fields are skipped, as protobuf does.

Calls: Version, Status, RunPodSandbox, PodSandboxStatus, StopPodSandbox, RemovePodSandbox,
CreateContainer, StartContainer, ContainerStatus, StopContainer, RemoveContainer (RuntimeService);
ImageStatus, PullImage, ListImages, RemoveImage (ImageService). Messages are dicts keyed by the proto field
names; absent fields decode to their proto3 defaults.

    python3 cri.py [--socket PATH] [--wait SECONDS] CALL [JSON request]    # prints the response as JSON

--wait first waits (up to SECONDS) for RuntimeReady: the Packer build pulls the sandbox image with it
right after containerd (re)starts.
"""
from __future__ import annotations

import json
import socket
import struct
import sys
import time
import urllib.parse
from typing import Any

try:
    import cri_hpack  # in the guest: beside cri.py
except ImportError:  # on the host (tests)
    from imagebuild.guest import cri_hpack

DEFAULT_SOCKET = "/run/containerd/containerd.sock"


class CRIError(Exception):
    """A call that did not succeed: *code* is the gRPC status code (or None for a transport failure)."""

    def __init__(self, method: str, code: int | None, message: str):
        self.method, self.code, self.message = method, code, message
        name = GRPC_CODES.get(code, str(code)) if code is not None else "transport"
        super().__init__(f"{method}: {name}: {message}")


GRPC_CODES = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
              5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
              9: "FAILED_PRECONDITION", 10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED",
              13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED"}


# ------------------------------------------------------------------------------------------ protobuf

#: message -> {field name: (number, type)}; a type is a scalar ("string", "bool", "uint64", "int64",
#: "int32", "uint32", "enum", "bytes"), "map" (map<string, string>), another message's name, or any
#: of these in a list ([type]: repeated).
MESSAGES: dict[str, dict[str, tuple[int, Any]]] = {
    "VersionRequest": {"version": (1, "string")},
    "VersionResponse": {"version": (1, "string"), "runtime_name": (2, "string"),
                        "runtime_version": (3, "string"), "runtime_api_version": (4, "string")},
    "StatusRequest": {"verbose": (1, "bool")},
    "StatusResponse": {"status": (1, "RuntimeStatus"), "info": (2, "map")},
    "RuntimeStatus": {"conditions": (1, ["RuntimeCondition"])},
    "RuntimeCondition": {"type": (1, "string"), "status": (2, "bool"), "reason": (3, "string"),
                         "message": (4, "string")},
    "ImageSpec": {"image": (1, "string"), "annotations": (2, "map"), "user_specified_image": (18, "string"),
                  "runtime_handler": (19, "string")},
    "Int64Value": {"value": (1, "int64")},
    "Image": {"id": (1, "string"), "repo_tags": (2, ["string"]), "repo_digests": (3, ["string"]),
              "size": (4, "uint64"), "uid": (5, "Int64Value"), "username": (6, "string"),
              "spec": (7, "ImageSpec"), "pinned": (8, "bool")},
    "ImageStatusRequest": {"image": (1, "ImageSpec"), "verbose": (2, "bool")},
    "ImageStatusResponse": {"image": (1, "Image"), "info": (2, "map")},
    "AuthConfig": {"username": (1, "string"), "password": (2, "string"), "auth": (3, "string"),
                   "server_address": (4, "string"), "identity_token": (5, "string"),
                   "registry_token": (6, "string")},
    "PullImageRequest": {"image": (1, "ImageSpec"), "auth": (2, "AuthConfig"),
                         "sandbox_config": (3, "PodSandboxConfig")},
    "PullImageResponse": {"image_ref": (1, "string")},
    "ImageFilter": {"image": (1, "ImageSpec")},
    "ListImagesRequest": {"filter": (1, "ImageFilter")},
    "ListImagesResponse": {"images": (1, ["Image"])},
    "RemoveImageRequest": {"image": (1, "ImageSpec")},
    "RemoveImageResponse": {},
    "PodSandboxMetadata": {"name": (1, "string"), "uid": (2, "string"), "namespace": (3, "string"),
                           "attempt": (4, "uint32")},
    "NamespaceOption": {"network": (1, "enum"), "pid": (2, "enum"), "ipc": (3, "enum"),
                        "target_id": (4, "string")},
    "LinuxSandboxSecurityContext": {"namespace_options": (1, "NamespaceOption"), "privileged": (6, "bool")},
    "LinuxPodSandboxConfig": {"cgroup_parent": (1, "string"),
                              "security_context": (2, "LinuxSandboxSecurityContext"), "sysctls": (3, "map")},
    "PodSandboxConfig": {"metadata": (1, "PodSandboxMetadata"), "hostname": (2, "string"),
                         "log_directory": (3, "string"), "labels": (6, "map"), "annotations": (7, "map"),
                         "linux": (8, "LinuxPodSandboxConfig")},
    "RunPodSandboxRequest": {"config": (1, "PodSandboxConfig"), "runtime_handler": (2, "string")},
    "RunPodSandboxResponse": {"pod_sandbox_id": (1, "string")},
    "PodSandboxStatusRequest": {"pod_sandbox_id": (1, "string"), "verbose": (2, "bool")},
    "StopPodSandboxRequest": {"pod_sandbox_id": (1, "string")},
    "StopPodSandboxResponse": {},
    "RemovePodSandboxRequest": {"pod_sandbox_id": (1, "string")},
    "RemovePodSandboxResponse": {},
    "PodSandboxStatus": {"id": (1, "string"), "metadata": (2, "PodSandboxMetadata"), "state": (3, "enum"),
                         "created_at": (4, "int64"), "network": (5, "PodSandboxNetworkStatus"), "labels": (7, "map"),
                         "annotations": (8, "map"), "runtime_handler": (9, "string")},
    "PodSandboxNetworkStatus": {"ip": (1, "string"), "additional_ips": (2, ["PodIP"])},
    "PodIP": {"ip": (1, "string")},
    "PodSandboxStatusResponse": {"status": (1, "PodSandboxStatus"), "info": (2, "map")},
    "ContainerMetadata": {"name": (1, "string"), "attempt": (2, "uint32")},
    "KeyValue": {"key": (1, "string"), "value": (2, "string")},
    "ContainerConfig": {"metadata": (1, "ContainerMetadata"), "image": (2, "ImageSpec"),
                        "command": (3, ["string"]), "args": (4, ["string"]), "working_dir": (5, "string"),
                        "envs": (6, ["KeyValue"]), "labels": (9, "map"), "annotations": (10, "map"),
                        "log_path": (11, "string")},
    "CreateContainerRequest": {"pod_sandbox_id": (1, "string"), "config": (2, "ContainerConfig"),
                               "sandbox_config": (3, "PodSandboxConfig")},
    "CreateContainerResponse": {"container_id": (1, "string")},
    "StartContainerRequest": {"container_id": (1, "string")},
    "StartContainerResponse": {},
    "ContainerStatusRequest": {"container_id": (1, "string"), "verbose": (2, "bool")},
    "StopContainerRequest": {"container_id": (1, "string"), "timeout": (2, "int64")},
    "StopContainerResponse": {},
    "RemoveContainerRequest": {"container_id": (1, "string")},
    "RemoveContainerResponse": {},
    "ContainerStatus": {"id": (1, "string"), "metadata": (2, "ContainerMetadata"), "state": (3, "enum"),
                        "created_at": (4, "int64"), "started_at": (5, "int64"), "finished_at": (6, "int64"),
                        "exit_code": (7, "int32"), "image": (8, "ImageSpec"), "image_ref": (9, "string"),
                        "reason": (10, "string"), "message": (11, "string"), "labels": (12, "map"),
                        "annotations": (13, "map"), "log_path": (15, "string")},
    "ContainerStatusResponse": {"status": (1, "ContainerStatus"), "info": (2, "map")},
}

#: Enum values used by the checks (api.proto).
NAMESPACE_POD, NAMESPACE_CONTAINER, NAMESPACE_NODE = 0, 1, 2
SANDBOX_READY, SANDBOX_NOTREADY = 0, 1
CONTAINER_CREATED, CONTAINER_RUNNING, CONTAINER_EXITED, CONTAINER_UNKNOWN = 0, 1, 2, 3

#: method -> service; its messages are <method>Request and <method>Response, as in api.proto
METHODS = {
    "Version": "RuntimeService",
    "Status": "RuntimeService",
    "RunPodSandbox": "RuntimeService",
    "PodSandboxStatus": "RuntimeService",
    "StopPodSandbox": "RuntimeService",
    "RemovePodSandbox": "RuntimeService",
    "CreateContainer": "RuntimeService",
    "StartContainer": "RuntimeService",
    "ContainerStatus": "RuntimeService",
    "StopContainer": "RuntimeService",
    "RemoveContainer": "RuntimeService",
    "ImageStatus": "ImageService",
    "PullImage": "ImageService",
    "ListImages": "ImageService",
    "RemoveImage": "ImageService",
}

_VARINT_TYPES = ("bool", "uint64", "int64", "int32", "uint32", "enum")


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/int64: ten bytes of two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def encode(message: str, value: dict) -> bytes:
    """*value* (a dict of *message*'s fields) as protobuf bytes; unknown keys are an error."""
    fields = MESSAGES[message]
    out = bytearray()
    for name, item in value.items():
        if name not in fields:
            raise KeyError(f"{message} has no field {name!r}")
        number, kind = fields[name]
        if kind == "map":
            for key, val in item.items():
                out += _field(number, 2, encode("KeyValue", {"key": key, "value": val}))
            continue
        for one in (item if isinstance(kind, list) else [item]):
            out += _encode_one(number, kind[0] if isinstance(kind, list) else kind, one)
    return bytes(out)


def _encode_one(number: int, kind: str, value) -> bytes:
    if kind in _VARINT_TYPES:
        return _varint(number << 3) + _varint(int(value))
    if kind == "string":
        return _field(number, 2, value.encode("utf-8"))
    if kind == "bytes":
        return _field(number, 2, bytes(value))
    return _field(number, 2, encode(kind, value))


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + _varint(len(payload)) + payload


def decode(message: str, data: bytes) -> dict:
    """*data* as *message*: every known field, with proto3 defaults for the absent ones."""
    fields = MESSAGES[message]
    by_number = {number: (name, kind) for name, (number, kind) in fields.items()}
    out: dict = {}
    for name, (_, kind) in fields.items():
        out[name] = ([] if isinstance(kind, list) else {} if kind == "map" else
                     "" if kind == "string" else b"" if kind == "bytes" else False if kind == "bool" else
                     0 if kind in _VARINT_TYPES else None)
    pos = 0
    raw: Any
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            raw, pos = _read_varint(data, pos)
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise ValueError(f"{message}: field {number} runs past the end")
            raw, pos = data[pos:pos + length], pos + length
        elif wire_type == 1:
            raw, pos = data[pos:pos + 8], pos + 8
        elif wire_type == 5:
            raw, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"{message}: wire type {wire_type} of field {number} is not supported")
        if number not in by_number:
            continue
        name, kind = by_number[number]
        if kind == "map":
            entry = decode("KeyValue", raw)
            out[name][entry["key"]] = entry["value"]
        elif isinstance(kind, list):
            if kind[0] in _VARINT_TYPES and wire_type == 2:  # packed repeated scalars
                inner = 0
                while inner < len(raw):
                    one, inner = _read_varint(raw, inner)
                    out[name].append(_scalar(kind[0], one))
            else:
                out[name].append(_decode_one(kind[0], raw))
        else:
            out[name] = _decode_one(kind, raw)
    return out


def _scalar(kind: str, raw: int):
    if kind == "bool":
        return bool(raw)
    if kind in ("int64", "int32") and raw >= 1 << 63:
        return raw - (1 << 64)
    return raw


def _decode_one(kind: str, raw):
    if kind in _VARINT_TYPES:
        return _scalar(kind, raw)
    if kind == "string":
        return bytes(raw).decode("utf-8")
    if kind == "bytes":
        return bytes(raw)
    return decode(kind, raw)


# ------------------------------------------------------------------------------------------- HTTP/2

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 5, 6, 7, 8, 9)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
MAX_FRAME = 16384
RECEIVE_WINDOW = (1 << 31) - 1
MAX_RESPONSE = 64 << 20


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


class _Connection:
    def __init__(self, path: str, method: str, deadline: float):
        self.method, self.deadline = method, deadline
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.buffer = bytearray()

    def _timeout(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CRIError(self.method, 4, "deadline exceeded (the daemon did not answer in time)")
        return left

    def connect(self, path: str) -> None:
        self.sock.settimeout(self._timeout())
        try:
            self.sock.connect(path)
        except OSError as exc:
            raise CRIError(self.method, 14, f"cannot connect to {path}: {exc}") from None

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self._timeout())
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise CRIError(self.method, 14, f"connection lost while sending: {exc}") from None

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self.sock.settimeout(self._timeout())
            try:
                chunk = self.sock.recv(max(65536, count - len(self.buffer)))
            except TimeoutError:
                raise CRIError(self.method, 4, "deadline exceeded (the daemon did not answer in time)") from None
            except OSError as exc:
                raise CRIError(self.method, 14, f"connection lost: {exc}") from None
            if not chunk:
                raise CRIError(self.method, 14, "the daemon closed the connection")
            self.buffer += chunk
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def frame(self) -> tuple[int, int, int, bytes]:
        head = self._read(9)
        length = int.from_bytes(head[:3], "big")
        if length > MAX_FRAME:
            raise CRIError(self.method, 14, f"HTTP/2: a frame of {length} bytes (above SETTINGS_MAX_FRAME_SIZE)")
        return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, self._read(length)

    def close(self) -> None:
        self.sock.close()


def _unpad(flags: int, payload: bytes, kind: int) -> bytes:
    if flags & PADDED:
        pad = payload[0]
        payload = payload[1:len(payload) - pad] if pad < len(payload) else b""
    if kind == HEADERS and flags & PRIORITY:
        payload = payload[5:]
    return payload


def call(method: str, request: dict | None = None, *, socket_path: str = DEFAULT_SOCKET,
         timeout: float = 60) -> dict:
    """One unary CRI v1 call: *request* (a dict of the method's request message) -> the response dict.
    Raises CRIError with the gRPC status code on any failure; never waits past *timeout* seconds."""
    service, request_type, response_type = METHODS[method], f"{method}Request", f"{method}Response"
    path = f"/runtime.v1.{service}/{method}"
    body = encode(request_type, request or {})
    deadline = time.monotonic() + timeout
    conn = _Connection(socket_path, path, deadline)
    try:
        conn.connect(socket_path)
        settings = struct.pack(">HI", 0x2, 0) + struct.pack(">HI", 0x4, RECEIVE_WINDOW)  # no push; big window
        headers = b"".join(cri_hpack.literal(n, v) for n, v in (
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "localhost"),
            ("content-type", "application/grpc"), ("te", "trailers"),
            ("grpc-timeout", f"{max(1, int(timeout * 1000))}m"), ("user-agent", "imagebuild-cri/1")))
        message = b"\x00" + struct.pack(">I", len(body)) + body
        out = bytearray(PREFACE + _frame(SETTINGS, 0, 0, settings)
                        + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", RECEIVE_WINDOW - 65535))
                        + _frame(HEADERS, END_HEADERS, 1, headers))
        chunks = [message[i:i + MAX_FRAME] for i in range(0, len(message), MAX_FRAME)]
        for index, chunk in enumerate(chunks):
            out += _frame(DATA, END_STREAM if index == len(chunks) - 1 else 0, 1, chunk)
        conn.send(bytes(out))  # requests stay far below the default 64 KiB send window
        return _response(conn, path, response_type)
    finally:
        conn.close()


def _response(conn: _Connection, path: str, response_type: str) -> dict:
    hpack = cri_hpack.Decoder()
    header_sets: list[list[tuple[str, str]]] = []
    data = bytearray()
    block = bytearray()
    in_headers = ended = ended_by_headers = False
    while not ended:
        kind, flags, stream, payload = conn.frame()
        if in_headers and kind != CONTINUATION:
            raise CRIError(path, 14, "HTTP/2: a header block interrupted")
        if kind == SETTINGS:
            if not flags & ACK:
                conn.send(_frame(SETTINGS, ACK, 0))
        elif kind == PING:
            if not flags & ACK:
                conn.send(_frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            last, code = struct.unpack(">II", payload[:8])
            if (last & 0x7FFFFFFF) < 1 or code:
                raise CRIError(path, 14, f"HTTP/2 GOAWAY (error {code}): {payload[8:].decode(errors='replace')}")
        elif kind == RST_STREAM and stream == 1:
            raise CRIError(path, 14, f"HTTP/2 stream reset (error {int.from_bytes(payload[:4], 'big')})")
        elif kind in (HEADERS, CONTINUATION) and stream == 1:
            if kind == HEADERS:
                block = bytearray(_unpad(flags, payload, HEADERS))
                ended_by_headers = bool(flags & END_STREAM)
            else:
                block += payload
            in_headers = not flags & END_HEADERS
            if not in_headers:
                try:
                    header_sets.append(hpack.decode(bytes(block)))
                except ValueError as exc:
                    raise CRIError(path, 14, str(exc)) from None
                ended = ended_by_headers
        elif kind == DATA and stream == 1:
            data += _unpad(flags, payload, DATA)
            if len(data) > MAX_RESPONSE:
                raise CRIError(path, 8, f"response above {MAX_RESPONSE} bytes")
            ended = bool(flags & END_STREAM)
        elif kind == PUSH_PROMISE:
            raise CRIError(path, 14, "HTTP/2: PUSH_PROMISE though push is disabled")
    if not header_sets:
        raise CRIError(path, 14, "HTTP/2: the stream ended without headers")
    first = dict(header_sets[0])
    if first.get(":status") != "200":
        raise CRIError(path, 14, f"HTTP status {first.get(':status')} (is this a gRPC server?)")
    trailers = dict(header_sets[-1])
    if "grpc-status" not in trailers:
        raise CRIError(path, 14, "the reply has no grpc-status")
    code = int(trailers["grpc-status"])
    if code:
        raise CRIError(path, code, urllib.parse.unquote(trailers.get("grpc-message", "")))
    if len(data) < 5 or data[0] != 0:
        raise CRIError(path, 13, "no uncompressed gRPC message in the reply")
    length = int.from_bytes(data[1:5], "big")
    if len(data) != 5 + length:
        raise CRIError(path, 13, f"gRPC message of {length} bytes, {len(data) - 5} received")
    try:
        return decode(response_type, bytes(data[5:]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CRIError(path, 13, f"cannot decode {response_type}: {exc}") from None


# --------------------------------------------------------------------------- conveniences for checks

def conditions(status: dict) -> dict[str, bool]:
    """{condition type: status} of a StatusResponse."""
    return {c["type"]: c["status"] for c in (status["status"] or {"conditions": []})["conditions"]}


def wait_ready(socket_path: str = DEFAULT_SOCKET, timeout: float = 60, unimplemented_final_after: float = 5) -> dict:
    """The first verbose Status whose RuntimeReady is true; CRIError with the last failure at *timeout*.
    An UNIMPLEMENTED answer (no CRI service: containerd registers every plugin's service before it
    serves its socket) is final once it has lasted *unimplemented_final_after* seconds."""
    start = time.monotonic()
    deadline = start + timeout
    unimplemented_since = None
    while True:
        left = deadline - time.monotonic()
        try:
            status = call("Status", {"verbose": True}, socket_path=socket_path, timeout=max(1.0, min(10.0, left)))
            if conditions(status).get("RuntimeReady"):
                return status
            last = CRIError("/runtime.v1.RuntimeService/Status", None,
                            f"RuntimeReady is not true: {conditions(status)}")
        except CRIError as exc:
            last = exc
        now = time.monotonic()
        if last.code == 12:
            unimplemented_since = unimplemented_since or now
            if now - unimplemented_since >= unimplemented_final_after:
                raise last
        else:
            unimplemented_since = None
        if now + 0.5 > deadline:
            raise last
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    socket_path = DEFAULT_SOCKET
    if args[:1] == ["--socket"]:
        socket_path, args = args[1], args[2:]
    wait = None
    if args[:1] == ["--wait"]:
        wait, args = float(args[1]), args[2:]
    if not args or args[0] not in METHODS:
        print(f"usage: cri.py [--socket PATH] [--wait SECONDS] {{{','.join(METHODS)}}} [JSON request]",
              file=sys.stderr)
        return 2
    try:
        if wait is not None:
            wait_ready(socket_path, timeout=wait)
        reply = call(args[0], json.loads(args[1]) if len(args) > 1 else {}, socket_path=socket_path)
    except CRIError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=2, default=lambda b: b.hex()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
