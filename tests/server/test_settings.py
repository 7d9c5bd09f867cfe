"""Settings from the environment, names that are never paths, folders that stay inside their root."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from liftplace import defaults
from server.schemas import check_name
from server.settings import Settings, resolve_under


def test_embedded_defaults_live_under_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DATABASE_URL", "RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_UI_URL", "LIFTPLACE_MAX_STEPS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LIFTPLACE_DATA_DIR", str(tmp_path / "d"))
    s = Settings()
    assert s.data_dir == (tmp_path / "d").resolve()
    assert s.database_url == f"sqlite:///{s.data_dir / 'liftplace.db'}"
    assert s.mlflow_tracking_uri == f"sqlite:///{s.data_dir / 'mlflow.db'}"
    assert s.teachers_dir == s.data_dir / "teachers" and s.datasets_dir == s.data_dir / "datasets"
    assert s.ray_address is None and s.embedded_ray and s.host == "127.0.0.1"
    assert s.max_steps == defaults.MAX_STEPS and s.mlflow_ui_url == "http://127.0.0.1:5000"


def test_cluster_settings_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "DATABASE_URL": "postgresql+psycopg://u@db:5432/liftplace", "RAY_ADDRESS": "ray-head:6379",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_UI_URL": "http://lab:5000/",
        "LIFTPLACE_TEACHERS_DIR": str(tmp_path / "t"), "LIFTPLACE_DATASETS_DIR": str(tmp_path / "ds"),
        "LIFTPLACE_GPUS_PER_JOB": "0.25", "LIFTPLACE_CPUS_PER_JOB": "2", "LIFTPLACE_MAX_STEPS": "5000",
        "LIFTPLACE_MAX_JOBS_PER_STUDY": "70", "LIFTPLACE_MAX_ATTEMPTS": "5", "LIFTPLACE_HOST": "0.0.0.0",
        "LIFTPLACE_PORT": "9000",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert s.database_url == env["DATABASE_URL"] and s.ray_address == "ray-head:6379" and not s.embedded_ray
    assert s.mlflow_tracking_uri == "http://mlflow:5000" and s.mlflow_ui_url == "http://lab:5000"
    assert s.teachers_dir == (tmp_path / "t").resolve() and s.datasets_dir == (tmp_path / "ds").resolve()
    assert (s.gpus_per_job, s.cpus_per_job, s.max_steps, s.max_jobs_per_study, s.max_attempts) == (0.25, 2, 5000,
                                                                                                    70, 5)
    assert (s.host, s.port) == ("0.0.0.0", 9000)
    monkeypatch.setenv("LIFTPLACE_MAX_STEPS", str(defaults.MAX_STEPS + 1))
    with pytest.raises(ValidationError, match="max_steps"):
        Settings()


@pytest.mark.parametrize("name", ["digits-s", "celeba_64", "teacher.v2", "lift+place", "A1"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(("name", "reason"), [
    ("", "empty"), (" x", "spaces"), ("x ", "spaces"), ("a/b", "path separator"), ("a\\b", "path separator"),
    ("/abs", "path separator"), ("..", "'..'"), ("a..b", "'..'"), (".hidden", "start with a letter"),
    ("-x", "start with a letter"), ("a b", "may only hold"), ("a\nb", "may only hold"), ("x" * 129, "at most 128"),
])
def test_bad_names(name: str, reason: str) -> None:
    with pytest.raises(Exception, match=reason):
        check_name(name)


def test_folders_stay_inside_their_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "ok").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "link").symlink_to(tmp_path / "secret")
    assert resolve_under(root, "ok") == (root / "ok").resolve()
    for bad in ("..", "../secret", "link", "", "."):
        with pytest.raises(ValueError):
            resolve_under(root, bad)


def test_gpu_requests_follow_rays_rule(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path, gpus_per_job=0.25).gpus_per_job == 0.25
    assert Settings(data_dir=tmp_path, gpus_per_job=2).gpus_per_job == 2
    with pytest.raises(ValidationError, match="a fraction of a GPU must be at most 1"):
        Settings(data_dir=tmp_path, gpus_per_job=1.5)


def test_storage_is_local_unless_set_and_a_bad_value_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFTPLACE_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.delenv("LIFTPLACE_STORAGE", raising=False)
    assert Settings().storage == "local" and not Settings().teachers_in_registry
    monkeypatch.setenv("LIFTPLACE_STORAGE", "mlflow")
    assert Settings().teachers_in_registry
    monkeypatch.setenv("LIFTPLACE_STORAGE", "nfs")
    with pytest.raises(ValidationError, match="storage"):
        Settings()
