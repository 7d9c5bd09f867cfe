"""FeatKD's hook sets ("sublayers", the LIFT and PLACE code's; "blocks") and the option's path to a run."""

from __future__ import annotations

import collections

import pytest
import torch
from diffusers import UNet2DModel

from liftplace.config import DistillConfig
from liftplace.losses import (
    SUBLAYER_ADAPTER_INIT,
    FeatureKD,
    default_feature_blocks,
    feature_layers,
    sublayer_feature_modules,
)
from liftplace.methods import FEATKD_LAYER_SETS, FEATKD_LAYERS
from liftplace.presets import TEACHER_PRESETS
from worker.run import training_config
from worker.spec import JobSpec

TINY_SUBLAYERS = [
    "down_blocks.0.resnets.0", "down_blocks.0.downsamplers.0.conv",
    "down_blocks.1.resnets.0", "down_blocks.1.attentions.0",
    "mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1",
    "up_blocks.0.resnets.0", "up_blocks.0.attentions.0", "up_blocks.0.resnets.1", "up_blocks.0.attentions.1",
    "up_blocks.0.upsamplers.0.conv",
    "up_blocks.1.resnets.0", "up_blocks.1.resnets.1",
]


def _kind(name: str) -> str:
    return "conv" if name.endswith(".conv") else name.rsplit(".", 2)[-2]


def test_sublayers_of_the_celeba_unet_are_the_41_modules_of_the_lift_place_code() -> None:
    """The CelebA 64x64 DDPM (ch 128, mult 1,2,2,2,4, 2 res blocks, attention at 16x16): every ResNet
    (10 down, 2 mid, 15 up), attention (2, 1, 3) and resampling conv (4 down, 4 up)."""
    with torch.device("meta"):  # names only: no weights needed
        model = UNet2DModel(**TEACHER_PRESETS["ddpm-celeba64"].config(64, 3))
    names = sublayer_feature_modules(model)
    assert len(names) == 41 and len(set(names)) == 41
    assert collections.Counter(map(_kind, names)) == {"resnets": 27, "attentions": 6, "conv": 8}
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], torch.nn.Conv2d) for n in names if n.endswith(".conv"))
    assert len(feature_layers(model, "blocks")) == 11  # 5 down, mid, 5 up


def test_sublayers_are_in_forward_order(tiny_teacher) -> None:
    assert feature_layers(tiny_teacher, "sublayers") == TINY_SUBLAYERS
    order: list[str] = []
    modules = dict(tiny_teacher.named_modules())
    handles = [modules[n].register_forward_hook(lambda *_a, n=n: order.append(n)) for n in TINY_SUBLAYERS]
    tiny_teacher(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long))
    for h in handles:
        h.remove()
    assert order == TINY_SUBLAYERS


def test_sublayer_adapters_are_bias_free_small_and_train_the_student(tiny_teacher, narrow_student) -> None:
    fkd = FeatureKD(tiny_teacher, narrow_student, layers="sublayers")
    assert fkd.layers == "sublayers" and fkd.blocks == TINY_SUBLAYERS
    for adapter in fkd.adapters.values():
        assert adapter.bias is None and adapter.kernel_size == (1, 1)
        assert 0 < adapter.weight.abs().max() <= SUBLAYER_ADAPTER_INIT
    ad = fkd.adapters["down_blocks__1__attentions__0"]
    assert (ad.in_channels, ad.out_channels) == (16, 32)  # student width -> teacher width
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 500])
    with torch.no_grad():
        tiny_teacher(x, t)
    narrow_student(x, t)
    loss = fkd.loss()
    loss.backward()
    assert loss.item() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fkd.adapters.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in narrow_student.parameters())


def test_blocks_adapters_are_pytorch_default_convs_in_block_order(tiny_teacher, narrow_student) -> None:
    """layers="blocks" keeps the setup the option was added to: same blocks, same adapters, same draws."""
    torch.manual_seed(3)
    fkd = FeatureKD(tiny_teacher, narrow_student, layers="blocks")
    assert fkd.blocks == default_feature_blocks(tiny_teacher)
    widths = {"down_blocks.0": (8, 16), "down_blocks.1": (16, 32), "mid_block": (16, 32), "up_blocks.0": (16, 32),
              "up_blocks.1": (8, 16)}
    torch.manual_seed(3)
    expected = [torch.nn.Conv2d(*widths[name], kernel_size=1) for name in fkd.blocks]
    for name, conv in zip(fkd.blocks, expected, strict=True):
        adapter = fkd.adapters[name.replace(".", "__")]
        torch.testing.assert_close(adapter.weight, conv.weight, rtol=0, atol=0)
        torch.testing.assert_close(adapter.bias, conv.bias, rtol=0, atol=0)
    assert FeatureKD(tiny_teacher, narrow_student).layers == FEATKD_LAYERS  # one default for the class and a run


def test_an_unknown_hook_set_is_refused(tiny_teacher, narrow_student) -> None:
    with pytest.raises(ValueError, match="^featkd_layers:"):
        FeatureKD(tiny_teacher, narrow_student, layers="all")
    with pytest.raises(ValueError, match="^featkd_layers:"):
        feature_layers(tiny_teacher, "all")
    with pytest.raises(ValueError, match="^featkd_layers:"):
        DistillConfig(featkd_layers="all")


def test_the_option_reaches_the_config_from_the_cli_and_the_job_spec(tmp_path) -> None:
    from liftplace.cli import build_parser

    assert FEATKD_LAYERS in FEATKD_LAYER_SETS == ("sublayers", "blocks")
    assert DistillConfig().featkd_layers == JobSpec(job_id=1, kind="distill", output_dir="x").featkd_layers \
        == FEATKD_LAYERS == "sublayers"
    spec = JobSpec(job_id=1, kind="distill", output_dir="x", featkd_layers="blocks")
    assert training_config(spec).featkd_layers == "blocks"
    parser = build_parser()
    base = ["distill", "--teacher", str(tmp_path), "--steps", "1", "--output", str(tmp_path / "out")]
    assert parser.parse_args(base).featkd_layers == FEATKD_LAYERS
    assert parser.parse_args([*base, "--featkd-layers", "blocks"]).featkd_layers == "blocks"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--featkd-layers", "all"])


def _distill(teacher, student, digits, tmp_path, **options):
    from liftplace.training import distill

    return distill(teacher, None, "lift+place+featkd", 0, 2, data=digits[:32], student=student, batch_size=8,
                   device="cpu", checkpoint_dir=tmp_path, **options)


def test_a_run_trains_the_adapters_of_its_hook_set(tiny_teacher, narrow_student, digits, tmp_path) -> None:
    result = _distill(tiny_teacher, narrow_student, digits, tmp_path / "s")
    assert result.outcome == "completed" and result.last_metrics["loss_feat"] > 0
    ckpt = torch.load(tmp_path / "s" / "last.pt", map_location="cpu", weights_only=False)
    assert sorted(ckpt["extra"][0]) == sorted(f"adapters.{n.replace('.', '__')}.weight" for n in TINY_SUBLAYERS)
    assert ckpt["run_info"]["featkd_layers"] == "sublayers"
    assert not any(tiny_teacher._forward_hooks or m._forward_hooks for m in tiny_teacher.modules())  # hooks removed


def test_blocks_runs_keep_the_run_identity_of_checkpoints_made_before_the_option(
        tiny_teacher, narrow_student, digits, tmp_path) -> None:
    """A "blocks" run's identity has no featkd_layers key (older checkpoints match it); switching the hook set
    on a checkpoint is refused rather than loading adapters of the other set."""
    import copy

    student = copy.deepcopy(narrow_student)
    _distill(tiny_teacher, narrow_student, digits, tmp_path, featkd_layers="blocks")
    ckpt = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)
    assert "featkd_layers" not in ckpt["run_info"] and len(ckpt["extra"][0]) == 10  # 5 blocks x (weight, bias)
    from liftplace.training import distill

    with pytest.raises(ValueError, match="^resume: .*different run"):
        distill(tiny_teacher, None, "lift+place+featkd", 0, 4, data=digits[:32], student=student, batch_size=8,
                device="cpu", checkpoint_dir=tmp_path, resume=True, featkd_layers="sublayers")
