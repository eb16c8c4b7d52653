"""The sparse reader, the checksums and the progress bar of the EBS upload (no AWS involved)."""
from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess

import pytest

from imagebuild.aws import upload
from imagebuild.aws.upload import (
    BLOCK_SIZE,
    StderrProgressBar,
    UploadProgress,
    candidate_blocks,
    linear_checksum,
    qcow2_to_raw,
    read_block,
    volume_size_gib,
)
from imagebuild.errors import ImagebuildError


def sparse_file(path, size, writes):
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, data in writes:
            handle.seek(offset)
            handle.write(data)


def test_candidate_blocks_skip_holes_and_zero_blocks_read_as_none(tmp_path):
    path = tmp_path / "disk.raw"
    size = 16 * BLOCK_SIZE
    sparse_file(path, size, [(0, b"boot"), (3 * BLOCK_SIZE + 17, b"x" * 100), (5 * BLOCK_SIZE, bytes(BLOCK_SIZE)),
                             (size - 10, b"0123456789")])
    fd = os.open(path, os.O_RDONLY)
    try:
        blocks = candidate_blocks(fd, size)
        assert {0, 3, 15} <= set(blocks)
        assert blocks == sorted(set(blocks))
        if hasattr(os, "SEEK_DATA"):  # holes are never even read where the filesystem says so
            assert not {1, 2, 8, 9, 10} & set(blocks)
        assert read_block(fd, 5, size) is None  # written, but all zeros
        assert read_block(fd, 9, size) is None  # a hole
        assert read_block(fd, 3, size)[17:117] == b"x" * 100
    finally:
        os.close(fd)


def test_without_seek_data_every_block_is_a_candidate(tmp_path, monkeypatch):
    path = tmp_path / "disk.raw"
    sparse_file(path, 4 * BLOCK_SIZE + 100, [(BLOCK_SIZE, b"data")])
    monkeypatch.delattr(upload.os, "SEEK_DATA", raising=False)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert candidate_blocks(fd, 4 * BLOCK_SIZE + 100) == [0, 1, 2, 3, 4]
    finally:
        os.close(fd)


def test_short_last_block_is_padded(tmp_path):
    path = tmp_path / "disk.raw"
    size = BLOCK_SIZE + 4096
    sparse_file(path, size, [(BLOCK_SIZE, b"tail")])
    fd = os.open(path, os.O_RDONLY)
    try:
        data = read_block(fd, 1, size)
    finally:
        os.close(fd)
    assert len(data) == BLOCK_SIZE and data.startswith(b"tail") and not data[4:].strip(b"\0")


def test_linear_checksum_is_sha256_of_raw_digests_in_block_order():
    blocks = {7: b"b" * BLOCK_SIZE, 2: b"a" * BLOCK_SIZE}
    digests = {i: hashlib.sha256(d).digest() for i, d in blocks.items()}
    expected = base64.b64encode(hashlib.sha256(digests[2] + digests[7]).digest()).decode()
    assert linear_checksum(digests) == expected
    assert linear_checksum({}) == base64.b64encode(hashlib.sha256(b"").digest()).decode()


def test_volume_size_rounds_up_to_gib():
    assert volume_size_gib(1) == 1
    assert volume_size_gib(2 * 1024**3) == 2
    assert volume_size_gib(2 * 1024**3 + 1) == 3


def test_progress_bar_lines_when_not_a_terminal():
    out = io.StringIO()
    bar = StderrProgressBar(out)
    for done in range(0, 41):
        bar(UploadProgress(blocks_done=done, blocks_total=40, blocks_written=done, bytes_written=done * BLOCK_SIZE,
                           elapsed=1 + done / 10))
    lines = out.getvalue().splitlines()
    assert 5 <= len(lines) <= 12
    assert lines[-1].startswith("  upload 40/40 blocks, 20.0 MiB sent") and lines[-1].endswith("MiB/s")


def test_progress_bar_draws_a_terminal_line():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    bar = StderrProgressBar(out, width=10)
    bar(UploadProgress(blocks_done=0, blocks_total=4, blocks_written=0, bytes_written=0, elapsed=0.0))
    bar(UploadProgress(blocks_done=4, blocks_total=4, blocks_written=4, bytes_written=4 * BLOCK_SIZE, elapsed=1.0))
    assert out.getvalue() == ("\r[----------] upload 0/4 blocks, 0.0 MiB sent, 0.0 MiB/s"
                              "\r[##########] upload 4/4 blocks, 2.0 MiB sent, 2.0 MiB/s\n")


def _qcow2(tmp_path, data=b""):
    path = tmp_path / "disk.qcow2"
    raw = tmp_path / "seed.raw"
    raw.write_bytes(data)
    os.truncate(raw, 96 * 1024 * 1024)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    return path


def test_convert_reports_qemu_img_percentages(tmp_path):
    """The conversion's bar: qemu-img's own `-p` percentages, ending at 100, and a bit-identical raw disk."""
    qcow2 = _qcow2(tmp_path, data=os.urandom(3 * 1024 * 1024))
    seen = []
    qcow2_to_raw(qcow2, tmp_path / "out.raw", seen.append)
    assert seen and seen[-1] == 100.0 and seen == sorted(seen)
    assert (tmp_path / "out.raw").read_bytes() == (tmp_path / "seed.raw").read_bytes()
    out = io.StringIO()
    qcow2_to_raw(qcow2, tmp_path / "again.raw", StderrProgressBar(out, label="convert").percent)
    assert out.getvalue().splitlines()[-1] == "  convert 100%"
    qcow2_to_raw(qcow2, tmp_path / "quiet.raw")   # no callback: no -p, same bytes
    assert (tmp_path / "quiet.raw").read_bytes() == (tmp_path / "seed.raw").read_bytes()


def test_convert_failure_names_qemu_imgs_reason(tmp_path):
    seen = []
    (tmp_path / "broken.qcow2").write_bytes(b"QFI\xfb" + bytes(100))
    with pytest.raises(ImagebuildError, match="qemu-img could not convert broken.qcow2 to raw: .*broken.qcow2"):
        qcow2_to_raw(tmp_path / "broken.qcow2", tmp_path / "out.raw", seen.append)
    assert seen == [] or seen[-1] < 100
