"""Running other programs: the one place imagebuild starts, logs, times out and stops them.

Every program runs in a process group of its own (a new session), so that stopping it stops
everything it started (apt and dpkg under mmdebstrap, QEMU under Packer). Stopping is always
the same: a first signal to the whole group (SIGTERM, or SIGINT for programs that clean up on
Ctrl-C like Packer), *grace* seconds to finish, then SIGKILL to the group, then reaping.

- :func:`run` runs a command to its end (check, capture, input, env, cwd, timeout); an
  exception while it runs (Ctrl-C, SIGTERM through the CLI) stops its group before it unwinds.
- :func:`spawned` starts a long-lived program (QEMU, Packer) and stops its group when the
  ``with`` block ends, however it ends. ``die_with_parent`` adds a parent-death SIGKILL, so
  even a SIGKILLed imagebuild leaves no QEMU behind.
- :func:`locked` is an exclusive file lock that says when it has to wait.

Each command line is logged at debug level (`imagebuild --verbose`).
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from imagebuild.errors import ImagebuildError
from imagebuild.progress import debug, heartbeat, step

PIPE = subprocess.PIPE
STDOUT = subprocess.STDOUT
DEVNULL = subprocess.DEVNULL
Command = Sequence["str | os.PathLike[str]"]

_PR_SET_PDEATHSIG = 1
try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):   # pragma: no cover - not Linux
    _prctl = None


def _die_with_parent() -> None:   # in the child, between fork and exec
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(cmd: Command, *, stdin: Any = DEVNULL, stdout: Any = None, stderr: Any = None,
          env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
          text: bool = False, die_with_parent: bool = False) -> subprocess.Popen:
    """Start *cmd* in a new session (its own process group) and return its Popen.

    *die_with_parent*: the kernel SIGKILLs it when this thread's process dies (PR_SET_PDEATHSIG,
    through `setpriv` where installed, so no Python runs between fork and exec). A missing
    program raises ImagebuildError.
    """
    argv = [os.fspath(c) for c in cmd]
    debug("+ " + shlex.join(argv))
    preexec = None
    if die_with_parent:
        setpriv = shutil.which("setpriv")
        if setpriv:
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        else:
            preexec = _die_with_parent
    try:
        return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, text=text,
                                env=dict(env) if env is not None else None,
                                cwd=os.fspath(cwd) if cwd is not None else None,
                                start_new_session=True, preexec_fn=preexec)
    except FileNotFoundError:
        raise ImagebuildError(f"{os.fspath(cmd[0])} not found; is it installed?") from None
    except OSError as exc:
        raise ImagebuildError(f"cannot start {os.fspath(cmd[0])}: {exc.strerror or exc}") from None


def stop(proc: subprocess.Popen, *, grace: float = 10.0) -> None:
    """Stop one process that is not a group of its own (started by a plain Popen): TERM, up to
    *grace* seconds, then KILL. Programs started here are stopped group-wide by :func:`kill_group`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill_group(proc: subprocess.Popen, *, sig: int = signal.SIGTERM, grace: float = 3.0) -> None:
    """Stop *proc* and its process group: *sig* to the group if *proc* still runs, up to *grace*
    seconds for it to exit, then SIGKILL to the group (stragglers too) and reap. Idempotent."""
    if proc.poll() is None:
        _signal_group(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@contextlib.contextmanager
def spawned(cmd: Command, *, stop_signal: int = signal.SIGTERM, grace: float = 3.0,
            **options: Any) -> Iterator[subprocess.Popen]:
    """:func:`spawn` *cmd*; when the block ends (normally, by an exception, by an interrupt) its
    group is stopped with :func:`kill_group`."""
    proc = spawn(cmd, **options)
    try:
        yield proc
    finally:
        kill_group(proc, sig=stop_signal, grace=grace)


def run(cmd: Command, *, what: str | None = None, check: bool = True, input: str | bytes | None = None,
        stdout: Any = PIPE, stderr: Any = PIPE, env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None, timeout: float | None = None, text: bool = True,
        stop_signal: int = signal.SIGTERM, grace: float = 3.0,
        long_step: bool = False) -> subprocess.CompletedProcess:
    """Run *cmd* to its end in its own process group and return the CompletedProcess.

    Output is captured (text) unless *stdout*/*stderr* say otherwise (``STDOUT`` merges them).
    *check*: a non-zero exit raises ImagebuildError naming *what* (default: the program), the
    exit status and the last lines of its output. *timeout*: the group is stopped and
    ImagebuildError raised. Any exception while it runs (KeyboardInterrupt included) stops the
    group (*stop_signal*, *grace* seconds, SIGKILL) before it propagates.
    *long_step*: log a heartbeat line whenever the log has been silent for a while.
    """
    what = what or os.path.basename(os.fspath(cmd[0]))
    stdin = PIPE if input is not None else DEVNULL
    beat = heartbeat(what) if long_step else contextlib.nullcontext()
    with beat, spawned(cmd, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd, text=text,
                       stop_signal=stop_signal, grace=grace) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc, sig=stop_signal, grace=grace)
            raise ImagebuildError(f"{what} timed out after {timeout:g} s and was stopped") from None
    done = subprocess.CompletedProcess([os.fspath(c) for c in cmd], proc.returncode, out, err)
    if check and done.returncode != 0:
        raise ImagebuildError(f"{what} failed ({describe_status(done.returncode)})"
                              + (f":\n{output_tail(done)}" if output_tail(done) else ""))
    return done


def describe_status(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
    return f"exit {returncode}"


def output_tail(proc: subprocess.CompletedProcess, lines: int = 30) -> str:
    """The last *lines* lines of what *proc* said (stderr, else stdout)."""
    for stream in (proc.stderr, proc.stdout):
        if stream:
            text = stream.decode("utf-8", "replace") if isinstance(stream, bytes) else stream
            if text.strip():
                return "\n".join(text.strip().splitlines()[-lines:])
    return ""


@contextlib.contextmanager
def locked(path: str | os.PathLike, waiting: str | None = None, *, busy: str | None = None) -> Iterator[IO[str]]:
    """An exclusive flock on *path* (created, with its directory) for the body. If another process
    holds it: with *busy*, ImagebuildError(*busy*) at once; else *waiting* is logged once before blocking."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if busy:
                raise ImagebuildError(busy) from None
            if waiting:
                step(waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
