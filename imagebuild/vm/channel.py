"""The results channel of a boot, and reading what a guest writes.

A boot is watched through its serial console, which QEMU writes to a file (the *serial log*,
for humans and for timing). Results travel on a second, dedicated channel: a virtio-serial
port named ``imagebuild.results`` whose host side is another file. In the guest it appears as
``/dev/virtio-ports/imagebuild.results`` (udev's default rule; the ``virtio_console`` module
loads by itself). Lines written there never interleave with kernel or systemd messages, as
they can on the console. :func:`parse_marked_lines` reads ``PREFIX payload`` lines back from
either; :class:`Tail` follows a growing log file line by line.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

RESULT_PREFIX = "IMAGEBUILD-RESULT"
DONE_PREFIX = "IMAGEBUILD-DONE"
RESULTS_PORT_NAME = "imagebuild.results"
RESULTS_PORT = RESULTS_PORT_NAME
RESULTS_DEVICE = f"/dev/virtio-ports/{RESULTS_PORT_NAME}"
SERIAL_DEVICE = "/dev/ttyS0"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>c]")


@dataclasses.dataclass(frozen=True)
class Line:
    elapsed: float   # seconds since QEMU started, when the host saw the line
    source: str      # "console" or "results"
    text: str        # without line end and ANSI escapes


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def parse_marked_lines(text: str, prefix: str = RESULT_PREFIX) -> list[str]:
    """Payloads of the lines in *text* that carry *prefix*, in order.

    A line counts if *prefix* appears in it followed by whitespace or the end of the line;
    anything before the prefix (a console timestamp, "cloud-init[123]: ", colour codes)
    is ignored, and the payload is the stripped rest of the line. CR/LF line ends, ANSI
    escapes and undecodable bytes are tolerated. A line that the kernel broke in two by
    printing in the middle of it cannot be repaired: use the results port for results.
    """
    return parse_marked(text, re.escape(prefix))


def parse_marked(text: str, prefix_regex: str) -> list[str]:
    """:func:`parse_marked_lines` with the prefix given as a regex."""
    out = []
    pat = re.compile(prefix_regex + r"(?=\s|$)")
    for raw in text.splitlines():
        line = strip_ansi(raw).replace("\x00", "")
        matches = list(pat.finditer(line))
        if matches:                        # the last occurrence wins
            out.append(line[matches[-1].end():].strip())
    return out


def clean(raw: bytes) -> str:
    """A raw line from a log as text: decoded, without ANSI escapes, CR or NUL."""
    return strip_ansi(raw.decode("utf-8", "replace")).rstrip("\r").replace("\x00", "")


class Tail:
    """Incremental reader of a growing file, yielding complete decoded lines."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""

    def read_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        return [clean(c) for c in complete]

    def flush(self) -> str:
        self.read_lines()
        rest, self.partial = self.partial, b""
        return clean(rest) if rest.strip() else ""


def tail(path: str | Path, n: int = 30) -> str:
    """The last *n* lines of a serial log, ANSI escapes removed (for error messages)."""
    try:
        text = Path(path).read_bytes().decode("utf-8", "replace")
    except OSError:
        return "(no serial log)"
    lines = [strip_ansi(line).rstrip("\r") for line in text.splitlines()]
    return "\n".join(lines[-n:]) if lines else "(the guest printed nothing)"
