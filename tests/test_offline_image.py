"""Reading an image without booting it (vm.disks.OfflineImage) and verify's no-boot content store check
(verify.content_store_check), on small real disk images: a GPT disk, an ext4 root made by mkfs.ext4 -d
from a directory, converted to qcow2, as the base image recipe makes them."""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from imagebuild.spec import load
from imagebuild.verify import boot as verify
from imagebuild.vm.disks import OfflineImage

STORE = "var/lib/containerd/io.containerd.content.v1.content/blobs/sha256"


def disk_with(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """A qcow2 whose GPT holds an ESP-sized gap and one Linux root partition with *files* in it."""
    tree = tmp_path / "tree"
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    (tree / "etc").mkdir(parents=True, exist_ok=True)
    root = tmp_path / "root.ext4"
    subprocess.run(["truncate", "-s", "24M", str(root)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(root)], check=True)
    raw = tmp_path / "disk.raw"
    subprocess.run(["truncate", "-s", "32M", str(raw)], check=True)
    subprocess.run(["sfdisk", "-q", str(raw)], input="label: gpt\nstart=4MiB, size=24MiB, type=linux\n", text=True,
                   check=True)
    subprocess.run(["dd", f"if={root}", f"of={raw}", "bs=1M", "seek=4", "conv=notrunc,sparse", "status=none"],
                   check=True)
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True)
    return image


def blob(data: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(data).hexdigest(), data


def test_the_offline_reader_lists_the_root_filesystem(tmp_path):
    digest, data = blob(b"layer")
    image = disk_with(tmp_path, {f"{STORE}/{digest}": data, "var/lib/imagebuild/build-facts.json": b"{}"})
    with OfflineImage(image, tmp_path) as disk:
        assert disk.listdir(f"/{STORE}") == [digest]
        assert disk.listdir("/var/lib/imagebuild") == ["build-facts.json"]
        assert disk.listdir("/no/such/dir") is None
    assert not (tmp_path / "disk.offline.raw").exists()  # the raw copy goes with the context


@pytest.mark.parametrize("sandbox, extra, ok", [
    ({"source": "none"}, False, True),
    ({"source": "none"}, True, False),          # negative: a blob no declared source gave (the old lab's leak)
    ("archive", False, True),
    ("archive", True, False),                   # negative: the archive's blobs and one more
])
def test_the_content_store_holds_only_what_the_declared_source_gave(tmp_path, sandbox, extra, ok):
    archive = [blob(b"manifest"), blob(b"config"), blob(b"layer")]
    files = {}
    if sandbox == "archive":
        sandbox = {"source": "archive", "blobs": [f"sha256:{d}" for d, _ in archive]}
        files |= {f"{STORE}/{d}": data for d, data in archive}
    if extra:
        digest, data = blob(b"a test program under the sandbox image's name")
        files[f"{STORE}/{digest}"] = data
    check = verify.content_store_check(disk_with(tmp_path, files), load(), sandbox)
    assert check is not None and check["ok"] is ok, check
    if not ok:
        assert "not from that source: sha256:" in check["actual"]


def test_a_registry_source_has_no_offline_expectation(tmp_path):
    """Its blobs are not known before the build VM pulls: the check is not made (None), not passed."""
    assert verify.content_store_check(tmp_path / "unused.qcow2", load(), {"source": "registry"}) is None
