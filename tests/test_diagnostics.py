from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from liftplace.diagnostics import ERROR_MAP_TIMESTEPS, error_maps, error_means, heatmap, save_error_maps


def test_error_maps_shape_and_zero_for_identical_models(tiny_teacher, digits):
    x0 = digits[:3]
    maps = error_maps(tiny_teacher, copy.deepcopy(tiny_teacher), x0)
    assert maps.shape == (len(ERROR_MAP_TIMESTEPS), 3, 1, 8, 8)
    assert maps.device.type == "cpu"
    assert torch.equal(maps, torch.zeros_like(maps))
    assert all(v == 0.0 for v in error_means(maps).values())


def test_error_maps_nonzero_for_different_models_and_seeded(tiny_teacher, narrow_student, digits):
    x0 = digits[:2]
    tiny_teacher.train()
    maps = error_maps(tiny_teacher, narrow_student, x0, timesteps=(10, 900), seed=3)
    assert maps.shape == (2, 2, 1, 8, 8)
    assert (maps >= 0).all() and maps.mean() > 0
    assert tiny_teacher.training, "the models keep their train/eval mode"
    again = error_maps(tiny_teacher, narrow_student, x0, timesteps=(10, 900), seed=3)
    assert torch.equal(maps, again)
    other = error_maps(tiny_teacher, narrow_student, x0, timesteps=(10, 900), seed=4)
    assert not torch.equal(maps, other)
    # The same noise at every timestep: the error maps at t and t come out the same.
    twice = error_maps(tiny_teacher, narrow_student, x0, timesteps=(500, 500), seed=3)
    assert torch.equal(twice[0], twice[1])
    assert set(error_means(maps, (10, 900))) == {10, 900}


@pytest.mark.parametrize("bad", [(), (1000,), (-1,), (2.5,)])
def test_error_maps_rejects_bad_timesteps(tiny_teacher, digits, bad):
    with pytest.raises(ValueError, match="timesteps"):
        error_maps(tiny_teacher, tiny_teacher, digits[:1], bad)


def test_error_maps_rejects_bad_x0(tiny_teacher):
    with pytest.raises(ValueError, match="x0"):
        error_maps(tiny_teacher, tiny_teacher, torch.zeros(1, 8, 8))


def test_save_error_maps_grid(tmp_path, tiny_teacher, narrow_student, digits):
    maps = error_maps(tiny_teacher, narrow_student, digits[:5])
    path = save_error_maps(maps, tmp_path / "maps" / "err.png", scale=2)
    with Image.open(path) as img:
        assert img.mode == "RGB"
        # 4 rows (timesteps) x 5 columns (images) of 8x8 pixels, 1-pixel borders, scaled by 2
        assert img.size == ((5 * 9 + 1) * 2, (4 * 9 + 1) * 2)
    # all-zero maps (identical models) still save
    save_error_maps(torch.zeros(2, 1, 1, 8, 8), tmp_path / "zero.png")


def test_heatmap_range():
    rgb = heatmap(torch.tensor([[0.0, 0.5, 1.0, 2.0]]))
    assert rgb.shape == (3, 1, 4)
    assert rgb.min() >= -1 and rgb.max() <= 1
    assert torch.equal(rgb[:, 0, 0], torch.tensor([-1.0, -1.0, -1.0]))  # 0 -> black
    assert torch.equal(rgb[:, 0, 2], torch.tensor([1.0, 1.0, 1.0]))  # 1 -> white
