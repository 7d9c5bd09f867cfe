"""Jobs on Ray: starting/joining Ray, the progress store actor, and the task that runs a job.

The server (the Ray driver) uses it like this::

    init_ray(settings.ray_address)                    # None: an embedded local Ray on 127.0.0.1
    store = get_progress_store()
    ref = execute_job.options(**job_options(spec, num_gpus=0.25)).remote(spec.to_dict(), store)
    ...
    ray.get(store.get_many.remote([job_id]))          # live progress
    store.request_cancel.remote(job_id)               # the job stops at its next step -> "cancelled"
    outcome = JobOutcome(**ray.get(ref))              # a dict, also for failed jobs

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
]

PROGRESS_STORE_NAME = "liftplace-progress"
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


def get_progress_store(name: str = PROGRESS_STORE_NAME):
    """The named ProgressStore actor of this Ray namespace, created on first use (lives with the driver)."""
    return ProgressStore.options(name=name, get_if_exists=True).remote()


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
