"""Test doubles and helpers of the server tests (imported by conftest and the test modules).

`FakeRunner` acts out a worker in a ThreadExecutor; `FakeTracking` stands in for MLflow;
`Harness` wraps a started app and drives its dispatcher round by round.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from liftplace.methods import PAPER_METHOD
from server.executors import WorkerLost
from server.settings import Settings
from worker.spec import JobSpec

MLFLOW_UI = "http://mlflow.test"


# --- a worker acted out ----------------------------------------------------------------------------


FAKE_ENVIRONMENT = {"cpu": "Fake CPU 9000", "threads": "1", "device": "cpu", "torch": "0.0"}


class FakeRunner:
    """Acts out a worker: reports progress and logs, then ends as `plan(spec)` says.

    `plan(spec)` returns an outcome dict (fields of JobOutcome; job_id is filled in), or raises
    (WorkerLost acts out a dead worker). Default: succeeded with fid = 10 + seed. While `hold`
    is set, every job waits (reporting progress) until `release()` or a cancel.
    """

    def __init__(self) -> None:
        self.plan: Callable[[JobSpec], dict[str, Any]] = lambda spec: {"status": "succeeded", "fid": 10.0 + spec.seed}
        self.specs: list[JobSpec] = []
        self.hold = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()

    def release(self) -> None:
        self._release.set()

    def __call__(self, spec: JobSpec, reporter: Any) -> dict[str, Any]:
        with self._lock:
            self.specs.append(spec)
        reporter.log(spec.job_id, f"fake worker: job {spec.job_id} attempt {spec.attempt}")
        reporter.progress(spec.job_id, 1, spec.steps, {"loss_total": 0.5, "loss_nan": float("nan")})
        while self.hold.is_set() and not self._release.is_set():
            if reporter.should_cancel(spec.job_id):
                reporter.log(spec.job_id, "fake worker: cancelled")
                return {"job_id": spec.job_id, "status": "cancelled", "reason": "cancel requested",
                        "steps_done": 1, "mlflow_run_id": f"run-{spec.job_id}"}
            time.sleep(0.01)
        outcome = {"mlflow_run_id": f"run-{spec.job_id}", "fid_metric": "fid_digits", "steps_done": spec.steps,
                   "metrics": {"loss_total": 0.25}, "parameters": 1234, "environment": FAKE_ENVIRONMENT,
                   **self.plan(spec)}
        outcome["job_id"] = spec.job_id
        if spec.kind == "teacher" and outcome["status"] == "succeeded":
            outcome.setdefault("model_dir", str(Path(spec.output_dir) / "model"))
        return outcome

    def specs_of(self, job_id: int) -> list[JobSpec]:
        return [s for s in self.specs if s.job_id == job_id]


def lost_until(attempt: int, then: dict[str, Any] | None = None) -> Callable[[JobSpec], dict[str, Any]]:
    """A plan whose worker dies on every attempt before `attempt`."""

    def plan(spec: JobSpec) -> dict[str, Any]:
        if spec.attempt < attempt:
            raise WorkerLost(f"worker died on attempt {spec.attempt}")
        return then or {"status": "succeeded", "fid": 1.0}

    return plan


class FakeTracking:
    """Stands in for server.tracking.Tracking: records parent runs and cell logs, no MLflow."""

    def __init__(self) -> None:
        self.ui_url = MLFLOW_UI
        self.study_runs: list[tuple[int, str, dict[str, Any]]] = []
        self.study_axes: dict[int, dict[str, list[Any]]] = {}  # the axes each parent run was started with
        self.cell_logs: list[dict[str, Any]] = []

    def experiment_id(self) -> str:
        return "7"

    def start_study_run(self, study_id: int, name: str, params: dict[str, Any],
                        axes: dict[str, list[Any]] | None = None) -> tuple[str, str]:
        self.study_runs.append((study_id, name, dict(params)))
        self.study_axes[study_id] = dict(axes or {})
        return "7", f"parent-{study_id}"

    def log_cells(self, run_id: str, cells: list[dict[str, Any]], *, tables: dict[str, str], complete: bool) -> None:
        self.cell_logs.append({"run_id": run_id, "cells": cells, "tables": tables, "complete": complete})


# --- the app under test ----------------------------------------------------------------------------


class Harness:
    """A running app (TestClient) with its fake runner; the dispatcher is driven by `tick`."""

    def __init__(self, client: TestClient, runner: FakeRunner, tracking: FakeTracking | None) -> None:
        self.client = client
        self.runner = runner
        self.tracking = tracking
        self.app = client.app
        self.dispatcher = self.app.state.dispatcher  # type: ignore[attr-defined]
        self.settings: Settings = self.app.state.settings  # type: ignore[attr-defined]

    def tick(self) -> None:
        self.dispatcher.tick()

    def tick_until(self, predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.tick()
            if predicate():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.01)

    def job(self, job_id: int) -> dict[str, Any]:
        r = self.client.get(f"/api/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, job_id: int, *statuses: str, timeout: float = 20.0) -> dict[str, Any]:
        self.tick_until(lambda: self.job(job_id)["status"] in statuses, timeout, f"job {job_id} to be {statuses}")
        return self.job(job_id)

    def submit(self, expect: int = 201, **body: Any) -> dict[str, Any]:
        body.setdefault("teacher", "t-small")
        body.setdefault("method", PAPER_METHOD)
        r = self.client.post("/api/jobs", json=body)
        assert r.status_code == expect, r.text
        return r.json()

    def job_count(self) -> int:
        return self.client.get("/api/jobs").json()["total"]


def make_local_teacher(root: Path, name: str, parameters: int = 5000) -> Path:
    """A minimal 'diffusers folder' whose liftplace.json records its size (nothing is loaded)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    (folder / "liftplace.json").write_text(f'{{"parameters": {parameters}}}')
    return folder
