"""config.toml, loaded by the real containerd binary of its family (`containerd --config FILE
config dump`): it must parse, and every setting the spec tunes must come out as expected.json says.
"""
from __future__ import annotations

import tomllib

import pytest

from imagebuild.guest.check import dig
from imagebuild.render import config_toml, expected
from imagebuild.render.config_toml import KeyPaths
from tests.support import FAMILY_VERSIONS, PACKAGE_VERSIONS, containerd_dump, spec_of

RUNTIMES = {
    "nvidia": {"binary_name": "/usr/bin/nvidia-container-runtime"},
    "runsc": {"runtime_type": "io.containerd.runsc.v1", "config_path": "/etc/containerd/runsc.toml",
              "pod_annotations": ["dev.gvisor.*"]},
    "kata": {"runtime_type": "io.containerd.kata.v2", "config_path": "/opt/kata/share/defaults/kata/configuration.toml",
             "pod_annotations": ["io.katacontainers.*"], "privileged_without_host_devices": True},
}
LEGACY = {"mode": "legacy", "mirrors": [
    {"host": "docker.io", "endpoints": [{"url": "https://docker.mirror.example"}, {"url": "http://10.0.0.5:5000"}]},
    {"host": "registry.example:5000", "endpoints": [{"url": "https://mirror.example/registry", "path": "prefix"}]},
]}


#: The config version each family's own default is written in (and so imagebuild's file for it).
CONFIG_VERSIONS = {"1.6": 2, "1.7": 2, "2.0": 3, "2.1": 3, "2.2": 3, "2.3": 4, "2.4": 4}


def _cri_runtime(family: str) -> str:
    return "io.containerd.grpc.v1.cri" if family.startswith("1.") else "io.containerd.cri.v1.runtime"


def _overrides(family: str) -> dict:
    """CRI runtime keys, `debug` (top-level in every version) and the gRPC message size (top-level up to
    version 3, the io.containerd.server.v1.grpc plugin from version 4 on)."""
    runc = {"runc": {"options": {"NoNewKeyring": True}}}
    out: dict = {"debug": {"level": "debug"}, "plugins": {_cri_runtime(family): {
        "enable_unprivileged_ports": True, "enable_unprivileged_icmp": True, "containerd": {"runtimes": runc}}}}
    grpc = KeyPaths(CONFIG_VERSIONS[family]).grpc
    if len(grpc) == 1:
        out["grpc"] = {"max_recv_message_size": 33554432}
    else:
        out["plugins"][grpc[1]] = {"max_recv_message_size": 33554432}
    return out


VARIANTS = {
    "default": lambda family: {},
    "runtimes": lambda family: {"config": {"runtimes": RUNTIMES, "default_runtime": "nvidia"}},
    "legacy-mirrors": lambda family: {"config": {"registry": LEGACY}},
    "overrides": lambda family: {"config": {"overrides": _overrides(family)}},
    "tuned": lambda family: {"config": {
        "systemd_cgroup": False, "root": "/data/containerd", "state": "/run/containerd-alt", "oom_score": -500,
        "sandbox_image": "registry.k8s.io/pause:3.9", "snapshotter": "native", "discard_unpacked_layers": True,
        "max_container_log_line_size": -1, "imports": ["/etc/containerd/conf.d/*.toml"],
        "registry": {"config_path": "/etc/containerd/registries.d"}}},
}
CASES = [(family, variant) for family in FAMILY_VERSIONS for variant in VARIANTS]


def _spec(family: str, variant: str):
    doc = VARIANTS[variant](family)
    doc.setdefault("containerd", {})["version"] = FAMILY_VERSIONS[family]
    return spec_of(doc)


@pytest.mark.builds
@pytest.mark.parametrize("family, variant", CASES, ids=[f"{f}-{v}" for f, v in CASES])
def test_real_containerd_loads_the_config_and_reports_every_expectation(tmp_path, family, variant):
    spec = _spec(family, variant)
    assert spec.containerd.family == family
    text = config_toml.render(spec)
    proc, dumped = containerd_dump(text, family, tmp_path)
    assert proc.returncode == 0, proc.stderr
    version = CONFIG_VERSIONS[family]
    assert spec.containerd.config_version == version
    assert tomllib.loads(text)["version"] == version
    assert dumped["version"] == version
    expectations = expected.config_expectations(spec)
    assert len(expectations) >= 10
    mismatches = [(e["name"], e["path"], e["value"], dig(dumped, e["path"])) for e in expectations
                  if dig(dumped, e["path"]) != e["value"]]
    assert mismatches == []
    # Hosts and legacy registry modes never mix: a `mirrors` table together with config_path makes the
    # CRI plugin refuse to start (which `config dump` does not show, so the file is checked as well).
    registry_path = list(KeyPaths(spec.containerd.config_version).registry)
    for registry in (dig(tomllib.loads(text), registry_path), dig(dumped, registry_path)):
        if spec.config.registry.mode == "hosts":
            assert registry["config_path"] == spec.config.registry.config_path
            assert not registry.get("mirrors")
        else:
            assert registry["config_path"] == ""
            assert registry["mirrors"] == {m.host: {"endpoint": m.legacy_endpoints}
                                           for m in spec.config.registry.mirrors}


@pytest.mark.parametrize("family", FAMILY_VERSIONS)
def test_every_key_of_containerds_own_default_stays_visible(family):
    """The file is containerd's `config default` tuned, not a sparse file: every default key is kept."""
    def keys(tree, prefix=()):
        for key, value in tree.items():
            yield prefix + (key,)
            if isinstance(value, dict):
                yield from keys(value, prefix + (key,))

    spec = _spec(family, "default")
    default = set(keys(tomllib.loads(config_toml.reference_default(family))))
    rendered = set(keys(tomllib.loads(config_toml.render(spec))))
    registry = KeyPaths(spec.containerd.config_version).registry
    missing = {k for k in default - rendered if k[:len(registry) + 1] != registry + ("mirrors",)}
    assert missing == set()
    assert config_toml.render(spec).startswith("# Managed by imagebuild")


def test_runtime_handlers_are_complete(tmp_path):
    spec = _spec("1.7", "runtimes")
    _, dumped = containerd_dump(config_toml.render(spec), "1.7", tmp_path)
    runtimes = dumped["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert runtimes["nvidia"]["options"]["BinaryName"] == "/usr/bin/nvidia-container-runtime"
    assert runtimes["nvidia"]["options"]["SystemdCgroup"] is True  # a runc shim: the cgroup driver follows runc's
    assert runtimes["runsc"]["options"]["ConfigPath"] == "/etc/containerd/runsc.toml"
    # gVisor's shim decodes its options only under its own type (containerd hands them over as runtimeoptions)
    assert runtimes["runsc"]["options"]["TypeUrl"] == "io.containerd.runsc.v1.options"
    assert "TypeUrl" not in runtimes["kata"]["options"]       # kata reads ConfigPath from runtimeoptions as is
    assert "SystemdCgroup" not in runtimes["runsc"]["options"]
    assert runtimes["kata"]["pod_annotations"] == ["io.katacontainers.*"]
    assert runtimes["kata"]["privileged_without_host_devices"] is True


def test_the_consumer_is_not_a_rubber_stamp(tmp_path):
    """Sanity: the real parser does refuse a mistyped value, so the passes above mean something."""
    text = config_toml.render(_spec("1.6", "default")).replace("oom_score = -999", 'oom_score = "-999"')
    proc, _ = containerd_dump(text, "1.6", tmp_path)
    assert proc.returncode != 0


# ---------------------------------------------------------------- typed overrides, read back by containerd

def _typed_overrides(family: str) -> dict:
    """Lists directly under overrides, dotted keys (plugin names quoted and unquoted), a table inline
    at depth, and (1.7) a list of tables: each a key containerd knows."""
    cri = _cri_runtime(family)
    grpc = ".".join(KeyPaths(CONFIG_VERSIONS[family]).grpc)
    out = {
        "disabled_plugins": ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.zfs"],
        "required_plugins": [cri],
        f"{grpc}.max_recv_message_size": 33554432,
        f"plugins.{cri}.enable_unprivileged_ports": True,
        f'plugins."{cri}".containerd.runtimes.runc.options': {"NoNewKeyring": True, "Root": "/run/runc-x"},
        "timeouts": {"io.containerd.timeout.shim.cleanup": "7s"},
    }
    if family == "1.7":
        out["plugins.io.containerd.transfer.v1.local.unpack_config"] = [
            {"platform": "linux/amd64", "snapshotter": "native"},
            {"platform": "linux/arm64", "snapshotter": "overlayfs"}]
    return out


@pytest.mark.builds
@pytest.mark.parametrize("family", FAMILY_VERSIONS)
def test_typed_overrides_are_what_real_containerd_reads(tmp_path, family):
    spec = spec_of({"containerd": {"version": FAMILY_VERSIONS[family]},
                    "config": {"overrides": _typed_overrides(family)}})
    text = config_toml.render(spec)
    assert "grpc.max_recv_message_size" not in text  # a quoted dotted key, which containerd ignores
    proc, dumped = containerd_dump(text, family, tmp_path)
    assert proc.returncode == 0, proc.stderr
    items = [e for e in expected.config_expectations(spec) if e["name"].startswith("config.overrides")]
    cri = _cri_runtime(family)
    grpc_path = KeyPaths(CONFIG_VERSIONS[family]).grpc
    grpc = ".".join(grpc_path)
    names = {e["name"] for e in items}
    assert {"config.overrides.disabled_plugins", f"config.overrides.{grpc}.max_recv_message_size",
            f"config.overrides.plugins.{cri}.enable_unprivileged_ports",
            f"config.overrides.plugins.{cri}.containerd.runtimes.runc.options.Root"} <= names
    assert len(items) == 7 + (4 if family == "1.7" else 0)
    wrong = [(e["name"], e["value"], dig(dumped, e["path"])) for e in items if dig(dumped, e["path"]) != e["value"]]
    assert wrong == []
    assert dig(dumped, [*grpc_path, "max_recv_message_size"]) == 33554432
    assert dumped["disabled_plugins"] == ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.zfs"]
    # The check can fail: the same value under a quoted dotted key (how overrides used to render) is
    # ignored by containerd, and the expectation sees the default instead.
    flat = text.replace("max_recv_message_size = 33554432", "max_recv_message_size = 16777216", 1)
    flat = flat.replace("\n[", f'\n"{grpc}.max_recv_message_size" = 33554432\n\n[', 1)
    assert flat != text
    proc, dumped = containerd_dump(flat, family, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert dig(dumped, [*grpc_path, "max_recv_message_size"]) == 16777216


def test_dotted_keys_only_split_where_containerd_has_the_first_part():
    spec = spec_of({"config": {"registry": {"mode": "legacy", "mirrors": []}, "overrides": {
        "timeouts": {"my.timeout": "5s"},                          # timeouts has no key `my`: one key
        "plugins.io.containerd.grpc.v1.cri.enable_selinux": True,  # unquoted plugin name, joined back
        "plugins": {"io.containerd.grpc.v1.cri": {
            "registry.configs": {"r.example": {"tls": {"insecure_skip_verify": True}}}}},
    }}})
    assert spec.config.overrides == {
        "timeouts": {"my.timeout": "5s"},
        "plugins": {"io.containerd.grpc.v1.cri": {"enable_selinux": True,
                                                  "registry": {"configs": {
                                                      "r.example": {"tls": {"insecure_skip_verify": True}}}}}}}
    # The normalised spec is its own normal form: spec.json loads back to the same spec.
    assert spec_of(spec.document) == spec


def test_no_value_holds_a_blank_line_for_the_layout_to_collapse():
    """toml_items.dumps() collapses runs of blank lines: safe only while no value spans lines. A string
    with newlines is written escaped on one line, and containerd's reference defaults hold no
    multi-line string."""
    from imagebuild.render.toml_items import dumps, item, table
    from imagebuild.spec.containerd_keys import reference_default

    doc = table({"a": "one\n\n\ntwo", "b": ["x\n\ny"]})
    text = dumps(doc)
    assert "\n\n" not in text and tomllib.loads(text) == {"a": "one\n\n\ntwo", "b": ["x\n\ny"]}
    assert item("it's \"quoted\"").as_string() == '"it\'s \\"quoted\\""'
    for family in FAMILY_VERSIONS:
        assert '"""' not in reference_default(family) and "'''" not in reference_default(family), family


def test_every_family_has_upstreams_default_and_the_families_debian_packages_have_debians():
    from imagebuild.spec.containerd import package_families, reference_families
    from imagebuild.spec.containerd_keys import reference_default

    assert reference_families() == tuple(FAMILY_VERSIONS)
    assert package_families() == tuple(PACKAGE_VERSIONS)
    for family in FAMILY_VERSIONS:
        assert reference_default(family, "tarball") != ""
        if family in PACKAGE_VERSIONS:
            assert reference_default(family, "package") != ""
        else:
            with pytest.raises(FileNotFoundError):
                reference_default(family, "package")


@pytest.mark.builds
@pytest.mark.parametrize("family", FAMILY_VERSIONS)
def test_a_tarball_install_looks_for_cni_plugins_where_it_puts_them(tmp_path, family):
    """A tarball install renders from upstream's default, whose CNI bin_dir is where install.sh unpacks the
    plugins (and Calico, Cilium, Flannel put theirs); as the real containerd reads the file (config dump,
    what the in-guest cni.bin_dir check reads). Debian's 1.7 default (a package install's) says /usr/lib/cni:
    rendered for a tarball it would fail."""
    from imagebuild.guest.check import cni_dirs
    from imagebuild.render.expected import CNI_BIN_DIR

    tarball = spec_of({"containerd": {"version": FAMILY_VERSIONS[family], "install": {"cni_plugins": {}}}})
    proc, dumped = containerd_dump(config_toml.render(tarball), family, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert CNI_BIN_DIR in cni_dirs(dumped), cni_dirs(dumped)
    if family not in PACKAGE_VERSIONS:
        return   # Debian does not package it: tarball installs only
    package = spec_of({"containerd": {"version": FAMILY_VERSIONS[family], "install": {
        "method": "package", "package": {"version": PACKAGE_VERSIONS[family]}}}})
    _, dumped = containerd_dump(config_toml.render(package), family, tmp_path)
    if family == "1.7":   # Debian's patch: a package install's plugins (containernetworking-plugins) live there
        assert cni_dirs(dumped) == ["/usr/lib/cni"]
