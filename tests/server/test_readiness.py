"""GET /api/ready: 200 when the database, the dispatcher and the executor work; 503 with the reason for each failure.

The dispatcher runs its own thread here (LIFTPLACE_DISPATCH=true) where the test is about it; a real local
Ray backs the Ray cases (its node's versions, and a stand-in API version that differs from them).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from server.executors import RayExecutor, ThreadExecutor
from server.services.readiness import BoundedCheck, Readiness
from tests.server.conftest import empty_database
from tests.server.server_testkit import FakeRunner, Harness


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database is one dependency among three here: SQLite only (overrides the two-backend fixture)."""
    return empty_database("sqlite", request, tmp_path)


def ready(h: Harness, expect: int) -> dict[str, Any]:
    r = h.client.get("/api/ready")
    assert r.status_code == expect, r.text
    body = r.json()
    assert body["ready"] is (expect == 200) and bool(body["reasons"]) is (expect != 200)
    return body


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_ready_when_everything_answers_and_status_stays_cheap(make_harness) -> None:
    with make_harness(dispatch=True, poll_interval=0.05) as h:
        wait_for(lambda: h.dispatcher.started, "the dispatcher started its executor")
        body = ready(h, 200)
        assert body["checks"]["database"] == "ok" and body["checks"]["dispatcher"] == "ok"
        assert body["checks"]["executor"]["description"].startswith("in-process executor")
        # /api/status does not run the checks: no database, no executor call
        assert set(h.client.get("/api/status").json()) == {"dispatcher", "executor", "mlflow_ui_url", "limits"}


def test_an_api_without_a_dispatcher_is_ready_on_its_database(make_harness) -> None:
    with make_harness() as h:  # LIFTPLACE_DISPATCH=false: the API only queues
        body = ready(h, 200)
        assert body["checks"]["dispatcher"].startswith("off") and body["checks"]["executor"] == "not started"


def test_a_dead_dispatcher_thread_is_not_ready(make_harness) -> None:
    with make_harness(dispatch=True, poll_interval=0.05) as h:
        wait_for(lambda: h.dispatcher.started, "the dispatcher started")
        h.dispatcher.stop()
        assert "the dispatcher thread is not running" in ready(h, 503)["reasons"][0]


class StuckExecutor(ThreadExecutor):
    """A backend whose calls hang once `hang` is set (a round that never ends)."""

    def __init__(self) -> None:
        super().__init__(FakeRunner())
        self.hang = threading.Event()
        self.release = threading.Event()

    def finished(self):
        if self.hang.is_set():
            self.release.wait(60)
        return super().finished()


def test_a_stuck_dispatcher_is_not_ready(make_harness) -> None:
    executor = StuckExecutor()
    with make_harness(executor=executor, dispatch=True, poll_interval=0.05, dispatcher_stall_s=0.5) as h:
        wait_for(lambda: h.dispatcher.started, "the dispatcher started")
        ready(h, 200)
        executor.hang.set()
        time.sleep(1.0)
        try:
            (reason,) = ready(h, 503)["reasons"]
            assert reason.startswith("the dispatcher is stuck: no round has ended for")
            assert "LIFTPLACE_DISPATCHER_STALL_S=0.5" in reason
        finally:
            executor.release.set()
        wait_for(lambda: h.client.get("/api/ready").status_code == 200, "ready again once the round ends")


class UnstartableExecutor(ThreadExecutor):
    def start(self) -> str:
        raise ConnectionError("could not reach Ray at 10.0.0.1:6380")


def test_an_executor_that_does_not_start_is_not_ready(make_harness) -> None:
    with make_harness(executor=UnstartableExecutor(FakeRunner()), dispatch=True, poll_interval=0.05) as h:
        wait_for(lambda: h.dispatcher.error is not None, "the dispatcher tried to start its executor")
        (reason,) = ready(h, 503)["reasons"]
        assert reason == "the dispatcher has not started its executor yet: ConnectionError: could not reach Ray at " \
                         "10.0.0.1:6380"


class BrokenExecutor(ThreadExecutor):
    def health(self) -> dict[str, Any]:
        raise ConnectionError("GCS at 10.0.0.1:6380 does not answer")


def test_a_broken_executor_is_not_ready(make_harness) -> None:
    with make_harness(executor=BrokenExecutor(FakeRunner())) as h:
        h.tick()
        (reason,) = ready(h, 503)["reasons"]
        assert reason == "the executor (in-process executor (2 threads)) is broken: ConnectionError: GCS at " \
                         "10.0.0.1:6380 does not answer"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A 127.0.0.1 port that accepts connections and never answers (a database host that hangs)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield server.getsockname()[1]
    stop.set()
    t.join()
    for s in accepted:
        s.close()
    server.close()


def test_an_unreachable_or_hanging_database_is_not_ready(harness: Harness, silent_port: int) -> None:
    app = harness.app
    with socket.create_server(("127.0.0.1", 0)) as s:
        closed = s.getsockname()[1]  # nothing listens once the block ends
    refused = create_engine(f"postgresql+psycopg://liftplace@127.0.0.1:{closed}/liftplace")
    answer = Readiness(harness.settings, refused, app.state.dispatcher, app.state.executor).check()
    assert not answer.ready and answer.reasons[0].startswith("the database does not answer: OperationalError")
    hanging = create_engine(f"postgresql+psycopg://liftplace@127.0.0.1:{silent_port}/liftplace")
    readiness = Readiness(harness.settings, hanging, app.state.dispatcher, app.state.executor, timeout_s=0.5)
    assert readiness.check().reasons == ["the database does not answer: no answer within 0.5s"]
    second = readiness.check().reasons[0]
    assert second.startswith("the database does not answer: the previous database check has not returned for")
    refused.dispose()


def test_a_bounded_check_runs_one_at_a_time_and_reports_exceptions() -> None:
    check = BoundedCheck("x", timeout_s=0.2)
    gate = threading.Event()
    assert check(gate.wait) == (False, "no answer within 0.2s")
    assert check(lambda: 1)[1].startswith("the previous x check has not returned for")
    gate.set()
    wait_for(lambda: check(lambda: 1) == (True, 1), "the hung check ended")
    assert check(lambda: 1 / 0) == (False, "ZeroDivisionError: division by zero")


def test_ray_connected_and_every_node_on_our_versions_is_ready(make_harness, local_ray: str) -> None:
    import platform

    import ray

    with make_harness(executor=RayExecutor(None, cpus_per_job=1, gpus_per_job=0)) as h:
        h.tick()
        executor = ready(h, 200)["checks"]["executor"]
        assert executor["nodes"] == len([n for n in ray.nodes() if n["Alive"]]) >= 1
        assert (executor["ray_version"], executor["python_version"]) == (ray.__version__, platform.python_version())
        assert executor["version_mismatches"] == [] and executor["versions_unknown"] == []


def test_a_node_on_other_versions_is_not_ready_and_named(make_harness, local_ray: str) -> None:
    import ray

    from worker.cluster import NodeVersionCheck

    executor = RayExecutor(None, cpus_per_job=1, gpus_per_job=0)
    with make_harness(executor=executor) as h:
        h.tick()
        executor.versions = NodeVersionCheck(ours=(ray.__version__, "3.11.0"))  # stands in for an API on 3.11.0
        body = ready(h, 503)
        (reason,) = body["reasons"]
        node_id = ray.get_runtime_context().get_node_id()
        assert reason.startswith("1 Ray node(s) run another Ray or Python version than this API: ")
        assert f"node {node_id[:12]} at 127.0.0.1 runs Ray {ray.__version__}" in reason and "Python 3.11.0" in reason
        (node,) = body["checks"]["executor"]["version_mismatches"]
        assert node["node_id"] == node_id and node["python"] != "3.11.0"


def test_a_ray_executor_that_is_not_connected_is_broken() -> None:
    with pytest.raises(RuntimeError, match=r"not connected to Ray \(RAY_ADDRESS=10.0.0.1:6380\)"):
        RayExecutor("10.0.0.1:6380").health()
