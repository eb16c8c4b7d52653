"""The pipeline's "does this need a build?" decision and its skip path, against a real moto server.

Nothing here bakes: the base image is a small file of junk (hashed, never booted), and the
skip tests replace `imagebuild.build.bake.bake` with a function that fails the test if it is called.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagebuild.aws.clients import boto3_clients
from imagebuild.build import bake as bake_module
from imagebuild.build.bake import inputs_hash
from imagebuild.digest import sha256_file
from imagebuild.errors import ImagebuildError
from imagebuild.pipeline import FAILED, STEPS, UNCHANGED, BuildDecision, decide, run_pipeline
from tests import support
from tests.support import run_main

# Artifacts pinned by sha256: deciding then needs no network (a checksum_url is read when hashing).
PINNED = {"containerd": {"install": {"tarball": {"sha256": "aa" * 32}, "runc": {"sha256": "bb" * 32}}}}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def spec_of(doc: dict):
    return support.spec_of(_merge(PINNED, doc))


def write_spec(directory, doc: dict):
    return support.write_spec(directory, _merge(PINNED, doc))

HOME, OTHER = "us-east-1", "us-west-2"
ACCOUNT = "111122223333"
BASE_CHECKSUM = "sha256:" + "ab" * 32
SHARED = {"image": {"aws": {"copy_regions": [OTHER], "share_with_accounts": [ACCOUNT]}}}


@pytest.fixture
def clients(boto_session):
    return boto3_clients(session=boto_session)


def publish_fake(boto, spec, base_checksum=BASE_CHECKSUM, *, build_time="2026-11-26T18:15:00Z",
                 inputs=None, regions=(HOME,), share=(), ssm=True) -> dict[str, str]:
    """What a finished publish leaves (no image data): a tagged AMI per region, shares, SSM parameter."""
    name = f"{spec.name}-{build_time.replace('-', '').replace(':', '')}"
    tags = {"imagebuild:family": spec.name, "imagebuild:spec-hash": spec.spec_hash,
            "imagebuild:inputs-hash": inputs or inputs_hash(spec, base_checksum),
            "imagebuild:base-checksum": base_checksum, "imagebuild:build-time": build_time}
    ids = {}
    for region in regions:
        ec2 = boto("ec2", region)
        image_id = ec2.register_image(Name=name, Description="test", RootDeviceName="/dev/xvda",
                                      Architecture="x86_64", VirtualizationType="hvm")["ImageId"]
        ec2.create_tags(Resources=[image_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        if share:
            ec2.modify_image_attribute(ImageId=image_id,
                                       LaunchPermission={"Add": [{"UserId": a} for a in share]})
        ids[region] = image_id
    if ssm:
        boto("ssm", HOME).put_parameter(Name=spec.image.aws.ssm_parameter, Value=ids[HOME], Type="String",
                                        DataType="aws:ec2:image", Overwrite=True)
    return ids


def test_no_ami_means_build(aws, clients):
    result = decide(spec_of({}), BASE_CHECKSUM, clients=clients)
    assert isinstance(result, BuildDecision)
    build, reason, newest = result
    assert build and newest is None
    assert "no AMI of family containerd-golden in us-east-1" in reason


def test_same_inputs_hash_on_the_newest_ami_means_skip(aws, boto, clients):
    spec = spec_of({})
    ids = publish_fake(boto, spec)
    build, reason, newest = decide(spec, BASE_CHECKSUM, clients=clients)
    assert not build, reason
    assert newest["id"] == ids[HOME] and newest["tags"]["imagebuild:inputs-hash"] == inputs_hash(spec, BASE_CHECKSUM)
    assert reason.startswith("inputs unchanged") and ids[HOME] in reason


def test_only_the_newest_ami_counts(aws, boto, clients):
    spec = spec_of({})
    publish_fake(boto, spec, build_time="2026-11-20T00:00:00Z", ssm=False)
    newer = publish_fake(boto, spec, build_time="2026-11-26T00:00:00Z", inputs="0" * 64)
    build, reason, newest = decide(spec, BASE_CHECKSUM, clients=clients)
    assert build and newest["id"] == newer[HOME], "an older AMI with these inputs must not cause a skip"
    # ... and the other way round: the newest has these inputs, an older one does not
    publish_fake(boto, spec, build_time="2026-11-27T00:00:00Z")
    assert not decide(spec, BASE_CHECKSUM, clients=clients).build


def test_a_spec_change_means_build(aws, boto, clients):
    publish_fake(boto, spec_of({}))
    build, reason, _ = decide(spec_of({"config": {"oom_score": -500}}), BASE_CHECKSUM, clients=clients)
    assert build and reason.startswith("the spec changed"), reason


def test_a_new_base_image_means_build(aws, boto, clients):
    spec = spec_of({})
    publish_fake(boto, spec)
    build, reason, _ = decide(spec, "sha256:" + "cd" * 32, clients=clients)
    assert build and reason.startswith("the base image changed"), reason


def test_force_means_build(aws, boto, clients):
    spec = spec_of({})
    ids = publish_fake(boto, spec)
    build, reason, newest = decide(spec, BASE_CHECKSUM, force=True, clients=clients)
    assert build and "forced" in reason and newest["id"] == ids[HOME]


def test_a_publish_that_did_not_finish_is_not_skipped(aws, boto, clients):
    spec = spec_of(SHARED)
    publish_fake(boto, spec, regions=(HOME,), share=(ACCOUNT,), ssm=False)  # stopped before the copy
    build, reason, _ = decide(spec, BASE_CHECKSUM, clients=clients)
    assert build
    assert f"no available copy in {OTHER}" in reason and "SSM parameter" in reason, reason


def test_a_finished_publish_with_copies_and_shares_is_skipped(aws, boto, clients):
    spec = spec_of(SHARED)
    publish_fake(boto, spec, regions=(HOME, OTHER), share=(ACCOUNT,))
    build, reason, _ = decide(spec, BASE_CHECKSUM, clients=clients)
    assert not build, reason


def test_ssm_naming_an_older_ami_is_not_finished(aws, boto, clients):
    """The night the SSM update was denied: the AMI exists, the parameter still names the old one."""
    spec = spec_of({})
    old = publish_fake(boto, spec, build_time="2026-11-25T18:15:00Z", inputs="00" * 32)
    new = publish_fake(boto, spec, ssm=False)
    boto("ssm", HOME).put_parameter(Name=spec.image.aws.ssm_parameter, Value=old[HOME], Type="String",
                                    DataType="aws:ec2:image", Overwrite=True)
    build, reason, newest = decide(spec, BASE_CHECKSUM, clients=clients)
    assert newest["id"] == new[HOME]
    assert build and f"names {old[HOME]}, not {new[HOME]}" in reason, reason
    boto("ssm", HOME).put_parameter(Name=spec.image.aws.ssm_parameter, Value=new[HOME], Type="String",
                                    DataType="aws:ec2:image", Overwrite=True)
    assert not decide(spec, BASE_CHECKSUM, clients=clients).build


def test_ssm_in_every_region_is_required_when_the_spec_asks(aws, boto, clients):
    spec = spec_of({"image": {"aws": {"copy_regions": [OTHER], "ssm_all_regions": True}}})
    ids = publish_fake(boto, spec, regions=(HOME, OTHER))
    build, reason, _ = decide(spec, BASE_CHECKSUM, clients=clients)
    assert build and f"does not exist in {OTHER}" in reason, reason
    boto("ssm", OTHER).put_parameter(Name=spec.image.aws.ssm_parameter, Value=ids[OTHER], Type="String",
                                     DataType="aws:ec2:image", Overwrite=True)
    assert not decide(spec, BASE_CHECKSUM, clients=clients).build


def test_an_unshared_copy_is_not_finished(aws, boto, clients):
    spec = spec_of(SHARED)
    publish_fake(boto, spec, regions=(HOME, OTHER), share=())
    build, reason, _ = decide(spec, BASE_CHECKSUM, clients=clients)
    assert build and f"is not shared with {ACCOUNT}" in reason, reason


# --------------------------------------------------------------------------- run_pipeline


@pytest.fixture
def junk_base(tmp_path) -> Path:
    """A 'base image' that is not an image: hashing it is fine, any build from it would fail."""
    path = tmp_path / "not-a-base.qcow2"
    path.write_bytes(b"this is not a qcow2 image\n" * 100)
    return path


@pytest.fixture
def no_bake(monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("the pipeline baked, but it should not have")

    monkeypatch.setattr(bake_module, "bake", refuse)


def _base_checksum(path: Path) -> str:
    return "sha256:" + sha256_file(path)


def test_unchanged_inputs_skip_without_baking(aws, boto, clients, junk_base, no_bake, tmp_path):
    spec = spec_of({})
    ids = publish_fake(boto, spec, _base_checksum(junk_base))
    work = tmp_path / "work"
    code = run_pipeline(spec, work=work, base=str(junk_base), clients=clients)
    assert code == UNCHANGED == 3
    assert not (work / "image").exists() and not (work / "render").exists()
    runs = sorted(work.glob("run-*.json"))
    assert len(runs) == 1
    manifest = json.loads(runs[0].read_text())
    assert json.loads((work / "last-run.json").read_text()) == manifest
    assert manifest["result"] == "unchanged" and manifest["exit_code"] == 3
    assert manifest["inputs_hash"] == inputs_hash(spec, _base_checksum(junk_base))
    steps = {s["step"]: s for s in manifest["steps"]}
    assert list(steps) == list(STEPS)
    assert steps["decide"]["status"] == "ok" and steps["decide"]["build"] is False
    assert steps["decide"]["newest_ami"]["id"] == ids[HOME]
    assert isinstance(steps["decide"]["duration_s"], float)
    for name in ("render", "bake", "verify", "publish", "prune"):
        assert steps[name]["status"] == "skipped" and ids[HOME] in steps[name]["reason"]


def test_the_cli_exits_3_when_unchanged(aws, boto, junk_base, no_bake, tmp_path):
    spec = spec_of({})
    publish_fake(boto, spec, _base_checksum(junk_base))
    code, out, err = run_main(["pipeline", str(write_spec(tmp_path, {})), "--work", str(tmp_path / "w"),
                               "--base", str(junk_base)])
    assert code == UNCHANGED, err
    assert "inputs unchanged" in err
    # a second run in the same second gets its own manifest
    code, _, _ = run_main(["pipeline", str(write_spec(tmp_path, {})), "--work", str(tmp_path / "w"),
                           "--base", str(junk_base)])
    assert code == UNCHANGED and len(list((tmp_path / "w").glob("run-*.json"))) == 2


def test_a_failed_step_is_marked_and_exits_1(aws, junk_base, monkeypatch, tmp_path):
    def broken_bake(spec, output, *, base=None):
        raise ImagebuildError("packer build failed (exit 1); full log: /somewhere")

    monkeypatch.setattr(bake_module, "bake", broken_bake)
    work = tmp_path / "w"
    code, out, err = run_main(["pipeline", str(write_spec(tmp_path, {})), "--work", str(work),
                               "--base", str(junk_base)])
    assert code == FAILED == 1
    last = work / "last-run.json"
    manifest = json.loads(last.read_text())
    run_path = next(work.glob("run-*.json"))
    assert f"run manifest: {run_path}" in err and "packer build failed" in err
    steps = {s["step"]: s for s in manifest["steps"]}
    assert manifest["result"] == "failed" and manifest["exit_code"] == 1
    assert steps["decide"]["status"] == "ok" and steps["decide"]["build"] is True
    assert steps["render"]["status"] == "ok" and steps["render"]["files"] > 0
    assert steps["bake"]["status"] == "failed" and "packer build failed" in steps["bake"]["error"]
    assert "duration_s" in steps["bake"]
    assert [steps[n]["status"] for n in ("verify", "publish", "prune")] == ["not run"] * 3


def test_an_aws_failure_while_deciding_is_marked_too(aws, junk_base, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(ImagebuildError) as failed:
        run_pipeline(spec_of({}), work=tmp_path / "w", base=str(junk_base))
    manifest = json.loads((tmp_path / "w" / "last-run.json").read_text())
    assert manifest["steps"][0]["step"] == "decide" and manifest["steps"][0]["status"] == "failed"
    assert "run manifest:" in str(failed.value) and "Traceback" not in str(failed.value)


def test_no_publish_never_asks_aws(junk_base, monkeypatch, tmp_path):
    """--no-publish builds and verifies without AWS: the decision is 'build', no clients made."""
    calls = []

    def fake_bake(spec, output, *, base=None):
        calls.append(base)
        raise ImagebuildError("stop here")

    monkeypatch.setattr(bake_module, "bake", fake_bake)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(ImagebuildError, match="stop here"):
        run_pipeline(spec_of({}), work=tmp_path / "w", base=str(junk_base), publish=False,
                     clients=lambda *a: pytest.fail("no AWS client with publish off"))
    assert calls == [str(junk_base.resolve())]
    manifest = json.loads((tmp_path / "w" / "last-run.json").read_text())
    assert manifest["steps"][0]["reason"].startswith("publish is off")


# --------------------------------------------------------------------------- a publish that keeps failing


def _baked_image(spec, work: Path, base: Path, tmp_path: Path, make_image_dir) -> Path:
    """work/image as bake + verify leave it for *spec* on *base* (the image data is small)."""
    made, _ = make_image_dir(tmp_path / "bake", build_time="2026-11-26T18:15:00Z")
    manifest = json.loads((made / "manifest.json").read_text())
    manifest |= {"family": spec.name, "inputs_hash": inputs_hash(spec, _base_checksum(base)),
                 "spec_hash": spec.spec_hash}
    (made / "manifest.json").write_text(json.dumps(manifest, indent=2))
    work.mkdir(parents=True, exist_ok=True)
    made.rename(work / "image")
    return work / "image"


def test_a_publish_that_keeps_failing_is_resumed_and_pruned(aws, boto, boto_session, junk_base, no_bake, tmp_path,
                                                           recording_clients, client_error):
    """Copying to one region is denied night after night (keep 2): the image baked on night 1 is
    published once, each later night resumes it instead of baking a new one, prune runs every
    night, and the night the copy works the publish finishes."""
    from imagebuild.aws.publish import publish
    from imagebuild.aws.target import target_of
    from tests.aws.fixtures import make_image_dir

    spec = spec_of({"image": {"aws": {"region": HOME, "copy_regions": [OTHER], "keep": 2}}})
    work = tmp_path / "work"
    image_dir = _baked_image(spec, work, junk_base, tmp_path, make_image_dir)
    denied = {("ec2", OTHER, "copy_image"): lambda n: client_error("UnauthorizedOperation", "denied", "CopyImage")}

    night1 = recording_clients(denied)
    with pytest.raises(ImagebuildError, match=f"copying the AMI failed for {OTHER}"):
        publish(image_dir, target_of(spec), clients=night1, progress=lambda p: None, poll_interval=0.01)

    for night in (2, 3, 4):
        clients = recording_clients(denied)
        with pytest.raises(ImagebuildError, match=f"copying the AMI failed for {OTHER}"):
            run_pipeline(spec, work=work, base=str(junk_base), clients=clients)
        manifest = json.loads((work / "last-run.json").read_text())
        steps = {s["step"]: s for s in manifest["steps"]}
        assert steps["decide"]["build"] and "resuming the unfinished publish" in steps["decide"]["reason"]
        assert [steps[n]["status"] for n in ("render", "bake", "verify")] == ["skipped"] * 3
        assert steps["publish"]["status"] == "failed" and steps["prune"]["status"] == "ok", night
        assert clients.count("register_image") == 0 and clients.count("start_snapshot") == 0

    ec2 = boto("ec2", HOME)
    mine = ec2.describe_images(Owners=["self"])["Images"]
    assert len(mine) == 1
    assert len(ec2.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:imagebuild:family", "Values": [spec.name]}])["Snapshots"]) <= 2  # upload + moto's AMI copy

    code = run_pipeline(spec, work=work, base=str(junk_base), clients=recording_clients())
    assert code == 0
    record = json.loads((image_dir / "publish.json").read_text())
    assert record["complete"] and set(record["images"]) == {HOME, OTHER}
    # and the next night skips: everything is in place
    assert run_pipeline(spec, work=work, base=str(junk_base), clients=recording_clients()) == UNCHANGED


# --------------------------------------------------------------------------- checksum_url by content


def test_a_checksum_url_counts_by_the_checksum_it_names(tmp_path):
    sums = tmp_path / "SHA256SUMS"
    doc = {"containerd": {"install": {"tarball": {"sha256": None, "checksum_url": sums.as_uri()}}}}
    spec = spec_of(doc)
    name = spec.containerd.install.tarball.resolved_url.rsplit("/", 1)[-1]
    sums.write_text(f"{'11' * 32}  other.tar.gz\n{'22' * 32}  {name}\n")
    first = inputs_hash(spec, BASE_CHECKSUM)
    sums.write_text(f"{'22' * 32} *{name}\n{'33' * 32}  other.tar.gz\n")  # same sha for our file
    assert inputs_hash(spec, BASE_CHECKSUM) == first
    sums.write_text(f"{'44' * 32}  {name}\n")  # a new release behind the same URL
    assert inputs_hash(spec, BASE_CHECKSUM) != first


def test_an_unreadable_checksum_url_fails_the_decision(tmp_path):
    sums = tmp_path / "SHA256SUMS"
    spec = spec_of({"containerd": {"install": {"tarball": {"sha256": None, "checksum_url": sums.as_uri()}}}})
    with pytest.raises(ImagebuildError, match="cannot read checksum_url"):
        inputs_hash(spec, BASE_CHECKSUM)
    sums.write_text(f"{'11' * 32}  other.tar.gz\n")
    with pytest.raises(ImagebuildError, match="names no sha256 for containerd-1.6.20-linux-amd64.tar.gz"):
        inputs_hash(spec, BASE_CHECKSUM)


def test_the_builtin_base_is_rebuilt_every_refresh_period(tmp_path, monkeypatch):
    """Debian security updates reach the base (and so the inputs hash) within BASE_REFRESH_DAYS."""
    from imagebuild import pipeline

    monkeypatch.setenv("IMAGEBUILD_CACHE", str(tmp_path / "cache"))
    day = 86400.0
    start = 3000 * pipeline.BASE_REFRESH_DAYS * day - 1  # the last second of a period
    first = pipeline.scheduled_base_dir(start)
    assert pipeline.scheduled_base_dir(start - (pipeline.BASE_REFRESH_DAYS - 1) * day) == first
    second = pipeline.scheduled_base_dir(start + 1)
    assert second != first and second.parent == first.parent
    first.mkdir(parents=True)
    (first / "marker").write_text("previous period: kept while a run may still use it")
    pipeline.scheduled_base_dir(start + 1)
    assert first.exists()
    pipeline.scheduled_base_dir(start + 1 + pipeline.BASE_REFRESH_DAYS * day)
    assert not first.exists()  # two periods old: removed


def test_a_held_rollback_is_not_built_over(aws, boto, clients):
    """An operator points the SSM parameter back at an older AMI. Without a hold the newest AMI's publish
    looks unfinished and the night builds and moves the parameter forward again; with imagebuild:hold
    on the older AMI the run is skipped and the decision says why."""
    spec = spec_of({})
    param = spec.image.aws.ssm_parameter
    old = publish_fake(boto, spec, build_time="2026-11-20T00:00:00Z")
    new = publish_fake(boto, spec, build_time="2026-11-26T00:00:00Z")
    boto("ssm", HOME).put_parameter(Name=param, Value=old[HOME], Type="String", DataType="aws:ec2:image",
                                    Overwrite=True)
    build, reason, _ = decide(spec, BASE_CHECKSUM, clients=clients)
    assert build and f"SSM parameter {param} in {HOME} names {old[HOME]}, not {new[HOME]}" in reason
    boto("ec2", HOME).create_tags(Resources=[old[HOME]], Tags=[{"Key": "imagebuild:hold", "Value": "INC-42"}])
    build, reason, _ = decide(spec, BASE_CHECKSUM, clients=clients)
    assert not build, reason
    assert reason.endswith(f"; SSM parameter {param} in {HOME} is held at {old[HOME]} (imagebuild:hold=INC-42)")
