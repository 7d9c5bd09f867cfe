"""Fixtures of the reliability tests: the server tests' apps (SQLite and PostgreSQL), and a live server.

The app fixtures are the server tests' own (tests/server/conftest.py), imported so that both
packages build their apps the same way; `live_server` serves an app with uvicorn on a free
loopback port in a thread, for the tests that need real concurrent HTTP clients.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI

from tests.server.conftest import db_url, harness, make_harness, pg_database  # noqa: F401  (fixtures)


@contextlib.contextmanager
def live_server(app: FastAPI, timeout: float = 30.0) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 (a port the kernel picks) in a thread; yields the base URL.

    The app's lifespan is not run again: it is already started by the harness's TestClient.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", log_config=None, lifespan="off",
                                           limit_concurrency=None, backlog=256))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


@pytest.fixture
def serve() -> type[contextlib.AbstractContextManager[str]]:
    return live_server  # type: ignore[return-value]
