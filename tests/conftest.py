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
