"""imagebuild's log: one line per step on stderr, `[elapsed] message`, through :mod:`logging`.

- :func:`step` logs at INFO (what every command prints by default), :func:`debug` at DEBUG
  (command lines; `imagebuild --verbose`), :func:`warning` at WARNING (`--quiet` keeps only
  warnings and errors). :func:`configure` sets the level; only the CLI calls it.
- :func:`heartbeat` wraps a long silent wait (a QEMU boot, mmdebstrap, a Packer build, a
  conversion): every *interval* seconds (``$IMAGEBUILD_HEARTBEAT``, default 20) without any
  other line it logs that the work is still running and for how long.
- :func:`bar` shows a progress bar where the total is known: redrawn in place on a terminal,
  a line per 10% elsewhere (a CI log).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator

LOG = logging.getLogger("imagebuild")
_START = time.monotonic()
_last_line = time.monotonic()   # when the last line was written (a heartbeat waits for silence)


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"[{time.monotonic() - _START:7.1f}s] {record.getMessage()}"


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when the line is written (tests redirect it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_Format())

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        global _last_line
        super().emit(record)
        _last_line = time.monotonic()


if not any(isinstance(h, _Stderr) for h in LOG.handlers):
    LOG.addHandler(_Stderr())
LOG.setLevel(logging.INFO)


def configure(*, quiet: bool = False, verbose: bool = False) -> int:
    """Set the level: WARNING with *quiet*, DEBUG with *verbose*, else INFO. Returns the previous one."""
    previous = LOG.level
    LOG.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    return previous


def restore(level: int) -> None:
    LOG.setLevel(level)


def step(message: str) -> None:
    LOG.info(message)


def debug(message: str) -> None:
    LOG.debug(message)


def warning(message: str) -> None:
    LOG.warning(f"warning: {message}")


HEARTBEAT_S = 20.0


def heartbeat_interval() -> float:
    """Seconds of silence before a heartbeat line: ``$IMAGEBUILD_HEARTBEAT`` or 20."""
    try:
        value = float(os.environ.get("IMAGEBUILD_HEARTBEAT", HEARTBEAT_S))
    except ValueError:
        return HEARTBEAT_S
    return value if value > 0 else HEARTBEAT_S


@contextlib.contextmanager
def heartbeat(what: str, interval: float | None = None) -> Iterator[None]:
    """While the body runs, log `<what>: still running (N s)` whenever *interval* seconds
    (default: :func:`heartbeat_interval`) pass without any line of imagebuild's log."""
    interval = interval or heartbeat_interval()
    started = time.monotonic()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(min(1.0, interval)):
            now = time.monotonic()
            if now - _last_line >= interval and now - started >= interval:
                step(f"{what}: still running ({now - started:.0f} s)")

    thread = threading.Thread(target=beat, name=f"heartbeat {what}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Bar:
    """A progress bar towards *total* (bytes, blocks, percent...). :meth:`update` with the amount
    done so far; the text after the bar comes from *describe*(done, total) if given."""

    def __init__(self, total: float, what: str, *, unit: str = "", stream=None, width: int = 30,
                 describe=None) -> None:
        self.total, self.what, self.unit, self.width = total, what, unit, width
        self._stream = stream
        self.describe = describe
        self._last_draw = 0.0
        self._last_decile = -1
        self.done = 0.0

    @property
    def stream(self):
        return self._stream or sys.stderr

    def _text(self, done: float) -> str:
        if self.describe is not None:
            return f"{self.what} {self.describe(done, self.total)}"
        fraction = done / self.total if self.total else 1.0
        if self.unit == "%":
            return f"{self.what} {fraction * 100:3.0f}%"
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.what} {fraction * 100:3.0f}% ({done:g}/{self.total:g}{unit})"

    def update(self, done: float, total: float | None = None) -> None:
        """*done* so far (and the *total*, when it is learnt late); nothing with --quiet."""
        if total is not None:
            self.total = total
        if not LOG.isEnabledFor(logging.INFO):
            return
        self.done = done
        finished = done >= self.total
        fraction = min(1.0, done / self.total) if self.total else 1.0
        text = self._text(done)
        stream = self.stream
        if getattr(stream, "isatty", lambda: False)():
            now = time.monotonic()
            if not finished and now - self._last_draw < 0.2:
                return
            self._last_draw = now
            filled = int(fraction * self.width)
            stream.write(f"\r[{'#' * filled}{'-' * (self.width - filled)}] {text}" + ("\n" if finished else ""))
        else:
            decile = int(fraction * 10)
            if decile == self._last_decile:
                return
            self._last_decile = decile
            stream.write(f"  {text}\n")
        stream.flush()
        global _last_line
        _last_line = time.monotonic()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        pass


def bar(total: float, what: str, **options) -> Bar:
    """A :class:`Bar` on stderr: ``with bar(size, "upload", unit="MiB") as b: b.update(n)``."""
    return Bar(total, what, **options)
