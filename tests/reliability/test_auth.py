"""Authentication with LIFTPLACE_API_TOKEN: every write needs it, reads when LIFTPLACE_AUTH_READS.

The routes are enumerated from the app itself, so a new write endpoint or page is covered
without being listed here. Also: the login cookie (HttpOnly, SameSite=Strict, Secure over
https), logout, the status endpoint, and `liftplace serve` binding 127.0.0.1 by default and
warning when it binds another address without a token.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from pydantic import SecretStr
from sqlalchemy import func, select

from server.auth import AUTH_COOKIE, cookie_value
from server.models import Job, Study, Teacher
from tests.server.conftest import empty_database, open_harness
from tests.server.server_testkit import Harness, make_local_teacher
from web import install

TOKEN = "s3cret-token-for-tests"
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# Open whatever the settings: signing in and out, the auth state, the health check, the schema and docs.
ALWAYS_OPEN = {"/api/auth/login", "/api/auth/logout", "/api/auth/status", "/api/status", "/api/ready", "/openapi.json",
               "/docs", "/docs/oauth2-redirect", "/redoc", "/login"}
STATIC = ("/static",)  # our JS/CSS and plotly.min.js: code, no data


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Auth does not depend on the database: SQLite only (overrides the two-backend fixture)."""
    return empty_database("sqlite", request, tmp_path)


@pytest.fixture
def make_harness(db_url: str, tmp_path: Path) -> Iterator[Callable[..., contextlib.AbstractContextManager[Harness]]]:
    """The app with its browser UI: the pages' authentication is checked with the API's."""
    yield functools.partial(open_harness, db_url, tmp_path, ui=install)


def routes(app: Any) -> Iterator[tuple[str, str]]:
    """(method, path with every path parameter set to 1) of every HTTP route of the app, included routers too."""
    for route in iter_route_contexts(app.routes):
        path, methods = route.path, route.methods
        if path is None or methods is None or path in ALWAYS_OPEN or path.startswith(STATIC):
            continue  # a mount (static files), or open by design
        for method in sorted(methods):
            if method != "HEAD":
                yield method, re.sub(r"\{[^}]+\}", "1", path)


def writes(app: Any) -> list[tuple[str, str]]:
    return [(m, p) for m, p in routes(app) if m in WRITE_METHODS]


def reads(app: Any) -> list[tuple[str, str]]:
    return [(m, p) for m, p in routes(app) if m == "GET"]


def _counts(h: Harness) -> tuple[int, ...]:
    with h.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        return tuple(session.scalar(select(func.count()).select_from(m)) or 0 for m in (Job, Study, Teacher))


def _assert_401(r: Any, what: str) -> None:
    assert r.status_code == 401, (what, r.status_code, r.text[:300])
    assert r.headers["www-authenticate"] == "Bearer"
    detail = r.json()["detail"]
    assert "LIFTPLACE_API_TOKEN" in detail and "Bearer" in detail, detail


def test_the_enumeration_finds_the_api(make_harness) -> None:
    with make_harness() as h:
        assert {("POST", "/api/jobs"), ("POST", "/api/studies"), ("POST", "/api/teachers"), ("POST", "/api/datasets"),
                ("POST", "/api/jobs/1/cancel"), ("POST", "/api/jobs/1/retry"),
                ("POST", "/api/studies/1/cancel")} <= set(writes(h.app))
        assert {("GET", "/api/jobs"), ("GET", "/api/jobs/1"), ("GET", "/api/studies/1/table")} <= set(reads(h.app))


def test_without_a_token_nothing_is_asked(make_harness) -> None:
    with make_harness() as h:
        assert h.client.get("/api/auth/status").json() == {"writes_need_token": False, "reads_need_token": False,
                                                           "authenticated": False}
        assert h.submit()["status"] == "queued"
        r = h.client.post("/api/auth/login", json={"token": "anything"})
        assert r.status_code == 200 and AUTH_COOKIE not in r.cookies  # nothing to sign in to


def test_every_write_needs_the_token(make_harness) -> None:
    with make_harness(teachers=()) as h:
        make_local_teacher(h.settings.teachers_dir, "t-small")
        h.settings.api_token = None  # register the teacher first, then turn authentication on
        assert h.client.post("/api/teachers", json={"source": "local", "name": "t-small"}).status_code == 201
        job = h.submit()
        h.settings.api_token = SecretStr(TOKEN)
        before = _counts(h)
        for method, path in writes(h.app):
            _assert_401(h.client.request(method, path, json={}), f"{method} {path} without a token")
            _assert_401(h.client.request(method, path, json={}, headers={"Authorization": "Bearer wrong"}),
                        f"{method} {path} with a wrong token")
            _assert_401(h.client.request(method, path, json={}, headers={"Authorization": f"Basic {TOKEN}"}),
                        f"{method} {path} with another scheme")
        assert _counts(h) == before  # nothing stored
        assert h.job(job["id"])["status"] == "queued"  # nothing cancelled
        h.tick()
        assert [s.job_id for s in h.runner.specs] == [job["id"]]  # nothing but the job queued before ran
        # with the token, the same requests reach the endpoints (which judge the bodies on their own)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for method, path in writes(h.app):
            assert h.client.request(method, path, json={}, headers=bearer).status_code != 401, (method, path)
        created = h.client.post("/api/jobs", json={"teacher": "t-small", "seed": 9}, headers=bearer)
        assert created.status_code == 201, created.text
        # reads stay open unless asked
        for _, path in reads(h.app):
            assert h.client.get(path).status_code != 401, path


def test_reads_need_the_token_when_asked(make_harness) -> None:
    with make_harness(api_token=TOKEN, auth_reads=True, teachers=()) as h:
        assert h.client.get("/api/auth/status").json() == {"writes_need_token": True, "reads_need_token": True,
                                                           "authenticated": False}
        for _, path in reads(h.app):
            r = h.client.get(path, follow_redirects=True)
            if path.startswith("/api/"):
                _assert_401(r, f"GET {path}")
            else:  # a page sends the browser to sign in, and shows nothing
                assert r.url.path == "/login" and r.history, (path, r.status_code, r.url)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for _, path in reads(h.app):
            assert h.client.get(path, headers=bearer).status_code != 401, path
        assert h.client.get("/api/status").status_code == 200  # the health check stays open
        assert h.client.get("/api/ready").status_code == 200  # and so does the readiness check


def test_login_sets_an_http_only_strict_cookie_that_authenticates(make_harness) -> None:
    with make_harness(api_token=TOKEN, teachers=()) as h:
        c = h.client
        r = c.post("/api/auth/login", json={"token": "wrong"})
        assert r.status_code == 401 and "wrong API token" in r.json()["detail"] and AUTH_COOKIE not in c.cookies
        assert c.post("/api/auth/login", json={}).status_code == 422
        r = c.post("/api/auth/login", json={"token": TOKEN})
        assert r.status_code == 200 and r.json()["authenticated"] is True
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"{AUTH_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "Secure" not in cookie  # plain http here
        assert TOKEN not in cookie  # the cookie is derived from the token, not the token
        assert c.get("/api/auth/status").json()["authenticated"] is True
        assert c.post("/api/jobs", json={"teacher": "nobody"}).status_code == 422  # past auth, judged on its body
        r = c.post("/api/auth/logout")
        assert r.status_code == 200 and r.json()["authenticated"] is False and "Max-Age=0" in r.headers["set-cookie"]
        assert c.post("/api/jobs", json={"teacher": "nobody"}).status_code == 401


def test_forged_cookies_do_not_authenticate(make_harness) -> None:
    with make_harness(api_token=TOKEN, teachers=()) as h:
        for value in (TOKEN, cookie_value("another-token"), "", cookie_value(TOKEN)[:-1]):
            h.client.cookies.set(AUTH_COOKIE, value)
            _assert_401(h.client.post("/api/jobs", json={}), f"cookie {value!r}")
        h.client.cookies.set(AUTH_COOKIE, cookie_value(TOKEN))
        assert h.client.post("/api/jobs", json={}).status_code == 422


def test_the_cookie_is_secure_over_https(make_harness) -> None:
    with make_harness(api_token=TOKEN, teachers=()) as h:
        h.client.base_url = "https://testserver"  # type: ignore[assignment]
        r = h.client.post("/api/auth/login", json={"token": TOKEN})
        assert r.status_code == 200 and "Secure" in r.headers["set-cookie"]


def test_an_empty_token_means_no_authentication(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from server.settings import Settings

    monkeypatch.setenv("LIFTPLACE_API_TOKEN", "")
    assert Settings(data_dir=tmp_path).api_token is None
    monkeypatch.setenv("LIFTPLACE_API_TOKEN", TOKEN)
    monkeypatch.setenv("LIFTPLACE_AUTH_READS", "true")
    s = Settings(data_dir=tmp_path)
    assert s.api_token is not None and s.api_token.get_secret_value() == TOKEN and s.reads_need_token
    assert TOKEN not in repr(s)  # a SecretStr: never in logs or tracebacks


# --- liftplace serve -------------------------------------------------------------------------------


@pytest.fixture
def fake_serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[dict[str, Any]]]:
    """`_cmd_serve` with uvicorn, the app and Ray replaced by recorders; yields the uvicorn.run calls."""
    import uvicorn

    import server.app

    for var in ("LIFTPLACE_HOST", "LIFTPLACE_API_TOKEN", "LIFTPLACE_PORT", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "ray.test:6379")  # not embedded: no Ray is started
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.setattr(server.app, "create_app", lambda settings, **kwargs: object())
    yield calls


def _serve(tmp_path: Path, host: str | None) -> None:
    from server.cli import _cmd_serve

    _cmd_serve(argparse.Namespace(host=host, port=None, data_dir=tmp_path, log_level="warning"))


def test_serve_binds_loopback_by_default_and_warns_on_other_addresses_without_a_token(
        fake_serve: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(tmp_path, None)
    assert fake_serve[-1]["host"] == "127.0.0.1"
    assert "WARNING" not in capsys.readouterr().err
    for host in ("0.0.0.0", "::", "192.0.2.7", "lab-host"):
        _serve(tmp_path, host)
        assert fake_serve[-1]["host"] == host
        err = capsys.readouterr().err
        assert "WARNING" in err and "LIFTPLACE_API_TOKEN" in err and host in err, (host, err)
    for host in ("localhost", "127.0.0.2", "::1"):
        _serve(tmp_path, host)
        assert "WARNING" not in capsys.readouterr().err, host
    monkeypatch.setenv("LIFTPLACE_API_TOKEN", TOKEN)
    _serve(tmp_path, "0.0.0.0")
    assert "WARNING" not in capsys.readouterr().err
