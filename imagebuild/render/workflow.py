"""`imagebuild matrix`: a spec's variants listed, and as a workflow of the CI engine the user already runs.

One job per variant runs `imagebuild pipeline SPEC --variant NAME --work <work_dir>/<variant>` on the runner
the spec's `matrix` names for the variant's architecture (GitHub Actions: runs-on, GitLab CI: tags); a last
job, after all of them and whatever they did, prunes each variant's family and summarises every variant's
last-run.json (`imagebuild matrix SPEC --summary DIR`), failing when a variant failed.
Two runs of one variant (tonight's and a manual one) queue on the engine's own mutual exclusion: a
concurrency group (GitHub) or resource group (GitLab) named after the variant's family.

Everything is data dumped with the YAML dumper; every value the spec or the command line supplies (the spec
path, variant names, setup commands) reaches a shell only through an environment variable, never pasted
into a script, so no spec text can become a command or a workflow expression.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from imagebuild.spec.model import Spec

#: The pipeline's "unchanged, skipped" exit (3) is a success for the job.
PIPELINE = 'imagebuild pipeline "$IMAGEBUILD_SPEC" --variant "$IMAGEBUILD_VARIANT" --work "$IMAGEBUILD_WORK" ' \
           '|| test "$?" -eq 3'
PRUNE = 'imagebuild prune "$IMAGEBUILD_SPEC" --variant "$IMAGEBUILD_VARIANT" --apply'
SUMMARY = 'imagebuild matrix "$IMAGEBUILD_SPEC" --summary "$IMAGEBUILD_WORK"'
FORMATS = ("github-actions", "gitlab-ci")


def rows(spec: Spec) -> list[dict[str, str]]:
    """One row per variant: name, family, os, architecture, containerd version, profile."""
    return [{"variant": name, "family": v.name, "os": v.image.os, "architecture": v.image.architecture,
             "containerd": v.containerd.version, "profile": v.system.profile} for name, v in spec.expanded.items()]


def table(records: list[dict[str, str]]) -> str:
    """*records* as aligned text columns (the keys of the first are the header)."""
    if not records:
        return "no variants"
    keys = list(records[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in records)) for k in keys}
    lines = ["  ".join(k.upper().ljust(widths[k]) for k in keys)]
    lines += ["  ".join(str(r[k]).ljust(widths[k]) for k in keys) for r in records]
    return "\n".join(line.rstrip() for line in lines)


def variant_spec_yaml(spec: Spec, name: str, source: str) -> str:
    """The variant *name* as a spec file of its own: its effective document (defaults filled in)."""
    return (f"# variant {name} of {source}, expanded and validated by `imagebuild matrix`\n"
            + yaml.safe_dump(spec.variant(name).document, sort_keys=False, allow_unicode=True))


def _job_id(name: str) -> str:
    return f"variant-{name}"  # a variant name is a DNS label; a job id must start with a letter


def github_actions(spec: Spec, spec_path: str) -> dict[str, Any]:
    """The GitHub Actions workflow running every variant of *spec* (read from *spec_path* in the checkout)."""
    matrix = spec.matrix
    setup = [{"name": "set up the runner", "run": "\n".join(matrix.setup)}] if matrix.setup else []
    checkout = {"uses": "actions/checkout@v4"}
    jobs: dict[str, Any] = {}
    for name, variant in spec.expanded.items():
        work = f"{matrix.work_dir}/{name}"
        jobs[_job_id(name)] = {
            "name": f"{name} ({variant.image.os} {variant.image.architecture}, containerd "
                    f"{variant.containerd.version})",
            "runs-on": getattr(matrix.github_runners, variant.image.architecture),
            "concurrency": {"group": f"imagebuild-{variant.name}", "cancel-in-progress": False},
            "env": {"IMAGEBUILD_SPEC": spec_path, "IMAGEBUILD_VARIANT": name, "IMAGEBUILD_WORK": work},
            "steps": [checkout, *setup,
                      {"name": "pipeline", "run": PIPELINE},
                      {"name": "keep the run record", "if": "always()", "uses": "actions/upload-artifact@v4",
                       "with": {"name": f"imagebuild-{name}", "path": f"{work}/last-run.json",
                                "if-no-files-found": "warn"}}],
        }
    steps: list[dict[str, Any]] = [checkout, *setup]
    for name in spec.expanded:
        steps.append({"name": f"run record of {name}", "uses": "actions/download-artifact@v4",
                      "continue-on-error": True,
                      "with": {"name": f"imagebuild-{name}", "path": f"{matrix.work_dir}/{name}"}})
    for name in spec.expanded:
        steps.append({"name": f"prune {name}", "if": "always()", "env": {"IMAGEBUILD_VARIANT": name}, "run": PRUNE})
    steps.append({"name": "summary", "if": "always()", "run": SUMMARY + ' | tee -a "$GITHUB_STEP_SUMMARY"'})
    jobs["summary"] = {"name": "prune and summarise", "needs": list(map(_job_id, spec.expanded)),
                       "if": "always()", "runs-on": matrix.github_runners.amd64,
                       "env": {"IMAGEBUILD_SPEC": spec_path, "IMAGEBUILD_WORK": matrix.work_dir}, "steps": steps}
    return {"name": f"imagebuild {spec.name}", "on": {"workflow_dispatch": {}, "schedule": [{"cron": "0 2 * * *"}]},
            "permissions": {"contents": "read"}, "jobs": jobs}


def _literal(value: str) -> dict[str, Any]:
    """A GitLab CI variable GitLab must not expand ($ stays $)."""
    return {"value": value, "expand": False}


def gitlab_ci(spec: Spec, spec_path: str) -> dict[str, Any]:
    """The GitLab CI pipeline (.gitlab-ci.yml) running every variant of *spec*."""
    matrix = spec.matrix
    setup = {"before_script": list(matrix.setup)} if matrix.setup else {}
    out: dict[str, Any] = {"stages": ["build", "summary"]}
    for name, variant in spec.expanded.items():
        work = f"{matrix.work_dir}/{name}"
        tags = list(getattr(matrix.gitlab_tags, variant.image.architecture))
        out[_job_id(name)] = {
            "stage": "build", **({"tags": tags} if tags else {}), "resource_group": f"imagebuild-{variant.name}",
            "variables": {"IMAGEBUILD_SPEC": _literal(spec_path), "IMAGEBUILD_VARIANT": _literal(name),
                          "IMAGEBUILD_WORK": _literal(work)},
            **setup, "script": [PIPELINE],
            "artifacts": {"when": "always", "paths": [f"{work}/last-run.json"]},
        }
    tags = list(matrix.gitlab_tags.amd64)
    # Every prune and the summary run whatever the others did; the job fails if one of them failed.
    prune = [f"IMAGEBUILD_VARIANT={shlex.quote(name)} {PRUNE} || failed=1" for name in spec.expanded]
    out["summary"] = {
        "stage": "summary", **({"tags": tags} if tags else {}), "when": "always",
        "needs": [{"job": _job_id(name), "artifacts": True} for name in spec.expanded],
        "variables": {"IMAGEBUILD_SPEC": _literal(spec_path), "IMAGEBUILD_WORK": _literal(matrix.work_dir)},
        **setup, "script": ["failed=0", *prune, f"{SUMMARY} || failed=1", 'test "$failed" -eq 0'],
    }
    return out


class _Dumper(yaml.SafeDumper):
    """The safe dumper, writing a repeated step out again instead of as an anchor and alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def workflow(spec: Spec, spec_path: str, fmt: str) -> str:
    """The workflow of format *fmt* (FORMATS) as YAML text."""
    data = github_actions(spec, spec_path) if fmt == "github-actions" else gitlab_ci(spec, spec_path)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)


def summary(spec: Spec, work: Path) -> tuple[str, bool]:
    """(a table of every variant's last run under *work*/<variant>/last-run.json, whether all succeeded)."""
    records, ok = [], True
    for name in spec.expanded:
        try:
            run = json.loads((work / name / "last-run.json").read_text())
        except (OSError, ValueError):
            run = {"result": "no record", "exit_code": None}
        good = run.get("exit_code") in (0, 3)
        ok = ok and good
        published: dict[str, Any] = next((e for e in run.get("steps", ()) if e.get("step") == "publish"), {})
        records.append({"variant": name, "result": str(run.get("result")), "exit": str(run.get("exit_code")),
                        "duration_s": str(run.get("duration_s", "")), "amis": json.dumps(published.get("amis", {}))
                        if published.get("amis") else "-"})
    return table(records), ok
