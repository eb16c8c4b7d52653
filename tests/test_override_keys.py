"""config.overrides key paths against each family's own default (spec.override_keys): the default itself
passes, a key it lacks fails naming the nearest real one, the user's own names are left alone."""
from __future__ import annotations

import pytest

from imagebuild.spec.containerd import config_version_of, reference_families
from imagebuild.spec.containerd_keys import reference_tree
from imagebuild.spec.override_keys import unknown_keys

RUNTIME = {"2": ("plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"),
           "3": ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes")}


@pytest.mark.parametrize("family", reference_families())
def test_every_key_of_the_familys_own_default_passes(family):
    assert unknown_keys(reference_tree(family), family, config_version_of(family)) == []


@pytest.mark.parametrize("family", reference_families())
def test_a_key_beside_each_table_of_the_default_fails(family):
    """Proves the check can fail everywhere it looks: a typo at every checked table is named."""
    version = config_version_of(family)
    found = []

    def tables(node, path):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                yield from tables(value, path + (key,))
        yield path

    for path in tables(reference_tree(family), ()):
        doc: dict = {}
        node = doc
        for part in path:
            node = node.setdefault(part, {})
        node["zz_not_a_key"] = 1
        problems = unknown_keys(doc, family, version)
        if problems:
            found.append(path)
            assert problems[0].path == "config.overrides." + ".".join(path + ("zz_not_a_key",))
            assert f"containerd {family} (config version {version})" in problems[0].message
        else:  # unchecked: only the user's own names (FREE_FORM, a runtimes map, a non-runc runtime's options)
            own = path[-1:] in (("runtimes",), ("mirrors",), ("configs",), ("auths",), ("headers",)) or \
                path[:1] in (("timeouts",), ("stream_processors",), ("proxy_plugins",)) or \
                (path[-1:] == ("options",) and path[-2:-1] != ("runc",))
            assert own, path
    assert () in found and ("plugins",) in found
    assert any(path[-2:] == ("runc", "options") for path in found)  # runc's options are checked


def test_a_runtime_of_your_own_is_checked_against_runcs_keys():
    family = "2.3"
    runtimes = RUNTIME["3"]
    doc: dict = {}
    node = doc
    for part in runtimes:
        node = node.setdefault(part, {})
    node["gvisor"] = {"runtime_type": "io.containerd.runsc.v1", "options": {"TypeUrl": "x", "ConfigPath": "/y"}}
    assert unknown_keys(doc, family, 4) == []
    node["gvisor"]["runtime_typo"] = "x"
    [problem] = unknown_keys(doc, family, 4)
    assert problem.message.endswith("nearest real key: " + ".".join(runtimes) + ".gvisor.runtime_type")


def test_an_opted_out_plugin_is_not_looked_into():
    doc = {"plugins": {"io.containerd.snapshotter.v1.stargz": {"anything": {"at": "all"}}}}
    assert unknown_keys(doc, "2.3", 4, ("io.containerd.snapshotter.v1.stargz",)) == []
    [problem] = unknown_keys(doc, "2.3", 4)
    assert problem.path == "config.overrides.plugins.io.containerd.snapshotter.v1.stargz"
