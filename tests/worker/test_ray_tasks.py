"""Jobs through an embedded local Ray (one per module): progress store, execute_job, cancellation."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from liftplace.models import build_unet, save_unet  # noqa: E402
from worker.ray_tasks import (  # noqa: E402
    ProgressStore,
    execute_job,
    get_progress_store,
    init_ray,
    job_options,
)
from worker.spec import JobOutcome, JobSpec  # noqa: E402

TIMEOUT_S = 240


@pytest.fixture(scope="module")
def store(local_ray):
    return get_progress_store()


@pytest.fixture(scope="module")
def setup_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-jobs")
    teacher = save_unet(build_unet("tiny", seed=0), root / "teacher")
    return root, teacher, f"sqlite:///{root / 'mlflow.db'}"


def _spec(root: Path, teacher: Path, uri: str, job_id: int, **kw) -> JobSpec:
    base = dict(job_id=job_id, kind="distill", output_dir=str(root / f"job{job_id}"), steps=6, batch_size=16,
                checkpoint_every=3, fid_samples=50, sample_steps=3, teacher_path=str(teacher), importance="magnitude",
                mlflow_tracking_uri=uri, mlflow_experiment="ray-tests")
    base.update(kw)
    return JobSpec(**base)


def test_init_ray_embedded_on_loopback_and_idempotent(local_ray):
    if local_ray.startswith("connected"):
        pytest.skip("Ray was already running in this test session")
    assert local_ray.startswith("embedded Ray at 127.0.0.1:"), local_ray
    port = int(local_ray.split("127.0.0.1:")[1].split()[0])
    assert port != 6379
    assert "(2 CPUs, 0 GPUs)" in local_ray
    assert init_ray() == local_ray  # idempotent: the same embedded Ray, described alike


def test_progress_store_api(local_ray):
    s = ProgressStore.remote()
    assert ray.get(s.get.remote(1)) is None
    ray.get(s.report.remote(1, 3, 10, {"loss_total": 1.5}))
    ray.get(s.report.remote(2, 1, 5, {}))
    got = ray.get(s.get.remote(1))
    assert (got["step"], got["total"], got["metrics"]) == (3, 10, {"loss_total": 1.5})
    assert abs(got["updated_at"] - time.time()) < 60
    assert set(ray.get(s.get_many.remote([1, 2, 3]))) == {1, 2}
    assert not ray.get(s.is_cancelled.remote(1))
    ray.get(s.request_cancel.remote(1))
    assert ray.get(s.is_cancelled.remote(1)) and not ray.get(s.is_cancelled.remote(2))
    for line in ("a", "b", "c"):
        s.append_log.remote(1, line)
    assert ray.get(s.logs.remote(1)) == ["a", "b", "c"]
    assert ray.get(s.logs.remote(1, 2)) == ["c"] and ray.get(s.logs.remote(1, 5)) == []
    ray.get(s.clear.remote(1))
    assert ray.get(s.get.remote(1)) is None and not ray.get(s.is_cancelled.remote(1))
    assert ray.get(s.logs.remote(1)) == []
    assert ray.get(s.get.remote(2))["step"] == 1
    # the named store: one actor however often it is asked for
    a, b = get_progress_store("test-store"), get_progress_store("test-store")
    ray.get(a.report.remote(5, 1, 2, {}))
    assert ray.get(b.get.remote(5))["step"] == 1


def test_a_flushed_reporter_leaves_no_line_in_flight(local_ray):
    """Lines are sent fire-and-forget; after flush() the store holds all of them, so the server,
    which reads the logs as soon as a task returns, never misses a job's last lines."""
    store = ProgressStore.remote()

    @ray.remote(num_cpus=0)
    def logs_then_returns(store, n: int) -> int:
        from worker.ray_tasks import StoreReporter

        reporter = StoreReporter(store)
        for i in range(n):
            reporter.log(7, f"line {i}")
        reporter.progress(7, n, n, {})
        reporter.flush(7)
        return n

    n = ray.get(logs_then_returns.remote(store, 2000))
    assert ray.get(store.logs.remote(7)) == [f"line {i}" for i in range(n)]  # read right after the return
    assert ray.get(store.get.remote(7))["step"] == n


def test_store_reporter_follows_the_protocol_through_a_store(local_ray):
    """The Reporter protocol as run_job uses it, on the production reporter: progress and log reach the
    store, should_cancel answers a bool, False until the store is asked to cancel, then True."""
    from worker.ray_tasks import StoreReporter
    from worker.run import Reporter

    store = ProgressStore.remote()
    reporter: Reporter = StoreReporter(store, poll_s=0.0)
    assert reporter.should_cancel(21) is False
    reporter.progress(21, 2, 10, {})
    reporter.run_opened(21, "run-abc")  # the job's MLflow run, kept with its progress from now on
    reporter.progress(21, 3, 10, {"loss_total": 0.5})
    reporter.log(21, "checkpoint at step 3")
    reporter.flush(21)
    got = ray.get(store.get.remote(21))
    assert (got["step"], got["total"], got["metrics"]) == (3, 10, {"loss_total": 0.5})
    assert got["mlflow_run_id"] == "run-abc"
    assert ray.get(store.logs.remote(21)) == ["checkpoint at step 3"]
    ray.get(store.request_cancel.remote(21))
    deadline = time.monotonic() + 30
    while not reporter.should_cancel(21) and time.monotonic() < deadline:  # asks, then reads the answer later
        time.sleep(0.01)
    assert reporter.should_cancel(21) is True
    assert StoreReporter(store).should_cancel(22) is False  # the cancel was for job 21 alone


def test_a_job_asking_whether_it_is_cancelled_never_lends_its_cpus_to_another_job(local_ray):
    """A task blocked in ray.get or ray.wait (even with timeout 0) on its main thread gives its CPUs back to
    Ray, which starts the next job on them: more jobs than CPUs. The reporter reads answers by callbacks."""
    from worker.ray_tasks import StoreReporter

    store = ProgressStore.remote()
    cpus = ray.cluster_resources()["CPU"]

    @ray.remote(num_cpus=cpus, max_retries=0)
    def polling_job(store, seconds: float) -> tuple[float, float]:
        started = time.time()
        reporter = StoreReporter(store, poll_s=0.0)
        while time.time() - started < seconds:
            reporter.should_cancel(31)
            reporter.progress(31, 1, 2, {})
            time.sleep(0.002)
        reporter.flush(31)
        return started, time.time()

    @ray.remote(num_cpus=cpus, max_retries=0)
    def next_job() -> float:
        return time.time()

    first = polling_job.remote(store, 1.5)
    second = next_job.remote()
    (start, end), second_started = ray.get(first), ray.get(second)
    assert second_started >= end, f"the next job started {end - second_started:.2f} s before the first ended"
    assert end - start >= 1.5


def test_job_options_cpu_only_cluster(local_ray):
    spec = JobSpec(job_id=4, kind="distill", output_dir="/tmp/x")
    opts = job_options(spec, num_gpus=0.25, num_cpus=1)
    assert opts["num_gpus"] == 0 and opts["num_cpus"] == 1 and opts["max_retries"] == 0
    assert "4" in opts["name"]
    with pytest.raises(ValueError, match="num_gpus"):
        job_options(spec, num_gpus=1.5)
    with pytest.raises(ValueError):
        job_options(spec, num_cpus=-1)


def test_execute_job_reports_progress_and_succeeds(store, setup_dirs):
    root, teacher, uri = setup_dirs
    spec = _spec(root, teacher, uri, 301)
    ray.get(store.clear.remote(301))
    ref = execute_job.options(**job_options(spec, num_gpus=0.5)).remote(spec.to_dict(), store)
    result = ray.get(ref, timeout=TIMEOUT_S)
    outcome = JobOutcome(**result)
    assert outcome.status == "succeeded", outcome.reason
    assert outcome.fid_metric == "fid_digits" and math.isfinite(outcome.fid)
    assert outcome.steps_done == 6 and Path(outcome.model_dir, "config.json").is_file()
    progress = ray.get(store.get.remote(301))
    assert progress["step"] == progress["total"] == 6 and "loss_total" in progress["metrics"]
    logs = ray.get(store.logs.remote(301))
    assert "starting on cpu" in logs[0] and any("fid_digits =" in line for line in logs)
    assert "ended: succeeded" in logs[-1]
    # a spec the worker cannot read is a failed outcome, not an exception
    bad = ray.get(execute_job.remote({"job_id": 302, "nonsense": 1}, None), timeout=TIMEOUT_S)
    assert bad["status"] == "failed" and "nonsense" in bad["reason"]


def test_cancel_through_the_store(store, setup_dirs):
    root, teacher, uri = setup_dirs
    # cancelled while still queued: ends at once without work
    queued = _spec(root, teacher, uri, 311)
    ray.get(store.request_cancel.remote(311))
    outcome = ray.get(execute_job.remote(queued.to_dict(), store), timeout=TIMEOUT_S)
    assert outcome["status"] == "cancelled" and outcome["reason"] == "cancelled before it started"

    # cancelled while running: stops after a step, with a checkpoint to resume from
    spec = _spec(root, teacher, uri, 312, steps=2000, checkpoint_every=1000)
    ray.get(store.clear.remote(312))
    ref = execute_job.options(**job_options(spec)).remote(spec.to_dict(), store)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        p = ray.get(store.get.remote(312))
        if p is not None and p["step"] >= 1:
            break
        done, _ = ray.wait([ref], timeout=0.2)
        assert not done, f"the job ended before it could be cancelled: {ray.get(ref)}"
    ray.get(store.request_cancel.remote(312))
    outcome = ray.get(ref, timeout=TIMEOUT_S)
    assert outcome["status"] == "cancelled", outcome["reason"]
    assert 1 <= outcome["steps_done"] < 2000 and outcome["reason"].startswith("cancelled at step")
    assert Path(spec.output_dir, "checkpoint", "last.pt").is_file()
    ray.get(store.clear.remote(312))
    assert not ray.get(store.is_cancelled.remote(312))


def test_no_more_jobs_run_at_once_than_cpus(store, setup_dirs):
    """A starting job must not lend its CPU back to Ray (a task blocked in ray.get does): on 2 CPUs
    with one CPU per job, at most 2 of 4 jobs ever run at once."""
    from mlflow import MlflowClient

    root, teacher, uri = setup_dirs
    MlflowClient(tracking_uri=uri).search_experiments()  # the store's tables first: jobs do not race to create them
    specs = [_spec(root, teacher, uri, 400 + i, steps=300, checkpoint_every=0, fid_samples=20, sample_steps=2)
             for i in range(4)]
    for s in specs:
        ray.get(store.clear.remote(s.job_id))
    refs = {s.job_id: execute_job.options(**job_options(s)).remote(s.to_dict(), store) for s in specs}
    pending, most, outcomes = dict(refs), 0, []
    deadline = time.monotonic() + TIMEOUT_S
    while pending and time.monotonic() < deadline:
        started = [jid for jid in pending if (p := ray.get(store.get.remote(jid))) is not None and p["step"] >= 1]
        # read progress first, then which jobs ended: a job that started in a slot freed by another
        # is counted only once that other one is seen to have ended
        done, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=0)
        ended = {jid for jid, ref in pending.items() if ref in done}
        most = max(most, len([jid for jid in started if jid not in ended]))
        for jid in ended:
            outcomes.append(ray.get(pending.pop(jid)))
        time.sleep(0.05)
    assert not pending, "the jobs did not end in time"
    assert [o["status"] for o in outcomes] == ["succeeded"] * 4, [o["reason"] for o in outcomes]
    assert most == 2, f"{most} jobs ran at once on 2 CPUs"
