"""Property tests: random valid specs, every output checked by the real program that consumes it.

A strategy builds spec *documents* (plain dicts, dumped to YAML and read back through
`imagebuild.spec.parse`, so the validator sees every generated value). A document the validator
refuses is a bug in the strategy or in the validator, and fails the test; it is never filtered.

Properties, for every generated spec:
  (a) config.toml loads in the real containerd of its family (`containerd --config F config dump`)
      and every value of `expected.config_expectations(spec)` comes back from the dump;
  (b) every hosts.toml parses with tomllib and lists the spec's hosts in order, header values
      byte for byte;
  (c) the user-data (`render.cloud_config`) passes `cloud-init schema -c` and its write_files
      carry exactly the guest files;
  (d) install.sh passes `bash -n` and `shellcheck`;
  (e) the Packer template passes `packer validate`;
  (f) spec.json, the effective spec, loads back to the same spec and the same outputs.

Profiles (env HYPOTHESIS_PROFILE): "ci" (the default: few examples, derandomized, so a run is
reproducible and fast) and "fuzz" (`make fuzz`: many random examples, failures kept in
.hypothesis/ and replayed first on the next run).
"""
from __future__ import annotations

import base64
import json
import os
import posixpath
import string
import subprocess
import tempfile
import time
import tomllib
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from imagebuild import render
from imagebuild.build.bake import build_seed
from imagebuild.errors import ImagebuildError
from imagebuild.guest.check import dig
from imagebuild.render import config_toml, expected
from imagebuild.render.config_toml import KeyPaths
from imagebuild.spec import Spec, SpecError, parse
from imagebuild.spec.containerd import config_version_of
from imagebuild.spec.rules import MIN_GRPC_MESSAGE, is_graviton
from tests.support import FAMILY_VERSIONS, PACKAGE_VERSIONS, cloud_init_schema, containerd_dump, packer_validate, ungzip

pytestmark = pytest.mark.slow  # 1-12 s per property in the ci profile, ~30 s for the file

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True, database=None,
                          suppress_health_check=_QUIET, print_blob=True)
settings.register_profile("fuzz", max_examples=300, deadline=None, suppress_health_check=_QUIET, print_blob=True)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
#: Packer takes ~0.8 s per template: each example validates this many templates side by side (2 cores).
PACKER_BATCH = 2

GUEST = render.GUEST_DIR

# --------------------------------------------------------------------------------- building blocks

DIGITS = string.digits
LOWER = string.ascii_lowercase + DIGITS
ALNUM = string.ascii_letters + DIGITS
#: What a user may put where the spec only refuses control characters (header values, check
#: commands, timeouts keys): shell and TOML metacharacters, and text beyond ASCII.
NASTY = "\"'$`\\{}%#;&|<>*?!~=[]() /"
PRINTABLE = st.one_of(st.sampled_from(NASTY), st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                      st.sampled_from("é€ß✓\u00a0\u0085\u2028\u2029\ufeff\ufffd\U0001f600"),
                      st.characters(min_codepoint=0xA0, exclude_categories=("Cs", "Cc")))
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
port = st.integers(1, 65535)


def regex(pattern: str) -> st.SearchStrategy[str]:
    return st.from_regex(pattern, fullmatch=True)


label = regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?")
dns_name = st.lists(label, min_size=1, max_size=3).map(".".join)
segment = regex(r"[A-Za-z0-9._+@-]{1,12}")
abs_path = st.lists(segment, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
registry_host = st.one_of(
    st.sampled_from(["docker.io", "gcr.io", "registry.k8s.io", "quay.io", "ghcr.io", "localhost:5000"]),
    st.tuples(dns_name, st.none() | port).map(lambda t: t[0] + (f":{t[1]}" if t[1] is not None else "")))
url_path = st.text(ALNUM + "._~/+@=-", max_size=24).map(lambda p: "/" + p)
http_url = st.builds(lambda scheme, host, p, path: f"{scheme}://{host}{'' if p is None else f':{p}'}{path}",
                     st.sampled_from(["http", "https"]), dns_name, st.none() | port, st.just("") | url_path)
url_template = st.builds(lambda scheme, host, path: f"{scheme}://{host}/{path}",
                         st.sampled_from(["http", "https", "file"]), st.just("") | dns_name | st.just("127.0.0.1:8080"),
                         st.lists(st.sampled_from(["{version}", "a", "Z", "9", ".", "_", "~", "%", "/", "+", "@",
                                                   "=", "-"]),
                                  max_size=12).map("".join))
systemd_unit = st.builds(lambda name, kind: f"{name}.{kind}", regex(r"[A-Za-z0-9@._-]{1,20}"),
                         st.sampled_from(["target", "service", "socket", "mount", "path"]))


def optional(draw, out: dict, key: str, strategy: st.SearchStrategy) -> None:
    """Set *key* about half the time: absent keys exercise the model's defaults."""
    if draw(st.booleans()):
        out[key] = draw(strategy)


def go_duration(seconds: int) -> str:
    """A duration the way Go prints it (what containerd dumps for a duration it parsed)."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


durations = st.integers(1, 7200).map(go_duration)

# --------------------------------------------------------------------------------- the spec


@st.composite
def artifacts(draw, versioned: bool) -> dict:
    out: dict = {}
    if versioned:
        optional(draw, out, "version", regex(r"[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{1,2}"))
    optional(draw, out, "url", url_template)
    sha = draw(st.none() | hex64)
    if sha:
        out["sha256"] = sha
    how = draw(st.sampled_from(["default", "null", "url", "suffix"]))
    if how == "null" and sha:
        out["checksum_url"] = None
    elif how == "url":
        out["checksum_url"] = draw(url_template)
    elif how == "suffix":
        out["checksum_url"] = "{url}" + draw(regex(r"[A-Za-z0-9._-]{0,10}"))
    if any(str(out.get(key)).startswith("http://") for key in ("url", "checksum_url")):
        out["insecure"] = True  # plain HTTP only for an artifact that says so (a spec error otherwise)
    else:
        optional(draw, out, "insecure", st.booleans())
    return out


@st.composite
def installs(draw, version: str, family: str) -> dict:
    if draw(st.booleans()) or family not in PACKAGE_VERSIONS:   # a package install: the families Debian packages
        out: dict = {"method": "tarball"} if draw(st.booleans()) else {}
        optional(draw, out, "tarball", artifacts(False))
        optional(draw, out, "runc", artifacts(True))
        optional(draw, out, "cni_plugins", st.none() | artifacts(True))
        return out
    package = {"version": draw(st.sampled_from(["", "1:", "2:"])) + version
               + draw(st.sampled_from(["", "~ds1-1", "~ds1-1+deb12u3", "-0ubuntu1", "+dfsg-2", "~rc1"]))}
    optional(draw, package, "name", regex(r"[a-z0-9][a-z0-9.+-]{0,20}"))
    optional(draw, package, "hold", st.booleans())
    return {"method": "package", "package": package}


@st.composite
def endpoints(draw, legacy: bool) -> dict:
    url = draw(http_url)
    has_path = bool(urllib.parse.urlsplit(url).path.strip("/"))
    kind = draw(st.sampled_from(["prefix", "api-root", None]))
    # An API root (said, or the legacy reading of an unsaid path) must hold /v2 to be a registry API.
    if kind == "api-root" or (kind is None and has_path and legacy):
        url = url.rstrip("/") + "/v2"
    ep = {"url": url}
    if kind:
        ep["path"] = kind
    if legacy:  # the legacy table holds URLs only: the defaults may be spelled out, nothing else
        optional(draw, ep, "capabilities", st.just(["pull", "resolve"]))
        optional(draw, ep, "override_path", st.just(False))
        optional(draw, ep, "skip_verify", st.just(False))
        return ep
    optional(draw, ep, "capabilities", st.lists(st.sampled_from(["pull", "resolve", "push"]), unique=True))
    if kind is None and has_path and "v2" in urllib.parse.urlsplit(url).path.split("/"):
        optional(draw, ep, "override_path", st.booleans())
    optional(draw, ep, "ca", st.none() | abs_path)
    optional(draw, ep, "skip_verify", st.booleans())
    optional(draw, ep, "headers", st.dictionaries(regex(r"[A-Za-z][A-Za-z0-9-]{0,15}"),
                                                  st.text(PRINTABLE, max_size=30), max_size=3))
    return ep


@st.composite
def mirrors(draw, legacy: bool) -> dict:
    mirror = {"host": draw(registry_host),
              "endpoints": draw(st.lists(endpoints(legacy), min_size=1, max_size=3, unique_by=lambda e: e["url"]))}
    # The legacy table always falls back to the registry itself: no other server there.
    optional(draw, mirror, "server", st.none() if legacy else st.none() | http_url)
    return mirror


image_component = regex(r"[a-z0-9]+([._-][a-z0-9]+){0,2}")
sandbox_images = st.builds(
    lambda registry, path, ref: (f"{registry}/" if registry else "") + "/".join(path) + ref,
    # A registry is a name with a dot or a port (else containerd reads it as a lowercase path component).
    st.none() | st.tuples(dns_name, st.none() | port).map(
        lambda t: t[0] + (f":{t[1]}" if t[1] else "" if "." in t[0] else ":5000")),
    st.lists(image_component, min_size=1, max_size=3),
    st.just("") | regex(r"[A-Za-z0-9]+([._-][A-Za-z0-9]+){0,2}").map(lambda t: ":" + t)
    | hex64.map(lambda h: "@sha256:" + h))


@st.composite
def runtimes(draw) -> dict:
    names = draw(st.lists(st.sampled_from(["nvidia", "runsc", "kata", "kata-qemu", "gvisor", "crun", "youki"])
                          | regex(r"[A-Za-z0-9_-]{1,12}").filter(lambda n: n != "runc"),
                          unique=True, max_size=3))
    out = {}
    for name in names:
        kind = draw(st.sampled_from(["runc-like", "runsc", "kata"]))
        rt: dict = {}
        if kind == "runc-like":
            optional(draw, rt, "runtime_type", st.just("io.containerd.runc.v2"))
            optional(draw, rt, "binary_name", abs_path)
        else:
            rt["runtime_type"] = draw(st.sampled_from(["io.containerd.runsc.v1", "io.containerd.kata.v2"])
                                      | regex(r"io\.containerd\.[a-z0-9]{1,8}\.v[0-9]"))
            optional(draw, rt, "config_path", abs_path)
            optional(draw, rt, "pod_annotations", st.lists(regex(r"[A-Za-z0-9._/-]{1,20}\*?"), max_size=2))
            optional(draw, rt, "privileged_without_host_devices", st.booleans())
        out[name] = rt
    return out


def _override_catalogue(family: str) -> list[tuple[tuple[str, ...], st.SearchStrategy]]:
    """Keys containerd knows and dumps back (so the check can see them), none owned by a typed setting; the
    server settings where the family's config version has them (version 4: in plugins)."""
    gc = ("plugins", "io.containerd.gc.v1.scheduler")
    paths = KeyPaths(config_version_of(family))
    histogram = ("metrics",) if len(paths.metrics) == 1 else ("plugins", "io.containerd.metrics.v1.grpc-prometheus")
    leaves = [
        (("debug", "level"), st.sampled_from(["trace", "debug", "info", "warn", "error"])),
        (("debug", "format"), st.sampled_from(["text", "json"])),
        (paths.grpc + ("max_recv_message_size",), st.integers(MIN_GRPC_MESSAGE, 2**31 - 1)),
        (paths.grpc + ("max_send_message_size",), st.integers(MIN_GRPC_MESSAGE, 2**31 - 1)),
        (paths.metrics + ("address",), port.map(lambda p: f"127.0.0.1:{p}")),
        (histogram + ("grpc_histogram",), st.booleans()),
        (gc + ("pause_threshold",), st.floats(0.0, 1.0)),
        (gc + ("deletion_threshold",), st.integers(0, 100000)),
        (gc + ("mutation_threshold",), st.integers(0, 100000)),
    ]
    if family.startswith("1."):
        runtime = images = ("plugins", "io.containerd.grpc.v1.cri")
    else:
        runtime, images = ("plugins", "io.containerd.cri.v1.runtime"), ("plugins", "io.containerd.cri.v1.images")
    leaves += [
        (runtime + ("enable_unprivileged_ports",), st.booleans()),
        (runtime + ("enable_unprivileged_icmp",), st.booleans()),
        (runtime + ("disable_apparmor",), st.booleans()),
        (runtime + ("tolerate_missing_hugetlb_controller",), st.booleans()),
        (runtime + ("selinux_category_range",), st.integers(1, 1024)),
        (runtime + ("containerd", "runtimes", "runc", "options", "NoNewKeyring"), st.booleans()),
        (images + ("max_concurrent_downloads",), st.integers(1, 64)),
        (images + ("stats_collect_period",), st.integers(1, 3600)),
    ]
    if family != "1.6":
        leaves.append((images + ("image_pull_progress_timeout",), durations))
    # Lists: plugins containerd may run without (disabling them changes nothing `config dump` checks).
    leaves.append((("disabled_plugins",), st.lists(st.sampled_from(
        ["io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
         "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs"]), unique=True, max_size=3)))
    if family == "1.7":  # a list of tables
        leaves.append((("plugins", "io.containerd.transfer.v1.local", "unpack_config"), st.lists(st.fixed_dictionaries(
            {"platform": st.sampled_from(["linux/amd64", "linux/arm64"]),
             "snapshotter": st.sampled_from(["overlayfs", "native"])}), min_size=1, max_size=2)))
    return leaves


@st.composite
def overrides(draw, family: str) -> dict:
    catalogue = _override_catalogue(family)
    out: dict = {}
    for index in draw(st.lists(st.integers(0, len(catalogue) - 1), unique=True, max_size=5)):
        path, values = catalogue[index]
        if draw(st.booleans()):  # one dotted key (plugin names unquoted) instead of nested mappings
            out[".".join(path)] = draw(values)
            continue
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = draw(values)
    # timeouts is a free map: its keys are any printable text (containerd parses every value as a
    # duration at start-up, so the values are durations).
    keys = st.text(PRINTABLE, min_size=1, max_size=16)
    if family.startswith("1."):  # see checks.check_overrides: 1.x cannot read a key with a double quote
        keys = keys.filter(lambda k: '"' not in k)
    timeouts = draw(st.dictionaries(keys.filter(lambda k: not k.startswith("io.containerd.")), durations,
                                    max_size=3))
    if timeouts:
        out["timeouts"] = timeouts
    return out


@st.composite
def spec_documents(draw) -> dict:
    family = draw(st.sampled_from(sorted(FAMILY_VERSIONS)))
    version = FAMILY_VERSIONS[family]
    doc: dict = {}
    optional(draw, doc, "name", regex(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?"))
    doc["containerd"] = {"version": version, "install": draw(installs(version, family))}

    config: dict = {}
    optional(draw, config, "root", abs_path.filter(lambda p: posixpath.normpath(p) != "/run/containerd"))
    # root and state must differ (containerd refuses to start otherwise: a spec error).
    root = posixpath.normpath(config.get("root", "/var/lib/containerd"))
    optional(draw, config, "state", abs_path.filter(lambda p: posixpath.normpath(p) != root))
    optional(draw, config, "oom_score", st.integers(-1000, 1000))
    optional(draw, config, "sandbox_image", sandbox_images)
    optional(draw, config, "systemd_cgroup", st.booleans())
    legacy = draw(st.booleans())
    registry: dict = {"mode": "legacy"} if legacy else {}
    if not legacy:
        optional(draw, registry, "mode", st.just("hosts"))
        optional(draw, registry, "config_path", abs_path)
    if draw(st.integers(0, 4)):  # else the seed mirrors
        registry["mirrors"] = draw(st.lists(mirrors(legacy), max_size=6, unique_by=lambda m: m["host"]))
    config["registry"] = registry
    rts = draw(runtimes())
    if rts:
        config["runtimes"] = rts
    optional(draw, config, "default_runtime", st.sampled_from(["runc", *rts]))
    optional(draw, config, "max_container_log_line_size", st.integers(-1, 1 << 30))
    # devmapper and stargz need a plugin configured behind them (a spec error otherwise).
    optional(draw, config, "snapshotter", st.sampled_from(["overlayfs", "native", "btrfs", "zfs"]))
    optional(draw, config, "discard_unpacked_layers", st.booleans())
    # Globs in directories the host does not have (a glob matching nothing is fine for every
    # family); a plain file path only where containerd tolerates it missing (2.x).
    imports = st.lists(segment, min_size=1, max_size=2).map(lambda p: "/etc/imagebuild-fuzz/" + "/".join(p) + "/*.toml")
    if not family.startswith("1."):
        imports = imports | abs_path.map(lambda p: "/etc/imagebuild-fuzz" + p)
    optional(draw, config, "imports", st.lists(imports, unique=True, max_size=3))
    optional(draw, config, "overrides", overrides(family))
    doc["config"] = config
    optional(draw, doc, "proxy", st.fixed_dictionaries({}, optional={
        "http": http_url, "https": http_url,
        "no_proxy": st.lists(st.sampled_from(["*", "localhost", ".svc", "10.0.0.0/8", "fd00::/8",
                                              "registry.example:5000", "169.254.169.254"]),
                             unique=True, max_size=4)}))

    unit: dict = {}
    optional(draw, unit, "description", st.text(st.characters(min_codepoint=0x20, exclude_characters="%$\\",
                                                              exclude_categories=("Cs", "Cc")), max_size=40))
    optional(draw, unit, "documentation", http_url)
    optional(draw, unit, "after", st.lists(systemd_unit, unique=True, max_size=3))
    optional(draw, unit, "exec_start_pre", st.lists(regex(r"-?/[A-Za-z0-9._/ -]{0,30}"), max_size=3))
    optional(draw, unit, "exec_start", st.none() | regex(r"/[A-Za-z0-9._/ =-]{0,40}"))
    optional(draw, unit, "type", st.sampled_from(["notify", "simple", "exec"]))
    optional(draw, unit, "delegate", st.booleans())
    optional(draw, unit, "kill_mode", st.sampled_from(["process", "control-group", "mixed", "none"]))
    optional(draw, unit, "restart", st.sampled_from(["always", "on-failure", "on-abnormal", "no"]))
    optional(draw, unit, "restart_sec", st.integers(0, 3600))
    limit = st.just("infinity") | st.integers(0, 10**9).map(str)
    for key in ("limit_nproc", "limit_core", "limit_nofile", "tasks_max"):
        optional(draw, unit, key, limit)
    optional(draw, unit, "oom_score_adjust", st.integers(-1000, 1000))
    optional(draw, unit, "wanted_by", systemd_unit)
    if unit:
        doc["unit"] = unit

    system: dict = {}
    optional(draw, system, "modules", st.lists(regex(r"[a-z0-9_-]{1,15}"), unique=True, max_size=4))
    optional(draw, system, "sysctls", st.dictionaries(
        regex(r"[a-z0-9_]{1,10}(\.[A-Za-z0-9_-]{1,10}){1,3}"),
        st.integers(-(2**31), 2**63 - 1) | regex(r"[A-Za-z0-9._:/-]([A-Za-z0-9 ._:/-]{0,18}[A-Za-z0-9._:/-])?"),
        max_size=4))  # an empty value is refused (nothing to set)
    if system:
        doc["system"] = system

    image: dict = {}
    optional(draw, image, "base", st.none() | st.fixed_dictionaries({
        "source": abs_path | http_url,
        "checksum": hex64.map(lambda h: "sha256:" + h)}).map(
            lambda b: b | {"insecure": True} if b["source"].startswith("http://") else b))
    optional(draw, image, "disk_size_gb", st.integers(2, 2048))
    optional(draw, image, "accelerator", st.sampled_from(["auto", "kvm", "tcg"]))
    optional(draw, image, "hygiene", st.booleans())
    regions = ["us-east-1", "us-east-2", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-2", "sa-east-1"]
    aws: dict = {}
    region = draw(st.sampled_from(regions))
    if draw(st.booleans()):
        aws["region"] = region
    else:
        region = "us-east-1"
    optional(draw, aws, "copy_regions", st.lists(st.sampled_from([r for r in regions if r != region]), unique=True,
                                                 max_size=3))
    optional(draw, aws, "encrypt_boot", st.booleans())
    if not aws.get("encrypt_boot"):
        optional(draw, aws, "share_with_accounts", st.lists(regex(r"[0-9]{12}"), unique=True, max_size=2))
    optional(draw, aws, "ssm_parameter", regex(r"/[A-Za-z0-9_./-]{1,30}").filter(  # AWS reserves aws*, ssm*
        lambda name: not name.lstrip("/").lower().startswith(("aws", "ssm")) and len(name.strip("/").split("/")) <= 15))
    optional(draw, aws, "keep", st.integers(1, 1000))
    optional(draw, aws, "tags", st.dictionaries(
        regex(r"[A-Za-z0-9 _.:/=+@-]{1,30}").filter(lambda k: not k.lower().startswith(("aws:", "imagebuild:"))),
        regex(r"[A-Za-z0-9 _.:/=+@-]{0,40}"), max_size=3))
    optional(draw, aws, "source_ami_name", regex(r"[A-Za-z0-9 _.*?/()-]{1,30}"))
    optional(draw, aws, "source_ami_owners", st.lists(regex(r"[0-9]{12}") | st.sampled_from(["self", "amazon",
                                                                                              "aws-marketplace"]),
                                                      min_size=1, max_size=3))
    # an x86_64 type (the specs drawn here are amd64): a Graviton-looking family is refused, rightly
    optional(draw, aws, "instance_type", regex(r"[a-z0-9]{1,4}\.[a-z0-9]{1,8}").filter(lambda t: not is_graviton(t)))
    # the AMI's root volume holds the image: at least image.disk_size_gb (default 4)
    optional(draw, aws, "volume_size_gb", st.integers(image.get("disk_size_gb", 4), 16384))
    if image.get("disk_size_gb", 4) > aws.get("volume_size_gb", 8):
        aws["volume_size_gb"] = image["disk_size_gb"]
    if aws:
        image["aws"] = aws
    if image:
        doc["image"] = image

    verify: dict = {}
    optional(draw, verify, "timeout", st.integers(30, 7200))
    optional(draw, verify, "checks", st.lists(st.fixed_dictionaries({
        "name": regex(r"[a-z0-9][a-z0-9_.-]{0,20}"), "run": st.text(PRINTABLE, min_size=1, max_size=60)}),
        unique_by=lambda c: c["name"], max_size=3))
    if verify:
        doc["verify"] = verify
    return doc


def as_spec(doc: dict, allow_unicode: bool = False) -> Spec:
    """The document through YAML and the validator, as a user's file would go."""
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=allow_unicode)
    if allow_unicode and yaml.safe_load(text) != doc:
        # PyYAML's emitter writes some line breaks raw (U+0085 opening a quoted value) where its own
        # parser folds them to a space: that file would not say what the document says. Escape them.
        text = yaml.safe_dump(doc, sort_keys=False)
    note(text)
    try:
        return parse(text, "generated spec")
    except SpecError as exc:
        pytest.fail(f"the strategy generated a spec the validator refuses (a strategy or validator bug):\n"
                    f"{exc.report()}\n--- spec ---\n{text}")


specs = st.builds(as_spec, spec_documents(), st.booleans())
documents_and_specs = spec_documents().flatmap(lambda doc: st.tuples(st.just(doc), st.builds(as_spec, st.just(doc),
                                                                                              st.booleans())))

# --------------------------------------------------------------------------------- properties


@pytest.mark.builds
@PROFILE
@given(specs)
def test_a_config_toml_loads_in_real_containerd_with_every_expected_value(spec):
    with tempfile.TemporaryDirectory() as tmp:
        text = config_toml.render(spec)
        proc, dumped = containerd_dump(text, spec.containerd.family, Path(tmp))
    assert proc.returncode == 0, proc.stderr
    mismatches = [(e["name"], e["value"], dig(dumped, e["path"])) for e in expected.config_expectations(spec)
                  if dig(dumped, e["path"]) != e["value"]]
    assert mismatches == []
    assert dumped["version"] == spec.containerd.config_version
    # The two registry modes never mix (mirrors beside config_path stops the CRI plugin at start).
    registry = dig(tomllib.loads(text), list(KeyPaths(spec.containerd.config_version).registry))
    if spec.config.registry.mode == "hosts":
        assert registry["config_path"] == spec.config.registry.config_path and not registry.get("mirrors")
    else:
        assert registry["config_path"] == ""


def _clean(url: str) -> str:
    raw = urllib.parse.urlsplit(url).path.strip("/")
    return posixpath.normpath("/" + raw) if raw else ""


def _hosts_api_root(key: str, override_path: bool) -> str:
    """What containerd's hosts.go makes of a [host."<key>"] entry: path.Clean, /v2 appended unless
    already there or override_path."""
    clean = _clean(key)
    if override_path:
        return clean
    return clean if clean.endswith("/v2") else clean + "/v2"


def _wanted_api_root(ep: dict) -> str:
    """The API root the spec asks for: prefix -> /v2/<path>; api-root -> the path; unsaid -> as
    containerd has always read the URL."""
    clean = _clean(ep["url"])
    if ep.get("path") == "prefix":
        return "/v2" + clean
    if ep.get("path") == "api-root":
        return clean
    return _hosts_api_root(ep["url"], ep.get("override_path", False))


@PROFILE
@given(documents_and_specs)
def test_b_hosts_toml_lists_the_hosts_in_order_with_exact_headers(doc_and_spec):
    doc, spec = doc_and_spec
    files = render.payload(spec)
    hosts_files = [path for path in files if path.endswith("/hosts.toml")]
    if spec.config.registry.mode == "legacy":
        assert hosts_files == []
        return
    mirrors_in_doc = doc["config"]["registry"].get("mirrors")
    if mirrors_in_doc is None:  # the seed mirrors (the model's default)
        mirrors_in_doc = spec.document["config"]["registry"]["mirrors"]
    assert hosts_files == [f"{spec.config.registry.config_path}/{m['host']}/hosts.toml" for m in mirrors_in_doc]
    for mirror, doc_mirror, path in zip(spec.config.registry.mirrors, mirrors_in_doc, hosts_files, strict=True):
        parsed = tomllib.loads(files[path].content.decode("utf-8"))
        assert parsed["server"] == mirror.upstream
        assert len(parsed["host"]) == len(doc_mirror["endpoints"])
        for (key, host), doc_ep in zip(parsed["host"].items(), doc_mirror["endpoints"], strict=True):
            # containerd's reading of the entry (hosts.go) requests what the spec's `path` asks for.
            assert _hosts_api_root(key, host.get("override_path", False)) == _wanted_api_root(doc_ep)
            assert urllib.parse.urlsplit(key).netloc == urllib.parse.urlsplit(doc_ep["url"]).netloc
            # Header values byte for byte as the user wrote them (quotes, $, backticks, \ included).
            headers = doc_ep.get("headers", {})
            assert {k: [v.encode() for v in vs] for k, vs in host.get("header", {}).items()} == \
                   {k: [v.encode()] for k, v in headers.items()}
            assert host["capabilities"] == doc_ep.get("capabilities", ["pull", "resolve"])
            assert host.get("skip_verify", False) is doc_ep.get("skip_verify", False)
            assert host.get("ca") == doc_ep.get("ca")
        assert files[path].mode == (0o600 if any(ep.get("headers") for ep in doc_mirror["endpoints"]) else 0o644)


@PROFILE
@given(specs)
def test_c_user_data_is_valid_cloud_config_carrying_what_installs(spec):
    text = render.cloud_config(spec)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "user-data"
        path.write_text(text, encoding="utf-8")
        proc = cloud_init_schema(path)
    assert proc.returncode == 0 and "Valid cloud-config" in proc.stdout, proc.stdout + proc.stderr
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    written = {}
    for entry in doc["write_files"]:
        content = entry["content"].encode("utf-8")
        if entry.get("encoding") == "b64":
            content = base64.b64decode(content)
        written[entry["path"]] = (content, entry["permissions"])
    # What installs and configures, nothing else (no check, no expectations); then the staging goes.
    guest = {rel: f for rel, f in render.guest_files(spec).items() if rel not in render.CHECK_FILES}
    assert written == {f"{GUEST}/{rel}": (f.content, f"{f.mode:04o}") for rel, f in guest.items()}
    assert doc["runcmd"][-2:] == [["bash", f"{GUEST}/install.sh", f"{GUEST}/payload"],
                                  ["rm", "-rf", "--", f"{GUEST}/payload", f"{GUEST}/install.sh"]]
    # What EC2 gets: the same document, raw or gzipped, or a clear error when even gzip is too big.
    try:
        assert ungzip(render.user_data(spec)) == text.encode()
    except ImagebuildError as exc:
        assert "over EC2's" in str(exc)


@PROFILE
@given(specs)
def test_d_install_script_passes_bash_n_and_shellcheck(spec):
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "install.sh"
        script.write_bytes(render.guest_files(spec)["install.sh"].content)
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        lint = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    assert lint.returncode == 0 and lint.stdout == "", lint.stdout + lint.stderr


@settings(PROFILE, max_examples=max(1, PROFILE.max_examples // PACKER_BATCH))
@given(st.lists(specs, min_size=PACKER_BATCH, max_size=PACKER_BATCH))
def test_e_packer_validate_accepts_the_template(batch):
    with tempfile.TemporaryDirectory() as tmp:
        dirs = []
        for index, spec in enumerate(batch):
            out = render.write_tree(render.render_all(spec, with_user_data=False), Path(tmp) / f"r{index}")
            build_seed(out / "packer" / "seed")
            dirs.append(out / "packer")
        with ThreadPoolExecutor(len(dirs)) as pool:
            results = list(pool.map(packer_validate, dirs))
    for spec, proc in zip(batch, results, strict=True):
        assert proc.returncode == 0, f"{spec.name}: {proc.stdout}{proc.stderr}"


@PROFILE
@given(specs)
def test_f_spec_json_loads_back_to_the_same_spec_and_outputs(spec):
    files = render.render_all(spec, with_user_data=False)
    again = parse(files["spec.json"].content.decode(), "spec.json")
    assert again.spec_hash == spec.spec_hash
    assert again == spec
    assert render.render_all(again, with_user_data=False) == files
    assert json.loads(files["spec.json"].content) == spec.document


@pytest.mark.builds
@PROFILE
@given(specs)
def test_g_the_cri_plugin_loads_on_the_running_daemon(spec):
    """Not only `config dump`: the real daemon starts with the rendered config and CRI answers Status.

    Host-only rewrites (tests/cri.py): root, state and sockets move to a scratch directory (root and
    state stay distinct), restrict_oom_score_adj; btrfs and zfs need their filesystem under root, so
    they become overlayfs here; single-file imports are dropped (the spec warns about them; missing,
    they stop the daemon: tests/test_cri.py).
    """
    import tomlkit
    from cri_api.v1 import api_pb2

    from tests import cri

    work = cri.scratch("ib-p-")
    doc = tomlkit.parse(cri.host_only(config_toml.render(spec), spec.containerd.config_version, work))
    doc["root"], doc["state"] = str(work / "root"), str(work / "state")
    doc["imports"] = [path for path in doc["imports"] if "*" in path]
    if spec.config.snapshotter in ("btrfs", "zfs"):
        table, _ = KeyPaths(spec.containerd.config_version).images, None
        dig(doc, list(table))["snapshotter"] = "overlayfs"
    daemon = cri.Containerd(spec.containerd.family, tomlkit.dumps(doc), work)
    runtime, _, channel = cri.cri(daemon.sock)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                status = runtime.Status(api_pb2.StatusRequest(), timeout=2)
                break
            except Exception as exc:
                assert time.monotonic() < deadline, f"CRI did not load: {exc}\n{daemon.log()[-3000:]}"
                time.sleep(0.2)
        conditions = {c.type: c.status for c in status.status.conditions}
        assert conditions["RuntimeReady"] is True, daemon.log()[-3000:]
    finally:
        channel.close()
        daemon.close()
