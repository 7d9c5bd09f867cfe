"""Fixtures shared by the worker tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def local_ray() -> Iterator[str]:
    """An embedded Ray per test module (2 CPUs, 127.0.0.1, free ports chosen by Ray: never Redis's 6379)."""
    ray = pytest.importorskip("ray")

    from worker.ray_tasks import init_ray, shutdown_ray

    already = ray.is_initialized()
    description = init_ray(num_cpus=2, num_gpus=0)
    yield description
    if not already:
        shutdown_ray()


@pytest.fixture(scope="session")
def make_mlflow_store(tmp_path_factory) -> Callable[[str], tuple[str, Any, str]]:
    """A factory of SQLite MLflow stores with an artifact folder: `(tracking URI, MlflowClient, experiment id)`
    for an experiment of the given name. Creating one costs seconds, so modules keep theirs (module fixtures)."""

    def make(experiment: str) -> tuple[str, Any, str]:
        from mlflow import MlflowClient

        root = tmp_path_factory.mktemp("mlflow")
        uri = f"sqlite:///{root / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri)
        return uri, client, client.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())

    return make
