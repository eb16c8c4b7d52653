"""What a newcomer expects of the `imagebuild` command: `validate` that writes nothing, -v/-q after the
subcommand, no gzip sprayed on a terminal (and --raw text on request), -o into a missing directory refused
before anything runs. The real entry point runs where it matters (a real pseudo-terminal, a real cwd)."""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuild import render
from imagebuild.cli import commands
from imagebuild.cli.parser import parser
from tests.support import ROOT, run_cli, run_main, spec_of, without_eol, write_spec

GOOD = {"name": "workers", "containerd": {"version": "1.7.24"}, "image": {"os": "debian-13"}}
BAD = {"config": {"oom_score": "low"}, "image": {"packer_version": 1.6}}


def _isolated(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An empty working directory, and an environment whose home, cache and temporary directory are empty
    directories too: whatever a command writes anywhere it might shows up in one of them."""
    places = {name: tmp_path / name for name in ("cwd", "home", "tmp")}
    for place in places.values():
        place.mkdir()
    # PYTHONPATH: this checkout's imagebuild, whatever the working directory (an installed one may differ)
    return places["cwd"], {"HOME": str(places["home"]), "TMPDIR": str(places["tmp"]), "IMAGEBUILD_CACHE": "",
                           "XDG_CACHE_HOME": "", "PYTHONPATH": str(ROOT)}


def _all_empty(tmp_path: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for name in ("cwd", "home", "tmp") for p in (tmp_path / name).rglob("*"))


def test_validate_a_good_spec_prints_one_ok_line_and_writes_nothing(tmp_path):
    (tmp_path / "specs").mkdir()
    spec = write_spec(tmp_path / "specs", GOOD)
    cwd, env = _isolated(tmp_path)
    proc = run_cli("validate", str(spec), cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == f"{spec}: OK: workers, containerd 1.7.24 (tarball), debian-13/amd64\n"
    assert without_eol(proc.stderr) == b""   # 1.7's end of support is said, nothing else
    assert _all_empty(tmp_path) == []
    assert sorted(p.name for p in spec.parent.iterdir()) == ["spec.yaml"]


def test_validate_a_bad_spec_prints_what_render_prints_and_writes_nothing(tmp_path):
    (tmp_path / "specs").mkdir()
    spec = write_spec(tmp_path / "specs", BAD)
    cwd, env = _isolated(tmp_path)
    proc = run_cli("validate", str(spec), cwd=cwd, env=env)
    assert proc.returncode == 2 and proc.stdout == b""
    rendered = run_cli("render", str(spec), "-o", "out", cwd=cwd, env=env)
    assert rendered.returncode == 2
    assert proc.stderr == rendered.stderr  # the same lines, whatever the command
    err = proc.stderr.decode()
    assert err.startswith(f"imagebuild: {spec}: 2 problem(s)\n") and "  config.oom_score: got 'low'" in err
    assert _all_empty(tmp_path) == []


def test_the_emptiness_check_sees_a_write(tmp_path):
    cwd, env = _isolated(tmp_path)
    assert run_cli("init", "-o", "spec.yaml", cwd=cwd, env=env).returncode == 0
    assert _all_empty(tmp_path) == ["cwd/spec.yaml"]


def test_validate_puts_warnings_on_stderr_and_keeps_stdout_one_line(tmp_path):
    spec = write_spec(tmp_path, {"config": {"oom_score": -500}})
    proc = run_cli("validate", str(spec))
    assert proc.returncode == 0
    assert proc.stdout.decode().count("\n") == 1 and ": OK: containerd-golden" in proc.stdout.decode()
    assert "imagebuild: warning: unit.oom_score_adjust (-999) differs from config.oom_score" in proc.stderr.decode()


def test_validate_needs_a_spec():
    code, _, err = run_main(["validate"])
    assert code == 2 and "the following arguments are required: SPEC" in err


# --- -v and -q on either side of the subcommand ---------------------------------------------------------

@pytest.mark.parametrize("argv", [["render", "-v", "spec.yaml", "-o", "x"], ["-v", "render", "spec.yaml", "-o", "x"],
                                  ["render", "spec.yaml", "-o", "x", "--verbose"]])
def test_verbose_before_or_after_the_subcommand(argv):
    args = parser().parse_args(argv)
    assert (args.verbose, args.quiet, args.spec, args.output) == (True, False, "spec.yaml", "x")


def test_quiet_after_the_subcommand_and_the_default():
    assert parser().parse_args(["doctor", "-q"]).quiet is True
    args = parser().parse_args(["doctor"])
    assert (args.quiet, args.verbose) == (False, False)


def test_verbose_after_the_subcommand_logs_every_command_line(tmp_path):
    """`packer` runs ssh-keygen for the build seed: its command line is logged at -v only, however placed."""
    before = run_cli("-v", "packer", "-o", str(tmp_path / "before"))
    after = run_cli("packer", "-v", "-o", str(tmp_path / "after"))
    plain = run_cli("packer", "-o", str(tmp_path / "plain"))
    assert before.returncode == after.returncode == plain.returncode == 0
    assert b"+ ssh-keygen -q -t ed25519" in before.stderr and b"+ ssh-keygen -q -t ed25519" in after.stderr
    assert b"ssh-keygen" not in plain.stderr


def test_quiet_and_verbose_together_is_a_usage_error():
    for argv in (["-q", "schema", "-v"], ["schema", "-q", "-v"]):
        code, out, err = run_main(argv)
        assert code == 2 and out == "" and "not allowed with argument -q/--quiet" in err


# --- user-data and a terminal ----------------------------------------------------------------------------

def _on_a_terminal(*args: str) -> tuple[int, bytes, bytes]:
    """`imagebuild ARGS` with stdout on a real pseudo-terminal: (exit code, what the terminal got, stderr)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "imagebuild", *args], stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    got = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        got += chunk
    os.close(master)
    err = proc.stderr.read() if proc.stderr else b""
    return proc.wait(timeout=60), got.replace(b"\r\n", b"\n"), err


def test_user_data_refuses_to_write_gzip_to_a_terminal():
    code, terminal, err = _on_a_terminal("user-data")
    assert code == 2
    assert terminal == b""
    assert without_eol(err).decode() == (
        "imagebuild: error: this user-data is gzipped (it is over EC2's 16 KB as text) and stdout is a terminal; "
        "redirect it (> user-data), write it with -o FILE, or give --raw for the uncompressed text\n")


def test_user_data_raw_writes_the_text_to_a_terminal():
    code, terminal, err = _on_a_terminal("user-data", "--raw")
    assert code == 0, err
    assert terminal == render.cloud_config(spec_of()).encode() and terminal.startswith(b"#cloud-config\n")


def test_user_data_through_a_pipe_is_unchanged_gzip_and_raw_on_request(tmp_path):
    piped = run_cli("user-data")
    assert piped.returncode == 0 and piped.stdout == render.user_data(spec_of())
    assert piped.stdout.startswith(commands.GZIP_MAGIC)
    raw = run_cli("user-data", "--raw", "--format", "mime")
    assert raw.stdout == render.user_data(spec_of(), "mime", compress=False) and b"text/cloud-config" in raw.stdout
    assert run_cli("user-data", "--raw", "-o", str(tmp_path / "ud")).returncode == 0
    assert (tmp_path / "ud").read_text().startswith("#cloud-config\n")


# --- -o into a missing directory ---------------------------------------------------------------------------

OUTPUTS = {"render": False, "packer": False, "bake": False, "user-data": True, "init": True, "matrix": True}


def test_every_command_with_an_output_is_checked():
    sub = next(a for a in parser()._actions if a.dest == "command")
    with_output = {name for name, p in sub.choices.items() if any("-o" in a.option_strings for a in p._actions)}
    assert with_output == set(OUTPUTS)


@pytest.mark.parametrize("command", sorted(OUTPUTS))
def test_an_output_under_a_missing_directory_is_refused(tmp_path, command):
    target = tmp_path / "missing" / "deeper" / "out"
    code, out, err = run_main([command, "-o", str(target)])
    assert code == 2 and out == ""
    what = "writes the file" if OUTPUTS[command] else "creates the output directory"
    assert err == (f"imagebuild: error: -o {target}: the directory {target.parent} does not exist (imagebuild "
                   f"{what}, not the directories above it); create it first (mkdir -p {target.parent}) or choose "
                   "another -o\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["render", "packer", "user-data", "init"])
def test_a_new_output_under_an_existing_directory_is_written(tmp_path, command):
    code, _, err = run_main([command, "-o", str(tmp_path / "new")])
    assert code == 0, err
    assert (tmp_path / "new").exists()


def test_missing_parent_checks_only_the_parent(tmp_path):
    assert commands.missing_parent(str(tmp_path / "new"), is_file=False) is None
    assert commands.missing_parent("-", is_file=True) is None and commands.missing_parent(None, is_file=True) is None
    assert commands.missing_parent("relative-in-cwd", is_file=False) is None
    assert str(tmp_path / "a") in commands.missing_parent(str(tmp_path / "a" / "b"), is_file=False)
