"""containerd 2.0, 2.2, 2.3 LTS and 2.4 beside 1.6, 1.7 and 2.1: upstream's builds of each family's latest
patch (devtools.families), each family's own `config default`, its config version, and the keys a
family moved or removed (imagebuild/spec/renames.py), each shown on the real daemon of the family.
"""
from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest
import tomlkit

from devtools import defaults, families, upstream
from imagebuild.guest.check import dig
from imagebuild.render import config_toml, expected
from imagebuild.spec import SpecError, renames
from imagebuild.spec import load as spec_load
from imagebuild.spec.containerd_keys import reference_default, reference_tree
from tests import cases
from tests.support import FAMILY_VERSIONS, PACKAGE_VERSIONS, spec_of

NEW = ("2.0", "2.2", "2.3", "2.4")
pytestmark = pytest.mark.builds   # the families' real daemons, built from the Go module proxy: run after the boots


def test_the_new_families_are_upstreams_latest_patches_and_the_tests_run_them():
    assert dict(families.UPSTREAM_ONLY) == {f: FAMILY_VERSIONS[f] for f in NEW}
    assert not set(families.UPSTREAM_ONLY) & set(PACKAGE_VERSIONS)
    for family in NEW:
        assert families.release(family) == FAMILY_VERSIONS[family]
        assert families.binary(family) == upstream.containerd(FAMILY_VERSIONS[family]) / "bin" / "containerd"


@pytest.mark.parametrize("family", NEW)
def test_the_defaults_file_is_the_binarys_own_config_default_and_records_its_source(family):
    """imagebuild/defaults/upstream/config-<family>.toml is byte for byte what upstream's build prints
    (`make regen-defaults`), and the README's table names the release and what `--version` said."""
    binary = families.binary(family)
    said = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout.split()
    assert said[:3] == ["containerd", "github.com/containerd/containerd/v2", f"v{FAMILY_VERSIONS[family]}"]
    printed = subprocess.run([binary, "config", "default"], capture_output=True, check=True).stdout
    assert (defaults.defaults_dir() / "upstream" / f"config-{family}.toml").read_bytes() == printed
    assert not (defaults.defaults_dir() / "debian" / f"config-{family}.toml").exists()
    row = f"| {family} | {FAMILY_VERSIONS[family]} | `{' '.join(said)}` | none (not packaged by Debian"
    assert row in (defaults.defaults_dir() / "README.md").read_text()


def test_the_config_version_is_the_one_each_familys_own_default_prints():
    versions = {family: tomllib.loads(reference_default(family))["version"] for family in FAMILY_VERSIONS}
    assert versions == {"1.6": 2, "1.7": 2, "2.0": 3, "2.1": 3, "2.2": 3, "2.3": 4, "2.4": 4}
    for family, version in versions.items():
        assert spec_of({"containerd": {"version": FAMILY_VERSIONS[family]}}).containerd.config_version == version


def test_2_3_and_2_4_are_version_4_with_the_server_settings_in_plugins():
    for family in ("2.3", "2.4"):
        tree = reference_tree(family)
        assert not {"grpc", "ttrpc", "metrics"} & set(tree), family
        assert {"io.containerd.server.v1.grpc", "io.containerd.server.v1.ttrpc", "io.containerd.server.v1.metrics",
                "io.containerd.server.v1.debug"} <= set(tree["plugins"])
        assert tree["imports"] == ["/etc/containerd/conf.d/*.toml"]
        assert tree["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"].startswith(
            "registry.k8s.io/pause:3.10.")


def _keys(tree, prefix=()):
    for key, value in tree.items():
        yield prefix + (key,)
        if isinstance(value, dict):
            yield from _keys(value, prefix + (key,))


def test_2_4_has_no_enable_cdi_no_single_bin_dir_and_no_tracing_plugins_2_3_has_them(tmp_path):
    """containerd 2.4's own default, every config imagebuild renders for it (default, runtimes, legacy mirrors,
    CNI plugins installed) and what the real 2.4 reads back (`config dump`) hold none of the removed keys."""
    runtime = ("plugins", "io.containerd.cri.v1.runtime")
    removed = {runtime + ("enable_cdi",), runtime + ("cni", "bin_dir"),
               runtime + ("enable_experimental_restore_via_create",), ("plugins", "io.containerd.internal.v1.tracing"),
               ("plugins", "io.containerd.tracing.processor.v1.otlp")}
    assert removed <= set(_keys(reference_tree("2.3")))
    assert not removed & set(_keys(reference_tree("2.4")))
    assert reference_tree("2.4")["plugins"]["io.containerd.cri.v1.runtime"]["cni"]["bin_dirs"] == ["/opt/cni/bin"]
    docs = [{}, {"config": {"runtimes": {"nvidia": {"binary_name": "/usr/bin/nvidia-container-runtime"}},
                            "default_runtime": "nvidia"}},
            {"config": {"registry": {"mode": "legacy", "mirrors": [
                {"host": "docker.io", "endpoints": [{"url": "https://docker.mirror.example"}]}]}}},
            {"containerd": {"install": {"cni_plugins": {}}}}]
    for doc in docs:
        doc = json.loads(json.dumps(doc))
        doc.setdefault("containerd", {})["version"] = FAMILY_VERSIONS["2.4"]
        text = config_toml.render(spec_of(doc))
        assert not removed & set(_keys(tomllib.loads(text))), doc
        path = tmp_path / "config.toml"
        path.write_text(text)
        dump = subprocess.run([families.binary("2.4"), "--config", path, "config", "dump"], capture_output=True,
                              text=True, check=True).stdout
        assert not removed & set(_keys(tomllib.loads(dump))), doc


# ------------------------------------------------- the moved and removed keys, shown on the real daemons

#: One probe per entry of renames.TABLE: a key path under the old name and a value that is not
#: the default (the test checks both), plus one key of the generic 1.x CRI -> runtime rule.
PROBES = {
    "plugins.io.containerd.grpc.v1.cri.sandbox_image": ("registry.k8s.io/pause:9.9",),
    "plugins.io.containerd.grpc.v1.cri.registry": ("config_path", "/etc/containerd/probe.d"),
    "plugins.io.containerd.grpc.v1.cri.image_decryption": ("key_model", "probe"),
    "plugins.io.containerd.grpc.v1.cri.max_concurrent_downloads": (7,),
    "plugins.io.containerd.grpc.v1.cri.image_pull_progress_timeout": ("7m0s",),
    "plugins.io.containerd.grpc.v1.cri.image_pull_with_sync_fs": (True,),
    "plugins.io.containerd.grpc.v1.cri.stats_collect_period": (7,),
    "plugins.io.containerd.grpc.v1.cri.containerd.snapshotter": ("native",),
    "plugins.io.containerd.grpc.v1.cri.containerd.disable_snapshot_annotations": (False,),
    "plugins.io.containerd.grpc.v1.cri.containerd.discard_unpacked_layers": (True,),
    "plugins.io.containerd.grpc.v1.cri.containerd": ("ignore_rdt_not_enabled_errors", True),
    "plugins.io.containerd.grpc.v1.cri.cni": ("conf_dir", "/etc/cni/probe.d"),
    "plugins.io.containerd.grpc.v1.cri.enable_selinux": (True,),      # the generic rule
    "grpc.address": ("/run/containerd/probe.sock",),
    "grpc.uid": (7,),
    "grpc.gid": (7,),
    "grpc.max_recv_message_size": (33554432,),
    "grpc.max_send_message_size": (33554432,),
    "grpc.tcp_address": ("127.0.0.1:7777",),
    "grpc.tcp_tls_ca": ("/etc/probe/ca.pem",),
    "grpc.tcp_tls_cert": ("/etc/probe/cert.pem",),
    "grpc.tcp_tls_key": ("/etc/probe/key.pem",),
    "grpc.tcp_tls_common_name": ("probe",),
    "ttrpc": ("uid", 7),
    "debug.address": ("/run/containerd/probe-debug.sock",),
    "debug.uid": (7,),
    "debug.gid": (7,),
    "metrics.address": ("127.0.0.1:7778",),
    "metrics.grpc_histogram": (True,),
    "plugins.io.containerd.cri.v1.runtime.enable_cdi": (False,),
    "plugins.io.containerd.cri.v1.runtime.cni.bin_dir": ("/usr/lib/probe",),
    "plugins.io.containerd.cri.v1.runtime.enable_experimental_restore_via_create": (True,),
    "plugins.io.containerd.internal.v1.tracing": ("service_name", "probe"),
    "plugins.io.containerd.tracing.processor.v1.otlp": ("endpoint", "otel.probe:4317"),
}


def test_every_entry_of_the_table_has_a_probe():
    assert {gone.old for gone in renames.TABLE} | {"plugins.io.containerd.grpc.v1.cri.enable_selinux"} \
        == set(PROBES)


def _path(dotted: str, family: str) -> tuple[str, ...]:
    """*dotted* as a key path: a plugin id (dots and all) kept whole where the family's default, or the
    containerd 1.7 or 2.3 default, names it."""
    parts = dotted.split(".")
    if parts[0] != "plugins":
        return tuple(parts)
    known = {*reference_tree(family)["plugins"], *reference_tree("1.7")["plugins"], *reference_tree("2.3")["plugins"]}
    for end in range(len(parts), 1, -1):
        if ".".join(parts[1:end]) in known:
            return ("plugins", ".".join(parts[1:end]), *parts[end:])
    raise AssertionError(f"no plugin id in {dotted}")


def _dump_with(family: str, path: tuple[str, ...], value, tmp_path: Path) -> dict:
    """`config dump` of the real *family* daemon reading imagebuild's config for it with *value* at *path*."""
    spec = spec_of({"containerd": {"version": FAMILY_VERSIONS[family]}})
    doc = tomlkit.parse(config_toml.render(spec))
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, tomlkit.table())
    node[path[-1]] = value
    config = tmp_path / f"config-{family}.toml"
    config.write_text(tomlkit.dumps(doc))
    proc = subprocess.run([families.binary(family), "--config", config, "config", "dump"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    return tomllib.loads(proc.stdout)


def _probe(old: str) -> tuple[str, object]:
    *leaf, value = PROBES[old]
    return ".".join([old, *leaf]), value


def _threshold(old: str) -> tuple[str, str]:
    """(the last family that reads *old* where it is, the first family that moved or removed it)."""
    (gone,) = [g for g in renames.TABLE if g.old == old] or [renames.Gone(old, "", "", 3)]
    if gone.family == (2, 4):
        return "2.3", "2.4"
    return ("2.2", "2.3") if gone.config_version == 4 else ("1.7", "2.0")


@pytest.mark.parametrize("old", list(PROBES))
def test_a_moved_or_removed_key_is_ignored_by_the_daemon_that_moved_it_and_read_by_the_one_before(old, tmp_path):
    """Where the table says a key went, the family's real daemon reads it there, and ignores it under the
    old name (its value never reaches the new place): so imagebuild refuses the old name, naming the new.
    The family before reads the old name (so the table is not wider than containerd's change), and a spec
    setting it there is accepted."""
    import yaml

    probe, value = _probe(old)
    before, moved_in = _threshold(old)
    for family in [f for f in FAMILY_VERSIONS if f >= moved_in]:
        now, chain = renames.moved(probe, family, spec_of({"containerd": {
            "version": FAMILY_VERSIONS[family]}}).containerd.config_version)
        assert chain, (probe, family)
        if now is None and len(_path(old, family)) == 2:
            # A plugin whose settings went: it registers no configuration any more (its table is gone from
            # the dump of a config without it; the dump echoes a table it is given, which nothing reads).
            dumped = _dump_with(family, ("version",), tomllib.loads(reference_default(family))["version"], tmp_path)
            assert dig(dumped, list(_path(old, family))) == "<absent>", (old, family)
            dumped = _dump_with(before, ("version",), tomllib.loads(reference_default(before))["version"], tmp_path)
            assert dig(dumped, list(_path(old, before))) == {}, (old, before)   # registered, all keys unset
        elif now is None:   # removed: the daemon keeps nothing of it
            dumped = _dump_with(family, _path(probe, family), value, tmp_path)
            assert dig(dumped, list(_path(probe, family))) != value, (probe, family)
        else:
            new = list(_path(now, family))
            baseline = dig(_dump_with(family, ("version",), tomllib.loads(reference_default(family))["version"],
                                      tmp_path), new)
            ignored = dig(_dump_with(family, _path(probe, family), value, tmp_path), new)
            wanted = [value] if now.endswith(".bin_dirs") else value
            read = dig(_dump_with(family, tuple(new), wanted, tmp_path), new)
            assert (ignored, read) == (baseline, wanted) and baseline != wanted, (probe, family, now)
        with pytest.raises(SpecError) as info:
            spec_of(yaml.safe_dump({"containerd": {"version": FAMILY_VERSIONS[family]},
                                    "config": {"overrides": {probe: value}}}))
        assert [p.path for p in info.value.problems] == [f"config.overrides.{probe}"], info.value.report()
    dumped = _dump_with(before, _path(probe, before), value, tmp_path)
    assert dig(dumped, list(_path(probe, before))) == value, (probe, before)
    plain = spec_of({"containerd": {"version": FAMILY_VERSIONS[before]}})
    owned = {".".join(item["path"]) for item in expected.config_expectations(plain)}
    if probe not in owned:   # (a key a typed setting owns is refused for that reason: tests/test_bad_specs.py)
        spec_of(yaml.safe_dump({"containerd": {"version": FAMILY_VERSIONS[before]},
                                "config": {"overrides": {probe: value}}}))


# --------------------------------------------------------------------------- containerd config migrate

MIGRATE_SPECS = {
    "default": {},
    "tuned": {"config": {"sandbox_image": "registry.k8s.io/pause:3.10", "imports": ["/etc/containerd/conf.d/*.toml"],
                         "runtimes": {"nvidia": {"binary_name": "/usr/bin/nvidia-container-runtime"},
                                      "runsc": {"runtime_type": "io.containerd.runsc.v1",
                                                "config_path": "/etc/containerd/runsc.toml"}},
                         "default_runtime": "nvidia", "systemd_cgroup": False, "snapshotter": "native",
                         "max_container_log_line_size": -1, "root": "/data/containerd",
                         "overrides": {"debug": {"level": "debug"}}}},
    "legacy-mirrors": {"config": {"registry": {"mode": "legacy", "mirrors": [
        {"host": "docker.io", "endpoints": [{"url": "https://docker.mirror.example"}, {"url": "http://10.0.0.5:5000"}]}]}}},
}


def _flat(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flat(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _migrated(binary: Path, text: str, tmp_path: Path) -> dict:
    path = tmp_path / "to-migrate.toml"
    path.write_text(text)
    proc = subprocess.run([binary, "--config", path, "config", "migrate"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return dict(_flat(tomllib.loads(proc.stdout)))


def _rendered(name: str, family: str) -> tuple[str, object]:
    doc = json.loads(json.dumps(MIGRATE_SPECS[name]))
    doc.setdefault("containerd", {})["version"] = FAMILY_VERSIONS[family]
    spec = spec_of(doc)
    return config_toml.render(spec), spec


def _differences(a: dict, b: dict) -> set:
    return {key for key in a.keys() | b.keys() if a.get(key, "<absent>") != b.get(key, "<absent>")}


@pytest.mark.parametrize("migrator", ["2.3", "2.4"])
@pytest.mark.parametrize("name", list(MIGRATE_SPECS))
def test_imagebuilds_v3_and_v4_of_a_spec_migrate_to_the_same_config(tmp_path, name, migrator):
    """`containerd config migrate` (2.3's and 2.4's) of imagebuild's version 3 file for a spec (containerd
    2.2) and of its version 4 file for the same spec (2.3, 2.4) print the same config, key for key.

    The version 2 file (1.7) says the same on every key the spec sets; where it differs, the difference is
    exactly where containerd 1.7's own default differs from 2.3's (both migrated the same way): keys the
    v2 file spells out from 1.7's defaults (enable_cdi false, unprivileged ports and ICMP off, NRI off,
    1.7-only plugins), which imagebuild renders from each family's own default on purpose."""
    binary = families.binary(migrator)
    v4, spec = _rendered(name, migrator)
    want = _migrated(binary, v4, tmp_path)
    assert want[("version",)] == 4
    for family in ("2.2", "2.3", "2.4"):
        assert _differences(_migrated(binary, _rendered(name, family)[0], tmp_path), want) == set(), family
    # The version 2 file: only 1.7's own defaults differ, never a key the spec sets.
    v2 = _migrated(binary, _rendered(name, "1.7")[0], tmp_path)
    own = _differences(_migrated(binary, reference_default("1.7"), tmp_path),
                       _migrated(binary, reference_default(migrator), tmp_path))
    assert _differences(v2, want) <= own
    tuned = {tuple(item["path"]) for item in expected.config_expectations(spec)}
    assert not _differences(v2, want) & tuned
    # The comparison can fail: a v3 file that says one thing otherwise does.
    other = tomlkit.parse(_rendered(name, "2.2")[0])
    other["plugins"]["io.containerd.cri.v1.runtime"]["max_container_log_line_size"] = 12345
    assert _differences(_migrated(binary, tomlkit.dumps(other), tmp_path), want) == {
        ("plugins", "io.containerd.cri.v1.runtime", "max_container_log_line_size")}


# --------------------------------------------------------------------------- what the spec says of a family

def test_a_package_install_names_the_families_debian_packages():
    for family in PACKAGE_VERSIONS:
        spec_of({"containerd": {"version": FAMILY_VERSIONS[family], "install": {
            "method": "package", "package": {"version": PACKAGE_VERSIONS[family]}}}})
    for family in NEW:
        version = FAMILY_VERSIONS[family]
        with pytest.raises(SpecError) as info:
            spec_of({"containerd": {"version": version, "install": {"method": "package", "package": {
                "version": f"{version}-1"}}}})
        assert str(info.value) == (
            f"containerd.version: got {version!r} with install.method package, expected 1.6.x-1.7.x, 2.1.x: a "
            "package install supports only the families Debian packages (containerd 1.6, 1.7, 2.1); containerd "
            f"{family} installs with install.method: tarball (upstream's release)")


def test_leaving_out_the_conf_d_import_of_2_2_on_is_a_warning():
    for family in FAMILY_VERSIONS:
        spec = spec_of({"containerd": {"version": FAMILY_VERSIONS[family]}})
        warned = [w for w in spec.warnings if w.startswith("config.imports:")]
        assert bool(warned) == (family >= "2.2"), family
    spec = spec_of({"containerd": {"version": FAMILY_VERSIONS["2.3"]},
                    "config": {"imports": ["/etc/containerd/conf.d/*.toml"]}})
    assert not [w for w in spec.warnings if w.startswith("config.imports:")]


# --------------------------------------------------------------------------- the golden cases, on their daemon

@pytest.mark.parametrize("name", cases.names())
def test_each_golden_cases_config_loads_in_its_own_familys_daemon_as_expected_json_says(name, tmp_path):
    """tests/cases/<name>/expected: config.toml read back by the real containerd of the case's family (2.3
    LTS, 2.4, ...) reports every value its expected.json lists, in the config version expected.json names."""
    root = cases.CASES_DIR / name / cases.EXPECTED
    want = json.loads((root / "expected.json").read_text())
    family = spec_load(cases.CASES_DIR / name / "spec.yaml").containerd.family
    config = tmp_path / "config.toml"
    config.write_bytes((root / "payload/etc/containerd/config.toml").read_bytes())
    proc = subprocess.run([families.binary(family), "--config", config, "config", "dump"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    dumped = tomllib.loads(proc.stdout)
    assert dumped["version"] == want["config_version"] == tomllib.loads(config.read_text())["version"]
    assert [(e["name"], e["value"], dig(dumped, e["path"])) for e in want["config"]
            if dig(dumped, e["path"]) != e["value"]] == []
