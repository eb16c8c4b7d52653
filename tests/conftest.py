"""Shared pytest configuration and fixtures."""
from __future__ import annotations

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A check that could not run fails loudly: every skip (missing tool, not root) is a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"could not run, so it fails: {reason}"


def pytest_collection_modifyitems(config, items):
    """An arm64 test is an end-to-end test too: `-m "not e2e"` (test-fast) must never run one."""
    loose = [item.nodeid for item in items if item.get_closest_marker("arm64") and not item.get_closest_marker("e2e")]
    if loose:
        raise pytest.UsageError(f"marked arm64 but not e2e: {', '.join(loose)}")


@pytest.fixture(scope="session")
def release_16(tmp_path_factory):
    """Release-shaped containerd 1.6 + runc artifacts served from 127.0.0.1 (ephemeral port).

    Yields {"url": base URL, "dir": Path, "containerd": {...}, "runc": {...}} as
    debian_artifacts.release_tarballs returns them. gzip level 1 keeps the fixture ~1 s.
    """
    from devtools import debian_artifacts
    from devtools.serve import serve

    directory = tmp_path_factory.mktemp("release-1.6")
    artifacts = debian_artifacts.release_tarballs("1.6", directory, compresslevel=1)
    with serve(directory) as url:
        yield {"url": url, "dir": directory, **artifacts}
