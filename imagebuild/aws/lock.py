"""Publish and prune of one family, one at a time: on this machine and, with image.aws.lock_table,
across machines.

On this machine an exclusive flock on `<cache>/locks/<family>.lock` (imagebuild.run.locked) keeps a
second process out. Across machines a lease in a DynamoDB table of the home region does: the item
`{"lock": "imagebuild/<family>", "owner", "expires", ...}` is written with a conditional PutItem that
succeeds only when no item exists or its lease has expired. The holder renews the lease every third
of LEASE_S (a conditional UpdateItem on its own owner id) and deletes the item when it is done.

When a holder dies (killed, its machine gone, its network cut) nothing renews the lease: the next
run finds the item, says who holds it and until when, and takes it over once `expires` has passed,
at most LEASE_S after the last renewal. Its reconcile then finds what the dead run left in AWS. A
holder that could not renew in time (a long network cut) may find the lease taken over: `check`
raises at the publish's next step, before anything more is changed. Expiry compares wall clocks
(time.time); hosts keep them in step (NTP) far closer than LEASE_S.

The table needs a string partition key named `lock` (docs/aws.md shows the one command that makes it).
"""
from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from imagebuild.aws.clients import ClientFactory, describe_error, error_code, is_aws_error
from imagebuild.errors import ImagebuildError
from imagebuild.paths import cache_dir
from imagebuild.progress import step
from imagebuild.run import locked

LEASE_S = 300.0  # a lease lasts this long without renewal
KEY = "lock"


class LockLost(ImagebuildError):
    """Another run took the lease over (this one could not renew it in time)."""


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Lease:
    """A lease on one family in a DynamoDB table; `acquire`, then `release` (or use `held`)."""

    def __init__(self, dynamodb: Any, table: str, family: str, what: str, *, lease_s: float | None = None) -> None:
        self.dynamodb, self.table, self.what = dynamodb, table, what
        self.lease_s = LEASE_S if lease_s is None else lease_s
        self.key = {KEY: {"S": f"imagebuild/{family}"}}
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.lost: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self, wait: float = 0.0, poll: float = 5.0) -> None:
        """Take the lease, waiting at most *wait* seconds for a holder to finish (or its lease to expire)."""
        try:
            self._acquire(wait, poll)
        except Exception as exc:
            if not is_aws_error(exc):
                raise
            raise ImagebuildError(f"{self.what}: cannot take the lock in DynamoDB table {self.table}: "
                                  f"{describe_error(exc)}") from None

    def _acquire(self, wait: float, poll: float) -> None:
        deadline = time.monotonic() + wait
        while not self._try():
            holder = self._holder()
            if holder is None:
                continue  # let go between the two calls: try again at once
            if time.monotonic() >= deadline:
                raise ImagebuildError(f"{self.what}: {self.key[KEY]['S']} is locked in DynamoDB table {self.table} "
                                      f"by {holder}; run again when it is done (a holder that died leaves the lock "
                                      f"when its lease expires)")
            step(f"{self.what}: waiting for {holder}")
            time.sleep(min(poll, max(deadline - time.monotonic(), 0.01)))
        self._renewer = threading.Thread(target=self._renew, name="imagebuild-lease", daemon=True)
        self._renewer.start()

    def _try(self) -> bool:
        now = time.time()
        item = {**self.key, "owner": {"S": self.owner}, "expires": {"N": f"{now + self.lease_s:.3f}"},
                "acquired": {"S": _when(now)}, "what": {"S": self.what}}
        try:
            self.dynamodb.put_item(TableName=self.table, Item=item,
                                   ConditionExpression="attribute_not_exists(#k) OR #e < :now",
                                   ExpressionAttributeNames={"#k": KEY, "#e": "expires"},
                                   ExpressionAttributeValues={":now": {"N": f"{now:.3f}"}})
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            if error_code(exc) == "ResourceNotFoundException":
                raise ImagebuildError(f"{self.what}: the lock table {self.table} does not exist in this region: "
                                      "create it (docs/aws.md: a table with the string partition key `lock`)") from None
            raise
        return True

    def _holder(self) -> str | None:
        item = self.dynamodb.get_item(TableName=self.table, Key=self.key, ConsistentRead=True).get("Item")
        if not item:
            return None
        expires = float(item["expires"]["N"])
        return (f"{item['owner']['S']} ({item.get('what', {}).get('S', '?')}, since {item.get('acquired', {}).get('S')}"
                f", lease until {_when(expires)})")

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.dynamodb.update_item(
                    TableName=self.table, Key=self.key, UpdateExpression="SET #e = :e",
                    ConditionExpression="#o = :me", ExpressionAttributeNames={"#e": "expires", "#o": "owner"},
                    ExpressionAttributeValues={":e": {"N": f"{time.time() + self.lease_s:.3f}"},
                                               ":me": {"S": self.owner}})
            except Exception as exc:
                if error_code(exc) == "ConditionalCheckFailedException":
                    self.lost = "another run took the lease over"
                    return
                step(f"{self.what}: could not renew the lease ({describe_error(exc)}); trying again")

    def check(self) -> None:
        """LockLost when the lease was taken over: stop before changing anything more."""
        if self.lost:
            raise LockLost(f"{self.what}: lost the lock in DynamoDB table {self.table}: {self.lost}; stopped "
                           "before changing anything more")

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            self.dynamodb.delete_item(TableName=self.table, Key=self.key, ConditionExpression="#o = :me",
                                      ExpressionAttributeNames={"#o": "owner"},
                                      ExpressionAttributeValues={":me": {"S": self.owner}})
        except Exception as exc:
            if error_code(exc) != "ConditionalCheckFailedException":  # taken over: not ours to delete
                step(f"{self.what}: could not release the lock ({describe_error(exc)}); it expires by itself")


class _NoLease:
    def check(self) -> None:
        pass


@contextlib.contextmanager
def family_lock(clients: ClientFactory, target: Any, what: str, *, wait: float = 0.0,
                lease_s: float | None = None) -> Iterator[Lease | _NoLease]:
    """Hold the family's lock for the body: the local flock, and the DynamoDB lease when the target
    names a lock table. Raises ImagebuildError at once when another run holds either (after *wait*
    seconds for the lease)."""
    name = target.family
    with locked(cache_dir("locks") / f"{name}.lock",
                busy=f"{what}: another imagebuild process on this machine is publishing or pruning {name}"):
        if not target.lock_table:
            yield _NoLease()
            return
        lease = Lease(clients("dynamodb", target.region), target.lock_table, name, what, lease_s=lease_s)
        lease.acquire(wait)
        try:
            yield lease
        finally:
            lease.release()
