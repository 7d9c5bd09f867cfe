"""Executors: where the dispatcher's jobs run.

`RayExecutor` hands jobs to Ray (embedded local Ray or a cluster; Ray does the scheduling and
the distributed work). `ThreadExecutor` runs them in this process on a small thread pool, for
tests and development without Ray. Both follow the `Executor` protocol, which is all the
dispatcher knows: submit a spec, collect finished jobs, read progress and logs, cancel.

Only the dispatcher thread calls an executor, so implementations need not be re-entrant;
ThreadExecutor's pool threads only touch its locked queues.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from worker.spec import JobOutcome, JobSpec

log = logging.getLogger(__name__)


@dataclass
class Finished:
    """A job the executor no longer runs: its outcome, or why it was lost (the worker died)."""

    job_id: int
    outcome: dict[str, Any] | None = None  # JobOutcome.to_dict() when the job returned
    lost: str | None = None  # set when the job may be retried: the worker or its node died


class WorkerLost(Exception):
    """Raised by a ThreadExecutor runner to act out a worker that died mid-job (tests)."""


@runtime_checkable
class Executor(Protocol):
    """What the dispatcher needs from an execution backend."""

    def start(self) -> str:
        """Start or join the backend; returns a one-line description for the log."""
        ...

    def shutdown(self) -> None: ...

    def submit(self, spec: JobSpec) -> None:
        """Start (or queue) a job; its end shows up in `finished()`."""
        ...

    def finished(self) -> list[Finished]:
        """Jobs that ended since the last call (non-blocking); each is reported once."""
        ...

    def active(self) -> set[int]:
        """Ids of submitted jobs not yet returned by `finished()`."""
        ...

    def progress(self, job_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """{job_id: {"step", "total", "metrics", "updated_at", "mlflow_run_id"}} for the jobs that reported
        ("mlflow_run_id": the run the job opened, None before it did)."""
        ...

    def logs(self, job_id: int, offset: int = 0) -> list[str]:
        """The job's log lines from `offset` on."""
        ...

    def cancel(self, job_id: int) -> None:
        """Ask a job to stop; it ends as "cancelled" (in `finished()`)."""
        ...

    def health(self) -> dict[str, Any]:
        """What the readiness check reports about the backend; raises (with the reason) when it is broken.

        Called from a request thread, not the dispatcher's; a call may block (it is bounded by the caller).
        """
        ...

    def release(self, job_id: int) -> None:
        """Forget a finished job's progress, logs and cancel flag."""
        ...


def _failed(job_id: int, reason: str) -> dict[str, Any]:
    return JobOutcome(job_id=job_id, status="failed", reason=reason).to_dict()


def _cancelled(job_id: int, reason: str) -> dict[str, Any]:
    return JobOutcome(job_id=job_id, status="cancelled", reason=reason).to_dict()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- in-process --------------------------------------------------------------------------------


class LocalProgressStore:
    """The progress store's interface (see worker.ray_tasks.ProgressStore) as a thread-safe object."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._progress: dict[int, dict[str, Any]] = {}
        self._cancel: set[int] = set()
        self._logs: dict[int, list[str]] = {}

    def report(self, job_id: int, step: int, total: int, metrics: dict[str, float]) -> None:
        with self._lock:
            run_id = self._progress.get(job_id, {}).get("mlflow_run_id")
            self._progress[job_id] = {"step": step, "total": total, "metrics": dict(metrics),
                                      "updated_at": time.time(), "mlflow_run_id": run_id}

    def set_run(self, job_id: int, run_id: str) -> None:
        with self._lock:
            entry = self._progress.setdefault(job_id, {"step": 0, "total": 0, "metrics": {},
                                                       "updated_at": time.time()})
            entry["mlflow_run_id"] = str(run_id)

    def get_many(self, job_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        with self._lock:
            return {j: dict(self._progress[j]) for j in job_ids if j in self._progress}

    def request_cancel(self, job_id: int) -> None:
        with self._lock:
            self._cancel.add(job_id)

    def is_cancelled(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._cancel

    def clear(self, job_id: int) -> None:
        with self._lock:
            self._progress.pop(job_id, None)
            self._cancel.discard(job_id)
            self._logs.pop(job_id, None)

    def append_log(self, job_id: int, line: str) -> None:
        with self._lock:
            self._logs.setdefault(job_id, []).append(str(line))

    def logs(self, job_id: int, offset: int = 0) -> list[str]:
        with self._lock:
            return list(self._logs.get(job_id, [])[max(0, offset):])


class LocalReporter:
    """A `worker.run.Reporter` writing into a LocalProgressStore."""

    def __init__(self, store: LocalProgressStore) -> None:
        self.store = store

    def progress(self, job_id: int, step: int, total: int, metrics: dict[str, float]) -> None:
        self.store.report(job_id, step, total, metrics)

    def should_cancel(self, job_id: int) -> bool:
        return self.store.is_cancelled(job_id)

    def log(self, job_id: int, line: str) -> None:
        self.store.append_log(job_id, line)

    def run_opened(self, job_id: int, run_id: str) -> None:
        self.store.set_run(job_id, run_id)


Runner = Callable[[JobSpec, LocalReporter], "JobOutcome | dict[str, Any]"]


def run_in_process(spec: JobSpec, reporter: LocalReporter) -> JobOutcome:
    """The default ThreadExecutor runner: the worker's own `run_job`, in this process."""
    from worker.run import run_job

    return run_job(spec, reporter=reporter)


class ThreadExecutor:
    """Runs jobs on a thread pool in this process (tests, development; no Ray needed).

    `runner(spec, reporter)` does one job and returns a JobOutcome (or its dict); by default the
    worker's `run_job`. A runner raising `WorkerLost` acts out a dead worker; any other exception
    ends the job "failed" with the exception as the reason.
    """

    def __init__(self, runner: Runner | None = None, *, max_workers: int = 2) -> None:
        self.runner = runner or run_in_process
        self.max_workers = max_workers
        self.store = LocalProgressStore()
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._futures: dict[int, Future[Any]] = {}
        self._done: list[Finished] = []

    def start(self) -> str:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="liftplace-job")
        return f"in-process executor ({self.max_workers} threads)"

    def shutdown(self) -> None:
        with self._lock:
            ids = list(self._futures)
        for job_id in ids:  # running jobs stop at their next step; queued ones never start
            self.store.request_cancel(job_id)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _run(self, spec: JobSpec) -> Finished:
        try:
            result = self.runner(spec, LocalReporter(self.store))
        except WorkerLost as exc:
            return Finished(spec.job_id, lost=str(exc) or "worker lost")
        except Exception as exc:
            log.exception("job %s raised", spec.job_id)
            return Finished(spec.job_id, outcome=_failed(spec.job_id, _describe(exc)))
        outcome = result.to_dict() if isinstance(result, JobOutcome) else dict(result)
        return Finished(spec.job_id, outcome=outcome)

    def _collect(self, job_id: int, future: Future[Finished]) -> None:
        if future.cancelled():
            finished = Finished(job_id, outcome=_cancelled(job_id, "cancelled before it started"))
        else:
            exc = future.exception()
            finished = future.result() if exc is None else Finished(job_id, outcome=_failed(job_id, _describe(exc)))
        with self._lock:
            self._done.append(finished)

    def submit(self, spec: JobSpec) -> None:
        if self._pool is None:
            self.start()
        assert self._pool is not None
        self.store.clear(spec.job_id)  # a retry must not see the previous attempt's cancel flag
        future = self._pool.submit(self._run, spec)
        with self._lock:
            self._futures[spec.job_id] = future
        future.add_done_callback(lambda f, job_id=spec.job_id: self._collect(job_id, f))

    def finished(self) -> list[Finished]:
        with self._lock:
            done, self._done = self._done, []
            for f in done:
                self._futures.pop(f.job_id, None)
        return done

    def active(self) -> set[int]:
        with self._lock:
            return set(self._futures)

    def progress(self, job_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        return self.store.get_many(job_ids)

    def logs(self, job_id: int, offset: int = 0) -> list[str]:
        return self.store.logs(job_id, offset)

    def cancel(self, job_id: int) -> None:
        self.store.request_cancel(job_id)
        with self._lock:
            future = self._futures.get(job_id)
        if future is not None:
            future.cancel()  # succeeds only while it waits for a thread

    def health(self) -> dict[str, Any]:
        if self._pool is None:
            raise RuntimeError("the in-process executor is not started")
        return {"threads": self.max_workers, "active": len(self.active())}

    def release(self, job_id: int) -> None:
        self.store.clear(job_id)


# --- Ray -----------------------------------------------------------------------------------------


class RayExecutor:
    """Hands jobs to Ray as `worker.ray_tasks.execute_job` tasks with resource requests.

    Each job asks for `gpus_per_job` GPUs (a fraction lets several tiny students share one GPU)
    when the cluster has GPUs, else for `cpus_per_job` CPUs only; Ray holds a job until the
    resources are free. Ray's own task retries are off (max_retries=0): the dispatcher retries
    a job whose worker died, with bounded attempts, and the worker resumes from its checkpoint.

    Cancellation asks the job through the progress store (it checkpoints and ends "cancelled");
    a job that has not started is cancelled in Ray at once, and one that does not stop within
    `cancel_grace` seconds is killed (ray.cancel force).
    """

    # Ray errors that mean the worker, its node or its object went away: the job may be retried.
    _LOST_ERRORS = (
        "WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError", "LocalRayletDiedError",
        "OutOfMemoryError", "ObjectReconstructionFailedError", "ObjectFetchTimedOutError", "RaySystemError",
        "ActorDiedError",
    )

    def __init__(self, address: str | None = None, *, gpus_per_job: float = 1.0, cpus_per_job: float = 1.0,
                 cancel_grace: float = 30.0, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
        self.address = address
        self.gpus_per_job = gpus_per_job
        self.cpus_per_job = cpus_per_job
        self.cancel_grace = cancel_grace
        self.num_cpus, self.num_gpus = num_cpus, num_gpus  # embedded Ray only
        self._store: Any = None
        self._refs: dict[int, Any] = {}
        self._cancel_at: dict[int, float] = {}  # job_id -> when a cancel was asked for
        self._killed: set[int] = set()
        self._owns_ray = False
        self.versions: Any = None  # worker.cluster.NodeVersionCheck, once started

    def start(self) -> str:
        import ray

        from worker.cluster import NodeVersionCheck
        from worker.ray_tasks import get_progress_store, init_ray

        self._owns_ray = not ray.is_initialized()  # a Ray started before us (a notebook, a test) is left running
        description = init_ray(self.address, num_cpus=self.num_cpus, num_gpus=self.num_gpus)
        self._store = get_progress_store()
        self.versions = NodeVersionCheck()
        if self.address:  # a cluster: every node's Ray and Python against ours, mismatches logged by node
            self.versions.refresh()
        return description

    def health(self) -> dict[str, Any]:
        """The cluster as the GCS sees it now (a round trip), and every alive node's versions against ours.

        Raises when Ray is not connected or the GCS does not answer. Nodes are probed once each (cached by id).
        """
        import ray

        from worker.cluster import describe

        if self.versions is None or not ray.is_initialized():
            raise RuntimeError("not connected to Ray" + (f" (RAY_ADDRESS={self.address})" if self.address else ""))
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.versions.refresh(nodes)
        gpus = sum(float(n.get("Resources", {}).get("GPU", 0.0)) for n in nodes)
        ours = self.versions.ours

        def detailed(found: list[Any]) -> list[dict[str, Any]]:
            return [{**n.as_dict(), "detail": describe(n, ours)} for n in found]

        return {"nodes": len(nodes), "gpus": gpus, "ray_version": ours[0], "python_version": ours[1],
                "version_mismatches": detailed(self.versions.mismatches()),
                "versions_unknown": detailed(self.versions.unverified())}

    def shutdown(self) -> None:
        from worker.ray_tasks import shutdown_ray

        for job_id in list(self._refs):  # running jobs checkpoint and stop; a restart requeues them
            self._store.request_cancel.remote(job_id)
        self._refs.clear()
        self._store = None
        if self._owns_ray:
            shutdown_ray()

    def submit(self, spec: JobSpec) -> None:
        import ray

        from worker.ray_tasks import execute_job, job_options

        # The cancel flag of an earlier attempt would cancel this one at once: clear it first
        # (and wait, so the flag is gone before the task can ask).
        ray.get(self._store.clear.remote(spec.job_id), timeout=30)
        options = job_options(spec, num_gpus=self.gpus_per_job, num_cpus=self.cpus_per_job)
        options["max_retries"] = 0  # the dispatcher owns retries (bounded, visible, resumed)
        self._refs[spec.job_id] = execute_job.options(**options).remote(spec.to_dict(), self._store)
        self._cancel_at.pop(spec.job_id, None)
        self._killed.discard(spec.job_id)

    def _result(self, job_id: int, ref: Any) -> Finished:
        import ray
        from ray import exceptions as rex

        try:
            return Finished(job_id, outcome=dict(ray.get(ref, timeout=60)))
        except rex.TaskCancelledError:
            return Finished(job_id, outcome=_cancelled(job_id, "cancelled in Ray"))
        except rex.RayTaskError as exc:  # the task raised (execute_job itself should not)
            if job_id in self._killed:
                return Finished(job_id, outcome=_cancelled(job_id, "killed after the cancel grace period"))
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            return Finished(job_id, outcome=_failed(job_id, _describe(cause)))
        except rex.RayError as exc:
            if job_id in self._killed:
                return Finished(job_id, outcome=_cancelled(job_id, "killed after the cancel grace period"))
            if type(exc).__name__ in self._LOST_ERRORS:
                return Finished(job_id, lost=_describe(exc).splitlines()[0])
            return Finished(job_id, outcome=_failed(job_id, _describe(exc).splitlines()[0]))

    def finished(self) -> list[Finished]:
        import ray

        self._enforce_cancels()
        if not self._refs:
            return []
        ids = list(self._refs)
        refs = [self._refs[i] for i in ids]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        ready_set = set(ready)
        done = []
        for job_id, ref in zip(ids, refs, strict=True):
            if ref in ready_set:
                done.append(self._result(job_id, ref))
                del self._refs[job_id]
                self._cancel_at.pop(job_id, None)
        return done

    def _enforce_cancels(self) -> None:
        import ray

        now = time.monotonic()
        for job_id, asked in list(self._cancel_at.items()):
            ref = self._refs.get(job_id)
            if ref is None or job_id in self._killed or now - asked < self.cancel_grace:
                continue
            log.warning("job %s did not stop within %.0fs of its cancel; killing its Ray task", job_id,
                        self.cancel_grace)
            self._killed.add(job_id)
            ray.cancel(ref, force=True)

    def active(self) -> set[int]:
        return set(self._refs)

    def progress(self, job_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        import ray

        if not job_ids:
            return {}
        return {int(k): v for k, v in ray.get(self._store.get_many.remote(list(job_ids)), timeout=30).items()}

    def logs(self, job_id: int, offset: int = 0) -> list[str]:
        import ray

        return list(ray.get(self._store.logs.remote(job_id, offset), timeout=30))

    def cancel(self, job_id: int) -> None:
        import ray

        self._store.request_cancel.remote(job_id)
        ref = self._refs.get(job_id)
        if ref is None:
            return
        self._cancel_at.setdefault(job_id, time.monotonic())
        started = ray.get(self._store.get_many.remote([job_id]), timeout=30)
        if not started:
            # Still waiting for resources in Ray (or just starting): cancel the task itself, which
            # ends it "cancelled" without waiting for a GPU to free up.
            ray.cancel(ref, force=False)

    def release(self, job_id: int) -> None:
        if self._store is not None:
            self._store.clear.remote(job_id)
