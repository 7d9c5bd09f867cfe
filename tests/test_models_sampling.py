from __future__ import annotations

import pytest
import torch

from liftplace.models import PRESET_NAMES, build_unet, count_parameters, load_unet, save_unet
from liftplace.sampling import sample, save_grid, to_pipeline


def test_presets_span_ten_times_in_parameters():
    sizes = {p: count_parameters(build_unet(p)) for p in ("digits-s", "digits-m", "digits-l")}
    assert sizes["digits-s"] < sizes["digits-m"] < sizes["digits-l"]
    assert sizes["digits-l"] / sizes["digits-s"] >= 10
    assert "tiny" in PRESET_NAMES


def test_build_unet_is_seeded_and_validated():
    a, b = build_unet("tiny", seed=1), build_unet("tiny", seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    with pytest.raises(ValueError, match="^preset:"):
        build_unet("huge")
    with pytest.raises(ValueError, match="^sample_size:"):
        build_unet("digits-s", sample_size=6)


def test_save_load_round_trip(tmp_path, tiny_teacher):
    save_unet(tiny_teacher, tmp_path / "t", extra={"note": "test"})
    assert (tmp_path / "t" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_unet(tmp_path / "t")
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 900])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t).sample, tiny_teacher(x, t).sample)
    # A pipeline folder with a unet/ subfolder loads too.
    save_unet(tiny_teacher, tmp_path / "pipe" / "unet")
    assert count_parameters(load_unet(tmp_path / "pipe")) == count_parameters(tiny_teacher)
    with pytest.raises(FileNotFoundError, match="model"):
        load_unet(tmp_path / "nothing")


def test_sampling_is_seeded_and_batch_independent(tiny_teacher):
    a = sample(tiny_teacher, 6, seed=4, num_inference_steps=4)
    b = sample(tiny_teacher, 6, seed=4, num_inference_steps=4, batch_size=4)
    c = sample(tiny_teacher, 6, seed=5, num_inference_steps=4)
    assert a.shape == (6, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError, match="^num_samples:"):
        sample(tiny_teacher, 0)
    with pytest.raises(ValueError, match="^num_inference_steps:"):
        sample(tiny_teacher, 1, num_inference_steps=0)


def test_pipeline_and_grid(tmp_path, tiny_teacher):
    pipe = to_pipeline(tiny_teacher)
    out = pipe(batch_size=2, num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 8, 8, 1)
    path = save_grid(torch.rand(5, 1, 8, 8) * 2 - 1, tmp_path / "g.png", scale=2)
    from PIL import Image

    with Image.open(path) as img:
        # 3 columns, 2 rows of 8-pixel cells with 1-pixel borders, doubled.
        assert img.size == ((3 * 9 + 1) * 2, (2 * 9 + 1) * 2)
