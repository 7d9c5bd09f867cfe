"""Property-based fuzzing of the API from its own OpenAPI schema (schemathesis), on SQLite and PostgreSQL.

Every operation of the schema gets valid and invalid requests (schemathesis' positive and
negative modes) against a live server on loopback; every answer must be other than a 5xx,
and every 4xx must carry a readable `detail` (a message, or FastAPI's list of errors each
with a message). Bounded and reproducible: a few examples per operation, derandomized, no
example database, a generous per-example deadline (the machine is shared).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from server.app import create_app
from server.executors import ThreadExecutor
from server.settings import Settings
from tests.reliability.conftest import live_server
from tests.server.conftest import empty_database, open_harness
from tests.server.server_testkit import FakeRunner, Harness

MAX_EXAMPLES = 10  # per operation and backend
DEADLINE_MS = 5000  # per example; a bound against hangs, not a performance test


def _openapi() -> dict[str, Any]:
    """The schema the app serves (from an app that is built, never started)."""
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings(data_dir=Path(tmp), database_url="sqlite://", dispatch=False),
                         ThreadExecutor(FakeRunner(), max_workers=1), tracking=False)
        return app.openapi()


schema = schemathesis.openapi.from_dict(_openapi())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES,
                                database="none")


def readable_4xx(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """A 4xx answers JSON with a non-empty `detail`: a message, or a list of errors each with a message."""
    if not 400 <= response.status_code < 500:
        return None
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{response.status_code} without a JSON body: {response.text[:200]!r}") from None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        assert detail.strip(), f"{response.status_code} with an empty detail"
    else:
        assert isinstance(detail, list) and detail, f"{response.status_code} without a detail: {body!r}"
        for error in detail:
            assert isinstance(error, dict) and isinstance(error.get("msg"), str) and error["msg"].strip(), \
                f"{response.status_code}: an error without a message: {error!r}"
    return True


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One live app per backend for every operation: two teachers, a job and a study (ids 1.. exist); its URL.

    Module-scoped: the fuzzed requests pile up in it as they would in a real server.
    """
    root = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    with open_harness(empty_database(request.param, request, root), root) as h, live_server(h.app) as url:
        _seed(h)
        yield url


def _seed(h: Harness) -> None:
    h.submit(teacher="t-small", seed=0, steps=5)
    r = h.client.post("/api/studies", json={"name": "fuzz", "teachers": ["t-small"], "methods": ["outkd"], "seeds": 2,
                                            "steps": 5})
    assert r.status_code == 201, r.text


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=DEADLINE_MS, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_readable_client_errors(case: schemathesis.Case, api: str) -> None:
    case.call_and_validate(base_url=api, checks=[not_a_server_error, readable_4xx], timeout=30)
