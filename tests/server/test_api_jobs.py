"""/api/jobs on SQLite and PostgreSQL: validation, lifecycle, cancel, retry, logs, lost workers."""

from __future__ import annotations

from pathlib import Path

from liftplace.methods import METHOD_NAMES
from tests.server.server_testkit import FAKE_ENVIRONMENT, MLFLOW_UI, FakeRunner, Harness, lost_until


def test_create_job_is_queued_and_readable(harness: Harness) -> None:
    job = harness.submit(teacher="t-small", student_ratio=0.5, method="lift", seed=3, steps=7, group_size=None)
    assert job["status"] == "queued" and job["kind"] == "distill"
    assert (job["teacher"], job["method"], job["seed"], job["steps"], job["student_ratio"]) == ("t-small", "lift", 3,
                                                                                                7, 0.5)
    assert job["dataset"] == "digits" and job["options"]["group_size"] is None
    assert job["attempts"] == 0 and job["mlflow_url"] is None and job["progress"]["step"] is None
    again = harness.job(job["id"])
    assert again["status"] == "queued" and again["created_at"] == job["created_at"]
    listed = harness.client.get("/api/jobs").json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == job["id"]


def test_defaults_come_from_the_library(harness: Harness) -> None:
    from liftplace import defaults
    from liftplace.methods import PAPER_METHOD

    job = harness.submit(teacher="t-small", method=PAPER_METHOD)
    assert job["student_ratio"] == defaults.STUDENT_RATIO
    assert job["options"]["group_size"] == defaults.GROUP_SIZE
    assert job["options"]["coarse"] == defaults.COARSE_DISTANCE
    schema = harness.client.get("/openapi.json").json()["components"]["schemas"]["JobCreate"]["properties"]
    assert tuple(schema["method"]["enum"]) == METHOD_NAMES


# (body changes, the field the 422 must name, a piece of its message)
BAD_JOBS = [
    ({"teacher": None}, "teacher", "Field required"),
    ({"teacher": "../t-small"}, "teacher", "path separator"),
    ({"teacher": ".."}, "teacher", "'..'"),
    ({"teacher": " t-small"}, "teacher", "spaces"),
    ({"teacher": "nobody"}, "teacher", "unknown teacher 'nobody'"),
    ({"student_ratio": 0}, "student_ratio", "greater than 0"),
    ({"student_ratio": 1}, "student_ratio", "less than 1"),
    ({"student_ratio": "half"}, "student_ratio", "number"),
    ({"method": "lift+magic"}, "method", "lift+place+featkd"),
    ({"seed": -1}, "seed", "greater than or equal to 0"),
    ({"steps": 0}, "steps", "greater than or equal to 1"),
    ({"steps": 1001}, "steps", "LIFTPLACE_MAX_STEPS"),
    ({"dataset": "celeba"}, "dataset", "unknown dataset 'celeba'"),
    ({"dataset": "/etc"}, "dataset", "path separator"),
    ({"group_size": 10}, "group_size", "does not divide the 64 positions"),
    ({"resolution": 12}, "resolution", "multiple of 8"),
    ({"stepz": 5}, "stepz", "Extra inputs are not permitted"),
]


def test_bad_jobs_are_refused_naming_the_field(make_harness) -> None:
    with make_harness(max_steps=1000) as h:
        for change, field, message in BAD_JOBS:
            body = {"teacher": "t-small", "method": "lift+place", "seed": 0, **change}
            body = {k: v for k, v in body.items() if v is not None}
            r = h.client.post("/api/jobs", json=body)
            assert r.status_code == 422, (change, r.text)
            errors = r.json()["detail"]
            assert any(e["loc"][-1] == field or field in e["loc"] for e in errors), (change, errors)
            assert any(message in e["msg"] for e in errors), (change, errors)
        assert h.job_count() == 0  # nothing stored
        # group_size only matters for PLACE methods: LIFT accepts any
        assert h.submit(teacher="t-small", method="lift", group_size=10)["status"] == "queued"


def test_unknown_ids_are_404(harness: Harness) -> None:
    c = harness.client
    for method, url in [("get", "/api/jobs/999"), ("post", "/api/jobs/999/cancel"), ("post", "/api/jobs/999/retry"),
                        ("get", "/api/jobs/999/logs"), ("get", "/api/studies/999"), ("get", "/api/studies/999/table"),
                        ("post", "/api/studies/999/cancel"), ("get", "/api/teachers/nobody"),
                        ("get", "/api/datasets/nothing"), ("get", "/api/jobs?study=999")]:
        r = getattr(c, method)(url)
        assert r.status_code == 404, (url, r.text)
        assert "not found" in r.json()["detail"]
    assert c.get("/api/jobs/abc").status_code == 422


def test_list_filters_and_pagination(harness: Harness) -> None:
    ids = [harness.submit(seed=s)["id"] for s in range(5)]
    for job_id in ids[:2]:
        assert harness.client.post(f"/api/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    c = harness.client
    cancelled = c.get("/api/jobs", params={"status": "cancelled"}).json()
    assert cancelled["total"] == 2 and sorted(j["id"] for j in cancelled["items"]) == ids[:2]
    page = c.get("/api/jobs", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and [j["id"] for j in page["items"]] == [ids[3], ids[2]]  # newest first
    assert c.get("/api/jobs", params={"status": "lost"}).status_code == 422
    assert c.get("/api/jobs", params={"limit": 0}).status_code == 422


def test_lifecycle_queued_running_succeeded(harness: Harness) -> None:
    harness.runner.hold.set()
    job = harness.submit(seed=2, steps=40)
    running = harness.wait_status(job["id"], "running")
    harness.tick_until(lambda: harness.job(job["id"])["progress"]["step"] == 1, what="progress")
    running = harness.job(job["id"])
    assert running["progress"]["total"] == 40 and running["progress"]["fraction"] == 1 / 40
    assert running["metrics"]["loss_total"] == 0.5 and "loss_nan" not in running["metrics"]  # NaN never reaches JSON
    assert running["attempts"] == 1 and running["dispatched_at"] and running["started_at"]
    assert running["mlflow_url"] is None and running["environment"] is None  # known when it ends
    # The worker records its MLflow run id in its output folder at start: the URL shows while it runs.
    out = harness.settings.data_dir / "jobs" / str(job["id"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "mlflow_run_id").write_text(f"run-{job['id']}\n")
    harness.tick_until(lambda: harness.job(job["id"])["mlflow_url"] is not None, what="the run URL")
    assert harness.job(job["id"])["mlflow_url"] == f"{MLFLOW_UI}/#/experiments/7/runs/run-{job['id']}"
    harness.runner.release()
    done = harness.wait_status(job["id"], "succeeded")
    assert done["fid"] == 12.0 and done["fid_metric"] == "fid_digits" and done["parameters"] == 1234
    assert done["mlflow_run_id"] == f"run-{job['id']}" and done["mlflow_experiment_id"] == "7"
    assert done["mlflow_url"] == f"{MLFLOW_UI}/#/experiments/7/runs/run-{job['id']}"
    assert done["finished_at"] and done["reason"] == "" and done["progress"]["step"] == 40
    assert done["environment"] == FAKE_ENVIRONMENT  # where it computed, as the worker said
    spec = harness.runner.specs_of(job["id"])[0]
    assert spec.teacher_path == str(harness.settings.teachers_dir / "t-small")
    assert spec.output_dir == str(harness.settings.data_dir / "jobs" / str(job["id"]))
    assert spec.dataset == "digits" and spec.fid_features == "digits" and spec.mlflow_parent_run_id is None
    logs = harness.client.get(f"/api/jobs/{job['id']}/logs").json()
    text = "\n".join(logs["lines"])
    assert "fake worker: job" in text and "dispatched (attempt 1" in text and text.rstrip().endswith("succeeded")
    assert logs["next_offset"] == len(logs["lines"])
    tail = harness.client.get(f"/api/jobs/{job['id']}/logs", params={"offset": logs["next_offset"] - 1}).json()
    assert tail["lines"] == logs["lines"][-1:]


def test_failed_and_diverged_jobs_keep_the_reason(harness: Harness) -> None:
    def plan(spec):
        if spec.seed == 0:
            return {"status": "failed", "reason": "RuntimeError: out of memory"}
        if spec.seed == 1:
            return {"status": "diverged", "diverged_step": 17, "fid": float("inf")}
        raise ValueError("the runner itself broke")

    harness.runner.plan = plan
    failed, diverged, broken = (harness.submit(seed=s)["id"] for s in range(3))
    assert harness.wait_status(failed, "failed")["reason"] == "RuntimeError: out of memory"
    d = harness.wait_status(diverged, "diverged")
    assert d["diverged_step"] == 17 and d["reason"] == "diverged at step 17" and d["fid"] is None
    assert harness.wait_status(broken, "failed")["reason"] == "ValueError: the runner itself broke"


def test_an_environment_the_worker_garbled_is_stored_as_strings_or_not_at_all(harness: Harness) -> None:
    """The job's `environment` is what the worker said, as strings; anything but a mapping is dropped (the
    job itself still ends as the worker said)."""
    garbled = {0: ["x"], 1: "not a mapping", 2: {}}
    garbled[3] = {"cpu": "C", "threads": 4}
    harness.runner.plan = lambda spec: {"status": "succeeded", "fid": 1.0, "environment": garbled[spec.seed]}
    ids = [harness.submit(seed=s)["id"] for s in range(4)]
    done = [harness.wait_status(i, "succeeded") for i in ids]
    assert [d["environment"] for d in done] == [None, None, None, {"cpu": "C", "threads": "4"}]


def test_cancel_queued_running_and_ended(harness: Harness) -> None:
    queued = harness.submit(seed=0)
    r = harness.client.post(f"/api/jobs/{queued['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["reason"] == "cancelled before it started"
    harness.runner.hold.set()
    job = harness.submit(seed=1)
    harness.wait_status(job["id"], "running")
    r = harness.client.post(f"/api/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    done = harness.wait_status(job["id"], "cancelled")
    assert done["reason"] == "cancel requested"
    r = harness.client.post(f"/api/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and "already ended (cancelled)" in r.json()["detail"]
    assert len(harness.runner.specs_of(queued["id"])) == 0  # a job cancelled while queued never ran


def test_retry_resumes_in_the_same_folder(harness: Harness) -> None:
    harness.runner.plan = lambda spec: {"status": "failed", "reason": "boom"}
    job = harness.submit(seed=4)
    harness.wait_status(job["id"], "failed")
    r = harness.client.post(f"/api/jobs/{job['id']}/retry")
    assert r.status_code == 200 and r.json()["status"] == "queued" and r.json()["reason"] == ""
    assert r.json()["attempts"] == 0
    harness.runner.plan = lambda spec: {"status": "succeeded", "fid": 3.0, "resumed_from_step": 50}
    done = harness.wait_status(job["id"], "succeeded")
    assert done["fid"] == 3.0 and done["resumed_from_step"] == 50
    first, second = harness.runner.specs_of(job["id"])
    assert first.output_dir == second.output_dir  # the worker resumes from its checkpoint there
    r = harness.client.post(f"/api/jobs/{job['id']}/retry")
    assert r.status_code == 409 and "only failed, diverged, cancelled" in r.json()["detail"]


def test_a_lost_worker_is_retried_then_failed(make_harness) -> None:
    runner = FakeRunner()
    with make_harness(runner=runner, max_attempts=3) as h:
        runner.plan = lost_until(3)
        job = h.submit(seed=0)
        done = h.wait_status(job["id"], "succeeded")
        assert done["attempts"] == 3
        assert [s.attempt for s in runner.specs_of(job["id"])] == [1, 2, 3]
        lines = h.client.get(f"/api/jobs/{job['id']}/logs").json()["lines"]
        assert sum("lost (worker died on attempt" in line for line in lines) == 2

        runner.plan = lost_until(99)
        doomed = h.submit(seed=1)
        failed = h.wait_status(doomed["id"], "failed")
        assert failed["attempts"] == 3 and "lost on all 3 attempts" in failed["reason"]


def test_job_on_a_registered_dataset_gets_its_folder(harness: Harness, tmp_path: Path) -> None:
    from PIL import Image

    folder = harness.settings.datasets_dir / "faces"
    folder.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(folder / "a.png")
    r = harness.client.post("/api/datasets", json={"name": "faces", "resolution": 16})
    assert r.status_code == 201, r.text
    job = harness.submit(dataset="faces", method="lift")
    harness.wait_status(job["id"], "succeeded")
    spec = harness.runner.specs_of(job["id"])[0]
    assert spec.dataset == str(folder.resolve()) and spec.dataset_name == "faces"
    assert spec.resolution == 16 and spec.fid_features == "inception"
