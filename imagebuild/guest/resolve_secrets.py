#!/usr/bin/env python3
"""Write a registry's hosts.toml on the node from header values given by reference (imagebuild.render.secret_refs).

    resolve-secrets [--root DIR] DOCUMENT...

Each DOCUMENT (the payload's /etc/imagebuild/registry-secrets/<host>.json) holds the hosts.toml imagebuild
rendered, with a placeholder where each value goes, and where each value is: an SSM parameter (GetParameter,
WithDecryption: a SecureString is decrypted) or a Secrets Manager secret (GetSecretValue, its SecretString).
They are read with the instance's role, as an AWS SDK on EC2 does:

- an IMDSv2 session token (PUT /latest/api/token), the role's credentials (meta-data/iam/security-credentials/),
  the region (meta-data/placement/region); AWS_EC2_METADATA_SERVICE_ENDPOINT moves the metadata service;
- a POST of the JSON 1.1 protocol signed with Signature Version 4 to https://<service>.<region>.amazonaws.com,
  or to AWS_ENDPOINT_URL_SSM / AWS_ENDPOINT_URL_SECRETSMANAGER / AWS_ENDPOINT_URL when set (as the SDKs read them).

The file is then written atomically, 0600 (root's, as the install runs), and its path printed; a file already
so is left alone and nothing printed. Any failure names the spec key, the reference and the reason, writes
nothing and exits 1. No value is ever printed.

Standard library only (it runs on the node's python3, cloud-init's): it cannot use tomlkit, so it writes the
one thing of TOML it must, a value as a basic string (:func:`toml_string`: every character TOML requires
escaped is); the rest of the file is the text imagebuild rendered with tomlkit.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import hmac
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

PROG = "imagebuild-resolve-secrets"
IMDS = "http://169.254.169.254"
TIMEOUT = 5
ATTEMPTS = 3
#: The service's signing name, its JSON 1.1 target, the request and where the value is in the answer.
CALLS = {
    "ssm": ("ssm", "AmazonSSM.GetParameter", lambda name: {"Name": name, "WithDecryption": True},
            lambda answer: (answer.get("Parameter") or {}).get("Value")),
    "secretsmanager": ("secretsmanager", "secretsmanager.GetSecretValue", lambda name: {"SecretId": name},
                       lambda answer: answer.get("SecretString")),
}
WHAT = {"ssm": "SSM parameter", "secretsmanager": "Secrets Manager secret"}
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


class ResolveError(Exception):
    """A value that could not be read, in words (never the value)."""


def toml_string(value: str) -> str:
    """*value* as a TOML basic string: `"` and `\\` escaped, every control character (U+0000-U+001F, U+007F)
    escaped, everything else as is (TOML 1.0, "Basic strings")."""
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        elif 0xD800 <= ord(char) <= 0xDFFF:
            raise ResolveError("the value holds a lone UTF-16 surrogate, which is not text")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _open(request: urllib.request.Request):
    return urllib.request.urlopen(request, timeout=TIMEOUT)


class Metadata:
    """The instance metadata service, IMDSv2 (a session token on every request)."""

    def __init__(self, environ: dict) -> None:
        self.base = (environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS).rstrip("/")
        self.token = self._token()

    def _token(self) -> str:
        request = urllib.request.Request(f"{self.base}/latest/api/token", method="PUT",
                                         headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
        last = ""
        for attempt in range(ATTEMPTS):
            try:
                with _open(request) as answer:
                    return answer.read().decode()
            except urllib.error.HTTPError as exc:
                raise ResolveError(f"the instance metadata service refused a session token (HTTP {exc.code})") \
                    from None
            except OSError as exc:
                last = str(getattr(exc, "reason", exc))
                time.sleep(0.5 * (attempt + 1))
        raise ResolveError(f"the instance metadata service at {self.base} cannot be reached: {last}")

    def get(self, path: str) -> str | None:
        """The text at meta-data *path*; None when the service has none (404)."""
        request = urllib.request.Request(f"{self.base}/latest/meta-data/{path}",
                                         headers={"X-aws-ec2-metadata-token": self.token})
        try:
            with _open(request) as answer:
                return answer.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise ResolveError(f"the instance metadata service answered HTTP {exc.code} for {path}") from None
        except OSError as exc:
            raise ResolveError(f"the instance metadata service failed for {path}: "
                               f"{getattr(exc, 'reason', exc)}") from None

    def credentials(self) -> dict:
        roles = (self.get("iam/security-credentials/") or "").split()
        if not roles:
            raise ResolveError("the instance metadata service gives no role credentials "
                               "(iam/security-credentials/ is empty: the instance has no instance profile)")
        text = self.get(f"iam/security-credentials/{roles[0]}")
        try:
            creds = json.loads(text or "")
        except ValueError:
            creds = {}
        if creds.get("Code", "Success") != "Success" or not creds.get("AccessKeyId") \
                or not creds.get("SecretAccessKey"):
            raise ResolveError(f"the instance metadata service gives no usable credentials for the role {roles[0]} "
                               f"(Code {creds.get('Code', 'missing')!r})")
        return creds

    def region(self) -> str:
        region = (self.get("placement/region") or "").strip()
        if not region:
            raise ResolveError("the instance metadata service gives no region (placement/region)")
        return region


def endpoint(service: str, region: str, environ: dict) -> str:
    """The service's URL: AWS_ENDPOINT_URL_<SERVICE>, else AWS_ENDPOINT_URL, else AWS's regional endpoint."""
    return (environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or environ.get("AWS_ENDPOINT_URL")
            or f"https://{service}.{region}.amazonaws.com")


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signed_headers(url: str, region: str, service: str, target: str, body: bytes, creds: dict,
                   now: datetime.datetime) -> dict:
    """The headers of a JSON 1.1 POST to *url*, signed with Signature Version 4."""
    parts = urllib.parse.urlsplit(url)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    headers = {"content-type": "application/x-amz-json-1.1", "host": parts.netloc, "x-amz-date": stamp,
               "x-amz-target": target}
    if creds.get("Token"):
        headers["x-amz-security-token"] = creds["Token"]
    names = sorted(headers)
    canonical = "\n".join(["POST", parts.path or "/", "", *(f"{n}:{headers[n].strip()}" for n in names), "",
                           ";".join(names), hashlib.sha256(body).hexdigest()])
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(("AWS4" + creds["SecretAccessKey"]).encode(), stamp[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds['AccessKeyId']}/{scope}, "
                                f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return headers


def _error_of(exc: urllib.error.HTTPError) -> str:
    """AWS's error code and message: JSON (`__type`, `message`), or the XML some front ends answer with."""
    raw = exc.read() or b""
    try:
        answer = json.loads(raw or b"{}")
    except ValueError:
        text = raw.decode("utf-8", "replace")
        answer = {key: m.group(1) for key in ("Code", "Message") if (m := re.search(f"<{key}>([^<]*)</{key}>", text))}
    if not isinstance(answer, dict):
        answer = {}
    kind = str(answer.get("__type") or answer.get("Code") or exc.headers.get("x-amzn-ErrorType")
               or f"HTTP {exc.code}").rsplit("#", 1)[-1].split(":")[0]
    message = answer.get("message") or answer.get("Message") or ""
    return f"{kind} (HTTP {exc.code}): {message}" if message else f"{kind} (HTTP {exc.code})"


def read_value(source: str, name: str, region: str, creds: dict, environ: dict) -> str:
    """The value of *source* (ssm, secretsmanager) *name*, read with *creds*."""
    if source not in CALLS:
        raise ResolveError(f"unknown source {source!r}")
    service, target, request_of, value_of = CALLS[source]
    url = endpoint(service, region, environ)
    body = json.dumps(request_of(name)).encode()
    last = ""
    for attempt in range(ATTEMPTS):
        now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 - old pythons on old images
        headers = signed_headers(url, region, service, target, body, creds, now)
        request = urllib.request.Request(url, data=body, method="POST", headers=headers)
        try:
            with _open(request) as answer:
                value = value_of(json.loads(answer.read()))
            if not isinstance(value, str):
                raise ResolveError("the answer holds no text value (a Secrets Manager secret must be a "
                                   "SecretString, not a SecretBinary)")
            return value
        except urllib.error.HTTPError as exc:
            last = _error_of(exc)
            if exc.code < 500 and "Throttl" not in last:
                break
        except (OSError, ValueError) as exc:
            last = f"{url} cannot be reached: {getattr(exc, 'reason', exc)}"
        time.sleep(0.5 * (attempt + 1))
    raise ResolveError(last)


def fill(template: str, values: list[dict], texts: list[str]) -> str:
    """*template* with each value's placeholder (as the rendered TOML writes it) replaced by its text, as a
    TOML basic string. Each placeholder must be there exactly once."""
    out = template
    for entry, text in zip(values, texts, strict=True):
        if template.count(entry["placeholder"]) != 1:
            raise ResolveError(f"{entry['key']}: its placeholder is {template.count(entry['placeholder'])} times "
                               "in the rendered hosts.toml, expected once")
        out = out.replace(entry["placeholder"], toml_string(text))
    return out


def write(root: str, path: str, text: str, mode: int = 0o600) -> bool:
    """Write *text* to *root*/*path* atomically with *mode*; False when it is already so. A different file there
    is kept as <path>.imagebuild-backup, as install.sh keeps a file it replaces."""
    target = os.path.join(root, path.lstrip("/"))
    data = text.encode()
    try:
        with open(target, "rb") as handle:
            if handle.read() == data and (os.stat(target).st_mode & 0o7777) == mode:
                return False
        shutil.copy2(target, target + ".imagebuild-backup")
    except FileNotFoundError:
        pass
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".hosts.toml.", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


def resolve(document: dict, root: str, environ: dict, context: dict) -> bool:
    """Write the hosts.toml *document* describes; *context* keeps the metadata answers across documents."""
    texts = []
    for entry in document["values"]:
        where = f"{entry['key']}: {WHAT.get(entry['source'], entry['source'])} {entry['name']}"
        try:
            if "creds" not in context:
                metadata = Metadata(environ)
                context["creds"], context["region"] = metadata.credentials(), metadata.region()
            texts.append(entry["prefix"] + read_value(entry["source"], entry["name"], context["region"],
                                                      context["creds"], environ))
        except ResolveError as exc:
            raise ResolveError(f"{where}: {exc}") from None
    return write(root, document["path"], fill(document["template"], document["values"], texts),
                 int(document["mode"], 8))


def main(argv: list[str] | None = None, environ: dict | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="/", help="write under this directory instead of / (a scratch root)")
    parser.add_argument("documents", nargs="+", help="the payload's registry-secrets/<host>.json")
    args = parser.parse_args(argv)
    environ = dict(os.environ if environ is None else environ)
    context: dict = {}
    for name in args.documents:
        try:
            with open(name, encoding="utf-8") as handle:
                document = json.load(handle)
            if resolve(document, args.root, environ, context):
                print(document["path"])
        except ResolveError as exc:
            print(f"{PROG}: ERROR: {exc}; {document['path']} was not written", file=sys.stderr)
            return 1
        except (OSError, ValueError, KeyError) as exc:
            print(f"{PROG}: ERROR: {name}: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
