"""publish() and the image's records (SBOM, provenance) against a real moto server: an image without them, or with
records that changed after the bake, never reaches AWS; a published AMI names them by sha256."""
from __future__ import annotations

import json

import pytest

from imagebuild.aws import PublishTarget
from imagebuild.aws.publish import publish
from imagebuild.errors import ImagebuildError

HOME, COPY = "eu-west-1", "us-west-2"


def target(**changes) -> PublishTarget:
    return PublishTarget(**{"region": HOME, "copy_regions": [COPY], "ssm_parameter": "", "family": "containerd-golden",
                            **changes})


def tags_of(resource):
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def test_a_published_ami_names_its_sbom_and_provenance(aws, boto, make_image, recording_clients):
    image_dir, _ = make_image()
    manifest = json.loads((image_dir / "manifest.json").read_text())
    sbom, provenance = (manifest["records"][r]["sha256"] for r in ("sbom", "provenance"))
    record = publish(image_dir, target(), progress=lambda p: None, clients=recording_clients(), poll_interval=0.01)
    for region in (HOME, COPY):
        ec2 = boto("ec2", region)
        (image,) = ec2.describe_images(ImageIds=[record["images"][region]["id"]])["Images"]
        assert tags_of(image)["imagebuild:records"] == f"sbom=sha256:{sbom} provenance=sha256:{provenance}"
        # found from the SBOM's sha256 alone, as an auditor holding the SBOM looks for the AMIs it describes
        found = ec2.describe_images(Owners=["self"], Filters=[
            {"Name": "tag:imagebuild:records", "Values": [f"sbom=sha256:{sbom} *"]}])["Images"]
        assert [i["ImageId"] for i in found] == [record["images"][region]["id"]]
        assert ec2.describe_images(Owners=["self"], Filters=[
            {"Name": "tag:imagebuild:records", "Values": [f"sbom=sha256:{'0' * 64} *"]}])["Images"] == []
    (snapshot,) = boto("ec2", HOME).describe_snapshots(SnapshotIds=[record["snapshot"]["id"]])["Snapshots"]
    assert "imagebuild:records" not in tags_of(snapshot) and "imagebuild:image-id" in tags_of(snapshot)


def test_forty_one_tags_of_the_spec_still_fit_the_ami(aws, boto, make_image, recording_clients):
    """AWS takes 50 tags a resource: the spec's 41, imagebuild's 8, and on AMIs the records tag (on snapshots
    imagebuild:image-id in its place)."""
    image_dir, _ = make_image()
    tags = {f"t{i}": "v" for i in range(41)}
    record = publish(image_dir, target(tags=tags, copy_regions=[]), progress=lambda p: None,
                     clients=recording_clients(), poll_interval=0.01)
    (image,) = boto("ec2", HOME).describe_images(ImageIds=[record["images"][HOME]["id"]])["Images"]
    assert len(tags_of(image)) == 50 and "imagebuild:records" in tags_of(image)


def _without_records(image_dir, manifest):
    del manifest["records"]
    (image_dir / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, message", [
    (lambda d, m: (d / m["records"]["sbom"]["file"]).unlink(), ": the sbom record .* does not exist"),
    (lambda d, m: (d / m["records"]["provenance"]["file"]).write_text("{}"),
     ": the provenance record .* has sha256 .*, but manifest.json gives .*: it changed after the bake"),
    (_without_records, "manifest.json names no records .SBOM, provenance.: the image was baked by an older"),
])
def test_an_image_without_its_records_is_refused_before_any_call(aws, make_image, recording_clients, damage, message):
    image_dir, _ = make_image()
    damage(image_dir, json.loads((image_dir / "manifest.json").read_text()))
    clients = recording_clients()
    with pytest.raises(ImagebuildError, match="refusing to publish .*" + message):
        publish(image_dir, target(), progress=lambda p: None, clients=clients)
    assert clients.calls == [] and not (image_dir / "publish.json").exists()
