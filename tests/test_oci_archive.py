"""The sandbox image's OCI archive as the bake reads it (image.sandbox.source archive), and the lab ledger
that tells the bake which downloads the developer tools made up."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from devtools import debian_artifacts, pause_image
from imagebuild.build import bake, lab_ledger, oci_archive
from imagebuild.errors import ImagebuildError
from imagebuild.spec import from_document
from imagebuild.spec.fields import normalized
from imagebuild.verify.testimage import TEST_IMAGE_REF, test_oci_image


@pytest.fixture
def pause(tmp_path) -> dict:
    return pause_image.pause_archive(tmp_path / "pause.tar")


def test_names_are_compared_as_containerd_normalizes_them():
    assert normalized("pause:3.10") == "docker.io/library/pause:3.10"
    assert normalized("k8s.gcr.io/pause") == "k8s.gcr.io/pause:latest"
    assert normalized("localhost/imagebuild/x:1") == "localhost/imagebuild/x:1"
    assert normalized("registry:5000/a/b@sha256:" + "a" * 64) == "registry:5000/a/b@sha256:" + "a" * 64


def test_a_checked_archive_gives_its_name_digest_program_and_blobs(pause, tmp_path):
    record = oci_archive.sandbox_archive(pause["path"], pause["sha256"], pause["ref"], tmp_path / "out" / "s.tar")
    assert record["name"] == pause["ref"] and record["digest"] == pause["digest"]
    assert record["program"] == {"path": "/catatonit",
                                 "sha256": hashlib.sha256(pause_image.CATATONIT.read_bytes()).hexdigest()}
    assert pause["digest"] in record["blobs"] and len(record["blobs"]) == 3   # manifest, config, layer
    assert (tmp_path / "out" / "s.tar").read_bytes() == Path(pause["path"]).read_bytes()


def test_an_archive_with_another_sha256_is_refused_and_not_kept(pause, tmp_path):
    dest = tmp_path / "s.tar"
    with pytest.raises(ImagebuildError, match=f"has sha256 {pause['sha256']}, the spec expects {'0' * 64}"):
        oci_archive.sandbox_archive(pause["path"], "0" * 64, pause["ref"], dest)
    assert not dest.exists() and list(tmp_path.glob(".s.tar.*")) == []


def test_an_archive_that_does_not_hold_the_sandbox_image_by_name_is_refused(tmp_path):
    """The test image under its own name is not the sandbox image, whatever the archive file is called."""
    made = test_oci_image(tmp_path / "pause.tar")
    sha = hashlib.sha256(Path(made["path"]).read_bytes()).hexdigest()
    with pytest.raises(ImagebuildError, match=f"holds {TEST_IMAGE_REF}, not config.sandbox_image "
                                              r"registry.k8s.io/pause:3.10"):
        oci_archive.sandbox_archive(made["path"], sha, "registry.k8s.io/pause:3.10", tmp_path / "s.tar")
    assert not (tmp_path / "s.tar").exists()


def test_a_file_that_is_no_archive_is_refused(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar")
    with pytest.raises(ImagebuildError, match="is not an OCI image archive"):
        oci_archive.sandbox_archive(str(junk), hashlib.sha256(b"not a tar").hexdigest(), "pause:3.10",
                                    tmp_path / "s.tar")


def test_the_bake_puts_a_checked_archive_where_packer_uploads_it(pause, tmp_path):
    spec = from_document({"config": {"sandbox_image": pause["ref"]}, "image": {"sandbox": {
        "source": "archive", "archive": {"url": "file://" + pause["path"], "sha256": pause["sha256"]}}}})
    record = bake.sandbox_source(spec, tmp_path)
    assert record["source"] == "archive" and record["digest"] == pause["digest"]
    assert (tmp_path / "sandbox-image.tar").is_file()
    none = bake.sandbox_source(from_document({"image": {"sandbox": {"source": "none"}}}), tmp_path / "n")
    assert none == {"source": "none", "name": "registry.cn-hangzhou.aliyuncs.com/google_containers/pause:3.6",
                    "digest": None}


def test_the_lab_ledger_names_what_the_developer_tools_made(tmp_path):
    made = debian_artifacts.release_tarballs("1.7", tmp_path / "mirror")
    sha = made["containerd"]["sha256"]
    assert "Debian's build 1.7.24" in (lab_ledger.lookup(sha) or "")
    assert lab_ledger.lookup(made["runc"]["sha256"]) is not None
    assert lab_ledger.lookup("f" * 64) is None
    url = "http://10.0.2.2:9/containerd-1.7.24-linux-amd64.tar.gz"
    found = bake.lab_artifacts([(url, sha), ("https://github.com/x/runc.amd64", "f" * 64)])
    assert found == [f"{url}: {lab_ledger.lookup(sha)}"]
