from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from liftplace.data import BatchSampler, ImageFolderDataset, load_dataset, load_digits


def test_digits_shape_range_and_splits():
    x = load_digits(8)
    assert x.shape == (1797, 1, 8, 8)
    assert x.min() == -1.0 and x.max() == 1.0
    train, test = load_digits(8, split="train"), load_digits(8, split="test")
    assert train.shape[0] + test.shape[0] == 1797 and test.shape[0] == 360
    big = load_digits(16)
    assert big.shape == (1797, 1, 16, 16) and big.min() >= -1 and big.max() <= 1
    # K = 16 divides H*W at both resolutions.
    assert (8 * 8) % 16 == 0 and (16 * 16) % 16 == 0


@pytest.mark.parametrize("bad", [0, 7, 12, "8"])
def test_digits_bad_resolution(bad):
    with pytest.raises(ValueError, match="^resolution:"):
        load_digits(bad)


def test_image_folder_resize_crop(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).convert("RGB").save(tmp_path / "sub" / "b.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, resolution=16)
    assert len(ds) == 2
    x = ds.tensor()
    assert x.shape == (2, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    gray = ImageFolderDataset(tmp_path, resolution=8, channels=1).tensor()
    assert gray.shape == (2, 1, 8, 8)
    assert load_dataset(str(tmp_path), 16).shape == (2, 3, 16, 16)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset"):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="no .*images"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(ValueError, match="^dataset:"):
        load_dataset("cifar10-from-the-hub")


def test_batch_sampler_is_seeded_and_resumable():
    data = torch.arange(10, dtype=torch.float32).reshape(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    a = BatchSampler(data, 4, seed=3, flip=True)
    b = BatchSampler(data, 4, seed=3, flip=True)
    seq_a = [a() for _ in range(5)]
    assert all(torch.equal(x, b()) for x in seq_a)
    # Every image appears once per epoch (without replacement within an epoch).
    c = BatchSampler(data, 5, seed=1)
    epoch = torch.cat([c(), c()])[:, 0, 0, 0].sort().values
    assert torch.equal(epoch, torch.arange(10, dtype=torch.float32))
    # Resume: a sampler restored from a state continues identically.
    d = BatchSampler(data, 3, seed=9, flip=True)
    d(), d()
    state = d.state_dict()
    expected = [d() for _ in range(4)]
    e = BatchSampler(data, 3, seed=0, flip=True)
    e.load_state_dict(state)
    assert all(torch.equal(x, e()) for x in expected)
    with pytest.raises(ValueError, match="^batch_size:"):
        BatchSampler(data, 0, seed=0)
