"""cloud-init user-data: the same payload and install script as the Packer build, as #cloud-config.

Every payload file travels through write_files into the staging directory (never straight into
/etc, where a package's own conffile could collide with it); runcmd runs the install script, which
moves them into place. Past EC2's 16 KB the document is gzipped (cloud-init un-gzips it itself).
"""
from __future__ import annotations

import base64
import gzip
from collections.abc import Iterable
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import TYPE_CHECKING

import yaml

from imagebuild.errors import ImagebuildError
from imagebuild.render.templating import shipped_dir

EC2_LIMIT = 16 * 1024


if TYPE_CHECKING:
    _SafeDumper = yaml.SafeDumper
else:   # libyaml's when present
    _SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Dumper(_SafeDumper):
    """Multi-line strings as literal blocks, so the user-data stays readable (libyaml when present)."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(document: dict) -> str:
    return "#cloud-config\n" + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=4096,
                                          default_flow_style=False, allow_unicode=False)


def base_document() -> dict:
    return yaml.safe_load((shipped_dir("cloud-init") / "user-data.yaml").read_text())


def cloud_config(guest_files: Iterable[tuple[str, bytes, int]], commands: list[list[str]],
                 bootcmd: list[list[str]] | None = None) -> str:
    """#cloud-config writing *guest_files* (guest path, content, mode), then running *commands*; *bootcmd*: run
    first, in cloud-init's init stage (before network-online.target)."""
    doc = base_document()
    if bootcmd:
        doc["bootcmd"] = list(doc.get("bootcmd") or []) + bootcmd
    doc["write_files"] = list(doc.get("write_files") or [])
    for path, content, mode in guest_files:
        entry = {"path": path, "owner": "root:root", "permissions": f"{mode:04o}"}
        try:
            text = content.decode("utf-8")
            if "\r" in text or "\x00" in text:
                raise UnicodeDecodeError("utf-8", content, 0, 1, "control characters")
            entry["content"] = text
        except UnicodeDecodeError:
            entry["encoding"] = "b64"
            entry["content"] = base64.b64encode(content).decode()
        doc["write_files"].append(entry)
    doc["runcmd"] = list(doc.get("runcmd") or []) + commands
    return dump(doc)


def fit(raw: bytes, *, limit: int = EC2_LIMIT) -> bytes:
    """The user-data as EC2 will take it: raw when it fits, else gzipped, else a clear error."""
    if len(raw) <= limit:
        return raw
    packed = gzip.compress(raw, compresslevel=9, mtime=0)
    if len(packed) > limit:
        raise ImagebuildError(f"user-data is {len(raw)} bytes raw and {len(packed)} gzipped, over EC2's "
                              f"{limit}-byte limit; trim config.overrides or the mirrors, or bake an image instead")
    return packed


def mime(cloud_config_text: str) -> bytes:
    """A multipart/mixed message with one text/cloud-config part, for merging with other parts."""
    message = MIMEMultipart(boundary="==imagebuild-boundary==")
    # dump() escapes non-ASCII, so the part is 7bit text: a utf-8 part would be base64 (a third
    # larger, and base64 barely gzips: the default spec no longer fitted EC2's limit).
    charset = "us-ascii" if cloud_config_text.isascii() else "utf-8"
    part = MIMEText(cloud_config_text, "cloud-config", charset)
    part.add_header("Content-Disposition", 'attachment; filename="imagebuild.cfg"')
    message.attach(part)
    return message.as_bytes()
