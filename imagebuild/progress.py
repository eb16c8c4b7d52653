"""Progress lines for long work: one line per step, with elapsed seconds, on stderr."""
import sys
import time

_START = time.monotonic()


def step(message: str) -> None:
    print(f"[{time.monotonic() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)
