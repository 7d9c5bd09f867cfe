"""The dispatcher on SQLite and PostgreSQL: restart safety, exclusive claims, its thread, lost tasks."""

from __future__ import annotations

import threading
import time
from typing import Any

from server.dispatcher import Dispatcher
from server.executors import Finished, ThreadExecutor
from tests.server.server_testkit import FakeRunner, Harness


def test_a_restart_loses_no_job_and_leaves_none_running(make_harness) -> None:
    first = FakeRunner()
    first.hold.set()
    with make_harness(runner=first) as h:
        running = h.submit(seed=0)["id"]
        cancelling = h.submit(seed=1)["id"]
        h.tick_until(lambda: h.job(running)["status"] == h.job(cancelling)["status"] == "running", what="2 running")
        assert h.client.post(f"/api/jobs/{cancelling}/cancel").json()["cancel_requested"] is True
        queued = h.submit(seed=2)["id"]
    # The server is gone without recording anything (as after a crash); the database still says "running".
    second = FakeRunner()
    with make_harness(runner=second) as h:
        assert [h.job(i)["status"] for i in (running, cancelling, queued)] == ["running", "running", "queued"]
        h.tick()  # start-up recovery, then dispatch
        assert h.job(cancelling)["status"] == "cancelled"
        assert "server restarted" in h.job(cancelling)["reason"]
        done = h.wait_status(running, "succeeded")
        assert done["attempts"] == 2  # dispatched again; the worker resumes from its checkpoint
        assert h.wait_status(queued, "succeeded")["attempts"] == 1
        assert second.specs_of(running)[0].output_dir == first.specs_of(running)[0].output_dir
        assert not second.specs_of(cancelling)
        lines = h.client.get(f"/api/jobs/{running}/logs").json()["lines"]
        assert any("the server restarted while this job ran; requeued" in line for line in lines)
        assert h.client.get("/api/jobs", params={"status": "running"}).json()["total"] == 0


class HeldExecutor(ThreadExecutor):
    """Stands for a Ray cluster that kept running an earlier server's jobs: `held` {job_id: attempt}."""

    def __init__(self, held: dict[int, int]) -> None:
        super().__init__(FakeRunner(), max_workers=4)
        self.held = dict(held)
        self.discarded: list[int] = []
        self._ends: list[Finished] = []

    def attached(self) -> dict[int, int]:
        return dict(self.held)

    def active(self) -> set[int]:
        return super().active() | set(self.held)

    def discard(self, job_id: int) -> None:
        self.discarded.append(job_id)
        self.held.pop(job_id, None)

    def end(self, job_id: int, status: str, reason: str = "", **fields: Any) -> None:
        del self.held[job_id]
        self._ends.append(Finished(job_id, outcome={"job_id": job_id, "status": status, "reason": reason, **fields}))

    def cancel(self, job_id: int) -> None:
        if job_id in self.held:  # the held job stops at its next step
            self.end(job_id, "cancelled", "cancelled at step 3", steps_done=3)
        else:
            super().cancel(job_id)

    def finished(self) -> list[Finished]:
        ends, self._ends = self._ends, []
        return super().finished() + ends


def test_a_restart_re_attaches_to_jobs_the_executor_still_runs(make_harness) -> None:
    """Jobs an earlier server left running in the executor (a Ray cluster) are taken over, not requeued:
    same attempt, no new run, their end recorded once, a cancel still works; the rest is requeued as before."""
    first = FakeRunner()
    first.hold.set()
    with make_harness(runner=first, max_in_flight=3) as h:
        kept, cancelled, stale = (h.submit(seed=s)["id"] for s in range(3))
        queued = h.submit(seed=3)["id"]
        h.tick_until(lambda: all(h.job(i)["status"] == "running" for i in (kept, cancelled, stale)), what="3 running")
        assert h.job(queued)["status"] == "queued"
    # The server died; the cluster still runs `kept` and `cancelled` at attempt 1, an older attempt of `stale`
    # and, somehow, `queued`, which the database never dispatched.
    executor = HeldExecutor({kept: 1, cancelled: 1, stale: 7, queued: 1})
    with make_harness(executor=executor) as h:
        h.tick()  # start-up recovery, then dispatch
        assert sorted(executor.discarded) == sorted([stale, queued])  # stopped: not what the database expects
        for job_id in (kept, cancelled):
            job = h.job(job_id)
            assert job["status"] == "running" and job["attempts"] == 1, job
            lines = h.client.get(f"/api/jobs/{job_id}/logs").json()["lines"]
            assert any("re-attached to attempt 1, which kept running in Ray" in line for line in lines), lines
            assert not any("requeued" in line for line in lines), lines
        assert h.client.post(f"/api/jobs/{cancelled}/cancel").json()["cancel_requested"] is True
        executor.end(kept, "succeeded", fid=12.5, fid_metric="fid_digits", steps_done=30, mlflow_run_id="run-kept")
        done = h.wait_status(kept, "succeeded")
        assert done["attempts"] == 1 and done["fid"] == 12.5 and done["mlflow_run_id"] == "run-kept"
        stopped = h.wait_status(cancelled, "cancelled")
        assert stopped["attempts"] == 1 and stopped["reason"] == "cancelled at step 3"
        assert h.wait_status(stale, "succeeded")["attempts"] == 2  # requeued: its held attempt was not this one
        assert h.wait_status(queued, "succeeded")["attempts"] == 1
        assert not executor.runner.specs_of(kept) and not executor.runner.specs_of(cancelled)  # never run again
        lines = h.client.get(f"/api/jobs/{kept}/logs").json()["lines"]
        assert sum(line.endswith("[server] succeeded") for line in lines) == 1


def test_two_dispatchers_never_run_a_job_twice(harness: Harness) -> None:
    other_runner = FakeRunner()
    other = Dispatcher(harness.settings, harness.app.state.sessionmaker, ThreadExecutor(other_runner, max_workers=4),
                       recover_on_start=False)  # recovery assumes one dispatcher; this test is about claims
    ids = [harness.submit(seed=s)["id"] for s in range(16)]
    errors: list[BaseException] = []

    def rounds(d: Dispatcher) -> None:
        try:
            for _ in range(40):
                d.tick()
                time.sleep(0.005)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=rounds, args=(d,)) for d in (harness.dispatcher, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    harness.tick_until(lambda: all(harness.job(i)["status"] == "succeeded" for i in ids), what="all jobs")
    other.tick()
    ran = [s.job_id for s in harness.runner.specs] + [s.job_id for s in other_runner.specs]
    assert sorted(ran) == sorted(ids)  # each job ran exactly once, whichever dispatcher claimed it
    assert all(harness.job(i)["attempts"] == 1 for i in ids)
    other.executor.shutdown()


def test_the_dispatcher_thread_runs_jobs_on_its_own(make_harness) -> None:
    with make_harness(dispatch=True, poll_interval=0.05) as h:
        job = h.submit(seed=5)["id"]
        deadline = time.monotonic() + 20
        while h.job(job)["status"] != "succeeded":
            assert time.monotonic() < deadline, h.job(job)
            time.sleep(0.05)
        status = h.client.get("/api/status").json()
        assert status["dispatcher"]["running"] is True and status["dispatcher"]["error"] is None
        assert status["executor"].startswith("in-process executor")
    assert not h.dispatcher.running  # stopped with the app


class RefusingExecutor(ThreadExecutor):
    """Refuses its first submissions, as a Ray cluster that is unreachable for a while."""

    def __init__(self, runner: FakeRunner, refusals: int) -> None:
        super().__init__(runner)
        self.refusals = refusals

    def submit(self, spec) -> None:
        if self.refusals > 0:
            self.refusals -= 1
            raise ConnectionError("Ray is unreachable")
        super().submit(spec)


def test_a_refused_submission_leaves_the_job_queued(harness: Harness) -> None:
    executor = RefusingExecutor(harness.runner, refusals=1)
    d = Dispatcher(harness.settings, harness.app.state.sessionmaker, executor, recover_on_start=False)
    job = harness.submit(seed=0)["id"]
    d.tick()
    got = harness.job(job)
    assert got["status"] == "queued" and got["attempts"] == 0 and "Ray is unreachable" in d.error
    assert any("the executor refused it" in line for line in harness.client.get(f"/api/jobs/{job}/logs").json()[
        "lines"])
    deadline = time.monotonic() + 20
    while harness.job(job)["status"] != "succeeded":
        assert time.monotonic() < deadline
        d.tick()
        time.sleep(0.01)
    assert harness.job(job)["attempts"] == 1
    executor.shutdown()


def test_a_job_the_executor_forgot_is_requeued(harness: Harness) -> None:
    harness.runner.hold.set()
    job = harness.submit(seed=0)["id"]
    harness.wait_status(job, "running")
    executor: ThreadExecutor = harness.app.state.executor
    with executor._lock:  # white box: the task vanished (e.g. Ray lost track of it)
        executor._futures.pop(job)
    harness.tick()
    got = harness.job(job)
    assert got["status"] in ("queued", "dispatched", "running") and got["attempts"] in (1, 2)
    harness.runner.release()
    done = harness.wait_status(job, "succeeded")
    assert done["attempts"] == 2
    lines = harness.client.get(f"/api/jobs/{job}/logs").json()["lines"]
    assert any("the executor no longer knows this job" in line for line in lines)


def test_an_outcome_that_cannot_be_recorded_is_kept_and_retried(harness: Harness, monkeypatch) -> None:
    real_record = Dispatcher._record
    calls = []

    def flaky_record(self, *args):
        calls.append(args[0].job_id)
        if len(calls) == 1:
            raise ConnectionError("database briefly unreachable")
        return real_record(self, *args)

    monkeypatch.setattr(Dispatcher, "_record", flaky_record)
    job = harness.submit(seed=3)["id"]
    done = harness.wait_status(job, "succeeded")
    assert calls == [job, job] and done["fid"] == 13.0
    assert done["attempts"] == 1 and len(harness.runner.specs_of(job)) == 1  # not rerun as "lost"


def test_a_job_is_dispatched_until_its_worker_starts_it(harness: Harness) -> None:
    """Handed to the executor is not running: with 4 workers busy, a fifth job waits as "dispatched"
    (no start time), and becomes "running" when a worker takes it."""
    harness.runner.hold.set()
    ids = [harness.submit(seed=seed)["id"] for seed in range(5)]
    harness.tick_until(lambda: sorted(harness.job(i)["status"] for i in ids) == ["dispatched"] + ["running"] * 4,
                       what="4 running, 1 dispatched")
    waiting = next(i for i in ids if harness.job(i)["status"] == "dispatched")
    got = harness.job(waiting)
    assert got["dispatched_at"] and got["started_at"] is None and got["attempts"] == 1
    listed = harness.client.get("/api/jobs", params={"status": "dispatched"}).json()
    assert listed["total"] == 1 and [j["id"] for j in listed["items"]] == [waiting]
    assert harness.client.get("/api/jobs", params={"status": "running"}).json()["total"] == 4
    r = harness.client.post(f"/api/jobs/{waiting}/cancel")  # a dispatched job is cancelled like a running one
    assert r.status_code == 200 and r.json()["status"] == "dispatched" and r.json()["cancel_requested"] is True
    for i in ids:  # the running ones stop; the dispatched one then starts, sees its cancel and stops too
        harness.client.post(f"/api/jobs/{i}/cancel")
    for i in ids:
        assert harness.wait_status(i, "cancelled")["status"] == "cancelled"
