"""Jobs on Ray: starting/joining Ray, the progress store and job owner actors, and the task that runs a job.

The server (the Ray driver, `server.executors.RayExecutor`) uses it like this::

    init_ray(settings.ray_address)                    # None: an embedded local Ray on 127.0.0.1
    store = get_progress_store(detached=cluster)
    owner = get_job_owner(store, detached=cluster)    # submits and owns the job tasks
    owner.submit.remote(spec.to_dict(), job_options(spec, num_gpus=0.25))
    ...
    ray.get(store.get_many.remote([job_id]))          # live progress
    owner.cancel.remote(job_id, started)              # the job stops at its next step -> "cancelled"
    ray.get(owner.ended.remote())                     # [{"job_id", "outcome"} or {"job_id", "lost"}]
    owner.forget.remote(job_id)                       # once the end is recorded

In a cluster both actors are detached: a job task belongs to the process that submitted it, here the
owner actor, so the jobs keep training when the server stops or dies, and a restarted server finds
them by name (`owner.jobs`) and collects their ends.

Cancellation is cooperative: `request_cancel` sets a flag that the running job reads (at most
every `CANCEL_POLL_S` seconds), checkpoints and ends with status "cancelled". The flag stays
until `clear(job_id)`; clear it before submitting the job again (a resume), or the new attempt
is cancelled at once.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from typing import Any

import ray

from worker.spec import JobOutcome, JobSpec

__all__ = [
    "init_ray",
    "shutdown_ray",
    "ProgressStore",
    "get_progress_store",
    "StoreReporter",
    "execute_job",
    "job_options",
    "PROGRESS_STORE_NAME",
    "RAY_NAMESPACE",
    "CANCEL_POLL_S",
    "JobOwner",
    "JOB_OWNER_NAME",
    "get_job_owner",
    "LOST_ERRORS",
]

PROGRESS_STORE_NAME = "liftplace-progress"
JOB_OWNER_NAME = "liftplace-jobs"
RAY_NAMESPACE = "liftplace"
CANCEL_POLL_S = 0.5  # a running job asks the store about cancellation at most this often
MAX_LOG_LINES = 5000  # per job, in the store (the full log is in output_dir/job.log)
EMBEDDED_OBJECT_STORE_BYTES = 512 * 1024 * 1024  # jobs pass small dicts; keep /dev/shm use modest


# --- starting Ray --------------------------------------------------------------------------------


# How this process's Ray was started by init_ray ("embedded" or "cluster"), so that a later
# init_ray (e.g. the dispatcher after `serve` started Ray in the main thread) describes it alike.
_started_mode: str | None = None


def _set_started(mode: str | None) -> None:
    global _started_mode
    _started_mode = mode


def _describe_cluster(mode: str) -> str:
    res = ray.cluster_resources()
    ctx = ray.get_runtime_context()
    address = getattr(ctx, "gcs_address", None) or ""
    cpus, gpus = res.get("CPU", 0), res.get("GPU", 0)
    return f"{mode} Ray at {address} ({cpus:g} CPUs, {gpus:g} GPUs)"


def _loopback_only() -> None:
    """Make a local Ray bind its services to 127.0.0.1 instead of the machine's network address.

    Ray resolves 127.0.0.1 to the node's routable IP unless clusters are disabled (its setting for
    laptops); the env var reaches Ray's own processes, the constant this (already imported) driver.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):  # another Ray version: it still works, bound more widely
        pass


def init_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
             log_to_driver: bool = True) -> str:
    """Join the Ray cluster at `address`, or start an embedded local Ray when `address` is None.

    Embedded: a new local Ray bound to 127.0.0.1 on free ports chosen by Ray (the GCS never on
    Redis's 6379), no dashboard, `num_cpus`/`num_gpus` as given (default: the machine's).
    Cluster: `ray.init(address=address)` (e.g. "ray-head:6379" or "auto"); num_cpus/num_gpus are
    the cluster's own and are ignored. Idempotent: when Ray is already initialised in this
    process it is left as it is. Returns a short description ("embedded Ray at 127.0.0.1:PORT
    (2 CPUs, 0 GPUs)"). `log_to_driver=False` keeps the workers' output in Ray's log files
    instead of this process's terminal.
    """
    if ray.is_initialized():
        return _describe_cluster(_started_mode or "connected")
    if address:
        ray.init(address=address, namespace=RAY_NAMESPACE, ignore_reinit_error=True, log_to_driver=log_to_driver)
        _set_started("cluster")
        return _describe_cluster("cluster")
    _loopback_only()
    saved_port = os.environ.pop("RAY_GCS_SERVER_PORT", None)  # 0 = a free port picked by the GCS itself
    try:
        ray.init(
            address="local",  # a new cluster even if RAY_ADDRESS is set in the environment
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            namespace=RAY_NAMESPACE,
            include_dashboard=False,
            object_store_memory=EMBEDDED_OBJECT_STORE_BYTES,
            ignore_reinit_error=True,
            log_to_driver=log_to_driver,
            _node_ip_address="127.0.0.1",
        )
    finally:
        if saved_port is not None:
            os.environ["RAY_GCS_SERVER_PORT"] = saved_port
    _set_started("embedded")
    return _describe_cluster("embedded")


def shutdown_ray() -> None:
    """Disconnect from (embedded: stop) Ray; a no-op when it is not running."""
    if ray.is_initialized():
        ray.shutdown()
    _set_started(None)


# --- the progress store --------------------------------------------------------------------------


@ray.remote(num_cpus=0)
class ProgressStore:
    """Live state of running jobs, shared by the driver (server) and the job tasks.

    Progress is the latest report per job (with the MLflow run the job opened, once it did); logs are
    lines per job (read with an offset to page); a cancel flag per job is set by the server and read by
    the job.
    """

    def __init__(self) -> None:
        self._progress: dict[int, dict[str, Any]] = {}
        self._cancel: set[int] = set()
        self._logs: dict[int, list[str]] = {}

    def report(self, job_id: int, step: int, total: int, metrics: dict[str, float]) -> None:
        run_id = self._progress.get(int(job_id), {}).get("mlflow_run_id")
        self._progress[int(job_id)] = {"step": int(step), "total": int(total), "metrics": dict(metrics),
                                       "updated_at": time.time(), "mlflow_run_id": run_id}

    def set_run(self, job_id: int, run_id: str) -> None:
        """The MLflow run the job opened (reported with its progress from now on, as "mlflow_run_id")."""
        entry = self._progress.setdefault(int(job_id), {"step": 0, "total": 0, "metrics": {},
                                                        "updated_at": time.time()})
        entry["mlflow_run_id"] = str(run_id)

    def get(self, job_id: int) -> dict | None:
        return self._progress.get(int(job_id))

    def get_many(self, job_ids: list[int]) -> dict[int, dict]:
        """{job_id: progress} for the given jobs that have reported (others are absent)."""
        return {int(j): self._progress[int(j)] for j in job_ids if int(j) in self._progress}

    def request_cancel(self, job_id: int) -> None:
        self._cancel.add(int(job_id))

    def is_cancelled(self, job_id: int) -> bool:
        return int(job_id) in self._cancel

    def clear(self, job_id: int) -> None:
        """Forget a job's progress, logs and cancel flag."""
        job_id = int(job_id)
        self._progress.pop(job_id, None)
        self._cancel.discard(job_id)
        self._logs.pop(job_id, None)

    def append_log(self, job_id: int, line: str) -> None:
        lines = self._logs.setdefault(int(job_id), [])
        if len(lines) < MAX_LOG_LINES:
            lines.append(str(line))
        elif len(lines) == MAX_LOG_LINES:
            lines.append(f"... (log truncated at {MAX_LOG_LINES} lines; the full log is job.log in the output folder)")

    def logs(self, job_id: int, offset: int = 0) -> list[str]:
        return list(self._logs.get(int(job_id), [])[max(0, int(offset)):])


def get_progress_store(name: str = PROGRESS_STORE_NAME, *, detached: bool = False):
    """The named ProgressStore actor of this Ray namespace, created on first use.

    It lives with the driver, or with `detached` until it is killed: then the progress, logs and
    cancel flags of running jobs outlive the server that started them (cluster mode).
    """
    options: dict[str, Any] = {"name": name, "get_if_exists": True}
    if detached:
        options.update(lifetime="detached", scheduling_strategy=_this_node())
    return ProgressStore.options(**options).remote()


def _this_node() -> Any:
    """Affinity to the driver's node: where the API runs (the head), never a GPU node that may go.

    Hard, not soft: with soft affinity Ray placed the job owner on the GPU node of a two-node cluster
    whose head had no CPUs (tests/reliability/test_two_nodes.py), and every job died with that node.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


class StoreReporter:
    """A `worker.run.Reporter` backed by a ProgressStore actor.

    progress and log are fire-and-forget calls; should_cancel asks the store at most every
    `poll_s` seconds without ever waiting for the answer, and remembers a cancel once seen.

    It never calls `ray.get` or `ray.wait` on the task's main thread: a task blocked in either lends its
    CPU back to Ray, which starts another job on it (more jobs than CPUs, each slower), even for a
    `ray.wait(timeout=0)`. Answers are read through `ObjectRef.future()` (a callback) instead.
    """

    def __init__(self, store, poll_s: float = CANCEL_POLL_S):
        self.store = store
        self.poll_s = poll_s
        self._checked_at = -float("inf")
        self._cancelled = False
        self._pending: concurrent.futures.Future | None = None  # an is_cancelled request not read yet

    @staticmethod
    def _answer(future: concurrent.futures.Future, timeout_s: float) -> bool:
        """The store's answer, waited for without Ray's blocking calls; False if none in time."""
        try:
            return bool(future.result(timeout=timeout_s))
        except Exception:  # a store that does not answer (in time) never cancels a job
            return False

    def progress(self, job_id: int, step: int, total: int, metrics: dict[str, float]) -> None:
        self.store.report.remote(job_id, step, total, metrics)

    def log(self, job_id: int, line: str) -> None:
        self.store.append_log.remote(job_id, line)

    def run_opened(self, job_id: int, run_id: str) -> None:
        self.store.set_run.remote(job_id, run_id)

    def should_cancel(self, job_id: int) -> bool:
        if self._cancelled:
            return True
        now = time.monotonic()
        if self._checked_at == -float("inf"):  # the first check, before any work: wait for it
            self._checked_at = now
            self._cancelled = self._answer(self.store.is_cancelled.remote(job_id).future(), 10.0)
            return self._cancelled
        if self._pending is not None:
            if self._pending.done():
                self._cancelled = self._answer(self._pending, 0.0)
                self._pending = None
        elif now - self._checked_at >= self.poll_s:
            self._checked_at = now
            self._pending = self.store.is_cancelled.remote(job_id).future()
        return self._cancelled

    def flush(self, job_id: int, timeout_s: float = 30.0) -> None:
        """Wait until the store has taken every line and report sent before (the job's end).

        log and progress are fire-and-forget; Ray runs an actor's calls from one caller in
        order, so one answered call means all earlier ones are in. Without it the server, which
        reads the logs as soon as the task returns, could miss the last lines (e.g. "ended").
        """
        try:
            self.store.get.remote(job_id).future().result(timeout=timeout_s)
        except Exception:  # the store is gone or slow: the lines are in job.log all the same
            pass


# --- the job owner ---------------------------------------------------------------------------------


# Ray errors that mean the worker, its node or its object went away: the job may be retried.
LOST_ERRORS = (
    "WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError", "LocalRayletDiedError",
    "OutOfMemoryError", "ObjectReconstructionFailedError", "ObjectFetchTimedOutError", "RaySystemError",
    "ActorDiedError",
)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def task_result(job_id: int, ref: Any, *, killed: bool = False) -> dict[str, Any]:
    """How a job task that Ray reports ready ended: {"job_id", "outcome": JobOutcome dict} or {"job_id", "lost"}.

    "lost" (the worker, its node or its object went away) means the job may be retried; a task that
    raised, or was cancelled or `killed` after its cancel grace, has an outcome.
    """
    from ray import exceptions as rex

    def outcome(status: str, reason: str) -> dict[str, Any]:
        return {"job_id": job_id, "outcome": JobOutcome(job_id=job_id, status=status, reason=reason).to_dict()}

    try:
        return {"job_id": job_id, "outcome": dict(ray.get(ref, timeout=60))}
    except rex.TaskCancelledError:
        return outcome("cancelled", "cancelled in Ray")
    except rex.RayTaskError as exc:  # the task raised (execute_job itself should not)
        if killed:
            return outcome("cancelled", "killed after the cancel grace period")
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return outcome("failed", _describe(cause))
    except rex.RayError as exc:
        if killed:
            return outcome("cancelled", "killed after the cancel grace period")
        if type(exc).__name__ in LOST_ERRORS:
            return {"job_id": job_id, "lost": _describe(exc).splitlines()[0]}
        return outcome("failed", _describe(exc).splitlines()[0])


@ray.remote(num_cpus=0, max_restarts=0)
class JobOwner:
    """Submits the job tasks of one liftplace service and owns them in Ray.

    A Ray task dies with the process that submitted it (its owner). The server hands its jobs to this
    actor instead of submitting them itself: made detached (cluster mode), the actor and its tasks
    outlive the server's process, and a restarted server finds it by name, asks which jobs it holds
    (`jobs`) and collects their ends (`ended`) as the first one would have: no requeue, no new
    attempt. A job's end stays here until the server has recorded it and calls `forget`, so a
    server that dies between the two records it on its next start.

    Cancellation: `cancel` sets the job's flag in the progress store (the job checkpoints and ends
    "cancelled"); a task that has not started is cancelled in Ray at once, one that does not stop
    within `cancel_grace` seconds is killed. Every call is short; none waits on a job.
    """

    def __init__(self, store: Any, cancel_grace: float = 30.0) -> None:
        self.store = store
        self.cancel_grace = float(cancel_grace)
        self._jobs: dict[int, dict[str, Any]] = {}  # job_id -> attempt, ref, cancel_at, killed, ended

    def ping(self) -> int:
        """The number of jobs held (running, or ended and not forgotten yet)."""
        return len(self._jobs)

    def submit(self, spec_dict: dict, options: dict, task: Any = None) -> None:
        """Start a job's task (`options`: `job_options`); an earlier attempt still held is stopped first.

        `task`: the remote function to run it with, default `execute_job` (the server passes the one it
        sees, so a stand-in set there, e.g. by a test, is the one that runs).
        """
        job_id = int(spec_dict["job_id"])
        self.discard(job_id)
        # The cancel flag of an earlier attempt would cancel this one at once: clear it first (and
        # wait, so the flag is gone before the task can ask).
        ray.get(self.store.clear.remote(job_id), timeout=30)
        ref = (task or execute_job).options(**options).remote(spec_dict, self.store)
        self._jobs[job_id] = {"attempt": int(spec_dict.get("attempt", 1)), "ref": ref, "cancel_at": None,
                              "killed": False, "ended": None}

    def jobs(self) -> dict[int, int]:
        """{job_id: attempt} of every job held."""
        return {job_id: entry["attempt"] for job_id, entry in self._jobs.items()}

    def ended(self) -> list[dict[str, Any]]:
        """The jobs held that ended (`task_result` dicts), until forgotten; enforces cancel grace periods."""
        self._enforce_cancels()
        running = [(job_id, e) for job_id, e in self._jobs.items() if e["ended"] is None]
        if running:
            refs = [e["ref"] for _, e in running]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            ready_set = set(ready)
            for job_id, e in running:
                if e["ref"] in ready_set:
                    e["ended"] = task_result(job_id, e["ref"], killed=e["killed"])
        return [e["ended"] for e in self._jobs.values() if e["ended"] is not None]

    def forget(self, job_id: int) -> None:
        """Drop an ended job whose end the server recorded."""
        entry = self._jobs.get(int(job_id))
        if entry is not None and entry["ended"] is not None:
            del self._jobs[int(job_id)]

    def discard(self, job_id: int) -> None:
        """Stop (kill) and drop a job the server no longer wants here, running or not."""
        entry = self._jobs.pop(int(job_id), None)
        if entry is not None and entry["ended"] is None:
            ray.cancel(entry["ref"], force=True)

    def cancel(self, job_id: int, started: bool) -> None:
        """Ask a job to stop (see the class docstring); `started`: whether it has reported progress."""
        self.store.request_cancel.remote(int(job_id))
        entry = self._jobs.get(int(job_id))
        if entry is None or entry["ended"] is not None:
            return
        if entry["cancel_at"] is None:
            entry["cancel_at"] = time.monotonic()
        if not started:
            # Still waiting for resources in Ray (or just starting): cancel the task itself, which
            # ends it "cancelled" without waiting for a GPU to free up.
            ray.cancel(entry["ref"], force=False)

    def _enforce_cancels(self) -> None:
        now = time.monotonic()
        for job_id, e in self._jobs.items():
            waiting = e["cancel_at"] is None or now - e["cancel_at"] < self.cancel_grace
            if e["ended"] is not None or e["killed"] or waiting:
                continue
            print(f"job {job_id} did not stop within {self.cancel_grace:.0f}s of its cancel; killing its Ray task",
                  flush=True)
            e["killed"] = True
            ray.cancel(e["ref"], force=True)


def get_job_owner(store: Any, *, detached: bool, cancel_grace: float = 30.0, name: str = JOB_OWNER_NAME):
    """The named JobOwner of this Ray namespace, created on first use (see JobOwner).

    `detached`: it lives until killed, on the driver's node if it can (cluster mode); else it lives
    and dies with the driver.
    """
    options: dict[str, Any] = {"name": name, "get_if_exists": True}
    if detached:
        options.update(lifetime="detached", scheduling_strategy=_this_node())
    return JobOwner.options(**options).remote(store, cancel_grace)


# --- the job task ---------------------------------------------------------------------------------


def _assigned(resource: str) -> float:
    try:
        return float(ray.get_runtime_context().get_assigned_resources().get(resource, 0.0))
    except Exception:
        return 0.0


@ray.remote(max_retries=0, num_cpus=1)
def execute_job(spec_dict: dict, store=None) -> dict:
    """Run one job on a Ray worker; returns `JobOutcome.to_dict()` (never raises for job problems).

    Uses cuda when the task holds GPU resources (Ray sets CUDA_VISIBLE_DEVICES), else the CPU,
    with as many torch threads as CPUs assigned. Reports through `store` when given.
    """
    try:
        spec = JobSpec.from_dict(dict(spec_dict))
    except Exception as exc:
        job_id = spec_dict.get("job_id", -1) if isinstance(spec_dict, dict) else -1
        return JobOutcome(job_id=job_id, status="failed", reason=f"bad job spec: {type(exc).__name__}: {exc}").to_dict()
    import torch

    from worker.run import run_job

    cpus = _assigned("CPU")
    if cpus >= 1:
        torch.set_num_threads(int(cpus))
    device = None if _assigned("GPU") > 0 else "cpu"  # a CPU-only task never grabs a visible GPU
    reporter = StoreReporter(store) if store is not None else None
    try:
        return run_job(spec, reporter=reporter, device=device).to_dict()
    finally:
        if reporter is not None:
            reporter.flush(spec.job_id)


def job_options(spec: JobSpec, *, num_gpus: float = 0.0, num_cpus: float = 1.0) -> dict:
    """Options for `execute_job.options(**job_options(spec, ...))`.

    num_gpus may be a fraction (several tiny students share one GPU) or a whole number; when the
    cluster has no GPU at all the job runs on CPUs (num_gpus 0). Call after `init_ray`.
    """
    if num_gpus < 0 or num_cpus < 0:
        raise ValueError(f"num_gpus/num_cpus: expected non-negative numbers, got {num_gpus!r}/{num_cpus!r}")
    if num_gpus > 1 and num_gpus != int(num_gpus):
        raise ValueError(f"num_gpus: a fraction must be at most 1 (Ray's rule), got {num_gpus!r}")
    cluster_gpus = ray.cluster_resources().get("GPU", 0.0) if ray.is_initialized() else 0.0
    gpus = float(num_gpus) if cluster_gpus > 0 else 0.0
    return {
        "num_cpus": float(num_cpus),
        "num_gpus": gpus,
        "max_retries": 0,
        "name": f"liftplace-job-{spec.job_id}-{spec.kind}",
    }
