"""How spec files are read: YAML merge keys, YAML 1.2 booleans, and the input limits' other side
(specs just inside a limit load; the refusals are in tests/test_bad_specs.py)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from imagebuild import render
from imagebuild import spec as spec_module
from imagebuild.guest import check
from imagebuild.render import expected
from tests.support import run_main, spec_of, write_spec


def test_merge_keys_merge_and_keys_written_win():
    text = "base: &base {oom_score: -500, root: /data}\n"  # a top-level anchor holder is not a spec key...
    with pytest.raises(spec_module.SpecError, match="base: unknown key"):
        spec_of(text + "config:\n  <<: *base\n")
    spec = spec_of("config: &c {oom_score: -500, root: /data}\nunit:\n  oom_score_adjust: -500\n")
    assert spec.config.oom_score == -500
    doc = ("containerd:\n  version: 1.7.24\nconfig:\n  <<: {oom_score: -500, root: /data}\n  root: /srv\n")
    spec = spec_of(doc)
    assert (spec.config.oom_score, spec.config.root) == (-500, "/srv")


def test_merge_keys_from_anchors_in_a_list():
    doc = ("verify:\n  checks:\n    - &check {name: one, run: 'true'}\n    - <<: *check\n      name: two\n"
           "config:\n  registry:\n    mirrors:\n      - host: docker.io\n        endpoints:\n"
           "          - &ep {url: 'https://a.example', skip_verify: true}\n"
           "          - <<: *ep\n            url: https://b.example\n")
    spec = spec_of(doc)
    assert [(c.name, c.run) for c in spec.verify.checks] == [("one", "true"), ("two", "true")]
    eps = spec.config.registry.mirrors[0].endpoints
    assert [(e.url, e.skip_verify) for e in eps] == [("https://a.example", True), ("https://b.example", True)]


def test_yaml_1_2_booleans_no_on_yes_off_are_text():
    spec = spec_of("unit:\n  restart: no\nconfig:\n  overrides:\n    debug: {level: on}\n"
                   "system:\n  sysctls:\n    kernel.panic_on_oops: off\n")
    assert spec.unit.restart == "no"
    assert spec.config.overrides["debug"]["level"] == "on"
    assert spec.system.sysctls["kernel.panic_on_oops"] == "off"
    spec = spec_of("config:\n  systemd_cgroup: FALSE\nimage:\n  hygiene: True\n")
    assert (spec.config.systemd_cgroup, spec.image.hygiene) == (False, True)


def test_specs_inside_the_limits_load(tmp_path):
    # Nested deep, but within the depth limit (the root mapping is level 1).
    # (root, config, overrides, plugins, the plugin, x: five levels above the lists)
    depth = spec_module.MAX_DEPTH - 5
    nested = "1"
    for _ in range(depth - 1):
        nested = "[" + nested + "]"
    spec = spec_of("config:\n  extra_plugins: [io.containerd.imagebuild.v1.depth]\n  overrides:\n    plugins:\n"
                   "      io.containerd.imagebuild.v1.depth:\n        x: " + nested + "\n")
    value = spec.config.overrides["plugins"]["io.containerd.imagebuild.v1.depth"]["x"]
    for _ in range(depth - 1):
        value = value[0]
    assert value == 1
    # Aliases used the ordinary way load, and expand.
    spec = spec_of("config:\n  imports: &i ['/etc/containerd/conf.d/*.toml']\n"
                   "  overrides: {debug: {level: &l info}, metrics: {address: *l}}\n")
    assert spec.config.overrides == {"debug": {"level": "info"}, "metrics": {"address": "info"}}
    # A file of exactly the size limit loads.
    head = "name: golden\n#"
    path = write_spec(tmp_path, head + "x" * (spec_module.MAX_SPEC_BYTES - len(head) - 1) + "\n")
    assert path.stat().st_size == spec_module.MAX_SPEC_BYTES
    assert spec_module.load(path).name == "golden"


def test_an_empty_mapping_is_the_default_spec_and_an_empty_file_is_not(tmp_path):
    assert spec_of("{}\n") == spec_module.load()
    code, _, err = run_main(["render", str(write_spec(tmp_path, "")), "-o", str(tmp_path / "out")])
    assert code == 2 and "the file holds no spec" in err


def test_the_effective_spec_json_loads_back(tmp_path):
    spec = spec_of("config:\n  overrides:\n    debug: {level: 'no'}\n")
    code, _, err = run_main(["render", "-o", str(tmp_path / "out")])
    assert code == 0, err
    again = spec_module.load(tmp_path / "out" / "spec.json")
    assert again == spec_module.load()
    assert spec.config.overrides["debug"]["level"] == "no"


# ---------------------------------------------------------------- natural YAML: numbers, multi-line checks

def test_unit_limits_take_numbers_and_render_as_numbers(tmp_path):
    spec = spec_of("unit:\n  limit_nofile: 1048576\n  limit_nproc: 4096\n  tasks_max: 0\n  limit_core: infinity\n")
    assert (spec.unit.limit_nofile, spec.unit.limit_nproc, spec.unit.tasks_max, spec.unit.limit_core) == \
        ("1048576", "4096", "0", "infinity")
    # A number and the same number quoted are the same spec.
    quoted = spec_of("unit:\n  limit_nofile: '1048576'\n  limit_nproc: '4096'\n  tasks_max: '0'\n")
    assert quoted == spec and quoted.spec_hash == spec.spec_hash
    unit = render.payload(spec)["/etc/systemd/system/containerd.service"].content.decode()
    assert "LimitNOFILE=1048576\n" in unit and "LimitNPROC=4096\n" in unit and "TasksMax=0\n" in unit
    assert expected.unit_expectations(spec)["LimitNOFILE"] == "1048576"


MULTILINE = """\
verify:
  on_boot: true
  checks:
    - name: multi
      run: |
        set -eu
        marker="${1:-none}-set"
        if [ "$(printf '%s' 'it''s "quoted" $HOME')" != "" ]; then
          printf 'line one\\tand a tab\\n' > "$OUT/out"
        fi
        for word in a b; do echo "$word" >> "$OUT/out"; done
        test "${marker:-}" != ""
    - name: fails
      run: |
        true
        exit 3
"""


def _extra_checks_as_delivered(spec) -> list[dict]:
    """verify.checks as the guest gets them in YAML: expected.json inside the #cloud-config user-data that
    verify.on_boot ships (a verify boot brings it on its seed disk, a Packer build uploads it)."""
    cloud = yaml.safe_load(render.user_data(spec, compress=False).decode())
    (entry,) = [f for f in cloud["write_files"] if f["path"] == f"{render.GUEST_DIR}/expected.json"]
    return json.loads(entry["content"])["extra_checks"]


def test_multiline_check_reaches_the_guest_shell_intact(tmp_path, monkeypatch, capsys):
    spec = spec_of(MULTILINE)
    checks = _extra_checks_as_delivered(spec)
    assert [c["run"] for c in checks] == [c.run for c in spec.verify.checks]
    assert checks[0]["run"].count("\n") == 7
    for item in checks:
        assert subprocess.run(["bash", "-n", "-c", item["run"]], capture_output=True).returncode == 0
        lint = subprocess.run(["shellcheck", "-s", "bash", "-S", "warning", "-"], input=item["run"].encode(),
                              capture_output=True)
        assert lint.returncode == 0, lint.stdout.decode()
    # The guest check's own runner (bash -c) runs it: the script's lines all ran, the failing one fails.
    monkeypatch.setenv("OUT", str(tmp_path))
    rep = check.Reporter(None)
    check.extra_checks(rep, {"extra_checks": checks})
    assert (rep.passed, rep.failed) == (1, 1)
    assert (tmp_path / "out").read_text() == "line one\tand a tab\na\nb\n"
    records = [json.loads(line.split(" ", 1)[1]) for line in capsys.readouterr().out.splitlines()]
    assert [(r["check"], r["ok"], r["actual"]) for r in records] == [("extra.multi", True, "exit 0"),
                                                                      ("extra.fails", False, "exit 3")]


# ---------------------------------------------------------------- versions that exist

def test_supported_versions_come_from_the_reference_defaults():
    expected = {"upstream": ["1.6", "1.7", "2.0", "2.1", "2.2", "2.3", "2.4"], "debian": ["1.6", "1.7", "2.1"]}
    for source, wanted in expected.items():
        families = sorted(p.name[len("config-"):-len(".toml")] for p in
                          (Path(spec_module.__file__).parents[1] / "defaults" / source).glob("config-*.toml"))
        assert families == wanted, source
    assert spec_module.supported_versions() == "1.6.x-1.7.x, 2.0.x-2.4.x"
    for version, family, config in [("1.6.0", "1.6", 2), ("1.7.99", "1.7", 2), ("2.0.0", "2.0", 3),
                                    ("2.2.3", "2.2", 3), ("2.3.0", "2.3", 4), ("2.4.9", "2.4", 4)]:
        containerd = spec_of({"containerd": {"version": version}}).containerd
        assert (containerd.family, containerd.config_version) == (family, config)
    # Every supported family renders (its reference default is there), in its own config version.
    for version in ("1.6.1", "1.7.2", "2.0.1", "2.1.0", "2.2.1", "2.3.4", "2.4.0"):
        spec = spec_of({"containerd": {"version": version}})
        config = render.payload(spec)["/etc/containerd/config.toml"].content.decode()
        assert f"\nversion = {spec.containerd.config_version}\n" in config


def test_an_unknown_version_is_reported_with_the_other_problems():
    with pytest.raises(spec_module.SpecError) as info:
        spec_of({"containerd": {"version": "1.8.0"}, "config": {"default_runtime": "nvidia"}})
    assert [p.path for p in info.value.problems] == ["containerd.version", "config.default_runtime"]


# ---------------------------------------------------------------- hostile input: bounded memory too

@pytest.mark.timeout(60)
@pytest.mark.parametrize("case_id", ["billion-laughs", "alias-bomb-small-file", "nesting-flow-5000",
                                     "nesting-block-5000", "nesting-json-5000", "file-50mb", "too-many-aliases"])
def test_hostile_input_is_refused_in_bounded_memory(tmp_path, case_id):
    import tracemalloc

    from tests.test_bad_specs import CASES

    (case,) = [c for c in CASES if c.id == case_id]
    path = write_spec(tmp_path, case.doc())
    tracemalloc.start()
    try:
        with pytest.raises(spec_module.SpecError):
            spec_module.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, f"{case_id}: peak {peak // 1024} KiB"  # at most about 1 MiB measured


def test_a_family_past_upstreams_end_of_support_is_warned_with_the_date():
    import datetime

    from imagebuild.spec.containerd import END_OF_SUPPORT, end_of_support_warning, reference_families

    assert end_of_support_warning("1.6", datetime.date(2025, 8, 23)) is None          # its last day
    warning = end_of_support_warning("1.6", datetime.date(2025, 8, 24))
    assert warning is not None and "2025-08-23" in warning and "2.3" in warning
    assert end_of_support_warning("2.3", datetime.date(2026, 12, 7)) is None           # the LTS
    assert end_of_support_warning("9.9") is None
    assert set(END_OF_SUPPORT) == set(reference_families())        # every family the spec reads has its date
    # On a spec: one line on containerd.version, for a family past it on the day it is read.
    today = datetime.date.today()
    for family, version in (("1.6", "1.6.20"), ("2.3", "2.3.7")):
        spec = spec_of({"containerd": {"version": version}})
        warned = [w for w in spec.warnings if w.startswith("containerd.version")]
        past = today > datetime.date.fromisoformat(END_OF_SUPPORT[family])
        assert warned == ([f"containerd.version: {end_of_support_warning(family)}"] if past else []), family
