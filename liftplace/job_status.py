"""The statuses of a job on the service, as its API reports them: one definition for the service's
models, the client that follows a study, the report and the browser pages.

A job's life: ``queued`` -> ``dispatched`` (handed to the executor, waiting there for a worker) ->
``running`` (the worker has started it) -> one of the terminal statuses.
"""

from __future__ import annotations

__all__ = ["IN_FLIGHT_STATUSES", "JOB_STATUSES", "NOT_ENDED_STATUSES", "RETRYABLE_STATUSES", "TERMINAL_STATUSES"]

JOB_STATUSES: tuple[str, ...] = ("queued", "dispatched", "running", "succeeded", "failed", "diverged", "cancelled")
TERMINAL_STATUSES: tuple[str, ...] = ("succeeded", "failed", "diverged", "cancelled")
IN_FLIGHT_STATUSES: tuple[str, ...] = ("dispatched", "running")  # held by a dispatcher and its executor
NOT_ENDED_STATUSES: tuple[str, ...] = ("queued", *IN_FLIGHT_STATUSES)  # a result may still come
RETRYABLE_STATUSES: tuple[str, ...] = ("failed", "diverged", "cancelled")  # a retry resumes from the checkpoint
