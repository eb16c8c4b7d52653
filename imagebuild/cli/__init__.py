"""The `imagebuild` command: :mod:`.parser` declares it, :mod:`.commands` does each subcommand (each imports
what it needs when it runs, so `--help` and `render` stay fast: boto3, packer and QEMU code load only for the
commands that use them), :mod:`.doctor` says what the machine lacks, :mod:`.completion` writes the shell
completion scripts from the parser.

Exit codes: 0 success, 1 a failure explained on stderr, 2 a bad spec or bad arguments,
130 interrupted by SIGINT (Ctrl-C), 143 by SIGTERM. Pipeline-specific codes are listed in
`imagebuild pipeline --help`; `imagebuild diff` follows diff(1): 0 same, 1 different, 2 trouble.

The signal policy lives here and only here: :func:`guarded` (under :func:`main`) turns the first SIGINT or SIGTERM into
:class:`~imagebuild.errors.Interrupted` (a KeyboardInterrupt), which unwinds every `finally` and context manager on
its way out, so each child process group is stopped (:mod:`imagebuild.run`) and each scratch
directory removed; later signals are ignored while that cleanup runs (SIGKILL still ends it).
"""
from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

from imagebuild.cli.commands import missing_parent
from imagebuild.cli.parser import parser
from imagebuild.errors import ImagebuildError, Interrupted, interrupted_exit_code

__all__ = ["guarded", "main", "parser"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt_on_signals():
    """Route SIGINT (Ctrl-C) and SIGTERM (`kill`, systemd stop, a cancelled CI job) into
    :class:`~imagebuild.errors.Interrupted`; returns a function that puts the previous handlers back. Only in the main
    thread (signals go there).

    The first signal raises; later ones are dropped while the cleanup runs (it stops its own
    children and removes its scratch; SIGKILL still ends everything). Dropped by a Python handler,
    not SIG_IGN, which processes started during the cleanup would inherit.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    interrupted = False

    def handler(signum, frame) -> None:
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}

    def restore() -> None:
        for sig, before in previous.items():
            signal.signal(sig, signal.SIG_DFL if before is None else before)

    return restore


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)  # usage errors exit 2 here, --help and --version 0
    if args.quiet and args.verbose:  # one before the subcommand, the other after it
        top.error("argument -v/--verbose: not allowed with argument -q/--quiet")
    if hasattr(args, "output_is_file"):
        problem = missing_parent(args.output, is_file=args.output_is_file)
        if problem:
            print(f"imagebuild: error: {problem}", file=sys.stderr)
            return 2
    return guarded(lambda: args.func(args), quiet=args.quiet, verbose=args.verbose)


def guarded(command: Callable[[], int], *, quiet: bool = False, verbose: bool = False) -> int:
    """Run *command* under imagebuild's signal policy and progress level; its exit code, or one line
    and 2 (spec error), 1 (any other error) or 128+N (signal N)."""
    from imagebuild import progress
    from imagebuild.spec import SpecError

    restore = _interrupt_on_signals()
    level = None
    try:
        level = progress.configure(quiet=quiet, verbose=verbose)
        return command()
    except SpecError as exc:
        print(f"imagebuild: {exc.report()}", file=sys.stderr)
        return 2
    except ImagebuildError as exc:
        print(f"imagebuild: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        code = interrupted_exit_code(exc)
        print(f"imagebuild: interrupted ({signal.Signals(code - 128).name})", file=sys.stderr)
        return code
    except OSError as exc:
        # The machine said no (disk full, permission denied, ...): one line naming the file, not a
        # traceback. Writers clean up their own temporary files before the error gets here.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"imagebuild: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    finally:
        if level is not None:
            progress.restore(level)
        restore()


if __name__ == "__main__":
    sys.exit(main())
