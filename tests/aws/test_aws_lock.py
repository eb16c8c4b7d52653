"""Publish and prune of one family, one at a time: a lease in DynamoDB (moto's) across machines, an
flock on one machine. "Another machine" is another process with its own cache directory
(tests/aws/lock_holder.py, run as `python -m tests.aws.lock_holder`), publishing a copy of the same image,
as a manual run beside the nightly does."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imagebuild.aws import PublishTarget
from imagebuild.aws.lock import Lease, LockLost
from imagebuild.aws.prune import prune
from imagebuild.aws.publish import publish
from imagebuild.errors import ImagebuildError

HOME = "eu-west-1"
TABLE = "imagebuild-locks"
FAMILY = "containerd-golden"
ROOT = Path(__file__).resolve().parents[2]


def target(**changes) -> PublishTarget:
    values = dict(region=HOME, copy_regions=[], share_with_accounts=[], ssm_parameter="/imagebuild/golden/latest",
                  keep=1, tags={}, family=FAMILY, lock_table=TABLE)
    values.update(changes)
    return PublishTarget(**values)


@pytest.fixture
def table(aws, boto):
    """The lock table as docs/aws.md makes it: a string partition key `lock`."""
    boto("dynamodb").create_table(TableName=TABLE, KeySchema=[{"AttributeName": "lock", "KeyType": "HASH"}],
                                  AttributeDefinitions=[{"AttributeName": "lock", "AttributeType": "S"}],
                                  BillingMode="PAY_PER_REQUEST")
    return lambda: boto("dynamodb").scan(TableName=TABLE)["Items"]


def lease(clients, what, lease_s=None):
    return Lease(clients("dynamodb", HOME), TABLE, FAMILY, what, lease_s=lease_s)


# ------------------------------------------------------------------ the lease itself


def test_a_lease_keeps_others_out_while_it_is_renewed_and_lets_go_on_release(table, clients):
    first = lease(clients, "publish one", lease_s=1.0)
    first.acquire()
    second = lease(clients, "publish two", lease_s=1.0)
    with pytest.raises(ImagebuildError, match=rf"publish two: imagebuild/{FAMILY} is locked in DynamoDB table "
                                              rf"{TABLE} by {first.owner} \(publish one, since "):
        second.acquire()
    time.sleep(1.5)  # longer than the lease: the holder renewed it
    with pytest.raises(ImagebuildError, match="is locked"):
        second.acquire()
    first.release()
    assert table() == []
    second.acquire()  # at once, once released
    (item,) = table()
    assert item["owner"]["S"] == second.owner and item["what"]["S"] == "publish two"
    second.release()


def test_a_holder_that_dies_leaves_the_lock_when_its_lease_expires(table, clients, tmp_path):
    """A real death: a process takes the lease (1 s) and SIGKILLs itself; nothing releases or renews it."""
    script = ("import boto3, os, signal, sys\nfrom imagebuild.aws.lock import Lease\n"
              f"lease = Lease(boto3.client('dynamodb', region_name='{HOME}'), '{TABLE}', '{FAMILY}', 'nightly', "
              "lease_s=1.0)\nlease.acquire()\nprint(lease.owner, flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    died = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert died.returncode == -signal.SIGKILL, died.stderr
    dead = died.stdout.strip()
    waiting = lease(clients, "manual publish")
    with pytest.raises(ImagebuildError, match=rf"by {dead} \(nightly, since .*, lease until "):
        waiting.acquire()
    started = time.monotonic()
    waiting.acquire(wait=10, poll=0.1)  # taken over once the dead holder's lease expired
    assert time.monotonic() - started < 5
    assert [i["owner"]["S"] for i in table()] == [waiting.owner]
    waiting.release()


def test_a_holder_that_could_not_renew_in_time_stops_before_changing_anything(table, clients, boto_session):
    """The holder's renewal is held up on the network past its lease; another run takes the lock over.
    The late renewal finds another owner: the holder's check raises, and its release leaves the new
    holder's item alone."""
    delayed, go_on = threading.Event(), threading.Event()
    slow_owner = []

    def network(request, **_):
        if slow_owner and slow_owner[0] in request.body.decode():
            delayed.set()
            go_on.wait(10)

    # registered before the clients are made (a client takes the session's handlers when it is made)
    boto_session.events.register_first("before-send.dynamodb.UpdateItem", network)
    slow = lease(clients, "publish slow", lease_s=0.6)
    slow_owner.append(slow.owner)
    slow.acquire()
    assert delayed.wait(5)
    other = lease(clients, "publish other")
    other.acquire(wait=5, poll=0.1)
    go_on.set()
    for _ in range(100):
        if slow.lost:
            break
        time.sleep(0.05)
    with pytest.raises(LockLost, match="publish slow: lost the lock .* another run took the lease over"):
        slow.check()
    slow.release()
    assert [i["owner"]["S"] for i in table()] == [other.owner]
    other.check()  # negative: the holder that renewed in time still holds it
    other.release()


# ------------------------------------------------------------------ publish and prune under the lock


def holder(machines, image_dir, tmp_path, *, die=False, lease=None):
    """lock_holder.py publishing *image_dir* in its own process, with its own cache (another machine)."""
    holding, go = tmp_path / "holding", tmp_path / "go"
    command = [sys.executable, "-m", "tests.aws.lock_holder", str(image_dir),
               json.dumps(target().model_dump(mode="json")), str(holding), str(go)]
    command += ["--die"] * die + (["--lease", str(lease)] if lease else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IMAGEBUILD_CACHE": str(tmp_path / "other-machine-cache")}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    machines.append(proc)
    deadline = time.monotonic() + 60
    while not holding.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the other machine never started its upload"
        time.sleep(0.02)
    return proc, go


def family_snapshots(boto):
    found = boto("ec2").describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:imagebuild:family", "Values": [FAMILY]}])["Snapshots"]
    return {s["SnapshotId"]: s["State"] for s in found}


def test_two_publishes_of_one_family_on_two_machines(table, boto, make_image, recording_clients, tmp_path,
                                                      machines):
    image_dir, _ = make_image()
    copy = tmp_path / "other" / image_dir.name  # the same image, baked and verified on the other machine
    shutil.copytree(image_dir, copy)
    proc, go = holder(machines, copy, tmp_path)
    in_flight = list(family_snapshots(boto))  # the other machine's upload, under way

    clients = recording_clients()
    with pytest.raises(ImagebuildError, match=rf"publish {FAMILY}-\w+: imagebuild/{FAMILY} is locked in DynamoDB "
                                              "table"):
        publish(image_dir, target(), progress=lambda p: None, clients=clients, poll_interval=0.01)
    assert not (image_dir / "publish.json").exists()  # the refused run wrote nothing
    assert [c[2] for c in clients.calls] == ["put_item", "get_item"]  # and asked AWS for nothing else
    assert list(family_snapshots(boto)) == in_flight  # the other machine's snapshot is untouched

    go.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    first = json.loads(out.splitlines()[-1])
    assert first["complete"] is True and first["snapshot"]["id"] in in_flight
    assert table() == []  # released

    second = publish(image_dir, target(), progress=lambda p: None, clients=recording_clients(), poll_interval=0.01)
    assert second["complete"] is True and second["images"][HOME]["id"] == first["images"][HOME]["id"]
    assert second["images"][HOME]["source"] == "adopted"
    named = boto("ec2").describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [first["name"]]}])
    assert len(named["Images"]) == 1
    assert family_snapshots(boto)[first["snapshot"]["id"]] == "completed"


def test_a_publish_takes_over_from_a_machine_that_died(table, boto, make_image, recording_clients, tmp_path,
                                                       machines):
    image_dir, _ = make_image()
    copy = tmp_path / "other" / image_dir.name
    shutil.copytree(image_dir, copy)
    proc, _ = holder(machines, copy, tmp_path, die=True, lease=1.0)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (dead_snapshot,) = family_snapshots(boto)
    with pytest.raises(ImagebuildError, match="is locked in DynamoDB table"):
        publish(image_dir, target(), progress=lambda p: None, clients=recording_clients(), poll_interval=0.01)
    time.sleep(1.2)  # the dead machine's lease expires
    record = publish(image_dir, target(), progress=lambda p: None, clients=recording_clients(), poll_interval=0.01)
    assert record["complete"] is True and record["snapshot"]["id"] != dead_snapshot
    assert dead_snapshot not in family_snapshots(boto)  # what the dead upload left is swept
    assert table() == []


def test_on_one_machine_a_second_publish_of_the_same_image_is_refused(aws, boto_session, make_image,
                                                                      recording_clients):
    """Without a lock table: the issue's manual publish beside the nightly's resume, in one image
    directory. The second stops at once; the first finishes with a record that holds its AMI."""
    image_dir, _ = make_image()
    uploading, go_on = threading.Event(), threading.Event()

    def hold(**_):
        uploading.set()
        go_on.wait(30)

    boto_session.events.register("before-send.ebs.PutSnapshotBlock", hold)
    results = {}
    first = threading.Thread(target=lambda: results.update(first=publish(
        image_dir, target(lock_table=None), progress=lambda p: None, clients=recording_clients(), workers=1,
        poll_interval=0.01)))
    first.start()
    try:
        assert uploading.wait(30)
        with pytest.raises(ImagebuildError, match=f"another imagebuild process on this machine is publishing or "
                                                  f"pruning {FAMILY}"):
            publish(image_dir, target(lock_table=None), progress=lambda p: None, clients=recording_clients(),
                    poll_interval=0.01)
    finally:
        go_on.set()
        first.join(60)
    record = json.loads((image_dir / "publish.json").read_text())
    assert results["first"]["complete"] and record["images"] == results["first"]["images"] != {}
    assert record["last_error"] is None


def test_prune_applies_only_under_the_lock(table, boto, clients):
    holder_lease = lease(clients, "publish elsewhere")
    holder_lease.acquire()
    try:
        assert prune(target(), clients=clients) == []  # a dry run changes nothing: no lock needed
        with pytest.raises(ImagebuildError, match=r"prune: imagebuild/containerd-golden is locked .* \(publish "
                                                  "elsewhere"):
            prune(target(), clients=clients, apply=True)
    finally:
        holder_lease.release()
    assert prune(target(), clients=clients, apply=True) == []
    assert table() == []


def test_a_missing_lock_table_is_named(aws, clients):
    with pytest.raises(ImagebuildError, match=f"the lock table {TABLE} does not exist in this region"):
        prune(target(), clients=clients, apply=True)


def test_a_lock_aws_refuses_is_a_clear_error(table, boto_session, clients):
    """DynamoDB's own refusal (an IAM policy without dynamodb:PutItem), in the shape of its json protocol."""
    from botocore.awsrequest import AWSResponse

    from tests.aws.fixtures import _Body

    body = {"__type": "com.amazon.coral.service#AccessDeniedException",
            "message": "User is not authorized to perform: dynamodb:PutItem"}
    boto_session.events.register_first("before-send.dynamodb.PutItem", lambda request, **_: AWSResponse(
        request.url, 400, {"Content-Type": "application/x-amz-json-1.0"}, _Body(json.dumps(body).encode())))
    with pytest.raises(ImagebuildError, match=f"prune: cannot take the lock in DynamoDB table {TABLE}: "
                                              "AccessDeniedException in PutItem"):
        prune(target(), clients=clients, apply=True)
