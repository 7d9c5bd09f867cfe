"""End to end: a study of 2 methods x 2 seeds on digits through the REST API, on a real local Ray,
with the real worker (pruning, distillation, sampling, FID) and MLflow in a local SQLite store.

Tiny on purpose (a test-sized teacher, 5 steps, 100 FID samples, 5 DDIM steps): about a minute.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]

METHODS = ["outkd", "lift+place+featkd"]


def test_a_study_runs_on_ray_and_lands_in_mlflow(tmp_path: Path, db_url: str, local_ray: str) -> None:
    from mlflow import MlflowClient

    from liftplace.features import ensure_digits_classifier
    from liftplace.models import build_unet, save_unet

    ensure_digits_classifier()  # trained once here, so the two parallel jobs do not both train it
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url, teachers_dir=tmp_path / "teachers",
                        poll_interval=0.2, cpus_per_job=1, gpus_per_job=0.5)
    save_unet(build_unet("tiny"), settings.teachers_dir / "tiny")
    with TestClient(create_app(settings)) as c:  # the default executor: Ray (here the session's local Ray)
        r = c.post("/api/teachers", json={"source": "local", "name": "tiny"})
        assert r.status_code == 201 and r.json()["status"] == "ready", r.text
        r = c.post("/api/studies", json={
            "name": "e2e", "teachers": ["tiny"], "methods": METHODS, "seeds": 2, "student_ratio": 0.5, "steps": 5,
            "batch_size": 16, "fid_samples": 100, "sample_steps": 5, "checkpoint_every": 0})
        assert r.status_code == 201, r.text
        study = r.json()
        deadline = time.monotonic() + 300
        while (got := c.get(f"/api/studies/{study['id']}").json())["status"] != "ended":
            assert time.monotonic() < deadline, (got, c.get("/api/status").json())
            time.sleep(1)
        assert got["status_counts"]["succeeded"] == 4, c.get("/api/jobs").json()
        assert got["cells_complete"] == 2 and got["mlflow_run_id"] and got["mlflow_url"]

        jobs = c.get("/api/jobs", params={"study": study["id"]}).json()["items"]
        for job in jobs:
            assert job["fid_metric"] == "fid_digits" and job["fid"] > 0 and job["parameters"] > 0
            assert job["progress"]["step"] == 5 and job["attempts"] == 1
            assert job["mlflow_url"] == (f"{settings.mlflow_ui_url}/#/experiments/{job['mlflow_experiment_id']}/runs/"
                                         f"{job['mlflow_run_id']}")
            assert (Path(settings.data_dir) / "jobs" / str(job["id"]) / "model" / "config.json").is_file()
            lines = c.get(f"/api/jobs/{job['id']}/logs").json()["lines"]
            assert any("fid_digits =" in line for line in lines) and lines[-1].endswith("[server] succeeded")

        # MLflow: the seeds are nested runs of the study's parent run, which holds the cell summaries.
        # The cells are logged to the parent run by the dispatcher's next round after the last job ends.
        while not (got := c.get(f"/api/studies/{study['id']}").json())["mlflow_synced"]:
            assert time.monotonic() < deadline + 60, got
            time.sleep(0.5)
        client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
        parent = client.get_run(got["mlflow_run_id"])
        assert parent.data.tags["liftplace.kind"] == "study" and parent.info.status == "FINISHED"
        for job in jobs:
            run = client.get_run(job["mlflow_run_id"])
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert run.data.params["method"] == job["method"] and run.data.params["seed"] == str(job["seed"])
            assert run.data.metrics["fid_digits"] == pytest.approx(job["fid"])
            assert run.info.experiment_id == job["mlflow_experiment_id"] == parent.info.experiment_id

        table = c.get(f"/api/studies/{study['id']}/table").json()
        assert table["metric"] == "fid_digits" and table["methods"] == METHODS
        for cell in table["cells"]:
            fids = [j["fid"] for j in jobs if j["method"] == cell["method"]]
            assert cell["complete"] and cell["n"] == 2 and cell["status_counts"]["succeeded"] == 2
            assert cell["mean"] == pytest.approx(statistics.mean(fids))
            assert cell["std"] == pytest.approx(statistics.stdev(fids))
            key = cell["method"].replace("+", "_")
            h = parent.data.metrics
            assert h[f"fid_mean/tiny/{key}"] == pytest.approx(cell["mean"]) and h[f"n/tiny/{key}"] == 2
            assert h[f"collapses/tiny/{key}"] == cell["collapses"]
        csv = c.get(f"/api/studies/{study['id']}/table", params={"format": "csv"}).text
        assert csv.startswith("metric,method,") and csv.count("\nfid_digits,") == 2
        artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"study_table.md", "study_table.csv"} <= artifacts
