"""The dispatcher on a real local Ray, with Ray tasks that act out workers (no training).

Covers what only Ray does: resource requests, a task that waits for resources and is cancelled
there, a running task that stops on a cancel, a worker process that dies (the job is retried and
dispatched again), progress and logs through the progress-store actor.
"""

from __future__ import annotations

import pytest
import ray

from server.executors import RayExecutor

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # Ray is the subject here


@pytest.fixture
def acted_out_jobs(monkeypatch: pytest.MonkeyPatch, local_ray: str) -> None:
    """Replace the worker's execute_job: seed 0 succeeds, seed 1 dies on attempt 1, seed 2 runs until cancelled."""

    @ray.remote(max_retries=0, num_cpus=1)
    def execute_job(spec: dict, store) -> dict:  # defined here: Ray ships it by value
        import os
        import time

        job_id, seed = spec["job_id"], spec["seed"]
        store.append_log.remote(job_id, f"acted job {job_id} attempt {spec['attempt']}")
        store.report.remote(job_id, 1, spec["steps"], {"loss_total": 0.125})
        if seed == 1 and spec["attempt"] == 1:
            os._exit(3)  # the worker process dies
        while seed == 2:
            if ray.get(store.is_cancelled.remote(job_id)):
                return {"job_id": job_id, "status": "cancelled", "reason": "stopped at step 1"}
            time.sleep(0.05)
        ray.get(store.get.remote(job_id))  # flush the log line, as the real execute_job does (StoreReporter.flush)
        return {"job_id": job_id, "status": "succeeded", "fid": 4.5, "fid_metric": "fid_digits",
                "mlflow_run_id": None, "steps_done": spec["steps"]}

    import worker.ray_tasks

    monkeypatch.setattr(worker.ray_tasks, "execute_job", execute_job)


def test_dispatching_to_ray(make_harness, acted_out_jobs: None) -> None:
    # Each job asks for both CPUs of the local Ray: one runs, the next waits in Ray for resources.
    executor = RayExecutor(None, cpus_per_job=2, gpus_per_job=0.25)
    with make_harness(executor=executor, max_attempts=3) as h:
        h.tick()
        import ray

        # The session's Ray, joined rather than started anew: its one cluster, with its address.
        address = ray.get_runtime_context().gcs_address
        assert h.dispatcher.executor_description.startswith(("embedded Ray at", "connected Ray at"))
        assert f"at {address} " in h.dispatcher.executor_description
        assert executor._owns_ray is False
        looping = h.submit(seed=2, steps=10)["id"]
        waiting = h.submit(seed=0)["id"]
        h.tick_until(lambda: h.job(looping)["progress"]["step"] == 1 and h.job(waiting)["status"] == "dispatched",
                     timeout=60, what="one job running, one waiting in Ray")
        got = h.job(looping)
        assert got["status"] == "running" and got["metrics"]["loss_total"] == 0.125 and got["started_at"]
        assert h.job(waiting)["started_at"] is None  # handed to Ray, not started: "dispatched", not "running"

        assert h.client.post(f"/api/jobs/{waiting}/cancel").status_code == 200
        assert h.wait_status(waiting, "cancelled", timeout=60)["reason"] == "cancelled in Ray"
        assert h.client.post(f"/api/jobs/{looping}/cancel").status_code == 200
        assert h.wait_status(looping, "cancelled", timeout=60)["reason"] == "stopped at step 1"
        lines = h.client.get(f"/api/jobs/{looping}/logs").json()["lines"]
        assert any(f"acted job {looping} attempt 1" in line for line in lines)

        dying = h.submit(seed=1)["id"]
        done = h.wait_status(dying, "succeeded", timeout=90)
        assert done["attempts"] == 2 and done["fid"] == 4.5
        lines = h.client.get(f"/api/jobs/{dying}/logs").json()["lines"]
        assert any("attempt 1 lost (WorkerCrashedError" in line for line in lines)
        assert any(f"acted job {dying} attempt 2" in line for line in lines)
    assert ray.is_initialized()  # the executor leaves a Ray it did not start running


def test_a_job_owner_that_dies_is_replaced_and_its_jobs_are_requeued(make_harness, acted_out_jobs: None) -> None:
    """The owner actor dies (as with its node) while a job runs: the job is lost and requeued, a new owner
    takes the name, and that job and the next run on it."""
    from worker.ray_tasks import JOB_OWNER_NAME, RAY_NAMESPACE

    executor = RayExecutor(None, cpus_per_job=1, gpus_per_job=0.25)
    with make_harness(executor=executor, max_attempts=3) as h:
        h.tick()
        looping = h.submit(seed=2, steps=10)["id"]  # runs until cancelled
        h.tick_until(lambda: (h.job(looping)["progress"] or {}).get("step") == 1, timeout=60, what="the job to run")
        first = ray.get_actor(JOB_OWNER_NAME, namespace=RAY_NAMESPACE)
        ray.kill(first, no_restart=True)  # its task dies with it
        h.tick_until(lambda: h.job(looping)["attempts"] == 2 and h.job(looping)["status"] == "running",
                     timeout=90, what="the job to run again")
        lines = h.client.get(f"/api/jobs/{looping}/logs").json()["lines"]
        assert any("the job owner actor in Ray died" in line for line in lines), lines
        second = ray.get_actor(JOB_OWNER_NAME, namespace=RAY_NAMESPACE)
        assert second._actor_id != first._actor_id
        after = h.submit(seed=0)["id"]
        assert h.wait_status(after, "succeeded", timeout=60)["attempts"] == 1
        assert h.client.post(f"/api/jobs/{looping}/cancel").status_code == 200
        assert h.wait_status(looping, "cancelled", timeout=60)["attempts"] == 2
        # With no job in Ray, a dead owner is found by the next submission, which goes to its replacement.
        ray.kill(second, no_restart=True)
        last = h.submit(seed=0)["id"]
        assert h.wait_status(last, "succeeded", timeout=60)["attempts"] == 1
        assert ray.get_actor(JOB_OWNER_NAME, namespace=RAY_NAMESPACE)._actor_id != second._actor_id
