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

    def attached(self) -> dict[int, int]:
        """{job_id: attempt} of jobs an earlier server left running in the backend, known since `start`.

        They count as submitted (`active`, and their ends come through `finished`) until `discard`ed.
        """
        ...

    def discard(self, job_id: int) -> None:
        """Stop and forget an attached job that the database does not expect to run."""
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

    def attached(self) -> dict[int, int]:
        return {}  # in-process jobs end with the process

    def discard(self, job_id: int) -> None:
        self.cancel(job_id)


# --- Ray -----------------------------------------------------------------------------------------


class RayExecutor:
    """Hands jobs to Ray as `worker.ray_tasks.execute_job` tasks with resource requests.

    Each job asks for `gpus_per_job` GPUs (a fraction lets several tiny students share one GPU)
    when the cluster has GPUs, else for `cpus_per_job` CPUs only; Ray holds a job until the
    resources are free. Ray's own task retries are off (max_retries=0): the dispatcher retries
    a job whose worker died, with bounded attempts, and the worker resumes from its checkpoint.

    The tasks are submitted and owned by a named `worker.ray_tasks.JobOwner` actor, not by this
    process. In a cluster (`address` given) the owner and the progress store are detached: the
    jobs keep training when this process stops or dies, and the next server's executor finds them
    (`attached`) and collects their ends. Embedded (no `address`), they live and die with this
    process's Ray, and `shutdown` asks the running jobs to stop (they checkpoint; a restart
    requeues them).

    Cancellation asks the job through the progress store (it checkpoints and ends "cancelled");
    a job that has not started is cancelled in Ray at once, and one that does not stop within
    `cancel_grace` seconds is killed (ray.cancel force).
    """

    def __init__(self, address: str | None = None, *, gpus_per_job: float = 1.0, cpus_per_job: float = 1.0,
                 cancel_grace: float = 30.0, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
        self.address = address
        self.detached = bool(address)  # jobs outlive this process only in a cluster it did not start
        self.gpus_per_job = gpus_per_job
        self.cpus_per_job = cpus_per_job
        self.cancel_grace = cancel_grace
        self.num_cpus, self.num_gpus = num_cpus, num_gpus  # embedded Ray only
        self._store: Any = None
        self._owner: Any = None
        self._active: dict[int, int] = {}  # job_id -> attempt, held by the owner and not reported ended yet
        self._attached: dict[int, int] = {}  # what the owner held when this executor started
        self._reported: set[int] = set()  # ended jobs returned by finished(), not released yet
        self._lost: list[Finished] = []  # jobs of a job owner that died, for the next finished()
        self._owns_ray = False
        self.versions: Any = None  # worker.cluster.NodeVersionCheck, once started

    def start(self) -> str:
        import ray

        from worker.cluster import NodeVersionCheck
        from worker.ray_tasks import get_job_owner, get_progress_store, init_ray

        self._owns_ray = not ray.is_initialized()  # a Ray started before us (a notebook, a test) is left running
        description = init_ray(self.address, num_cpus=self.num_cpus, num_gpus=self.num_gpus)
        self._store = get_progress_store(detached=self.detached)
        self._owner = get_job_owner(self._store, detached=self.detached, cancel_grace=self.cancel_grace)
        held = {int(k): int(v) for k, v in ray.get(self._owner.jobs.remote(), timeout=60).items()}
        self._attached = dict(held)
        self._active = dict(held)
        self._reported.clear()
        self._lost.clear()
        self.versions = NodeVersionCheck()
        if self.address:  # a cluster: every node's Ray and Python against ours, mismatches logged by node
            self.versions.refresh()
        if held:
            description += f"; {len(held)} job(s) still held in Ray from an earlier server"
        return description

    def attached(self) -> dict[int, int]:
        """{job_id: attempt} of the jobs an earlier server left in Ray (running, or ended unrecorded)."""
        return dict(self._attached)

    def discard(self, job_id: int) -> None:
        """Stop and forget a job held in Ray that the database no longer has in flight (at start-up)."""
        import ray

        self._active.pop(job_id, None)
        self._attached.pop(job_id, None)
        ray.get(self._owner.discard.remote(job_id), timeout=30)
        self._store.clear.remote(job_id)

    def health(self) -> dict[str, Any]:
        """The cluster as the GCS sees it now (a round trip), and every alive node's versions against ours.

        Raises when Ray is not connected, the GCS does not answer or the job owner actor is gone. Nodes
        are probed once each (cached by id).
        """
        import ray

        from worker.cluster import describe

        if self.versions is None or not ray.is_initialized():
            raise RuntimeError("not connected to Ray" + (f" (RAY_ADDRESS={self.address})" if self.address else ""))
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.versions.refresh(nodes)
        gpus = sum(float(n.get("Resources", {}).get("GPU", 0.0)) for n in nodes)
        held = ray.get(self._owner.ping.remote(), timeout=10)  # raises when the owner died
        ours = self.versions.ours

        def detailed(found: list[Any]) -> list[dict[str, Any]]:
            return [{**n.as_dict(), "detail": describe(n, ours)} for n in found]

        return {"nodes": len(nodes), "gpus": gpus, "ray_version": ours[0], "python_version": ours[1],
                "jobs_in_ray": held, "jobs_outlive_server": self.detached,
                "version_mismatches": detailed(self.versions.mismatches()),
                "versions_unknown": detailed(self.versions.unverified())}

    def shutdown(self) -> None:
        import ray

        from worker.ray_tasks import shutdown_ray

        if not self.detached and self._store is not None:
            for job_id in list(self._active):  # running jobs checkpoint and stop; a restart requeues them
                self._store.request_cancel.remote(job_id)
            if self._owner is not None and not self._owns_ray:  # a shared Ray: the next executor starts afresh
                ray.kill(self._owner)
        # detached: the jobs go on training in the cluster; the next server re-attaches to them
        self._active.clear()
        self._reported.clear()
        self._store = self._owner = None
        if self._owns_ray:
            shutdown_ray()

    def _owner_died(self, exc: BaseException) -> None:
        """The job owner died (its node went down), and its tasks with it: every job it held is lost (the
        next `finished` reports them, and the dispatcher requeues them) and a new owner takes its name."""
        import ray

        from worker.ray_tasks import get_job_owner

        log.error("the job owner actor died (%s); its %d job(s) are lost", _describe(exc).splitlines()[0],
                  len(self._active))
        self._lost.extend(Finished(job_id, lost="the job owner actor in Ray died") for job_id in self._active
                          if job_id not in self._reported)
        self._active.clear()
        self._reported.clear()
        try:  # frees its name at once: a lookup by name could otherwise still return the dead actor
            ray.kill(self._owner, no_restart=True)
        except Exception as kill_exc:
            log.debug("killing the dead job owner: %s", kill_exc)
        self._owner = get_job_owner(self._store, detached=self.detached, cancel_grace=self.cancel_grace)

    def submit(self, spec: JobSpec) -> None:
        import ray
        from ray import exceptions as rex

        from worker import ray_tasks

        options = ray_tasks.job_options(spec, num_gpus=self.gpus_per_job, num_cpus=self.cpus_per_job)
        options["max_retries"] = 0  # the dispatcher owns retries (bounded, visible, resumed)
        try:
            ray.get(self._owner.submit.remote(spec.to_dict(), options, ray_tasks.execute_job), timeout=60)
        except rex.ActorDiedError as exc:  # found dead here first: a new owner, and the job goes to it
            self._owner_died(exc)
            ray.get(self._owner.submit.remote(spec.to_dict(), options, ray_tasks.execute_job), timeout=60)
        self._active[spec.job_id] = spec.attempt
        self._reported.discard(spec.job_id)

    def finished(self) -> list[Finished]:
        import ray
        from ray import exceptions as rex

        lost, self._lost = self._lost, []
        if not self._active:
            return lost
        try:
            ended = ray.get(self._owner.ended.remote(), timeout=60)
        except rex.ActorUnavailableError as exc:  # unreachable for now; Ray says "died" once it knows
            log.warning("the job owner actor does not answer (%s); asking again next round",
                        _describe(exc).splitlines()[0])
            return lost
        except rex.RayActorError as exc:  # the owner died, and its tasks with it: every job is lost
            self._owner_died(exc)
            lost, self._lost = lost + self._lost, []
            return lost
        done = lost
        for item in ended:
            job_id = int(item["job_id"])
            if job_id not in self._active or job_id in self._reported:
                continue
            self._reported.add(job_id)
            done.append(Finished(job_id, outcome=item.get("outcome"), lost=item.get("lost")))
        return done

    def active(self) -> set[int]:
        return set(self._active)

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

        started = bool(ray.get(self._store.get_many.remote([job_id]), timeout=30))
        self._owner.cancel.remote(job_id, started)

    def release(self, job_id: int) -> None:
        self._active.pop(job_id, None)
        self._reported.discard(job_id)
        if self._owner is not None:
            self._owner.forget.remote(job_id)
        if self._store is not None:
            self._store.clear.remote(job_id)
