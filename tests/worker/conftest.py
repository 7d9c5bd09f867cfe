"""Fixtures shared by the worker tests."""

from __future__ import annotations

from collections.abc import Iterator

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
