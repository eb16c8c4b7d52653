"""The SBOM (imagebuild/build/sbom.py) of the inventory a real bake captured (tests/records): every Debian
package, containerd's and runc's binaries with version and sha256, every image in containerd's store."""
from __future__ import annotations

import json

import pytest

from imagebuild.build import sbom
from tests import records

MANIFEST = {"image": "containerd-golden.qcow2", "sha256": "9e" * 32, "family": "containerd-golden",
            "build_time": "2026-12-07T14:52:00Z", "architecture": "x86_64", "spec_hash": "cf" * 32,
            "inputs_hash": "db" * 32, "lab_content": []}


def components(document: dict, kind: str) -> list[dict]:
    return [c for c in document["components"] if c["type"] == kind]


def test_every_debian_package_of_the_image_is_listed_with_its_purl():
    inventory = records.inventory()
    document = sbom.document(inventory, MANIFEST)
    listed = {(c["name"], c["version"]) for c in components(document, "library") if c["purl"].startswith("pkg:deb/")}
    assert listed == {(p["name"], p["version"]) for p in inventory["dpkg"]["packages"]}
    assert len(listed) == len(inventory["dpkg"]["packages"]) > 200
    by_name = {c["name"]: c for c in components(document, "library")}
    # an epoch's ':' and a '+' are percent-encoded, the source package is the upstream qualifier
    assert by_name["conntrack"]["purl"] == \
        "pkg:deb/debian/conntrack@1%3A1.4.7-1%2Bb2?arch=amd64&distro=debian-12&upstream=conntrack-tools"
    assert by_name["socat"]["purl"] == "pkg:deb/debian/socat@1.7.4.4-2?arch=amd64&distro=debian-12"


def test_a_package_missing_from_the_inventory_is_missing_from_the_sbom():
    inventory = records.inventory()
    inventory["dpkg"]["packages"] = [p for p in inventory["dpkg"]["packages"] if p["name"] != "socat"]
    names = {c["name"] for c in components(sbom.document(inventory, MANIFEST), "library")}
    assert "socat" not in names and "conntrack" in names


def test_containerd_and_runc_with_the_version_they_print_and_their_sha256():
    inventory = records.inventory()
    apps = {c["name"]: c for c in components(sbom.document(inventory, MANIFEST), "application")}
    assert set(apps) == {"containerd", "containerd-shim-runc-v2", "ctr", "runc"}
    binaries = {b["name"]: b for b in inventory["binaries"]}
    assert apps["containerd"]["version"] == "v1.6.20"   # upstream's release, as `containerd --version` prints it
    assert apps["containerd"]["purl"] == "pkg:golang/github.com/containerd/containerd@v1.6.20#cmd/containerd"
    assert apps["runc"]["version"] == "1.4.4"
    assert apps["runc"]["purl"] == "pkg:golang/github.com/opencontainers/runc@v1.4.4"
    for name, component in apps.items():
        assert component["hashes"] == [{"alg": "SHA-256", "content": binaries[name]["sha256"]}]
        properties = {p["name"]: p["value"] for p in component["properties"]}
        assert properties["imagebuild:path"] == binaries[name]["path"] and properties["imagebuild:go-version"]


def test_a_debian_build_without_a_module_version_is_a_generic_package_with_its_printed_version():
    binary = {"path": "/usr/bin/containerd", "name": "containerd", "kind": "containerd", "sha256": "ab" * 32,
              "version": "1.6.20~ds1", "package": "containerd",
              "go": {"go": "go1.19.8", "path": "github.com/containerd/containerd/cmd/containerd",
                     "main": {"path": "github.com/containerd/containerd", "version": "(devel)", "sum": ""}}}
    component = sbom.binary_component(binary)
    assert component["purl"] == "pkg:generic/containerd@1.6.20~ds1" and component["version"] == "1.6.20~ds1"
    assert {"name": "imagebuild:dpkg-package", "value": "containerd"} in component["properties"]


def test_cni_plugins_are_listed_each_by_its_package_in_the_module():
    bridge = {"path": "/opt/cni/bin/bridge", "name": "bridge", "kind": "cni", "sha256": "cd" * 32, "version": "v1.10.0",
              "go": {"go": "go1.26.8", "path": "github.com/containernetworking/plugins/plugins/main/bridge",
                     "main": {"path": "github.com/containernetworking/plugins", "version": "v1.10.0"}}}
    assert sbom.binary_component(bridge)["purl"] == \
        "pkg:golang/github.com/containernetworking/plugins@v1.10.0#plugins/main/bridge"


def test_every_image_in_containerds_store_by_digest():
    inventory = records.inventory()
    assert inventory["containerd"]["images"] == []   # the golden bakes none (image.sandbox.source: none)
    assert components(sbom.document(inventory, MANIFEST), "container") == []
    inventory["containerd"]["images"] = [
        {"namespace": "k8s.io", "name": "localhost/imagebuild/pause:catatonit", "digest": "sha256:" + "ab" * 32,
         "media_type": "application/vnd.oci.image.manifest.v1+json", "labels": {}, "pinned": True},
        {"namespace": "k8s.io", "name": "registry.k8s.io/pause@sha256:" + "ab" * 32, "digest": "sha256:" + "ab" * 32,
         "media_type": "application/vnd.oci.image.manifest.v1+json", "labels": {}, "pinned": True},
        {"namespace": "other", "name": "docker.io/library/busybox:1.36", "digest": "sha256:" + "cd" * 32,
         "media_type": "application/vnd.oci.image.index.v1+json", "labels": {}, "pinned": False}]
    images = components(sbom.document(inventory, MANIFEST), "container")
    assert [c["purl"] for c in images] == [
        "pkg:oci/pause@sha256%3A" + "ab" * 32 + "?repository_url=localhost/imagebuild/pause&tag=catatonit",
        "pkg:oci/pause@sha256%3A" + "ab" * 32 + "?repository_url=registry.k8s.io/pause",
        "pkg:oci/busybox@sha256%3A" + "cd" * 32 + "?repository_url=docker.io/library/busybox&tag=1.36"]
    assert images[2]["hashes"] == [{"alg": "SHA-256", "content": "cd" * 32}]
    assert {"name": "imagebuild:namespace", "value": "other"} in images[2]["properties"]
    assert len({c["bom-ref"] for c in images}) == 3


def test_the_image_is_the_subject_and_the_document_is_reproducible():
    inventory = records.inventory()
    first, second = sbom.document(inventory, MANIFEST), sbom.document(records.inventory(), dict(MANIFEST))
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert (first["bomFormat"], first["specVersion"], first["version"]) == ("CycloneDX", "1.5", 1)
    assert sbom.subject_sha256(first) == MANIFEST["sha256"]
    other = sbom.document(inventory, MANIFEST | {"sha256": "00" * 32})
    assert other["serialNumber"] != first["serialNumber"] and sbom.subject_sha256(other) == "00" * 32
    refs = [c["bom-ref"] for c in first["components"]]
    assert len(refs) == len(set(refs)) and first["dependencies"][0]["dependsOn"] == refs
    files = {c["name"] for c in components(first, "file")}
    assert "/etc/containerd/config.toml" in files and "/etc/systemd/system/containerd.service" in files


def test_lab_content_is_named_on_the_subject():
    lab = "https://example.invalid/runc: Debian's build"
    document = sbom.document(records.inventory(), MANIFEST | {"lab_content": [lab]})
    assert {"name": "imagebuild:lab-content", "value": lab} in \
        document["metadata"]["component"]["properties"]


@pytest.mark.parametrize("kind, name, version, namespace, qualifiers, subpath, want", [
    ("deb", "libcap2", "1:2.66-4+deb12u3+b1", "debian", {"arch": "amd64", "distro": "debian-12"}, None,
     "pkg:deb/debian/libcap2@1%3A2.66-4%2Bdeb12u3%2Bb1?arch=amd64&distro=debian-12"),
    ("golang", "v2", "v2.1.9", "github.com/containerd/containerd", None, "cmd/ctr",
     "pkg:golang/github.com/containerd/containerd/v2@v2.1.9#cmd/ctr"),
    ("generic", "runc", None, None, {"empty": ""}, None, "pkg:generic/runc"),
])
def test_purl(kind, name, version, namespace, qualifiers, subpath, want):
    assert sbom.purl(kind, name, version, namespace, qualifiers, subpath) == want
