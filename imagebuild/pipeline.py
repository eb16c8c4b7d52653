"""The nightly pipeline: decide -> render -> bake -> verify -> publish -> prune, with a run manifest.

`decide` says whether a build is needed at all: the inputs hash (spec, artifact checksums, base
image checksum, imagebuild version: `imagebuild.build.bake.inputs_hash`) is compared with the
`imagebuild:inputs-hash` tag of the family's newest AMI in the home region. The run is skipped
only when they are equal and that AMI's publish finished (available, copied to every copy
region, shared with every account, the SSM parameter naming it in the home region, or in every
region with ssm_all_regions); a publish that stopped half-way is not skipped for ever. When the
work directory still holds that unfinished publish (image/publish.json, its verified image
unchanged, the same inputs hash), the run resumes it: render, bake and verify are skipped and
publish finishes what is missing. Without it, the image is built and published again. Prune runs
after publish even when publish failed, so a publish failing night after night piles up no AMIs.

Every step's status and duration go to <work>/run-<time>.json (and a copy, last-run.json),
rewritten after each step, so a failed run says exactly how far it got. The publish step lists
the AMI id of every region.

Exit codes: 0 published (or verified, with publish off), 3 unchanged (skipped), 1 a step failed
(ImagebuildError naming the run manifest), 2 a bad spec (raised before the pipeline starts).
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from imagebuild import render
from imagebuild.errors import ImagebuildError, interrupted_exit_code
from imagebuild.progress import step
from imagebuild.run import locked
from imagebuild.spec import Spec

PUBLISHED, UNCHANGED, FAILED = 0, 3, 1
STEPS = ("decide", "render", "bake", "verify", "publish", "prune")

INPUTS_HASH_TAG = "imagebuild:inputs-hash"
SPEC_HASH_TAG = "imagebuild:spec-hash"
BASE_CHECKSUM_TAG = "imagebuild:base-checksum"


# --------------------------------------------------------------------------- the decision


class BuildDecision(NamedTuple):
    """Whether to build, why (one line for people), and the newest AMI looked at (or None)."""

    build: bool
    reason: str
    newest_ami: dict[str, Any] | None


def _tags(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def newest_ami(spec: Spec, clients=None) -> dict[str, Any] | None:
    """The family's newest AMI in the home region (prune's order: build-time tag, then CreationDate).

    Returns {"id", "name", "region", "state", "tags"} or None when the family has no AMI there.
    """
    from imagebuild.aws.clients import boto3_clients
    from imagebuild.aws.prune import family_images, newest_first_key

    clients = clients or boto3_clients()
    region = spec.image.aws.region
    images = sorted(family_images(clients("ec2", region), spec.name), key=newest_first_key)
    if not images:
        return None
    image = images[0]
    return {"id": image["ImageId"], "name": image.get("Name", ""), "region": region,
            "state": image.get("State", ""), "tags": _tags(image)}


def unfinished_publish(spec: Spec, ami: dict[str, Any], clients, held: list[str] | None = None) -> list[str]:
    """What the publish of *ami* (the home AMI) still lacks; [] when it finished.

    Publish makes the home AMI, copies it (same name) to each copy region, shares every copy and
    sets the SSM parameter last; a run that stopped half-way leaves some of that missing. An SSM
    parameter an operator holds at another AMI (imagebuild.aws.hold) lacks nothing: it goes to *held*.
    """
    from imagebuild.aws.lookup import find_image_by_name, launch_permission_set, launch_permissions
    from imagebuild.aws.target import target_of

    aws = spec.image.aws
    missing: list[str] = []
    if ami["state"] != "available":
        missing.append(f"it is {ami['state'] or 'in no state'} in {ami['region']}")
        return missing
    regional = {ami["region"]: ami["id"]}
    for region in aws.copy_regions:
        copy = find_image_by_name(clients("ec2", region), ami["name"])
        if copy is None or copy.get("State") != "available":
            missing.append(f"no available copy in {region}")
        else:
            regional[region] = copy["ImageId"]
    want = launch_permission_set(target_of(spec))
    for region, image_id in regional.items():
        lacking = sorted(want - launch_permissions(clients("ec2", region), image_id)) if want else []
        if lacking:
            missing.append(f"{image_id} in {region} is not shared with {', '.join(v for _, v in lacking)}")
    if aws.ssm_parameter:
        from imagebuild.aws.lookup import ssm_parameter_value

        ssm_regions = regional if aws.ssm_all_regions else {ami["region"]: ami["id"]}
        for region, image_id in ssm_regions.items():
            value = ssm_parameter_value(clients("ssm", region), aws.ssm_parameter)
            if value is None:
                missing.append(f"SSM parameter {aws.ssm_parameter} does not exist in {region}")
            elif value != image_id:
                from imagebuild.aws.hold import hold_of
                from imagebuild.aws.lookup import describe_image

                hold = hold_of(describe_image(clients("ec2", region), value))
                if hold is None:
                    missing.append(f"SSM parameter {aws.ssm_parameter} in {region} names {value}, not {image_id}")
                elif held is not None:
                    held.append(f"SSM parameter {aws.ssm_parameter} in {region} is held at {value} ({hold})")
    return missing


def unfinished_local_publish(image_dir: Path, wanted_inputs_hash: str) -> dict[str, Any] | None:
    """The publish record in *image_dir* when it is unfinished and its image is publishable
    with these inputs (verified, unchanged since); a rerun then resumes it instead of baking a new
    image. None otherwise."""
    from imagebuild.aws.lookup import check_publishable
    from imagebuild.aws.record import RECORD_NAME

    path = Path(image_dir) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        manifest, _ = check_publishable(Path(image_dir))
    except (OSError, ValueError, ImagebuildError):
        return None
    if not isinstance(record, dict) or record.get("complete") or manifest.inputs_hash != wanted_inputs_hash:
        return None
    if record.get("image_sha256") != manifest.sha256:
        return None
    return {"name": record.get("name", ""), "image": manifest.image, "last_error": record.get("last_error")}


def decide(spec: Spec, base_checksum: str, *, force: bool = False, clients=None) -> BuildDecision:
    """Does *spec* on the base image with *base_checksum* need a build? Asks the home region only.

    *clients* is an imagebuild.aws.clients factory (default: boto3's normal chain).
    """
    from imagebuild.aws.clients import boto3_clients
    from imagebuild.build.bake import inputs_hash

    clients = clients or boto3_clients()
    wanted = inputs_hash(spec, base_checksum)
    newest = newest_ami(spec, clients)
    where = f"family {spec.name} in {spec.image.aws.region}"
    if force:
        return BuildDecision(True, "forced (--force)", newest)
    if newest is None:
        return BuildDecision(True, f"no AMI of {where} yet", None)
    tags = newest["tags"]
    have = tags.get(INPUTS_HASH_TAG)
    label = f"newest AMI {newest['id']} ({newest['name']})"
    if have != wanted:
        if tags.get(SPEC_HASH_TAG) != spec.spec_hash:
            what = "the spec changed"
        elif tags.get(BASE_CHECKSUM_TAG) not in (None, base_checksum):
            what = "the base image changed"
        else:
            what = "an artifact checksum, the base image or the imagebuild version changed"
        return BuildDecision(True, f"{what}: {label} has inputs hash {(have or 'none')[:12]}, "
                                   f"these inputs hash to {wanted[:12]}", newest)
    held: list[str] = []
    missing = unfinished_publish(spec, newest, clients, held)
    if missing:
        return BuildDecision(True, f"{label} has these inputs but its publish did not finish "
                                   f"({'; '.join(missing)}); building again", newest)
    holds = "".join(f"; {line}" for line in held)
    return BuildDecision(False, f"inputs unchanged: {label} has inputs hash {wanted[:12]}{holds}", newest)


# --------------------------------------------------------------------------- the base image's age

# The built-in base image (imagebuild base-image) is cached by its recipe, so on its own it never
# picks up Debian's security updates. The pipeline therefore builds it afresh every
# BASE_REFRESH_DAYS: the new base has a new checksum, which changes the inputs hash, so the next
# nightly run bakes and publishes an image with the updates. (Hashing the base's package set
# instead would not help: a cached base's packages never change.)
BASE_REFRESH_DAYS = 7


def scheduled_base_dir(now: float | None = None, flavor: Any = None) -> Path:
    """Where the pipeline's base image for the current BASE_REFRESH_DAYS period lives; older
    periods' images are removed (the previous one stays for a run that is still using it)."""
    import shutil

    from imagebuild.build import baseimage
    from imagebuild.paths import cache_dir

    epoch = int((time.time() if now is None else now) // (BASE_REFRESH_DAYS * 86400))
    root = cache_dir("base-scheduled", baseimage.recipe_hash(flavor=flavor or baseimage.DEFAULT))
    for old in root.glob("period-*"):
        try:
            stale = int(old.name.split("-", 1)[1]) < epoch - 1
        except ValueError:
            continue
        if stale:
            shutil.rmtree(old, ignore_errors=True)
    return root / f"period-{epoch}"


def scheduled_base(spec: Spec) -> str:
    """The built-in base image of *spec*'s image.os and architecture for the current period (built now
    if this period has none yet)."""
    from imagebuild.build import baseimage

    flavor = baseimage.Flavor.of(spec.image.os, spec.image.architecture)
    return str(baseimage.build(scheduled_base_dir(flavor=flavor), flavor))


# --------------------------------------------------------------------------- the run manifest


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Run:
    """The run manifest: every step with status and duration, rewritten after every change."""

    def __init__(self, work: Path, spec: Spec, steps: tuple[str, ...] = STEPS):
        self.work = work
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.path = work / f"run-{stamp}.json"
        suffix = 1
        while self.path.exists():  # two runs in one second must not share a manifest
            suffix += 1
            self.path = work / f"run-{stamp}-{suffix}.json"
        self.started = time.monotonic()
        self.data: dict[str, Any] = {
            "family": spec.name, "spec_hash": spec.spec_hash, "started": _now(), "finished": None,
            "duration_s": None, "result": "running", "exit_code": None,
            "steps": [{"step": name, "status": "pending"} for name in steps],
        }
        self.save()

    def entry(self, name: str) -> dict[str, Any]:
        return next(e for e in self.data["steps"] if e["step"] == name)

    def save(self) -> None:
        text = (json.dumps(self.data, indent=2) + "\n").encode()
        render.write_file_atomic(self.path, text)
        render.write_file_atomic(self.work / "last-run.json", text)

    def run_step(self, name: str, action: Callable[[], dict | None]) -> dict:
        """Run one step; its entry gets status ok/failed, duration_s and the action's details."""
        entry = self.entry(name)
        entry |= {"status": "running", "started": _now()}
        self.save()
        started = time.monotonic()
        step(f"pipeline: {name}")
        try:
            detail = action() or {}
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            entry |= {"status": status, "duration_s": round(time.monotonic() - started, 1),
                      "error": _describe(exc)}
            self.save()
            raise
        entry |= {"status": "ok", "duration_s": round(time.monotonic() - started, 1), **detail}
        self.save()
        return detail

    def skip_rest(self, reason: str) -> None:
        for entry in self.data["steps"]:
            if entry["status"] == "pending":
                entry |= {"status": "skipped", "reason": reason}

    def finish(self, result: str, exit_code: int, error: str | None = None) -> None:
        for entry in self.data["steps"]:
            if entry["status"] == "pending":
                entry["status"] = "not run"
        self.data |= {"result": result, "exit_code": exit_code, "finished": _now(),
                      "duration_s": round(time.monotonic() - self.started, 1)}
        if error:
            self.data["error"] = error
        self.save()


def _describe(exc: BaseException) -> str:
    from imagebuild.aws.clients import describe_error, is_aws_error

    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if is_aws_error(exc):
        return describe_error(exc)
    if isinstance(exc, ImagebuildError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- the pipeline


def run_pipeline(spec: Spec, *, work: Path, force: bool = False, publish: bool = True,
                 base: str | None = None, clients=None) -> int:
    """Run the nightly job in *work*; returns PUBLISHED or UNCHANGED, raises ImagebuildError on failure.

    *base* overrides the base image (as `--base`); *clients* is an imagebuild.aws.clients
    factory for decide, publish and prune (default: boto3's normal chain).
    """
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # one pipeline per work directory: a second one would replace the image under the first
    with locked(work / ".pipeline.lock", busy=f"another pipeline is running in {work}"):
        run = Run(work, spec)
        try:
            return _run(run, spec, work, force=force, publish=publish, base=base, clients=clients)
        except KeyboardInterrupt as exc:
            run.finish("interrupted", interrupted_exit_code(exc), "interrupted")
            raise
        except BaseException as exc:
            message = _describe(exc)
            run.finish("failed", FAILED, message)
            if isinstance(exc, ImagebuildError) or _is_aws_error(exc):
                raise ImagebuildError(f"{message}\nrun manifest: {run.path}") from None
            raise  # a bug: keep the traceback, the manifest still says where it happened


def _is_aws_error(exc: BaseException) -> bool:
    from imagebuild.aws.clients import is_aws_error

    return is_aws_error(exc)


def _run(run: Run, spec: Spec, work: Path, *, force: bool, publish: bool, base: str | None, clients) -> int:
    from imagebuild.build.bake import bake, inputs_hash
    from imagebuild.build.base_source import resolve_base
    from imagebuild.verify.boot import print_report, verify_image

    image_dir = work / "image"
    made: dict[str, Any] = {}
    unpinned = spec

    def decide_step() -> dict:
        nonlocal spec
        # The built-in base is rebuilt every BASE_REFRESH_DAYS (see scheduled_base).
        source, checksum = resolve_base(unpinned, base or (None if unpinned.image.base else scheduled_base(unpinned)))
        # checksum_urls read once, after the base is found: the inputs hash, render and bake share them
        spec = render.secret_refs.stage(render.downloads.pin(unpinned), image=True)
        made["base"] = source
        made["inputs_hash"] = inputs_hash(spec, checksum)
        run.data |= {"base_image": {"source": source, "checksum": checksum}, "inputs_hash": made["inputs_hash"]}
        if not publish:
            made["decision"] = BuildDecision(True, "publish is off: build and verify only", None)
        else:
            made["decision"] = decide(spec, checksum, force=force, clients=clients)
            pending = None if force or not made["decision"].build else unfinished_local_publish(
                image_dir, made["inputs_hash"])
            if pending:
                made["resume"] = pending
                made["image"] = image_dir / pending["image"]
                made["decision"] = BuildDecision(True, f"resuming the unfinished publish of {pending['name']} in "
                                                       f"{image_dir} ({made['decision'].reason})",
                                                 made["decision"].newest_ami)
        decision = made["decision"]
        step(f"pipeline: {'build' if decision.build else 'skip'}: {decision.reason}")
        newest = decision.newest_ami
        return {"build": decision.build, "reason": decision.reason,
                "newest_ami": {k: newest[k] for k in ("id", "name", "region", "state")} if newest else None}

    def render_step() -> dict:
        # As `imagebuild render` writes it: no user-data carrying a literal secret (render.secrets).
        files = render.render_all(spec, with_user_data=not render.secrets.refused_in_metadata(spec))
        render.write_tree(files, work / "render")
        return {"files": len(files), "directory": str(work / "render")}

    def bake_step() -> dict:
        # A local base goes in as the path decide hashed; a URL (spec's image.base) bake resolves itself.
        local = made["base"] if "://" not in made["base"] else None
        image = bake(spec, image_dir, base=local or base)
        manifest = json.loads((image_dir / "manifest.json").read_text())
        if manifest.get("inputs_hash") != made["inputs_hash"]:
            raise ImagebuildError(f"bake recorded inputs hash {manifest.get('inputs_hash')}, the pipeline computed "
                                  f"{made['inputs_hash']}; publishing would break the unchanged-inputs skip")
        made["image"] = image
        return {"image": str(image), "sha256": manifest["sha256"], "inputs_hash": manifest["inputs_hash"],
                "packer_durations_s": manifest.get("durations_s", {})}

    def verify_step() -> dict:
        # The pipeline makes AMIs: the image is booted as EC2 boots it (IMDSv2, a new NIC, UEFI where the
        # image prefers it), which runs every check of a NoCloud verify and EC2's own; publish requires it.
        report = verify_image(made["image"], spec, platform="ec2")
        print_report(report)
        if not report["passed"]:
            raise ImagebuildError(f"EC2 verify failed: {', '.join(report['failed']) or 'no checks ran'}; "
                                  f"serial log {report['serial_log']}")
        return {"platform": "ec2", "checks": len(report["checks"]), "image_sha256": report["image_sha256"],
                "timings": report["timings"], "report": str(image_dir / "verify-ec2.json")}

    def publish_step() -> dict:
        from imagebuild.aws.publish import publish as publish_image
        from imagebuild.aws.target import target_of

        record = publish_image(image_dir, target_of(spec), clients=clients)
        made["record"] = record
        return {"amis": {region: entry["id"] for region, entry in record["images"].items()},
                "name": record["name"],
                "snapshot": (record.get("snapshot") or {}).get("id"),
                "shared": record.get("shared", {}),
                "ssm_parameter": record.get("ssm_parameter"),
                "ssm_held": record.get("ssm_held") or {},
                "record": str(image_dir / "publish.json")}

    def prune_step() -> dict:
        from imagebuild.aws.prune import format_table, prune
        from imagebuild.aws.target import target_of

        decisions = prune(target_of(spec), apply=True, clients=clients)
        print(format_table(decisions))
        return {"kept": sum(d.action == "keep" for d in decisions),
                "deleted": sum(d.action == "delete" for d in decisions),
                "decisions": [dataclasses.asdict(d) for d in decisions]}

    run.run_step("decide", decide_step)
    decision = made["decision"]
    if not decision.build:
        run.skip_rest(decision.reason)
        run.finish("unchanged", UNCHANGED)
        step(f"pipeline: unchanged, nothing built; run manifest {run.path}")
        return UNCHANGED
    if made.get("resume"):
        for name in ("render", "bake", "verify"):
            run.entry(name).update(status="skipped", reason=f"resuming the publish of {made['resume']['name']}, "
                                                            "baked and verified by an earlier run")
        run.save()
    else:
        run.run_step("render", render_step)
        run.run_step("bake", bake_step)
        run.run_step("verify", verify_step)
    if not publish:
        run.skip_rest("publish is off (--no-publish)")
        run.finish("verified", PUBLISHED)
        step(f"pipeline: verified {made['image']}; not published; run manifest {run.path}")
        return PUBLISHED
    try:
        run.run_step("publish", publish_step)
    except Exception:
        # retention runs all the same: a publish failing night after night must not pile up AMIs
        try:
            run.run_step("prune", prune_step)
        except Exception:
            pass  # recorded in the prune step; the publish failure is what the run reports
        raise
    run.run_step("prune", prune_step)
    run.finish("published", PUBLISHED)
    amis = ", ".join(f"{r} {e['id']}" for r, e in made["record"]["images"].items())
    step(f"pipeline: published {amis}; run manifest {run.path}")
    return PUBLISHED
