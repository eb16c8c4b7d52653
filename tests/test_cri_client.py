"""The stdlib CRI v1 client the guest runs (imagebuild/guest/cri.py), proved piece by piece against
independent implementations and then, whole, against the real containerd 1.6, 1.7 and 2.1:

- protobuf: its message table against the field numbers and types of the CRI stubs' descriptors
  (container-runtime-interface-api), its encoding parsed by protobuf, protobuf's encoding decoded by it;
- HPACK: header blocks written by the `hpack` package (Huffman on, dynamic table shared across
  blocks) decoded to the same headers; malformed input refused;
- the whole call on the real daemons, every answer compared with grpcio's answer to the same question
  (Version, Status, PullImage, ListImages, ImageStatus, a pod sandbox and a container in it), and the
  failures a check must see as failures: no CRI plugin, no socket, a socket that never answers.
"""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagebuild import spec as spec_module
from imagebuild.guest import cri as client
from imagebuild.guest import cri_hpack
from imagebuild.render import config_toml
from imagebuild.verify import testimage
from tests import cri
from tests.support import FAMILY_VERSIONS

pytestmark = pytest.mark.builds   # real daemons with Go-built pieces: run after the boots

# ------------------------------------------------------------------------------------------- protobuf

_KINDS = {9: "string", 8: "bool", 4: "uint64", 3: "int64", 5: "int32", 13: "uint32", 14: "enum", 12: "bytes"}


def test_every_message_field_has_the_number_and_type_of_api_proto():
    from cri_api.v1 import api_pb2

    by_name = api_pb2.DESCRIPTOR.message_types_by_name
    for message, fields in client.MESSAGES.items():
        descriptor = by_name[message]
        for name, (number, kind) in fields.items():
            field = descriptor.fields_by_name[name]
            assert field.number == number, (message, name)
            repeated = field.is_repeated
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                assert kind == "map", (message, name)
                continue
            assert isinstance(kind, list) == repeated, (message, name)
            one = kind[0] if isinstance(kind, list) else kind
            expected = field.message_type.name if field.message_type is not None else _KINDS[field.type]
            assert one == expected, (message, name, one, expected)
    for method, service in client.METHODS.items():
        descriptor = api_pb2.DESCRIPTOR.services_by_name[service].methods_by_name[method]
        assert descriptor.input_type.name == f"{method}Request"
        assert descriptor.output_type.name == f"{method}Response"


SANDBOX = {"metadata": {"name": "n", "uid": "u-1", "namespace": "default", "attempt": 3},
           "hostname": "h", "log_directory": "/var/log/pods/x", "labels": {"a": "1", "b": "ü"},
           "annotations": {"k": "v"},
           "linux": {"cgroup_parent": "/kubepods", "sysctls": {"net.ipv4.ip_forward": "1"},
                     "security_context": {"namespace_options": {"network": client.NAMESPACE_NODE, "pid": 1},
                                          "privileged": True}}}


def test_requests_encode_to_what_protobuf_parses():
    from cri_api.v1 import api_pb2

    run = api_pb2.RunPodSandboxRequest.FromString(client.encode("RunPodSandboxRequest", {"config": SANDBOX}))
    assert run.config.metadata.attempt == 3 and run.config.metadata.uid == "u-1"
    assert dict(run.config.labels) == {"a": "1", "b": "ü"} and dict(run.config.annotations) == {"k": "v"}
    assert run.config.linux.security_context.namespace_options.network == api_pb2.NODE
    assert run.config.linux.security_context.namespace_options.pid == api_pb2.CONTAINER
    assert run.config.linux.security_context.privileged is True
    assert dict(run.config.linux.sysctls) == {"net.ipv4.ip_forward": "1"}
    create = api_pb2.CreateContainerRequest.FromString(client.encode("CreateContainerRequest", {
        "pod_sandbox_id": "p", "sandbox_config": SANDBOX,
        "config": {"metadata": {"name": "c"}, "image": {"image": "x/y:1"}, "command": ["/bin/sleep", "9"],
                   "args": ["a"], "envs": [{"key": "A", "value": "1"}, {"key": "B", "value": ""}]}}))
    assert list(create.config.command) == ["/bin/sleep", "9"] and list(create.config.args) == ["a"]
    assert [(e.key, e.value) for e in create.config.envs] == [("A", "1"), ("B", "")]
    assert create.sandbox_config.metadata.name == "n" and create.config.image.image == "x/y:1"
    stop = api_pb2.StopContainerRequest.FromString(client.encode("StopContainerRequest",
                                                                 {"container_id": "c", "timeout": -1}))
    assert stop.timeout == -1
    with pytest.raises(KeyError, match="no field 'verbose'"):
        client.encode("StopPodSandboxRequest", {"pod_sandbox_id": "p", "verbose": True})


def test_responses_protobuf_writes_decode_to_the_same_values():
    from cri_api.v1 import api_pb2

    image = api_pb2.Image(id="sha256:ab", repo_tags=["a:1", "b:2"], repo_digests=["a@sha256:cd"], size=2**40,
                          uid=api_pb2.Int64Value(value=0), username="", pinned=True,
                          spec=api_pb2.ImageSpec(image="a:1", annotations={"x": "y"}))
    got = client.decode("ListImagesResponse", api_pb2.ListImagesResponse(images=[image, image]).SerializeToString())
    assert got["images"][0] == {"id": "sha256:ab", "repo_tags": ["a:1", "b:2"], "repo_digests": ["a@sha256:cd"],
                                "size": 2**40, "uid": {"value": 0}, "username": "", "pinned": True,
                                "spec": {"image": "a:1", "annotations": {"x": "y"}, "user_specified_image": "",
                                         "runtime_handler": ""}}
    assert len(got["images"]) == 2
    status = api_pb2.ContainerStatusResponse(status=api_pb2.ContainerStatus(
        id="c", state=api_pb2.CONTAINER_EXITED, exit_code=-2, created_at=-5, reason="Error",
        metadata=api_pb2.ContainerMetadata(name="x", attempt=1)), info={"info": "{}"})
    got = client.decode("ContainerStatusResponse", status.SerializeToString())
    assert got["status"]["exit_code"] == -2 and got["status"]["created_at"] == -5
    assert got["status"]["state"] == client.CONTAINER_EXITED and got["status"]["reason"] == "Error"
    assert got["status"]["metadata"] == {"name": "x", "attempt": 1} and got["info"] == {"info": "{}"}
    # Fields this client does not know (here: ContainerStatus.mounts, 14) are skipped, as protobuf does.
    with_mounts = api_pb2.ContainerStatus(id="c", mounts=[api_pb2.Mount(container_path="/a")])
    assert client.decode("ContainerStatus", with_mounts.SerializeToString())["id"] == "c"
    # Absent message fields are None, absent scalars their proto3 default.
    assert client.decode("ImageStatusResponse", b"") == {"image": None, "info": {}}
    with pytest.raises(ValueError):
        client.decode("VersionResponse", b"\x0a\x05ab")  # a string of 5 bytes, 2 present


# -------------------------------------------------------------------------------------------- HPACK

def test_the_static_table_and_huffman_codes_are_rfc_7541s():
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
    from hpack.table import HeaderTable

    assert cri_hpack.STATIC_TABLE == [(n.decode(), v.decode()) for n, v in HeaderTable.STATIC_TABLE]
    assert cri_hpack.HUFFMAN_CODES == tuple(zip(REQUEST_CODES, REQUEST_CODES_LENGTH, strict=True))


headers_strategy = st.lists(st.tuples(st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1,
                                              max_size=20),
                                      st.text(max_size=300)), max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(headers_strategy, min_size=1, max_size=4), st.booleans())
def test_hpack_blocks_of_an_independent_encoder_decode_to_the_same_headers(blocks, huffman):
    import hpack

    encoder, decoder = hpack.Encoder(), cri_hpack.Decoder()
    for headers in blocks:  # one connection: later blocks index into what earlier ones added
        block = encoder.encode([(":status", "200"), *headers, ("grpc-status", "0")], huffman=huffman)
        assert decoder.decode(block) == [(":status", "200"), *headers, ("grpc-status", "0")]


@given(st.binary(max_size=200))
def test_huffman_decoding_inverts_an_independent_encoder(data):
    from hpack.huffman import HuffmanEncoder
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

    assert cri_hpack.huffman_decode(HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(data)) == data


def test_malformed_hpack_is_refused():
    with pytest.raises(ValueError, match="padding"):
        cri_hpack.huffman_decode(b"\x00")  # '0' (00000) padded with zeros, not ones
    with pytest.raises(ValueError, match="padding"):
        cri_hpack.huffman_decode(b"\xff")  # eight bits of padding
    with pytest.raises(ValueError, match="EOS"):
        cri_hpack.huffman_decode(b"\xff\xff\xff\xfc")  # EOS (30 ones) is never a symbol
    with pytest.raises(ValueError, match="not in the table"):
        cri_hpack.Decoder().decode(b"\xbe")  # index 62: the dynamic table is empty
    with pytest.raises(ValueError, match="above the limit"):
        cri_hpack.Decoder().decode(b"\x3f\xe1\x3f")  # table size update to 8192 > 4096
    with pytest.raises(ValueError, match="past the block"):
        cri_hpack.Decoder().decode(b"\x00\x05ab")


# ------------------------------------------------------------------------- the real daemons, whole


@pytest.fixture(scope="module")
def lab():
    work = cri.scratch("ib-cc-")
    busybox = Path(testimage.test_oci_image(work / "busybox.tar")["path"])
    pause = Path(testimage.test_oci_image(work / "pause.tar", cmd=("/bin/sleep", "3600"))["path"])
    registry = cri.RegistryServer(work / "registry")
    registry.push(busybox, "lab/busybox:1")
    registry.push(pause, "lab/pause:1")
    yield {"work": work, "registry": registry}
    registry.close()


def _daemon(family: str, registry: cri.Registry, work: Path, **config) -> cri.Containerd:
    spec = spec_module.from_document({"containerd": {"version": FAMILY_VERSIONS[family]}, "config": {
        "root": str(work / "root"), "state": str(work / "state"), "systemd_cgroup": False,
        "sandbox_image": "registry.test/lab/pause:1",
        "registry": {"config_path": str(work / "certs.d"), "mirrors": [
            {"host": "registry.test", "endpoints": [{"url": f"http://{registry.address}"}]}]}, **config}})
    from imagebuild import render

    for path, f in render.payload(spec).items():
        if path.endswith("/hosts.toml"):
            target = work / "certs.d" / Path(path).parent.name / "hosts.toml"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.content)
    return cri.Containerd(family, cri.host_only(config_toml.render(spec), spec.containerd.config_version, work),
                          work)


def _image(message) -> dict:
    return {"id": message.id, "repo_tags": list(message.repo_tags), "repo_digests": list(message.repo_digests),
            "size": message.size, "pinned": message.pinned}


def test_the_client_runs_as_shipped_with_the_standard_library_alone(lab, tmp_path):
    """The Packer build runs packer/cri.py with packer/cri_hpack.py beside it (/tmp/imagebuild-cri/), the
    verify seed both beside cri_checks.py: from such a directory, with no site-packages at all (-S -E: no
    imagebuild to fall back on), it asks a real containerd and decodes its answer; without cri_hpack.py
    beside it, it cannot even start."""
    import json
    import shutil
    import subprocess

    from imagebuild import render
    from imagebuild.spec import load

    files = render.render_all(load())
    assert load().image.sandbox.source == "registry"      # the default: the build pulls through cri.py
    for name in ("cri.py", "cri_hpack.py"):
        (tmp_path / name).write_bytes(files[f"packer/{name}"].content)
    daemon = _daemon("2.3", lab["registry"], cri.scratch("ib-cs-"))
    python = shutil.which("python3", path="/usr/bin:/bin")
    argv = [python, "-S", "-E", str(tmp_path / "cri.py"), "--socket", str(daemon.sock), "--wait", "60", "Version"]
    try:
        ran = subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=120)
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout)["runtime_name"] == "containerd"
        (tmp_path / "cri_hpack.py").unlink()
        alone = subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=60)
    finally:
        daemon.close()
    assert alone.returncode == 1 and "No module named 'imagebuild'" in alone.stderr, alone.stderr


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_VERSIONS)
def test_the_stdlib_client_gets_what_grpcio_gets_from_the_real_daemon(lab, family):
    from cri_api.v1 import api_pb2

    daemon = _daemon(family, lab["registry"], cri.scratch("ib-cd-"))
    runtime, images, channel = cri.cri(daemon.sock)
    sock = str(daemon.sock)

    def call(method, request=None):
        return client.call(method, request, socket_path=sock, timeout=60)

    try:
        status = client.wait_ready(sock, timeout=30)
        theirs = runtime.Status(api_pb2.StatusRequest(verbose=True))
        assert client.conditions(status) == {c.type: c.status for c in theirs.status.conditions}
        assert client.conditions(status)["RuntimeReady"] is True
        assert set(status["info"]) == set(theirs.info) and status["info"]["config"] == theirs.info["config"]
        version = call("Version")
        theirs = runtime.Version(api_pb2.VersionRequest())
        assert version == {"version": theirs.version, "runtime_name": "containerd",
                           "runtime_version": theirs.runtime_version, "runtime_api_version": "v1"}
        # Debian's builds say 1.6.20~ds1, upstream's v2.3.7 (the release tag).
        assert version["runtime_version"].removeprefix("v").startswith(FAMILY_VERSIONS[family])

        ref = call("PullImage", {"image": {"image": "registry.test/lab/busybox:1"}})["image_ref"]
        assert ("GET", "/v2/lab/busybox/manifests/1?ns=registry.test", 200) in lab["registry"].requests() or \
            ("HEAD", "/v2/lab/busybox/manifests/1?ns=registry.test", 200) in lab["registry"].requests()
        mine = call("ImageStatus", {"image": {"image": "registry.test/lab/busybox:1"}})["image"]
        theirs = images.ImageStatus(api_pb2.ImageStatusRequest(
            image=api_pb2.ImageSpec(image="registry.test/lab/busybox:1"))).image
        assert {k: mine[k] for k in ("id", "repo_tags", "repo_digests", "size", "pinned")} == _image(theirs)
        assert mine["id"] == ref
        listed = call("ListImages")["images"]
        assert sorted((i["id"], tuple(i["repo_tags"])) for i in listed) == sorted(
            (i.id, tuple(i.repo_tags)) for i in images.ListImages(api_pb2.ListImagesRequest()).images)
        assert call("ImageStatus", {"image": {"image": "registry.test/lab/absent:1"}})["image"] is None

        # A pod sandbox (host network: no CNI config needed) and a container in it.
        config = {"metadata": {"name": "cc", "uid": f"cc-{family}", "namespace": "default"},
                  "linux": {"security_context": {"namespace_options": {"network": client.NAMESPACE_NODE}}}}
        pod = call("RunPodSandbox", {"config": config})["pod_sandbox_id"]
        state = runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod)).status
        assert state.state == api_pb2.SANDBOX_READY
        mine = call("PodSandboxStatus", {"pod_sandbox_id": pod})["status"]
        assert mine["state"] == client.SANDBOX_READY and mine["metadata"]["uid"] == f"cc-{family}"
        assert mine["id"] == pod and mine["created_at"] == state.created_at
        pinned = call("ImageStatus", {"image": {"image": "registry.test/lab/pause:1"}})["image"]
        assert pinned is not None  # RunPodSandbox pulled the configured sandbox image
        container = call("CreateContainer", {"pod_sandbox_id": pod, "sandbox_config": config, "config": {
            "metadata": {"name": "sleeper"}, "image": {"image": "registry.test/lab/busybox:1"},
            "command": ["/bin/sleep", "3600"]}})["container_id"]
        call("StartContainer", {"container_id": container})
        mine = call("ContainerStatus", {"container_id": container})["status"]
        theirs = runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=container)).status
        assert mine["state"] == client.CONTAINER_RUNNING == theirs.state
        assert (mine["started_at"], mine["image_ref"]) == (theirs.started_at, theirs.image_ref)
        call("StopContainer", {"container_id": container, "timeout": 1})
        assert call("ContainerStatus", {"container_id": container})["status"]["state"] == client.CONTAINER_EXITED
        call("RemoveContainer", {"container_id": container})
        call("StopPodSandbox", {"pod_sandbox_id": pod})
        call("RemovePodSandbox", {"pod_sandbox_id": pod})
        assert not runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items

        # A gRPC error arrives as its code and message, as grpcio reports them.
        with pytest.raises(client.CRIError) as mine_error:
            call("PodSandboxStatus", {"pod_sandbox_id": pod})
        import grpc

        with pytest.raises(grpc.RpcError) as their_error:
            runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod))
        assert mine_error.value.code == their_error.value.code().value[0] == 5  # NOT_FOUND
        assert mine_error.value.message == their_error.value.details()
        # A pull that cannot succeed is an error, not a hang (the mirror has no such image).
        with pytest.raises(client.CRIError, match="absent"):
            call("PullImage", {"image": {"image": "registry.test/lab/absent:1"}})
    finally:
        channel.close()
        daemon.close()


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_VERSIONS)
def test_a_dead_cri_plugin_is_a_clear_failure_in_seconds(lab, family):
    """A snapshotter with no plugin behind it: containerd runs, its CRI plugin does not load (one of
    tests/test_cri.py's BREAKERS, which the spec refuses)."""
    import tomlkit

    from tests.test_cri import BREAKERS

    work = cri.scratch("ib-cx-")
    spec = spec_module.from_document({"containerd": {"version": FAMILY_VERSIONS[family]}, "config": {
        "root": str(work / "root"), "state": str(work / "state"), "systemd_cgroup": False,
        "registry": {"config_path": str(work / "certs.d")}}})
    doc = tomlkit.parse(cri.host_only(config_toml.render(spec), spec.containerd.config_version, work))
    BREAKERS["stargz-without-plugin"](doc, spec.containerd.config_version)
    daemon = cri.Containerd(family, tomlkit.dumps(doc), work)
    try:
        start = time.monotonic()
        with pytest.raises(client.CRIError) as error:
            client.wait_ready(str(daemon.sock), timeout=4)
        assert error.value.code == 12  # UNIMPLEMENTED
        assert "unknown service runtime.v1.RuntimeService" in str(error.value)
        assert time.monotonic() - start < 8
        with pytest.raises(client.CRIError, match="UNIMPLEMENTED: unknown service runtime.v1.ImageService"):
            client.call("ListImages", socket_path=str(daemon.sock), timeout=5)
    finally:
        daemon.close()


def test_no_socket_and_a_silent_socket_fail_within_the_timeout(tmp_path):
    with pytest.raises(client.CRIError, match="transport|UNAVAILABLE") as error:
        client.call("Version", socket_path=str(tmp_path / "absent.sock"), timeout=2)
    assert error.value.code == 14 and "cannot connect" in str(error.value)

    path = str(tmp_path / "silent.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    held = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    try:
        start = time.monotonic()
        with pytest.raises(client.CRIError, match="DEADLINE_EXCEEDED") as error:
            client.call("Status", socket_path=path, timeout=1.5)
        assert 1.4 < time.monotonic() - start < 4 and error.value.code == 4
    finally:
        server.close()


def test_a_server_that_is_not_grpc_is_named(tmp_path):
    path = str(tmp_path / "http1.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()

    def answer():
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        with pytest.raises(client.CRIError) as error:
            client.call("Status", socket_path=path, timeout=5)
        assert error.value.code == 14
    finally:
        server.close()


@pytest.mark.slow
def test_unimplemented_is_final_after_its_grace_not_after_the_whole_timeout(lab):
    """A daemon without CRI answers UNIMPLEMENTED at once and for good: wait_ready gives up after the
    grace, long before its timeout (a healthy daemon answers Status at its first try, see above)."""
    import tomlkit

    from tests.test_cri import BREAKERS

    work = cri.scratch("ib-cu-")
    spec = spec_module.from_document({"containerd": {"version": FAMILY_VERSIONS["1.7"]}, "config": {
        "root": str(work / "root"), "state": str(work / "state"), "systemd_cgroup": False,
        "registry": {"config_path": str(work / "certs.d")}}})
    doc = tomlkit.parse(cri.host_only(config_toml.render(spec), spec.containerd.config_version, work))
    BREAKERS["stargz-without-plugin"](doc, spec.containerd.config_version)
    daemon = cri.Containerd("1.7", tomlkit.dumps(doc), work)
    try:
        start = time.monotonic()
        with pytest.raises(client.CRIError, match="UNIMPLEMENTED"):
            client.wait_ready(str(daemon.sock), timeout=60, unimplemented_final_after=2)
        assert 2 <= time.monotonic() - start < 6
    finally:
        daemon.close()
