"""A real moto server on 127.0.0.1 for the AWS tests, reset between tests, and small images: a pytest plugin
that tests/conftest.py loads (`pytest_plugins`), so tests/aws and tests/e2e/test_pipeline_e2e.py share it;
its helpers are imported as `from tests.aws.fixtures import ...`.

boto3 is used unmodified: the fixture only sets the environment boto3 reads anyway (fake
credentials, `AWS_ENDPOINT_URL` pointing at the local server).
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from tests.aws import model_check
from tests.daemons import Daemon
from tests.records import with_records

MIB = 1024 * 1024
BLOCK = 512 * 1024


def _moto_command() -> list[str]:
    script = Path(sys.executable).parent / "moto_server"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "moto.server"]


@contextlib.contextmanager
def moto_process(env_overrides: dict[str, str] | None = None):
    """Run `moto_server -H 127.0.0.1 -p 0` (werkzeug binds a free port and logs it); yield its URL.

    *env_overrides* are moto settings for this server only (e.g. MOTO_AMIS_PATH).
    """
    pytest.importorskip("moto")
    pytest.importorskip("boto3")
    logdir = Path(tempfile.mkdtemp(prefix="imagebuild-moto-"))
    log = logdir / "moto.log"
    env = dict(os.environ)
    env.pop("MOTO_PORT", None)
    env.update(env_overrides or {})
    daemon = Daemon([*_moto_command(), "-H", "127.0.0.1", "-p", "0"], log, env=env)
    found: list[str] = []

    def running() -> bool:
        found.extend(m.decode() for m in re.findall(rb"Running on (http://127\.0\.0\.1:\d+)", log.read_bytes()))
        return bool(found)

    try:
        daemon.wait_ready(running, 30, "listening")
        yield found[0]
    finally:
        daemon.stop()
        shutil.rmtree(logdir, ignore_errors=True)


@pytest.fixture(scope="session")
def moto_server():
    """The session's moto server; yields its URL."""
    # moto otherwise seeds ~1,300 public AMIs (each with a volume and snapshot) into every
    # region on first use after each reset; our tests only look at their own images
    with moto_process({"MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}) as url:
        _warm_up(url)
        yield url


def _warm_up(url: str) -> None:
    """Make moto import its EC2, EBS and SSM backends now, not inside the first test (~1 s)."""
    import boto3
    import botocore.config

    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-west-1"
    )
    once = botocore.config.Config(retries={"total_max_attempts": 1})
    session.client("ec2", endpoint_url=url, config=once).describe_images(Owners=["self"])
    session.client("ssm", endpoint_url=url, config=once).describe_parameters()
    try:
        session.client("ebs", endpoint_url=url, config=once).list_snapshot_blocks(SnapshotId="snap-00000000000000000")
    except Exception:  # no such snapshot; the backend is loaded all the same
        pass


def _reset(url: str) -> None:
    request = urllib.request.Request(f"{url}/moto-api/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.fixture
def aws(moto_server, monkeypatch, tmp_path):
    """Fresh moto state and an environment where boto3's normal chain finds fake credentials."""
    _reset(moto_server)
    for name in list(os.environ):
        if name.startswith("AWS_") or name.startswith("BOTO_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("IMAGEBUILD_CACHE", str(tmp_path / "cache"))
    yield moto_server


@pytest.fixture(scope="session")
def _botocore_loader():
    """One botocore data loader for the whole run: parsing the EC2 model costs ~0.2 s a session."""
    import botocore.loaders

    return botocore.loaders.create_loader()


def _session(loader, log=None, check=True):
    """A fresh boto3 Session; with *check*, every request is checked against botocore's model."""
    import boto3
    import botocore.session

    core = botocore.session.get_session()
    core.register_component("data_loader", loader)
    session = boto3.session.Session(botocore_session=core)
    if check:
        model_check.install(session, log)
    return session


IAM_DIR = Path(__file__).resolve().parents[2] / "docs" / "iam"


@pytest.fixture(scope="session")
def iam_policies():
    """The documented IAM policy per command (docs/iam/<command>.json): {"publish": {actions}, ...}."""
    policies = model_check.documented_policies(IAM_DIR)
    assert set(policies) == {"publish", "prune", "pipeline", "node-registry-secrets"}, f"docs/iam: {sorted(policies)}"
    return policies


@pytest.fixture
def api_calls(iam_policies):
    """The calls the code under test made (clients of `boto_session`): a model_check.CallLog.

    After every test, each recorded call must be allowed by the documented IAM policies (docs/iam)."""
    log = model_check.CallLog()
    yield log
    missing = model_check.uncovered(log.actions(), set().union(*iam_policies.values()))
    assert not missing, f"API calls the IAM policies of docs/iam do not allow: {sorted(missing)}"


@pytest.fixture
def boto_session(aws, _botocore_loader, api_calls):
    """The boto3 Session for the code under test (normal credential chain, this test's
    environment); every request is checked against botocore's model and recorded in api_calls.
    What moto 5.2.5 lacks is answered as an endpoint without the API answers (see MOTO_GAPS)."""
    session = _session(_botocore_loader, api_calls)
    for operation, when in MOTO_GAPS.items():
        session.events.register(f"before-send.ec2.{operation}", _unsupported(operation, when))
    return session


# APIs moto 5.2.5's server answers with an HTTP 500 page (checked against the server): they are
# answered here as an endpoint without them answers (InvalidAction), so the code's fallback runs.
# A test that needs AWS's real answer registers its own (AWS-shaped) answer first.
MOTO_GAPS = {
    "DescribeImageReferences": None,
    "EnableImageDeprecation": None,
    "DescribeImageAttribute": lambda request: "lastLaunchedTime" in _text(request.body),
    "CreateImageUsageReport": None,
    "DescribeImageUsageReports": None,
    "DescribeImageUsageReportEntries": None,
}


def _text(body) -> str:
    return body.decode() if isinstance(body, bytes) else str(body or "")


def ec2_answer(status: int, body: str):
    from botocore.awsrequest import AWSResponse

    return AWSResponse("https://ec2.invalid/", status, {"Content-Type": "text/xml"}, _Body(body.encode()))


def _unsupported(operation, when):
    def answer(request, **_):
        if when is not None and not when(request):
            return None
        return ec2_answer(400, f"<Response><Errors><Error><Code>InvalidAction</Code><Message>The action {operation} "
                               "is not valid for this web service.</Message></Error></Errors><RequestID>r</RequestID>"
                               "</Response>")
    return answer


@pytest.fixture
def boto(aws, _botocore_loader):
    """A plain boto3 client maker for setting up and asserting (separate from the code under test).

    Not model-checked: it replays what moto hands out (moto's BlockTokens are UUIDs, which the EBS
    model's pattern rejects)."""
    session = _session(_botocore_loader, check=False)
    return lambda service, region="eu-west-1": session.client(service, region_name=region)


# --------------------------------------------------------------------------- images

# block index -> content written into the raw disk (everything else is a hole)
DATA_BLOCKS = {
    0: b"\xeb\x63\x90" + b"MBR-ish" * 1000,          # start of block 0
    3: bytes(range(256)) * 2048,                         # a full block of data
    7: b"partial data in the middle of block 7",         # a few bytes, rest zero
    15: b"last block" * 100,                             # the final block
}
ZERO_WRITTEN_BLOCKS = (5,)  # explicitly written zeros: allocated in the raw file, yet all zero


def make_raw(path: Path, size: int = 8 * MIB, blocks: dict[int, bytes] | None = None) -> bytes:
    """A sparse raw disk with data in a few blocks; returns its full content."""
    blocks = DATA_BLOCKS if blocks is None else blocks
    with open(path, "wb") as handle:
        handle.truncate(size)
        for index, data in blocks.items():
            offset = index * BLOCK + (1000 if index == 7 else 0)
            handle.seek(offset)
            handle.write(data)
        for index in ZERO_WRITTEN_BLOCKS:
            if index * BLOCK < size:
                handle.seek(index * BLOCK)
                handle.write(bytes(BLOCK))
    return path.read_bytes()


def make_image_dir(
    parent: Path,
    *,
    build_time: str = "2026-11-26T18:15:00Z",
    passed: bool = True,
    size: int = 8 * MIB,
    blocks: dict[int, bytes] | None = None,
    name: str = "golden",
    boot_mode: str = "uefi-preferred",       # what a built-in amd64 base (hybrid) gives
    architecture: str = "x86_64",
    sandbox_image: dict | None = None,
    lab_content: tuple[str, ...] = (),
    family: str = "containerd-golden",
    containerd_version: str = "1.6.20",
) -> tuple[Path, bytes]:
    """A baked-image directory: <name>.qcow2 made by qemu-img from a sparse raw, manifest, its records (from the
    inventory of a real bake, tests/records), verify."""
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img (qemu-utils) is not installed")
    image_dir = parent / f"{name}-{build_time.replace(':', '')}"
    image_dir.mkdir(parents=True)
    raw = parent / f"{image_dir.name}.raw"
    content = make_raw(raw, size, blocks)
    qcow2 = image_dir / f"{name}.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True
    )
    raw.unlink()
    sha = hashlib.sha256(qcow2.read_bytes()).hexdigest()
    manifest = {
        "image": qcow2.name,
        "sha256": sha,
        "virtual_size": size,
        "disk_size": qcow2.stat().st_size,
        "family": family,
        "spec_hash": "ab" * 32,
        "inputs_hash": hashlib.sha256(build_time.encode()).hexdigest(),
        "containerd_version": containerd_version,
        "runc_version": "1.1.5",
        "base_image": {"source": "debian-12-genericcloud-amd64.qcow2", "checksum": "sha256:" + "cd" * 32},
        "build_time": build_time,
        "boot_mode": boot_mode,
        "architecture": architecture,
        "sandbox_image": sandbox_image or {"source": "none", "name": "docker.io/library/pause:3.10", "digest": None},
        "lab_content": list(lab_content),
    }
    manifest = with_records(image_dir, manifest)   # inventory, SBOM, provenance: as bake writes them
    (image_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    write_verify_report(image_dir, qcow2, sha, passed=passed)
    write_verify_report(image_dir, qcow2, sha, passed=passed, platform="ec2")
    return image_dir, content


def write_verify_report(image_dir: Path, image: Path, sha: str, *, passed: bool = True,
                        platform: str = "nocloud") -> dict:
    """verify.json (verify-ec2.json) exactly as verify writes it: the guest check's Reporter makes the
    result lines, verify's own _report reads them as a boot would deliver them, verify's writer writes
    the file."""
    from imagebuild import vm
    from imagebuild.guest import check
    from imagebuild.verify import boot as verify

    results = image_dir / "results.log"
    reporter = check.Reporter(str(results))
    reporter.check("containerd.active", "active", "active" if passed else "failed")
    reporter.check("config.oom_score", -999, -999)
    reporter.emit(check.DONE, {"passed": reporter.passed, "failed": reporter.failed, "containerd_active_at_s": 30.0})
    reporter.sinks[0].close()
    lines = [vm.Line(10.0 + i, "results", text) for i, text in enumerate(results.read_text().splitlines())]
    results.unlink()
    boot = vm.BootResult(
        name="golden", command=[], accel="tcg", serial_log=image_dir / "serial.log", results_log=results,
        started_at=0.0, kernel_s=2.0, cloud_init_final_s=None, done_s=50.0, done_line=None,
        markers={}, exited_s=None, returncode=None, powered_off=True, lines=lines)
    report = verify._report(boot, image_dir / "serial.log")
    return verify.write_image_report(image_dir, report, image, sha, "ab" * 32, platform)


@pytest.fixture
def make_image(tmp_path):
    """make_image(**options) -> (image_dir, raw content); see make_image_dir."""
    counter = iter(range(1000))
    return lambda **options: make_image_dir(tmp_path / f"img{next(counter)}", **options)


# --------------------------------------------------------------------------- client wrapping


class RecordingClients:
    """A client factory around the real boto3 clients that records calls and injects faults.

    `fail_on[(service, region, operation)] = fn(call_number) -> exception | None`: before the
    real call, fn gets the 1-based number of that operation's call; an exception it returns is
    raised instead of calling AWS. boto3 itself is untouched; this wraps our factory only.
    """

    def __init__(self, fail_on=None, session=None):
        import threading

        from imagebuild.aws.clients import boto3_clients

        self.real = boto3_clients(session=session)
        self.fail_on = dict(fail_on or {})
        self.calls: list[tuple[str, str, str, dict]] = []
        self._lock = threading.Lock()

    def __call__(self, service, region):
        return _ClientProxy(self, service, region, self.real(service, region))

    def count(self, operation, service=None, region=None):
        return sum(
            1
            for s, r, op, _ in self.calls
            if op == operation and (service is None or s == service) and (region is None or r == region)
        )

    def kwargs(self, operation):
        return [kw for _, _, op, kw in self.calls if op == operation]


class _ClientProxy:
    def __init__(self, owner, service, region, client):
        self._owner, self._service, self._region, self._client = owner, service, region, client

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if name.startswith("_") or name in ("meta", "exceptions", "get_paginator", "get_waiter", "can_paginate"):
            return attr
        if not callable(attr):
            return attr
        owner = self._owner

        def call(**kwargs):
            with owner._lock:
                owner.calls.append(
                    (self._service, self._region, name, {k: v for k, v in kwargs.items() if k != "BlockData"})
                )
                number = owner.count(name, self._service, self._region)
            fault = owner.fail_on.get((self._service, self._region, name))
            if fault is not None:
                exc = fault(number)
                if exc is not None:
                    raise exc
            return attr(**kwargs)

        return call


def _client_error(code, message, operation):
    """A botocore ClientError shaped like the one AWS returns."""
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


@pytest.fixture
def recording_clients(aws, boto_session):
    """Make RecordingClients (a client factory that records calls and injects faults)."""
    return lambda fail_on=None: RecordingClients(fail_on, session=boto_session)


@pytest.fixture
def client_error():
    """client_error(code, message, operation) -> a botocore ClientError like AWS's."""
    return _client_error


@pytest.fixture(scope="session")
def start_moto():
    """`with start_moto({"MOTO_...": ...}) as url:` a separate moto server with its own settings."""
    return moto_process


CANONICAL = "099720109477"
CANONICAL_AMIS = "ubuntu/images/hvm-ssd/ubuntu-*"


@pytest.fixture(scope="module")
def moto_canonical(start_moto, tmp_path_factory):
    """A moto server whose only public AMIs are moto's built-in Canonical Ubuntu ones: (url, those AMIs)."""
    from moto.utilities.utils import load_resource

    amis = [a for a in load_resource("ec2/resources/amis.json")
            if a.get("owner_id") == CANONICAL and fnmatch.fnmatch(a.get("name") or "", CANONICAL_AMIS)]
    assert amis, "moto's built-in AMIs changed: no Canonical ubuntu/images/hvm-ssd image left"
    path = tmp_path_factory.mktemp("moto-amis") / "amis.json"
    path.write_text(json.dumps(amis))
    with start_moto({"MOTO_AMIS_PATH": str(path), "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}) as url:
        yield url, amis


# --------------------------------------------------------------------------- AWS error answers


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_):
        yield self.data

    def read(self, *_):
        return self.data


def aws_error_answer(status: int, code: str, message: str = "error"):
    """An HTTP answer shaped like a rest-json AWS error (EBS direct APIs), for a `before-send` hook."""
    from botocore.awsrequest import AWSResponse

    body = json.dumps({"message": message}).encode()
    return AWSResponse("https://ebs.invalid/", status, {"x-amzn-ErrorType": f"{code}:", "Content-Type":
                                                       "application/json"}, _Body(body))


class Answers:
    """Answer the first *n* sends of one operation with an AWS error, then let requests through.

    Installed on a boto3 session with botocore's `before-send` event, so the clients' real retry
    handling sees them exactly as if AWS had sent them. boto3 is not modified."""

    def __init__(self, session, operation: str, n: int, status: int, code: str, when=None):
        import threading

        self.sent = 0
        self.answered = 0
        self.n, self.status, self.code, self.when = n, status, code, when
        self._lock = threading.Lock()
        session.events.register(f"before-send.{operation}", self)

    def __call__(self, request, **_):
        with self._lock:
            self.sent += 1
            if self.answered >= self.n or (self.when is not None and not self.when(request)):
                return None
            self.answered += 1
        return aws_error_answer(self.status, self.code)


@pytest.fixture
def answers(boto_session):
    """answers("ebs.PutSnapshotBlock", n, status, code, when=None) -> Answers on the code's session."""
    return lambda operation, n, status, code, when=None: Answers(boto_session, operation, n, status, code, when)


@pytest.fixture
def clients(boto_session):
    """imagebuild's own client factory on the model-checked, recorded session."""
    from imagebuild.aws.clients import boto3_clients

    return boto3_clients(session=boto_session)


@pytest.fixture
def machines():
    """The other machines' processes of a test, stopped when it ends (a failed test never set them going)."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
