"""The spec, read and validated once into the typed, immutable model (imagebuild.spec.model).

`load()` and `parse()` read YAML (or JSON: spec.json) within input limits, bring an older spec
version or a renamed key up to the current model, validate it with pydantic, then run the rules
that span keys (imagebuild.spec.rules). Every problem is reported at once, one line each (key path, bad
value, what is allowed), as a `SpecError`; renderers take the `Spec` and nothing else.
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from imagebuild.spec import rules, variants
from imagebuild.spec.containerd import LTS_VERSION, config_version_of, family_of
from imagebuild.spec.containerd_keys import KeyPaths, normalise_overrides, reference_tree
from imagebuild.spec.fields import API_VERSION, API_VERSIONS, RENAMES, Problem, show
from imagebuild.spec.model import PROFILES, Matrix, Spec
from imagebuild.spec.override_keys import unknown_keys
from imagebuild.spec.problems import Written, plain, problems_of
from imagebuild.spec.renames import gone_keys
from imagebuild.spec.secrets import check_overrides_auth


class SpecError(Exception):
    """A spec that cannot be used; carries one Problem per violation."""

    def __init__(self, problems: list[Problem], source: str = "spec"):
        self.problems = problems
        self.source = source
        super().__init__("\n".join(str(p) for p in problems))

    def report(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


# --- spec versions and renamed keys ------------------------------------------------------------------

def upgrade(document: dict, renamed: list[tuple[str, str]]) -> tuple[dict, list[Problem], list[str], list[str]]:
    """*document* in the current spec version: (document, problems, warnings, notices).

    A spec without apiVersion is read as the first version (a notice says so); an unknown one is a
    problem naming the supported versions. A key under an old name (RENAMES) moves to its new name,
    with a warning naming it; *renamed* gets each (old, new) applied.
    """
    document = dict(document)
    problems: list[Problem] = []
    warnings: list[str] = []
    notices: list[str] = []
    version = document.get("apiVersion")
    if "apiVersion" not in document:
        notices.append(f"the spec has no apiVersion; read as {API_VERSIONS[0]} (add `apiVersion: {API_VERSION}`)")
        document = {"apiVersion": API_VERSIONS[0], **document}
    elif version not in API_VERSIONS:
        problems.append(Problem("apiVersion", f"got {show(version)}, expected one of {', '.join(API_VERSIONS)} "
                                "(the spec versions this imagebuild reads)"))
        return document, problems, warnings, notices
    for old, new in RENAMES:
        *parents, old_key = old.split(".")
        *new_parents, new_key = new.split(".")
        node: Any = document
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or old_key not in node:
            continue
        if new_parents != parents:
            raise AssertionError(f"RENAMES: {old} -> {new} moves a key between sections")
        if new_key in node:
            problems.append(Problem(old, f"set together with its new name {new}; keep only {new}"))
            continue
        _set_in(document, parents, {(new_key if k == old_key else k): v for k, v in node.items()})
        warnings.append(f"{old} is renamed {new}; the old name still works, use the new one")
        renamed.append((old, new))
    return document, problems, warnings, notices


def _as_written(problem: Problem, renamed: list[tuple[str, str]]) -> Problem:
    """*problem* under the key the spec wrote: a value under a renamed key is named by its old name."""
    for old, new in renamed:
        if problem.path == new or problem.path.startswith((new + ".", new + "[")):
            return Problem(old + problem.path[len(new):], problem.message + f" ({old} is now {new})")
    return problem


def _set_in(document: dict, parents: list[str], value: dict) -> None:
    """Replace the mapping at *parents* (copying the mappings above it, never the caller's)."""
    if not parents:
        document.clear()
        document.update(value)
        return
    node = document
    for part in parents[:-1]:
        node[part] = dict(node[part])
        node = node[part]
    node[parents[-1]] = value


# --- building the model ------------------------------------------------------------------------------

def from_document(document: Any, source: str = "spec", *, current: bool = False,
                  written: Written | None = None) -> Spec:
    """Validate a parsed YAML document and build the model; raises SpecError listing every problem.

    *current*: the document is in the current spec version even without apiVersion (the built-in
    default), so no notice. *written*: how the spec text wrote each number (:func:`written_numbers`),
    so that a number where text belongs is shown as written.
    """
    if document is None:
        document = {}
    if current and "apiVersion" not in document:
        document = {"apiVersion": API_VERSION, **document}
    renamed: list[tuple[str, str]] = []
    document, problems, warnings, notices = upgrade(document, renamed)
    if problems:
        raise SpecError(problems, source)
    try:
        first = Spec.model_validate(document)
    except ValidationError as exc:
        raise SpecError([_as_written(p, renamed) for p in problems_of(exc, written=written)], source) from None
    doc = plain(first)  # the document with defaults filled in: spec.json, spec_hash
    doc["variants"] = {name: {k: v for k, v in sections.items() if v is not None}
                       for name, sections in doc["variants"].items()}
    for key, empty in (("variants", {}), ("matrix", plain(Matrix()))):
        if doc[key] == empty:
            del doc[key]  # unset: not in spec.json, so a spec without variants hashes as before
    if not doc["config"]["extra_plugins"]:
        del doc["config"]["extra_plugins"]  # likewise: a spec without the opt-out hashes as before
    problems, found = rules.semantic_checks(doc)
    warnings += found
    if not problems:
        family = family_of(doc["containerd"]["version"])
        extra = tuple(doc["config"].get("extra_plugins", ()))
        doc["config"]["overrides"], pairs = normalise_overrides(doc["config"]["overrides"], family,
                                                             extra_plugins=extra)
        problems = [Problem(path, message) for path, message in pairs]
        rules.check_overrides(doc["config"]["overrides"], "config.overrides", problems,
                               quote_in_keys=not family.startswith("1."))
        problems += check_overrides_auth(doc["config"]["overrides"])
        if not problems:
            problems = unknown_keys(doc["config"]["overrides"], family, config_version_of(family), extra)
    if problems:
        raise SpecError(problems, source)
    built = copy.deepcopy(doc)
    # The profile's sysctls first, the spec's own after them (and over them), all as text.
    system = built["system"]
    profile = {key: value for key, (value, _) in PROFILES[system["profile"]]["sysctls"].items()}
    system["sysctls"] = {**profile, **{key: str(value) for key, value in system["sysctls"].items()}}
    spec = Spec.model_validate(built)
    problems = rules.override_conflicts(spec) + gone_keys(spec)
    if problems:
        raise SpecError(problems, source)
    spec._warnings = tuple(warnings)
    spec._notices = tuple(notices)
    spec._document = doc
    if spec.variants:
        spec._expanded = _expand(document, doc, source)
    return spec


def _expand(document: dict, doc: dict, source: str) -> dict[str, Spec]:
    """Each variant of the spec (*document* as written, *doc* with defaults) as a whole, validated spec."""
    problems = variants.name_problems(doc["name"], doc["variants"])
    expanded: dict[str, Spec] = {}
    for name, merged in variants.documents(document, doc["name"], doc["variants"]).items():
        if any(p.path == f"variants.{name}" for p in problems):
            continue
        try:
            expanded[name] = from_document(merged, source)
        except SpecError as exc:
            problems += [variants.within(name, p) for p in exc.problems]
    problems += variants.collisions({name: s.image.aws.ssm_parameter for name, s in expanded.items()})
    if problems:
        raise SpecError(problems, source)
    return expanded


#: Input limits: a spec is a few KiB and a dozen levels deep; hostile YAML (an alias bomb, thousands
#: of nested brackets, a huge file) fails fast with one clear error instead of hanging or crashing.
MAX_SPEC_BYTES = 256 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_ALIASES = 256

_STR, _MERGE = "tag:yaml.org,2002:str", "tag:yaml.org,2002:merge"
_BOOL = "tag:yaml.org,2002:bool"


class _Limit(yaml.composer.ComposerError):
    """A spec over one of the input limits (raised while composing, before anything is built)."""


class _BadKey(yaml.composer.ComposerError):
    """A mapping key that is not text: a list or mapping (a complex key), a number, a boolean, null."""


_KINDS = {"int": "an integer", "float": "a number", "bool": "a boolean", "null": "null", "timestamp": "a date"}


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans, refusing duplicate and non-text keys, within limits.

    Only true/false (True, TRUE, False, FALSE) are booleans, as in YAML 1.2: `no`, `on`, `yes` and
    `off` are strings, so `restart: no` means "no" and never False. Numbers stay PyYAML's, so a file
    written by yaml.safe_dump reads back the same. Every node is counted as if aliases were expanded,
    so an alias bomb stops at MAX_NODES while composing, before any value is built.
    """

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, "tag:yaml.org,2002:value")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str, name: str):
        super().__init__(stream)
        self.name = name  # marks name the spec file, not "<unicode string>"
        self._depth = 0
        self._nodes = 0
        self._aliases = 0
        self._sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, expanded depth)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Limit(None, None, f"more than {MAX_ALIASES} aliases (*name), expected at most "
                             f"{MAX_ALIASES}", event.start_mark)
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:
                raise _Limit(None, None, f"alias *{event.anchor} refers to a node that contains it "
                             "(a recursive structure), expected a finished anchor", event.start_mark)
            self._count(node, event.start_mark)
            return node
        event = self.peek_event()
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Limit(None, None, f"nested more than {MAX_DEPTH} levels deep, expected at most {MAX_DEPTH}",
                         event.start_mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        if isinstance(node, yaml.MappingNode):
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    raise _BadKey(None, None, f"got a {key.id} as a mapping key, expected a plain text key",
                                  key.start_mark)
                if key.tag not in (_STR, _MERGE):
                    kind = key.tag.rsplit(":", 1)[-1]
                    raise _BadKey(None, None, f"got the key {key.value!r}, which YAML reads as "
                                  f"{_KINDS.get(kind, kind)}, expected text (quote it)", key.start_mark)
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        size = 1 + sum(self._sizes[id(child)][0] for child in children)
        depth = 1 + max((self._sizes[id(child)][1] for child in children), default=0)
        self._sizes[id(node)] = (size, depth)
        self._count(node, event.start_mark, own=True)
        return node

    def _count(self, node, mark, own: bool = False) -> None:
        size, depth = self._sizes[id(node)]
        self._nodes += 1 if own else size
        if self._nodes > MAX_NODES:
            raise _Limit(None, None, f"more than {MAX_NODES} values (aliases counted expanded), expected at "
                         f"most {MAX_NODES}", mark)
        if depth > MAX_DEPTH:
            raise _Limit(None, None, f"nested more than {MAX_DEPTH} levels deep once aliases are expanded, "
                         f"expected at most {MAX_DEPTH}", mark)


_UniqueKeyLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE:
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    loader.flatten_mapping(node)  # `<<: *anchor` merges; keys written here win over merged ones
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _DuplicateJsonKey(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateJsonKey(key)
        out[key] = value
    return out


def _load_document(text: str, source: str = "spec") -> Any:
    """The document in *text*: JSON when it is JSON (spec.json, the effective spec), else YAML.

    JSON is read as JSON, not as the YAML it nearly is: YAML 1.1 reads `1e-05` as a string and a
    `\ud83d\ude00` escape pair as two lone surrogates, so spec.json did not load back as the same spec.
    """
    if text.lstrip().startswith("{"):
        try:
            return _within_depth(json.loads(text, object_pairs_hook=_json_object))
        except _DuplicateJsonKey as exc:
            raise SpecError([Problem("", f"not valid JSON: duplicate key {exc.args[0]!r}")]) from None
        except RecursionError:
            raise SpecError([Problem("", f"nested more than {MAX_DEPTH} levels deep, expected at most "
                                     f"{MAX_DEPTH}")]) from None
        except json.JSONDecodeError:
            pass  # a YAML flow mapping such as {name: x}
    loader = _UniqueKeyLoader(text, source)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _within_depth(document: Any) -> Any:
    """*document* (parsed JSON), unless nested deeper than MAX_DEPTH: checked without recursion."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise RecursionError
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return document


def _yaml_problem(exc: yaml.YAMLError, text: str, source: str) -> Problem:
    """One line for a YAML error: what is wrong, at file:line:column (PyYAML's own text takes 4-8 lines)."""
    if isinstance(exc, yaml.reader.ReaderError) and isinstance(exc.position, int):
        before = text[:exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        return Problem("", f"not valid YAML at {source}:{line}:{column}: got the character "
                       f"#x{exc.character:04x}, expected printable text (control characters must be escaped "
                       "in double quotes)")
    if not isinstance(exc, yaml.MarkedYAMLError) or not (exc.problem_mark or exc.context_mark):
        return Problem("", f"not valid YAML: {' '.join(str(exc).split())}")

    def where(mark) -> str:
        return f"{mark.name}:{mark.line + 1}:{mark.column + 1}"

    what = "over a limit" if isinstance(exc, _Limit) else "bad key" if isinstance(exc, _BadKey) else "not valid YAML"
    mark = exc.problem_mark or exc.context_mark
    text = f"{what} at {where(mark)}: {exc.problem or exc.context}"
    if exc.context and exc.problem and exc.context_mark:
        text += f" ({exc.context} at {exc.context_mark.line + 1}:{exc.context_mark.column + 1})"
    return Problem("", " ".join(text.split()))


def parse(text: str, source: str = "spec") -> Spec:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SPEC_BYTES:
        raise SpecError([_too_big(size)], source)
    try:
        document = _load_document(text, source)
    except SpecError as exc:
        raise SpecError(exc.problems, source) from None
    except yaml.YAMLError as exc:
        raise SpecError([_yaml_problem(exc, text, source)], source) from None
    if document is None:
        raise SpecError([Problem("", "the file holds no spec (it is empty or only comments), expected a mapping "
                                 "such as `name: my-image`; omit SPEC for the built-in default")], source)
    if not isinstance(document, dict):
        raise SpecError([Problem("", f"got {type(document).__name__}, expected a mapping at the top level")], source)
    return from_document(document, source, written=written_numbers(text, source))


def written_numbers(text: str, source: str = "spec") -> Written:
    """The text each number was written as in the spec *text*, by key path: YAML reads an unquoted
    `packer_version: 1.10` as the number 1.1, and the message should show what the file says. The text is
    composed again only when a problem asks (it already passed the input limits); None for a key path
    that holds no number or cannot be followed (a merge key, a renamed key)."""
    nodes: list[Any] = []

    def lookup(loc: tuple) -> str | None:
        if not nodes:
            loader = _UniqueKeyLoader(text, source)
            try:
                nodes.append(loader.get_single_node())
            except yaml.YAMLError:
                nodes.append(None)
            finally:
                loader.dispose()
        node = nodes[0]
        for part in loc:
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                node = next((value for key, value in node.value if key.value == part), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            else:
                return None
        if isinstance(node, yaml.ScalarNode) and node.tag.rsplit(":", 1)[-1] in ("int", "float"):
            return node.value
        return None
    return lookup


def _too_big(size: int | str) -> Problem:
    return Problem("", f"got {size} bytes, expected a spec of at most {MAX_SPEC_BYTES} bytes "
                   f"({MAX_SPEC_BYTES // 1024} KiB)")


def load(path: str | Path | None = None) -> Spec:
    """The spec at *path*, or the built-in default (the seed's tuned setup) when *path* is None."""
    if path is None:
        return from_document({}, "default spec", current=True)
    path = Path(path)
    try:
        with path.open("rb") as handle:  # read no more than the limit: a 50 MB file is refused at once
            data = handle.read(MAX_SPEC_BYTES + 1)
            if len(data) > MAX_SPEC_BYTES:
                try:
                    size: int | str = os.fstat(handle.fileno()).st_size or f"more than {MAX_SPEC_BYTES}"
                except OSError:
                    size = f"more than {MAX_SPEC_BYTES}"
                raise SpecError([_too_big(size)], str(path))
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([Problem("", f"cannot read {path}: {exc}")], str(path)) from None
    return parse(text, str(path))


#: What `imagebuild init` says of the spec it writes.
INIT_HEADER = (
    "# imagebuild spec, a starting point for today: containerd's long-term-support release on Debian 13, with",
    "# the sandbox image its own `config default` names; every other key is the built-in default.",
)


def init_document() -> dict:
    """The spec `imagebuild init` writes: the current apiVersion, image.os debian-13, containerd's LTS
    release (containerd.LTS_VERSION), and the pause image and config imports that release's own default
    config has. The empty spec stays what it was (the seed's setup, under imagebuild/v1)."""
    family = family_of(LTS_VERSION)
    table, key = KeyPaths(config_version_of(family)).sandbox
    default = reference_tree(family)
    pause: Any = default
    for part in (*table, key):
        pause = pause[part]
    return {"apiVersion": API_VERSION, "image": {"os": "debian-13"}, "containerd": {"version": LTS_VERSION},
            "config": {"sandbox_image": pause, "imports": default.get("imports", [])}}


def init_spec() -> Spec:
    """init_document() read as any spec is: what the file `imagebuild init` writes reads back as."""
    return from_document(init_document(), "imagebuild init", current=True)
