"""The variant matrix: `variants` expanded into whole specs, each rendered as it says; the CI workflows
`imagebuild matrix --format` emits, linted by the engines' own tools (actionlint built from the Go module
proxy; GitLab's published JSON schema, as check-jsonschema vendors it); the summary job's verdict.
"""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from devtools.actionlint import ACTIONLINT_VERSION, actionlint
from devtools.actionlint import lint as actionlint_lint
from devtools.ci_schemas import problems as schema_problems
from imagebuild.spec import load
from tests.support import run_main, write_spec

MATRIX = {
    "name": "fleet",
    "variants": {
        "d12-amd64": {},
        "d13-arm64": {"image": {"os": "debian-13", "architecture": "arm64"}, "containerd": {"version": "1.7.24"}},
        "d12-arm64-plain": {"image": {"architecture": "arm64"}, "system": {"profile": "none"}},
        "d13-2x": {"image": {"os": "debian-13"}, "containerd": {"version": "2.1.4"}},
    },
    "matrix": {"gitlab_tags": {"amd64": ["docker"]}, "setup": ["python3 -m pip install --user imagebuild"]},
}
#: What each variant says: (os, architecture, containerd, profile).
SAYS = {"d12-amd64": ("debian-12", "amd64", "1.6.20", "kubernetes-worker"),
        "d13-arm64": ("debian-13", "arm64", "1.7.24", "kubernetes-worker"),
        "d12-arm64-plain": ("debian-12", "arm64", "1.6.20", "none"),
        "d13-2x": ("debian-13", "amd64", "2.1.4", "kubernetes-worker")}


@pytest.fixture()
def spec_path(tmp_path) -> Path:
    return write_spec(tmp_path, MATRIX, "fleet.yaml")


def test_matrix_lists_every_variant(spec_path):
    code, out, err = run_main(["matrix", str(spec_path)])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["VARIANT", "FAMILY", "OS", "ARCHITECTURE", "CONTAINERD", "PROFILE"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows == {name: [f"fleet-{name}", *says] for name, says in SAYS.items()}


def test_every_variant_is_rendered_as_it_says(spec_path, tmp_path):
    """`imagebuild matrix --write` expands; every variant renders (`render --variant` and its written spec
    alike, byte for byte) with its own os, architecture, containerd, profile and family."""
    code, out, err = run_main(["matrix", str(spec_path), "--write", str(tmp_path / "specs")])
    assert code == 0, err
    assert sorted(Path(p).name for p in out.split()) == sorted(f"{n}.yaml" for n in SAYS)
    base = load(spec_path)
    families = set()
    for name, (os_name, arch, version, profile) in SAYS.items():
        written = tmp_path / "specs" / f"{name}.yaml"
        assert load(written) == base.variant(name)
        outs = []
        for argv in (["render", str(spec_path), "--variant", name], ["render", str(written)]):
            out_dir = tmp_path / f"{name}-{len(outs)}"
            code, _, err = run_main([*argv, "-o", str(out_dir)])
            assert code == 0, err
            outs.append(out_dir)
        files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*") if p.is_file())
        for rel in files:
            assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel
        render = outs[0]
        effective = json.loads((render / "spec.json").read_text())
        assert (effective["image"]["os"], effective["image"]["architecture"], effective["containerd"]["version"],
                effective["system"]["profile"]) == (os_name, arch, version, profile)
        assert effective["name"] == f"fleet-{name}" and "variants" not in effective
        families.add(effective["name"])
        assert json.loads((render / "expected.json").read_text())["containerd_version"] == version
        install = (render / "install.sh").read_text()
        assert f"CONTAINERD_VERSION={version}\n" in install
        assert f"containerd-{version}-linux-{arch}.tar.gz" in install
        hcl = (render / "packer" / "imagebuild.pkr.hcl").read_text()
        assert f'name                  = "{os_name}-{arch}-*"' in hcl
        assert f'vm_name          = "fleet-{name}.qcow2"' in hcl
        assert ("qemu-system-aarch64" in hcl) == (arch == "arm64")
        sysctls = (render / "payload/etc/sysctl.d/99-containerd.conf").read_text()
        assert ("kernel.panic = 10" in sysctls) == (profile == "kubernetes-worker"), sysctls
        config = tomllib.loads((render / "payload/etc/containerd/config.toml").read_text())
        assert config["version"] == (3 if version.startswith("2.") else 2)
    assert len(families) == len(SAYS)  # every variant publishes its own family, its own SSM parameter
    assert len({base.variant(n).image.aws.ssm_parameter or f"/imagebuild/{base.variant(n).name}/latest"
                for n in SAYS}) == len(SAYS)


def test_an_unknown_variant_is_refused_and_nothing_written(spec_path, tmp_path):
    code, out, err = run_main(["render", str(spec_path), "--variant", "d14", "-o", str(tmp_path / "out")])
    assert code == 2 and out == ""
    assert err == (f"imagebuild: {spec_path}: 1 problem(s)\n  --variant: got 'd14', expected a variant of the spec "
                   f"({', '.join(sorted(SAYS))})\n")
    assert not (tmp_path / "out").exists()
    code, _, err = run_main(["matrix", "--format", "github-actions"])
    assert code == 2 and "variants: the spec has no variants" in err
    code, out, err = run_main(["matrix", str(spec_path), "--write", str(tmp_path / "missing" / "specs")])
    assert code == 2 and out == "" and f"--write {tmp_path}/missing/specs: the directory {tmp_path}/missing " \
        "does not exist" in err, err
    assert not (tmp_path / "missing").exists()


def _emit(spec_path: Path, fmt: str, spec_arg: str | None = None) -> str:
    code, out, err = run_main(["matrix", spec_arg or str(spec_path), "--format", fmt])
    assert code == 0, err
    return out


def _lint(tmp_path: Path, text: str) -> tuple[int, str]:
    workflows = tmp_path / "repo" / ".github" / "workflows"
    workflows.mkdir(parents=True, exist_ok=True)
    (workflows / "imagebuild.yml").write_text(text)
    return actionlint_lint(workflows / "imagebuild.yml")


@pytest.mark.builds
def test_actionlint_is_the_pinned_release_built_from_the_module_proxy():
    out = actionlint().parent / ".built.json"
    assert json.loads(out.read_text())["version"] == ACTIONLINT_VERSION
    from imagebuild.run import run
    assert run([str(actionlint()), "-version"]).stdout.splitlines()[0] == f"v{ACTIONLINT_VERSION}"


@pytest.mark.builds
def test_the_github_workflow_passes_actionlint_and_runs_each_variant_on_its_runner(spec_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = _emit(spec_path, "github-actions", "fleet.yaml")
    code, out = _lint(tmp_path, text)
    assert code == 0, out
    assert schema_problems("github-workflows", yaml.safe_load(text)) == []
    workflow = yaml.safe_load(text)
    jobs = workflow["jobs"]
    assert list(jobs) == [f"variant-{n}" for n in SAYS] + ["summary"]
    for name, (_, arch, _, _) in SAYS.items():
        job = jobs[f"variant-{name}"]
        assert job["runs-on"] == {"amd64": "ubuntu-24.04", "arm64": "ubuntu-24.04-arm"}[arch]
        assert job["concurrency"] == {"group": f"imagebuild-fleet-{name}", "cancel-in-progress": False}
        assert job["env"] == {"IMAGEBUILD_SPEC": "fleet.yaml", "IMAGEBUILD_VARIANT": name,
                              "IMAGEBUILD_WORK": f"imagebuild-work/{name}"}
        runs = [s["run"] for s in job["steps"] if "run" in s]
        assert runs == ["python3 -m pip install --user imagebuild",
                        'imagebuild pipeline "$IMAGEBUILD_SPEC" --variant "$IMAGEBUILD_VARIANT" --work '
                        '"$IMAGEBUILD_WORK" || test "$?" -eq 3']
    summary = jobs["summary"]
    assert summary["needs"] == [f"variant-{n}" for n in SAYS] and summary["if"] == "always()"
    assert [s["env"]["IMAGEBUILD_VARIANT"] for s in summary["steps"] if s.get("name", "").startswith("prune")] == \
        list(SAYS)
    assert all(s["if"] == "always()" for s in summary["steps"]  # prune and summary, whatever failed
               if s.get("name", "").startswith("prune") or s.get("name") == "summary")
    assert "&" not in text and "*id" not in text  # no YAML anchors: each step written out


@pytest.mark.builds
def test_a_broken_github_workflow_fails_actionlint(spec_path, tmp_path):
    """The negative: actionlint does find what is wrong (a job needing one that does not exist, a bad runner
    expression), so the clean result above means something."""
    workflow = yaml.safe_load(_emit(spec_path, "github-actions"))
    workflow["jobs"]["summary"]["needs"].append("variant-nowhere")
    workflow["jobs"]["variant-d12-amd64"]["steps"][1]["run"] = "echo ${{ matrix.nothing }}"
    code, out = _lint(tmp_path, yaml.safe_dump(workflow, sort_keys=False))
    assert code == 1, out
    assert re.search(r'job "summary" needs job "variant-nowhere" which does not exist', out), out
    assert "property \"nothing\" is not defined" in out, out


def test_hostile_spec_paths_stay_data(tmp_path, monkeypatch):
    """A spec path with $, quotes, backticks and a workflow expression reaches the shell only as an
    environment variable: actionlint finds no injection, and no run script contains the path."""
    hostile = "specs/$(touch pwned) `id` \"q\" ${{ github.token }}.yaml"
    path = tmp_path / hostile
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"apiVersion": "imagebuild/v1", **MATRIX}))
    monkeypatch.chdir(tmp_path)
    text = _emit(path, "github-actions", hostile)
    workflow = yaml.safe_load(text)
    assert workflow["jobs"]["variant-d13-arm64"]["env"]["IMAGEBUILD_SPEC"] == hostile
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            assert "pwned" not in step.get("run", "")
    gitlab = yaml.safe_load(_emit(path, "gitlab-ci", hostile))
    assert gitlab["variant-d12-amd64"]["variables"]["IMAGEBUILD_SPEC"] == {"value": hostile, "expand": False}
    assert not any("pwned" in line for job in gitlab.values() if isinstance(job, dict) for line in job["script"])
    assert schema_problems("gitlab-ci", gitlab) == []


def gitlab_structure(pipeline: dict) -> list[str]:
    """What GitLab refuses beyond the schema: a job's stage not in `stages`, a need on a job that does not
    exist or runs in a later stage."""
    stages = pipeline.get("stages", [])
    jobs = {k: v for k, v in pipeline.items() if isinstance(v, dict) and ("script" in v or "stage" in v)}
    found = [f"{name}: stage {job.get('stage')!r} is not in stages" for name, job in jobs.items()
             if job.get("stage") not in stages]
    for name, job in jobs.items():
        for need in job.get("needs", []):
            other = need["job"] if isinstance(need, dict) else need
            if other not in jobs:
                found.append(f"{name}: needs {other!r}, which does not exist")
            elif {jobs[other]["stage"], job["stage"]} <= set(stages) and \
                    stages.index(jobs[other]["stage"]) > stages.index(job["stage"]):
                found.append(f"{name}: needs {other!r}, a job of a later stage")
    return found


def test_the_gitlab_pipeline_matches_gitlabs_schema_and_tags_each_architecture(spec_path):
    pipeline = yaml.safe_load(_emit(spec_path, "gitlab-ci"))
    assert schema_problems("gitlab-ci", pipeline) == []
    assert gitlab_structure(pipeline) == []
    assert pipeline["stages"] == ["build", "summary"]
    for name, (_, arch, _, _) in SAYS.items():
        job = pipeline[f"variant-{name}"]
        assert job["tags"] == {"amd64": ["docker"], "arm64": ["saas-linux-small-arm64"]}[arch]
        assert job["variables"]["IMAGEBUILD_VARIANT"] == {"value": name, "expand": False}
        assert job["resource_group"] == f"imagebuild-fleet-{name}"
        assert job["artifacts"] == {"when": "always", "paths": [f"imagebuild-work/{name}/last-run.json"]}
        assert job["before_script"] == ["python3 -m pip install --user imagebuild"]
    summary = pipeline["summary"]
    assert summary["when"] == "always" and summary["stage"] == "summary"
    assert [n["job"] for n in summary["needs"]] == [f"variant-{n}" for n in SAYS]
    assert summary["script"] == [
        "failed=0",
        *[f'IMAGEBUILD_VARIANT={n} imagebuild prune "$IMAGEBUILD_SPEC" --variant "$IMAGEBUILD_VARIANT" --apply '
          "|| failed=1" for n in SAYS],
        'imagebuild matrix "$IMAGEBUILD_SPEC" --summary "$IMAGEBUILD_WORK" || failed=1', 'test "$failed" -eq 0']


def test_a_broken_gitlab_pipeline_is_refused(spec_path):
    pipeline = yaml.safe_load(_emit(spec_path, "gitlab-ci"))
    pipeline["variant-d12-amd64"]["when"] = "sometimes"
    pipeline["variant-d13-2x"]["script"] = 5
    found = schema_problems("gitlab-ci", pipeline)
    assert "variant-d12-amd64/when: 'sometimes' is not one of" in "\n".join(found), found
    assert any(line.startswith("variant-d13-2x/script: ") for line in found), found
    pipeline = yaml.safe_load(_emit(spec_path, "gitlab-ci"))
    pipeline["summary"]["needs"].append({"job": "variant-gone", "artifacts": True})
    pipeline["variant-d12-amd64"]["stage"] = "test"
    assert gitlab_structure(pipeline) == ["variant-d12-amd64: stage 'test' is not in stages",
                                          "summary: needs 'variant-gone', which does not exist"]
    pipeline = yaml.safe_load(_emit(spec_path, "gitlab-ci"))
    pipeline["variant-d13-2x"]["needs"] = ["summary"]
    assert gitlab_structure(pipeline) == ["variant-d13-2x: needs 'summary', a job of a later stage"]


def _record(work: Path, name: str, result: str, code: int, amis: dict | None = None) -> None:
    steps = [{"step": "publish", "status": "ok", "amis": amis}] if amis else []
    (work / name).mkdir(parents=True)
    (work / name / "last-run.json").write_text(json.dumps({"result": result, "exit_code": code,
                                                            "duration_s": 12.5, "steps": steps}))


def test_the_summary_fails_when_a_variant_failed_or_left_no_record(spec_path, tmp_path):
    work = tmp_path / "work"
    _record(work, "d12-amd64", "published", 0, {"us-east-1": "ami-0123"})
    _record(work, "d13-arm64", "unchanged", 3)
    _record(work, "d12-arm64-plain", "published", 0, {"us-east-1": "ami-0456"})
    _record(work, "d13-2x", "unchanged", 3)
    code, out, err = run_main(["matrix", str(spec_path), "--summary", str(work)])
    assert code == 0, err
    assert out.splitlines()[1].split() == ["d12-amd64", "published", "0", "12.5", '{"us-east-1":', '"ami-0123"}']
    (work / "d13-2x" / "last-run.json").write_text(json.dumps({"result": "failed", "exit_code": 1}))
    code, out, _ = run_main(["matrix", str(spec_path), "--summary", str(work)])
    assert code == 1 and "d13-2x           failed" in out
    (work / "d13-2x" / "last-run.json").unlink()
    code, out, _ = run_main(["matrix", str(spec_path), "--summary", str(work)])
    assert code == 1 and re.search(r"d13-2x\s+no record", out), out


def test_pipeline_runs_the_variant_it_is_given(spec_path, tmp_path):
    """`pipeline --variant` runs that variant's spec: its run manifest names the variant's family and spec
    hash (stopped at decide by a base image that does not exist, so nothing is baked)."""
    base = load(spec_path)
    for name in ("d13-arm64", "d12-amd64"):
        work = tmp_path / name
        code, _, err = run_main(["pipeline", str(spec_path), "--variant", name, "--work", str(work), "--no-publish",
                                 "--base", str(tmp_path / "no-such-base.qcow2")])
        assert code == 1 and "no-such-base.qcow2 does not exist" in err, err
        record = json.loads((work / "last-run.json").read_text())
        assert (record["family"], record["spec_hash"]) == (f"fleet-{name}", base.variant(name).spec_hash)
    assert base.variant("d13-arm64").spec_hash != base.variant("d12-amd64").spec_hash != base.spec_hash
    code, _, err = run_main(["pipeline", str(spec_path), "--variant", "nope", "--work", str(tmp_path / "w")])
    assert code == 2 and "--variant: got 'nope'" in err and not (tmp_path / "w").exists()
