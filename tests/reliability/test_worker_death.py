"""Worker death: real worker processes on a local Ray, SIGKILLed at chosen moments of real jobs.

The service runs as in production (the FastAPI app, its dispatcher thread, the RayExecutor, the
real worker, MLflow); only the moment of each kill is chosen by the test. Every
killed job must end succeeded after resuming from its last checkpoint, with the attempts the
kills cost, one outcome, one MLflow run holding one FID, and its study cell computed once. A job
killed twice and resumed ends with the FID of an uninterrupted run of the same seed: the resume
is exact, not merely successful.

Ten kills in all: at start-up, before the first checkpoint, after a checkpoint, during the FID,
twice in a row, half-way through a checkpoint write (two workers at once), between creating the
MLflow run and recording its id, and after the outcome was written.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from liftplace.stats import COLLAPSE_FID_THRESHOLD
from server.executors import RayExecutor
from tests.reliability.faults_kit import (
    JOB_OPTIONS,
    TEACHER,
    Kill,
    Killer,
    assert_ran_once,
    hold_key,
    holding_execute_job,
    jobs_of,
    parent_metric,
    save_tiny_teacher,
    service,
    wait_ended,
)

pytestmark = pytest.mark.slow
TIMEOUT_S = 360  # per test, a safety net: about a minute on 2 idle cores, four on 2 cores shared with other work
MAX_ATTEMPTS = 5
FILE_STORE_ENV = {"MLFLOW_ALLOW_FILE_STORE": "true"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """One local Ray (2 CPUs, loopback, free ports), a tiny teacher and an MLflow store for the module.

    MLflow is a file store here: every respawned worker opens the store, and a SQLite store's
    schema check costs each of them seconds of CPU (the end-to-end study test covers the SQLite
    store). The test's task (holding_execute_job) allows the file store in the workers.
    """
    from liftplace.features import ensure_digits_classifier
    from worker.ray_tasks import init_ray, shutdown_ray

    root = tmp_path_factory.mktemp("worker-death")
    save_tiny_teacher(root / "teachers")
    ensure_digits_classifier()  # trained once here, not by two workers at once
    already = ray.is_initialized()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in FILE_STORE_ENV.items():
            mp.setenv(name, value)
        init_ray(None, num_cpus=2, num_gpus=0)
        try:
            yield {"root": root, "teachers": root / "teachers", "mlflow": (root / "mlruns").as_uri()}
        finally:
            if not already:
                shutdown_ray()


def _service(world: dict[str, object], tmp_path: Path, experiment: str, database_url: str | None = None):
    return service(tmp_path / "data", database_url=database_url or f"sqlite:///{tmp_path / 'server.db'}",
                   teachers_dir=world["teachers"], mlflow_uri=world["mlflow"], experiment=experiment,
                   executor=RayExecutor(None, cpus_per_job=1, gpus_per_job=0), max_attempts=MAX_ATTEMPTS)


def _study(client, name: str, seeds: list[int]) -> dict[int, int]:
    r = client.post("/api/studies", json={"name": name, "teachers": [TEACHER], "methods": ["outkd"], "seeds": seeds,
                                          **JOB_OPTIONS})
    assert r.status_code == 201, r.text
    return {j["seed"]: j["id"] for j in jobs_of(client, study=r.json()["id"])}


def _check(client, killer: Killer, jobs: list[dict], world: dict[str, object], experiment: str) -> None:
    by_id = {j["id"]: j for j in jobs}
    assert not killer.pending(), [(k.job_id, k.label) for k in killer.pending()]
    assert all(k.requeued_s is not None for k in killer.kills)  # each death was seen as a lost worker, not a failure
    for job in jobs:
        kills = [k for k in killer.kills if k.job_id == job["id"]]
        assert job["attempts"] == 1 + len(kills), (job["id"], job["attempts"], [k.label for k in kills])
        assert_ran_once(client, job, killer.files(job["id"]), str(world["mlflow"]), experiment)
    for k in killer.kills:
        job = by_id[k.job_id]
        if "already succeeded" in "\n".join(killer.files(k.job_id).lines()):
            continue  # its outcome was written before the kill: nothing was run again
        if k.attempt == job["attempts"] - 1:  # the last kill of the job: the final attempt resumed from its checkpoint
            assert job["resumed_from_step"] == k.checkpoint_step, (k.label, job["resumed_from_step"], k.checkpoint_step)


def _check_cell(client, study_name: str, seeds: int, mlflow_uri: str) -> None:
    study = next(s for s in client.get("/api/studies").json()["items"] if s["name"] == study_name)
    assert study["status"] == "ended" and study["cells_complete"] == 1, study
    cell = client.get(f"/api/studies/{study['id']}/table").json()["cells"][0]
    high = sum(t["fid"] > COLLAPSE_FID_THRESHOLD for t in cell["tries"])  # a 30-step student may count as one
    assert cell["complete"] and cell["n"] == seeds and cell["collapses"] == high
    # Computed (and logged to the study's MLflow run) once.
    assert parent_metric(mlflow_uri, study["mlflow_run_id"], f"fid_mean/{TEACHER}/outkd") == [
        pytest.approx(cell["mean"])]


def test_killed_workers_resume_and_each_job_finishes_once(world, db_url: str, tmp_path: Path, capsys) -> None:
    """On SQLite and on PostgreSQL: a requeue after a lost worker is a database write like any other."""
    experiment = f"kills-{db_url.split(':')[0]}"
    # The start-up kill holds the task before the job begins: a kill timed by a log line can land
    # inside MLflow's create_run, which the file store used here does not make atomic.
    holds = {hold_key("kills", 0, 1): ("started", 1), hold_key("kills", 3, 1): ("fid", 1)}
    killer = Killer(tmp_path / "data")
    # Patched before the study is submitted, so that no job is dispatched unwatched.
    with pytest.MonkeyPatch.context() as mp, _service(world, tmp_path, experiment, db_url) as c:
        import worker.ray_tasks

        mp.setattr(worker.ray_tasks, "execute_job", holding_execute_job(holds, env=FILE_STORE_ENV))
        killer.watch_dispatcher(mp)
        ids = _study(c, "kills", [0, 1, 2, 3, 4])
        control = c.post("/api/jobs", json={"teacher": TEACHER, "method": "outkd", "seed": 4, **JOB_OPTIONS}).json()
        killer.kills.extend([
            Kill(ids[0], 1, hold="started", label="at start-up, before the MLflow run"),
            Kill(ids[1], 1, "steps from scratch", label="training, before the first checkpoint"),
            Kill(ids[2], 1, "checkpoint at step 10", label="after a checkpoint"),
            Kill(ids[3], 1, hold="fid", label="during the FID"),
            Kill(ids[4], 1, "checkpoint at step 20", label="after a checkpoint, then"),
            Kill(ids[4], 2, "resumed from the checkpoint", label="again right after resuming"),
        ])
        jobs = wait_ended(c, [*ids.values(), control["id"]], TIMEOUT_S, between=killer.poll)
        _check(c, killer, jobs[:-1], world, experiment)
        steps = [k.checkpoint_step for k in killer.kills]
        assert steps[0] is None and steps[3] == 30  # exact: before any training; held in the FID
        # Killed at a log line: the next checkpoint (10 steps later) may land before the kill does.
        assert steps[1] in (None, 10) and steps[2] in (10, 20) and steps[4] in (20, 30) and steps[5] in (20, 30)
        assert jobs[-1]["attempts"] == 1 and jobs[-1]["resumed_from_step"] is None
        assert jobs[-2]["fid"] == pytest.approx(jobs[-1]["fid"], rel=1e-6)  # killed twice = never killed
        _check_cell(c, "kills", 5, str(world["mlflow"]))
        assert c.get("/api/jobs", params={"status": "running"}).json()["total"] == 0
    with capsys.disabled():
        print(f"\n[faults] worker kills (moments): {killer.summary()}")


def test_kills_inside_writes_and_of_two_workers_at_once(world, tmp_path: Path, capsys) -> None:
    experiment = "kills-in-writes"
    holds = {
        hold_key("writes", 0, 1): ("checkpoint-write", 1),  # no checkpoint yet, half a temporary file
        hold_key("writes", 1, 1): ("checkpoint-write", 2),  # the checkpoint of step 10, half of step 20's
        hold_key("writes", 2, 1): ("mlflow-run", 1),
        hold_key("writes", 3, 1): ("returned", 1),
    }
    killer = Killer(tmp_path / "data")
    # The stand-in task and the dispatcher's watch go in before the study is submitted: a job
    # dispatched before them would run unheld (and its kill would never come).
    with pytest.MonkeyPatch.context() as mp, _service(world, tmp_path, experiment) as c:
        import worker.ray_tasks

        mp.setattr(worker.ray_tasks, "execute_job", holding_execute_job(holds, env=FILE_STORE_ENV))
        killer.watch_dispatcher(mp)
        ids = _study(c, "writes", [0, 1, 2, 3])
        killer.kills.extend([
            Kill(ids[0], 1, hold="checkpoint-write", group="both", label="writing the first checkpoint"),
            Kill(ids[1], 1, hold="checkpoint-write", group="both", label="writing the second checkpoint, same moment"),
            Kill(ids[2], 1, hold="mlflow-run", label="MLflow run created, its id not yet recorded"),
            Kill(ids[3], 1, hold="returned", label="outcome written, the task not yet returned"),
        ])
        jobs = wait_ended(c, list(ids.values()), TIMEOUT_S, between=killer.poll)
        _check(c, killer, jobs, world, experiment)
        assert [k.checkpoint_step for k in killer.kills] == [None, 10, None, 30]
        both = killer.kills[:2]
        assert abs(both[0].at - both[1].at) < 1.0  # two workers killed together
        assert [k.left for k in both] == [["last.pt.tmp"], ["last.pt", "last.pt.tmp"]]  # a half-written file each
        files = [killer.files(i) for i in ids.values()]
        assert files[2].dir.joinpath("mlflow_run_key").is_file()  # how the second attempt found its run
        assert files[3].count("already succeeded in an earlier attempt") == 1
        assert jobs[3]["resumed_from_step"] is None  # its one training ran through; nothing was run again
        _check_cell(c, "writes", 4, str(world["mlflow"]))
    with capsys.disabled():
        print(f"\n[faults] worker kills (inside writes): {killer.summary()}")
