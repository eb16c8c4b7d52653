"""The spec's proxy (proxy:) for install.sh's own traffic: curl's downloads and apt, as for containerd's pulls.

containerd gets the proxy from its drop-in (http-proxy.conf, read by Go's ProxyFromEnvironment). install.sh
runs before containerd and fetches on its own: the release artifacts with curl, Debian packages with apt-get
(the system profile's tools, a package install). Both use the same proxy for that run:

- curl reads the exported `http_proxy`, `https_proxy` and `no_proxy` (curl ignores an upper-case HTTP_PROXY);
- apt-get is given `-o Acquire::http::Proxy=...` / `Acquire::https::Proxy=...`, so the spec's proxy wins over
  whatever proxy the node's own apt configuration names, and apt checks `no_proxy` after it (host and .domain
  entries, matched as suffixes).

`no_proxy` is the spec's entries plus loopback, which Go never proxies and curl would. Entry forms: host,
.domain and IP are honoured by containerd, curl and apt; a CIDR by containerd and curl; host:port by
containerd only. A `*` entry proxies nothing, so the install is given no proxy at all.

Nothing of this stays on the machine: the apt proxy is an option of the install's own apt-get runs, not an
apt.conf.d file. The spec's proxy section is about the node's container traffic; a persisted apt proxy would
redirect every later apt run on the node (and, baked into an image, carry the build site's proxy to every
machine booted from it).
"""
from __future__ import annotations

from imagebuild.spec.containerd import Proxy

#: What Go's ProxyFromEnvironment never proxies, said to curl and apt too.
LOOPBACK = ("localhost", "127.0.0.0/8", "::1")


def install_environment(proxy: Proxy) -> dict[str, str]:
    """The variables install.sh exports for curl and apt; empty when the spec sets no proxy (or `*`)."""
    if not (proxy.http or proxy.https) or "*" in proxy.no_proxy:
        return {}
    env = {"http_proxy": proxy.http, "https_proxy": proxy.https}
    out = {name: value for name, value in env.items() if value}
    out["no_proxy"] = ",".join((*proxy.no_proxy, *(entry for entry in LOOPBACK if entry not in proxy.no_proxy)))
    return out


def apt_options(proxy: Proxy) -> list[str]:
    """apt-get's `-o` values (without the -o) for the install's apt runs; empty without a proxy."""
    env = install_environment(proxy)
    return [f"Acquire::{scheme}::Proxy={env[f'{scheme}_proxy']}" for scheme in ("http", "https")
            if f"{scheme}_proxy" in env]
