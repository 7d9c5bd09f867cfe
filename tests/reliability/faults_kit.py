"""Helpers of the fault tests: a real service, real worker processes killed at chosen moments, the checks after.

- `service(...)`: the FastAPI app with its dispatcher thread, real MLflow (the given tracking
  URI) and the given executor, with the `tiny` teacher registered; yields a TestClient.
- `holding_execute_job(holds)`: a Ray task that runs the real worker task
  (`worker.ray_tasks.execute_job`) but, on the attempts `holds` names, stops at one exact moment
  (half-way through writing a checkpoint, before FID, between creating the MLflow run and
  recording its id, after the outcome is written) and writes a marker naming its pid, so a test
  can kill it right there. Every other attempt is the real task, unchanged.
- `Killer`: watches the jobs' output folders and SIGKILLs worker processes as planned (at a log
  line of an attempt, or at a hold), recording what was on disk and how long recovery took.
- `assert_ran_once(...)`: one outcome, one MLflow run with one FID, one recorded end.

Finding and killing processes reads /proc (Linux, as CI).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings

TEACHER = "tiny"
HOLD_S = 240.0  # a held worker waits this long to be killed before it carries on (then the test fails)
# A small job: 30 steps with a checkpoint every 10, a 100-sample FID with 5 DDIM steps.
JOB_OPTIONS: dict[str, Any] = dict(student_ratio=0.5, steps=30, checkpoint_every=10, batch_size=16, fid_samples=100,
                                   sample_steps=5, importance="magnitude")


def save_tiny_teacher(teachers_dir: Path) -> None:
    from liftplace.models import build_unet, save_unet

    save_unet(build_unet(TEACHER, seed=0), teachers_dir / TEACHER)


@contextlib.contextmanager
def service(data_dir: Path, *, database_url: str, teachers_dir: Path, mlflow_uri: str, experiment: str,
            executor: Any, **overrides: Any) -> Iterator[TestClient]:
    """A started app (dispatcher thread on, real MLflow) with the `tiny` teacher registered."""
    values: dict[str, Any] = dict(data_dir=data_dir, database_url=database_url, teachers_dir=teachers_dir,
                                  mlflow_tracking_uri=mlflow_uri, mlflow_experiment=experiment, poll_interval=0.1)
    values.update(overrides)
    app = create_app(Settings(**values), executor)
    with TestClient(app) as client:
        if client.get(f"/api/teachers/{TEACHER}").status_code == 404:
            r = client.post("/api/teachers", json={"source": "local", "name": TEACHER})
            assert r.status_code == 201, r.text
        yield client


def jobs_of(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    r = client.get("/api/jobs", params={"limit": 500, **params})
    assert r.status_code == 200, r.text
    return sorted(r.json()["items"], key=lambda j: j["id"])


def wait_ended(client: TestClient, job_ids: list[int], timeout: float, *,
               between: Callable[[], None] = lambda: None) -> list[dict[str, Any]]:
    """Poll until every job has ended, calling `between()` meanwhile; the jobs at the end."""
    deadline = time.monotonic() + timeout
    terminal = ("succeeded", "failed", "diverged", "cancelled")
    next_read = 0.0
    while True:
        between()
        if time.monotonic() >= next_read:
            jobs = [client.get(f"/api/jobs/{i}").json() for i in job_ids]
            if all(j["status"] in terminal for j in jobs):
                return jobs
            next_read = time.monotonic() + 0.5
        if time.monotonic() > deadline:
            status = client.get("/api/status").json()
            raise AssertionError(f"jobs did not end within {timeout:.0f}s: "
                                 f"{[(j['id'], j['status'], j['attempts']) for j in jobs]}; {status}")
        time.sleep(0.02)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate()` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def parent_metric(mlflow_uri: str, run_id: str, key: str, timeout: float = 30.0) -> list[float]:
    """The history of a study parent run's metric, once the dispatcher has logged it."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    history = wait_for(lambda: client.get_metric_history(run_id, key), timeout, f"{key} in run {run_id}")
    return [m.value for m in history]


# --- one job's output folder ----------------------------------------------------------------------


class JobFiles:
    """What a job's worker left in its output folder (<data dir>/jobs/<id>)."""

    def __init__(self, data_dir: Path, job_id: int) -> None:
        self.job_id = job_id
        self.dir = data_dir / "jobs" / str(job_id)

    def lines(self) -> list[str]:
        try:
            return (self.dir / "job.log").read_text().splitlines()
        except OSError:
            return []

    def attempt_lines(self, attempt: int) -> tuple[int | None, list[str]]:
        """(pid, log lines) of one attempt: from its 'starting' line up to the next attempt's."""
        lines = self.lines()
        start = re.compile(rf"job {self.job_id} \(\w+, attempt (\d+)\) starting on \S+ \(pid (\d+)")
        pid, out = None, []
        for line in lines:
            m = start.search(line)
            if m:
                if pid is not None:
                    break
                if int(m.group(1)) == attempt:
                    pid = int(m.group(2))
                continue
            if pid is not None:
                out.append(line)
        return pid, out

    def held(self, moment: str, attempt: int) -> int | None:
        """The pid of a worker holding at `moment` (see holding_execute_job), once it is there."""
        try:
            return int((self.dir / f"held-{moment}-attempt{attempt}").read_text())
        except (OSError, ValueError):
            return None

    def checkpoint_step(self) -> int | None:
        path = self.dir / "checkpoint" / "last.pt"
        if not path.is_file():
            return None
        return int(torch.load(path, map_location="cpu", weights_only=False)["step"])

    def count(self, fragment: str) -> int:
        return sum(fragment in line for line in self.lines())


# --- killing workers ------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _runs_job(pid: int, job_id: int) -> bool:
    """Whether `pid` is a Ray worker running this job's task now (Ray titles it ray::liftplace-job-<id>-...)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return f"liftplace-job-{job_id}-" in title


@dataclass
class Kill:
    """One planned SIGKILL: job `job_id`'s attempt `attempt`, when its log shows `after` (a fragment
    of a line of that attempt; "" = as soon as it has started) or when it holds at `hold`. Kills
    with the same `group` wait for each other and go together."""

    job_id: int
    attempt: int
    after: str = ""
    hold: str | None = None
    label: str = ""
    group: str | None = None
    pid: int | None = None
    at: float | None = None  # time.monotonic() of the kill
    checkpoint_step: int | None = None  # the checkpoint on disk once the worker was dead
    left: list[str] = field(default_factory=list)  # the files of the checkpoint folder then
    requeued_s: float | None = None  # kill -> the dispatcher recorded the loss and requeued the job
    restarted_s: float | None = None  # kill -> the next attempt's first log line
    training_s: float | None = None  # kill -> the next attempt trains again (its "training"/"resumed" line)


@dataclass
class Killer:
    """Kills workers as planned; call `poll()` often (wait_ended's `between`).

    With `watch_dispatcher(monkeypatch)` it also notes when the dispatcher records each loss.
    """

    data_dir: Path
    kills: list[Kill] = field(default_factory=list)
    losses: dict[int, list[float]] = field(default_factory=dict)  # job id -> when each loss was recorded

    def watch_dispatcher(self, monkeypatch: Any) -> None:
        from server.dispatcher import Dispatcher

        record = Dispatcher._lost

        def lost(dispatcher: Dispatcher, session: Any, job: Any, why: str) -> None:
            self.losses.setdefault(job.id, []).append(time.monotonic())
            record(dispatcher, session, job, why)

        monkeypatch.setattr(Dispatcher, "_lost", lost)

    def files(self, job_id: int) -> JobFiles:
        return JobFiles(self.data_dir, job_id)

    def poll(self) -> None:
        ready: list[tuple[Kill, int]] = []
        for k in self.kills:
            if k.at is not None:
                self._watch_recovery(k)
            elif (pid := self._ready(k)) is not None:
                ready.append((k, pid))
        for k, pid in ready:
            if k.group is not None and sum(r.group == k.group for r, _ in ready) < sum(
                    m.group == k.group for m in self.kills if m.at is None):
                continue  # a member of its group is not there yet
            self._kill(k, pid)

    def _ready(self, k: Kill) -> int | None:
        """The pid to kill once the moment has come, else None."""
        files = self.files(k.job_id)
        if k.hold is not None:
            return files.held(k.hold, k.attempt)
        pid, lines = files.attempt_lines(k.attempt)
        if pid is None:
            return None
        if any(f"job {k.job_id} ended:" in line for line in lines):
            raise AssertionError(f"job {k.job_id} attempt {k.attempt} ended before the kill {k.label!r}")
        if k.after and not any(k.after in line for line in lines):
            return None
        return pid

    def _kill(self, k: Kill, pid: int) -> None:
        assert _runs_job(pid, k.job_id), f"pid {pid} no longer runs job {k.job_id} ({k.label})"
        os.kill(pid, signal.SIGKILL)
        k.pid, k.at = pid, time.monotonic()
        deadline = k.at + 10
        while _alive(pid):
            assert time.monotonic() < deadline, f"pid {pid} survived SIGKILL"
            time.sleep(0.005)
        files = self.files(k.job_id)
        k.checkpoint_step = files.checkpoint_step()
        k.left = sorted(p.name for p in (files.dir / "checkpoint").glob("*"))

    def _watch_recovery(self, k: Kill) -> None:
        if k.requeued_s is None:
            after = [t for t in self.losses.get(k.job_id, []) if t >= (k.at or 0.0)]
            if after:
                k.requeued_s = after[0] - (k.at or 0.0)
        if k.training_s is not None:
            return
        pid, lines = self.files(k.job_id).attempt_lines(k.attempt + 1)
        if pid is None:
            return
        now = time.monotonic() - (k.at or 0.0)
        if k.restarted_s is None:
            k.restarted_s = now
        if any("steps from scratch" in line or "resumed from the checkpoint" in line or "already succeeded" in line
               for line in lines):
            k.training_s = now

    def pending(self) -> list[Kill]:
        return [k for k in self.kills if k.at is None]

    def summary(self) -> str:
        """Recovery times over the kills (median and max, seconds)."""
        parts = [f"{len(self.kills)} kills"]
        for name, what in (("requeued_s", "kill -> loss recorded, job requeued"),
                           ("restarted_s", "kill -> next attempt started"),
                           ("training_s", "kill -> training again")):
            values = [getattr(k, name) for k in self.kills if getattr(k, name) is not None]
            if values:
                parts.append(f"{what}: median {statistics.median(values):.1f}s, max {max(values):.1f}s")
        return "; ".join(parts)


# --- a Ray task that stops at exact moments ---------------------------------------------------------


def hold_key(study_name: str | None, seed: int, attempt: int) -> str:
    return f"{study_name or ''}/{seed}/{attempt}"


def holding_execute_job(holds: dict[str, tuple[str, int]], *, env: dict[str, str] | None = None,
                        hold_s: float = HOLD_S) -> Any:
    """A stand-in for worker.ray_tasks.execute_job that runs it, holding where `holds` says.

    holds: {hold_key(study name, seed, attempt): (moment, n)} with moment one of
    "started" (the task has started, the job has not: nothing written, no MLflow run),
    "checkpoint-write" (the n-th checkpoint, half of its bytes written to the temporary file),
    "fid" (before the FID), "mlflow-run" (the MLflow run created, its id not yet recorded) and
    "returned" (the outcome written, the task not yet returned). A held worker writes its pid to
    <output_dir>/held-<moment>-attempt<attempt> and waits to be killed. `env` is set in the
    worker process first.
    """
    import ray

    @ray.remote(max_retries=0, num_cpus=1)
    def execute_job(spec_dict: dict, store: Any = None) -> dict:  # defined here: Ray ships it by value
        import io
        import os
        import time
        from pathlib import Path

        import worker.ray_tasks as ray_tasks

        os.environ.update(env or {})
        real = ray_tasks.execute_job._function
        hold = holds.get(f"{spec_dict.get('study_name') or ''}/{spec_dict.get('seed')}/{spec_dict.get('attempt')}")
        if hold is None:
            return real(spec_dict, store)
        moment, nth = hold
        out = Path(spec_dict["output_dir"])

        def wait_to_be_killed() -> None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"held-{moment}-attempt{spec_dict['attempt']}").write_text(str(os.getpid()))
            deadline = time.monotonic() + hold_s
            while time.monotonic() < deadline:
                time.sleep(0.05)

        restore: list[tuple[Any, str, Any]] = []

        def patch(module: Any, name: str, new: Any) -> None:
            restore.append((module, name, getattr(module, name)))
            setattr(module, name, new)

        if moment == "started":
            wait_to_be_killed()
        elif moment == "checkpoint-write":
            import torch

            import liftplace.training as training

            calls = [0]
            save_atomic = training._save_atomic

            def half_written(obj: dict, path: Path) -> None:
                calls[0] += 1
                if calls[0] != nth:
                    return save_atomic(obj, path)
                buf = io.BytesIO()
                torch.save(obj, buf)
                data = buf.getvalue()
                tmp = path.with_suffix(path.suffix + ".tmp")  # where _save_atomic writes before its rename
                with open(tmp, "wb") as f:
                    f.write(data[: len(data) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                    wait_to_be_killed()
                    f.write(data[len(data) // 2 :])
                os.replace(tmp, path)

            patch(training, "_save_atomic", half_written)
        elif moment == "fid":
            import liftplace.fid as fid

            compute_fid = fid.compute_fid

            def held_fid(*args: Any, **kwargs: Any) -> Any:
                wait_to_be_killed()
                return compute_fid(*args, **kwargs)

            patch(fid, "compute_fid", held_fid)
        elif moment == "mlflow-run":
            import worker.tracking as tracking

            write_atomic = tracking._write_atomic

            def held_write(path: Path, text: str) -> None:
                if path.name == tracking.RUN_ID_FILE:
                    wait_to_be_killed()
                write_atomic(path, text)

            patch(tracking, "_write_atomic", held_write)
        try:
            result = real(spec_dict, store)
        finally:  # Ray reuses worker processes: leave none patched
            for module, name, old in reversed(restore):
                setattr(module, name, old)
        if moment == "returned":
            wait_to_be_killed()
        return result

    return execute_job


# --- checks ---------------------------------------------------------------------------------------


def mlflow_runs_of(mlflow_uri: str, experiment: str, job_id: int) -> list[Any]:
    """Every MLflow run (deleted ones too) tagged with this job id in the experiment."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([exp.experiment_id], filter_string=f"tags.job_id = '{job_id}'",
                              run_view_type=ViewType.ALL)


def assert_ran_once(client: TestClient, job: dict[str, Any], files: JobFiles, mlflow_uri: str,
                    experiment: str) -> None:
    """One result for a succeeded job: one end in its log, one recorded end, one MLflow run with one FID."""
    from mlflow import MlflowClient

    assert job["status"] == "succeeded", (job["id"], job["status"], job["reason"])
    assert files.count(f"job {job['id']} ended: succeeded") == 1, files.lines()
    server_lines = client.get(f"/api/jobs/{job['id']}/logs", params={"limit": 10_000}).json()["lines"]
    assert sum(line.endswith("[server] succeeded") for line in server_lines) == 1, server_lines
    runs = mlflow_runs_of(mlflow_uri, experiment, job["id"])
    assert [r.info.run_id for r in runs] == [job["mlflow_run_id"]], runs
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "succeeded"
    assert run.data.params["seed"] == str(job["seed"])  # params are there even if the first attempt died early
    history = MlflowClient(tracking_uri=mlflow_uri).get_metric_history(run.info.run_id, job["fid_metric"])
    assert [m.value for m in history] == [job["fid"]], history
