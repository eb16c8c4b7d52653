"""Shared pytest configuration and fixtures."""
from __future__ import annotations

import pytest

# The AWS fixtures (a local moto server, boto3 sessions, small images): tests/aws and the pipeline's e2e test.
pytest_plugins = ["tests.aws.fixtures"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A check that could not run fails loudly: every skip (missing tool, not root) is a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"could not run, so it fails: {reason}"

#: Where the end-to-end tests live (node ids are relative to the repository).
E2E_DIR = "tests/e2e/"


def pytest_collection_modifyitems(config, items):
    """An arm64 test is an end-to-end test too: `-m "not e2e"` (test-fast) must never run one. Every
    end-to-end test lives under tests/e2e/ (the tests mirror the package; the slow ones are in one place),
    and everything there is marked e2e."""
    loose = [item.nodeid for item in items if item.get_closest_marker("arm64") and not item.get_closest_marker("e2e")]
    if loose:
        raise pytest.UsageError(f"marked arm64 but not e2e: {', '.join(loose)}")
    astray = [item.nodeid for item in items
              if bool(item.get_closest_marker("e2e")) != item.nodeid.startswith(E2E_DIR)]
    if astray:
        raise pytest.UsageError(f"an e2e test outside {E2E_DIR} or a test there not marked e2e: {', '.join(astray)}")
    # The boots last: the fast tests report first, and a first run's builds (PREBUILD_ENV) get their time.
    items.sort(key=lambda item: bool(item.get_closest_marker("e2e")))


#: Set by `make test`: build what the suite needs into the cache in the background (devtools/prebuild.py).
PREBUILD_ENV = "IMAGEBUILD_PREBUILD"
_prebuild: list = []


def pytest_sessionstart(session):
    """With PREBUILD_ENV=1, `python -m devtools prebuild` runs beside the tests, one process per lane (logs:
    prebuild-<lane>.log in the imagebuild cache); a first run on a fresh machine then builds while the tests
    that need no build run."""
    import os

    if os.environ.get(PREBUILD_ENV) != "1" or hasattr(session.config, "workerinput"):
        return
    import sys

    from devtools.prebuild import LANES
    from imagebuild.paths import cache_dir
    from imagebuild.run import spawn

    for lane in LANES:  # side by side: the Go builds use the CPUs, the image builds mostly network and disk
        log = open(cache_dir() / f"prebuild-{lane}.log", "w")  # closed at the session's end
        _prebuild.append((spawn(["nice", "-n", "5", sys.executable, "-m", "devtools", "prebuild", "--lane", lane],
                                stdout=log, stderr=log, die_with_parent=True), log))


def pytest_sessionfinish(session, exitstatus):
    """The prebuild is stopped if the tests ended first (a failure with -x); an unfinished piece is redone
    next time, never half-used (devtools.upstream._once, baseimage.build)."""
    import signal

    from imagebuild.run import kill_group

    for proc, log in _prebuild:
        kill_group(proc, sig=signal.SIGTERM, grace=30)
        log.close()


@pytest.fixture(scope="session", autouse=True)
def checksums_at_install():
    """This machine reaches no GitHub, where the default spec's checksum files are: every render here leaves
    them to the install (IMAGEBUILD_CHECKSUMS_AT_INSTALL=1, as an offline host would set it). The tests of
    the render-time read itself (test_install_script, test_tls_downloads) unset it: `checksums_at_render`."""
    from imagebuild.render.downloads import AT_INSTALL_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(AT_INSTALL_ENV, "1")
        yield


@pytest.fixture
def checksums_at_render(monkeypatch):
    """Renders read checksum_url and pin the sha256, as they do by default outside this test suite."""
    from imagebuild.render.downloads import AT_INSTALL_ENV

    monkeypatch.delenv(AT_INSTALL_ENV, raising=False)


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
