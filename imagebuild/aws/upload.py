"""A raw disk image into an EBS snapshot through the EBS direct APIs.

The raw file is read sparsely: holes (found with SEEK_DATA/SEEK_HOLE where the filesystem
supports them) are never read, and blocks that read back as all zeros are not sent, since an EBS
snapshot reads unwritten blocks as zeros. Each written 512 KiB block carries its base64 SHA256;
`complete_snapshot` gets the count of written blocks and the LINEAR aggregate: SHA256 over the
concatenated raw 32-byte digests of the written blocks in ascending block-index order, base64
(as AWS describes it, and as AWS's own coldsnap computes it).
"""
from __future__ import annotations

import base64
import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagebuild.aws.clients import error_code
from imagebuild.errors import ImagebuildError
from imagebuild.progress import bar

BLOCK_SIZE = 512 * 1024  # EBS direct API block size; fixed by AWS
GIB = 1024**3
DEFAULT_WORKERS = 8
SNAPSHOT_TIMEOUT_MINUTES = 120  # AWS errors an unfinished snapshot after this long
_ZERO_BLOCK = bytes(BLOCK_SIZE)
# Right after StartSnapshot, EBS may not know the new snapshot yet (eventual consistency):
# PutSnapshotBlock then answers ResourceNotFoundException. Retried for this long after the start.
NOT_FOUND_GRACE_S = 60.0


# --------------------------------------------------------------------------- raw image


def volume_size_gib(size: int) -> int:
    """Bytes rounded up to whole GiB (at least 1), as EBS volume sizes are."""
    return max(1, -(-size // GIB))


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges that may hold data; all of [0, size) without SEEK_DATA support."""
    seek_data = getattr(os, "SEEK_DATA", None)
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if seek_data is None or seek_hole is None or size == 0:
        if size:
            yield 0, size
        return
    try:
        first = os.lseek(fd, 0, seek_data)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data at all: one big hole
            return
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            yield 0, size
            return
        raise
    start = first
    while start < size:
        end = min(os.lseek(fd, start, seek_hole), size)
        yield start, end
        if end >= size:
            return
        try:
            start = os.lseek(fd, end, seek_data)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            raise


def candidate_blocks(fd: int, size: int) -> list[int]:
    """Indices of the 512 KiB blocks that overlap data extents, ascending."""
    blocks: list[int] = []
    last = -1
    for start, end in data_extents(fd, size):
        first_block = max(start // BLOCK_SIZE, last + 1)
        end_block = -(-end // BLOCK_SIZE)
        blocks.extend(range(first_block, end_block))
        if end_block - 1 > last:
            last = end_block - 1
    return blocks


def read_block(fd: int, index: int, size: int) -> bytes | None:
    """Block *index* padded to 512 KiB, or None when it holds only zeros."""
    offset = index * BLOCK_SIZE
    length = min(BLOCK_SIZE, size - offset)
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise ImagebuildError(f"short read at offset {offset} of the raw image ({len(data)} of {length} bytes)")
    if data == _ZERO_BLOCK[:length]:
        return None
    if length < BLOCK_SIZE:
        data += bytes(BLOCK_SIZE - length)
    return data


def block_checksum(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def linear_checksum(digests: dict[int, bytes]) -> str:
    """The LINEAR aggregate of per-block SHA256 digests (raw 32 bytes each), base64."""
    outer = hashlib.sha256()
    for index in sorted(digests):
        outer.update(digests[index])
    return base64.b64encode(outer.digest()).decode("ascii")


# --------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class UploadProgress:
    """Where an upload stands. Zero blocks that were skipped count as done."""

    blocks_done: int
    blocks_total: int
    blocks_written: int
    bytes_written: int
    elapsed: float

    @property
    def mib_per_s(self) -> float:
        return self.bytes_written / 1048576 / self.elapsed if self.elapsed > 0 else 0.0


ProgressCallback = Callable[[UploadProgress], None]


def upload_bar(stream: Any = None, width: int = 30) -> ProgressCallback:
    """The upload's progress on imagebuild's one bar (:func:`imagebuild.progress.bar`): blocks done
    of the total, MiB sent and the rate; redrawn on a terminal, a line per 10% in a CI log."""
    latest: list[UploadProgress] = []

    def describe(done: float, total: float) -> str:
        p = latest[-1]
        return (f"{p.blocks_done}/{p.blocks_total} blocks, {p.bytes_written / 1048576:.1f} MiB sent, "
                f"{p.mib_per_s:.1f} MiB/s")

    shown = bar(0, "upload", stream=stream, width=width, describe=describe)

    def update(p: UploadProgress) -> None:
        latest[:] = [p]
        shown.update(p.blocks_done, total=p.blocks_total)

    return update


# --------------------------------------------------------------------------- upload


@dataclass
class UploadResult:
    snapshot_id: str
    blocks_written: int
    checksum: str


class UploadFailed(Exception):
    """The upload stopped; `snapshot_id` is the incomplete snapshot, `cause` what stopped it."""

    def __init__(self, snapshot_id: str, written: int, total: int, cause: BaseException) -> None:
        super().__init__(f"upload to {snapshot_id} stopped after {written} blocks")
        self.snapshot_id = snapshot_id
        self.written = written
        self.total = total
        self.cause = cause


def upload_raw(
    ebs: Any,
    raw: Path,
    *,
    description: str,
    tags: dict[str, str],
    client_token: str,
    on_started: Callable[[str], None] | None = None,
    progress: ProgressCallback | None = None,
    workers: int = DEFAULT_WORKERS,
    encrypted: bool = False,
    kms_key_arn: str | None = None,
) -> UploadResult:
    """Upload *raw* into a new snapshot and complete it. Returns when AWS accepted completion.

    *encrypted* makes an encrypted snapshot, with *kms_key_arn* (None: the account's default
    EBS key).

    `on_started(snapshot_id)` runs right after start_snapshot so the caller can record the
    snapshot before any block is sent. Any failure (or KeyboardInterrupt) after the start raises
    UploadFailed carrying the snapshot id; deleting it is the caller's job.
    """
    size = raw.stat().st_size
    encryption: dict[str, Any] = {"Encrypted": True} if encrypted else {}
    if encrypted and kms_key_arn:
        encryption["KmsKeyArn"] = kms_key_arn
    started = ebs.start_snapshot(
        VolumeSize=volume_size_gib(size),
        Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
        Description=description,
        ClientToken=client_token,
        Timeout=SNAPSHOT_TIMEOUT_MINUTES,
        **encryption,
    )
    snapshot_id = started["SnapshotId"]
    digests: dict[int, bytes] = {}
    counters = {"done": 0, "written": 0}
    total = 0
    start_time = time.monotonic()
    lock = threading.Lock()

    def report() -> None:
        if progress is not None:
            with lock:
                snap = UploadProgress(
                    blocks_done=counters["done"],
                    blocks_total=total,
                    blocks_written=counters["written"],
                    bytes_written=counters["written"] * BLOCK_SIZE,
                    elapsed=time.monotonic() - start_time,
                )
            progress(snap)

    fd = os.open(raw, os.O_RDONLY)
    try:
        try:
            if on_started is not None:
                on_started(snapshot_id)
            blocks = candidate_blocks(fd, size)
            total = len(blocks)
            report()

            def send(index: int) -> tuple[int, bytes | None]:
                data = read_block(fd, index, size)
                if data is None:
                    return index, None
                digest = hashlib.sha256(data).digest()
                delay = 0.25
                while True:
                    try:
                        ebs.put_snapshot_block(
                            SnapshotId=snapshot_id,
                            BlockIndex=index,
                            BlockData=data,
                            DataLength=BLOCK_SIZE,
                            Checksum=block_checksum(digest),
                            ChecksumAlgorithm="SHA256",
                        )
                        return index, digest
                    except Exception as exc:
                        young = time.monotonic() - start_time < NOT_FOUND_GRACE_S
                        if error_code(exc) != "ResourceNotFoundException" or not young:
                            raise
                    time.sleep(delay)
                    delay = min(delay * 2, 8.0)

            workers = max(1, workers)
            pending: set[Future] = set()
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ebs-put") as pool:
                try:
                    queue = iter(blocks)
                    exhausted = False
                    while pending or not exhausted:
                        while not exhausted and len(pending) < 2 * workers:
                            index = next(queue, None)
                            if index is None:
                                exhausted = True
                                break
                            pending.add(pool.submit(send, index))
                        if not pending:
                            break
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in finished:
                            index, digest = future.result()  # re-raises a worker's failure
                            with lock:
                                counters["done"] += 1
                                if digest is not None:
                                    digests[index] = digest
                                    counters["written"] += 1
                        report()
                except BaseException:
                    for future in pending:
                        future.cancel()
                    raise
            checksum = linear_checksum(digests)
            ebs.complete_snapshot(
                SnapshotId=snapshot_id,
                ChangedBlocksCount=len(digests),
                Checksum=checksum,
                ChecksumAlgorithm="SHA256",
                ChecksumAggregationMethod="LINEAR",
            )
        except BaseException as exc:
            raise UploadFailed(snapshot_id, counters["written"], total, exc) from exc
    finally:
        os.close(fd)
    return UploadResult(snapshot_id=snapshot_id, blocks_written=len(digests), checksum=checksum)
