"""The documentation holds: README.md stays short, every relative link in README.md and docs/*.md reaches a
file, docs/spec.md is what the generator writes from the model, docs/verify.md names every check the code
reports (and none it does not), and no user doc carries issue numbers. Each check is shown able to fail."""
from __future__ import annotations

import ast
import re
import typing
from pathlib import Path

from pydantic import BaseModel

from devtools import spec_reference
from imagebuild.spec.problems import bare

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_LIMIT = 12 * 1024
REGENERATE = "make docs (python -m devtools spec-reference)"


def user_docs() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


# --------------------------------------------------------------------------- size and links

def too_big(path: Path, limit: int = README_LIMIT) -> str | None:
    size = path.stat().st_size
    if size <= limit:
        return None
    return f"{path.name} is {size} bytes, expected at most {limit}: move the detail into docs/"


_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_INLINE_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)


def broken_links(path: Path) -> list[str]:
    """The relative link targets in markdown *path* (code blocks and code spans left out) that name no existing
    file or directory, as 'target'. Absolute URLs (scheme:...) and in-page anchors (#...) are not files."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = [m.group(1) for pattern in (_INLINE_LINK, _IMAGE_LINK, _REFERENCE) for m in pattern.finditer(text)]
    broken = []
    for target in targets:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        file_part = target.split("#", 1)[0]
        if not (path.parent / file_part).exists():
            broken.append(target)
    return broken


def test_the_readme_is_at_most_12_kib():
    assert too_big(README) is None, too_big(README)


def test_a_readme_over_the_limit_is_reported(tmp_path):
    big = tmp_path / "README.md"
    big.write_bytes(b"x" * (README_LIMIT + 1))
    assert "12289 bytes, expected at most 12288" in too_big(big)
    big.write_bytes(b"x" * README_LIMIT)
    assert too_big(big) is None


def test_every_relative_link_of_the_readme_and_docs_reaches_a_file():
    assert (DOCS / "spec.md").is_file()
    broken = {str(path.relative_to(ROOT)): found for path in user_docs() if (found := broken_links(path))}
    assert not broken, f"relative links to no file: {broken}"


def test_a_link_to_no_file_is_reported_and_urls_anchors_and_code_are_not(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("x")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/there.md) [ok too](docs/there.md#part) [web](https://example.com/x.md) [in](#here)\n"
                    "[gone](docs/gone.md) ![pic](img/none.png) `[code](not/a/link.md)`\n"
                    "```\n[fenced](not/a/link.md)\n```\n[ref]: docs/missing.md\n")
    assert broken_links(page) == ["docs/gone.md", "img/none.png", "docs/missing.md"]


_SOURCE_PATH = re.compile(r"`((?:imagebuild|devtools|tests)/[\w./-]+\.(?:py|j2|sh))\b")


def missing_sources(path: Path, root: Path = ROOT) -> list[str]:
    """The repository files *path* names in code spans (`imagebuild/...py`, a template, a test) that do not exist:
    a module moved and the docs still send the reader to its old place."""
    return [name for name in _SOURCE_PATH.findall(path.read_text(encoding="utf-8")) if not (root / name).exists()]


def test_every_source_file_the_docs_name_exists():
    missing = {str(path.relative_to(ROOT)): found for path in user_docs() if (found := missing_sources(path))}
    assert not missing, f"docs name files that are not there: {missing}"


def test_a_moved_module_named_by_the_docs_is_reported(tmp_path):
    (tmp_path / "imagebuild" / "verify").mkdir(parents=True)
    (tmp_path / "imagebuild" / "verify" / "imds.py").write_text("")
    page = tmp_path / "verify.md"
    page.write_text("the emulator (`imagebuild/verify/imds.py`), once `imagebuild/imds.py`; `tests/gone.py`\n")
    assert missing_sources(page, tmp_path) == ["imagebuild/imds.py", "tests/gone.py"]


# --------------------------------------------------------------------------- the generated spec reference

def stale(path: Path) -> str | None:
    """Why *path* is not the spec reference the generator writes now, or None."""
    if not path.is_file():
        return f"{path} is missing: run {REGENERATE}"
    if path.read_text(encoding="utf-8") != spec_reference.render():
        return f"{path} is not what the model generates: run {REGENERATE} and commit the result"
    return None


def test_the_spec_reference_is_what_the_model_generates():
    assert spec_reference.SPEC_MD == DOCS / "spec.md"
    assert stale(DOCS / "spec.md") is None, stale(DOCS / "spec.md")


def test_a_stale_or_missing_spec_reference_is_reported_with_the_command_that_regenerates_it(tmp_path):
    copy = tmp_path / "spec.md"
    assert "is missing: run make docs" in stale(copy)
    copy.write_text(spec_reference.render().replace("| `config.oom_score` | integer | `-999`",
                                                    "| `config.oom_score` | integer | `-500`"))
    assert "run make docs" in stale(copy)
    spec_reference.write(copy)
    assert stale(copy) is None


def _key_paths(cls, path: str = "") -> list[str]:
    """Every key path of the model, read from its type hints, as the reference spells them (a list of
    sections `key[]`, a mapping of them `key.<name>`)."""
    found = []
    for key, info in cls.model_fields.items():
        here = f"{path}.{key}" if path else key
        hint = bare(info.annotation)
        origin = typing.get_origin(hint)
        held = bare(typing.get_args(hint)[0 if origin is tuple else -1]) if origin in (tuple, dict) else None
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            found += _key_paths(hint, here)
        elif isinstance(held, type) and issubclass(held, BaseModel):
            found.append(here)
            found += _key_paths(held, here + ("[]" if origin is tuple else ".<name>"))
        else:
            found.append(here)
    return found


def test_the_spec_reference_has_a_row_for_every_key_of_the_model():
    text = spec_reference.render()
    rows = set(re.findall(r"^\| `([^`]+)` \|", text, re.M))
    paths = _key_paths(spec_reference.model.Spec)
    assert {"containerd.install.tarball.sha256", "config.registry.mirrors[].endpoints[].headers",
            "config.runtimes.<name>.binary_name", "image.base.boot_mode", "verify.checks[].run"} <= set(paths)
    assert not set(paths) - rows, f"keys without a row: {sorted(set(paths) - rows)}"


# --------------------------------------------------------------------------- verify.md names every check

PLACEHOLDER = "\x00"


def _name_pattern(node: ast.AST) -> str | None:
    """A check name written in code, f-string parts as PLACEHOLDER: "version.{side}" -> "version.\\0"."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else PLACEHOLDER for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left = _name_pattern(node.left)
        return left + PLACEHOLDER if left is not None else None
    return None


def check_names(source: str) -> set[str]:
    """The check names a module reports: `rep.check(NAME, ...)` (the in-guest check), `{"check": NAME}`
    (host-side checks), and the names built before they reach either: `cri.mirror.*` (the lab's log
    checks) and the first element of a `("config.*", key path, value)` expectation."""
    names = set()
    tree = ast.parse(source)
    parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    for node in ast.walk(tree):
        if id(node) in parts:  # the text of an f-string, not a string of its own
            continue
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "check"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "rep" and node.args):
            candidates = [node.args[0]]
        elif isinstance(node, ast.Dict):
            candidates = [v for k, v in zip(node.keys, node.values, strict=True)
                          if isinstance(k, ast.Constant) and k.value == "check"]
        elif isinstance(node, ast.Tuple) and len(node.elts) == 3:
            candidates = [node.elts[0]]
        else:
            candidates = [node] if isinstance(node, ast.Constant | ast.JoinedStr) else []
        for candidate in candidates:
            name = _name_pattern(candidate)
            if name is None:
                continue
            generic = isinstance(node, ast.Constant | ast.JoinedStr)
            if generic and not name.startswith("cri.mirror."):
                continue
            if isinstance(node, ast.Tuple) and not name.startswith("config."):
                continue
            names.add(name)
    return names


def documented_checks(text: str) -> set[str]:
    """The check names in the first column of verify.md's tables (several per cell, comma-separated)."""
    names = set()
    for cell in re.findall(r"^\| ([^|]*`[^|]*) \|", text, re.M):
        names.update(re.findall(r"`([^`]+)`", cell))
    return names


def undocumented(code: set[str], documented: set[str]) -> tuple[set[str], set[str]]:
    """(code names no documented name matches, documented names no code name matches). A placeholder in a
    code name matches any text, a documented `<...>` stands for one."""
    def matches(pattern: str, name: str) -> bool:
        regex = ".+".join(re.escape(part) for part in pattern.split(PLACEHOLDER))
        return re.fullmatch(regex, name) is not None

    missing = {c for c in code if not any(matches(c, d) for d in documented)}
    unknown = {d for d in documented if not any(matches(c, d) for c in code)}
    return missing, unknown


def product_check_names() -> set[str]:
    return {name for path in sorted((ROOT / "imagebuild").rglob("*.py")) if "devtools" not in path.parts
            for name in check_names(path.read_text(encoding="utf-8"))}


def test_verify_md_names_every_check_the_code_reports_and_no_other():
    code = product_check_names()
    assert {"service.active", "version.\x00", "cri.mirror.\x00", "config.oom_score", "config.overrides\x00",
            "image.content_store", "ec2.imds_v2_only", "boot.firmware", "hygiene.staging_removed"} <= code
    missing, unknown = undocumented(code, documented_checks((DOCS / "verify.md").read_text(encoding="utf-8")))
    shown = sorted(n.replace(PLACEHOLDER, "{...}") for n in missing)
    assert not missing, f"checks the code reports that docs/verify.md does not name: {shown}"
    assert not unknown, f"checks docs/verify.md names that no code reports: {sorted(unknown)}"


def test_a_check_missing_from_the_docs_or_named_only_there_is_reported():
    source = ('def f(rep, p, side):\n    rep.check("service.active", 1, 1)\n    rep.check(f"version.{side}", 1, 1)\n'
              '    x = {"check": "image.content_store", "ok": True}\n    y = f"cri.mirror.{p.host}"\n'
              '    z = [("config.root", (), 1), ("config.overrides" + "".join(p), (), 2), ("a.b", 1, 2)]\n'
              '    w = "some.text"\n')
    code = check_names(source)
    assert code == {"service.active", "version.\x00", "image.content_store", "cri.mirror.\x00", "config.root",
                    "config.overrides\x00"}
    doc = ("| check | proves |\n|---|---|\n| `service.active`, `version.client` | ... |\n"
           "| `cri.mirror.<host>` | ... |\n| `config.root` | ... |\n| `config.overrides.<key path>` | ... |\n"
           "| `image.gone` | ... |\n")
    assert undocumented(code, documented_checks(doc)) == ({"image.content_store"}, {"image.gone"})


# --------------------------------------------------------------------------- no issue numbers in user docs

def issue_mentions(text: str) -> list[str]:
    return re.findall(r"\bissues? #?\d+\b|\(#\d+\)", text, re.I)


def test_user_docs_carry_no_issue_numbers():
    found = {p.name: hits for p in user_docs() if (hits := issue_mentions(p.read_text(encoding="utf-8")))}
    assert not found, found


def test_an_issue_number_is_found():
    assert issue_mentions("Why the default stays (decided, issue 13). See Issue #4 and (#12).") == [
        "issue 13", "Issue #4", "(#12)"]
    assert issue_mentions("the issue is 13 bytes; tissue 4") == []
