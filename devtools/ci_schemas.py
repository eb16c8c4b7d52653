"""The CI engines' published JSON schemas, as check-jsonschema vendors them, from its wheel on the package index.

GitLab publishes the JSON schema of .gitlab-ci.yml (the one its pipeline editor uses); check-jsonschema ships
a copy (vendor/gitlab-ci.json, and SchemaStore's github-workflows.json) with each copy's sha256 beside it.
`pip download` brings that wheel (CHECK_JSONSCHEMA_VERSION, pinned) once into `paths.cache_dir("upstream")`;
the schema is read from the wheel and checked against the sha256 the wheel carries. Validation is
jsonschema's (draft 7, as the schemas declare), the library the spec's own schema tests use.
"""
from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs; the tests use it the same way

from imagebuild.errors import ImagebuildError
from imagebuild.paths import cache_dir
from imagebuild.progress import step
from imagebuild.run import locked, run

CHECK_JSONSCHEMA_VERSION = "0.39.0"
SCHEMAS = ("gitlab-ci", "github-workflows")


def _wheel(version: str = CHECK_JSONSCHEMA_VERSION) -> Path:
    """The check-jsonschema wheel of *version*, downloaded once into the cache (under a lock)."""
    target = cache_dir("upstream") / f"check-jsonschema-{version}"
    with locked(target.with_name(f".{target.name}.lock"), waiting="waiting for another download of check-jsonschema"):
        wheels = sorted(target.glob("check_jsonschema-*.whl"))
        if not wheels:
            step(f"downloading check-jsonschema {version} (its vendored CI schemas) with pip (once; cached)")
            run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(target),
                 f"check-jsonschema=={version}"], what=f"pip download check-jsonschema {version}", timeout=600)
            wheels = sorted(target.glob("check_jsonschema-*.whl"))
    if not wheels:
        raise ImagebuildError(f"pip download left no check-jsonschema wheel in {target}")
    return wheels[0]


def schema(name: str) -> dict[str, Any]:
    """The vendored schema *name* (SCHEMAS), checked against the sha256 its wheel records."""
    with zipfile.ZipFile(_wheel()) as wheel:
        data = wheel.read(f"check_jsonschema/builtin_schemas/vendor/{name}.json")
        recorded = wheel.read(f"check_jsonschema/builtin_schemas/vendor/sha256/{name}.sha256").decode().strip()
    if hashlib.sha256(data).hexdigest() != recorded:
        raise ImagebuildError(f"the vendored {name} schema does not match its recorded sha256")
    return json.loads(data)


def problems(name: str, document: Any) -> list[str]:
    """Every way *document* breaks schema *name*: one line each (the path in the document, the message)."""
    validator = jsonschema.Draft7Validator(schema(name))
    return [f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
            for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))]
