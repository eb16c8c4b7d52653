"""Shared pytest configuration and fixtures."""
from __future__ import annotations

import pytest

# The AWS fixtures (a local moto server, boto3 sessions, small images): tests/aws and the pipeline's e2e test.
pytest_plugins = ["tests.aws.fixtures"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A check that could not run fails loudly: every skip (missing tool, not root) is a failure. A fast test
    that used a Go-built piece without the `builds` marker fails too (`unmarked_build_use`)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"could not run, so it fails: {reason}"
    if call.when == "call" and report.passed:
        unmarked = unmarked_build_use(item, _used.pop(item.nodeid, []))
        if unmarked:
            report.outcome = "failed"
            report.longrepr = unmarked


#: nodeid -> the Go-built pieces (devtools.upstream._once) that test's setup and call used.
_used: dict[str, list[str]] = {}
_running: list[str] = []


def pytest_configure(config):
    from devtools import upstream

    upstream.watchers.append(lambda what: _running and _used.setdefault(_running[0], []).append(what))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _running[:] = [item.nodeid]
    yield
    _running.clear()


def unmarked_build_use(item, used: list[str]) -> str | None:
    """Why *item* fails if it used Go-built pieces (*used*) without saying so: on a first run those pieces are
    still building in the background (make test's prebuild), and only the `builds` marker orders the test
    last, by when they are built. None if it is marked, used none, or is no fast test of `make test` (e2e, extra)."""
    if not used or any(item.get_closest_marker(name) for name in ("builds", "e2e", "extra")):
        return None
    return (f"{item.nodeid} used {', '.join(dict.fromkeys(used))}, built from the Go module proxy on a first run: "
            "mark it `builds` (pytest.mark.builds), so that run orders it last, by when it is built")


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
    items.sort(key=_stage)


#: The e2e fixtures that serve a piece built from the Go module proxy (the mirror's containerd 1.6 and 1.7, the
#: Debian 13 golden's 2.3): a boot that uses one waits for it on a first run.
GO_BUILT_FIXTURES = frozenset({"mirror", "debian13"})


def _stage(item) -> int:
    """Where *item* runs: the fast tests that need no Go build, the boots that need none, the other boots,
    then the fast tests marked `builds`. `make test` runs the boots and the fast tests in two processes
    (devtools/testrun.py) while a first run builds, the boots' pieces first (devtools/prebuild.py): each
    process first runs what needs no build."""
    if item.get_closest_marker("e2e"):
        return 2 if GO_BUILT_FIXTURES & set(item.fixturenames) else 1
    return 3 if item.get_closest_marker("builds") else 0


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
