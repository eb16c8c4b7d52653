"""TLS only: a download over plain http:// is a spec error unless its artifact says `insecure: true`.

Over the validated document (defaults filled in), like the rules of :mod:`.rules`: the release
artifacts' url and checksum_url (a `{url}...` checksum_url follows its url) and image.base.source.
file:// URLs and absolute paths stay allowed where they were; image.sandbox.archive.url has no
http:// at all (its pattern allows https://, file:// and paths).
"""
from __future__ import annotations

from imagebuild.spec.fields import Problem, show

#: The release artifacts of containerd.install, by key.
ARTIFACTS = ("tarball", "runc", "cni_plugins")


def plain_http(url: str | None) -> bool:
    return bool(url) and url.lower().startswith("http://")  # type: ignore[union-attr]


def _plain_http(key: str, url: str, insecure_where: str) -> Problem:
    return Problem(key, f"got {show(url)}: plain HTTP, which anyone on the network path can read and change; "
                   f"expected an https:// or file:// URL, or insecure: true {insecure_where} (a lab mirror)")


def check_tls(doc: dict) -> list[Problem]:
    """Problems for every http:// download of an artifact not marked insecure."""
    problems: list[Problem] = []
    install = doc["containerd"]["install"]
    for name in ARTIFACTS:
        art = install.get(name)
        if not art or art.get("insecure"):
            continue
        for field in ("url", "checksum_url"):
            if plain_http(art.get(field)):
                problems.append(_plain_http(f"containerd.install.{name}.{field}", art[field],
                                            f"on containerd.install.{name} to allow http:// for this artifact"))
    for name, rt in doc["config"]["runtimes"].items():
        for index, file in enumerate(rt.get("install") or ()):
            if not file.get("insecure") and plain_http(file["url"]):
                problems.append(_plain_http(f"config.runtimes.{name}.install[{index}].url", file["url"],
                                            "on this file to allow http://"))
    base = doc["image"].get("base")
    if base and not base.get("insecure") and plain_http(base.get("source")):
        problems.append(Problem("image.base.source", f"got {show(base['source'])}: plain HTTP, which anyone on the "
                                "network path can read and change; expected an https:// or file:// URL or a path, "
                                "or image.base.insecure: true to allow http:// (a lab mirror)"))
    return problems
