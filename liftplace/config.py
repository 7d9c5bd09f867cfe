"""The options of a training run, typed: `TeacherConfig` and `DistillConfig`.

Every field defaults to its value in `liftplace.defaults` / `liftplace.methods`. A config checks
itself when it is built, so a bad value fails before any model is loaded or pruned, with a
ValueError that starts with the field's name ("lr_schedule: expected one of ..."); the CLI maps
that name back to its flag. No torch here: the worker, the CLI and the server can build and
check a config cheaply.

    config = DistillConfig(method="outkd", steps=4000, lr=1e-2, lr_schedule="cosine")
    result = distill(teacher, data=data, config=config, checkpoint_dir="runs/s0/checkpoint")
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

from liftplace import defaults
from liftplace.methods import FEATKD_LAYER_SETS, FEATKD_LAYERS, PAPER_METHOD, MethodSpec, get_method

__all__ = [
    "TrainConfig",
    "TeacherConfig",
    "DistillConfig",
    "check_lr_schedule",
    "check_ema_decay",
    "check_positive_int",
    "check_seed",
]

MAX_BATCH_SIZE: int = 1_000_000


# --- checks: each raises ValueError("NAME: ...") ---------------------------------------------------


def check_lr_schedule(schedule: object) -> str:
    """`schedule` if it is one of `defaults.LR_SCHEDULES`; ValueError naming `lr_schedule` otherwise."""
    if schedule not in defaults.LR_SCHEDULES:
        raise ValueError(f"lr_schedule: expected one of {', '.join(defaults.LR_SCHEDULES)}, got {schedule!r}")
    return str(schedule)


def check_ema_decay(decay: object) -> float:
    """`decay` if 0 <= decay < 1; ValueError naming `ema_decay` otherwise."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay: expected 0 <= decay < 1, got {decay!r}")
    return decay


def check_positive_int(name: str, value: object, maximum: int = defaults.MAX_STEPS) -> int:
    """`value` if it is an integer in 1..maximum (bools refused); ValueError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ValueError(f"{name}: expected an integer in 1..{maximum}, got {value!r}")
    return value


def check_seed(seed: object) -> int:
    """`seed` if it is a non-negative integer; ValueError naming `seed` otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    return seed


def _check_number(name: str, value: object, *, positive: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        raise ValueError(f"{name}: expected a {'positive' if positive else 'non-negative'} number, got {value!r}")


def _check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)!r}, got {value!r}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected a bool, got {value!r}")


# --- configs -------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Options of the training loop, shared by teachers and students.

    steps: optimisation steps; seed: data order, timesteps, noise (and a pruned student);
    batch_size: images per step; lr: Adam's learning rate, with `lr_schedule` "constant" or
    "cosine" (decayed to 0 over `steps`, see `liftplace.training.lr_at`); ema_decay: of the
    EMA model (warmed up); grad_clip: max global L2 norm of the gradients; reduction: "sum"
    over C*H*W per sample or "mean" of the losses; flip: random horizontal flips;
    checkpoint_every: steps between checkpoints when the run has a checkpoint folder
    (0: only the final one).
    """

    steps: int = defaults.STEPS
    seed: int = defaults.SEED
    batch_size: int = defaults.BATCH_SIZE
    lr: float = defaults.LEARNING_RATE
    lr_schedule: str = defaults.LR_SCHEDULE
    ema_decay: float = defaults.EMA_DECAY
    grad_clip: float = defaults.GRAD_CLIP
    reduction: str = defaults.REDUCTION
    flip: bool = False
    checkpoint_every: int = defaults.CHECKPOINT_EVERY

    def __post_init__(self) -> None:
        check_positive_int("steps", self.steps)
        check_seed(self.seed)
        check_positive_int("batch_size", self.batch_size, MAX_BATCH_SIZE)
        _check_number("lr", self.lr, positive=True)
        check_lr_schedule(self.lr_schedule)
        check_ema_decay(self.ema_decay)
        _check_number("grad_clip", self.grad_clip, positive=True)
        _check_choice("reduction", self.reduction, defaults.REDUCTIONS)
        _check_bool("flip", self.flip)
        if isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int) \
                or self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every: expected an integer >= 0, got {self.checkpoint_every!r}")

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes` (field names), checked again; TypeError for a name that is no field."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def build(cls, config: Self | None = None, **changes: Any) -> Self:
        """`config` (or the defaults) with `changes` applied: how the keyword forms of the training calls
        turn their arguments into a config."""
        if config is None:
            return cls(**changes)
        if not isinstance(config, cls):
            raise TypeError(f"config: expected a {cls.__name__}, got {type(config).__name__}")
        return config.replace(**changes) if changes else config


@dataclass(frozen=True, kw_only=True)
class TeacherConfig(TrainConfig):
    """Training of a DDPM teacher: the loop's options (`TrainConfig`) and nothing else."""


@dataclass(frozen=True, kw_only=True)
class DistillConfig(TrainConfig):
    """Distillation of a student: the loop's options (`TrainConfig`) and the method's.

    method: one of `liftplace.methods.METHODS`; student_ratio: Diff-Pruning ratio (fraction of
    channels removed, in (0, 1)) that makes the student from the teacher, None when the student
    is given; importance: channel ranking of the pruning; group_size: PLACE's K (None: one group,
    LIFT alone); coarse: "l1" or "l2"; curriculum: the adaptive weight w (False: w = 1);
    ablation: None, "coarse" or "fine" (LIFT methods only); lambda_*: loss weights, None for
    the method's (`lambdas`); featkd_layers: FeatKD's hook set and adapters, "sublayers" (the
    LIFT and PLACE code's) or "blocks" (see `liftplace.losses.FeatureKD`; ignored without FeatKD).
    """

    method: str = PAPER_METHOD
    student_ratio: float | None = defaults.STUDENT_RATIO
    importance: str = defaults.PRUNING_IMPORTANCE
    group_size: int | None = defaults.GROUP_SIZE
    coarse: str = defaults.COARSE_DISTANCE
    curriculum: bool = defaults.CURRICULUM
    ablation: str | None = None
    lambda_diff: float | None = None
    lambda_kd: float | None = None
    lambda_feat: float | None = None
    featkd_layers: str = FEATKD_LAYERS

    def __post_init__(self) -> None:
        spec = get_method(self.method)  # first: the method decides which other options apply
        super().__post_init__()
        ratio = self.student_ratio
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1):
            raise ValueError(f"student_ratio: expected a number strictly between 0 and 1, got {ratio!r}")
        _check_choice("importance", self.importance, defaults.PRUNING_IMPORTANCES)
        k = self.group_size
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"group_size: expected a positive integer or None, got {k!r}")
        _check_choice("coarse", self.coarse, defaults.COARSE_DISTANCES)
        _check_bool("curriculum", self.curriculum)
        _check_choice("ablation", self.ablation, defaults.ABLATIONS)
        if self.ablation is not None and not spec.uses_lift:
            raise ValueError(f"ablation: {self.ablation!r} applies to LIFT methods only, not {self.method!r}")
        _check_choice("featkd_layers", self.featkd_layers, FEATKD_LAYER_SETS)
        for name in ("lambda_diff", "lambda_kd", "lambda_feat"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name), positive=False)

    @property
    def spec(self) -> MethodSpec:
        """The method's contract (which output loss, FeatKD or not, default weights)."""
        return get_method(self.method)

    @property
    def lambdas(self) -> tuple[float, float, float]:
        """(lambda_diff, lambda_kd, lambda_feat): each as set, else the method's default."""
        spec = self.spec
        given = (self.lambda_diff, self.lambda_kd, self.lambda_feat)
        own = (spec.lambda_diff, spec.lambda_kd, spec.lambda_feat)
        return tuple(o if g is None else float(g) for g, o in zip(given, own, strict=True))  # type: ignore[return-value]

    @property
    def place_group_size(self) -> int | None:
        """PLACE's K for the loss: `group_size` with PLACE, None (one group) for the other methods."""
        return self.group_size if self.spec.uses_place else None
