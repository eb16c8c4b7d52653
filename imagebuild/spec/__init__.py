"""The spec: declared once as a typed model, read and validated once.

- :mod:`.fields`          the value types every key is made of (text, keys, ints, patterns), and Problem
- :mod:`.tables`          what the model knows by name: OS releases, profiles, seed mirrors, renamed keys
- :mod:`.model`           the model's sections, from `Spec` down
- :mod:`.problems`        pydantic's errors as one line each (key path, bad value, what is allowed); the schema
- :mod:`.containerd_keys` where containerd's keys sit in each family's own default config
- :mod:`.rules`           the rules that span keys
- :mod:`.load`            YAML/JSON in, within input limits, through older spec versions, to a `Spec`

Consumers import the names below from here; renderers take a `Spec` and nothing else.
"""
from __future__ import annotations

from imagebuild.spec.containerd import (
    Artifact,
    Config,
    Containerd,
    Endpoint,
    Install,
    Mirror,
    Package,
    Proxy,
    Registry,
    Runtime,
    Unit,
    api_root,
    family_of,
    supported_versions,
)
from imagebuild.spec.fields import API_VERSION, API_VERSIONS, RENAMES, Problem, show
from imagebuild.spec.load import MAX_DEPTH, MAX_SPEC_BYTES, SpecError, from_document, load, parse, upgrade
from imagebuild.spec.model import PROFILES, Aws, BaseImage, Check, Image, Spec, System, Verify
from imagebuild.spec.problems import plain, problems_of

__all__ = [
    "API_VERSION", "API_VERSIONS", "MAX_DEPTH", "MAX_SPEC_BYTES", "PROFILES", "RENAMES", "Artifact", "Aws",
    "BaseImage", "Check", "Config", "Containerd", "Endpoint", "Image", "Install", "Mirror", "Package", "Problem",
    "Proxy", "Registry", "Runtime", "Spec", "SpecError", "System", "Unit", "Verify", "api_root", "family_of",
    "from_document", "load", "parse", "plain", "problems_of", "show", "supported_versions", "upgrade",
]
