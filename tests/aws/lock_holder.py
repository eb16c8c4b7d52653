"""Another machine's publish, for tests/aws/test_aws_lock.py: a separate process (its own cache
directory, so its own local lock) that publishes IMAGE_DIR to the target given as JSON, and stops at
its first PutSnapshotBlock, holding the family's lock, until GO exists. With `--die` it kills itself
there instead (SIGKILL: no release, no renewal), as a machine that goes away does. `--lease S` is its
lease. It talks to the test's moto server through the environment the test gives it (boto3's own)."""
from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

import boto3

from imagebuild.aws import lock
from imagebuild.aws.clients import boto3_clients
from imagebuild.aws.documents import PublishTarget
from imagebuild.aws.publish import publish


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("image_dir")
    parser.add_argument("target")
    parser.add_argument("holding", help="written once the lock is held and the upload has started")
    parser.add_argument("go", help="the upload goes on once this file exists")
    parser.add_argument("--die", action="store_true")
    parser.add_argument("--lease", type=float, default=lock.LEASE_S)
    args = parser.parse_args()
    lock.LEASE_S = args.lease
    session = boto3.session.Session()

    def hold(**_):
        Path(args.holding).touch()
        if args.die:
            os.kill(os.getpid(), signal.SIGKILL)
        while not Path(args.go).exists():
            time.sleep(0.02)

    session.events.register("before-send.ebs.PutSnapshotBlock", hold)
    record = publish(args.image_dir, PublishTarget(**json.loads(args.target)), clients=boto3_clients(session=session),
                     progress=lambda p: None, workers=1, poll_interval=0.01)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
