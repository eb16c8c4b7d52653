"""The spec's rules that span keys, over the validated document (defaults filled in).

The model (imagebuild.spec.model) checks each value alone; these check how values go together:
combinations containerd would refuse or run without its CRI plugin, endpoint paths, versions that
exist, overrides typed against containerd's own defaults, keys a typed setting owns. Each returns
Problems (key path, bad value, what is allowed) and warnings; nothing here raises.
"""
from __future__ import annotations

import posixpath
import re
from typing import Any

from imagebuild.spec.aws_rules import volume_problems
from imagebuild.spec.containerd import (
    api_root,
    config_version_of,
    end_of_support_warning,
    family_for,
    package_families,
    reference_families,
    supported_versions,
    url_parts,
)
from imagebuild.spec.containerd_keys import KeyPaths
from imagebuild.spec.fields import CONTROL_CHARS, SURROGATES, URL_CREDENTIALS, Problem, show
from imagebuild.spec.model import OS_RELEASES, Spec
from imagebuild.spec.renames import dropped_imports
from imagebuild.spec.runtime_rules import check_runtimes
from imagebuild.spec.settings import config_expectations
from imagebuild.spec.tls import check_tls


def semantic_checks(doc: dict) -> tuple[list[Problem], list[str]]:
    """Rules that span keys; returns (problems, warnings)."""
    problems: list[Problem] = []
    warnings: list[str] = []
    ctd, cfg, unit = doc["containerd"], doc["config"], doc["unit"]
    major, minor, _ = (int(p) for p in ctd["version"].split("."))
    if family_for(major, minor) is None:
        problems.append(Problem("containerd.version", f"got {ctd['version']!r}, expected {supported_versions()} "
                                f"(the versions whose reference config imagebuild carries: "
                                f"{', '.join(reference_families())})"))
    elif (eol := end_of_support_warning(family_for(major, minor) or "")) is not None:
        warnings.append(f"containerd.version: {eol}")
    install = ctd["install"]
    if install["method"] == "tarball":
        for name in ("tarball", "runc") + (("cni_plugins",) if install["cni_plugins"] else ()):
            art = install[name]
            if not art["sha256"] and not art["checksum_url"]:
                problems.append(Problem(f"containerd.install.{name}.sha256",
                                        "got null with checksum_url null, expected a pinned sha256 or a checksum_url"))
            _check_url_arch(f"containerd.install.{name}", art, doc["image"]["architecture"], problems)
    else:
        pkg = install["package"]
        family = family_for(major, minor)
        if family is not None and family not in package_families():
            problems.append(Problem("containerd.version", f"got {ctd['version']!r} with install.method package, "
                                    f"expected {supported_versions(package_families())}: a package install "
                                    f"supports only the families Debian packages (containerd "
                                    f"{', '.join(package_families())}); containerd {family} installs with "
                                    "install.method: tarball (upstream's release)"))
        if not pkg["version"]:
            problems.append(Problem("containerd.install.package.version",
                                    "got null, expected the exact package version to pin (package method)"
                                    + _apt_cache_hint(doc)))
        # 1.6.20, 1.6.20~ds1-1 and 2:1.6.20-1 package containerd 1.6.20; 1.6.200-1 does not.
        elif not re.match(rf"{re.escape(ctd['version'])}(?![0-9.])", pkg["version"].split(":", 1)[-1]):
            problems.append(Problem("containerd.install.package.version",
                                    f"got {pkg['version']!r}, expected a version of containerd {ctd['version']} "
                                    f"(starting with {ctd['version']})" + _apt_cache_hint(doc)))
    _check_os(doc, problems)
    _check_instance_type(doc, problems)
    problems += [Problem(path, message) for path, message in volume_problems(doc)]
    registry = cfg["registry"]
    seen: dict[str, int] = {}
    for index, mirror in enumerate(registry["mirrors"]):
        if mirror["host"] in seen:
            problems.append(Problem(f"config.registry.mirrors[{index}].host",
                                    f"got {mirror['host']!r} again (also at [{seen[mirror['host']]}]), "
                                    "each registry host once"))
        seen.setdefault(mirror["host"], index)
        if registry["mode"] == "hosts" and major == 1 and not mirror["endpoints"]:
            problems.append(Problem(f"config.registry.mirrors[{index}].endpoints",
                                    "got [], but containerd 1.x ignores a hosts.toml without [host] entries "
                                    "(\"invalid `host` tree\"), server included; list at least one endpoint "
                                    "(the server itself will do)"))
        urls = [ep["url"] for ep in mirror["endpoints"]]
        for e_index, url in enumerate(urls):
            if url in urls[:e_index]:
                problems.append(Problem(f"config.registry.mirrors[{index}].endpoints[{e_index}].url",
                                        f"got {url!r} again (also at [{urls.index(url)}]), each endpoint once "
                                        "(hosts.toml keys hosts by URL)"))
        for e_index, ep in enumerate(mirror["endpoints"]):
            _check_endpoint_path(ep, registry["mode"], f"config.registry.mirrors[{index}].endpoints[{e_index}]",
                                 problems, warnings)
        if registry["mode"] == "legacy":
            default = "https://registry-1.docker.io" if mirror["host"] == "docker.io" else f"https://{mirror['host']}"
            if mirror["server"] and mirror["server"].rstrip("/") != default:
                problems.append(Problem(f"config.registry.mirrors[{index}].server",
                                        f"got {mirror['server']!r}, but the legacy registry.mirrors table always "
                                        f"falls back to {default} after the endpoints; use mode: hosts"))
            for e_index, ep in enumerate(mirror["endpoints"]):
                extras = [k for k in ("ca", "headers") if ep[k]] + [k for k in ("skip_verify",) if ep[k]]
                if ep["capabilities"] != ["pull", "resolve"] or ep["override_path"]:
                    extras.append("capabilities/override_path")
                if extras:
                    problems.append(Problem(f"config.registry.mirrors[{index}].endpoints[{e_index}]",
                                            f"sets {', '.join(extras)}, which the legacy registry.mirrors table "
                                            "cannot express; use mode: hosts"))
    if registry["mode"] == "legacy":
        warnings.append("config.registry.mode: legacy registry.mirrors is deprecated (containerd 2.4 announces its "
                        "removal for 2.7); use mode: hosts")
        if major >= 2 and minor >= 1:
            warnings.append("config.registry.mode: with legacy mirrors containerd 2.1+ falls back to local pull mode")
    for path in cfg["imports"]:
        if "*" not in path:
            warnings.append(f"config.imports: {path} names one file, and containerd {major}.x refuses to start "
                            "when it is missing; make sure something creates it, or use a glob "
                            "(/etc/containerd/conf.d/*.toml may match nothing)")
    warnings += dropped_imports(doc)
    _check_cri_loads(doc, major, problems, warnings)
    if cfg["discard_unpacked_layers"] and major >= 2 and minor >= 1:
        warnings.append("config.discard_unpacked_layers: true makes containerd 2.1+ fall back to local pull mode")
    if "runc" in cfg["runtimes"]:
        problems.append(Problem("config.runtimes.runc", "runc is built in; tune it with config.systemd_cgroup "
                                "or config.overrides"))
    problems += check_runtimes(doc)
    for name, runtime in cfg["runtimes"].items():   # the shim's config file is written as TOML, like overrides
        if runtime.get("config") is not None:
            check_overrides(runtime["config"], f"config.runtimes.{name}.config", problems)
    if cfg["default_runtime"] != "runc" and cfg["default_runtime"] not in cfg["runtimes"]:
        problems.append(Problem("config.default_runtime", f"got {cfg['default_runtime']!r}, expected runc or one of "
                                f"config.runtimes ({', '.join(cfg['runtimes']) or 'none defined'})"))
    check_overrides(cfg["overrides"], "config.overrides", problems)  # key quotes: once split, in from_document
    if not -999 <= cfg["oom_score"] <= 0:
        warnings.append(f"config.oom_score: {cfg['oom_score']} is outside the recommended -999..0 "
                        "(-1000 means never killed; 0 and above put containerd before containers)")
    if unit["oom_score_adjust"] != cfg["oom_score"]:
        warnings.append(f"unit.oom_score_adjust ({unit['oom_score_adjust']}) differs from config.oom_score "
                        f"({cfg['oom_score']}); containerd applies config.oom_score to itself once started")
    if unit["kill_mode"] != "process":
        warnings.append(f"unit.kill_mode: {unit['kill_mode']} kills or orphans running containers when "
                        "containerd restarts; process keeps them")
    if not unit["delegate"]:
        warnings.append("unit.delegate: false lets systemd take over container cgroups")
    for key in ("limit_nproc", "limit_core", "limit_nofile", "tasks_max"):
        unit[key] = str(unit[key])  # `limit_nofile: 1048576` and "1048576" are the same setting
    if unit["exec_start"] is None:
        unit["exec_start"] = ("/usr/local/bin/containerd" if install["method"] == "tarball"
                              else "/usr/bin/containerd")
    for key, value in doc["system"]["sysctls"].items():
        if not str(value).strip():
            problems.append(Problem(f"system.sysctls.{key}", f"got {value!r}, expected a number or plain text "
                                    "(an empty value sets nothing and systemd-sysctl rejects it; remove the key)"))
    _check_sandbox(doc, problems)
    _check_url_credentials(doc, "", problems)
    problems += check_tls(doc)
    if doc["image"]["aws"]["ssm_parameter"] is None:
        doc["image"]["aws"]["ssm_parameter"] = f"/imagebuild/{doc['name']}/latest"
    for index, check in enumerate(doc["verify"]["checks"]):
        if check["name"] in [c["name"] for c in doc["verify"]["checks"][:index]]:
            problems.append(Problem(f"verify.checks[{index}].name",
                                    f"got {check['name']!r} twice, names must be unique"))
    return problems, warnings


def _apt_cache_hint(doc: dict) -> str:
    """Where a package version string comes from: the image's Debian release, as apt prints it."""
    os_name = doc["image"]["os"]
    return (f"; the version strings are what `apt-cache policy {doc['containerd']['install']['package']['name']}` "
            f"lists on Debian {os_name.split('-')[1]} ({OS_RELEASES[os_name]['suite']}, image.os {os_name})")


def _check_url_credentials(value: Any, path: str, problems: list[Problem]) -> None:
    """No URL anywhere in the spec carries credentials (`https://user:pass@host/`): they would be
    recorded in the clear in spec.json, manifests, run records, Packer templates and AMI tags."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_url_credentials(item, f"{path}.{key}" if path else str(key), problems)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_url_credentials(item, f"{path}[{index}]", problems)
    elif isinstance(value, str) and URL_CREDENTIALS.match(value):
        problems.append(Problem(path, f"got a URL with credentials ({show(value)}); they would be recorded in the "
                                "clear (spec.json, manifests, Packer templates, AMI tags): give the URL without "
                                "them, and registry credentials as a mirror endpoint's headers"))


def _check_sandbox(doc: dict, problems: list[Problem]) -> None:
    """image.sandbox: an archive exactly when the source is one."""
    sandbox = doc["image"]["sandbox"]
    if sandbox["source"] == "archive" and sandbox["archive"] is None:
        problems.append(Problem("image.sandbox.archive", "got null with source: archive, expected {url, sha256} "
                                f"of an OCI archive holding {doc['config']['sandbox_image']}"))
    if sandbox["source"] != "archive" and sandbox["archive"] is not None:
        problems.append(Problem("image.sandbox.archive", f"is set, but source is {sandbox['source']!r}: "
                                "set source: archive, or remove the archive"))


#: Snapshotters that load only when configured: (key path in overrides that configures them, why).
_CONFIGURED_SNAPSHOTTERS = {
    "stargz": (("proxy_plugins", "stargz"), "a proxy plugin (the stargz snapshotter daemon) at "
               "config.overrides.proxy_plugins.stargz"),
    "devmapper": (("plugins", "io.containerd.snapshotter.v1.devmapper", "pool_name"), "a thin pool at "
                  "config.overrides.plugins.io.containerd.snapshotter.v1.devmapper.pool_name"),
}


#: containerd's CRI plugins, by major version (1.x, 2.x): disabling one leaves kubelet no runtime.
CRI_PLUGINS = {False: ("io.containerd.grpc.v1.cri",),
               True: ("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images")}


#: The smallest gRPC message limit that still lets kubelet's CRI calls through (found by test_g).
MIN_GRPC_MESSAGE = 4 * 1024 * 1024


def _check_os(doc: dict, problems: list[Problem]) -> None:
    """containerd must be installable on image.os: its family is one that release runs, and a package
    install gets the version that release's own package is."""
    ctd, os_name = doc["containerd"], doc["image"]["os"]
    release = OS_RELEASES[os_name]
    major, minor, _ = (int(p) for p in ctd["version"].split("."))
    family = family_for(major, minor)
    if family is not None and family not in release["families"]:
        problems.append(Problem("containerd.version", f"got {ctd['version']!r} with image.os {os_name}, expected "
                                f"containerd {supported_versions(release['families'])} there "
                                f"(Debian {os_name.split('-')[1]} ships no containerd {family} and its runc)"))
    wanted = release["package_version"]
    if ctd["install"]["method"] == "package" and wanted and ctd["version"] != wanted:
        problems.append(Problem("containerd.version", f"got {ctd['version']!r} with install.method package on "
                                f"image.os {os_name}, expected {wanted} (the containerd package "
                                f"{release['suite']} ships; the tarball method installs other versions)"))


#: A Graviton (arm64) instance family: a1, or letters, a generation and `g` with optional feature letters
#: (t4g, m6gd, c7gn, r8g, x2gd, im4gn, is4gen, hpc7g, g5g). tests/aws hold it to moto's instance type data.
GRAVITON_FAMILY = re.compile(r"^(a1|[a-z]+[0-9]+g[a-z]*)$")


def is_graviton(instance_type: str) -> bool:
    """Whether *instance_type* (family.size) is of a Graviton (arm64) family, by its name."""
    return bool(GRAVITON_FAMILY.match(instance_type.split(".", 1)[0]))


def _check_instance_type(doc: dict, problems: list[Problem]) -> None:
    """The amazon-ebs build instance must run the image's architecture: arm64 only on Graviton, amd64 not there."""
    chosen, arch = doc["image"]["aws"]["instance_type"], doc["image"]["architecture"]
    if chosen is None or is_graviton(chosen) == (arch == "arm64"):
        return
    if arch == "arm64":
        wanted = "a Graviton (arm64) instance type such as t4g.small, m7g.large or c7gn.xlarge (family a1 or " \
                 "a generation followed by g)"
    else:
        wanted = "an x86_64 instance type such as t3.small or m7i.large (a family with g after its generation " \
                 "is Graviton, arm64)"
    problems.append(Problem("image.aws.instance_type", f"got {chosen!r} with image.architecture {arch}, "
                            f"expected {wanted}"))


#: image.architecture -> the names release files of the *other* architectures carry.
_OTHER_ARCH_NAMES = {"amd64": ("arm64", "aarch64"), "arm64": ("amd64", "x86_64", "x86-64")}


def _check_url_arch(key: str, art: dict, arch: str, problems: list[Problem]) -> None:
    """A download URL naming another architecture than image.architecture would install binaries that
    cannot run (an amd64 containerd on a Graviton instance): use {arch}, or this architecture's URL."""
    for field in ("url", "checksum_url"):
        url = art.get(field) or ""
        named = [n for n in _OTHER_ARCH_NAMES[arch] if re.search(rf"(?<![A-Za-z0-9]){n}(?![A-Za-z0-9])", url)]
        if named:
            problems.append(Problem(f"{key}.{field}", f"got {url!r}, which names {named[0]}, with image.architecture "
                                    f"{arch}: expected a URL of {arch} binaries (write {{arch}} where the "
                                    f"architecture goes)"))


def _dig(value: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _check_cri_loads(doc: dict, major: int, problems: list[Problem], warnings: list[str]) -> None:
    """Combinations that pass `config dump` but leave containerd without a CRI plugin (seen with the
    real 1.6, 1.7 and 2.1 daemons: CRI answers "unknown service runtime.v1.RuntimeService", or the
    daemon exits)."""
    cfg = doc["config"]
    if posixpath.normpath(cfg["root"]) == posixpath.normpath(cfg["state"]):
        problems.append(Problem("config.state", f"got {cfg['state']!r}, the same path as config.root; containerd "
                                "refuses to start (\"root and state must be different paths\")"))
    needed = _CONFIGURED_SNAPSHOTTERS.get(cfg["snapshotter"])
    if needed and _dig(cfg["overrides"], needed[0]) is None:
        problems.append(Problem("config.snapshotter", f"got {cfg['snapshotter']!r} with no plugin behind it: it "
                                f"needs {needed[1]}, else the CRI plugin does not load (\"failed to find "
                                "snapshotter\")"))
    if major == 1 and cfg["registry"]["mode"] == "hosts":
        configs = _dig(cfg["overrides"], ("plugins", "io.containerd.grpc.v1.cri", "registry", "configs"))
        for host, conf in (configs or {}).items():
            if isinstance(conf, dict) and "tls" in conf:
                problems.append(Problem(f"config.overrides.plugins.io.containerd.grpc.v1.cri.registry.configs.{host}.tls",
                                        f"got {show(conf['tls'])} with registry.config_path set (mode: hosts): "
                                        "containerd 1.x then does not load the CRI plugin; put ca/skip_verify on "
                                        "the mirror's endpoints instead"))
    disabled = cfg["overrides"].get("disabled_plugins")
    cri = [name for name in disabled if name in CRI_PLUGINS[major >= 2]] if isinstance(disabled, list) else []
    if cri and doc["system"]["profile"] == "kubernetes-worker":
        problems.append(Problem("config.overrides.disabled_plugins",
                                f"got {show(disabled)}: {', '.join(cri)} is containerd's CRI plugin, the only way "
                                "kubelet talks to containerd (system.profile: kubernetes-worker); expected a list "
                                f"without {', '.join(CRI_PLUGINS[major >= 2])}, or system.profile: none for a "
                                "containerd host without kubelet"))
    elif cri:
        warnings.append(f"config.overrides.disabled_plugins: {', '.join(cri)} turns containerd's CRI plugin off; "
                        "this renders, but `imagebuild verify` proves what kubelet sees through CRI and fails "
                        "such an image (so bake's image is never published)")
    family = family_for(major, int(doc["containerd"]["version"].split(".")[1]))
    server = KeyPaths(config_version_of(family)).grpc if family else ("grpc",)
    grpc = _dig(cfg["overrides"], server)
    for name in ("max_recv_message_size", "max_send_message_size"):
        size = grpc.get(name) if isinstance(grpc, dict) else None
        if isinstance(size, int) and not isinstance(size, bool) and size < MIN_GRPC_MESSAGE:
            problems.append(Problem(f"config.overrides.{'.'.join(server)}.{name}",
                                    f"got {size}, expected at least {MIN_GRPC_MESSAGE} (4 MiB, gRPC's own default): "
                                    "below it containerd cannot answer kubelet's CRI calls (\"trying to send "
                                    "message larger than max\")"))


def _check_endpoint_path(ep: dict, mode: str, key: str, problems: list[Problem], warnings: list[str]) -> None:
    """An endpoint URL's path must say what it is, and must lead containerd to a registry API path."""
    _, clean = url_parts(ep["url"])
    if ep["path"] and ep["override_path"]:
        problems.append(Problem(f"{key}.override_path", f"got true with path: {ep['path']}; path replaces "
                                "override_path, remove override_path"))
        return
    root = api_root(ep["url"], ep["path"], ep["override_path"], mode)
    if "v2" not in root.split("/"):
        hint = (f"path: prefix (requests /v2{clean}/<repo>/...)" if clean
                else "no override_path (requests /v2/<repo>/...)")
        problems.append(Problem(f"{key}.url", f"got {ep['url']!r}: containerd would request "
                                f"{root}/<repo>/manifests/<ref>, which has no /v2 and is no registry API path; "
                                f"use {hint}, or path: api-root with a URL path holding /v2"))
        return
    if ep["override_path"]:
        warnings.append(f"{key}.override_path is deprecated; use path: api-root")
    elif clean and ep["path"] is None:
        warnings.append(f"{key}.url: {ep['url']!r} has a path but no `path`; containerd takes it as the API root "
                        f"{root} (requests {root}/<repo>/manifests/<ref>). Say path: api-root with that URL, "
                        f"or path: prefix to request /v2{clean}/<repo>/manifests/<ref>")


def check_overrides(value: Any, path: str, problems: list[Problem], *, quote_in_keys: bool = True) -> None:
    """Overrides go to TOML verbatim, so refuse what TOML cannot hold (null), control characters in
    keys, and what containerd's own TOML parser cannot read back.

    containerd 1.x (go-toml v1) refuses a quoted key with an escaped double quote (`"a\\"b" = 1`:
    "invalid bare key character"), so the whole config fails to load: *quote_in_keys* is False there.
    """
    if value is None:
        problems.append(Problem(path, "got null, TOML has no null; remove the key instead"))
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or CONTROL_CHARS.search(key) or SURROGATES.search(key):
                problems.append(Problem(f"{path}.{key!r}", "bad key, expected printable text"))
            elif not quote_in_keys and '"' in key:
                problems.append(Problem(f"{path}.{key}", "bad key: containerd 1.x cannot read a key holding a "
                                        "double quote (its config would not load)"))
            else:
                check_overrides(item, f"{path}.{key}", problems, quote_in_keys=quote_in_keys)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_overrides(item, f"{path}[{index}]", problems, quote_in_keys=quote_in_keys)
    elif isinstance(value, str):
        if "\x00" in value:
            problems.append(Problem(path, "got a NUL character, which TOML cannot hold"))
        elif SURROGATES.search(value):
            problems.append(Problem(path, f"got {show(value)}: a lone UTF-16 surrogate is not a character "
                                    "and cannot be written to a file"))
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 63):
            problems.append(Problem(path, f"got {value}, outside TOML's 64-bit integers"))
    elif isinstance(value, float):
        if value != value:
            problems.append(Problem(path, "got nan, which can never be checked equal; remove it"))
    else:
        problems.append(Problem(path, f"got {show(value)} ({type(value).__name__}), expected a string, "
                                "number, boolean, list or mapping (quote dates)"))


def override_conflicts(spec: Spec) -> list[Problem]:
    """config.overrides may not set (or replace a table holding) a key a typed setting owns: the
    rendered file would carry the override while expected.json expects both values."""
    items = config_expectations(spec)
    owned = {tuple(i["path"]): i["name"] for i in items if not i["name"].startswith("config.overrides.")}
    owned[("version",)] = "containerd.version"
    owned[KeyPaths(spec.containerd.config_version).registry + ("mirrors",)] = "config.registry"
    problems = []
    for item in items:
        if not item["name"].startswith("config.overrides."):
            continue
        path = tuple(item["path"])
        for own, name in owned.items():
            n = min(len(own), len(path))
            if own[:n] == path[:n]:
                problems.append(Problem(item["name"], f"got {show(item['value'])}, which sets "
                                        f"{'.'.join(own)}: use {name} instead"))
                break
    return problems
