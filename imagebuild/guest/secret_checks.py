#!/usr/bin/env python3
"""The verify boot's checks that literal secrets stay secret: each file imagebuild wrote holding one has its
owner and mode, cloud-init's logs and stored user-data are root-only, and no secret is in a world-readable file.
Standard library only; staged beside check.py (which imports it in the boot phase), never installed.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
from pathlib import Path

try:
    import tomllib
except ImportError:  # python3 < 3.11 on older images: the header is found in the text
    tomllib = None  # type: ignore[assignment]

#: Where a secret must not be world-readable (the secret.readable check searches them), what it reads of a file,
#: and the words it hashes: runs of token characters (RFC 6750's b64token without its = padding, which would
#: glue `key=value` into one word), at least SECRET_WORD long.
SECRET_ROOTS = ("/etc", "/var/lib/cloud", "/var/log", "/run")
SECRET_SCAN_BYTES = 4 << 20
SECRET_WORD = 8
_WORDS = re.compile(rb"[A-Za-z0-9._~+/-]{%d,}" % SECRET_WORD)
#: cloud-init's logs and its stored copy of the user-data: they can hold what user-data carried, so root-only.
CLOUD_INIT_PRIVATE = ("/var/log/cloud-init.log", "/var/log/cloud-init-output.log",
                      "/var/lib/cloud/instance/user-data.txt")
#: What a hosts.toml holds where a value read on the node goes until the resolver writes it
#: (imagebuild.render.secret_refs.placeholder, as TOML writes it).
PLACEHOLDER = "imagebuild-secret:"


def secret_words(data: bytes) -> set[bytes]:
    """The words a secret is searched by: runs of token characters at least SECRET_WORD long. The render
    ships the sha256 of a secret's words (expected.json), never the secret; the check hashes a file's."""
    return set(_WORDS.findall(data))


def _owner_mode(path: Path) -> str:
    st = path.stat()
    return f"{'root' if st.st_uid == 0 else f'uid {st.st_uid}'} {st.st_mode & 0o7777:04o}"


def run_all(rep, exp: dict, root: Path = Path("/")) -> None:
    """Literal secrets stay secret: each file imagebuild wrote holding one has its owner and mode, cloud-init's
    logs and stored user-data are root-only, and no secret is in a world-readable file under SECRET_ROOTS."""
    secrets = exp.get("secrets") or {}
    for item in secrets.get("files", []):
        path = root / item["path"].lstrip("/")
        rep.check(f"secret.file.{item['path']}", f"{item['owner']} {item['mode']}",
                  _owner_mode(path) if path.is_file() else "<missing>")
    for name in CLOUD_INIT_PRIVATE:
        path = root / name.lstrip("/")
        actual = _owner_mode(path) if path.is_file() else "<absent>"
        ok = actual == "<absent>" or (actual.startswith("root ") and not path.stat().st_mode & 0o077)
        rep.check(f"secret.private.{name}", "root-only (root, 0600) or absent", actual, ok)
    for entry in secrets.get("on_node", []):
        resolved_check(rep, entry, root)
    wanted = set(secrets.get("sha256", []))
    unsearchable = secrets.get("unsearchable", 0)
    if not wanted:
        rep.check("secret.readable", "no literal secret in a world-readable file",
                  f"{unsearchable} secret(s) without a word of {SECRET_WORD}+ token characters: cannot be searched"
                  if unsearchable else "the spec has no literal secret", True)
        return
    hits, scanned, cut = secrets_in_readable_files(wanted, [root / r.lstrip("/") for r in SECRET_ROOTS])
    rep.check("secret.readable", f"no literal secret in a world-readable file under {', '.join(SECRET_ROOTS)}",
              [str(Path("/") / Path(h).relative_to(root)) for h in hits] or "none", not hits,
              note=f"{scanned} world-readable files searched ({cut} read to their first {SECRET_SCAN_BYTES} bytes)"
              + (f"; {unsearchable} secret(s) without a word of {SECRET_WORD}+ token characters cannot be searched"
                 if unsearchable else ""))


def secrets_in_readable_files(wanted: set[str], tops: list[Path]) -> tuple[list[str], int, int]:
    """(world-readable regular files under *tops* holding a word whose sha256 is in *wanted*, how many were
    searched, how many were longer than SECRET_SCAN_BYTES). Symlinks are not followed."""
    hits, scanned, cut = [], 0, 0
    for top in tops:
        for base, dirs, names in os.walk(top, followlinks=False):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(base, name)
                try:
                    st = os.lstat(path)
                    if not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IROTH:
                        continue
                    with open(path, "rb") as handle:
                        data = handle.read(SECRET_SCAN_BYTES)
                except OSError:
                    continue
                scanned += 1
                cut += st.st_size > SECRET_SCAN_BYTES
                if any(hashlib.sha256(word).hexdigest() in wanted for word in secret_words(data)):
                    hits.append(path)
    return hits, scanned, cut


def _header_values(text: str, url: str, name: str) -> list:
    """The values of header *name* of the hosts.toml entry *url*, as containerd reads them ([] when none)."""
    if tomllib is not None:
        try:
            doc = tomllib.loads(text)
        except ValueError:
            return []
        values = doc.get("host", {}).get(url, {}).get("header", {}).get(name, [])
        return values if isinstance(values, list) else [values]
    pattern = r'^\s*"?' + re.escape(name) + r'"?\s*=\s*\[\s*"([^"]+)'
    found = re.search(pattern, text, re.MULTILINE)
    return [found.group(1)] if found else []


def unit_state(unit: str) -> str:
    """`systemctl show` of *unit*: its state and its last run's result (which the note reports)."""
    try:
        done = subprocess.run(["systemctl", "show", "-p", "ActiveState", "-p", "Result", unit],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"<{exc}>"
    shown = dict(line.strip().split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return " ".join(f"{name}={shown[name]}" for name in ("ActiveState", "Result") if name in shown) or "<unknown>"


def resolved_check(rep, entry: dict, root: Path = Path("/")) -> None:
    """secret.resolved.<path>: the hosts.toml the node writes from values it reads (SSM, Secrets Manager) is
    there and holds each of them: no placeholder is left, each header has a value (never shown). Its owner and
    mode are secret.file.<path>'s."""
    path = root / entry["path"].lstrip("/")
    names = ", ".join(h["name"] for h in entry["headers"])
    if not path.is_file():
        actual, ok = "<missing>", False
    else:
        text = path.read_text(encoding="utf-8", errors="replace")
        empty = [h["name"] for h in entry["headers"]
                 if not [v for v in _header_values(text, h["url"], h["name"]) if isinstance(v, str) and v
                         and PLACEHOLDER not in v]]
        ok = PLACEHOLDER not in text and not empty
        actual = ("placeholder left" if PLACEHOLDER in text else
                  f"no value for {', '.join(empty)}" if empty else f"resolved: {names}")
    rep.check(f"secret.resolved.{entry['path']}", f"resolved: {names}", actual, ok,
              note=f"{entry['unit']}: {unit_state(entry['unit'])}")
