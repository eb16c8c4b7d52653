"""The typed model: what it derives from the document, how it hashes, how it reports problems."""
from __future__ import annotations

import json

import pytest

from imagebuild.spec import SpecError, load, parse
from tests.support import run_main, spec_of, write_spec


def snapshot_bytes(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("version, family, config_version", [
    ("1.6.20", "1.6", 2), ("1.6.0", "1.6", 2), ("1.7.24", "1.7", 2),
    ("2.0.5", "2.0", 3), ("2.1.9", "2.1", 3), ("2.2.1", "2.2", 3), ("2.3.7", "2.3", 4), ("2.4.0", "2.4", 4),
])
def test_family_and_config_version(version, family, config_version):
    ctd = spec_of({"containerd": {"version": version}}).containerd
    assert (ctd.family, ctd.config_version) == (family, config_version)
    assert ctd.install.tarball.version == version  # the tarball is containerd's own version


def test_artifact_urls_resolve():
    spec = spec_of({"containerd": {"version": "1.7.24", "install": {
        "tarball": {"url": "http://127.0.0.1:9/c/{version}/containerd-{version}.tgz",
                    "checksum_url": "{url}.sha256sum", "insecure": True},
        "runc": {"version": "1.1.15", "url": "file:///srv/runc-{version}", "sha256": "ab" * 32, "checksum_url": None},
        "cni_plugins": {"url": "https://example.com/cni-{version}.tgz", "checksum_url": "https://example.com/SUMS"}}}})
    install = spec.containerd.install
    assert install.tarball.resolved_url == "http://127.0.0.1:9/c/1.7.24/containerd-1.7.24.tgz"
    assert install.tarball.resolved_checksum_url == "http://127.0.0.1:9/c/1.7.24/containerd-1.7.24.tgz.sha256sum"
    assert install.tarball.filename == "containerd-1.7.24.tgz"
    assert (install.runc.resolved_url, install.runc.resolved_checksum_url) == ("file:///srv/runc-1.1.15", None)
    assert install.cni_plugins.version == "1.2.0"
    assert install.cni_plugins.resolved_checksum_url == "https://example.com/SUMS"


def test_defaults_that_depend_on_other_keys():
    pkg = spec_of({"name": "gpu-nodes", "containerd": {"install": {
        "method": "package", "package": {"version": "1.6.20~ds1-1+deb12u3"}}}})
    assert pkg.unit.exec_start == "/usr/bin/containerd"
    assert pkg.image.aws.ssm_parameter == "/imagebuild/gpu-nodes/latest"
    assert spec_of({"unit": {"exec_start": "/opt/bin/containerd --log-level debug"}}).unit.exec_start == \
        "/opt/bin/containerd --log-level debug"
    mirrors = spec_of({"containerd": {"version": "2.1.9"}, "config": {"registry": {"mirrors": [
        {"host": "docker.io", "endpoints": []},
        {"host": "registry.example:5000", "endpoints": []},
        {"host": "ghcr.io", "server": "https://ghcr.example", "endpoints": []}]}}}).config.registry.mirrors
    assert [m.upstream for m in mirrors] == ["https://registry-1.docker.io", "https://registry.example:5000",
                                             "https://ghcr.example"]


def test_spec_hash_ignores_layout_and_follows_content():
    block = "config:\n  oom_score: -500\n  sandbox_image: registry.k8s.io/pause:3.9\nname: a-b\n"
    flow = "{name: a-b, config: {sandbox_image: 'registry.k8s.io/pause:3.9', oom_score: -500}}  # a comment\n"
    assert parse(block).spec_hash == parse(flow).spec_hash
    assert parse(block).spec_hash != parse(block.replace("-500", "-501")).spec_hash
    assert len(parse(block).spec_hash) == 64


def test_every_problem_is_reported_at_once():
    with pytest.raises(SpecError) as info:
        spec_of({"name": "Bad Name", "config": {"oom_score": 99999, "snapshoter": "native"},
                 "unit": {"restart_sec": -1}})
    paths = sorted(p.path for p in info.value.problems)
    assert paths == ["config.oom_score", "config.snapshoter", "name", "unit.restart_sec"]
    report = info.value.report()
    assert report.startswith("test spec: 4 problem(s)\n")
    assert "config.snapshoter: unknown key (did you mean 'snapshotter'?)" in report


def test_effective_spec_json_loads_back_to_the_same_spec(tmp_path):
    """spec.json (defaults filled in) is itself a valid spec that renders the same outputs.

    Regression: the model used to write containerd.install.tarball.version into the document, a key
    the schema does not have, so spec.json (and anything re-parsing spec.document) was refused.
    """
    doc = {"containerd": {"version": "1.7.24"}, "config": {"oom_score": -500, "runtimes": {
        "runsc": {"runtime_type": "io.containerd.runsc.v1"}, "kata": {"runtime_type": "io.containerd.kata.v2"}}},
        "system": {"sysctls": {"vm.max_map_count": 262144, "net.ipv4.ip_forward": 1}}}
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_main(["render", str(write_spec(tmp_path, doc)), "-o", str(first)])[0] == 0
    code, _, err = run_main(["render", str(first / "spec.json"), "-o", str(second)])
    assert code == 0, err
    # Every output, byte for byte (spec.json keeps mapping order: sysctls, runtimes stay as written).
    assert snapshot_bytes(first) == snapshot_bytes(second)
    assert json.loads((first / "spec.json").read_text()) == spec_of(doc).document


@pytest.mark.parametrize("doc", [
    {"config": {"overrides": {"plugins": {"io.containerd.gc.v1.scheduler": {"pause_threshold": 1e-05}},
                              "debug": {"level": "info"}}}},
    {"unit": {"description": "containerd \U0001f600 \U00010000"}},
    {"verify": {"checks": [{"name": "emoji", "run": "echo \U0001f680 done"}]}},
], ids=["exponent-float", "astral-description", "astral-check"])
def test_spec_json_is_read_as_json(tmp_path, doc):
    """Regression (found by tests/test_properties.py): spec.json was read back as YAML, and YAML 1.1
    reads `1e-05` as a string and a \\ud83d\\ude00 escape pair as two lone surrogates, so the
    override became a TOML string and the description could not be written at all."""
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_main(["render", str(write_spec(tmp_path, doc)), "-o", str(first)])[0] == 0
    code, _, err = run_main(["render", str(first / "spec.json"), "-o", str(second)])
    assert code == 0, err
    assert snapshot_bytes(first) == snapshot_bytes(second)
    assert load(first / "spec.json") == spec_of(doc)


def test_json_specs_refuse_duplicate_keys_and_yaml_flow_mappings_still_load():
    with pytest.raises(SpecError, match="not valid JSON: duplicate key 'name'"):
        parse('{"name": "a", "name": "b"}')
    assert parse("{name: flow-style}").name == "flow-style"


def test_load_errors_are_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(SpecError, match="cannot read"):
        load(binary)
    with pytest.raises(SpecError, match="expected a mapping at the top level"):
        parse("- a\n- b\n")


@pytest.mark.parametrize("doc", [
    {},
    {"image": {"os": "debian-13"}, "containerd": {"version": "1.7.24"}},
    {"image": {"os": "debian-13"}, "containerd": {"version": "2.1.9"}},
    {"image": {"os": "debian-13"}, "containerd": {"version": "1.7.24", "install": {
        "method": "package", "package": {"version": "1.7.24~ds1-6+deb13u1"}}}},
    {"image": {"os": "debian-13", "architecture": "arm64"}, "containerd": {"version": "2.1.9"}},
    {"image": {"architecture": "arm64"}},
    {"image": {"os": "debian-12"}, "containerd": {"version": "1.7.24", "install": {
        "method": "package", "package": {"version": "1.7.24~ds1-1"}}}},
    {"image": {"os": "debian-13", "base": {"source": "https://images.example/debian-13.qcow2",
                                           "checksum": "sha256:" + "ab" * 32}}, "containerd": {"version": "1.7.24"}},
])
def test_os_and_architecture_combinations_that_install(doc):
    spec = spec_of(doc)
    assert spec.image.os == doc.get("image", {}).get("os", "debian-12")  # debian-12 stays the default
    assert spec.image.architecture == doc.get("image", {}).get("architecture", "amd64")


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_download_urls_resolve_arch_to_image_architecture(arch):
    """The default download URLs carry {arch}: the release file names of image.architecture
    (containerd-<v>-linux-<arch>.tar.gz, runc.<arch>, cni-plugins-linux-<arch>-v<v>.tgz)."""
    spec = spec_of({"image": {"architecture": arch}, "containerd": {"install": {"cni_plugins": {}}}})
    install = spec.containerd.install
    assert install.tarball.filename == f"containerd-1.6.20-linux-{arch}.tar.gz"
    assert install.tarball.resolved_checksum_url == install.tarball.resolved_url + ".sha256sum"
    assert install.runc.filename == f"runc.{arch}"
    assert install.cni_plugins is not None and install.cni_plugins.filename == f"cni-plugins-linux-{arch}-v1.2.0.tgz"
    assert "{arch}" in spec.document["containerd"]["install"]["tarball"]["url"]   # the document keeps the template
    other = {"amd64": "arm64", "arm64": "amd64"}[arch]
    assert other not in install.tarball.resolved_url + install.runc.resolved_url
