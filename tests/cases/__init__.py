"""Golden cases: tests/cases/<name>/spec.yaml beside expected/, every file `render_all` produces
for that spec, compared whole and byte for byte by tests/test_cases.py.

    python -m tests.cases regen [NAME...]     rewrite expected/ (`make regen-cases`; review the diff!)
    python -m tests.cases check [NAME...]     compare, print unified diffs, exit 1 on any difference

What expected/ holds: every rendered file, user-data included as rendered (gzipped, gzip mtime 0,
so its bytes are stable), and beside each gzipped file its text, `<file>.txt` (e.g.
`expected/user-data.txt`), so that a regeneration reads as a text diff in `git diff` and review.
The test checks both: the blob byte for byte, and that it gunzips to exactly the `.txt`.
Left out are the files the render copies verbatim from the source tree rather than renders,
`check.py` (imagebuild/guest/check.py), `packer/cri.py` and `packer/cri_hpack.py` (imagebuild/guest/cri.py,
cri_hpack.py), `packer/inventory.py` (imagebuild/guest/inventory.py) and `packer/hygiene.sh`
(packer/hygiene.sh): the test checks they are those files instead of keeping copies that change whenever
the sources do.

Each case but the default one (DEFAULT, the seed's empty spec) keeps only the files it changes: a file
missing from its expected/ is expected to equal the default case's, and the paths the default renders
but the case does not are listed in expected/ABSENT (one per line). `regen` writes them that way.
"""
from __future__ import annotations

import difflib
import gzip
import shutil
import sys
from pathlib import Path

CASES_DIR = Path(__file__).resolve().parent
EXPECTED = "expected"
#: The case every other one is told apart from.
DEFAULT = "seed-default"
#: In a case's expected/: the default case's paths this case does not render.
ABSENT = "ABSENT"
TEXT_SUFFIX = ".txt"   # expected/<file>.txt: the gunzipped text of a gzipped expected/<file>
GZIP_MAGIC = b"\x1f\x8b"


def verbatim() -> dict[str, Path]:
    """Rendered path -> the source file it must equal (not stored in expected/)."""
    from imagebuild.render.templating import PACKAGE_DIR, shipped_dir

    return {"check.py": PACKAGE_DIR / "guest" / "check.py", "packer/hygiene.sh": shipped_dir("packer") / "hygiene.sh",
            "packer/cri.py": PACKAGE_DIR / "guest" / "cri.py",
            "packer/cri_hpack.py": PACKAGE_DIR / "guest" / "cri_hpack.py",
            "packer/inventory.py": PACKAGE_DIR / "guest" / "inventory.py"}


def names() -> list[str]:
    return sorted(p.parent.name for p in CASES_DIR.glob("*/spec.yaml"))


def is_gzip(data: bytes) -> bool:
    return data[:2] == GZIP_MAGIC


def with_texts(files: dict[str, bytes]) -> dict[str, bytes]:
    """*files* plus `<rel>.txt`, the gunzipped text, beside every gzipped file."""
    out = dict(files)
    for rel, data in files.items():
        if is_gzip(data):
            out[rel + TEXT_SUFFIX] = gzip.decompress(data)
    return dict(sorted(out.items()))


def rendered(name: str) -> dict[str, bytes]:
    """What expected/ must hold: render_all of the case's spec today, minus the verbatim copies,
    plus the text beside each gzipped file."""
    from imagebuild import render
    from imagebuild.spec import load

    files = render.render_all(load(CASES_DIR / name / "spec.yaml"))
    skip = verbatim()
    return with_texts({rel: f.content for rel, f in files.items() if rel not in skip})


def _own(name: str) -> dict[str, bytes]:
    """The files the case's expected/ holds itself (ABSENT included)."""
    base = CASES_DIR / name / EXPECTED
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def stored(name: str) -> dict[str, bytes]:
    """What the case expects rendered: its own files over the default case's, less the ABSENT ones."""
    own = _own(name)
    if name == DEFAULT:
        return own
    absent = set(own.pop(ABSENT, b"").decode().split())
    inherited = {rel: data for rel, data in _own(DEFAULT).items() if rel not in absent}
    return dict(sorted((inherited | own).items()))


def round_trip_errors(name: str) -> list[str]:
    """Stored gzip blobs whose `.txt` is missing or is not what the blob gunzips to, and `.txt`
    files beside a file that is not gzipped."""
    files = stored(name)
    errors = []
    for rel, data in files.items():
        if is_gzip(data):
            text = files.get(rel + TEXT_SUFFIX)
            if text is None:
                errors.append(f"{name}/{EXPECTED}/{rel} is gzipped but {rel}{TEXT_SUFFIX} is missing")
            elif gzip.decompress(data) != text:
                errors.append(f"{name}/{EXPECTED}/{rel} does not gunzip to {rel}{TEXT_SUFFIX}")
        elif rel.endswith(TEXT_SUFFIX) and rel[:-len(TEXT_SUFFIX)] in files \
                and not is_gzip(files[rel[:-len(TEXT_SUFFIX)]]):
            errors.append(f"{name}/{EXPECTED}/{rel} sits beside {rel[:-len(TEXT_SUFFIX)]}, which is not gzipped")
    return errors


def _text(data: bytes) -> list[str]:
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return [f"<{len(data)} bytes of binary>\n"]


def differences(name: str) -> list[str]:
    """Unified diffs (expected -> rendered) for every file that differs, appears or disappears."""
    want, got = stored(name), rendered(name)
    out = []
    for rel in sorted(set(want) | set(got)):
        if want.get(rel) == got.get(rel):
            continue
        if rel not in want:
            out.append(f"+++ {name}: {rel} is rendered but not in {name}/{EXPECTED} "
                       f"({len(_text(got[rel]))} lines)\n")
            continue
        if rel not in got:
            out.append(f"--- {name}/{EXPECTED}/{rel} is no longer rendered\n")
            continue
        text = rel + TEXT_SUFFIX
        if is_gzip(want[rel]) and is_gzip(got[rel]):
            why = ("its text diff is under " + text if want.get(text) != got.get(text)
                   else "same text, different gzip bytes")
            out.append(f"{name}/{EXPECTED}/{rel}: gzip blob differs ({len(want[rel])} -> {len(got[rel])} "
                       f"bytes); {why}\n")
            continue
        diff = "".join(difflib.unified_diff(_text(want[rel]), _text(got[rel]),
                                            f"{name}/{EXPECTED}/{rel}", f"{name}: rendered {rel}", n=2))
        # Same text, different bytes: a gzip header, line endings.
        out.append(diff or f"--- {name}/{EXPECTED}/{rel}\n+++ {name}: rendered {rel}\n(same text, different bytes)\n")
    return out


def regen(selected: list[str] | None = None) -> list[Path]:
    """Rewrite expected/ of each case (all by default) from today's render; returns the case dirs."""
    done = []
    for name in sorted(selected or names(), key=lambda n: n != DEFAULT):  # the default first: the rest differ from it
        target = CASES_DIR / name / EXPECTED
        files = rendered(name)
        if name != DEFAULT:
            default = _own(DEFAULT)
            absent = sorted(set(default) - set(files))
            files = {rel: data for rel, data in files.items() if default.get(rel) != data}
            if absent:
                files[ABSENT] = "".join(f"{rel}\n" for rel in absent).encode()
        tmp = target.with_name(EXPECTED + ".new")
        shutil.rmtree(tmp, ignore_errors=True)
        for rel, data in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        done.append(target.parent)
    return done


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("regen", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    command, selected = argv[0], argv[1:]
    unknown = sorted(set(selected) - set(names()))
    if unknown:
        print(f"no such case: {', '.join(unknown)} (cases: {', '.join(names())})", file=sys.stderr)
        return 2
    if command == "regen":
        for case in regen(selected):
            print(f"rewrote {case.relative_to(CASES_DIR.parent.parent)}/{EXPECTED}")
        return 0
    failed = False
    for name in selected or names():
        for diff in differences(name):
            sys.stdout.write(diff)
            failed = True
    return 1 if failed else 0
