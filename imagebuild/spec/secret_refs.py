"""A registry header's value given by reference: where the secret is, never the secret.

    headers:
      Authorization: {ssm: /team/registry-token, prefix: "Bearer "}

Exactly one source key names it:

- `ssm`: an SSM parameter (a SecureString is decrypted), and `secretsmanager`: a Secrets Manager secret's
  SecretString. Resolved on the node at install time with the instance's role (imagebuild/guest/
  resolve_secrets.py): the value is in no output, only in that registry's hosts.toml (0600) on the node.
- `file` (an absolute path) and `env` (a variable name): read on the build host when the spec is rendered or
  baked (imagebuild.render.secret_refs.stage); the value then travels as a literal secret does (0600 outputs,
  user-data only with --accept-secret-in-metadata), while spec.json and the manifest record the reference.

`prefix` goes before the value (`Bearer `). The bottom of a header's type: imagebuild.spec.containerd uses it.
"""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, PlainValidator, ValidationError, WithJsonSchema, model_validator

from imagebuild.spec.fields import ABS_PATH, ABS_PATH_ALLOWED, ALLOWED, Section, Text, _error, _printable, show

#: Where each source is resolved.
NODE_SOURCES = ("ssm", "secretsmanager")
BUILD_SOURCES = ("file", "env")
SOURCES = NODE_SOURCES + BUILD_SOURCES

SSM_PARAMETER = (r"^(/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*"
                 r"|arn:aws[a-z-]*:ssm:[a-z0-9-]+:[0-9]{12}:parameter/[A-Za-z0-9_./-]+)$")
SECRET_ID = (r"^([A-Za-z0-9/_+=.@-]{1,512}"
             r"|arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+)$")
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class SecretRef(Section):
    """a header value given by reference: exactly one of ssm, secretsmanager, file, env"""

    ssm: Annotated[str, Text(SSM_PARAMETER, "an SSM parameter name (/team/token) or ARN")] | None = Field(
        None, description="SSM parameter (a SecureString is decrypted), read on the node at install time with "
        "the instance's role (ssm:GetParameter, and kms:Decrypt for a customer-managed key)")
    secretsmanager: Annotated[str, Text(SECRET_ID, "a Secrets Manager secret name or ARN")] | None = Field(
        None, description="Secrets Manager secret (its SecretString), read on the node at install time with the "
        "instance's role (secretsmanager:GetSecretValue)")
    file: Annotated[str, Text(ABS_PATH, ABS_PATH_ALLOWED)] | None = Field(
        None, description="file on the build host, read at render/bake time (one trailing newline dropped)")
    env: Annotated[str, Text(ENV_NAME, "an environment variable name")] | None = Field(
        None, description="environment variable on the build host, read at render/bake time")
    prefix: Annotated[str, Text()] = Field("", description="text put before the value, e.g. `Bearer `")

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        given = [name for name in SOURCES if getattr(self, name) is not None]
        if len(given) != 1:
            raise _error(f"got {'the sources ' + ', '.join(given) if given else 'no source'}, expected exactly one "
                         f"of {', '.join(SOURCES)} (with an optional prefix)")
        return self

    @property
    def source(self) -> str:
        return next(name for name in SOURCES if getattr(self, name) is not None)

    @property
    def name(self) -> str:
        return str(getattr(self, self.source))

    @property
    def on_node(self) -> bool:
        return self.source in NODE_SOURCES

    def describe(self) -> str:
        """The reference in words (never a value): `SSM parameter /team/token`."""
        what = {"ssm": "SSM parameter", "secretsmanager": "Secrets Manager secret", "file": "file",
                "env": "environment variable"}[self.source]
        return f"{what} {self.name}"


def _loc(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def _ref_problem(error: Any) -> tuple[str, str]:
    """One error of SecretRef as (sub-path, message): the spec's one-line form (key path, value, allowed)."""
    loc, kind, value, ctx = tuple(error["loc"]), error["type"], error.get("input"), error.get("ctx") or {}
    path = _loc(loc)
    if kind == "imagebuild":
        return path, ctx["message"]
    if kind == "extra_forbidden":
        return path, f"unknown key; allowed keys: {', '.join(SecretRef.model_fields)}"
    if kind == "string_pattern_mismatch":
        return path, f"got {show(value)}, expected {ALLOWED.get(ctx['pattern'], 'text')}"
    if kind == "string_type":
        return path, f"got {show(value)}, expected a string"
    return path, f"got {show(value)}: {error['msg']}"


def _header_value(value: Any) -> str | SecretRef:
    if isinstance(value, str):
        return _printable(value)
    if isinstance(value, SecretRef):
        return value
    if not isinstance(value, dict):
        raise _error(f"got {show(value)}, expected a string (the value) or a mapping naming its source: "
                     f"{{ssm|secretsmanager|file|env: NAME, prefix: TEXT}}")
    try:
        return SecretRef.model_validate(value)
    except ValidationError as exc:
        problems = [_ref_problem(e) for e in exc.errors(include_url=False)]
        if len(problems) == 1 and not problems[0][0]:  # the rule of the whole mapping (one source)
            raise _error(problems[0][1]) from None
        raise _error("; ".join(m for _, m in problems), problems=[(p.lstrip("."), m) for p, m in problems]) from None


_REF_SCHEMA = {"type": "object", "additionalProperties": False, "minProperties": 1,
               "properties": {"ssm": {"type": "string", "pattern": SSM_PARAMETER},
                              "secretsmanager": {"type": "string", "pattern": SECRET_ID},
                              "file": {"type": "string", "pattern": ABS_PATH},
                              "env": {"type": "string", "pattern": ENV_NAME}, "prefix": {"type": "string"}}}

#: A header's value: the value itself (a literal secret), or a SecretRef naming where it is.
HeaderValue = Annotated[str | SecretRef, PlainValidator(_header_value),
                        WithJsonSchema({"oneOf": [{"type": "string"}, _REF_SCHEMA]})]
