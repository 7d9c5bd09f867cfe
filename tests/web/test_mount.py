"""The browser UI is composed with the API by the entry points: `create_app` alone serves the API,
`create_app(..., ui=web.install)` adds the pages and static files, and `liftplace serve` does so."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from server.app import create_app
from server.executors import ThreadExecutor
from server.settings import Settings
from tests.server.server_testkit import FakeRunner
from web import PLOTLY_JS_URL, install
from web.pages import router as pages

PAGE_PATHS = {route.path for route in pages.routes if isinstance(route, APIRoute)}


def _app(tmp_path: Path, **kwargs: Any) -> FastAPI:
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'mount.db'}", dispatch=False)
    return create_app(settings, ThreadExecutor(FakeRunner()), tracking=False, **kwargs)


def _paths(app: FastAPI) -> set[str]:
    """The paths of every route and mount of `app`, included routers too."""
    return {route.path for route in iter_route_contexts(app.routes) if route.path}


def test_the_api_alone_serves_no_pages(tmp_path: Path) -> None:
    app = _app(tmp_path)
    assert {"/queue", "/login", "/"} <= PAGE_PATHS
    assert not _paths(app) & (PAGE_PATHS | {"/static", PLOTLY_JS_URL})
    with TestClient(app) as c:
        assert c.get("/api/jobs").status_code == 200
        for path in ("/queue", "/login", "/static/app.js", PLOTLY_JS_URL):
            assert c.get(path).status_code == 404, path
        assert c.get("/", follow_redirects=False).status_code == 404


def test_the_ui_adds_its_pages_and_static_files(tmp_path: Path) -> None:
    app = _app(tmp_path, ui=install)
    assert PAGE_PATHS | {"/static", PLOTLY_JS_URL} <= _paths(app)
    with TestClient(app) as c:
        assert c.get("/api/jobs").status_code == 200
        queue = c.get("/queue")
        assert queue.status_code == 200 and queue.headers["content-type"].startswith("text/html")
        assert c.get("/static/app.js").status_code == 200
        assert c.get("/", follow_redirects=False).headers["location"] == "/queue"


def test_liftplace_serve_serves_the_ui(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`_cmd_serve` builds the app with the UI (uvicorn replaced by a recorder; no Ray started)."""
    import uvicorn

    from server.cli import _cmd_serve

    for var in ("LIFTPLACE_HOST", "LIFTPLACE_API_TOKEN", "LIFTPLACE_PORT", "DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "ray.test:6379")  # not embedded: no Ray is started
    served: list[FastAPI] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))
    _cmd_serve(argparse.Namespace(host=None, port=None, data_dir=tmp_path, log_level="warning"))
    assert len(served) == 1
    assert PAGE_PATHS | {"/static"} <= _paths(served[0])
    assert "/api/jobs" in _paths(served[0])
