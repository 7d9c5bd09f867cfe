"""/api/teachers and /api/datasets on SQLite and PostgreSQL: names not paths, training teachers, waiting jobs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.server.server_testkit import Harness, make_local_teacher


def test_local_teachers_are_registered_by_name_only(harness: Harness) -> None:
    c, root = harness.client, harness.settings.teachers_dir
    listed = {t["name"]: t for t in c.get("/api/teachers").json()}
    assert listed["t-small"]["status"] == "ready" and listed["t-small"]["parameters"] == 5000
    assert listed["t-large"]["source"] == "local" and listed["t-large"]["job_id"] is None
    (root / "empty").mkdir()
    outside = harness.settings.data_dir / "outside"
    make_local_teacher(outside.parent, outside.name)
    os.symlink(outside, root / "escape")
    cases = [
        ({"name": "../t-small"}, "name", "path separator"),
        ({"name": "ok", "folder": "/etc"}, "folder", "path separator"),
        ({"name": "ok", "folder": ".."}, "folder", "'..'"),
        ({"name": "ghost"}, "name", "no folder 'ghost' in the teachers root"),
        ({"name": "empty"}, "name", "not a diffusers model folder"),
        ({"name": "escape"}, "name", "leads outside"),
        ({"name": "ok", "folder": "t-small", "path": "/tmp"}, "path", "Extra inputs"),
    ]
    for change, field, message in cases:
        r = c.post("/api/teachers", json={"source": "local", **change})
        assert r.status_code == 422, (change, r.text)
        assert any(field in e["loc"] and message in e["msg"] for e in r.json()["detail"]), (change, r.text)
    r = c.post("/api/teachers", json={"source": "local", "name": "t-small"})
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    r = c.post("/api/teachers", json={"source": "local", "name": "alias", "folder": "t-large"})
    assert r.status_code == 201 and r.json()["folder"] == "t-large" and r.json()["parameters"] == 10000
    assert r.json()["status"] == "ready"
    assert len(c.get("/api/teachers").json()) == 3
    r = c.post("/api/teachers", json={"source": "downloaded", "name": "x"})
    assert r.status_code == 422, r.text
    msg = r.json()["detail"][0]["msg"]  # pydantic names the discriminator in the message
    assert "'source'" in msg and "'local', 'preset', 'pruned'" in msg


def test_a_real_diffusers_folder_is_loaded_to_count_its_parameters(harness: Harness) -> None:
    from liftplace.models import build_unet, count_parameters

    unet = build_unet("tiny")
    unet.save_pretrained(harness.settings.teachers_dir / "plain")  # no liftplace.json: loaded and counted
    r = harness.client.post("/api/teachers", json={"source": "local", "name": "plain"})
    assert r.status_code == 201, r.text
    assert r.json()["parameters"] == count_parameters(unet)
    (harness.settings.teachers_dir / "broken").mkdir()
    (harness.settings.teachers_dir / "broken" / "config.json").write_text("not json")
    r = harness.client.post("/api/teachers", json={"source": "local", "name": "broken"})
    assert r.status_code == 422 and "does not load as a UNet2DModel" in r.json()["detail"][0]["msg"]


def test_jobs_wait_for_a_teacher_in_training(harness: Harness) -> None:
    c = harness.client
    harness.runner.hold.set()
    r = c.post("/api/teachers", json={"source": "preset", "name": "digits-teacher", "preset": "tiny", "steps": 30,
                                      "seed": 1})
    assert r.status_code == 201, r.text
    teacher = r.json()
    assert teacher["status"] == "training" and teacher["job_id"] is not None and teacher["preset"] == "tiny"
    r = c.post("/api/teachers", json={"source": "pruned", "name": "smaller", "base_teacher": "digits-teacher",
                                      "prune_ratio": 0.5, "steps": 20})
    assert r.status_code == 201 and r.json()["base_teacher"] == "digits-teacher"
    pruned = r.json()
    job = harness.submit(teacher="digits-teacher", method="outkd")
    assert job["waiting_for"] == "teacher 'digits-teacher' is still training"

    harness.wait_status(teacher["job_id"], "running")
    for _ in range(3):
        harness.tick()
    assert harness.job(job["id"])["status"] == "queued" and harness.job(pruned["job_id"])["status"] == "queued"
    tspec = harness.runner.specs_of(teacher["job_id"])[0]
    assert (tspec.kind, tspec.preset, tspec.steps, tspec.seed, tspec.teacher_name) == ("teacher", "tiny", 30, 1,
                                                                                       "digits-teacher")

    harness.runner.release()
    harness.wait_status(job["id"], "succeeded")
    ready = c.get("/api/teachers/digits-teacher").json()
    model_dir = str(harness.settings.data_dir / "jobs" / str(teacher["job_id"]) / "model")
    assert ready["status"] == "ready" and ready["parameters"] == 1234
    assert harness.runner.specs_of(job["id"])[0].teacher_path == model_dir
    harness.wait_status(pruned["job_id"], "succeeded")
    pspec = harness.runner.specs_of(pruned["job_id"])[0]
    assert pspec.base_teacher_path == model_dir and pspec.prune_ratio == 0.5 and pspec.preset is None


def test_a_failed_teacher_fails_the_jobs_waiting_for_it(harness: Harness) -> None:
    c = harness.client
    harness.runner.plan = lambda spec: ({"status": "failed", "reason": "CUDA error"} if spec.kind == "teacher"
                                        else {"status": "succeeded", "fid": 1.0})
    teacher = c.post("/api/teachers", json={"source": "preset", "name": "bad", "preset": "tiny", "steps": 5}).json()
    job = harness.submit(teacher="bad", method="lift")
    failed = harness.wait_status(job["id"], "failed")
    assert "teacher 'bad' did not train" in failed["reason"] and "CUDA error" in failed["reason"]
    got = c.get("/api/teachers/bad").json()
    assert got["status"] == "failed" and "CUDA error" in got["reason"]
    r = c.post("/api/jobs", json={"teacher": "bad", "method": "lift"})
    assert r.status_code == 422 and "failed to train" in r.json()["detail"][0]["msg"]
    r = c.post(f"/api/jobs/{job['id']}/retry")
    assert r.status_code == 409 and "retry the teacher's job first" in r.json()["detail"]
    # Retrying the teacher's job puts it back in training; then the distillation can be retried.
    harness.runner.plan = lambda spec: {"status": "succeeded", "fid": 2.0}
    assert c.post(f"/api/jobs/{teacher['job_id']}/retry").json()["status"] == "queued"
    assert c.get("/api/teachers/bad").json()["status"] == "training"
    assert c.post(f"/api/jobs/{job['id']}/retry").status_code == 200
    assert harness.wait_status(job["id"], "succeeded")["fid"] == 2.0


def test_cancelling_a_queued_teacher_job_fails_its_teacher(harness: Harness) -> None:
    c = harness.client
    teacher = c.post("/api/teachers", json={"source": "preset", "name": "later", "preset": "tiny"}).json()
    job = harness.submit(teacher="later", method="lift")
    assert c.post(f"/api/jobs/{teacher['job_id']}/cancel").json()["status"] == "cancelled"
    assert c.get("/api/teachers/later").json()["status"] == "failed"
    assert "did not train" in harness.job(job["id"])["reason"] and harness.job(job["id"])["status"] == "failed"


def test_bad_teacher_training_requests(make_harness) -> None:
    with make_harness(max_steps=100) as h:
        cases = [
            ({"source": "preset", "name": "x", "preset": "huge"}, "preset", "Input should be"),
            ({"source": "preset", "name": "x", "preset": "ddpm-celeba64"}, "preset", "does not divide"),
            ({"source": "preset", "name": "x", "preset": "tiny", "steps": 101}, "steps", "LIFTPLACE_MAX_STEPS"),
            ({"source": "preset", "name": "x", "preset": "tiny", "dataset": "mnist"}, "dataset", "unknown dataset"),
            ({"source": "pruned", "name": "x", "base_teacher": "ghost", "prune_ratio": 0.5}, "base_teacher",
             "unknown teacher 'ghost'"),
            ({"source": "pruned", "name": "x", "base_teacher": "t-small", "prune_ratio": 1.5}, "prune_ratio",
             "less than 1"),
            ({"source": "pruned", "name": "x", "base_teacher": "t-small"}, "prune_ratio", "Field required"),
        ]
        for body, field, message in cases:
            r = h.client.post("/api/teachers", json=body)
            assert r.status_code == 422, (body, r.text)
            assert any(field in e["loc"] and message in e["msg"] for e in r.json()["detail"]), (body, r.text)
        assert len(h.client.get("/api/teachers").json()) == 2 and h.job_count() == 0


def test_datasets_are_registered_by_name(harness: Harness) -> None:
    c, root = harness.client, harness.settings.datasets_dir
    digits = c.get("/api/datasets/digits").json()
    assert digits["kind"] == "embedded" and digits["resolution"] == 8
    (root / "faces" / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "faces" / "sub" / "0.jpg")
    (root / "empty").mkdir()
    cases = [
        ({"name": "../faces"}, "name", "path separator"),
        ({"name": "faces2", "folder": "C:\\data"}, "folder", "path separator"),
        ({"name": "nothing"}, "name", "no folder 'nothing'"),
        ({"name": "empty"}, "name", "holds no .png/.jpg/.jpeg images"),
        ({"name": "faces", "resolution": 4}, "resolution", "greater than or equal to 8"),
    ]
    for body, field, message in cases:
        r = c.post("/api/datasets", json=body)
        assert r.status_code == 422, (body, r.text)
        assert any(field in e["loc"] and message in e["msg"] for e in r.json()["detail"]), (body, r.text)
    r = c.post("/api/datasets", json={"name": "faces", "resolution": 32, "description": "a few faces"})
    assert r.status_code == 201 and r.json()["kind"] == "folder" and r.json()["folder"] == "faces"
    assert c.post("/api/datasets", json={"name": "faces"}).status_code == 409
    assert c.post("/api/datasets", json={"name": "digits"}).status_code == 409
    assert [d["name"] for d in c.get("/api/datasets").json()] == ["digits", "faces"]


def test_a_student_pruned_from_another_teacher(harness: Harness) -> None:
    """student_teacher: the job waits for both teachers; the spec carries both; the study records it."""
    c = harness.client
    harness.runner.hold.set()
    big = c.post("/api/teachers", json={"source": "preset", "name": "big", "preset": "tiny", "steps": 5}).json()
    r = c.post("/api/jobs", json={"teacher": "t-small", "student_teacher": "ghost", "method": "outkd"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "student_teacher"], r.text
    assert "unknown teacher 'ghost'" in r.json()["detail"][0]["msg"]
    job = harness.submit(teacher="t-small", student_teacher="big", method="outkd")
    assert job["student_teacher"] == "big" and job["teacher"] == "t-small"
    assert job["waiting_for"] == "teacher 'big' is still training"
    c.post("/api/teachers", json={"source": "preset", "name": "big2", "preset": "tiny", "steps": 5})
    both = harness.submit(teacher="big2", student_teacher="big", method="outkd")
    assert both["waiting_for"] == "teachers 'big2' and 'big' are still training"
    harness.wait_status(big["job_id"], "running")
    for _ in range(3):
        harness.tick()
    assert harness.job(job["id"])["status"] == "queued"  # its student's teacher is not ready yet
    harness.runner.release()
    harness.wait_status(job["id"], "succeeded")
    spec = harness.runner.specs_of(job["id"])[0]
    big_dir = str(harness.settings.data_dir / "jobs" / str(big["job_id"]) / "model")
    assert spec.student_teacher_name == "big" and spec.student_teacher_path == big_dir
    assert spec.teacher_name == "t-small" and spec.teacher_path.endswith("t-small")
    plain = harness.submit(teacher="t-small", method="outkd")
    harness.wait_status(plain["id"], "succeeded")
    assert harness.runner.specs_of(plain["id"])[0].student_teacher_path is None and plain["student_teacher"] is None

    r = c.post("/api/studies", json={"name": "fixed-student", "teachers": ["t-small", "t-large"],
                                     "methods": ["outkd"], "seeds": [0], "student_teacher": "big"})
    assert r.status_code == 201, r.text
    assert r.json()["options"]["student_teacher"] == "big"
    for job_id in r.json()["job_ids"]:
        assert harness.job(job_id)["student_teacher"] == "big"


def test_jobs_waiting_for_their_students_teacher_fail_with_it(harness: Harness) -> None:
    c = harness.client
    harness.runner.plan = lambda spec: ({"status": "failed", "reason": "out of memory"} if spec.kind == "teacher"
                                        else {"status": "succeeded", "fid": 1.0})
    bad = c.post("/api/teachers", json={"source": "preset", "name": "bad-big", "preset": "tiny", "steps": 5}).json()
    job = harness.submit(teacher="t-small", student_teacher="bad-big", method="lift")
    failed = harness.wait_status(job["id"], "failed")
    assert "teacher 'bad-big' did not train" in failed["reason"]
    r = c.post(f"/api/jobs/{job['id']}/retry")
    assert r.status_code == 409 and "'bad-big' failed to train" in r.json()["detail"]
    assert bad["status"] == "training"


def test_shipped_teachers_are_registered_with_their_digests_checked(harness: Harness, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from liftplace import shipped

    c = harness.client
    r = c.post("/api/teachers", json={"source": "shipped", "name": "stability-digits-s"})
    assert r.status_code == 201, r.text
    t = r.json()
    assert (t["source"], t["status"], t["folder"], t["preset"], t["job_id"], t["dataset"]) == (
        "shipped", "ready", "stability-digits-s", "digits-s", None, "digits")
    assert t["parameters"] == shipped.teacher_meta("stability-digits-s")["parameters"]
    r = c.post("/api/teachers", json={"source": "shipped", "name": "small", "shipped": "stability-digits-s-p70"})
    assert r.status_code == 201, r.text
    assert (r.json()["base_teacher"], r.json()["prune_ratio"], r.json()["folder"]) == (
        "stability-digits-s", 0.7, "stability-digits-s-p70")
    cases = [({"name": "ghost"}, "name", "no shipped teacher 'ghost'"),
             ({"name": "x", "shipped": "ghost"}, "shipped", "no shipped teacher 'ghost'"),
             ({"name": "x", "shipped": "../etc"}, "shipped", "path separator"),
             ({"name": "x", "folder": "t-small"}, "folder", "Extra inputs")]
    for change, field, message in cases:
        r = c.post("/api/teachers", json={"source": "shipped", **change})
        assert r.status_code == 422, (change, r.text)
        assert any(field in e["loc"] and message in e["msg"] for e in r.json()["detail"]), (change, r.text)
    # a damaged install is refused, naming the file
    shutil.copyfile(shipped.SHIPPED_DIR / shipped.MANIFEST_FILE, tmp_path / shipped.MANIFEST_FILE)
    shutil.copytree(shipped.SHIPPED_DIR / "stability-digits-s-p50", tmp_path / "stability-digits-s-p50")
    (tmp_path / "stability-digits-s-p50" / "config.json").write_text("{}")
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path)
    r = c.post("/api/teachers", json={"source": "shipped", "name": "stability-digits-s-p50"})
    assert r.status_code == 422 and "file config.json has sha256" in r.json()["detail"][0]["msg"], r.text
    monkeypatch.undo()
    # a distillation job gets the teacher as shipped:NAME: each worker loads (and checks) its own copy
    job = harness.submit(teacher="small", method="outkd", student_teacher="stability-digits-s")
    harness.wait_status(job["id"], "succeeded")
    spec = harness.runner.specs_of(job["id"])[0]
    assert (spec.teacher_path, spec.student_teacher_path) == ("shipped:stability-digits-s-p70",
                                                              "shipped:stability-digits-s")
