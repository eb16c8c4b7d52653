"""The one reader of apt's source lists (one-line `.list` and deb822 `.sources`).

Why: the base image is built from the Debian mirror the system already uses, and the developer
tools fetch Debian's containerd packages from it; both must read the system's sources the way
apt does. Two readers once differed in three ways, each now decided here as apt decides it:

1. what disables a deb822 entry: `Enabled:` is an apt boolean (`no`, `false`, `0`, `off`, ...,
   any case), not only the word `no`;
2. entry options: `[signed-by=... arch=...]` of a one-line entry and deb822's `Signed-By:`
   (a keyring path or a key block on continuation lines, kept verbatim) are kept, not dropped;
3. field names are case-insensitive (`URIs:`, `uris:`), and a deb822 entry may hold several URIs,
   suites and types (each one counts).

Which files: apt's own configuration says (`Dir::Etc::SourceList`, `Dir::Etc::SourceParts`);
below another root (tests, a chroot) the standard `etc/apt/sources.list[.d]` of that root.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from imagebuild.errors import ImagebuildError
from imagebuild.run import run

#: The `Enabled:` values apt reads as false (apt-pkg's StringToBool), compared in lower case.
_FALSE = frozenset({"no", "false", "without", "off", "disable", "0"})
_ONE_LINE = re.compile(r"^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$")


@dataclass(frozen=True)
class Source:
    """One apt source entry: every URI x suite it names serves its components."""
    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str = ""          # as written: keyring path(s), or an embedded key block
    enabled: bool = True

    @property
    def binary(self) -> bool:
        """A `deb` (binary package) entry that is enabled."""
        return self.enabled and "deb" in self.types


def _deb822(text: str) -> list[Source]:
    out: list[Source] = []
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, list[str]] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and key:
                fields[key].append(line.strip())
            elif ":" in line:
                name, value = line.split(":", 1)
                key = name.strip().lower()
                fields[key] = [value.strip()]
        if not fields:
            continue

        def words(name: str, fields: dict[str, list[str]] = fields) -> tuple[str, ...]:
            return tuple(" ".join(fields.get(name, [])).split())

        signed_by = "\n".join(fields.get("signed-by", [])).strip()
        enabled = " ".join(fields.get("enabled", ["yes"])).strip().lower() not in _FALSE
        out.append(Source(words("types"), words("uris"), words("suites"), words("components"),
                          signed_by, enabled))
    return out


def _one_line(text: str) -> list[Source]:
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        m = _ONE_LINE.match(line)
        if not m:
            continue
        options = dict(opt.split("=", 1) for opt in (m.group(2) or "").split() if "=" in opt)
        options = {k.lower(): v for k, v in options.items()}
        out.append(Source((m.group(1),), (m.group(3),), (m.group(4),), tuple(m.group(5).split()),
                          options.get("signed-by", "")))
    return out


def parse(text: str, deb822: bool) -> list[Source]:
    """Every entry of one sources file (disabled ones too, with `enabled=False`)."""
    return _deb822(text) if deb822 else _one_line(text)


def source_files(root: str | os.PathLike | None = None) -> list[Path]:
    """The source files apt reads: its configured list and parts (sorted), or *root*'s etc/apt."""
    listed: Path | None = None
    parts: Path | None = None
    if root is None:
        with contextlib.suppress(OSError, ImagebuildError):
            out = run(["apt-config", "shell", "SL", "Dir::Etc::SourceList/f", "SP", "Dir::Etc::SourceParts/d"],
                      check=False, timeout=30).stdout
            conf = dict(re.findall(r"^(\w+)='(.*)'$", out, flags=re.M))
            listed = Path(conf["SL"]) if conf.get("SL") else None
            parts = Path(conf["SP"]) if conf.get("SP") else None
        root = "/"
    etc = Path(root) / "etc" / "apt"
    listed = listed or etc / "sources.list"
    parts = parts or etc / "sources.list.d"
    files = [listed] if listed.is_file() else []
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
    return files


def read(root: str | os.PathLike | None = None) -> list[Source]:
    """Every entry of the system's apt sources (see `source_files`), in apt's order."""
    entries: list[Source] = []
    for path in source_files(root):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            entries += parse(path.read_text(), deb822=path.suffix == ".sources")
    return entries


def os_release(root: str | os.PathLike = "/") -> dict[str, str]:
    """The fields of *root*'s /etc/os-release ({} when it cannot be read)."""
    out = {}
    with contextlib.suppress(OSError):
        for line in (Path(root) / "etc" / "os-release").read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                out[k.strip()] = v.strip().strip('"')
    return out


# --- the Debian mirror the system uses, for a base image of another release ----------------

def debian_sources(root: str | os.PathLike | None = None, suite: str = "bookworm") -> list[str]:
    """One-line apt sources for *suite* (+updates, +security), from the system's mirror.

    The mirror is the one the system's apt sources already use (its suites renamed from the
    host's release to *suite*), or ``$IMAGEBUILD_DEBIAN_MIRROR`` (the Debian archive URI;
    security updates are then taken from the same host's ``debian-security``).
    """
    override = os.environ.get("IMAGEBUILD_DEBIAN_MIRROR")
    if override:
        base = override.rstrip("/")
        security = re.sub(r"/debian$", "/debian-security", base)
        out: list[str] = [f"deb {base} {suite} main", f"deb {base} {suite}-updates main"]
        if security != base:
            out.append(f"deb {security} {suite}-security main")
        return out
    host = os_release(root or "/")
    codenames = {suite}
    if host.get("ID") == "debian" and host.get("VERSION_CODENAME"):
        codenames.add(host["VERSION_CODENAME"])
    out = []
    for entry in read(root):
        if not entry.binary or "main" not in entry.components:
            continue
        for uri, entry_suite, name in itertools.product(entry.uris, entry.suites, sorted(codenames)):
            if entry_suite == name or entry_suite.startswith(name + "-"):
                line = f"deb {uri} {suite}{entry_suite[len(name):]} main"
                if line not in out:
                    out.append(line)
    if not any(line.split()[2] == suite for line in out):
        raise ImagebuildError(
            "cannot find a Debian mirror in the system's apt sources (/etc/apt/sources.list"
            "[.d]); set IMAGEBUILD_DEBIAN_MIRROR to the Debian archive URI")
    return out


def host_proxy_options() -> list[str]:
    """The host's apt proxy settings, passed through (mmdebstrap does not read them)."""
    try:
        out = run(["apt-config", "dump"], check=False, timeout=20).stdout
    except ImagebuildError:   # no apt-config, or it hangs
        return []
    opts = []
    for line in out.splitlines():
        m = re.match(r'^(Acquire::(?:http|https)::Proxy(?:::[^ ]+)?) "(.*)";$', line)
        if m and m.group(2):
            opts.append(f'{m.group(1)} "{m.group(2)}";')
    return opts
