"""The one launcher of the tests' daemons (containerd, moto, ...), on the product's process module.

`Daemon(argv, log_path)` starts *argv* with `imagebuild.run.spawn`: its own process group, SIGKILLed by the
kernel if the test process dies (die_with_parent), stdout and stderr into *log_path*. `wait_ready(ready,
timeout, what)` polls a readiness predicate: `DaemonExited` when the daemon exits first (a refused config is
a result some tests expect), AssertionError naming the log tail when it still runs without being ready after
*timeout* (a hang is always a failure). `stop()` stops the whole group with `imagebuild.run.kill_group`.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from imagebuild import run


class DaemonExited(Exception):
    """The daemon exited before it was ready (not a hang: that raises AssertionError)."""


class Daemon:
    def __init__(self, argv: Sequence[str | os.PathLike[str]], log_path: Path, *,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None):
        self.name = Path(os.fspath(argv[0])).name
        self.log_path = Path(log_path)
        self._out = open(self.log_path, "wb")
        self.proc = run.spawn(argv, stdout=self._out, stderr=run.STDOUT, env=env, cwd=cwd, die_with_parent=True)

    def log(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, chars: int = 2000) -> str:
        return self.log()[-chars:]

    def wait_ready(self, ready: Callable[[], bool], timeout: float, what: str = "ready") -> None:
        """Until *ready()* holds; DaemonExited if the daemon exits first, AssertionError (after stopping it)
        if it is still not *what* after *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                self._out.close()
                raise DaemonExited(f"{self.name} exited with {self.proc.returncode} at start:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{self.name} hung: not {what} after {timeout:g} s:\n{self.tail()}")
            time.sleep(0.05)

    def stop(self, *, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        run.kill_group(self.proc, sig=sig, grace=grace)
        self._out.close()
