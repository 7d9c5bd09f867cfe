"""Cluster mode on two Ray nodes that share no folder: everything a job needs or makes travels through MLflow.

On this one machine: a real `mlflow server` (artifacts proxied by the server), a Ray head with no CPUs
(the API's driver and its actors live there; no job can run there) and node B, a Ray node whose
processes run in a mount namespace of their own with an empty tmpfs over the test's whole folder. Node B
cannot read the API's database, data, teachers or the MLflow store, and nothing it writes there is seen
outside it: as far as files go, another host. `liftplace serve` joins with RAY_ADDRESS and
LIFTPLACE_STORAGE=mlflow.

Through the REST API only:
1. a teacher is trained on node B; it becomes version 1 of its registered model in MLflow's registry,
   and no file of it lands in the API's data folder;
2. a study of two methods runs on node B from that version (downloaded into node B's own cache); the
   dashboard shows each job's curves, samples and FID, read from its MLflow run;
3. a longer job trains on node B until its first checkpoint is in its MLflow run; node B is then killed
   (every process of its namespace: a host that dies) and node C joins, a node of the API's host with
   a cache of its own. The job is retried there: it downloads the teacher and the checkpoint from
   MLflow, resumes at the checkpoint's step in the same MLflow run, and succeeds.

Every job ends once, with one MLflow run. Processes are stopped by their process groups, never with
`ray stop`. Ray registers each node under this machine's own address even when given 127.0.0.1 (it
replaces a loopback address on purpose), so its traffic stays on this machine but not on loopback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.cluster_kit import Api, RayNode, cluster_env, mlflow_server, ray_head, wait_for
from tests.reliability.faults_kit import mlflow_runs_of

pytestmark = pytest.mark.slow
TIMEOUT_S = 300  # per phase; each takes about a minute on 2 idle cores
EXPERIMENT = "cluster"
FAST = dict(batch_size=16, fid_samples=100, sample_steps=5)  # tiny jobs: digits at 8x8, a small FID
PNG = b"\x89PNG\r\n\x1a\n"


def _manifest_step(client: Any, run_id: str, scratch: Path) -> int:
    """The step of the checkpoint in the run (0 while there is none)."""
    try:
        path = client.download_artifacts(run_id, "checkpoint/manifest.json", str(scratch))
    except Exception:  # not uploaded yet
        return 0
    return int(json.loads(Path(path).read_text())["step"])


def _assert_one_run(api: Api, mlflow_url: str, job: dict[str, Any]) -> None:
    runs = mlflow_runs_of(mlflow_url, EXPERIMENT, job["id"])
    assert [r.info.run_id for r in runs] == [job["mlflow_run_id"]], runs
    ends = [line for line in api.logs(job["id"]) if line.endswith(f"[server] {job['status']}")]
    assert len(ends) == 1, api.logs(job["id"])


def test_a_cluster_without_a_shared_folder_trains_distills_and_resumes_on_another_node(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    jobs_dir = tmp_path / "data" / "jobs"
    scratch = tmp_path / "scratch"
    with mlflow_server(tmp_path / "mlflow") as mlflow_url, ray_head(tmp_path, num_cpus=0) as (_, ray_env):
        auth = {k: v for k, v in ray_env.items() if k != "RAY_ADDRESS"}
        env_b = cluster_env(**auth, LIFTPLACE_CACHE_DIR=str(tmp_path / "cache-b"))
        node_b = RayNode(tmp_path / "node-b.log", env=env_b, address=ray_env["RAY_ADDRESS"], hide=(tmp_path,))
        node_c = None
        api = Api(tmp_path, ray_env, "api", LIFTPLACE_STORAGE="mlflow", LIFTPLACE_MLFLOW_TRACKING_URI=mlflow_url,
                  LIFTPLACE_MLFLOW_UI_URL=mlflow_url, LIFTPLACE_MLFLOW_EXPERIMENT=EXPERIMENT,
                  LIFTPLACE_CPUS_PER_JOB="1", LIFTPLACE_CACHE_DIR=str(tmp_path / "cache-api"))
        client = MlflowClient(tracking_uri=mlflow_url)
        try:
            assert api.get("/api/ready")["checks"]["executor"]["nodes"] == 2

            # 1. A teacher trained on node B lands in the registry, not in the API's folders.
            teacher = api.post("/api/teachers", {"source": "preset", "name": "t-b", "preset": "tiny", "steps": 60,
                                                 "checkpoint_every": 0, **FAST})
            teacher = wait_for("the teacher", lambda: (t := api.get("/api/teachers/t-b"))["status"] != "training"
                               and t, TIMEOUT_S)
            assert teacher["status"] == "ready", (teacher["reason"], api.log())
            assert teacher["model_uri"] == "models:/t-b/1" and teacher["model_digest"], teacher
            (version,) = client.search_model_versions("name = 't-b'")
            assert version.version == "1" and version.tags["liftplace.digest"] == teacher["model_digest"]
            assert not (jobs_dir / str(teacher["job_id"])).exists()  # its files stayed on node B
            assert api.job(teacher["job_id"])["mlflow_run_id"] == version.run_id  # the version's source

            # 2. A study on node B from the registry; its dashboard reads the runs.
            study = api.post("/api/studies", {
                "name": "two-nodes", "teachers": ["t-b"], "methods": ["outkd", "lift+place+featkd"], "seeds": [0],
                "student_ratio": 0.5, "steps": 40, "checkpoint_every": 20, "importance": "magnitude", **FAST})
            jobs = api.wait_ended(study["job_ids"], TIMEOUT_S)
            for job in jobs:
                assert job["status"] == "succeeded" and job["attempts"] == 1, (job["reason"], api.logs(job["id"]))
                assert not (jobs_dir / str(job["id"])).exists()
                metrics = api.get(f"/api/jobs/{job['id']}/metrics")
                assert metrics["steps"] and metrics["steps"][-1] == 40 and metrics["series"]["loss_total"], metrics
                samples = httpx.get(f"{api.base}/api/jobs/{job['id']}/files/samples.png", timeout=30)
                assert samples.status_code == 200 and samples.content.startswith(PNG)
                _assert_one_run(api, mlflow_url, job)
            table = api.get(f"/api/studies/{study['id']}/table")
            assert all(c["complete"] and c["mean"] == pytest.approx(j["fid"]) for c, j in
                       zip(sorted(table["cells"], key=lambda c: c["method"]),
                           sorted(jobs, key=lambda j: j["method"]), strict=True)), table

            # 3. Node B dies after the long job's first checkpoint reached its run; node C takes the job over.
            job = api.post("/api/jobs", {"teacher": "t-b", "method": "outkd", "seed": 3, "student_ratio": 0.5,
                                         "steps": 600, "checkpoint_every": 100, "importance": "magnitude", **FAST})
            run_id = wait_for("the job's MLflow run", lambda: api.job(job["id"])["mlflow_run_id"], TIMEOUT_S)
            step = wait_for("a checkpoint in the run", lambda: _manifest_step(client, run_id, scratch), TIMEOUT_S)
            assert api.job(job["id"])["status"] == "running"
            node_b.kill()
            node_c = RayNode(tmp_path / "node-c.log", env=cluster_env(**auth, LIFTPLACE_CACHE_DIR=str(
                tmp_path / "cache-c")), address=ray_env["RAY_ADDRESS"])
            (done,) = api.wait_ended([job["id"]], TIMEOUT_S)
            lines = api.logs(job["id"])
            assert done["status"] == "succeeded", (done["reason"], lines)
            assert done["attempts"] == 2 and done["mlflow_run_id"] == run_id, done
            assert done["resumed_from_step"] is not None and done["resumed_from_step"] >= step > 0, (done, step)
            assert any(f"checkpoint of step {done['resumed_from_step']} downloaded from MLflow run {run_id}" in line
                       for line in lines), lines
            _assert_one_run(api, mlflow_url, done)
            # Attempt 2 ran on node C, which sees the API's folders: its files are there now, and its own
            # cache holds the teacher it downloaded.
            assert (jobs_dir / str(job["id"]) / "model" / "config.json").is_file()
            assert any((tmp_path / "cache-c" / "models" / "t-b").rglob("config.json"))
            assert not (tmp_path / "cache-b").exists()  # node B's cache was its own
        finally:
            api.stop()
            node_b.kill()
            if node_c is not None:
                node_c.kill()
