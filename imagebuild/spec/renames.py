"""Keys containerd moved or removed, per family: a spec whose settings would write one is refused, with
the key that replaced it (or what replaced a removed one).

containerd reads a key it no longer uses without a word: a 1.x CRI path in a version 3 file, a top-level
`[grpc]` in a version 4 file, `enable_cdi` on 2.4 all parse, and the daemon runs on its defaults instead.
Its migrations rewrite them only in files of an older config version, and imagebuild writes each
family's own version. The table below is read from containerd's own code:
- config version 3 (2.0 on): the CRI plugin's settings leave `plugins."io.containerd.grpc.v1.cri"` for
  `io.containerd.cri.v1.images` and `io.containerd.cri.v1.runtime`; only the streaming server's keys stay
  (`plugins/cri/{images,runtime}/plugin.go`, `configMigration`);
- config version 4 (2.3 on): the server settings `grpc`, `ttrpc`, `debug`'s socket and `metrics` move into
  the `io.containerd.server.v1.*` plugins (`cmd/containerd/server/config`, `serviceMigrate`);
- containerd 2.4 removed what 2.3 announced as going (`pkg/deprecation`): `enable_cdi` (CDI is always
  on), the CNI `bin_dir` (`bin_dirs` stays), the tracing and OTLP plugins' settings (OTEL_* environment
  variables instead) and `enable_experimental_restore_via_create`. (The registry `mirrors`, `configs`
  and `auths` stay: 2.4 postponed their removal to 2.7.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imagebuild.spec.containerd_keys import reference_tree
from imagebuild.spec.fields import Problem, show
from imagebuild.spec.model import Spec
from imagebuild.spec.settings import config_expectations

CRI = "plugins.io.containerd.grpc.v1.cri"
IMAGES = "plugins.io.containerd.cri.v1.images"
RUNTIME = "plugins.io.containerd.cri.v1.runtime"


@dataclass(frozen=True)
class Gone:
    """A key path (dotted, as config.overrides and the spec's messages spell it) that containerd moved to
    *new*, or removed (*new* None: *why* says what replaces it), from a config version or a family on."""

    old: str
    new: str | None
    why: str
    config_version: int = 0
    family: tuple[int, int] = (0, 0)

    def applies(self, family: tuple[int, int], config_version: int) -> bool:
        return config_version >= self.config_version and family >= self.family


_V3 = "config version 3 moved the CRI plugin's settings"
_V4 = "config version 4 moved the server settings into plugins"
_OTEL = ("containerd 2.4 reads tracing settings only from OTEL_* environment variables (OTEL_SERVICE_NAME, "
         "OTEL_TRACES_SAMPLER, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL)")

TABLE: tuple[Gone, ...] = (
    # config version 3: what containerd's v2 -> v3 migration moves out of the CRI plugin
    Gone(f"{CRI}.sandbox_image", f"{IMAGES}.pinned_images.sandbox", _V3, config_version=3),
    *(Gone(f"{CRI}.{key}", f"{IMAGES}.{key}", _V3, config_version=3)
      for key in ("registry", "image_decryption", "max_concurrent_downloads", "image_pull_progress_timeout",
                  "image_pull_with_sync_fs", "stats_collect_period")),
    *(Gone(f"{CRI}.containerd.{key}", f"{IMAGES}.{key}", _V3, config_version=3)
      for key in ("snapshotter", "disable_snapshot_annotations", "discard_unpacked_layers")),
    Gone(f"{CRI}.containerd", f"{RUNTIME}.containerd", _V3, config_version=3),
    Gone(f"{CRI}.cni", f"{RUNTIME}.cni", _V3, config_version=3),
    # config version 4: serviceMigrate
    *(Gone(f"grpc.{key}", f"plugins.io.containerd.server.v1.grpc.{key}", _V4, config_version=4)
      for key in ("address", "uid", "gid", "max_recv_message_size", "max_send_message_size")),
    Gone("grpc.tcp_address", "plugins.io.containerd.server.v1.grpc-tcp.address", _V4, config_version=4),
    *(Gone(f"grpc.tcp_{key}", f"plugins.io.containerd.server.v1.grpc-tcp.{key}", _V4, config_version=4)
      for key in ("tls_ca", "tls_cert", "tls_key", "tls_common_name")),
    Gone("ttrpc", "plugins.io.containerd.server.v1.ttrpc", _V4, config_version=4),
    *(Gone(f"debug.{key}", f"plugins.io.containerd.server.v1.debug.{key}", _V4, config_version=4)
      for key in ("address", "uid", "gid")),
    Gone("metrics.address", "plugins.io.containerd.server.v1.metrics.address", _V4, config_version=4),
    Gone("metrics.grpc_histogram", "plugins.io.containerd.metrics.v1.grpc-prometheus.grpc_histogram", _V4,
         config_version=4),
    # containerd 2.4
    Gone(f"{RUNTIME}.enable_cdi", None, "CDI is always on in containerd 2.4 (cdi_spec_dirs still says where "
         "the CDI specs are)", family=(2, 4)),
    Gone(f"{RUNTIME}.cni.bin_dir", f"{RUNTIME}.cni.bin_dirs", "containerd 2.4 removed the single CNI bin_dir "
         "(bin_dirs is a list)", family=(2, 4)),
    Gone(f"{RUNTIME}.enable_experimental_restore_via_create", None, "containerd 2.4 removed restoring "
         "checkpoints in CRI CreateContainer", family=(2, 4)),
    Gone("plugins.io.containerd.internal.v1.tracing", None, _OTEL, family=(2, 4)),
    Gone("plugins.io.containerd.tracing.processor.v1.otlp", None, _OTEL, family=(2, 4)),
)


def _under(path: str, prefix: str) -> str | None:
    """The rest of *path* below *prefix* ("" for the prefix itself), or None when it is not below it."""
    if path == prefix:
        return ""
    return path[len(prefix) + 1:] if path.startswith(prefix + ".") else None


def _cri_rest(path: str, family: str, config_version: int) -> Gone | None:
    """The rest of the v3 migration: any other key of the 1.x CRI plugin that the family's own runtime
    plugin has moves there (containerd copies it over; the streaming server's keys stay)."""
    rest = _under(path, CRI)
    if config_version < 3 or not rest:
        return None
    key = rest.split(".", 1)[0]
    runtime = reference_tree(family).get("plugins", {}).get("io.containerd.cri.v1.runtime", {})
    return Gone(f"{CRI}.{key}", f"{RUNTIME}.{key}", _V3, config_version=3) if key in runtime else None


def moved(path: str, family: str, config_version: int) -> tuple[str | None, list[Gone]]:
    """Where the setting at dotted *path* lives in *family*'s config ((path, []) when it is where it is),
    and the moves that took it there; a removal ends the chain with None. A move can lead on to another
    (a 1.x CNI bin_dir on 2.4: to the runtime plugin, then to bin_dirs)."""
    major, minor = (int(part) for part in family.split("."))
    chain: list[Gone] = []
    current: str | None = path
    while current is not None and len(chain) < 4:
        found = [g for g in TABLE if g.applies((major, minor), config_version) and _under(current, g.old) is not None]
        gone = max(found, key=lambda g: len(g.old)) if found else _cri_rest(current, family, config_version)
        if gone is None:
            break
        chain.append(gone)
        rest = _under(current, gone.old)
        current = None if gone.new is None else gone.new + (f".{rest}" if rest else "")
    return current, chain


def _dotted(path: list[Any]) -> str:
    return ".".join(str(part) for part in path)


def gone_keys(spec: Spec) -> list[Problem]:
    """Every setting of *spec* (typed settings and config.overrides alike, as expected.json lists them)
    that would land on a key its containerd family moved or removed."""
    family, version = spec.containerd.family, spec.containerd.config_version
    items = config_expectations(spec)
    owned = {_dotted(i["path"]): i["name"] for i in items if not i["name"].startswith("config.overrides.")}
    problems = []
    for item in items:
        path = _dotted(item["path"])
        now, chain = moved(path, family, version)
        if not chain:
            continue
        written = owned.get(now or "") or (f"config.overrides.{now}" if item["name"].startswith("config.overrides.")
                                            else now)
        if now is None:
            problems.append(Problem(item["name"], f"got {show(item['value'])}, but containerd {family} has no "
                                    f"{chain[-1].old}: {chain[-1].why}; remove it"))
        else:
            problems.append(Problem(item["name"], f"got {show(item['value'])}, but containerd {family} (config "
                                    f"version {version}) reads it at {now} ({'; '.join(g.why for g in chain)}), "
                                    f"and ignores it here: set {written} instead"))
    return problems


def dropped_imports(doc: dict) -> list[str]:
    """A warning when the spec's config.imports leaves out an import the family's own default has (2.2 on:
    /etc/containerd/conf.d/*.toml, where drop-ins such as the NVIDIA container toolkit's go)."""
    from imagebuild.spec.containerd import family_of

    family = family_of(doc["containerd"]["version"])
    try:
        own = reference_tree(family).get("imports") or []
    except FileNotFoundError:
        return []
    left = [path for path in own if path not in doc["config"]["imports"]]
    if not left:
        return []
    return [f"config.imports: {show(list(doc['config']['imports']))} leaves out {', '.join(left)}, which containerd "
            f"{family}'s own default imports (drop-in configs, such as the NVIDIA container toolkit's, go there); "
            "list it in config.imports to keep it"]
