"""A job's dashboard data from its MLflow run, for jobs whose output folder is on another host.

In cluster mode (`LIFTPLACE_STORAGE=mlflow`) a job runs on whichever GPU host Ray picks, and its
output folder (metrics.jsonl, samples.png, error_map.png, job.log) stays on that host. Its MLflow run
holds the same things: the metric history (bounded, `worker.history`: one point per window, the
window's mean) and the files as artifacts at the run's root. The dashboard endpoints read the local
folder first and come here when it lacks what they need.

Files are downloaded once per (job, run, attempt) into ``<data dir>/remote/<job id>/<run id>/attempt-<n>/``
(a temporary name, then an atomic rename): an attempt's files do not change once uploaded (at its end; a
running job has none yet), and a retried job's next attempt gets a folder of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from server.models import Job
from server.settings import Settings
from worker.history import spread_names

__all__ = ["run_file", "run_metrics", "reads_runs"]

REMOTE_SUBDIR = "remote"


def reads_runs(settings: Settings, job: Job) -> bool:
    """Whether the job's data may be read from its MLflow run (cluster mode, a run recorded)."""
    return settings.storage == "mlflow" and bool(job.mlflow_run_id)


def _client(settings: Settings) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=str(settings.mlflow_tracking_uri))


METRICS_CACHE = "metrics.json"  # an ended job's history, as read from its run


def run_metrics(settings: Settings, job: Job) -> tuple[list[int], dict[str, list[float | None]]]:
    """(steps ascending, {metric: value per step, None where absent}) from the job's run's metric history.

    The per-window extremes (`<name>_min`, `<name>_max`) are left out, as metrics.jsonl has none. A
    running job's history is read afresh (one MLflow call per metric); an ended job's is read once and
    kept in ``<data dir>/remote/<job id>/<run id>/attempt-<n>/metrics.json`` (written to a temporary name, then
    renamed), since its run's history no longer changes.
    """
    run_id = str(job.mlflow_run_id)
    entry = _folder(settings, job) / METRICS_CACHE
    if job.ended and entry.is_file():
        cached = json.loads(entry.read_text())
        return cached["steps"], cached["series"]
    steps, series = _read_history(settings, run_id)
    if job.ended:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{METRICS_CACHE}.tmp-", dir=entry.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({"steps": steps, "series": series}, f)
        os.replace(tmp, entry)
    return steps, series


def _read_history(settings: Settings, run_id: str) -> tuple[list[int], dict[str, list[float | None]]]:
    client = _client(settings)
    names = sorted(client.get_run(run_id).data.metrics)
    extremes = {x for name in names for x in spread_names(name)}
    by_name: dict[str, dict[int, float]] = {}
    for name in names:
        if name in extremes:
            continue
        by_name[name] = {int(m.step): float(m.value) for m in client.get_metric_history(run_id, name)}
    steps = sorted({s for values in by_name.values() for s in values})
    return steps, {name: [values.get(s) for s in steps] for name, values in by_name.items()}


def _folder(settings: Settings, job: Job) -> Path:
    """Where the API host keeps what it read from the job's run: per attempt, as a retry (`POST
    /api/jobs/<id>/retry`) adds to the same run."""
    return settings.data_dir / REMOTE_SUBDIR / str(job.id) / str(job.mlflow_run_id) / f"attempt-{job.attempts}"


def run_file(settings: Settings, job: Job, name: str) -> Path | None:
    """The artifact `name` at the root of the job's run, as a local file (downloaded once per attempt); None
    when the run has none."""
    import mlflow.artifacts

    run_id = str(job.mlflow_run_id)
    entry = _folder(settings, job) / name
    if entry.is_file():
        return entry
    if name not in {f.path for f in _client(settings).list_artifacts(run_id)}:
        return None
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=entry.parent))
    try:
        got = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(tmp),
                                                  tracking_uri=str(settings.mlflow_tracking_uri))
        os.replace(got, entry)  # another request may have put it there meanwhile: the same bytes
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry
