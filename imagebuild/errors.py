"""Errors a user can cause, reported as one clear message each (never a traceback), and the
interruption a signal causes."""
import signal


class ImagebuildError(Exception):
    """A failure explained in words; the CLI prints it and exits 1."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (the CLI's handler raises it): the command unwinds, stopping its
    children and removing its scratch, and exits with :func:`interrupted_exit_code`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupted_exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal: 130 for SIGINT (a plain KeyboardInterrupt too), 143 for SIGTERM."""
    return 128 + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)
