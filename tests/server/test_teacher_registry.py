"""Cluster mode (LIFTPLACE_STORAGE=mlflow): every ready teacher is a version of MLflow's model registry, jobs get
`models:/<name>/<version>` references with digests, and the worker loads the teacher from them; embedded mode
(the default) is unchanged. MLflow is a local SQLite store under tmp_path (no server)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from liftplace.models import build_unet, save_unet
from liftplace.shipped import shipped_teacher
from server.executors import ThreadExecutor
from tests.server.conftest import open_harness
from tests.server.server_testkit import FakeRunner, make_local_teacher
from worker.teacher_store import DIGEST_TAG, MODEL_ARTIFACT_PATH, folder_digest

SHIPPED = "stability-digits-s-p70"  # the smallest shipped teacher


def _client(harness):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=harness.settings.mlflow_tracking_uri)


def _teacher(harness, name: str) -> dict:
    r = harness.client.get(f"/api/teachers/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def test_embedded_mode_gives_paths_and_registers_nothing(make_harness) -> None:
    with make_harness() as h:
        assert h.settings.storage == "local" and not h.settings.teachers_in_registry
        job = h.submit(teacher="t-small")
        h.wait_status(job["id"], "succeeded")
        spec = h.runner.specs_of(job["id"])[0]
        assert spec.teacher_path == str(h.settings.teachers_dir / "t-small")
        assert (spec.teacher_uri, spec.teacher_digest, spec.register_model) == (None, None, None)
        assert _teacher(h, "t-small")["model_uri"] is None
        assert h.dispatcher.registry is None  # no MLflow client made for the registry


def test_cluster_mode_registers_teachers_and_jobs_carry_references(make_harness, tmp_path: Path) -> None:
    runner = FakeRunner()
    with make_harness(runner=runner, teachers=(), storage="mlflow") as h:
        folder = make_local_teacher(h.settings.teachers_dir, "t-local")
        assert h.client.post("/api/teachers", json={"source": "local", "name": "t-local"}).status_code == 201
        assert h.client.post("/api/teachers", json={"source": "shipped", "name": SHIPPED}).status_code == 201

        # Both registered by the dispatcher's next round: version 1 of each, the digest with the teacher and on
        # the version, the files in a run of their own.
        h.tick()
        client = _client(h)
        for name, files in (("t-local", folder), (SHIPPED, shipped_teacher(SHIPPED))):
            read = _teacher(h, name)
            assert read["model_uri"] == f"models:/{name}/1"
            assert read["model_digest"] == folder_digest(files)
            version = client.get_model_version(name, "1")
            assert version.tags[DIGEST_TAG] == read["model_digest"]
            run = client.get_run(version.run_id)
            assert run.data.tags["liftplace.kind"] == "register" and run.info.status == "FINISHED"
            assert version.source == f"{run.info.artifact_uri}/{MODEL_ARTIFACT_PATH}"

        # A distillation job gets references beside the host paths.
        job = h.submit(teacher="t-local", student_teacher=SHIPPED)
        h.wait_status(job["id"], "succeeded")
        spec = runner.specs_of(job["id"])[0]
        assert (spec.teacher_uri, spec.teacher_digest) == ("models:/t-local/1", folder_digest(folder))
        assert spec.teacher_path == str(folder)
        assert spec.student_teacher_uri == f"models:/{SHIPPED}/1"
        assert spec.student_teacher_digest == folder_digest(shipped_teacher(SHIPPED))

        # A teacher job is told to register what it trains and gets its base teacher as a reference; the
        # version and digest it reports are kept with the teacher.
        runner.plan = lambda spec: {"status": "succeeded", "model_version": "4", "model_digest": "ab" * 32}
        r = h.client.post("/api/teachers", json={"source": "pruned", "name": "t-pruned", "base_teacher": "t-local",
                                                 "prune_ratio": 0.5, "steps": 3})
        assert r.status_code == 201, r.text
        h.tick_until(lambda: _teacher(h, "t-pruned")["status"] == "ready", what="the pruned teacher")
        tspec = [s for s in runner.specs if s.kind == "teacher"][0]
        assert tspec.register_model == "t-pruned"
        assert (tspec.base_teacher_uri, tspec.base_teacher_digest) == ("models:/t-local/1", folder_digest(folder))
        read = _teacher(h, "t-pruned")
        assert (read["model_uri"], read["model_digest"]) == ("models:/t-pruned/4", "ab" * 32)

        # A teacher job that comes back without a registered version cannot be used by another host: failed.
        runner.plan = lambda spec: {"status": "succeeded"}
        r = h.client.post("/api/teachers", json={"source": "preset", "name": "t-unregistered", "preset": "tiny",
                                                 "steps": 3})
        assert r.status_code == 201, r.text
        h.tick_until(lambda: _teacher(h, "t-unregistered")["status"] == "failed", what="the unregistered teacher")
        assert "returned no model version" in _teacher(h, "t-unregistered")["reason"]


def test_cluster_mode_waits_for_a_teacher_it_cannot_register_and_says_why(make_harness) -> None:
    runner = FakeRunner()
    with make_harness(runner=runner, teachers=(), storage="mlflow") as h:
        folder = make_local_teacher(h.settings.teachers_dir, "t-gone")
        assert h.client.post("/api/teachers", json={"source": "local", "name": "t-gone"}).status_code == 201
        shutil.rmtree(folder)  # removed from this host before the dispatcher registered it
        job = h.submit(teacher="t-gone")
        h.tick()
        h.tick()
        assert h.job(job["id"])["status"] == "queued" and not runner.specs
        read = _teacher(h, "t-gone")
        assert read["model_uri"] is None
        assert read["reason"].startswith("not in MLflow's model registry:") and "t-gone" in read["reason"]


def test_a_cluster_job_loads_its_teacher_from_the_registry(tmp_path: Path, isolated_cache: Path) -> None:
    """A tiny teacher registered from a folder of the API's host; the folder is then removed (as on a worker of
    another host), and the distillation job still runs: its worker loads the teacher through its node cache."""
    db = f"sqlite:///{tmp_path / 'server.db'}"
    with open_harness(db, tmp_path, teachers=(), storage="mlflow", executor=ThreadExecutor(max_workers=1)) as h:
        folder = save_unet(build_unet("tiny", seed=0), h.settings.teachers_dir / "tiny-t")
        digest = folder_digest(folder)
        assert h.client.post("/api/teachers", json={"source": "local", "name": "tiny-t"}).status_code == 201
        h.tick()
        assert _teacher(h, "tiny-t")["model_uri"] == "models:/tiny-t/1"
        shutil.rmtree(folder)

        job = h.submit(teacher="tiny-t", method="outkd", steps=2, batch_size=8, fid_samples=2, sample_steps=2,
                       importance="magnitude", checkpoint_every=0)
        done = h.wait_status(job["id"], "succeeded", "failed", timeout=60)
        assert done["status"] == "succeeded", done["reason"]
        entry = isolated_cache / "models" / "tiny-t" / "1" / digest
        assert entry.is_dir() and folder_digest(entry) == digest
        lines = "\n".join(h.client.get(f"/api/jobs/{job['id']}/logs").json()["lines"])
        assert "teacher tiny-t: models:/tiny-t/1" in lines and "from this node's cache" in lines


@pytest.mark.parametrize("storage", ["LOCAL", "nfs"])
def test_storage_accepts_only_its_modes(storage: str) -> None:
    from pydantic import ValidationError

    from server.settings import Settings

    with pytest.raises(ValidationError):
        Settings(storage=storage)
