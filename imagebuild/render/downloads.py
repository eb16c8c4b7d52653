"""Downloads, TLS only: the host's reads of checksum files (pinned into install.sh at render time) and the
protocols install.sh's curl may use.

A checksum_url is read once, on the host, when a spec is rendered or baked (:func:`pin`): the sha256 it
names for the artifact goes into install.sh and user-data, so a first boot checks the download against
the hash the render saw, never against a checksum file fetched that day from the same origin. The bake's
inputs hash reads the same pins (imagebuild.build.bake.resolved_artifacts). `--checksums-at-install`
(render, user-data, packer), or IMAGEBUILD_CHECKSUMS_AT_INSTALL=1 for a CI job or an offline host, leaves
the fetch to the install instead, as an explicit choice (a bake always pins: its inputs hash needs them).

Plain http:// is refused, for the URL and any redirect, unless the artifact says `insecure: true`
(imagebuild.spec.tls makes an http:// URL without it a spec error).
"""
from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from imagebuild.errors import ImagebuildError
from imagebuild.render import secret_refs
from imagebuild.spec.model import Spec

#: The key of each release artifact under containerd.install.
ARTIFACTS = ("tarball", "runc", "cni_plugins")
#: Set to 1: what --checksums-at-install does, for every render, user-data and packer command.
AT_INSTALL_ENV = "IMAGEBUILD_CHECKSUMS_AT_INSTALL"
#: install.sh's curl: seconds to connect, and how often a failed download is tried again.
CONNECT_TIMEOUT = 20
RETRIES = 5
#: ... and after how many seconds without a byte a transfer counts as failed (and is tried again).
STALL_SECONDS = 60


def artifacts(spec: Spec) -> list[tuple[str, Any]]:
    """(key, artifact) of every download a tarball install makes (none for a package install)."""
    install = spec.containerd.install
    if install.method != "tarball":
        return []
    return [(name, art) for name in ARTIFACTS if (art := getattr(install, name)) is not None]


def schemes(insecure: bool) -> tuple[str, ...]:
    """The URL schemes a host-side read and a redirect may use: https (and http when *insecure*)."""
    return ("http", "https") if insecure else ("https",)


class _TlsRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an allowed scheme: an https:// checksum file never comes over http://."""

    def __init__(self, allowed: tuple[str, ...]):
        self.allowed = allowed

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # the stdlib's signature
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in self.allowed:
            raise urllib.error.HTTPError(req.full_url, code, f"redirect to {scheme}:// refused ({newurl}); "
                                         f"allowed: {', '.join(s + '://' for s in self.allowed)}", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def open_url(url: str, *, insecure: bool = False, timeout: float = 60):
    """urlopen for downloads: https:// and file:// (http:// only when *insecure*); redirects to https://
    only (or http:// when *insecure*)."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in (*schemes(insecure), "file"):
        allowed = ", ".join(s + "://" for s in (*schemes(insecure), "file"))
        raise urllib.error.URLError(f"{scheme}:// is not allowed (allowed: {allowed}; http:// with insecure: true)")
    opener = urllib.request.build_opener(_TlsRedirects(schemes(insecure)))
    return opener.open(url, timeout=timeout)


def named_checksum(url: str, checksum_url: str | None, timeout: float = 60, *, insecure: bool = False) -> str:
    """The sha256 the checksum file at *checksum_url* gives for *url*'s file (a lone hash, or the
    `<hash>  <name>` line of that name, like sha256sum's output), read as install.sh reads it."""
    if not checksum_url:
        raise ImagebuildError(f"no sha256 and no checksum_url for {url}")
    try:
        with open_url(checksum_url, insecure=insecure, timeout=timeout) as response:
            text = response.read(1 << 20).decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        raise ImagebuildError(f"cannot read checksum_url {checksum_url}: {exc}") from None
    name = url.rsplit("/", 1)[-1]
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 1 or (len(fields) >= 2 and fields[1] in (name, "*" + name)):
            if re.fullmatch(r"[0-9a-f]{64}", fields[0]):
                return fields[0]
            break
    raise ImagebuildError(f"checksum_url {checksum_url} names no sha256 for {name}")


def pin(spec: Spec) -> Spec:
    """*spec* with the sha256 of every artifact given by checksum_url read now, once, and pinned (a copy;
    *spec* itself is left as it is). Already pinned artifacts are not read again.

    Raises ImagebuildError naming the key and the URL when this host cannot read one."""
    todo = [name for name, art in artifacts(spec) if not art.pinned_sha256]
    if not todo:
        return spec
    pinned = spec.model_copy(deep=True)
    install = pinned.containerd.install
    for name in todo:
        art = getattr(install, name)
        try:
            art._pinned = named_checksum(art.resolved_url, art.resolved_checksum_url, insecure=art.insecure)
        except ImagebuildError as exc:
            raise ImagebuildError(
                f"containerd.install.{name}.checksum_url: {exc}. The render reads it once and pins the sha256 "
                f"into install.sh and user-data; set containerd.install.{name}.sha256 to pin it in the spec, or "
                "render with --checksums-at-install to leave the fetch to the install (first boots then trust "
                "the checksum file served that day)") from None
    return pinned


def for_render(spec: Spec, *, at_install: bool = False) -> Spec:
    """What render, user-data, packer and verify --user-data render: *spec* pinned (:func:`pin`), or as it
    is when the checksum files are left to the install (*at_install*, or IMAGEBUILD_CHECKSUMS_AT_INSTALL=1);
    header values given as a file or env of this host read (render.secret_refs.stage)."""
    return secret_refs.stage(spec if at_install or os.environ.get(AT_INSTALL_ENV) == "1" else pin(spec))


def curl_protocols(art: Any) -> dict[str, str]:
    """install.sh's curl --proto and --proto-redir for *art*: `protocols` of the URLs it fetches."""
    return protocols(art.insecure, [art.resolved_url] + ([] if art.pinned_sha256 else [art.resolved_checksum_url]))


def protocols(insecure: bool, fetched: list[str | None]) -> dict[str, str]:
    """curl's --proto and --proto-redir for a download of the URLs *fetched*: https (and http when *insecure*),
    file for a file:// URL among them; redirects to https (and http when *insecure*) only."""
    allowed = set(schemes(insecure)) | ({"file"} if any((u or "").lower().startswith("file://") for u in fetched)
                                        else set())
    return {"proto": "=" + ",".join(sorted(allowed)), "redirect": "=" + ",".join(schemes(insecure))}


def runtime_files(spec: Spec) -> list[dict[str, str]]:
    """What install.sh downloads for config.runtimes (the files of each runtime's `install`), sha256 pinned in
    the spec: {"name", "url", "sha256", "path", "proto", "redirect"}, curl's protocols as for the artifacts."""
    return [{"name": file.path.rsplit("/", 1)[1], "url": file.url, "sha256": file.sha256, "path": file.path,
             **protocols(file.insecure, [file.url])}
            for runtime in spec.config.runtimes.values() for file in runtime.install]
