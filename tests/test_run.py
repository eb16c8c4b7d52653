"""The process module (imagebuild.run) and the log (imagebuild.progress), with real processes:
a timeout or an interrupt stops the whole process group, a child that ignores SIGTERM gets SIGKILL,
failures say what failed, command lines are logged at debug level, heartbeats and bars."""
from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from imagebuild import progress
from imagebuild.errors import ImagebuildError
from imagebuild.run import kill_group, locked, run, spawn, spawned
from tests.support import ROOT, as_from_a_terminal

# A shell that starts a grandchild (sleep), writes its pid, and waits for it.
FAMILY = 'sleep 300 & echo $! > "$1"; wait'
# The same, ignoring SIGTERM (the grandchild too: it inherits the ignored disposition).
STUBBORN = 'trap "" TERM; sleep 300 & echo $! > "$1"; echo ready; wait; wait'


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def gone(pid: int, seconds: float = 5) -> bool:
    """*pid* is dead or dies within *seconds* (SIGKILL is delivered asynchronously)."""
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_for_pid(path: Path, seconds: float = 10) -> int:
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, "the child never started its grandchild"
        time.sleep(0.02)
    return int(path.read_text())


def test_a_timeout_stops_the_whole_group(tmp_path):
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(ImagebuildError, match=r"^family timed out after 1 s and was stopped$"):
        run(["sh", "-c", FAMILY, "sh", str(pidfile)], what="family", timeout=1)
    assert time.monotonic() - started < 10
    grandchild = int(pidfile.read_text())
    assert gone(grandchild), "the child of the child outlived the timeout"


def test_the_grandchild_check_can_fail(tmp_path):
    """Negative: a shell killed alone (not its group) leaves its grandchild running, and alive() sees it."""
    pidfile = tmp_path / "pid"
    proc = subprocess.Popen(["sh", "-c", FAMILY, "sh", str(pidfile)], start_new_session=True)
    grandchild = wait_for_pid(pidfile)
    proc.kill()
    proc.wait()
    try:
        assert not gone(grandchild, seconds=0.5)
    finally:
        os.kill(grandchild, signal.SIGKILL)


def test_a_child_that_ignores_sigterm_gets_sigkill(tmp_path):
    pidfile = tmp_path / "pid"
    proc = spawn(["sh", "-c", STUBBORN, "sh", str(pidfile)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    grandchild = wait_for_pid(pidfile)
    # SIGTERM alone does nothing to it (the negative of the check below) ...
    os.killpg(proc.pid, signal.SIGTERM)
    time.sleep(0.3)
    assert proc.poll() is None and alive(grandchild)
    # ... kill_group waits out the grace period, then kills the group.
    started = time.monotonic()
    kill_group(proc, grace=0.5)
    assert 0.5 <= time.monotonic() - started < 10
    assert proc.returncode == -signal.SIGKILL
    assert gone(grandchild)


def test_spawned_stops_its_group_when_the_block_fails(tmp_path):
    pidfile = tmp_path / "pid"
    with pytest.raises(RuntimeError), spawned(["sh", "-c", FAMILY, "sh", str(pidfile)]) as proc:
        grandchild = wait_for_pid(pidfile)
        raise RuntimeError("the caller failed")
    assert proc.returncode is not None and gone(grandchild)


INTERRUPTED = textwrap.dedent("""
    import sys
    from imagebuild.run import run
    run(["sh", "-c", sys.argv[1], "sh", sys.argv[2]])
""")


def test_an_interrupt_stops_the_group_before_it_unwinds(tmp_path):
    """Ctrl-C (SIGINT -> KeyboardInterrupt) in a process blocked in run(): the group is stopped."""
    pidfile = tmp_path / "pid"
    caller = subprocess.Popen([sys.executable, "-c", INTERRUPTED, FAMILY, str(pidfile)], cwd=ROOT,
                              stderr=subprocess.PIPE, preexec_fn=as_from_a_terminal)
    grandchild = wait_for_pid(pidfile)
    caller.send_signal(signal.SIGINT)
    _, err = caller.communicate(timeout=30)
    assert b"KeyboardInterrupt" in err
    assert gone(grandchild)


def test_a_failure_names_what_failed_its_status_and_its_output():
    with pytest.raises(ImagebuildError) as err:
        run(["sh", "-c", "echo one; echo two >&2; exit 3"], what="the step")
    assert str(err.value) == "the step failed (exit 3):\ntwo"
    with pytest.raises(ImagebuildError, match=r"^sh failed \(killed by SIGKILL\)$"):
        run(["sh", "-c", "kill -9 $$"])
    with pytest.raises(ImagebuildError, match="no-such-program-here not found"):
        run(["no-such-program-here"])
    done = run(["sh", "-c", "cat; exit 4"], input="in", check=False)
    assert (done.returncode, done.stdout) == (4, "in")


def test_command_lines_are_logged_at_debug_level(caplog):
    with caplog.at_level(logging.DEBUG, logger="imagebuild"):
        run(["true", "an argument"])
    assert "+ true 'an argument'" in caplog.messages
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="imagebuild"):
        run(["true"])
    assert caplog.messages == []


def test_locked_says_when_it_waits(tmp_path, caplog):
    lock = tmp_path / "lock"
    holder = subprocess.Popen(["flock", str(lock), "sleep", "1"])
    try:
        deadline = time.monotonic() + 10
        while not lock.exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="imagebuild"), locked(lock, waiting="waiting for the lock"):
            waited = time.monotonic() - started
        assert waited > 0.3 and caplog.messages == ["waiting for the lock"]
    finally:
        holder.wait()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="imagebuild"), locked(lock, waiting="waiting for the lock"):
        pass
    assert caplog.messages == []     # free: nothing said


# ------------------------------------------------------------------------------------ the log


def _stderr_of(body) -> str:
    err = io.StringIO()
    saved = sys.stderr
    sys.stderr = err
    try:
        body()
    finally:
        sys.stderr = saved
    return err.getvalue()


def test_a_step_is_an_info_line_with_the_elapsed_time():
    said = _stderr_of(lambda: progress.step("hello"))
    assert said.endswith("s] hello\n") and said.startswith("[") and len(said.split("]")[0]) == 9
    level = progress.configure(quiet=True)
    try:
        assert _stderr_of(lambda: progress.step("hello")) == ""
        assert _stderr_of(lambda: progress.warning("careful")).endswith("s] warning: careful\n")
    finally:
        progress.restore(level)


def test_a_heartbeat_beats_only_in_silence():
    def silent():
        with progress.heartbeat("long thing", interval=0.3):
            time.sleep(1.1)

    beats = [line for line in _stderr_of(silent).splitlines() if "long thing: still running (" in line]
    assert 2 <= len(beats) <= 4, beats

    def chatty():
        with progress.heartbeat("long thing", interval=0.5):
            for _ in range(10):
                progress.step("news")
                time.sleep(0.1)

    assert "still running" not in _stderr_of(chatty)


def test_a_bar_draws_in_place_on_a_terminal_and_by_tenths_elsewhere():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    lines = io.StringIO()
    bar = progress.bar(200, "convert", unit="MiB", stream=lines)
    for done in range(0, 201, 5):
        bar.update(done)
    out = lines.getvalue().splitlines()
    assert len(out) == 11 and out[0] == "  convert   0% (0/200 MiB)" and out[-1] == "  convert 100% (200/200 MiB)"
    tty = Tty()
    bar = progress.bar(0, "upload", stream=tty)
    bar.update(5, total=10)
    bar.update(10)
    assert tty.getvalue() == ("\r[###############---------------] upload  50% (5/10)"
                              "\r[##############################] upload 100% (10/10)\n")


def test_quiet_hides_the_bar():
    lines = io.StringIO()
    level = progress.configure(quiet=True)
    try:
        progress.bar(10, "convert", stream=lines).update(10)
    finally:
        progress.restore(level)
    assert lines.getvalue() == ""


def test_the_heartbeat_thread_is_gone_after_the_block():
    with progress.heartbeat("x", interval=0.2):
        pass
    assert not [t for t in threading.enumerate() if t.name == "heartbeat x"]


def test_locked_with_busy_refuses_at_once_while_the_lock_is_held(tmp_path):
    """The pipeline's one-per-work-directory rule: a second holder gets the error, not a wait."""
    path = tmp_path / "work" / ".pipeline.lock"
    with locked(path):
        with pytest.raises(ImagebuildError, match="^another pipeline is running$"):
            with locked(path, busy="another pipeline is running"):
                pass
    with locked(path, busy="another pipeline is running"):   # released: taken at once
        pass
