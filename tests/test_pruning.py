"""Diff-Pruning students: real parameter ratios, working forward/backward, determinism, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, UNet2DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from liftplace import defaults, pruning
from liftplace.models import build_unet, count_parameters, load_unet, save_unet
from liftplace.pruning import PruneResult, apply_layout, prune, pruned_layout
from liftplace.schedulers import make_ddim_scheduler

# Small Taylor settings: the scores only need real gradients, not many of them.
FAST = dict(taylor_batches=1, batch_size=8)


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    gen = torch.Generator().manual_seed(123)
    return torch.rand(16, 1, 8, 8, generator=gen) * 2 - 1


@pytest.fixture(scope="module")
def student_s(data) -> tuple[UNet2DModel, PruneResult]:
    """digits-s teacher and its 90%-pruned Taylor student, shared by several tests."""
    teacher = build_unet("digits-s", sample_size=8)
    return teacher, prune(teacher, 0.9, "taylor", data=data, **FAST)


def _inputs(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(batch, 1, 8, 8, generator=gen), torch.tensor([0, 250, 999][:batch])


def _check_structure(model: UNet2DModel) -> None:
    """The non-parameter attributes the diffusers forward reads agree with the pruned weights."""
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0 and m.weight.shape[0] == m.num_channels
        elif isinstance(m, Attention):
            assert m.to_q.out_features % m.heads == 0 and m.inner_dim == m.to_q.out_features
        elif isinstance(m, (Upsample2D, Downsample2D)):
            assert m.channels == m.conv.in_channels and m.out_channels == m.conv.out_channels
        elif isinstance(m, ResnetBlock2D):
            assert m.in_channels == m.conv1.in_channels and m.out_channels == m.conv2.out_channels


# --- the key requirement: ratio 0.9 leaves a few percent ----------------------------------


@pytest.mark.parametrize(
    "preset,importance",
    [
        ("digits-s", "magnitude"),
        ("digits-m", "taylor"),
        ("digits-m", "magnitude"),
        ("digits-l", "taylor"),
        ("digits-l", "magnitude"),
    ],
)
def test_ratio_09_leaves_a_few_percent(preset, importance, data):
    teacher = build_unet(preset, sample_size=8)
    res = prune(teacher, 0.9, importance, data=data, **FAST)
    assert isinstance(res.model, UNet2DModel)
    assert res.params_before == count_parameters(teacher)
    assert res.params_after == count_parameters(res.model)
    assert res.remaining_fraction == pytest.approx(res.params_after / res.params_before)
    # widths x0.1 => parameters ~x0.01; the paper keeps 1.6% at 90%
    assert 0.005 < res.remaining_fraction < 0.04, res.remaining_fraction
    # the time embedding and the residual streams were pruned too, not only the inner convs
    assert res.model.time_embedding.linear_2.out_features < teacher.time_embedding.linear_2.out_features // 5
    assert res.model.conv_in.out_channels < teacher.conv_in.out_channels // 5
    assert res.model.conv_out.out_channels == teacher.conv_out.out_channels  # image channels kept
    _check_structure(res.model)


def test_taylor_student_digits_s(student_s):
    teacher, res = student_s
    assert res.importance == "taylor" and res.ratio == 0.9
    assert 0.005 < res.remaining_fraction < 0.04
    # pruned below the paper's ratio as well as below the teacher's parameter count
    assert res.params_after < res.params_before


# --- the student works, the teacher is untouched ------------------------------------------


def test_forward_backward_and_teacher_untouched(data):
    teacher = build_unet("digits-s", sample_size=8)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    n_before = count_parameters(teacher)
    res = prune(teacher, 0.9, "taylor", data=data, **FAST)

    assert count_parameters(teacher) == n_before
    after = teacher.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in teacher.parameters())
    assert pruned_layout(teacher) is None

    student = res.model.train()
    assert all(p.grad is None for p in student.parameters())
    x, t = _inputs()
    out = student(x, t).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_deterministic_same_seed(data):
    teacher = build_unet("tiny", sample_size=8)
    a = prune(teacher, 0.7, "taylor", data=data, seed=3, **FAST).model.state_dict()
    b = prune(teacher, 0.7, "taylor", data=data, seed=3, **FAST).model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_taylor_scores_early_timesteps_and_differ_from_magnitude(monkeypatch, data):
    seen: list[torch.Tensor] = []
    real = pruning.make_ddpm_scheduler

    def spying_scheduler():
        sched = real()
        add_noise = sched.add_noise

        def spy(x, noise, t):
            seen.append(t.clone())
            return add_noise(x, noise, t)

        sched.add_noise = spy
        return sched

    monkeypatch.setattr(pruning, "make_ddpm_scheduler", spying_scheduler)
    teacher = build_unet("tiny", sample_size=8)
    taylor = prune(teacher, 0.5, "taylor", data=data, taylor_batches=3, batch_size=4).model
    assert [len(t) for t in seen] == [4, 4, 4]
    assert max(int(t.max()) for t in seen) < defaults.TAYLOR_MAX_TIMESTEP_FRACTION * defaults.NUM_TRAIN_TIMESTEPS
    magnitude = prune(teacher, 0.5, "magnitude").model
    assert not torch.equal(taylor.conv_in.weight, magnitude.conv_in.weight)  # the gradients chose other channels


@pytest.mark.parametrize("ratio", [0.5, 0.9])
@pytest.mark.parametrize("importance", ["taylor", "magnitude"])
def test_tiny_prunes_and_runs(ratio, importance, data):
    teacher = build_unet("tiny", sample_size=8)
    res = prune(teacher, ratio, importance, data=data, **FAST)
    _check_structure(res.model)
    expected = (1 - ratio) ** 2
    assert expected / 3 < res.remaining_fraction < expected * 3
    x, t = _inputs(2)
    out = res.model(x, t).sample
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_extreme_ratio_keeps_one_channel_per_group():
    # 16 * (1 - 0.99) rounds to 0 channels: torch-pruning alone would then skip the group.
    teacher = build_unet("tiny", sample_size=8)
    res = prune(teacher, 0.99, "magnitude")
    assert res.model.conv_in.out_channels == 1
    assert res.remaining_fraction < 0.01
    x, t = _inputs(2)
    assert torch.isfinite(res.model(x, t).sample).all()


def test_ignore_attention_keeps_attention_inner_width():
    teacher = build_unet("tiny", sample_size=8)
    res = prune(teacher, 0.9, "magnitude", ignore_attention=True)
    t_attn = [m for m in teacher.modules() if isinstance(m, Attention)]
    s_attn = [m for m in res.model.modules() if isinstance(m, Attention)]
    assert [m.to_q.out_features for m in s_attn] == [m.to_q.out_features for m in t_attn]
    assert [m.heads for m in s_attn] == [m.heads for m in t_attn]
    assert all(s.query_dim < t.query_dim for s, t in zip(s_attn, t_attn, strict=True))
    x, t = _inputs(2)
    assert torch.isfinite(res.model(x, t).sample).all()


# --- bad arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0, 0.0, 1, 1.0, -0.1, 1.5, float("nan"), True])
def test_bad_ratio(ratio):
    with pytest.raises(ValueError, match=r"^ratio:"):
        prune(build_unet("tiny", sample_size=8), ratio, "magnitude")


def test_bad_importance_and_missing_data(data):
    teacher = build_unet("tiny", sample_size=8)
    with pytest.raises(ValueError, match=r"^importance:"):
        prune(teacher, 0.5, "random", data=data)
    with pytest.raises(ValueError, match=r"^data:"):
        prune(teacher, 0.5, "taylor")
    with pytest.raises(ValueError, match=r"^data:"):
        prune(teacher, 0.5, "taylor", data=data * 3)  # outside [-1, 1]
    with pytest.raises(ValueError, match=r"^data:"):
        prune(teacher, 0.5, "taylor", data=data[:, 0])  # not [N, C, H, W]


# --- layout, save and load -----------------------------------------------------------------


def test_layout_apply_to_fresh_model(student_s):
    _, res = student_s
    layout = pruned_layout(res.model)
    assert layout is not None and layout["modules"]
    assert json.loads(json.dumps(layout)) == layout
    assert layout["modules"]["conv_in"]["out_channels"] == res.model.conv_in.out_channels
    fresh = UNet2DModel.from_config(res.model.config)
    apply_layout(fresh, layout)
    fresh.load_state_dict(res.model.state_dict(), strict=True)
    assert pruned_layout(fresh) == layout
    with pytest.raises(ValueError, match=r"^layout:"):
        apply_layout(UNet2DModel.from_config(res.model.config), {"modules": {"nope": {"type": "Conv2d"}}})


def test_save_load_round_trip_and_ddim_pipeline(student_s, tmp_path):
    _, res = student_s
    student = res.model.eval()
    save_unet(student, tmp_path / "student")
    loaded = load_unet(tmp_path / "student").eval()
    assert isinstance(loaded, UNet2DModel)
    assert count_parameters(loaded) == res.params_after
    assert pruned_layout(loaded) == pruned_layout(student)
    x, t = _inputs()
    with torch.no_grad():
        assert torch.allclose(loaded(x, t).sample, student(x, t).sample, atol=1e-6)

    pipe = DDIMPipeline(unet=loaded, scheduler=make_ddim_scheduler())
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    images = images.images
    assert images.shape == (2, 8, 8, 1)
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1


def test_pruned_student_can_be_pruned_again(student_s, data):
    # A capacity-study teacher may itself be a pruned student.
    _, res = student_s
    again = prune(res.model, 0.5, "magnitude")
    assert again.params_before == res.params_after
    assert again.params_after < res.params_after
    x, t = _inputs(2)
    assert torch.isfinite(again.model(x, t).sample).all()
