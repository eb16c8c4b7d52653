"""The sparse reader, the checksums and the progress bar of the EBS upload (no AWS involved)."""
from __future__ import annotations

import base64
import hashlib
import io
import os

from imagebuild.aws import upload
from imagebuild.aws.upload import (
    BLOCK_SIZE,
    UploadProgress,
    candidate_blocks,
    linear_checksum,
    read_block,
    upload_bar,
    volume_size_gib,
)


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


def _sent(done, total=40):
    return UploadProgress(blocks_done=done, blocks_total=total, blocks_written=done, bytes_written=done * BLOCK_SIZE,
                          elapsed=1 + done / 10)


def test_upload_bar_lines_when_not_a_terminal():
    out = io.StringIO()
    update = upload_bar(out)
    for done in range(0, 41):
        update(_sent(done))
    lines = out.getvalue().splitlines()
    assert 5 <= len(lines) <= 12
    assert lines[-1].startswith("  upload 40/40 blocks, 20.0 MiB sent") and lines[-1].endswith("MiB/s")


def test_upload_bar_draws_a_terminal_line():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    update = upload_bar(out, width=10)
    update(UploadProgress(blocks_done=0, blocks_total=4, blocks_written=0, bytes_written=0, elapsed=0.0))
    update(UploadProgress(blocks_done=4, blocks_total=4, blocks_written=4, bytes_written=4 * BLOCK_SIZE, elapsed=1.0))
    assert out.getvalue() == ("\r[----------] upload 0/4 blocks, 0.0 MiB sent, 0.0 MiB/s"
                              "\r[##########] upload 4/4 blocks, 2.0 MiB sent, 2.0 MiB/s\n")


