"""The nightly pipeline: render -> bake -> verify -> publish -> prune, with a run manifest.

A run is skipped when the content hash of its inputs (spec, artifact checksums, base image
checksum, imagebuild version) equals the `imagebuild:inputs-hash` tag of the family's newest AMI:
nothing would change. Every step's result and duration go to <work>/run-<time>.json (and
last-run.json), written after each step, so a failed run says exactly how far it got.

Exit codes: 0 published, 3 unchanged (skipped), 1 a step failed, 2 a bad spec.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from . import render
from .errors import ImagebuildError
from .progress import step
from .spec import Spec

PUBLISHED, UNCHANGED, FAILED = 0, 3, 1


def newest_inputs_hash(spec: Spec) -> tuple[str | None, str | None]:
    """(AMI id, inputs hash tag) of the family's newest AMI in the home region, or (None, None)."""
    from .aws.clients import boto3_clients

    ec2 = boto3_clients()("ec2", spec.image.aws.region)
    images = ec2.describe_images(Owners=["self"], Filters=[
        {"Name": "tag:imagebuild:family", "Values": [spec.name]}])["Images"]
    if not images:
        return None, None

    def tags(image: dict) -> dict:
        return {t["Key"]: t["Value"] for t in image.get("Tags", [])}

    newest = max(images, key=lambda i: (tags(i).get("imagebuild:build-time", ""), i.get("CreationDate", "")))
    return newest["ImageId"], tags(newest).get("imagebuild:inputs-hash")


class Run:
    """The run manifest, rewritten after every step."""

    def __init__(self, work: Path, spec: Spec):
        self.work = work
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.path = work / f"run-{stamp}.json"
        self.data = {"family": spec.name, "spec_hash": spec.spec_hash, "started": stamp, "steps": [],
                     "result": "running"}

    def save(self) -> None:
        text = (json.dumps(self.data, indent=2) + "\n").encode()
        render.write_file_atomic(self.path, text)
        render.write_file_atomic(self.work / "last-run.json", text)

    def run_step(self, name: str, action: Callable[[], dict | None]) -> dict:
        entry = {"step": name, "status": "running"}
        self.data["steps"].append(entry)
        self.save()
        started = time.monotonic()
        step(f"pipeline: {name}")
        try:
            detail = action() or {}
        except BaseException as exc:
            entry |= {"status": "failed", "error": str(exc) or type(exc).__name__,
                      "duration_s": round(time.monotonic() - started, 1)}
            self.data["result"] = "failed"
            self.save()
            raise
        entry |= {"status": "ok", "duration_s": round(time.monotonic() - started, 1), **detail}
        self.save()
        return detail

    def finish(self, result: str) -> None:
        self.data["result"] = result
        self.save()


def run_pipeline(spec: Spec, *, work: Path, force: bool = False, publish: bool = True,
                 base: str | None = None) -> int:
    from .bake import bake, inputs_hash, resolve_base
    from .verify import print_report, verify_image

    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    run = Run(work, spec)
    image_dir = work / "image"
    try:
        base_source, base_checksum = resolve_base(spec, base)
        wanted = inputs_hash(spec, base_checksum)
        run.data |= {"base_image": {"source": base_source, "checksum": base_checksum}, "inputs_hash": wanted}
        if publish and not force:
            ami, current = newest_inputs_hash(spec)
            if current == wanted:
                run.data["steps"].append({"step": "bake", "status": "skipped",
                                          "reason": f"inputs unchanged since {ami}"})
                run.finish("unchanged")
                step(f"pipeline: inputs unchanged (newest AMI {ami} has inputs hash {wanted[:12]}); skipped")
                return UNCHANGED

        made: dict = {}

        def render_step() -> dict:
            files = render.render_all(spec)
            render.write_tree(files, work / "render")
            return {"files": len(files)}

        def bake_step() -> dict:
            made["image"] = bake(spec, image_dir, base=base_source)
            return {"image": str(made["image"])}

        def verify_step() -> dict:
            report = verify_image(made["image"], spec)
            print_report(report)
            if not report["passed"]:
                raise ImagebuildError(f"verify failed: {', '.join(report['failed']) or 'no checks ran'}")
            return {"checks": len(report["checks"]), "timings": report["timings"]}

        def publish_step() -> dict:
            made["record"] = publish_image(image_dir, target)
            return {"record": made["record"]}

        def prune_step() -> dict:
            made["decisions"] = prune(target, apply=True)
            return {"decisions": [vars(d) for d in made["decisions"]]}

        run.run_step("render", render_step)
        run.run_step("bake", bake_step)
        run.run_step("verify", verify_step)
        if not publish:
            run.finish("verified")
            return PUBLISHED
        from .aws.prune import format_table, prune
        from .aws.publish import publish as publish_image
        from .aws.target import target_of

        target = target_of(spec)
        run.run_step("publish", publish_step)
        run.run_step("prune", prune_step)
        print(format_table(made["decisions"]))
        run.finish("published")
        return PUBLISHED
    except ImagebuildError as exc:
        run.finish("failed")
        raise ImagebuildError(f"{exc}\nrun manifest: {run.path}") from None
