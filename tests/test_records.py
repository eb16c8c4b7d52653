"""The records a bake writes beside its image (imagebuild/build/records.py): inventory, SBOM and provenance,
named in manifest.json with their sha256, and the check publish and diff rely on."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from imagebuild.build import inventory as inv
from imagebuild.build import provenance, records
from imagebuild.errors import ImagebuildError
from imagebuild.spec import load
from tests import records as fixtures


def test_the_bake_writes_three_records_named_in_the_manifest(tmp_path):
    manifest = fixtures.baked(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        "containerd-golden.qcow2", "manifest.json", "containerd-golden.inventory.json", "containerd-golden.cdx.json",
        "containerd-golden.provenance.json"])
    for record, entry in manifest["records"].items():
        assert entry["sha256"] == hashlib.sha256((tmp_path / entry["file"]).read_bytes()).hexdigest()
        assert entry["format"] == records.FORMATS[record]
    # the inventory beside the image is the build VM's, whole
    assert json.loads((tmp_path / "containerd-golden.inventory.json").read_text()) == fixtures.inventory()
    assert set(records.check(tmp_path, manifest["records"], manifest["sha256"])) == set(records.RECORDS)


def test_the_provenance_says_how_the_image_was_made(tmp_path):
    manifest = fixtures.baked(tmp_path)
    statement = json.loads((tmp_path / "containerd-golden.provenance.json").read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"] == [{"name": "containerd-golden.qcow2", "digest": {"sha256": manifest["sha256"]}}]
    definition = statement["predicate"]["buildDefinition"]
    assert definition["externalParameters"] == {"spec": load().document, "spec_hash": load().spec_hash}
    assert definition["internalParameters"]["inputs_hash"] == manifest["inputs_hash"]
    assert definition["internalParameters"]["build_firmware"] == "bios"
    assert definition["resolvedDependencies"] == [
        {"name": "base-image", "uri": "debian-12-base.qcow2", "digest": {"sha256": "43" * 32}},
        {"name": "containerd-1.6.20-linux-amd64.tar.gz", "uri": "https://example.invalid/containerd-1.6.20-linux-amd64.tar.gz",
         "digest": {"sha256": "6d" * 32}},
        {"name": "runc.amd64", "uri": "https://example.invalid/runc.amd64", "digest": {"sha256": "27" * 32}}]
    run = statement["predicate"]["runDetails"]
    assert run["builder"]["version"] == {"imagebuild": manifest["imagebuild_version"]}
    tools = {d["name"]: d for d in run["builder"]["builderDependencies"]}
    assert tools["packer"]["annotations"]["version"] == "1.6.6"         # the Packer this host has
    assert tools["qemu-system-x86_64"]["annotations"]["version"]
    seabios = tools["SeaBIOS"]
    assert seabios["annotations"]["package"] == "seabios" and len(seabios["digest"]["sha256"]) == 64
    assert run["metadata"] == {"invocationId": manifest["packer"]["packer_run_uuid"],
                               "startedOn": "2026-12-07T14:47:08Z", "finishedOn": "2026-12-07T14:52:00Z"}
    made = manifest["records"]
    assert run["byproducts"] == [{"name": made[r]["file"], "digest": {"sha256": made[r]["sha256"]}}
                                 for r in ("inventory", "sbom")]


def test_a_uefi_build_names_its_firmware_file():
    firmware = provenance.firmware_dependency("amd64", "uefi")
    assert firmware["name"] == "OVMF_CODE_4M" and firmware["annotations"]["package"] == "ovmf"
    assert len(firmware["digest"]["sha256"]) == 64


def test_a_manifest_without_records_is_refused(tmp_path):
    manifest = fixtures.baked(tmp_path)
    with pytest.raises(ImagebuildError, match="names no records .SBOM, provenance."):
        records.check(tmp_path, {}, manifest["sha256"])
    del manifest["records"]["sbom"]
    with pytest.raises(ImagebuildError, match=r"records.sbom: got null, .*the image has no sbom record"):
        records.check(tmp_path, manifest["records"], manifest["sha256"])


def test_a_missing_record_file_is_refused(tmp_path):
    manifest = fixtures.baked(tmp_path)
    (tmp_path / "containerd-golden.provenance.json").unlink()
    with pytest.raises(ImagebuildError, match="the provenance record .*golden.provenance.json does not exist"):
        records.check(tmp_path, manifest["records"], manifest["sha256"])


def test_a_record_changed_after_the_bake_is_refused(tmp_path):
    manifest = fixtures.baked(tmp_path)
    sbom = tmp_path / "containerd-golden.cdx.json"
    document = json.loads(sbom.read_text())
    document["components"] = [c for c in document["components"] if c["name"] != "containerd"]
    sbom.write_text(json.dumps(document))
    with pytest.raises(ImagebuildError, match=f"has sha256 {hashlib.sha256(sbom.read_bytes()).hexdigest()}, but "
                                              f"manifest.json gives {manifest['records']['sbom']['sha256']}"):
        records.check(tmp_path, manifest["records"], manifest["sha256"])


def test_records_of_another_image_are_refused(tmp_path):
    """The records of one bake copied beside another image, manifest entries and all: hashes match, the subject not."""
    first = fixtures.baked(tmp_path / "first", image=b"one image")
    second = fixtures.baked(tmp_path / "second", image=b"another image")
    for entry in first["records"].values():
        shutil.copyfile(tmp_path / "first" / entry["file"], tmp_path / "second" / entry["file"])
    with pytest.raises(ImagebuildError, match=f"describes image sha256 {first['sha256']}, not this image's "
                                              f"{second['sha256']}"):
        records.check(tmp_path / "second", first["records"], second["sha256"])


def test_a_record_file_name_must_stay_beside_the_image(tmp_path):
    manifest = fixtures.baked(tmp_path)
    manifest["records"]["sbom"]["file"] = "../elsewhere.json"
    with pytest.raises(ImagebuildError, match="records.sbom.file: got '../elsewhere.json', expected a file name"):
        records.check(tmp_path, manifest["records"], manifest["sha256"])


def test_the_records_tag_names_sbom_and_provenance_within_a_tag_value(tmp_path):
    manifest = fixtures.baked(tmp_path)
    tag = records.records_tag(manifest["records"])
    value = tag["imagebuild:records"]
    assert value == (f"sbom=sha256:{manifest['records']['sbom']['sha256']} "
                     f"provenance=sha256:{manifest['records']['provenance']['sha256']}")
    assert len(value) <= 255


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema="other/1"), "schema: got 'other/1', expected 'imagebuild-inventory/1'"),
    (lambda d: d["dpkg"].pop("packages"), "dpkg.packages: got nothing, expected a JSON array"),
    (lambda d: d["containerd"].update(config_dump=7), "containerd.config_dump: got 7, expected a JSON string"),
    (lambda d: d["binaries"][0].pop("sha256"), r"binaries\[0\]: missing sha256"),
])
def test_an_inventory_that_is_not_one_is_refused_naming_the_key(tmp_path, change, message):
    document = fixtures.inventory()
    assert inv.check(document, "x") is document
    change(document)
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ImagebuildError, match=message):
        inv.load(path)


def test_the_digest_of_the_baked_sandbox_image_is_read_from_the_inventory():
    """A registry-source sandbox image: the manifest records the digest containerd holds in CRI's namespace
    (read by the in-guest program's own parser from `ctr images ls`); elsewhere or absent: none."""
    from imagebuild.guest import inventory as guest_inventory

    name, digest = "registry.k8s.io/pause:3.10", "sha256:" + "ab" * 32
    listing = ("REF TYPE DIGEST SIZE PLATFORMS LABELS\n"
               f"{name} application/vnd.oci.image.index.v1+json {digest} 311.6 KiB linux/amd64 "
               "io.cri-containerd.image=managed,io.cri-containerd.pinned=pinned\n")
    document = fixtures.inventory()
    document["containerd"]["images"] = guest_inventory.parse_images("k8s.io", listing)
    inv.check(document, "inventory")
    assert inv.image_digest(document, name) == digest
    assert inv.image_digest(document, name, namespace="default") is None
    assert inv.image_digest(document, "registry.k8s.io/pause:3.9") is None
