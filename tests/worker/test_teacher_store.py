"""Teachers as MLflow model versions (cluster mode): the digest, registration, and the node cache that
resolves a `models:/<name>/<version>` reference (once per node, never a partial download, digest checked,
a vanished version named), on a local MLflow store (SQLite and a folder under tmp_path; no server)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import worker.teacher_store as store
from liftplace.models import build_unet, load_unet, save_unet
from worker.run import run_job
from worker.spec import JobSpec
from worker.teacher_store import (
    DIGEST_TAG,
    MODEL_ARTIFACT_PATH,
    TeacherUnavailable,
    folder_digest,
    model_uri,
    parse_model_uri,
    register_version,
    resolve_teacher,
)

EXPERIMENT = "teacher-store-tests"


@pytest.fixture(scope="module")
def mlflow_store(make_mlflow_store):
    """One SQLite MLflow store with an artifact folder, for the module (creating one costs seconds)."""
    return make_mlflow_store(EXPERIMENT)


def _model_folder(root: Path, content: str = "weights") -> Path:
    """A small model-like folder with a nested file (the cache tests need files, not a loadable model)."""
    (root / "unet").mkdir(parents=True)
    (root / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_text(content * 1000)
    return root


def _publish(mlflow_store, folder: Path, name: str) -> tuple[str, str]:
    """Upload `folder` to a new run and register it as a version of `name`: (uri, digest)."""
    _, client, experiment = mlflow_store
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(folder), MODEL_ARTIFACT_PATH)
    digest = folder_digest(folder)
    ref = register_version(client, name, run.info.run_id, digest)
    return ref.uri, digest


# --- the digest and the URI -----------------------------------------------------------------------


def test_the_digest_covers_contents_and_paths_in_a_stable_order(tmp_path: Path) -> None:
    a = _model_folder(tmp_path / "a")
    b = tmp_path / "b"  # the same files, written in another order and at another place
    (b / "unet").mkdir(parents=True)
    (b / "unet" / "diffusion_pytorch_model.safetensors").write_text("weights" * 1000)
    (b / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    assert folder_digest(a) == folder_digest(b)
    assert len(folder_digest(a)) == 64
    (b / "config.json").write_text('{"_class_name": "UNet2DModel "}')
    assert folder_digest(a) != folder_digest(b)
    (b / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    (b / "unet" / "diffusion_pytorch_model.safetensors").rename(b / "diffusion_pytorch_model.safetensors")
    assert folder_digest(a) != folder_digest(b)  # a file moved is another model folder


def test_model_uris_are_name_and_numbered_version() -> None:
    assert model_uri("digits-s", 3) == "models:/digits-s/3"
    assert parse_model_uri("models:/digits-s/3") == ("digits-s", "3")
    for bad in ("runs:/x/model", "models:/digits-s@champion", "models:/digits-s/latest", "models:/a/b/1"):
        with pytest.raises(ValueError):
            parse_model_uri(bad)


# --- registration ---------------------------------------------------------------------------------


def test_registering_a_trained_teacher_creates_a_version_with_the_digest_tag(mlflow_store, tmp_path: Path,
                                                                              monkeypatch) -> None:
    """A teacher job with `register_model` uploads its model to its run and registers it: the outcome and the
    version carry the digest of the saved folder, and the version's source is the run's model artifacts."""
    uri, client, _ = mlflow_store
    monkeypatch.setenv("LIFTPLACE_CACHE_DIR", str(tmp_path / "cache"))
    spec = JobSpec(job_id=1, kind="teacher", output_dir=str(tmp_path / "job1"), preset="tiny", steps=3,
                   batch_size=8, checkpoint_every=0, fid_samples=0, sample_steps=2, teacher_name="trained-tiny",
                   mlflow_tracking_uri=uri, mlflow_experiment=EXPERIMENT, register_model="trained-tiny")
    outcome = run_job(spec, device="cpu")
    assert outcome.status == "succeeded", outcome.reason
    assert outcome.model_version == "1"
    assert outcome.model_digest == folder_digest(outcome.model_dir)
    version = client.get_model_version("trained-tiny", "1")
    assert version.tags[DIGEST_TAG] == outcome.model_digest
    assert version.tags["liftplace.source"] == "preset" and version.run_id == outcome.mlflow_run_id
    run = client.get_run(outcome.mlflow_run_id)
    assert version.source == f"{run.info.artifact_uri}/{MODEL_ARTIFACT_PATH}"
    assert "registered the teacher as models:/trained-tiny/1" in (tmp_path / "job1" / "job.log").read_text()

    # The same files registered again (a registration retried after it succeeded) reuse the version.
    again = register_version(client, "trained-tiny", outcome.mlflow_run_id, outcome.model_digest)
    assert again.version == "1"
    assert [str(v.version) for v in client.search_model_versions("name = 'trained-tiny'")] == ["1"]

    # The reference resolves to a folder that loads as the very same model.
    folder = resolve_teacher(model_uri("trained-tiny", "1"), outcome.model_digest, tracking_uri=uri,
                             cache_root=tmp_path / "node")
    got, want = load_unet(folder), load_unet(outcome.model_dir)
    assert all((a == b).all() for a, b in zip(got.state_dict().values(), want.state_dict().values(), strict=True))


# --- the node cache -------------------------------------------------------------------------------


def test_two_concurrent_resolvers_download_once(mlflow_store, tmp_path: Path, monkeypatch) -> None:
    uri, _, _ = mlflow_store
    ref, digest = _publish(mlflow_store, _model_folder(tmp_path / "m"), "concurrent")
    calls: list[int] = []
    real = store._download

    def slow_download(*args, **kwargs):
        calls.append(threading.get_ident())
        time.sleep(0.5)  # the other resolver arrives while this one downloads
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "_download", slow_download)
    barrier = threading.Barrier(2)
    results: list[Path | BaseException] = []

    def resolver() -> None:
        barrier.wait()
        try:
            results.append(resolve_teacher(ref, digest, tracking_uri=uri, cache_root=tmp_path / "node"))
        except BaseException as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=resolver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(calls) == 1, f"downloaded {len(calls)} times"
    assert len(results) == 2 and results[0] == results[1], results
    entry = results[0]
    assert isinstance(entry, Path) and folder_digest(entry) == digest
    assert entry == tmp_path / "node" / "concurrent" / "1" / digest
    # a third resolver finds the entry without the registry
    assert resolve_teacher(ref, digest, tracking_uri=uri, cache_root=tmp_path / "node", client=object()) == entry
    assert len(calls) == 1


def test_a_broken_download_is_never_used(mlflow_store, tmp_path: Path, monkeypatch) -> None:
    """A download that fails half-way leaves no entry; one whose process died (its temporary folder left
    behind) is cleared by the next download, which then succeeds."""
    uri, _, _ = mlflow_store
    ref, digest = _publish(mlflow_store, _model_folder(tmp_path / "m"), "broken-download")
    node = tmp_path / "node"
    real = store._download

    def half_then_fail(client, teacher, tracking_uri, dst):
        (dst / "model").mkdir()
        (dst / "model" / "config.json").write_text('{"_class_name": "UNet2DModel"}')  # half of the files
        raise ConnectionResetError("the connection broke off mid-download")

    monkeypatch.setattr(store, "_download", half_then_fail)
    with pytest.raises(ConnectionResetError):
        resolve_teacher(ref, digest, tracking_uri=uri, cache_root=node)
    entry = node / "broken-download" / "1" / digest
    assert not entry.exists()
    assert [p.name for p in entry.parent.iterdir()] == [f"{digest}.lock"]  # the temporary folder is gone

    # A worker killed mid-download leaves its temporary folder: it is never taken for the entry.
    stale = entry.parent / f".{digest}.tmp-killed"
    (stale / "model").mkdir(parents=True)
    (stale / "model" / "config.json").write_text("{}")
    monkeypatch.setattr(store, "_download", real)
    assert resolve_teacher(ref, digest, tracking_uri=uri, cache_root=node) == entry
    assert folder_digest(entry) == digest and not stale.exists()


def test_a_digest_mismatch_fails_naming_teacher_version_and_uri(mlflow_store, tmp_path: Path) -> None:
    uri, _, _ = mlflow_store
    ref, digest = _publish(mlflow_store, _model_folder(tmp_path / "m"), "mismatch")
    promised = "0" * 64  # the digest the job was given: not that of the version's files
    with pytest.raises(TeacherUnavailable) as err:
        resolve_teacher(ref, promised, tracking_uri=uri, cache_root=tmp_path / "node")
    text = str(err.value)
    assert "teacher 'mismatch' version 1" in text and "models:/mismatch/1" in text and uri in text
    assert digest in text and promised in text
    entry_parent = tmp_path / "node" / "mismatch" / "1"
    assert [p.name for p in entry_parent.iterdir()] == [f"{promised}.lock"]  # nothing cached


def test_a_vanished_version_fails_naming_teacher_version_and_uri(mlflow_store, tmp_path: Path) -> None:
    uri, client, _ = mlflow_store
    ref, digest = _publish(mlflow_store, _model_folder(tmp_path / "m"), "vanished")
    client.delete_model_version("vanished", "1")
    with pytest.raises(TeacherUnavailable) as err:
        resolve_teacher(ref, digest, tracking_uri=uri, cache_root=tmp_path / "node")
    text = str(err.value)
    assert "teacher 'vanished' version 1: not in MLflow's model registry" in text
    assert "models:/vanished/1" in text and uri in text


def test_a_job_whose_teacher_version_vanished_fails_with_that_reason(mlflow_store, tmp_path: Path,
                                                                     monkeypatch) -> None:
    uri, client, _ = mlflow_store
    monkeypatch.setenv("LIFTPLACE_CACHE_DIR", str(tmp_path / "cache"))
    teacher = save_unet(build_unet("tiny", seed=0), tmp_path / "tiny")
    ref, digest = _publish(mlflow_store, teacher, "gone-teacher")
    client.delete_model_version("gone-teacher", "1")
    spec = JobSpec(job_id=7, kind="distill", output_dir=str(tmp_path / "job7"), steps=2, batch_size=8,
                   fid_samples=0, teacher_name="gone-teacher", teacher_path=str(tmp_path / "not-on-this-node"),
                   teacher_uri=ref, teacher_digest=digest, importance="magnitude", mlflow_tracking_uri=uri,
                   mlflow_experiment=EXPERIMENT)
    outcome = run_job(spec, device="cpu")
    assert outcome.status == "failed"
    assert outcome.reason.startswith("TeacherUnavailable: teacher 'gone-teacher' version 1: not in MLflow's model "
                                     "registry (models:/gone-teacher/1 at " + uri)
