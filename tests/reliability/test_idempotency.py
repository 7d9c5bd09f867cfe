"""Idempotency-Key on the creating POSTs (jobs, studies, teachers), on SQLite and PostgreSQL.

The same key with the same body returns the original resource and creates nothing; with
another body it is a 422 naming the header; keys are per endpoint, expire, and a request
that failed does not use its key up. (Concurrent twins: test_concurrent_submit.py.)
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select, update

from server.idempotency import HEADER, MAX_KEY_LENGTH, REPLAY_HEADER
from server.models import IdempotencyKey, Job, Study, Teacher
from tests.server.server_testkit import Harness, make_local_teacher

JOB = {"teacher": "t-small", "method": "lift+place+featkd", "seed": 1, "steps": 5}
STUDY = {"name": "s1", "teachers": ["t-small"], "methods": ["outkd", "lift"], "seeds": 2, "steps": 5}


def _count(h: Harness, model: type) -> int:
    with h.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        return session.scalar(select(func.count()).select_from(model)) or 0


def _post(h: Harness, url: str, body: dict[str, Any], key: str | None) -> Any:
    return h.client.post(url, json=body, headers={HEADER: key} if key is not None else {})


@pytest.mark.parametrize(("url", "body", "model", "created"), [
    ("/api/jobs", JOB, Job, 1),
    ("/api/studies", STUDY, Study, 1),
    ("/api/teachers", {"source": "preset", "name": "fresh", "preset": "tiny", "steps": 5}, Teacher, 1),
])
def test_a_retry_with_the_same_key_returns_the_original(harness: Harness, url: str, body: dict[str, Any],
                                                        model: type, created: int) -> None:
    before, jobs_before = _count(harness, model), _count(harness, Job)
    first = _post(harness, url, body, "k-1")
    assert first.status_code == 201, first.text
    assert REPLAY_HEADER not in first.headers
    jobs_made = _count(harness, Job) - jobs_before
    # the same request again, spelt differently (key order): the same answer, nothing new
    again = _post(harness, url, dict(reversed(list(body.items()))), "k-1")
    assert again.status_code == 201 and again.headers[REPLAY_HEADER] == "true"
    assert again.json() == first.json()
    assert _count(harness, model) == before + created
    assert _count(harness, Job) == jobs_before + jobs_made
    # without a key, or with another one, it is a new request (the name-unique ones then conflict)
    other = _post(harness, url, body, "k-2")
    assert other.status_code in (201, 409), other.text
    if other.status_code == 201:
        assert other.json()["id"] != first.json()["id"]


def test_the_same_key_with_another_body_is_refused_naming_the_header(harness: Harness) -> None:
    first = _post(harness, "/api/jobs", JOB, "k")
    assert first.status_code == 201
    r = _post(harness, "/api/jobs", {**JOB, "seed": 2}, "k")
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["header", HEADER]
    assert HEADER in error["msg"] and "another request body" in error["msg"]
    assert f"#{first.json()['id']}" in error["msg"]
    assert _count(harness, Job) == 1


def test_keys_are_per_endpoint(harness: Harness) -> None:
    assert _post(harness, "/api/jobs", JOB, "shared").status_code == 201
    assert _post(harness, "/api/studies", STUDY, "shared").status_code == 201
    assert (_count(harness, Job), _count(harness, Study)) == (1 + 2 * 2, 1)


def test_a_failed_request_does_not_use_its_key_up(harness: Harness) -> None:
    r = _post(harness, "/api/jobs", {**JOB, "teacher": "not-yet"}, "k")
    assert r.status_code == 422 and "unknown teacher" in r.text
    assert _count(harness, IdempotencyKey) == 0  # rolled back with the request
    make_local_teacher(harness.settings.teachers_dir, "not-yet")
    assert harness.client.post("/api/teachers", json={"source": "local", "name": "not-yet"}).status_code == 201
    r = _post(harness, "/api/jobs", {**JOB, "teacher": "not-yet"}, "k")
    assert r.status_code == 201 and REPLAY_HEADER not in r.headers


def test_keys_expire(make_harness) -> None:
    with make_harness(idempotency_hours=1.0) as h:
        first = _post(h, "/api/jobs", JOB, "k").json()
        assert _post(h, "/api/jobs", JOB, "k").json()["id"] == first["id"]
        with h.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
            session.execute(update(IdempotencyKey).values(
                created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1, minutes=1)))
            session.commit()
        later = _post(h, "/api/jobs", JOB, "k")
        assert later.status_code == 201 and REPLAY_HEADER not in later.headers
        assert later.json()["id"] != first["id"]
        assert _count(h, IdempotencyKey) == 1  # the expired row was purged, the new one kept


@pytest.mark.parametrize("key", ["", "a" * (MAX_KEY_LENGTH + 1), "two words", "caf\u00e9", "tab\there"])
def test_malformed_keys_are_refused_naming_the_header(harness: Harness, key: str) -> None:
    r = harness.client.post("/api/jobs", json=JOB, headers={HEADER: key.encode()})
    assert r.status_code == 422, r.text
    assert any(e["loc"] == ["header", HEADER] for e in r.json()["detail"]), r.json()
    assert _count(harness, Job) == 0


def test_a_replay_is_the_answer_of_the_time_even_after_the_job_moved_on(harness: Harness) -> None:
    first = _post(harness, "/api/jobs", JOB, "k").json()
    assert harness.client.post(f"/api/jobs/{first['id']}/cancel").json()["status"] == "cancelled"
    again = _post(harness, "/api/jobs", JOB, "k")
    assert again.json() == first  # the stored answer, as a retry of the lost response expects
    assert harness.job(first["id"])["status"] == "cancelled"  # the resource itself is read with GET
