"""How spec files are read: YAML merge keys, YAML 1.2 booleans, and the input limits' other side
(specs just inside a limit load; the refusals are in tests/test_bad_specs.py)."""
from __future__ import annotations

import pytest

from imagebuild import spec as spec_module
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
    depth = spec_module.MAX_DEPTH - 3
    nested = "1"
    for _ in range(depth - 1):
        nested = "[" + nested + "]"
    spec = spec_of("config:\n  overrides:\n    x: " + nested + "\n")
    value = spec.config.overrides["x"]
    for _ in range(depth - 1):
        value = value[0]
    assert value == 1
    # Aliases used the ordinary way load, and expand.
    spec = spec_of("config:\n  imports: &i ['/etc/containerd/conf.d/*.toml']\n"
                   "  overrides: {debug: {level: &l info}, x: *l}\n")
    assert spec.config.overrides == {"debug": {"level": "info"}, "x": "info"}
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
