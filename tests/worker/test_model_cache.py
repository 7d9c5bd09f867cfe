"""Models from MLflow URIs: a student a job logged to its run loads anywhere as runs:/<run id>/model.

`liftplace.load_unet` downloads the run's folder once into liftplace's cache (`liftplace.model_cache`)
and rebuilds the pruned student from its layout; a second load reads the cache; a URI with nothing
behind it fails naming the URI and leaves nothing in the cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from liftplace.model_cache import mlflow_model_folder
from liftplace.models import build_unet, count_parameters, load_unet, save_unet
from liftplace.paths import CACHE_DIR_ENV
from liftplace.pruning import prune


@pytest.fixture(scope="module")
def mlflow_store(make_mlflow_store):
    return make_mlflow_store("students")


def _outputs(model, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, model.config.in_channels, model.config.sample_size, model.config.sample_size, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([10, 500])).sample


def test_a_student_logged_to_its_run_loads_from_the_run_uri(mlflow_store, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    uri, client, experiment = mlflow_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    student = prune(build_unet("tiny", seed=0), 0.5, importance="magnitude").model.eval()
    save_unet(student, tmp_path / "student")
    run_id = client.create_run(experiment).info.run_id
    client.log_artifacts(run_id, str(tmp_path / "student"), "model")

    loaded = load_unet(f"runs:/{run_id}/model").eval()
    assert count_parameters(loaded) == count_parameters(student) < count_parameters(build_unet("tiny"))
    assert torch.equal(_outputs(loaded), _outputs(student))

    import mlflow.artifacts

    def no_download(**_: object) -> str:
        raise AssertionError("downloaded again: the cache was not used")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", no_download)
    assert torch.equal(_outputs(load_unet(f"runs:/{run_id}/model").eval()), _outputs(student))

    from liftplace.cli import _model_dir

    assert _model_dir(f"runs:/{run_id}/model") == f"runs:/{run_id}/model"  # the CLI passes the URI through


def test_a_uri_with_nothing_behind_it_fails_naming_it_and_caches_nothing(mlflow_store, tmp_path: Path) -> None:
    uri, client, experiment = mlflow_store
    run_id = client.create_run(experiment).info.run_id
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match=f"runs:/{run_id}/model"):
        mlflow_model_folder(f"runs:/{run_id}/model", tracking_uri=uri, cache_root=cache)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []
    with pytest.raises(ValueError, match="not an MLflow URI"):
        mlflow_model_folder("s3://bucket/model", tracking_uri=uri, cache_root=cache)


def test_the_cli_answers_a_uri_with_nothing_behind_it_naming_the_flag(mlflow_store, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from liftplace.cli import main

    uri, client, experiment = mlflow_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    run_id = client.create_run(experiment).info.run_id
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--model", f"runs:/{run_id}/model", "--output", str(tmp_path / "grid.png")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--model" in err and f"runs:/{run_id}/model" in err and "Traceback" not in err
    assert not (tmp_path / "grid.png").exists()
