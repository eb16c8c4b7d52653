"""examples/: six real specs, each validated and rendered by the real CLI, and each rendering what its header
says it is for (the runtime, mirrors, proxy or AWS target it is there to show)."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, run_main

EXAMPLES = ROOT / "examples"
NAMES = ["airgapped-harbor", "eks-like", "gpu-nvidia", "gvisor", "kubeadm-worker", "proxy-site"]
PAYLOAD = Path("payload/etc")


def test_the_examples_are_the_six():
    assert sorted(p.stem for p in EXAMPLES.glob("*.yaml")) == NAMES
    assert sorted(p.name for p in EXAMPLES.iterdir()) == [f"{name}.yaml" for name in NAMES]


@pytest.fixture(scope="module", params=NAMES)
def example(request, tmp_path_factory):
    """(name, the spec as written, the render directory) of one example, validated and rendered by the CLI."""
    path = EXAMPLES / f"{request.param}.yaml"
    code, out, err = run_main(["validate", str(path)])
    assert code == 0, err
    assert out.startswith(f"{path}: OK: ") and out.count("\n") == 1
    assert err == "", f"an example should raise no warning or note:\n{err}"
    target = tmp_path_factory.mktemp(request.param) / "render"
    code, out, err = run_main(["render", str(path), "-o", str(target)])
    assert code == 0, err
    return request.param, path.read_text(), target


def _config(render: Path) -> dict:
    return tomllib.loads((render / PAYLOAD / "containerd/config.toml").read_text())


def _runtime(render: Path) -> dict:
    return _config(render)["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]


def test_each_example_says_what_it_is_for_and_holds_no_credentials(example):
    name, text, _ = example
    header = text.split("apiVersion:")[0]
    assert header.startswith("# ") and len(header.splitlines()) >= 3, f"{name}: a header comment first"
    assert "@" not in text and "password" not in text.lower() and "Authorization" not in text


def test_each_example_renders_what_it_shows(example):
    name, text, render = example
    spec = yaml.safe_load(text)
    config = _config(render)
    images = config["plugins"]["io.containerd.cri.v1.images"]
    assert images["pinned_images"]["sandbox"] == spec["config"]["sandbox_image"]
    if name == "kubeadm-worker":
        assert spec["image"]["os"] == "debian-13" and "cni-plugins-linux" in (render / "install.sh").read_text()
        assert _runtime(render)["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
        assert images["pinned_images"]["sandbox"] == "registry.k8s.io/pause:3.10"
    elif name == "eks-like":
        assert config["imports"] == ["/etc/containerd/conf.d/*.toml", "/etc/containerd/config.d/*.toml"]
        hcl = (render / "packer/imagebuild.pkr.hcl").read_text()
        assert "us-west-2" in hcl and "us-east-1" in hcl and "eu-west-1" in hcl
    elif name == "gpu-nvidia":
        runtime = _runtime(render)
        assert runtime["default_runtime_name"] == "nvidia"
        assert runtime["runtimes"]["nvidia"]["options"]["BinaryName"] == "/usr/bin/nvidia-container-runtime"
    elif name == "gvisor":
        runtime = _runtime(render)
        assert runtime["default_runtime_name"] == "runc"
        assert runtime["runtimes"]["runsc"]["runtime_type"] == "io.containerd.runsc.v1"
        assert runtime["runtimes"]["runsc"]["options"] == {"TypeUrl": "io.containerd.runsc.v1.options",
                                                           "ConfigPath": "/etc/containerd/runsc.toml"}
        assert tomllib.loads((render / PAYLOAD / "containerd/runsc.toml").read_text()) == {
            "runsc_config": {"platform": "systrap", "systemd-cgroup": "true"}}
    elif name == "airgapped-harbor":
        hosts = tomllib.loads((render / PAYLOAD / "containerd/certs.d/docker.io/hosts.toml").read_text())
        assert hosts["host"] == {"https://harbor.corp.example/v2/dockerhub-proxy": {
            "capabilities": ["pull", "resolve"], "override_path": True}}
        assert sorted(p.name for p in (render / PAYLOAD / "containerd/certs.d").iterdir()) == \
            ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"]
        assert spec["image"]["sandbox"]["source"] == "archive"
        assert "artifacts.corp.example" in (render / "install.sh").read_text()
        assert "github.com" not in (render / "install.sh").read_text()
    elif name == "proxy-site":
        dropin = (render / PAYLOAD / "systemd/system/containerd.service.d/http-proxy.conf").read_text()
        assert "HTTPS_PROXY=http://proxy.corp.example:3128" in dropin and ".cluster.local" in dropin
        assert not (render / PAYLOAD / "containerd/certs.d").exists()
    else:
        raise AssertionError(f"{name}: say what this example shows")


def test_the_eks_like_example_moves_to_a_new_containerd_in_one_line():
    lines = (EXAMPLES / "eks-like.yaml").read_text().splitlines()
    assert sum(1 for line in lines if "2.3.7" in line) == 1
