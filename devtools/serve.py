"""A local HTTP server for release-shaped downloads (`make golden`, tests).

Why: GitHub is not reachable from the build machines; the install script downloads and checks
the release-shaped tarballs from 127.0.0.1 (10.0.2.2 from inside QEMU) exactly as from GitHub.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:   # the stdlib's signature
        pass


@contextlib.contextmanager
def serve(directory: Path | str) -> Iterator[str]:
    """Serve *directory* over HTTP on 127.0.0.1 (ephemeral port); yields the base URL.

    Why: release tarballs and images are "downloaded" from a local server in offline builds.
    The server (threaded, no request logging) is shut down when the block exits.
    """
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="imagebuild-serve", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
