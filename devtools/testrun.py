"""`make test`: the suite as two pytest processes side by side, with the prebuild beside them.

Under TCG a QEMU boot keeps about one of the two cores busy, so the boots run in one pytest process and the fast
tests in another (SUITES), while a first run on a fresh machine builds what the suite needs into the cache
(devtools/prebuild.py: containerd of every family, runc, the CNI plugins, crictl and actionlint from the Go
module proxy, both base images; one process per lane, niced). tests/conftest.py orders each process: the boots
that need no Go build first; the fast tests that need none first, those marked `builds` last. Each piece is
built once, under its lock, by whichever process asks first.

Every line either process prints comes prefixed with its name ("[fast] ", "[boots] "); each ends with its own
40 slowest tests. The exit status is the fast tests' when it is not 0, else the boots'.
"""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from devtools.prebuild import LANES
from imagebuild.paths import cache_dir
from imagebuild.run import PIPE, STDOUT, describe_status, spawned

#: The two pytest processes: name -> marker expression. Together they are `make test`: neither arm64 (a CI
#: job of its own: make test-arm64) nor extra (make test-extra).
SUITES = {"fast": "not e2e and not arm64 and not extra", "boots": "e2e and not arm64 and not extra"}
PYTEST_OPTIONS = ("-v", "--timeout=3600", "--durations=40")


def commands(python: str = sys.executable, args: Sequence[str] = ()) -> dict[str, list[str]]:
    """The command line of each suite (SUITES), *args* (pytest's: test paths, options) appended."""
    return {name: [python, "-m", "pytest", "-m", marks, *PYTEST_OPTIONS, *args] for name, marks in SUITES.items()}


def _copy(stream: IO[str], prefix: str, out: IO[str], lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(prefix + line)
            out.flush()


def run(args: Sequence[str] = (), *, cwd: Path | None = None, prebuild: bool = True, out: IO[str] = sys.stdout) -> int:
    """Run both suites (commands) side by side in *cwd*, and with *prebuild* the prebuild's lanes beside them
    (logs: prebuild-<lane>.log in the imagebuild cache; stopped when the suites end, an unfinished piece is
    redone next time, never half-used). Returns the exit status (see the module's docstring)."""
    started = time.monotonic()
    lock = threading.Lock()
    with contextlib.ExitStack() as stack:
        if prebuild:
            for lane in LANES:  # the Go builds use the CPUs, the image builds mostly network and disk
                log = stack.enter_context(open(cache_dir() / f"prebuild-{lane}.log", "w"))
                stack.enter_context(spawned(["nice", "-n", "5", sys.executable, "-m", "devtools", "prebuild",
                                             "--lane", lane], stdout=log, stderr=log, die_with_parent=True,
                                            grace=30))
        procs: dict[str, subprocess.Popen] = {}
        copiers: list[threading.Thread] = []
        for name, cmd in commands(args=args).items():
            # Stopped by SIGINT, as Ctrl-C stops pytest: it unwinds, and the product stops its QEMU and Packer.
            proc = stack.enter_context(spawned(cmd, cwd=cwd, stdout=PIPE, stderr=STDOUT, text=True,
                                               die_with_parent=True, stop_signal=signal.SIGINT, grace=60))
            copier = threading.Thread(target=_copy, args=(proc.stdout, f"[{name}] ", out, lock), daemon=True)
            copier.start()
            procs[name] = proc
            copiers.append(copier)
        for proc in procs.values():
            proc.wait()
        for copier in copiers:
            copier.join()
    statuses = {name: proc.returncode for name, proc in procs.items()}
    out.write("make test: " + ", ".join(f"{name} {'passed' if code == 0 else describe_status(code)}"
                                        for name, code in statuses.items())
              + f", in {time.monotonic() - started:.0f} s\n")
    return next((code for code in statuses.values() if code), 0)
