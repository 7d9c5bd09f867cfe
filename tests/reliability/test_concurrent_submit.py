"""Concurrent clients against a real server (uvicorn on loopback), on SQLite and PostgreSQL.

Hundreds of POSTs from tens of threads: every job is stored exactly once; concurrent twins
with one Idempotency-Key make one job; concurrent studies with one name make one study (409
for the others, never a 500); reads never wait for a writer. The dispatcher is off: nothing
runs, only the queue is tested.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from sqlalchemy import func, select, update

from server.idempotency import HEADER, REPLAY_HEADER
from server.models import IdempotencyKey, Job, Study
from tests.server.server_testkit import Harness

CLIENTS = 24
POSTS_PER_CLIENT = 21  # 504 jobs in all
TWINS = 4  # clients sending the same Idempotency-Key at the same moment
ROUNDS = 5


def _run_clients(url: str, n: int, work: Callable[[httpx.Client, int], Any]) -> list[Any]:
    """`work(client, i)` in n threads at once (each with its own connection); their results, in order."""
    with ThreadPoolExecutor(max_workers=n) as pool:
        def run(i: int) -> Any:
            with httpx.Client(base_url=url, timeout=60.0) as client:
                return work(client, i)

        return [f.result(timeout=120) for f in [pool.submit(run, i) for i in range(n)]]


def _count(h: Harness, model: type, *where: Any) -> int:
    with h.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def test_hundreds_of_concurrent_submissions_are_each_stored_once(make_harness, serve) -> None:
    with make_harness() as h, serve(h.app) as url:
        start = threading.Barrier(CLIENTS)

        def submit_many(client: httpx.Client, i: int) -> list[tuple[int, int, int]]:
            start.wait(timeout=30)
            out = []
            for k in range(POSTS_PER_CLIENT):
                seed = i * 1000 + k  # unique per POST: tells which request each stored job came from
                r = client.post("/api/jobs", json={"teacher": "t-small", "seed": seed, "steps": 5})
                out.append((seed, r.status_code, r.json().get("id")))
            return out

        answers = [a for per_client in _run_clients(url, CLIENTS, submit_many) for a in per_client]
        expected = {i * 1000 + k for i in range(CLIENTS) for k in range(POSTS_PER_CLIENT)}
        assert len(answers) == len(expected) >= 500
        assert Counter(status for _, status, _ in answers) == {201: len(expected)}
        assert len({job_id for _, _, job_id in answers}) == len(expected)  # distinct ids
        with h.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
            stored = Counter(session.scalars(select(Job.seed)))
        assert set(stored) == expected and set(stored.values()) == {1}  # each request stored exactly once
        listed = httpx.get(f"{url}/api/jobs", params={"limit": 1}).json()
        assert listed["total"] == len(expected)


def test_concurrent_retries_with_one_idempotency_key_make_one_job(make_harness, serve) -> None:
    keys_per_round = CLIENTS // TWINS
    with make_harness() as h, serve(h.app) as url:
        barrier = threading.Barrier(CLIENTS)

        def retry_together(client: httpx.Client, i: int) -> list[tuple[str, int, int, bool]]:
            out = []
            for rnd in range(ROUNDS):
                key = f"round{rnd}-key{i % keys_per_round}"
                barrier.wait(timeout=30)  # the TWINS clients of each key send it at the same moment
                r = client.post("/api/jobs", json={"teacher": "t-small", "seed": rnd, "steps": 5},
                                headers={HEADER: key})
                out.append((key, r.status_code, r.json().get("id"), r.headers.get(REPLAY_HEADER) == "true"))
            return out

        answers = [a for per_client in _run_clients(url, CLIENTS, retry_together) for a in per_client]
        by_key: dict[str, list[tuple[int, int, bool]]] = {}
        for key, status, job_id, replayed in answers:
            by_key.setdefault(key, []).append((status, job_id, replayed))
        assert len(by_key) == ROUNDS * keys_per_round
        for key, got in by_key.items():
            assert len(got) == TWINS and {status for status, _, _ in got} == {201}, (key, got)
            assert len({job_id for _, job_id, _ in got}) == 1, (key, got)  # one job, the same for every twin
            assert sum(not replayed for _, _, replayed in got) == 1, (key, got)  # created once, replayed after
        assert _count(h, Job) == len(by_key)
        assert _count(h, IdempotencyKey) == len(by_key)


def test_concurrent_studies_with_one_name_make_one_study(make_harness, serve) -> None:
    body = {"name": "race", "teachers": ["t-small", "t-large"], "methods": ["outkd", "lift+place+featkd"],
            "seeds": 3, "steps": 5}
    n = 8
    with make_harness() as h, serve(h.app) as url:
        barrier = threading.Barrier(n)

        def create(client: httpx.Client, i: int) -> tuple[int, Any]:
            barrier.wait(timeout=30)
            r = client.post("/api/studies", json=body)
            return r.status_code, r.json()

        answers = _run_clients(url, n, create)
        assert sorted(status for status, _ in answers) == [201] + [409] * (n - 1), answers
        assert all("name" in detail["detail"] for status, detail in answers if status == 409)
        assert _count(h, Study) == 1
        assert _count(h, Job) == 2 * 2 * 3  # the one study's jobs, once


def test_reads_do_not_wait_for_a_writer(make_harness) -> None:
    """A GET answers while another transaction holds the write lock (SQLite) or row locks (PostgreSQL).

    On SQLite every transaction used to take the write lock up front, so the API's reads queued
    behind the dispatcher and behind each other (seconds at the tail under load); now a GET's
    transaction is read-only and takes none.
    """
    with make_harness() as h:
        job = h.submit()
        with h.app.state.engine.connect() as writer:  # type: ignore[attr-defined]
            writer.begin()
            writer.execute(update(Job).values(reason="a long write in progress"))
            started = time.perf_counter()
            r = h.client.get("/api/jobs")
            waited = time.perf_counter() - started
            assert r.status_code == 200 and r.json()["items"][0]["id"] == job["id"]
            assert r.json()["items"][0]["reason"] == ""  # the writer's change is not visible before its commit
            assert waited < 5.0, f"the read waited {waited:.1f} s for the writer (busy timeout 30 s)"
            writer.rollback()
