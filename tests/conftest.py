"""Shared fixtures: tiny models and the digits data, built once per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one CPU thread is as fast, and far faster on a busy machine (restored after the module)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_weights() -> Path:
    """The cached digits classifier (trained once per session into the test cache dir)."""
    from liftplace.features import ensure_digits_classifier

    return ensure_digits_classifier()


@pytest.fixture()
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits_weights: Path) -> Path:
    """A fresh LIFTPLACE_CACHE_DIR holding only a copy of the trained digits classifier."""
    target = tmp_path / "cache" / "features" / digits_weights.name
    target.parent.mkdir(parents=True)
    shutil.copy2(digits_weights, target)
    monkeypatch.setenv("LIFTPLACE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def no_inception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No LIFTPLACE_INCEPTION_WEIGHTS and an empty torch hub dir (returned)."""
    from liftplace.features import INCEPTION_WEIGHTS_ENV

    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch" / "hub"))
    return tmp_path / "torch" / "hub"
