"""The spec's schema: one table that drives validation, defaults, `imagebuild schema` and `init`.

Every key is declared once here with its type, default, limits and a one-line description.
`validate()` walks a parsed YAML document against it and returns the document with defaults
filled in plus one `Problem` per violation (key path, bad value, what is allowed).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

# Strings that end up in files or shell commands must be printable, single-line text.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# The same, for text that may span lines (a shell script): newline and tab are allowed.
CONTROL_CHARS_MULTILINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Words YAML 1.1 read as booleans; the spec is read with YAML 1.2's (true/false only), so they are text.
YAML11_BOOLEANS = {"y", "yes", "n", "no", "on", "off"}
# Half of a UTF-16 surrogate pair (YAML and JSON both let "\ud800" through): not a character,
# and no file can hold it (UTF-8 refuses to encode it).
SURROGATES = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<spec>'}: {self.message}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- schema constructors (plain JSON Schema dicts, with our few extensions) ----------------

def string(doc: str, default: Any = None, *, pattern: str | None = None, enum: list[str] | None = None,
           allowed: str | None = None, nullable: bool = False) -> dict:
    node: dict[str, Any] = {"type": ["string", "null"] if nullable else "string", "description": doc}
    if pattern:
        node["pattern"] = pattern
    if enum:
        node["enum"] = enum + ([None] if nullable else [])
    if allowed:
        node["x-allowed"] = allowed
    node["default"] = default
    return node


def integer(doc: str, default: Any, *, minimum: int | None = None, maximum: int | None = None) -> dict:
    node: dict[str, Any] = {"type": "integer", "description": doc, "default": default}
    if minimum is not None:
        node["minimum"] = minimum
    if maximum is not None:
        node["maximum"] = maximum
    return node


def boolean(doc: str, default: bool) -> dict:
    return {"type": "boolean", "description": doc, "default": default}


def array(doc: str, items: dict, default: list | None = None, *, unique: bool = False) -> dict:
    node = {"type": "array", "description": doc, "items": items, "default": default or []}
    if unique:
        node["uniqueItems"] = True
    return node


def mapping(doc: str, values: dict, default: dict | None = None, *, key_pattern: str | None = None,
            key_allowed: str | None = None) -> dict:
    node: dict[str, Any] = {"type": "object", "description": doc, "additionalProperties": values,
                            "default": default or {}}
    if key_pattern:
        node["propertyNames"] = {"pattern": key_pattern}
        node["x-key-allowed"] = key_allowed or f"keys matching {key_pattern}"
    return node


def obj(doc: str, properties: dict[str, dict], *, required: list[str] | None = None,
        nullable: bool = False) -> dict:
    node: dict[str, Any] = {"type": ["object", "null"] if nullable else "object", "description": doc,
                            "properties": properties, "additionalProperties": False}
    if required:
        node["required"] = required
    if nullable:
        node["default"] = None
    return node


ANY_TOML = {"description": "free-form TOML value"}


def unit_limit(doc: str) -> dict:
    """A systemd limit: `infinity` or a number, written as YAML text or as a YAML number."""
    return {"type": ["string", "integer"], "description": doc + " infinity or a number", "pattern": UNIT_LIMIT,
            "x-allowed": "infinity or a number", "minimum": 0, "maximum": (1 << 63) - 1, "default": "infinity"}

# --- patterns ---------------------------------------------------------------------------------

ABS_PATH = r"^/[A-Za-z0-9._/+@-]*$"
ABS_PATH_ALLOWED = "an absolute path of letters, digits and ._/+@-"
ABS_GLOB = r"^/[A-Za-z0-9._/+@*-]*$"
HOSTNAME = r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$"
HTTP_URL = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%/+@=-]*)?$"
URL_TEMPLATE = r"^(https?|file)://[A-Za-z0-9.:-]*(/[A-Za-z0-9._~%/+@={}-]*)?$"
CHECKSUM_URL = r"^(\{url\}[A-Za-z0-9._-]*|(https?|file)://[A-Za-z0-9.:-]*(/[A-Za-z0-9._~%/+@={}-]*)?)$"
# An image reference as containerd parses it (distribution/reference): an optional registry host
# (a name with a dot or a port, or localhost), lowercase repository path components, a tag, a digest.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REGISTRY = r"(?:(?:[A-Za-z0-9-]+\.)+[A-Za-z0-9-]+(?::[0-9]+)?|[A-Za-z0-9-]+:[0-9]+|localhost)"
IMAGE_REF = (rf"^(?:{_REGISTRY}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
             r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$")
SHA256 = r"^[0-9a-f]{64}$"
NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
VERSION = r"^[0-9]+\.[0-9]+\.[0-9]+$"
UNIT_LIMIT = r"^(infinity|[0-9]+)$"
MODULE = r"^[a-z0-9_-]+$"
SYSCTL = r"^[a-z0-9_]+(\.[A-Za-z0-9_-]+)+$"
RUNTIME_NAME = r"^[A-Za-z0-9_-]+$"
HEADER_NAME = r"^[A-Za-z0-9-]+$"
AWS_REGION = r"^[a-z]{2}(-[a-z]+)+-[0-9]$"
AWS_ACCOUNT = r"^[0-9]{12}$"
SSM_NAME = r"^/[A-Za-z0-9_./-]+$"
TAG_TEXT = r"^[A-Za-z0-9 _.:/=+@-]*$"
KMS_KEY_ARN = r"^arn:aws[a-z-]*:kms:[a-z]{2}(-[a-z]+)+-[0-9]:[0-9]{12}:key/[A-Za-z0-9-]{1,128}$"
ORG_ARN = r"^arn:aws[a-z-]*:organizations::[0-9]{12}:organization/o-[a-z0-9]{10,32}$"
OU_ARN = r"^arn:aws[a-z-]*:organizations::[0-9]{12}:ou/o-[a-z0-9]{10,32}/ou-[0-9a-z]{4,32}-[0-9a-z]{8,32}$"
CHECK_NAME = r"^[a-z0-9][a-z0-9_.-]*$"
SYSTEMD_UNIT = r"^[A-Za-z0-9@._-]+\.(target|service|socket|mount|path)$"
PACKAGE_VERSION = r"^[A-Za-z0-9.+~:-]+$"
NO_PROXY_ENTRY = r"^(\*|\.?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?|[0-9a-fA-F:.]+(/[0-9]{1,3})?)$"

GITHUB = "https://github.com"
DEFAULT_CONTAINERD_URL = (GITHUB + "/containerd/containerd/releases/download/v{version}/"
                          "containerd-{version}-linux-amd64.tar.gz")
DEFAULT_RUNC_URL = GITHUB + "/opencontainers/runc/releases/download/v{version}/runc.amd64"
DEFAULT_CNI_URL = (GITHUB + "/containernetworking/plugins/releases/download/v{version}/"
                   "cni-plugins-linux-amd64-v{version}.tgz")


def artifact(doc: str, url: str, checksum_url: str | None, *, version: str | None = None,
             extra: dict | None = None, nullable: bool = False) -> dict:
    props = {}
    if version is not None:
        props["version"] = string("upstream version, substituted for {version} in the URLs", version,
                                  pattern=VERSION, allowed="a version like 1.2.3")
    props |= {
        "url": string("download URL; {version} is replaced", url, pattern=URL_TEMPLATE,
                      allowed="an http(s):// or file:// URL"),
        "sha256": string("expected sha256 of the download (64 hex digits); pins the artifact",
                         None, pattern=SHA256, allowed="64 lowercase hex digits", nullable=True),
        "checksum_url": string("URL of a published checksum file, used when sha256 is not pinned",
                               checksum_url, pattern=CHECKSUM_URL,
                               allowed="an http(s):// or file:// URL, or {url} plus a suffix",
                               nullable=True),
    }
    props |= extra or {}
    return obj(doc, props, nullable=nullable)


ENDPOINT = obj("one mirror endpoint, tried in list order", {
    "url": string("endpoint URL; a path in it needs `path` to say what it is", None, pattern=HTTP_URL,
                  allowed="an http(s):// URL without query or fragment"),
    "path": string("what the URL's path is. prefix: a repository prefix, pulls request "
                   "/v2/<path>/<repo>/manifests/<ref>; api-root: the registry API root itself (it holds /v2), "
                   "pulls request <path>/<repo>/manifests/<ref>. Required when the URL has a path",
                   None, enum=["prefix", "api-root"], nullable=True),
    "capabilities": array("operations this host may serve", string("capability", None, enum=["pull", "resolve", "push"]),
                          ["pull", "resolve"], unique=True),
    "override_path": boolean("deprecated, use path: api-root (containerd's hosts.toml override_path)", False),
    "ca": string("path of a CA certificate on the node", None, pattern=ABS_PATH, allowed=ABS_PATH_ALLOWED,
                 nullable=True),
    "skip_verify": boolean("skip TLS verification for this endpoint", False),
    "headers": mapping("HTTP headers sent to this endpoint", string("header value", None),
                       key_pattern=HEADER_NAME, key_allowed="header names of letters, digits and -"),
}, required=["url"])

MIRROR = obj("a registry and its mirrors; written as certs.d/<host>/hosts.toml", {
    "host": string("registry host name, as in image references", None, pattern=HOSTNAME,
                   allowed="a host name, optionally with :port"),
    "server": string("upstream server; default https://<host> (registry-1.docker.io for docker.io)",
                     None, pattern=HTTP_URL, allowed="an http(s):// URL", nullable=True),
    "endpoints": array("mirrors, tried in order before the upstream server", ENDPOINT),
}, required=["host", "endpoints"])

RUNTIME = obj("an extra OCI runtime handler for the CRI plugin", {
    "runtime_type": string("shim name", "io.containerd.runc.v2", pattern=r"^io\.containerd\.[a-z0-9.]+$",
                           allowed="a shim name like io.containerd.runc.v2"),
    "binary_name": string("runtime binary the shim runs (runc-compatible shims only)", None,
                          pattern=ABS_PATH, allowed=ABS_PATH_ALLOWED, nullable=True),
    "config_path": string("config file passed to the shim (kata, gVisor)", None, pattern=ABS_PATH,
                          allowed=ABS_PATH_ALLOWED, nullable=True),
    "pod_annotations": array("pod annotations passed through to the runtime",
                             string("annotation", None, pattern=r"^[A-Za-z0-9._/*-]+$",
                                    allowed="an annotation name or glob"), []),
    "privileged_without_host_devices": boolean("do not pass host devices to privileged pods", False),
})

SEED_MIRRORS = [
    {"host": "docker.io", "endpoints": [{"url": "https://docker.mirrors.ustc.edu.cn"},
                                        {"url": "http://hub-mirror.c.163.com"}]},
    {"host": "gcr.io", "endpoints": [{"url": "https://gcr.mirrors.ustc.edu.cn"}]},
    {"host": "k8s.gcr.io", "endpoints": [{"url": "https://gcr.mirrors.ustc.edu.cn/google-containers/",
                                          "path": "prefix"}]},
    {"host": "quay.io", "endpoints": [{"url": "https://quay.mirrors.ustc.edu.cn"}]},
]

SPEC_SCHEMA: dict = obj("imagebuild spec: one file -> containerd config, user-data, Packer template, verified image", {
    "name": string("image family name: output file names, AMI names and tags", "containerd-golden",
                   pattern=NAME, allowed="lowercase letters, digits and -, at most 63"),
    "containerd": obj("what to install", {
        "version": string("containerd version; picks the config version (v2 for 1.x, v3 for 2.0-2.2)",
                          "1.6.20", pattern=VERSION, allowed="a version like 1.6.20"),
        "install": obj("how containerd gets onto the machine", {
            "method": string("tarball: release tarballs to /usr/local; package: the distro package",
                             "tarball", enum=["tarball", "package"]),
            "tarball": artifact("the containerd release tarball", DEFAULT_CONTAINERD_URL, "{url}.sha256sum"),
            "runc": artifact("runc, installed to /usr/local/sbin/runc (tarball method)", DEFAULT_RUNC_URL,
                             GITHUB + "/opencontainers/runc/releases/download/v{version}/runc.sha256sum",
                             version="1.1.5"),
            "cni_plugins": artifact("CNI plugins, unpacked to /opt/cni/bin (optional)", DEFAULT_CNI_URL,
                                    "{url}.sha256", version="1.2.0", nullable=True),
            "package": obj("the distro package (package method)", {
                "name": string("package name", "containerd", pattern=r"^[a-z0-9][a-z0-9.+-]*$",
                               allowed="a Debian package name"),
                "version": string("exact package version to pin; must start with containerd.version",
                                  None, pattern=PACKAGE_VERSION, allowed="a Debian version string",
                                  nullable=True),
                "hold": boolean("apt-mark hold the package so upgrades do not replace it", True),
            }),
        }),
    }),
    "config": obj("containerd's config.toml, rendered from containerd's own defaults", {
        "root": string("persistent data: snapshots, content, metadata, plugin data", "/var/lib/containerd",
                       pattern=ABS_PATH, allowed=ABS_PATH_ALLOWED),
        "state": string("runtime state: sockets, pids, mounts", "/run/containerd", pattern=ABS_PATH,
                        allowed=ABS_PATH_ALLOWED),
        "oom_score": integer("containerd's OOM score: -999 on a Kubernetes worker so containers die first",
                             -999, minimum=-1000, maximum=1000),
        "sandbox_image": string("pause image for pod sandboxes", "registry.cn-hangzhou.aliyuncs.com/google_containers/pause:3.6",
                                pattern=IMAGE_REF, allowed="an image reference like registry/name:tag "
                                "(the repository path in lowercase)"),
        "systemd_cgroup": boolean("runc uses the systemd cgroup driver (SystemdCgroup)", True),
        "registry": obj("registry hosts and mirrors", {
            "mode": string("hosts: certs.d/<host>/hosts.toml (current); legacy: registry.mirrors table "
                           "(deprecated, removed in containerd 2.4)", "hosts", enum=["hosts", "legacy"]),
            "config_path": string("directory of per-host hosts.toml files", "/etc/containerd/certs.d",
                                  pattern=ABS_PATH, allowed=ABS_PATH_ALLOWED),
            "mirrors": array("registries and their mirrors", MIRROR, SEED_MIRRORS),
        }),
        "default_runtime": string("runtime handler used when a pod names none", "runc", pattern=RUNTIME_NAME,
                                  allowed="a runtime name"),
        "runtimes": mapping("extra runtime handlers (nvidia, runsc for gVisor, kata) beside runc", RUNTIME,
                            key_pattern=RUNTIME_NAME, key_allowed="runtime names of letters, digits, _ and -"),
        "max_container_log_line_size": integer("longest container log line in bytes; -1 is unlimited",
                                               16384, minimum=-1, maximum=1 << 30),
        "snapshotter": string("snapshotter for container filesystems", "overlayfs",
                              enum=["overlayfs", "native", "btrfs", "zfs", "devmapper", "stargz"]),
        "discard_unpacked_layers": boolean("drop compressed layers once unpacked (saves disk)", False),
        "imports": array("extra config files merged by containerd (conf.d)",
                         string("path or glob", None, pattern=ABS_GLOB, allowed="an absolute path or glob"),
                         unique=True),
        "overrides": mapping("free-form TOML deep-merged over the result, last", ANY_TOML),
    }),
    "unit": obj("the systemd unit (full unit for tarball installs, drop-ins for package installs)", {
        "description": string("Description=", "containerd container runtime", pattern=r"^[^%$\\]*$",
                              allowed="text without %, $ or \\"),
        "documentation": string("Documentation=", "https://containerd.io", pattern=HTTP_URL,
                                allowed="an http(s):// URL"),
        "after": array("After=", string("unit", None, pattern=SYSTEMD_UNIT, allowed="a systemd unit name"),
                       ["network.target", "local-fs.target"], unique=True),
        "exec_start_pre": array("ExecStartPre= commands; a leading - ignores failure",
                                string("command", None, pattern=r"^-?/[A-Za-z0-9._/ -]*$",
                                       allowed="an absolute command with plain arguments"),
                                ["-/sbin/modprobe overlay"]),
        "exec_start": string("ExecStart=; default /usr/local/bin/containerd (tarball) or /usr/bin/containerd",
                             None, pattern=r"^/[A-Za-z0-9._/ =-]*$", allowed="an absolute command with plain arguments",
                             nullable=True),
        "type": string("Type=", "notify", enum=["notify", "simple", "exec"]),
        "delegate": boolean("Delegate=: containerd manages the cgroups of its containers", True),
        "kill_mode": string("KillMode=: process keeps containers alive across restarts", "process",
                            enum=["process", "control-group", "mixed", "none"]),
        "restart": string("Restart=", "always", enum=["always", "on-failure", "on-abnormal", "no"]),
        "restart_sec": integer("RestartSec= seconds", 5, minimum=0, maximum=3600),
        "limit_nproc": unit_limit("LimitNPROC="),
        "limit_core": unit_limit("LimitCORE="),
        "limit_nofile": unit_limit("LimitNOFILE="),
        "tasks_max": unit_limit("TasksMax="),
        "oom_score_adjust": integer("OOMScoreAdjust=", -999, minimum=-1000, maximum=1000),
        "wanted_by": string("WantedBy=", "multi-user.target", pattern=SYSTEMD_UNIT, allowed="a systemd unit name"),
    }),
    "proxy": obj("HTTP(S) proxy for containerd's pulls (a containerd.service.d/http-proxy.conf drop-in)", {
        "http": string("HTTP_PROXY: proxy for http:// registries", None, pattern=HTTP_URL,
                       allowed="an http(s):// URL", nullable=True),
        "https": string("HTTPS_PROXY: proxy for https:// registries", None, pattern=HTTP_URL,
                        allowed="an http(s):// URL", nullable=True),
        "no_proxy": array("NO_PROXY: hosts reached directly (host, .domain, IP, CIDR, host:port); "
                          "loopback is never proxied",
                          string("entry", None, pattern=NO_PROXY_ENTRY,
                                 allowed="a host, .domain, IP address, CIDR, host:port or *"), unique=True),
    }),
    "system": obj("kernel set-up containerd and Kubernetes need", {
        "profile": string("kubernetes-worker: what a kubelet node expects besides containerd (sysctls, "
                          "tools; see `imagebuild schema` or the README); none: only what this section lists",
                          "kubernetes-worker", enum=["kubernetes-worker", "none"]),
        "modules": array("kernel modules loaded at boot (modules-load.d)",
                         string("module", None, pattern=MODULE, allowed="a module name"),
                         ["overlay", "br_netfilter"], unique=True),
        "sysctls": mapping("sysctls applied at boot (sysctl.d)",
                           {"type": ["string", "integer"], "pattern": r"^[A-Za-z0-9 ._:/-]*$",
                            "x-allowed": "a number or plain text", "description": "sysctl value"},
                           {"net.bridge.bridge-nf-call-iptables": 1, "net.bridge.bridge-nf-call-ip6tables": 1,
                            "net.ipv4.ip_forward": 1},
                           key_pattern=SYSCTL, key_allowed="dotted sysctl names"),
    }),
    "image": obj("the image Packer bakes", {
        "base": obj("base image for the qemu build; null uses `imagebuild base-image`", {
            "source": string("URL or path of a qcow2 cloud image", None, pattern=r"^[A-Za-z0-9._~%/:+@=-]+$",
                             allowed="a URL or path without spaces or quotes"),
            "checksum": string("sha256:<hex> of the base image", None, pattern=r"^sha256:[0-9a-f]{64}$",
                               allowed="sha256: followed by 64 hex digits"),
        }, required=["source", "checksum"], nullable=True),
        "disk_size_gb": integer("disk size of the baked image in GiB", 4, minimum=2, maximum=2048),
        "accelerator": string("QEMU accelerator; auto uses KVM only when a probe shows it works",
                              "auto", enum=["auto", "kvm", "tcg"]),
        "hygiene": boolean("clean the image before capture: cloud-init state, machine-id, SSH host keys, "
                           "apt lists, logs, fstrim", True),
        "packer_version": string("Packer version the template targets; required_plugins from 1.7",
                                 "1.6", pattern=r"^[0-9]+\.[0-9]+$", allowed="a version like 1.6"),
        "aws": obj("amazon-ebs build, publishing and retention", {
            "region": string("home region", "us-east-1", pattern=AWS_REGION, allowed="an AWS region name"),
            "copy_regions": array("regions the AMI is copied to", string("region", None, pattern=AWS_REGION,
                                                                          allowed="an AWS region name"), unique=True),
            "share_with": array("account ids given launch permission",
                                string("account", None, pattern=AWS_ACCOUNT, allowed="a 12-digit account id"),
                                unique=True),
            "ssm_parameter": string("SSM parameter that holds the newest AMI id; default /imagebuild/<name>/latest",
                                    None, pattern=SSM_NAME, allowed="an SSM parameter path", nullable=True),
            "keep": integer("AMIs of this family kept per region by prune", 3, minimum=1, maximum=1000),
            "tags": mapping("extra tags on AMIs and snapshots (EBS StartSnapshot's limits: keys up to 127, "
                            "values up to 255 characters)",
                            string("tag value", None, pattern=r"^[A-Za-z0-9 _.:/=+@-]{0,255}$",
                                   allowed="tag text of at most 255 letters, digits and  _.:/=+@-"),
                            key_pattern=r"^[A-Za-z0-9 _.:/=+@-]{1,127}$",
                            key_allowed="tag keys of 1-127 letters, digits and  _.:/=+@-"),
            "source_ami_name": string("source_ami_filter name for the amazon-ebs build", "debian-12-amd64-*",
                                      pattern=r"^[A-Za-z0-9 _.*?/()-]+$", allowed="an AMI name filter"),
            "source_ami_owners": array("owners of the source AMI", string("owner", None,
                                                                          pattern=r"^([0-9]{12}|self|amazon|aws-marketplace)$",
                                                                          allowed="an account id, self, amazon"),
                                       ["136693071363"]),
            "instance_type": string("build instance type", "t3.small", pattern=r"^[a-z0-9]+\.[a-z0-9]+$",
                                    allowed="an instance type like t3.small"),
            "volume_size_gb": integer("gp3 root volume size in GiB", 8, minimum=2, maximum=16384),
            "encrypt_boot": boolean("encrypt the AMI's root snapshot", False),
            "kms_keys": mapping("KMS key ARN per region for encrypt_boot (home and every copy region); "
                                "empty uses the account's default EBS key",
                                string("KMS key ARN", None, pattern=KMS_KEY_ARN, allowed="a KMS key ARN "
                                       "(arn:aws:kms:<region>:<account>:key/<id>)"),
                                key_pattern=AWS_REGION, key_allowed="region names"),
            "share_with_organizations": array("organization ARNs given launch permission",
                                              string("organization ARN", None, pattern=ORG_ARN,
                                                     allowed="arn:aws:organizations::<account>:organization/o-..."),
                                              unique=True),
            "share_with_ous": array("organizational unit ARNs given launch permission",
                                    string("OU ARN", None, pattern=OU_ARN,
                                           allowed="arn:aws:organizations::<account>:ou/o-.../ou-..."),
                                    unique=True),
            "ssm_all_regions": boolean("also set ssm_parameter in every copy region (to that region's AMI)", False),
            "deprecate_after_days": {"type": ["integer", "null"], "minimum": 1, "maximum": 36500, "default": None,
                                     "description": "publish marks the AMI deprecated this many days after its "
                                                    "build (EnableImageDeprecation); null: never"},
        }),
    }),
    "verify": obj("the in-guest check that proves an image", {
        "timeout": integer("seconds from QEMU start until the check must have reported", 900, minimum=30,
                           maximum=7200),
        "checks": array("extra checks: a shell command run in the guest; exit 0 passes", obj("a check", {
            "name": string("check name", None, pattern=CHECK_NAME, allowed="lowercase letters, digits, ._-"),
            "run": {**string("shell command (bash script, several lines allowed) run as root in the guest", None),
                    "x-multiline": True},
        }, required=["name", "run"])),
    }),
})


def default_of(node: dict) -> Any:
    """The default value a node yields when its key is absent."""
    if "properties" in node and node.get("default", ...) is ...:
        return {key: default_of(child) for key, child in node["properties"].items()}
    return _copy(node.get("default"))


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _types(node: dict) -> list[str]:
    kind = node.get("type")
    return [kind] if isinstance(kind, str) else list(kind or [])


def _type_ok(value: Any, kinds: list[str]) -> bool:
    checks = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
        "null": lambda v: v is None,
    }
    return not kinds or any(checks[k](value) for k in kinds)


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def validate(value: Any, node: dict = SPEC_SCHEMA, path: str = "") -> tuple[Any, list[Problem]]:
    """Check *value* against *node*; return (value with defaults filled in, problems)."""
    problems: list[Problem] = []
    kinds = _types(node)
    if not _type_ok(value, kinds):
        names = {"object": "a mapping", "array": "a list", "integer": "an integer", "null": "null"}
        allowed = " or ".join(names.get(k, f"a {k}") for k in kinds)
        if "boolean" in kinds and isinstance(value, str) and value.lower() in YAML11_BOOLEANS:
            allowed += " (the spec is read with YAML 1.2 booleans: write true or false)"
        return value, [Problem(path, f"got {_show(value)}, expected {allowed}")]
    if value is None:
        return value, problems
    if isinstance(value, str):
        if node.get("x-multiline") and CONTROL_CHARS_MULTILINE.search(value):
            problems.append(Problem(path, f"got {_show(value)}: control characters other than newline and tab "
                                    "(NUL, carriage return, ...) are not allowed"))
        elif not node.get("x-multiline") and CONTROL_CHARS.search(value):
            problems.append(Problem(path, f"got {_show(value)}: control characters (newline, NUL, ...) are not allowed"))
        elif SURROGATES.search(value):
            problems.append(Problem(path, f"got {_show(value)}: a lone UTF-16 surrogate (\\ud800-\\udfff) is not a "
                                    "character and cannot be written to a file"))
        elif "enum" in node and value not in node["enum"]:
            names = [e for e in node["enum"] if e is not None]
            near = difflib.get_close_matches(value, names, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            problems.append(Problem(path, f"got {_show(value)}, expected one of {', '.join(names)}{hint}"))
        elif "pattern" in node and not re.search(node["pattern"], value):
            problems.append(Problem(path, f"got {_show(value)}, expected {node.get('x-allowed', 'text matching ' + node['pattern'])}"))
    if isinstance(value, int) and not isinstance(value, bool):
        low, high = node.get("minimum"), node.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            problems.append(Problem(path, f"got {value}, expected an integer from {low} to {high}"))
    if isinstance(value, list) and "items" in node:  # free-form values (overrides) hold lists too
        out = []
        for index, item in enumerate(value):
            item, found = validate(item, node["items"], _join(path, index))
            out.append(item)
            problems += found
        if node.get("uniqueItems"):
            seen = set()
            for index, item in enumerate(out):
                key = repr(item)
                if key in seen:
                    problems.append(Problem(_join(path, index), f"got {_show(item)} twice, entries must be unique"))
                seen.add(key)
        value = out
    if isinstance(value, dict):
        value, found = _validate_object(value, node, path)
        problems += found
    return value, problems


def _validate_object(value: dict, node: dict, path: str) -> tuple[dict, list[Problem]]:
    problems: list[Problem] = []
    props = node.get("properties")
    out: dict[str, Any] = {}
    if props is not None:
        for key in value:
            if key not in props:
                near = difflib.get_close_matches(str(key), list(props), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                problems.append(Problem(_join(path, key), f"unknown key{hint}; allowed keys: {', '.join(props)}"))
        for key in node.get("required", []):
            if key not in value:
                problems.append(Problem(_join(path, key), "is required"))
        for key, child in props.items():
            child_value = value[key] if key in value else default_of(child)
            child_value, found = validate(child_value, child, _join(path, key))
            out[key] = child_value
            problems += found
        return out, problems
    values = node.get("additionalProperties", {})
    key_pattern = node.get("propertyNames", {}).get("pattern")
    for key, item in value.items():
        if not isinstance(key, str) or (key_pattern and not re.search(key_pattern, key)):
            problems.append(Problem(_join(path, key), f"bad key {_show(key)}, expected {node.get('x-key-allowed')}"))
            continue
        out[key], found = validate(item, values, _join(path, key)) if values else (item, [])
        problems += found
    return out, problems


def json_schema() -> dict:
    """The spec schema as standard JSON Schema (draft 2020-12) for editors."""
    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items() if not k.startswith("x-")}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "imagebuild spec",
            **clean(SPEC_SCHEMA)}


def commented_default() -> str:
    """The default spec as YAML, every key preceded by its description: `imagebuild init`."""
    import yaml

    lines = ["# imagebuild spec: every key below is the built-in default (containerd's seed setup).",
             "# Delete what you do not change; `imagebuild schema` prints the JSON Schema for editors."]

    def emit(node: dict, indent: int) -> None:
        pad = "  " * indent
        for key, child in node["properties"].items():
            lines.append(f"{pad}# {child['description']}")
            if "properties" in child and child.get("default", ...) is ...:
                lines.append(f"{pad}{key}:")
                emit(child, indent + 1)
                continue
            value = default_of(child)
            text = yaml.safe_dump({key: value}, default_flow_style=False, sort_keys=False, width=4096)
            lines.extend(pad + line for line in text.rstrip("\n").split("\n"))
    emit(SPEC_SCHEMA, 0)
    return "\n".join(lines) + "\n"
