"""TeacherConfig / DistillConfig: a bad value fails when the config is built, naming the field."""

from __future__ import annotations

import math

import pytest

from liftplace import defaults
from liftplace.config import DistillConfig, TeacherConfig, TrainConfig, check_lr_schedule
from liftplace.methods import METHODS, PAPER_METHOD


@pytest.mark.parametrize(
    "field,value",
    [
        ("steps", 0),
        ("steps", defaults.MAX_STEPS + 1),
        ("steps", 2.5),
        ("steps", True),
        ("seed", -1),
        ("seed", "0"),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", -1e-3),
        ("lr", math.nan),
        ("lr_schedule", "linear"),
        ("ema_decay", 1.0),
        ("ema_decay", -0.1),
        ("grad_clip", 0.0),
        ("reduction", "max"),
        ("flip", 1),
        ("checkpoint_every", -1),
        ("checkpoint_every", 1.5),
    ],
)
@pytest.mark.parametrize("cls", [TeacherConfig, DistillConfig])
def test_a_bad_training_option_is_refused_by_name(cls: type, field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: ") as exc:
        cls(**{field: value})
    assert repr(value) in str(exc.value)


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"method": "kd"}, "method"),
        ({"student_ratio": 1.0}, "student_ratio"),
        ({"student_ratio": 0}, "student_ratio"),
        ({"importance": "random"}, "importance"),
        ({"group_size": 0}, "group_size"),
        ({"group_size": 4.0}, "group_size"),
        ({"coarse": "l0"}, "coarse"),
        ({"curriculum": "yes"}, "curriculum"),
        ({"ablation": "both"}, "ablation"),
        ({"method": "outkd", "ablation": "fine"}, "ablation"),
        ({"lambda_kd": -1.0}, "lambda_kd"),
        ({"lambda_feat": math.inf}, "lambda_feat"),
        ({"lambda_diff": "1"}, "lambda_diff"),
    ],
)
def test_a_bad_distillation_option_is_refused_by_name(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        DistillConfig(**changes)


def test_the_method_is_checked_first() -> None:
    """Whether an option applies depends on the method, so an unknown method is the error reported."""
    with pytest.raises(ValueError, match="^method: unknown method 'kd'"):
        DistillConfig(method="kd", ablation="fine", lr=-1.0)


def test_a_given_student_needs_no_ratio_and_options_may_be_none() -> None:
    config = DistillConfig(student_ratio=None, group_size=None, ablation="coarse", lambda_kd=0.0)
    assert config.student_ratio is None and config.place_group_size is None
    assert config.lambdas == (defaults.LAMBDA_DIFF, 0.0, defaults.LAMBDA_FEAT)


def test_lambdas_and_group_size_follow_the_method() -> None:
    for name, spec in METHODS.items():
        config = DistillConfig(method=name)
        assert config.spec is spec
        assert config.lambdas == (spec.lambda_diff, spec.lambda_kd, spec.lambda_feat)
        assert config.place_group_size == (defaults.GROUP_SIZE if spec.uses_place else None)
    assert DistillConfig(lambda_kd=2, lambda_feat=0).lambdas == (defaults.LAMBDA_DIFF, 2.0, 0.0)


def test_build_and_replace_check_again() -> None:
    base = DistillConfig(method="outkd", steps=40)
    assert DistillConfig.build(None) == DistillConfig()
    assert DistillConfig.build(base) is base
    assert DistillConfig.build(base, lr=1e-3) == DistillConfig(method="outkd", steps=40, lr=1e-3)
    with pytest.raises(ValueError, match="^lr_schedule: "):
        base.replace(lr_schedule="step")
    with pytest.raises(TypeError, match="no_such_option"):
        DistillConfig.build(base, no_such_option=1)
    with pytest.raises(TypeError, match="^config: expected a TeacherConfig, got DistillConfig"):
        TeacherConfig.build(base)
    assert isinstance(TeacherConfig(), TrainConfig) and not isinstance(TeacherConfig(), DistillConfig)


def test_configs_are_frozen_and_keyword_only() -> None:
    config = TeacherConfig()
    with pytest.raises(AttributeError):
        config.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        TeacherConfig(100)  # type: ignore[misc]
    assert DistillConfig().method == PAPER_METHOD


def test_one_lr_schedule_check() -> None:
    assert [check_lr_schedule(s) for s in defaults.LR_SCHEDULES] == list(defaults.LR_SCHEDULES)
    with pytest.raises(ValueError, match=r"^lr_schedule: expected one of constant, cosine, got 'step'$"):
        check_lr_schedule("step")
