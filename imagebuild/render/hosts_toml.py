"""certs.d/<host>/hosts.toml: one file per registry, mirrors tried in the order the spec lists them.

An endpoint with `path` set is written with its API root in the URL and `override_path = true`, so
containerd requests exactly <API root>/<repo>/manifests/<ref> (a prefix mirror: /v2/<prefix>/...).
A header value the node reads (imagebuild.render.secret_refs) is written as the placeholder it is given.
"""
from __future__ import annotations

import tomlkit

from imagebuild.errors import ImagebuildError
from imagebuild.render.toml_items import dumps, item
from imagebuild.spec.containerd import Mirror

HEADER = "Managed by imagebuild. Hosts are tried in file order, then the server."


def render(mirror: Mirror, placeholders: dict[tuple[int, str], str] | None = None) -> str:
    """The hosts.toml of *mirror*; *placeholders*: (endpoint index, header name) -> the string written for a
    header value given by reference."""
    placeholders = placeholders or {}
    doc = tomlkit.document()
    doc.add(tomlkit.comment(HEADER))
    doc["server"] = item(mirror.upstream)
    hosts = tomlkit.table(is_super_table=True)
    for index, ep in enumerate(mirror.endpoints):
        url, override_path = ep.hosts_entry
        host = tomlkit.table()
        host["capabilities"] = item(list(ep.capabilities))
        if override_path:
            host["override_path"] = item(True)
        if ep.skip_verify:
            host["skip_verify"] = item(True)
        if ep.ca:
            host["ca"] = item(ep.ca)
        if ep.headers:
            headers = tomlkit.table()
            for name, value in ep.headers.items():
                if not isinstance(value, str) and (index, name) not in placeholders:
                    raise ImagebuildError(f"{mirror.host}: header {name} is given by reference ({value.describe()}) "
                                          "and was not read: render the spec staged (render.secret_refs.stage)")
                headers[name] = item([value if isinstance(value, str) else placeholders[(index, name)]])
            host["header"] = headers
        hosts[url] = host
    doc["host"] = hosts
    return dumps(doc)
