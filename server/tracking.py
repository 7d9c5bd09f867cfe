"""MLflow on the server side: the experiment, one parent run per study, cell summaries, URLs.

Each seed of a study is its own MLflow run, opened by the worker as a nested run of the
study's parent run (`JobSpec.mlflow_parent_run_id`). When a (teacher, method) cell ends, its
FID mean, std, collapses and n are logged to the parent run as ``fid_mean/<teacher>/<method>``
and so on (a study with axes appends the cell's values, ``.../coarse:l1``), so MLflow shows the
cells side by side; the whole table goes along as artifacts. The parent run carries the study's
axes as params (``axes``, ``axis.<option>``) and a tag (``axes``).

In cluster mode (``LIFTPLACE_STORAGE=mlflow``) it also registers teachers registered from a folder
(local, shipped) in MLflow's model registry (`Tracking.register_teacher`, see worker.teacher_store).

Only `MlflowClient` is used (no fluent global state): the server may share its process with
in-process jobs that track to MLflow themselves.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from worker.retry import mlflow_retry, quiet_mlflow_http_retries
from worker.tracking import KIND_TAG, source_tags

log = logging.getLogger(__name__)

STUDY_RUN_KIND = "study"  # the value of KIND_TAG on a study's parent run (jobs: "distill", "teacher")
REGISTER_RUN_KIND = "register"  # KIND_TAG of the run that holds the files of a teacher registered from a folder
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /:]")


def run_url(ui_url: str, experiment_id: str | None, run_id: str | None) -> str | None:
    """The MLflow UI page of a run: {ui}/#/experiments/{exp_id}/runs/{run_id}."""
    if not experiment_id or not run_id:
        return None
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def runs_filter(study_id: int, teacher: str | None = None, method: str | None = None,
                axes: Mapping[str, Any] | None = None) -> str:
    """MLflow's search filter for a study's distillation runs (no teacher-training run, no parent run),
    or one (teacher, method, axis values) cell's: what the dashboard's compare links hold, for MLflow's
    search box. An axis value is matched on the run's param of that option (a null one is not logged)."""
    clauses = [f"tags.study_id = '{study_id}'", f"tags.`{KIND_TAG}` = 'distill'"]
    if teacher is not None:
        clauses.append(f"tags.teacher = '{teacher}'")
    if method is not None:
        clauses.append(f"tags.method = '{method}'")
    clauses += [f"params.{axis} = '{value}'" for axis, value in (axes or {}).items() if value is not None]
    return " AND ".join(clauses)


def axis_part(axes: Mapping[str, Any]) -> list[str]:
    """A cell's axis values as metric-name parts, e.g. ["coarse:l1", "lr:0.001"] (none without axes)."""
    return [f"{axis}:{value}" for axis, value in axes.items()]


def study_run_values(axes: Mapping[str, list[Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """(params, tags) of a study's parent run for its axes: `axes` (JSON) and `axis.<option>` (its values,
    comma-separated) as params; the tag `axes` names the swept options. Both empty without axes."""
    if not axes:
        return {}, {}
    params = {"axes": json.dumps(dict(axes), separators=(",", ":"))}
    params.update({f"axis.{a}": ",".join(map(str, values)) for a, values in axes.items()})
    return params, {"axes": ",".join(axes)}


def metric_key(*parts: str) -> str:
    """An MLflow metric name from parts joined by '/' ('+' and other refused characters become '_')."""
    return "/".join(_BAD_KEY_CHARS.sub("_", p) for p in parts)


def artifact_location(tracking_uri: str) -> str | None:
    """For a SQLite store, artifacts beside the database (<db folder>/mlartifacts), as the worker does."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(unquote(tracking_uri[len("sqlite:///"):])).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None




class Tracking:
    """The server's MLflow client: experiment, study parent runs, cell metrics."""

    def __init__(self, tracking_uri: str, ui_url: str, experiment: str = "liftplace") -> None:
        self.tracking_uri = tracking_uri
        self.ui_url = ui_url.rstrip("/")
        self.experiment = experiment
        self._client: Any = None
        self._experiment_id: str | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            quiet_mlflow_http_retries()  # mlflow_retry retries, MLflow's own HTTP retries would stack under it
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def experiment_id(self) -> str:
        """The experiment's id, created on first use (artifacts under the data dir for SQLite stores)."""
        with self._lock:
            if self._experiment_id is None:
                exp = mlflow_retry(self.client.get_experiment_by_name, self.experiment)
                if exp is None:
                    try:
                        self._experiment_id = mlflow_retry(self.client.create_experiment, self.experiment,
                                                           artifact_location=artifact_location(self.tracking_uri))
                    except Exception:  # created meanwhile by a worker
                        exp = mlflow_retry(self.client.get_experiment_by_name, self.experiment)
                        if exp is None:
                            raise
                if exp is not None:
                    if exp.lifecycle_stage == "deleted":
                        raise ValueError(f"mlflow: the experiment {self.experiment!r} is deleted; restore it "
                                         "or set another experiment name")
                    self._experiment_id = exp.experiment_id
            return self._experiment_id

    def run_url(self, experiment_id: str | None, run_id: str | None) -> str | None:
        return run_url(self.ui_url, experiment_id, run_id)

    def start_study_run(self, study_id: int, name: str, params: Mapping[str, Any],
                        axes: Mapping[str, list[Any]] | None = None) -> tuple[str, str]:
        """Create the study's parent run, with its axes (`study_run_values`); returns (experiment_id, run_id)."""
        from mlflow.entities import Param

        exp_id = self.experiment_id()
        axis_params, axis_tags = study_run_values(axes or {})
        params = {**params, **axis_params}
        tags = {KIND_TAG: STUDY_RUN_KIND, "study_id": str(study_id), "study_name": name, **source_tags(STUDY_RUN_KIND),
                **axis_tags}
        run = mlflow_retry(self.client.create_run, exp_id, tags=tags, run_name=f"study {name}")
        run_id = run.info.run_id
        batch = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(batch), 100):
            mlflow_retry(self.client.log_batch, run_id, params=batch[i : i + 100], synchronous=True)
        return exp_id, run_id

    def register_teacher(self, name: str, folder: Path, source: str) -> tuple[str, str]:
        """Register the teacher `name` whose files are in `folder` (a local or shipped teacher, or one trained
        before cluster mode) as a version of MLflow's registered model `name`; returns (version, digest).

        A version with the same digest is reused (a registration retried after the database missed it);
        otherwise a run of its own (tag `liftplace.kind` = "register") holds the files and is the version's
        source. Transient MLflow errors are retried; others raise.
        """
        from worker.teacher_store import MODEL_ARTIFACT_PATH, SOURCE_TAG, find_version, folder_digest, register_version

        digest = folder_digest(folder)
        version = find_version(self.client, name, digest)
        if version is not None:
            return version, digest
        tags = {KIND_TAG: REGISTER_RUN_KIND, "teacher": name, SOURCE_TAG: source,
                **source_tags(REGISTER_RUN_KIND)}
        run = mlflow_retry(self.client.create_run, self.experiment_id(), tags=tags, run_name=f"teacher {name} "
                           f"({source}) registered")
        run_id = run.info.run_id
        try:
            mlflow_retry(self.client.log_artifacts, run_id, str(folder), MODEL_ARTIFACT_PATH, retry_for_s=60.0)
            ref = register_version(self.client, name, run_id, digest, tags={SOURCE_TAG: source})
        except Exception:
            mlflow_retry(self.client.set_terminated, run_id, status="FAILED")
            raise
        mlflow_retry(self.client.set_terminated, run_id, status="FINISHED")
        return ref.version, ref.digest

    def log_cells(self, run_id: str, cells: list[Mapping[str, Any]], *, tables: Mapping[str, str],
                  complete: bool) -> None:
        """Log the ended cells' summaries to the parent run (metrics) and the table (artifacts)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for cell in cells:
            values = {"fid_mean": cell.get("mean"), "fid_std": cell.get("std"), "collapses": cell.get("collapses"),
                      "n": cell.get("n")}
            for name, value in values.items():
                if value is not None:
                    key = metric_key(name, cell["teacher"], cell["method"], *axis_part(cell.get("axes") or {}))
                    metrics.append(Metric(key, float(value), now, 0))
        for i in range(0, len(metrics), 900):
            mlflow_retry(self.client.log_batch, run_id, metrics=metrics[i : i + 900], synchronous=True)
        for filename, text in tables.items():
            mlflow_retry(self.client.log_text, run_id, text, filename)
        mlflow_retry(self.client.update_run, run_id, status="FINISHED" if complete else "RUNNING")
