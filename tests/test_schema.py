"""The model: the default spec is the seed's setup, `init` and `schema` are derived from it and agree
with it, and the warnings fire where the spec is legal but questionable."""
from __future__ import annotations

import json
import typing

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from imagebuild.spec import SpecError, fields, load, model, problems
from imagebuild.spec.load import init_spec
from tests.support import eol_warning, run_cli, run_main, spec_of, write_spec

SEED_MIRRORS = [
    ("docker.io", "https://registry-1.docker.io",
     [("https://docker.mirrors.ustc.edu.cn", False), ("http://hub-mirror.c.163.com", False)]),
    ("gcr.io", "https://gcr.io", [("https://gcr.mirrors.ustc.edu.cn", False)]),
    ("k8s.gcr.io", "https://k8s.gcr.io", [("https://gcr.mirrors.ustc.edu.cn/google-containers/", "prefix")]),
    ("quay.io", "https://quay.io", [("https://quay.mirrors.ustc.edu.cn", False)]),
]


def test_default_spec_is_the_seed():
    spec = load()
    assert spec.warnings == (eol_warning("1.6"),)   # the seed's containerd: past upstream's support, said once
    assert spec.name == "containerd-golden"
    assert spec.containerd.version == "1.6.20"
    assert (spec.containerd.family, spec.containerd.config_version) == ("1.6", 2)
    assert spec.containerd.install.method == "tarball"
    assert spec.containerd.install.tarball.resolved_url.endswith(
        "/containerd/containerd/releases/download/v1.6.20/containerd-1.6.20-linux-amd64.tar.gz")
    assert spec.containerd.install.runc.version == "1.1.5"
    cfg = spec.config
    assert cfg.sandbox_image == "registry.cn-hangzhou.aliyuncs.com/google_containers/pause:3.6"
    assert (cfg.root, cfg.state, cfg.oom_score) == ("/var/lib/containerd", "/run/containerd", -999)
    assert cfg.systemd_cgroup is True
    assert (cfg.registry.mode, cfg.registry.config_path) == ("hosts", "/etc/containerd/certs.d")
    got = [(m.host, m.upstream, [(e.url, e.path or e.override_path) for e in m.endpoints])
           for m in cfg.registry.mirrors]
    assert got == SEED_MIRRORS
    for mirror in cfg.registry.mirrors:
        for ep in mirror.endpoints:
            assert ep.capabilities == ("pull", "resolve")
            assert (ep.ca, ep.skip_verify, ep.headers) == (None, False, {})
    assert (cfg.default_runtime, cfg.runtimes, cfg.overrides) == ("runc", {}, {})
    assert (cfg.snapshotter, cfg.max_container_log_line_size, cfg.discard_unpacked_layers) == (
        "overlayfs", 16384, False)
    unit = spec.unit
    assert unit.type == "notify" and unit.delegate is True
    assert (unit.kill_mode, unit.restart, unit.restart_sec) == ("process", "always", 5)
    assert (unit.limit_nproc, unit.limit_core, unit.limit_nofile, unit.tasks_max) == ("infinity",) * 4
    assert unit.oom_score_adjust == -999
    assert unit.exec_start == "/usr/local/bin/containerd"
    assert unit.exec_start_pre == ("-/sbin/modprobe overlay",)
    assert unit.after == ("network.target", "local-fs.target")
    assert unit.wanted_by == "multi-user.target"
    assert spec.system.modules == ("overlay", "br_netfilter")
    # sysctl values are text in the model (YAML 1 and "1" are the same setting).
    # The kubernetes-worker profile's first, then the seed's own.
    assert spec.system.profile == "kubernetes-worker"
    assert spec.system.sysctls == {"net.ipv6.conf.all.forwarding": "1", "kernel.panic": "10",
                                   "kernel.panic_on_oops": "1", "vm.overcommit_memory": "1",
                                   "net.bridge.bridge-nf-call-iptables": "1",
                                   "net.bridge.bridge-nf-call-ip6tables": "1", "net.ipv4.ip_forward": "1"}
    assert spec.system.packages == ("conntrack", "socat", "ebtables")
    assert spec.image.aws.ssm_parameter == "/imagebuild/containerd-golden/latest"


def test_the_worker_profile_can_be_turned_off_and_its_sysctls_overridden():
    off = spec_of({"system": {"profile": "none"}})
    assert off.system.packages == () and "kernel.panic" not in off.system.sysctls
    assert "apt-get install -y -q --no-install-recommends" not in off_install(off)
    mine = spec_of({"system": {"sysctls": {"kernel.panic": 30}}})
    assert mine.system.sysctls["kernel.panic"] == "30"  # the spec's own value wins
    from imagebuild.spec import PROFILES
    for name, profile in PROFILES.items():  # every setting says why
        assert all(reason for _, reason in profile["sysctls"].values()) and all(profile["packages"].values()), name


def off_install(spec) -> str:
    from imagebuild import render
    return render.guest_files(spec)["install.sh"].content.decode()


@pytest.mark.parametrize("text", ["{}\n", "name: containerd-golden\n",
                                  "config:\n  oom_score: -999\n  registry: {mode: hosts}\n"])
def test_empty_or_default_valued_spec_equals_default(text):
    spec = spec_of(text)
    assert spec == load()
    assert spec.spec_hash == load().spec_hash


def test_init_writes_a_spec_for_today_and_the_empty_spec_stays_the_seeds(tmp_path):
    """`init`: containerd's LTS release (2.3) on Debian 13 with the pause image and imports of 2.3's own
    `config default`, no warning; the empty spec is still the seed's 1.6 setup (decided: imagebuild/v1)."""
    proc = run_cli("init")
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    text = proc.stdout.decode()
    assert text.startswith("# imagebuild spec, a starting point for today")
    # Every key carries its description as a comment.
    assert "# pause image for pod sandboxes" in text
    spec = spec_of(text)
    assert spec == init_spec() and spec.spec_hash == init_spec().spec_hash
    assert (spec.apiVersion, spec.image.os, spec.containerd.family, spec.containerd.config_version) == (
        fields.API_VERSION, "debian-13", "2.3", 4)
    assert spec.config.sandbox_image == "registry.k8s.io/pause:3.10.2"   # 2.3.7's own default's pin
    assert spec.config.imports == ("/etc/containerd/conf.d/*.toml",)
    assert spec.warnings == ()
    assert spec_of("{}\n") == load() and load().containerd.version == "1.6.20"
    # And the file form: written once, refused without --force, rewritten with it.
    target = tmp_path / "spec.yaml"
    assert run_main(["init", "-o", str(target)])[0] == 0
    assert target.read_text() == text
    code, _, err = run_main(["init", "-o", str(target)])
    assert code == 1 and "--force" in err
    assert run_main(["init", "-o", str(target), "--force"])[0] == 0


_SCHEMA = problems.json_schema()


def _cli_schema() -> dict:
    proc = run_cli("schema")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_schema_is_valid_json_schema_and_default_documents_validate(tmp_path):
    doc = _cli_schema()
    jsonschema.Draft202012Validator.check_schema(doc)
    validator = jsonschema.Draft202012Validator(doc)
    # Neither imagebuild's private x- keywords nor anything non-standard leak out.
    assert "x-allowed" not in json.dumps(doc)
    init_doc = yaml.safe_load(run_cli("init").stdout)
    assert run_main(["render", "-o", str(tmp_path / "r")])[0] == 0
    effective = json.loads((tmp_path / "r" / "spec.json").read_text())  # the effective spec, defaults filled in
    for document in ({}, init_doc, effective, load().document):
        errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)]
        assert errors == []


@pytest.mark.parametrize("document", [
    {"config": {"oom_score": 5000}},
    {"config": {"snapshotter": "overlay"}},
    {"containerd": {"verison": "1.6.20"}},
    {"config": {"registry": {"mirrors": [{"host": "docker.io", "endpoints": [{"url": "ftp://x"}]}]}}},
    {"containerd": {"install": {"tarball": {"sha256": "ABC"}}}},
    {"system": {"sysctls": {"NotDotted": 1}}},
    {"config": {"systemd_cgroup": "yes"}},
])
def test_json_schema_refuses_what_validation_refuses(document):
    validator = jsonschema.Draft202012Validator(_SCHEMA)
    assert list(validator.iter_errors(document)), "JSON Schema accepted it"
    with pytest.raises(SpecError):
        spec_of(document)


def _walk(section: type[BaseModel], path: str = ""):
    for key, info in section.model_fields.items():
        yield f"{path}.{key}" if path else key, info
        for hint in _hints(info.annotation):
            yield from _walk(hint, f"{path}.{key}" if path else key)


def _hints(hint) -> list:
    """The section classes inside a field's type (itself, list items, mapping values)."""
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return [hint]
    return [found for arg in typing.get_args(hint) for found in _hints(arg)]


def test_every_key_is_documented_and_every_section_defaults():
    keys = list(_walk(model.Spec))
    assert len(keys) > 100
    for path, info in keys:
        assert info.description, f"{path} has no description"


# ----------------------------------------------------------------------------------- warnings

LEGACY = {"mode": "legacy", "mirrors": [{"host": "docker.io", "endpoints": [{"url": "https://m.example"}]}]}


@pytest.mark.parametrize("doc, fragment", [
    ({"config": {"oom_score": 100}}, "config.oom_score: 100 is outside the recommended -999..0"),
    ({"config": {"oom_score": -1000}, "unit": {"oom_score_adjust": -1000}}, "config.oom_score: -1000 is outside"),
    ({"config": {"registry": LEGACY}},
     "legacy registry.mirrors is deprecated (containerd 2.4 announces its removal for 2.7)"),
    ({"containerd": {"version": "2.1.9"}, "config": {"registry": LEGACY}},
     "containerd 2.1+ falls back to local pull mode"),
    ({"containerd": {"version": "2.1.9"}, "config": {"discard_unpacked_layers": True}},
     "config.discard_unpacked_layers: true makes containerd 2.1+ fall back to local pull mode"),
    ({"unit": {"oom_score_adjust": -500}}, "unit.oom_score_adjust (-500) differs from config.oom_score (-999)"),
    ({"unit": {"kill_mode": "control-group"}}, "unit.kill_mode: control-group kills or orphans running containers"),
    ({"unit": {"delegate": False}}, "unit.delegate: false lets systemd take over container cgroups"),
    # containerd 1.x: "failed to load TOML: /etc/containerd/extra.toml: ... no such file or directory"
    ({"config": {"imports": ["/etc/containerd/conf.d/*.toml", "/etc/containerd/extra.toml"]}},
     "config.imports: /etc/containerd/extra.toml names one file, and containerd 1.x refuses to start"),
])
def test_warnings_are_printed_and_render_still_succeeds(tmp_path, doc, fragment):
    spec = spec_of(doc)
    assert any(fragment in w for w in spec.warnings), spec.warnings
    code, _, err = run_main(["render", str(write_spec(tmp_path, doc)), "-o", str(tmp_path / "out")])
    assert code == 0, err
    assert "imagebuild: warning: " in err and fragment in err
    assert (tmp_path / "out" / "payload" / "etc" / "containerd" / "config.toml").is_file()


def test_globs_do_not_warn_but_one_file_does_on_2x_too():
    assert spec_of({"config": {"imports": ["/etc/containerd/conf.d/*.toml"]}}).warnings == (eol_warning("1.6"),)
    # containerd 2.1.9 exits as 1.x does: "open /etc/containerd/extra.toml: no such file or directory".
    assert any("containerd 2.x refuses to start" in w for w in spec_of(
        {"containerd": {"version": "2.1.9"}, "config": {"imports": ["/etc/containerd/extra.toml"]}}).warnings)


def test_legacy_mirrors_on_1x_do_not_warn_about_pull_mode():
    spec = spec_of({"config": {"registry": LEGACY}})
    assert not any("local pull mode" in w for w in spec.warnings)
    assert not any("local pull mode" in w for w in spec_of(
        {"containerd": {"version": "2.0.5"}, "config": {"registry": LEGACY}}).warnings)


def test_the_schema_validates_every_case_spec_and_refuses_what_the_model_refuses():
    from tests.cases import CASES_DIR

    validator = jsonschema.Draft202012Validator(_cli_schema())
    specs = sorted(CASES_DIR.glob("*/spec.yaml"))
    assert len(specs) >= 6
    for path in specs:
        document = load(path).document  # as imagebuild reads it (YAML 1.2 booleans), defaults filled in
        raw = yaml.safe_load(path.read_text())
        for doc in (document, raw):
            assert [e.message for e in validator.iter_errors(doc)] == [], path
    for bad in ({"apiVersion": "imagebuild/v2"}, {"image": {"aws": {"tags": {"k": "v" * 256}}}},
                {"unit": {"after": ["network.target", "network.target"]}}, {"config": {"runtimes": {"a b": {}}}}):
        assert list(validator.iter_errors(bad)), bad
        with pytest.raises(SpecError):
            spec_of(bad)


def test_init_carries_apiversion_and_reads_back_without_a_notice():
    text = run_cli("init").stdout.decode()
    assert "\napiVersion: imagebuild/v1\n" in text
    spec = spec_of(text)
    assert spec.notices == () and spec.warnings == ()
    assert spec == init_spec() and spec.document == init_spec().document
