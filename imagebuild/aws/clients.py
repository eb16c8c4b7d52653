"""boto3 clients for publish and prune, and AWS errors turned into clear messages.

Credentials come only from boto3's normal chain (environment variables, shared config/profile,
instance roles); nothing here reads, stores or prints them. An endpoint override (a local test
server, a VPC endpoint) uses boto3's own `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>`
environment support, so there is no separate imagebuild setting for it.

A *client factory* is any callable `(service, region) -> client`; publish and prune take one so
that callers (and tests) can wrap the real clients.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from imagebuild.errors import ImagebuildError

ClientFactory = Callable[[str, str], Any]

# Parallel put_snapshot_block requests; each holds one 512 KiB block in memory.
DEFAULT_POOL_CONNECTIONS = 16

# Retries per service. EBS direct APIs answer RequestThrottledException well below their
# per-snapshot request limit when many blocks go in parallel; botocore's default (3 attempts)
# fails a whole upload on three throttles of one block. "adaptive" adds botocore's client-side
# rate limiter, so the parallel workers slow down together instead of each retrying at full speed;
# 10 attempts give one block up to ~110 s of backoff (exponential with jitter, at most 20 s a wait).
# EC2 and SSM throttle per account (RequestLimitExceeded, ThrottlingException): standard mode
# with more attempts than the default.
RETRIES = {
    "ebs": {"mode": "adaptive", "total_max_attempts": 10},
    "ec2": {"mode": "standard", "total_max_attempts": 8},
    "ssm": {"mode": "standard", "total_max_attempts": 8},
    "autoscaling": {"mode": "standard", "total_max_attempts": 8},
}


def boto3_clients(*, max_pool_connections: int = DEFAULT_POOL_CONNECTIONS, session: Any = None) -> ClientFactory:
    """A factory of boto3 clients from one session, one client per (service, region).

    *session* is a boto3 Session (default: a new default session, i.e. the normal credential
    chain). Clients are created under a lock (a Session is not thread-safe); the clients
    themselves are safe to share between threads.
    """
    try:
        import boto3
        import botocore
        import botocore.config
        import botocore.configprovider
    except ImportError:
        raise ImagebuildError("publishing to AWS needs boto3: pip install boto3") from None

    if (os.environ.get("AWS_ENDPOINT_URL") or _service_endpoint_env()) and not hasattr(
        botocore.configprovider, "ConfiguredEndpointProvider"
    ):
        raise ImagebuildError(
            f"AWS_ENDPOINT_URL is set but botocore {botocore.__version__} ignores it; "
            "upgrade boto3/botocore (endpoint settings from the environment came in botocore 1.31)"
        )

    if session is None:
        session = boto3.session.Session()
    base = dict(max_pool_connections=max_pool_connections, user_agent_appid="imagebuild")
    configs = {service: botocore.config.Config(**base, retries=dict(retries)) for service, retries in RETRIES.items()}
    default_config = botocore.config.Config(**base)
    lock = threading.Lock()
    cache: dict[tuple[str, str], Any] = {}

    def factory(service: str, region: str) -> Any:
        key = (service, region)
        with lock:
            client = cache.get(key)
            if client is None:
                client = session.client(service, region_name=region, config=configs.get(service, default_config))
                cache[key] = client
            return client

    return factory


def _service_endpoint_env() -> bool:
    return any(name.startswith("AWS_ENDPOINT_URL_") for name in os.environ)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError (`InvalidAMIID.NotFound`), else ''."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or "")
    return ""


def is_aws_error(exc: BaseException) -> bool:
    """True for errors raised by botocore (API errors, connection errors, missing credentials)."""
    try:
        import botocore.exceptions
        import botocore.parsers
    except ImportError:  # pragma: no cover - boto3 missing means no AWS call was made
        return False
    return isinstance(
        exc,
        (
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
            # an endpoint that answered with something other than an AWS response (HTTP 500 page)
            botocore.parsers.ResponseParserError,
        ),
    )


def describe_error(exc: BaseException) -> str:
    """One line saying what AWS (or the way to it) said, without a traceback."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        code = response["Error"].get("Code") or "error"
        message = response["Error"].get("Message") or ""
        operation = getattr(exc, "operation_name", "")
        where = f" in {operation}" if operation else ""
        text = f"{code}{where}"
        if message and message != "None":
            text += f": {message}"
        return text
    text = str(exc).strip() or type(exc).__name__
    first = text.splitlines()[0]
    try:
        import botocore.exceptions
        import botocore.parsers

        if isinstance(exc, botocore.parsers.ResponseParserError):
            return f"the endpoint did not answer like AWS ({first.rstrip(':')})"

        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return (
                "no AWS credentials found (set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "or run where an instance role is available)"
            )
    except ImportError:  # pragma: no cover
        pass
    return first
