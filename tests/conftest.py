"""Shared fixtures: tiny models and the digits data, built once per session."""

from __future__ import annotations

import os
import tempfile

# The cache (digits feature extractor, FID statistics) never goes to the user's home in tests.
os.environ.setdefault("LIFTPLACE_CACHE_DIR", tempfile.mkdtemp(prefix="liftplace-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny tensors: one intra-op thread is faster than two fighting for two cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> torch.Tensor:
    from liftplace.data import load_digits

    return load_digits(8)


@pytest.fixture()
def tiny_teacher():
    from liftplace.models import build_unet

    return build_unet("tiny", seed=0)


@pytest.fixture()
def narrow_student():
    """A hand-narrowed copy of the tiny preset: same blocks, other widths (no pruning needed)."""
    from diffusers import UNet2DModel

    from liftplace.models import build_unet

    cfg = dict(build_unet("tiny").config)
    cfg["block_out_channels"] = (8, 16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        return UNet2DModel.from_config(cfg)
