"""The variant matrix on the moto server (issue 23): a spec with two amd64 variants of different containerd
families and one lock table is expanded and rendered, then both variants are published at once by two
processes, each a CI runner of its own (its own cache directory, so its own local lock; only the
DynamoDB lease and AWS are shared), each to its own family. Then two runners publish the same variant at
once: the lease lets one through and refuses the other.

Each runner publishes a pre-made verified image directory (tests.aws.fixtures.make_image_dir), not `imagebuild
pipeline --variant`: the pipeline's bake and verify boot QEMU (tests/e2e/test_pipeline_e2e.py). The
runners are tests/aws/lock_holder.py (`python -m tests.aws.lock_holder`: publish, held at its first
PutSnapshotBlock until a file exists, so both provably hold their locks at the same time) and the
`imagebuild publish --spec --variant` command.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagebuild.aws.target import target_of
from imagebuild.spec import load
from tests.aws.fixtures import make_image_dir
from tests.support import run_main, write_spec

HOME = "eu-west-1"
TABLE = "imagebuild-locks"
ROOT = Path(__file__).resolve().parents[2]
BUILD_TIME = "2026-12-07T02:00:00Z"  # one nightly: both variants baked at the same minute
VERSIONS = {"c17": "1.7.24", "c21": "2.1.9"}
SPEC = {"name": "fleet", "image": {"aws": {"region": HOME, "lock_table": TABLE}},
        "variants": {name: {"containerd": {"version": version}} for name, version in VERSIONS.items()}}


@pytest.fixture
def table(aws, boto):
    """The lock table as docs/aws.md makes it: a string partition key `lock`; returns a scan of it."""
    boto("dynamodb").create_table(TableName=TABLE, KeySchema=[{"AttributeName": "lock", "KeyType": "HASH"}],
                                  AttributeDefinitions=[{"AttributeName": "lock", "AttributeType": "S"}],
                                  BillingMode="PAY_PER_REQUEST")
    return lambda: boto("dynamodb").scan(TableName=TABLE, ConsistentRead=True)["Items"]


def _env(work: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "IMAGEBUILD_CACHE": str(work / "cache")}


def held_runner(machines, image_dir: Path, target, work: Path, go: Path) -> tuple[subprocess.Popen, Path]:
    """A runner publishing *image_dir* to *target* that holds at its first PutSnapshotBlock until *go* exists;
    returns it and the file it writes once it holds the lock and its upload has started."""
    work.mkdir(parents=True)
    holding = work / "holding"
    command = [sys.executable, "-m", "tests.aws.lock_holder", str(image_dir),
               json.dumps(target.model_dump(mode="json")), str(holding), str(go)]
    proc = subprocess.Popen(command, cwd=ROOT, env=_env(work), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    machines.append(proc)
    return proc, holding


def wait_holding(procs_and_files, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    for proc, holding in procs_and_files:
        while not holding.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "a runner never started its upload"
            time.sleep(0.02)


def snapshots(boto, family: str | None = None) -> dict[str, str]:
    filters = [{"Name": "tag:imagebuild:family", "Values": [family]}] if family else []
    found = boto("ec2").describe_snapshots(OwnerIds=["self"], Filters=filters)["Snapshots"]
    return {s["SnapshotId"]: s["State"] for s in found}


def images(boto, family: str | None = None) -> list[dict]:
    filters = [{"Name": "tag:imagebuild:family", "Values": [family]}] if family else []
    return boto("ec2").describe_images(Owners=["self"], Filters=filters)["Images"]


def expand(tmp_path: Path):
    """The matrix as `imagebuild matrix` lists it, every variant rendered; returns the spec file and
    variant -> its publish target."""
    spec_path = write_spec(tmp_path, SPEC, "fleet.yaml")
    code, out, err = run_main(["matrix", str(spec_path)])
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert rows == {v: [f"fleet-{v}", "debian-12", "amd64", version, "kubernetes-worker"]
                    for v, version in VERSIONS.items()}
    for variant, version in VERSIONS.items():
        out_dir = tmp_path / f"render-{variant}"
        code, _, err = run_main(["render", str(spec_path), "--variant", variant, "-o", str(out_dir),
                                 "--checksums-at-install"])
        assert code == 0, err
        effective = json.loads((out_dir / "spec.json").read_text())
        assert (effective["name"], effective["containerd"]["version"]) == (f"fleet-{variant}", version)
        assert f"CONTAINERD_VERSION={version}\n" in (out_dir / "install.sh").read_text()
    spec = load(spec_path)
    targets = {variant: target_of(spec.variant(variant)) for variant in VERSIONS}
    for variant, target in targets.items():
        assert (target.family, target.lock_table, target.ssm_parameter) == (
            f"fleet-{variant}", TABLE, f"/imagebuild/fleet-{variant}/latest")
    return spec_path, targets


def variant_image(tmp_path: Path, variant: str) -> Path:
    """The variant's baked and verified image directory, as its runner's bake and verify leave it."""
    image_dir, _ = make_image_dir(tmp_path / f"bake-{variant}", build_time=BUILD_TIME, name=f"fleet-{variant}",
                                  family=f"fleet-{variant}", containerd_version=VERSIONS[variant])
    return image_dir


def test_two_variants_publish_concurrently_without_collision(table, boto, tmp_path, machines):
    _, targets = expand(tmp_path)
    go = tmp_path / "go"
    image_dirs = {v: variant_image(tmp_path, v) for v in VERSIONS}
    started = {v: held_runner(machines, image_dirs[v], targets[v], tmp_path / f"runner-{v}", go) for v in VERSIONS}
    wait_holding(started.values())

    # both hold their family's lease at once, each with its upload under way
    assert sorted((i["lock"]["S"], i["what"]["S"]) for i in table()) == [
        (f"imagebuild/fleet-{v}", f"publish fleet-{v}-20261207T020000Z") for v in VERSIONS]
    assert len({i["owner"]["S"] for i in table()}) == 2
    in_flight = {}  # each runner's snapshot, its upload under way (moto's state for it is already "completed")
    for variant in VERSIONS:
        (in_flight[variant],) = snapshots(boto, f"fleet-{variant}")

    go.touch()
    records = {}
    for variant, (proc, _) in started.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        records[variant] = json.loads(out.splitlines()[-1])

    ssm = boto("ssm")
    for variant, version in VERSIONS.items():
        family, record = f"fleet-{variant}", records[variant]
        name = f"{family}-20261207T020000Z"
        on_disk = json.loads((image_dirs[variant] / "publish.json").read_text())
        assert on_disk == record  # the runner's record, as it returned it: one per family, complete
        assert (record["complete"], record["family"], record["name"], record["last_error"]) == (
            True, family, name, None)
        assert record["snapshot"]["id"] == in_flight[variant]
        (image,) = images(boto, family)  # one AMI of the family, with its own name and tags
        tags = {t["Key"]: t["Value"] for t in image["Tags"]}
        assert (image["ImageId"], image["Name"], image["State"]) == (record["images"][HOME]["id"], name, "available")
        assert (tags["imagebuild:family"], tags["imagebuild:containerd-version"]) == (family, version)
        # the AMI's snapshots: the uploaded one and the root snapshot moto's RegisterImage makes of it
        root = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        assert record["images"][HOME]["snapshots"] == list(dict.fromkeys([in_flight[variant], root]))
        parameter = ssm.get_parameter(Name=f"/imagebuild/{family}/latest")["Parameter"]
        assert parameter["Value"] == image["ImageId"]
        assert record["ssm_parameter"]["name"] == f"/imagebuild/{family}/latest"
    assert len({r["images"][HOME]["id"] for r in records.values()}) == 2 and len(images(boto)) == 2
    # no snapshot deleted that the other made: both uploads' snapshots and both AMIs' exist, and nothing else
    made = {*in_flight.values(), *(s for r in records.values() for s in r["images"][HOME]["snapshots"])}
    assert len(made) == 4 and snapshots(boto) == dict.fromkeys(made, "completed")
    assert table() == []


def test_two_runners_publishing_one_variant_at_once_one_is_refused(table, boto, tmp_path, machines):
    spec_path, targets = expand(tmp_path)
    image_dir = variant_image(tmp_path, "c17")
    copy = tmp_path / "other-runner" / image_dir.name  # the same variant, baked and verified on another runner
    shutil.copytree(image_dir, copy)
    go = tmp_path / "go"
    first, holding = held_runner(machines, image_dir, targets["c17"], tmp_path / "runner-1", go)
    wait_holding([(first, holding)])
    (in_flight,) = snapshots(boto, "fleet-c17")

    work = tmp_path / "runner-2"
    second = subprocess.run([sys.executable, "-m", "imagebuild", "publish", "--spec", str(spec_path), "--variant",
                             "c17", str(copy)], cwd=ROOT, env=_env(work), capture_output=True, text=True, timeout=120)
    assert second.returncode == 1, second.stderr
    assert "publish fleet-c17-20261207T020000Z: imagebuild/fleet-c17 is locked in DynamoDB table " \
           f"{TABLE} by " in second.stderr
    assert not (copy / "publish.json").exists()  # the refused runner wrote no record
    assert list(snapshots(boto, "fleet-c17")) == [in_flight]  # and left the holder's upload alone

    go.touch()
    out, err = first.communicate(timeout=180)
    assert first.returncode == 0, err
    record = json.loads(out.splitlines()[-1])
    assert record["complete"] is True and record["snapshot"]["id"] == in_flight
    (image,) = images(boto, "fleet-c17")
    assert image["ImageId"] == record["images"][HOME]["id"]
    assert snapshots(boto) == dict.fromkeys([in_flight, *record["images"][HOME]["snapshots"]], "completed")
    assert images(boto, "fleet-c21") == []  # the other variant was never touched
    assert table() == []
