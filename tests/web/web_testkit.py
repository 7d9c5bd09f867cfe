"""Helpers of the web tests: the real app served by uvicorn on 127.0.0.1, and a guarded headless Chromium.

`LiveServer` runs `create_app(...)` with uvicorn in a thread on a free loopback port (the
lifespan runs, so the dispatcher hands jobs to the executor as in production). `guard` makes a
browser context refuse, and record, every request that would leave 127.0.0.1; the tests
assert the record is empty. Screenshots go to the test's folder and are copied to
LIFTPLACE_WEB_SHOTS (default: `web-shots` in the system's temporary folder) for people to look at.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI

CHROMIUM = os.environ.get("LIFTPLACE_CHROMIUM", "/usr/bin/chromium")  # Debian's package (scripts/test.sh installs it)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu"]
LOCAL_HOSTS = {"127.0.0.1"}
SHOTS_DIR = Path(os.environ.get("LIFTPLACE_WEB_SHOTS") or Path(tempfile.gettempdir()) / "web-shots")


class LiveServer:
    """`with LiveServer(app) as server:` the app on http://127.0.0.1:<free port> until the block ends."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="liftplace-web-test-server")

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()


class RequestGuard:
    """Aborts and records every request of a browser context that is not for 127.0.0.1."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.refused: list[str] = []

    def attach(self, context: Any) -> None:
        def route(route: Any) -> None:
            url = route.request.url
            self.seen.append(url)
            host = urlsplit(url).hostname
            if urlsplit(url).scheme in ("data", "blob") or host in LOCAL_HOSTS:
                route.continue_()
            else:
                self.refused.append(url)
                route.abort()

        context.route("**/*", route)
        context.on("request", lambda request: self._check(request.url))

    def _check(self, url: str) -> None:
        scheme = urlsplit(url).scheme
        if scheme not in ("data", "blob") and urlsplit(url).hostname not in LOCAL_HOSTS and url not in self.refused:
            self.refused.append(url)


class Shots:
    """Full-page screenshots named by the test, in `folder` and copied to SHOTS_DIR."""

    def __init__(self, folder: Path, prefix: str) -> None:
        self.folder = folder
        self.prefix = prefix
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, page: Any, name: str) -> Path:
        path = self.folder / f"{self.prefix}-{name}.png"
        page.evaluate("window.scrollTo(0, 0)")  # sticky headers are drawn where the viewport is
        page.screenshot(path=str(path), full_page=True)
        try:
            SHOTS_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, SHOTS_DIR / path.name)
        except OSError:
            pass  # a copy for people to look at; the test's own folder has the file anyway
        return path
