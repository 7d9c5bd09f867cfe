"""Jobs outlive the API in a Ray cluster: the API process is SIGKILLed while two jobs train.

A Ray head of its own (`ray start --head`, token authentication, loopback, its own temp folder)
stands for the cluster; `liftplace serve` joins it with RAY_ADDRESS, as a separate process. Two
jobs train on the cluster when the API is killed with SIGKILL (no shutdown code runs). The jobs
go on training without it. A second `liftplace serve` on the same database re-attaches to both:
the first ends succeeded with one attempt, one start of its worker and one MLflow run (it was
not requeued or restarted); the second is cancelled through the new API and ends "cancelled",
also at its first attempt.

The Ray head is stopped by killing its process group, never with `ray stop` (which stops every
Ray on the machine).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.cluster_kit import TERMINAL, Api, ray_head, wait_for
from tests.reliability.faults_kit import JobFiles, mlflow_runs_of, save_tiny_teacher

pytestmark = pytest.mark.slow
TIMEOUT_S = 300  # a safety net: about a minute on 2 idle cores
# Tiny jobs: the first ends about a minute after the kill, the second would train for long and is cancelled.
OPTIONS: dict[str, Any] = dict(teacher="tiny", method="outkd", student_ratio=0.5, batch_size=16, fid_samples=100,
                               sample_steps=5, importance="magnitude")


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A one-node Ray cluster with 2 CPUs on loopback; yields the environment its drivers need."""
    with ray_head(tmp_path, LIFTPLACE_CACHE_DIR=os.environ["LIFTPLACE_CACHE_DIR"]) as (_, env):  # the tests' cache
        yield env


def _wait(what: str, predicate, timeout: float = TIMEOUT_S) -> Any:
    return wait_for(what, predicate, timeout)


def _starts(files: JobFiles) -> list[str]:
    return [line for line in files.lines() if re.search(rf"job {files.job_id} \(\w+, attempt \d+\) starting", line)]


def test_jobs_keep_training_when_the_api_is_killed_and_the_next_api_re_attaches(
        tmp_path: Path, cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # this process reads the jobs' runs from the file store
    save_tiny_teacher(tmp_path / "teachers")
    api = Api(tmp_path, cluster, "api-1", LIFTPLACE_MLFLOW_EXPERIMENT="outlive")
    try:
        api.post("/api/teachers", {"source": "local", "name": "tiny"})
        finishing = api.post("/api/jobs", {**OPTIONS, "seed": 0, "steps": 400, "checkpoint_every": 400})
        cancelled = api.post("/api/jobs", {**OPTIONS, "seed": 1, "steps": 20000, "checkpoint_every": 20000})
        ids = (finishing["id"], cancelled["id"])

        def both_training() -> bool:
            jobs = [api.get(f"/api/jobs/{i}") for i in ids]
            return all(j["status"] == "running" and (j["progress"] or {}).get("step", 0) >= 5 for j in jobs)

        _wait("both jobs to train", both_training)
    except BaseException:
        api.stop()
        raise
    api.kill()

    files = {i: JobFiles(tmp_path / "data", i) for i in ids}
    metrics = files[ids[1]].dir / "metrics.jsonl"  # a line every few steps

    def size() -> int:
        return metrics.stat().st_size if metrics.exists() else 0

    before = size()
    _wait("the long job to go on training without an API", lambda: size() > before, timeout=120)

    api = Api(tmp_path, cluster, "api-2", LIFTPLACE_MLFLOW_EXPERIMENT="outlive")
    try:
        executor = api.get("/api/ready")["checks"]["executor"]
        assert executor["jobs_in_ray"] >= 1 and executor["jobs_outlive_server"] is True, executor
        api.post(f"/api/jobs/{ids[1]}/cancel")
        jobs = _wait("both jobs to end", lambda: (js := [api.get(f"/api/jobs/{i}") for i in ids])
                     and all(j["status"] in TERMINAL for j in js) and js)
        done, stopped = jobs
        assert done["status"] == "succeeded", (done["reason"], api.log())
        assert stopped["status"] == "cancelled" and stopped["reason"].startswith("cancelled at step"), stopped
        for job in jobs:
            assert job["attempts"] == 1, job  # re-attached: not requeued, no second attempt
            assert len(_starts(files[job["id"]])) == 1, files[job["id"]].lines()  # its worker started once
            server = api.get(f"/api/jobs/{job['id']}/logs", params={"limit": 10_000})["lines"]
            assert any("re-attached to attempt 1" in line for line in server), server
            assert not any("requeued" in line for line in server), server
            runs = mlflow_runs_of((tmp_path / "mlruns").as_uri(), "outlive", job["id"])
            assert [r.info.run_id for r in runs] == [job["mlflow_run_id"]], runs  # one MLflow run
        assert done["resumed_from_step"] is None, done  # trained through, not resumed from a checkpoint
        assert sum(line.endswith("[server] succeeded") for line in api.get(
            f"/api/jobs/{ids[0]}/logs", params={"limit": 10_000})["lines"]) == 1  # its end recorded once
    finally:
        api.stop()
