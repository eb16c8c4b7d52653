"""The `imagebuild` command: atomic renders, refusals, stdout, help, and lazy imports."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuild import cli, render
from imagebuild.render import File
from tests.support import run_cli, run_main, snapshot, spec_of, without_eol, write_spec

_RANDOM = random.Random(0)
#: Valid in every key, but 48 KB of random hex: the user-data cannot get under 16 KB even gzipped.
TOO_BIG = {"config": {"extra_plugins": ["io.containerd.imagebuild.v1.padding"],
                      "overrides": {"plugins": {"io.containerd.imagebuild.v1.padding": {
                          f"k{i}": _RANDOM.randbytes(64).hex() for i in range(384)}}}}}


@pytest.fixture
def earlier(tmp_path):
    """An earlier render in tmp_path/parent/render (alone in its parent), and its snapshot."""
    out = tmp_path / "parent" / "render"
    out.parent.mkdir()
    assert run_main(["render", "-o", str(out)])[0] == 0
    return out, snapshot(out)


def _unchanged(earlier) -> None:
    out, before = earlier
    assert snapshot(out) == before
    assert [p.name for p in out.parent.iterdir()] == ["render"], "a temporary directory was left behind"


def test_render_that_fails_after_validation_leaves_the_earlier_render(tmp_path, earlier):
    """A spec valid in every key whose user-data cannot fit EC2's limit: render fails as a whole."""
    from imagebuild.spec import load

    spec_path = write_spec(tmp_path, TOO_BIG)
    load(spec_path)  # valid
    proc = run_cli("render", str(spec_path), "-o", str(earlier[0]))
    assert proc.returncode == 1 and b"16384-byte limit" in proc.stderr, proc.stderr
    _unchanged(earlier)


def test_renderer_exception_leaves_the_earlier_render(tmp_path, earlier, monkeypatch):
    def broken(spec):
        raise RuntimeError("renderer bug")

    monkeypatch.setattr(render, "packer_template", broken)
    with pytest.raises(RuntimeError, match="renderer bug"):
        cli.main(["render", str(write_spec(tmp_path, {"config": {"oom_score": -500}})), "-o", str(earlier[0])])
    _unchanged(earlier)


def test_failure_in_the_middle_of_writing_leaves_the_earlier_render(tmp_path, earlier, monkeypatch):
    real = render.render_all

    def half_writable(spec, **options):
        files = real(spec, **options)
        files["zz/conflict"] = File(b"a file here ...")
        files["zz/conflict/below"] = File(b"... cannot also be a directory")
        return files

    monkeypatch.setattr(render, "render_all", half_writable)
    code, stdout, err = run_main(["render", "-o", str(earlier[0])])
    err = without_eol(err)
    assert code == 1 and stdout == ""
    # One line naming where the file was going (not its temporary name), and no traceback.
    assert err.startswith(f"imagebuild: error: cannot write the render to {earlier[0]}: File exists "
                          f"(writing {earlier[0]}/zz/conflict)"), err
    assert err.rstrip().endswith("the earlier render there is unchanged") and "Traceback" not in err
    _unchanged(earlier)


def test_failure_at_the_swap_puts_the_earlier_render_back(tmp_path, earlier, monkeypatch):
    """Regression: if renaming the new tree into place failed, the earlier render stayed renamed
    away (<out>.old) and <out> was gone."""
    out = earlier[0]
    real_rename = Path.rename

    def rename(self, target):
        if Path(target) == out and self.name.startswith(f".{out.name}.") and not self.name.endswith(".old"):
            raise OSError("injected: rename of the new tree failed")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    code, _, err = run_main(["render", str(write_spec(tmp_path, {"config": {"oom_score": -500}})), "-o", str(out)])
    assert code == 1 and "injected: rename of the new tree failed" in err and "Traceback" not in err
    _unchanged(earlier)


def test_rerender_replaces_the_whole_tree(tmp_path, earlier):
    out = earlier[0]
    (out / "stale-file").write_text("left by hand")
    code, stdout, err = run_main(["render", str(write_spec(tmp_path, {"name": "other"})), "-o", str(out)])
    assert code == 0, err
    assert stdout.strip() == str(out)
    assert not (out / "stale-file").exists()
    assert json.loads((out / "spec.json").read_text())["name"] == "other"
    assert [p.name for p in out.parent.iterdir()] == ["render"]


def test_refuses_a_directory_that_is_not_a_render(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("do not delete")
    before = snapshot(target)
    code, _, err = run_main(["render", "-o", str(target)])
    assert code == 1
    assert f"imagebuild: error: {target} exists and is not an imagebuild render directory" in err
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert run_main(["render", "-o", str(a_file)])[0] == 1 and a_file.read_text() == "x"


def test_renders_into_an_empty_directory(tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    assert run_main(["render", "-o", str(target)])[0] == 0
    assert (target / render.MARKER).is_file() and (target / "install.sh").is_file()
    assert (target / "install.sh").stat().st_mode & 0o777 == 0o755


def test_user_data_goes_to_stdout_or_a_file(tmp_path):
    spec_path = write_spec(tmp_path, {"config": {"oom_score": -500}})
    proc = run_cli("user-data", str(spec_path))
    assert proc.returncode == 0, proc.stderr
    expected = render.user_data(spec_of({"config": {"oom_score": -500}}))
    assert proc.stdout == expected
    assert without_eol(proc.stderr).decode().count("warning") == 1  # oom_score_adjust differs: said once, on stderr
    target = tmp_path / "ud"
    assert run_cli("user-data", str(spec_path), "-o", str(target)).returncode == 0
    assert target.read_bytes() == expected


def test_help_for_every_command():
    code, out, _ = run_main(["--help"])
    assert code == 0
    commands = ["validate", "render", "user-data", "packer", "schema", "init", "base-image", "bake", "verify",
                "publish", "prune", "pipeline", "doctor", "completion"]
    for name in commands:
        assert name in out
        sub_code, sub_out, _ = run_main([name, "--help"])
        assert sub_code == 0 and sub_out.startswith("usage: imagebuild " + name)
    proc = run_cli("--help")
    assert proc.returncode == 0 and b"usage: imagebuild" in proc.stdout
    code, out, _ = run_main(["--version"])
    assert code == 0 and out.startswith("imagebuild ")


def test_bad_arguments_exit_2(tmp_path):
    code, _, err = run_main(["render"])
    assert code == 2 and "-o/--output" in err
    code, _, err = run_main(["frobnicate"])
    assert code == 2 and "invalid choice" in err


def test_render_and_friends_do_not_import_boto3(tmp_path):
    script = f"""
import sys
from imagebuild import cli
try:
    cli.main(["--help"])
except SystemExit:
    pass
codes = [cli.main(["render", "-o", {str(tmp_path / 'r')!r}]),
         cli.main(["user-data", "-o", {str(tmp_path / 'ud')!r}]),
         cli.main(["packer", "-o", {str(tmp_path / 'p')!r}]),
         cli.main(["schema"]), cli.main(["init", "-o", {str(tmp_path / 'spec.yaml')!r}])]
print(codes, "boto3" in sys.modules, "botocore" in sys.modules, file=sys.stderr)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "[0, 0, 0, 0, 0] False False"
