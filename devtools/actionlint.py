"""actionlint, GitHub Actions' own workflow linter, built from the Go module proxy once and cached: the tests
lint what `imagebuild matrix --format github-actions` emits with it.

Pinned (ACTIONLINT_VERSION, the newest release on the proxy when this was written) so a lint result does not
change under the tests; the build is `go install github.com/rhysd/actionlint/cmd/actionlint@vX`, with the
version set as its release builds set it (`-X github.com/rhysd/actionlint.version=`). Cached under
`paths.cache_dir("upstream")` like the other upstream builds (devtools.upstream), under its lock.
"""
from __future__ import annotations

from pathlib import Path

from devtools.upstream import go_install
from imagebuild.run import run

ACTIONLINT_VERSION = "1.7.12"
MODULE = "github.com/rhysd/actionlint"


def actionlint(version: str = ACTIONLINT_VERSION) -> Path:
    """The actionlint binary of *version*: `<cache>/actionlint-<version>-linux-amd64/actionlint`."""
    return go_install("actionlint", MODULE, version, lambda _: [
        "-trimpath", "-ldflags", f"-s -w -X {MODULE}.version=v{version}", f"{MODULE}/cmd/actionlint@v{version}"]) \
        / "actionlint"


def lint(workflow: Path) -> tuple[int, str]:
    """(exit code, output) of actionlint on *workflow*: 0 clean, 1 problems found (each on one line)."""
    result = run([str(actionlint()), "-no-color", "-oneline", str(workflow)], what="actionlint", check=False,
                 timeout=300)
    return result.returncode, (result.stdout + result.stderr).strip()
