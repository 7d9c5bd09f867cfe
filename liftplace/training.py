"""DDPM training of teachers and distillation of students: one readable loop.

Each step: draw a batch, t and noise; forward; losses; backward; clip; Adam step; EMA;
report metrics to callbacks; checkpoint every N steps. Randomness flows through explicit
generators (data order, timesteps, noise), and checkpoints save them, so a seed fixes a
run and a resumed run ends with exactly the weights of an uninterrupted one (on CPU).

The options of a run are a `TeacherConfig` / `DistillConfig` (liftplace.config); `train_teacher`
and `distill` also take them as keywords. No Ray, MLflow or HTTP here: the worker adapts these
callbacks to its own tracking.
"""

from __future__ import annotations

import copy
import enum
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from liftplace import defaults
from liftplace.config import DistillConfig, TeacherConfig, TrainConfig, check_ema_decay, check_lr_schedule
from liftplace.data import BatchSampler
from liftplace.device import pick_device
from liftplace.losses import FeatureKD, LiftPlaceOutput, diffusion_loss, lift_place, outkd
from liftplace.models import count_parameters
from liftplace.schedulers import make_ddpm_scheduler

__all__ = [
    "EMA",
    "lr_at",
    "TrainingCallback",
    "ProgressCallback",
    "TrainResult",
    "DistillResult",
    "train_teacher",
    "distill",
    "TeacherConfig",
    "DistillConfig",
    "load_checkpoint_model",
    "CHECKPOINT_NAME",
]

CHECKPOINT_NAME = "last.pt"

# Metric names every distillation step may report (the worker and dashboards read these).
METRIC_NAMES: tuple[str, ...] = (
    "loss_total",
    "loss_diff",
    "loss_kd",
    "loss_feat",
    "coarse",
    "fine",
    "w",
    "slope_mean",
    "slope_std",
    "intercept_mean",
    "intercept_std",
    "ts_distance",
    "grad_norm",
)


def lr_at(step: int, steps: int, lr: float, schedule: str = defaults.LR_SCHEDULE) -> float:
    """The learning rate of step `step` (1-based) of a run of `steps` steps.

    "constant": `lr` throughout. "cosine": lr * (1 + cos(pi * (step - 1) / steps)) / 2, from `lr` at
    the first step to nearly 0 at the last; a function of the step only, so a resumed run continues
    the same curve.
    """
    if check_lr_schedule(schedule) == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / steps))
    return lr


class EMA:
    """Exponential moving average of a model's parameters and buffers.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, as in
    diffusers' EMAModel, so short runs still average over a sensible window.
    """

    def __init__(self, model: nn.Module, decay: float = defaults.EMA_DECAY):
        self.decay = check_ema_decay(decay)
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - d)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        self.model.load_state_dict(state["model"])


class TrainingCallback:
    """Receives what a run does. Override what you need; every hook is optional.

    on_step gets the step number (1-based), the total and a dict of float metrics
    (METRIC_NAMES, those that apply to the method). Return True from `should_stop`
    to end the run early (it ends with outcome "stopped" after a checkpoint).
    """

    def on_start(self, start_step: int, total_steps: int) -> None: ...

    def on_step(self, step: int, total_steps: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, step: int, path: Path) -> None: ...

    def on_end(self, result: TrainResult) -> None: ...

    def should_stop(self) -> bool:
        return False


class ProgressCallback(TrainingCallback):
    """A tqdm progress bar showing the total loss."""

    def __init__(self, desc: str = "training", every: int = 10):
        self.desc, self.every, self.bar = desc, every, None

    def on_start(self, start_step: int, total_steps: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, desc=self.desc, unit="step")

    def on_step(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if step % self.every == 0 or step == total_steps:
            self.bar.set_postfix(loss=f"{metrics['loss_total']:.4g}")

    def on_end(self, result: TrainResult) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class TrainResult:
    """Outcome of a run.

    model: the trained network (raw weights); ema_model: its EMA (use it to sample).
    outcome: "completed", "diverged" (loss or gradient became NaN/inf) or "stopped".
    steps: the last step done; diverged_step: the step whose loss was not finite.
    """

    model: UNet2DModel
    ema_model: UNet2DModel
    outcome: str
    steps: int
    total_steps: int
    diverged_step: int | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    parameters: int = 0

    @property
    def reason(self) -> str:
        if self.outcome == "diverged":
            return f"diverged at step {self.diverged_step}"
        if self.outcome == "stopped":
            return f"stopped at step {self.steps} of {self.total_steps}"
        return f"completed {self.steps} steps"


@dataclass
class DistillResult(TrainResult):
    """A distillation run: TrainResult plus what the student was made of."""

    method: str = ""
    seed: int = 0
    teacher_parameters: int = 0


def _check_data(data: object) -> None:
    if not isinstance(data, torch.Tensor) or data.dim() != 4:
        raise ValueError("data: expected a [N, C, H, W] tensor in [-1, 1]")


def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a half checkpoint behind


def load_checkpoint_model(path: str | Path) -> tuple[UNet2DModel, UNet2DModel, dict]:
    """Rebuild (model, ema_model, checkpoint) from a checkpoint file written by a run."""
    from liftplace.pruning import apply_layout

    ckpt = torch.load(Path(path), map_location="cpu", weights_only=False)
    models = []
    for key in ("model", "ema"):
        m = UNet2DModel.from_config(ckpt["model_config"])
        if ckpt.get("layout"):
            apply_layout(m, ckpt["layout"])
        state = ckpt[key] if key == "model" else ckpt["ema"]["model"]
        m.load_state_dict(state)
        models.append(m)
    return models[0], models[1], ckpt


# step_fn(x0, noise, t, x_t) -> (loss, {metric name: value})
StepFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor | float]]
]


# --- the loop: its state, restored from and saved to a checkpoint, and one step ----------------------


@dataclass(frozen=True)
class _Runtime:
    """Where and how a run executes (not part of its identity: a resume may change these)."""

    device: torch.device
    checkpoint_path: Path | None  # None: no checkpoints
    resume: bool
    callbacks: Sequence[TrainingCallback]

    @classmethod
    def of(cls, device: str | torch.device | None, checkpoint_dir: str | Path | None, resume: bool,
           callbacks: Sequence[TrainingCallback]) -> _Runtime:
        path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
        return cls(pick_device(device), path, resume, callbacks)


@dataclass
class _LoopState:
    """Everything a checkpoint saves besides the run's identity: weights, optimizer, EMA, data and noise order."""

    model: UNet2DModel
    extra_modules: Sequence[nn.Module]
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    ema: EMA
    sampler: BatchSampler
    noise_gen: torch.Generator
    scheduler: DDPMScheduler  # adds the noise of timestep t
    device: torch.device


def _new_state(model: UNet2DModel, extra_modules: Sequence[nn.Module], data: torch.Tensor, config: TrainConfig,
               device: torch.device) -> _LoopState:
    torch.manual_seed(config.seed)
    model.to(device).train()
    for m in extra_modules:
        m.to(device).train()
    params = [p for p in model.parameters()] + [p for m in extra_modules for p in m.parameters()]
    return _LoopState(
        model=model,
        extra_modules=extra_modules,
        params=params,
        optimizer=torch.optim.Adam(params, lr=config.lr, eps=defaults.ADAM_EPS),
        ema=EMA(model, config.ema_decay),
        sampler=BatchSampler(data, config.batch_size, seed=config.seed, flip=config.flip),
        noise_gen=torch.Generator().manual_seed(config.seed + 1_000_003),  # distinct stream from the data order
        scheduler=make_ddpm_scheduler(),
        device=device,
    )


def _restore(state: _LoopState, path: Path, run_info: dict) -> int:
    """Load the checkpoint at `path` into `state`; returns its step. ValueError if it is another run's."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt["run_info"] != run_info:
        raise ValueError(
            f"resume: the checkpoint at {path} belongs to a different run ({ckpt['run_info']} vs {run_info})"
        )
    state.model.load_state_dict(ckpt["model"])
    for m, saved in zip(state.extra_modules, ckpt["extra"], strict=True):
        m.load_state_dict(saved)
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.ema.load_state_dict(ckpt["ema"])
    state.ema.model.to(state.device)
    state.sampler.load_state_dict(ckpt["sampler"])
    state.noise_gen.set_state(ckpt["noise_gen"])
    torch.set_rng_state(ckpt["torch_rng"])
    return int(ckpt["step"])


def _checkpoint(state: _LoopState, step: int, run_info: dict, runtime: _Runtime) -> None:
    """Save `state` at `step` to the run's checkpoint file (if it has one) and tell the callbacks."""
    from liftplace.pruning import pruned_layout

    path = runtime.checkpoint_path
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(
        {
            "step": step,
            "run_info": run_info,
            "model_config": dict(state.model.config),
            "layout": pruned_layout(state.model),
            "model": state.model.state_dict(),
            "extra": [m.state_dict() for m in state.extra_modules],
            "optimizer": state.optimizer.state_dict(),
            "ema": state.ema.state_dict(),
            "sampler": state.sampler.state_dict(),
            "noise_gen": state.noise_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        },
        path,
    )
    for cb in runtime.callbacks:
        cb.on_checkpoint(step, path)


def _backward(state: _LoopState, loss: torch.Tensor, step: int, config: TrainConfig) -> torch.Tensor:
    """Set the step's learning rate, backpropagate `loss` and clip; returns the total gradient norm."""
    if config.lr_schedule != "constant":
        for group in state.optimizer.param_groups:
            group["lr"] = lr_at(step, config.steps, config.lr, config.lr_schedule)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return torch.nn.utils.clip_grad_norm_(state.params, config.grad_clip)


def _train_step(state: _LoopState, step_fn: StepFn, step: int, config: TrainConfig) -> tuple[dict[str, float], bool]:
    """One optimisation step: (its metrics, True), or (the metrics of its loss, False) when the loss or its
    gradient is not finite, in which case nothing is updated."""
    scheduler = state.scheduler
    x0 = state.sampler().to(state.device)
    noise = torch.randn(x0.shape, generator=state.noise_gen).to(state.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=state.noise_gen)
    t = t.to(state.device)
    x_t = scheduler.add_noise(x0, noise, t)
    loss, parts = step_fn(x0, noise, t, x_t)
    grad_norm = _backward(state, loss, step, config) if torch.isfinite(loss).item() else None
    if grad_norm is None or not torch.isfinite(grad_norm).item():
        return {k: float(v) for k, v in parts.items()} | {"loss_total": float(loss.detach())}, False
    state.optimizer.step()
    state.ema.update(state.model)
    metrics = {"loss_total": float(loss.detach())}
    metrics.update({k: float(v) for k, v in parts.items()})
    metrics["grad_norm"] = float(grad_norm)
    return metrics, True


def _steps(state: _LoopState, step_fn: StepFn, config: TrainConfig, start: int, run_info: dict,
           runtime: _Runtime) -> tuple[str, int, dict[str, float]]:
    """Steps start+1..config.steps: (outcome, the last step done or the diverged step, its metrics)."""
    metrics: dict[str, float] = {}
    for step in range(start + 1, config.steps + 1):
        metrics, finite = _train_step(state, step_fn, step, config)
        if not finite:
            return "diverged", step, metrics
        for cb in runtime.callbacks:
            cb.on_step(step, config.steps, metrics)
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
            _checkpoint(state, step, run_info, runtime)
        if any(cb.should_stop() for cb in runtime.callbacks):
            _checkpoint(state, step, run_info, runtime)
            return "stopped", step, metrics
    _checkpoint(state, config.steps, run_info, runtime)
    return "completed", config.steps, metrics


def _run_loop(*, model: UNet2DModel, extra_modules: Sequence[nn.Module], step_fn: StepFn, data: torch.Tensor,
              config: TrainConfig, runtime: _Runtime, run_info: dict) -> TrainResult:
    """Train `model` (and `extra_modules`) with `step_fn`'s loss; resume from the checkpoint if asked and found."""
    if config.lr_schedule != defaults.LR_SCHEDULE:
        # only when not the default: checkpoints of runs made before the option existed still resume
        run_info = {**run_info, "lr_schedule": config.lr_schedule}
    state = _new_state(model, extra_modules, data, config, runtime.device)
    path = runtime.checkpoint_path
    start = _restore(state, path, run_info) if runtime.resume and path is not None and path.is_file() else 0
    for cb in runtime.callbacks:
        cb.on_start(start, config.steps)
    outcome, step, metrics = _steps(state, step_fn, config, start, run_info, runtime)
    diverged = outcome == "diverged"
    return TrainResult(
        model=model,
        ema_model=state.ema.model,
        outcome=outcome,
        steps=step - 1 if diverged else step,
        total_steps=config.steps,
        diverged_step=step if diverged else None,
        last_metrics=metrics,
        parameters=count_parameters(model),
    )


# --- teachers ------------------------------------------------------------------------------------------


def train_teacher(
    model: UNet2DModel,
    data: torch.Tensor,
    config: TeacherConfig | None = None,
    *,
    device: str | torch.device | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[TrainingCallback] = (),
    **options: Any,
) -> TrainResult:
    """Train a UNet2DModel as a DDPM epsilon-predictor on `data` ([N, C, H, W] in [-1, 1]).

    `config` holds the options (steps, seed, batch_size, lr, lr_schedule, ...; see TeacherConfig);
    keyword `options` override its fields (`train_teacher(model, data, steps=60, lr=1e-3)`).
    Returns a TrainResult whose `ema_model` is the teacher to use. The model is trained in place.
    With `checkpoint_dir`, a checkpoint is written every `checkpoint_every` steps and at the end;
    `resume=True` continues from it. `device`: default cuda when available, else cpu.
    """
    config = TeacherConfig.build(config, **options)
    _check_data(data)
    reduction = config.reduction

    def step_fn(x0, noise, t, x_t):
        pred = model(x_t, t).sample
        loss = diffusion_loss(pred, noise, reduction=reduction)
        return loss, {"loss_diff": loss.detach()}

    run_info = {"kind": "teacher", "seed": config.seed, "steps": config.steps, "batch_size": config.batch_size,
                "lr": config.lr}
    runtime = _Runtime.of(device, checkpoint_dir, resume, callbacks)
    result = _run_loop(model=model, extra_modules=(), step_fn=step_fn, data=data, config=config, runtime=runtime,
                       run_info=run_info)
    for cb in callbacks:
        cb.on_end(result)
    return result


# --- students ------------------------------------------------------------------------------------------


class _Unset(enum.Enum):
    """Marks a positional argument of `distill` left out: the config's value applies."""

    TOKEN = 0

    def __repr__(self) -> str:
        return "<the config's>"


_UNSET = _Unset.TOKEN


def distill(
    teacher: UNet2DModel,
    student_ratio: float | None | _Unset = _UNSET,
    method: str | _Unset = _UNSET,
    seed: int | _Unset = _UNSET,
    steps: int | _Unset = _UNSET,
    *,
    data: torch.Tensor,
    student: UNet2DModel | None = None,
    config: DistillConfig | None = None,
    device: str | torch.device | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[TrainingCallback] = (),
    **options: Any,
) -> DistillResult:
    """Distill a frozen `teacher` into a student with one of the seven methods.

    `config` holds the options (see DistillConfig, defaults from liftplace.defaults); the
    positional `student_ratio, method, seed, steps` and keyword `options` (any DistillConfig
    field) override its fields. The student is `student` if given, else the teacher pruned by
    Diff-Pruning at `student_ratio` with `importance`, seeded by `seed`. Loss: lambda_diff * L_diff
    + lambda_kd * L_kd + lambda_feat * L_feat. `data` is the training set ([N, C, H, W] in
    [-1, 1]), also used for Taylor importance scores.

    Returns a DistillResult; `ema_model` is the student to sample from. A NaN or inf loss ends
    the run with outcome "diverged" and `diverged_step` set; no exception. A bad option raises
    ValueError("FIELD: ...") before any work.
    """
    given = dict(student_ratio=student_ratio, method=method, seed=seed, steps=steps)
    config = DistillConfig.build(config, **{k: v for k, v in given.items() if v is not _UNSET}, **options)
    _check_data(data)
    _check_distill_inputs(teacher, data, student, config)
    runtime = _Runtime.of(device, checkpoint_dir, resume, callbacks)
    teacher, student = _teacher_and_student(teacher, student, data, config, runtime.device)
    feat = _feature_kd(teacher, student, config)
    try:
        base = _run_loop(model=student, extra_modules=(feat,) if feat is not None else (),
                         step_fn=_distill_step_fn(teacher, student, feat, config), data=data, config=config,
                         runtime=runtime, run_info=_distill_run_info(config, student))
    finally:
        if feat is not None:
            feat.remove()  # leave the teacher without our hooks
    result = DistillResult(**{f: getattr(base, f) for f in TrainResult.__dataclass_fields__},
                           method=config.method, seed=config.seed, teacher_parameters=count_parameters(teacher))
    for cb in callbacks:
        cb.on_end(result)
    return result


def _check_distill_inputs(teacher: UNet2DModel, data: torch.Tensor, student: UNet2DModel | None,
                          config: DistillConfig) -> None:
    """What the config alone cannot check: a ratio to prune with, data that fits, K dividing H*W."""
    if student is None:
        if config.student_ratio is None:
            raise ValueError("student_ratio: expected a number strictly between 0 and 1, got None")
        if data.shape[1:] != (teacher.config.in_channels, *(_sample_hw(teacher))):
            raise ValueError(
                f"data: images of shape {tuple(data.shape[1:])} do not fit the teacher "
                f"(in_channels={teacher.config.in_channels}, sample_size={teacher.config.sample_size})"
            )
    if config.spec.uses_lift:  # lift_place raises the clear errors (K must divide H*W)
        h, w = data.shape[-2:]
        probe = torch.zeros(1, 1, h, w)
        lift_place(probe, probe, group_size=config.place_group_size, coarse=config.coarse,
                   curriculum=config.curriculum, reduction=config.reduction, ablation=config.ablation)


def _teacher_and_student(teacher: UNet2DModel, student: UNet2DModel | None, data: torch.Tensor,
                         config: DistillConfig, device: torch.device) -> tuple[UNet2DModel, UNet2DModel]:
    """The teacher, frozen, and the student (the teacher pruned unless given), both on `device`."""
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if student is None:
        from liftplace.pruning import prune

        student = prune(teacher, config.student_ratio, config.importance, data=data, seed=config.seed).model
    return teacher, student.to(device)


def _feature_kd(teacher: UNet2DModel, student: UNet2DModel, config: DistillConfig) -> FeatureKD | None:
    """FitNet adapters for the FeatKD methods, else None."""
    if not config.spec.featkd:
        return None
    # The adapters' initial weights come from the run's seed, not from whatever ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return FeatureKD(teacher, student, layers=config.featkd_layers, reduction=config.reduction)


def _lift_metrics(out: LiftPlaceOutput) -> dict[str, torch.Tensor | float]:
    return dict(
        loss_kd=out.loss.detach(),
        coarse=out.coarse.detach(),
        fine=out.fine.detach(),
        w=out.weight,
        slope_mean=out.slope.mean(),
        slope_std=out.slope.std(),
        intercept_mean=out.intercept.mean(),
        intercept_std=out.intercept.std(),
    )


def _distill_step_fn(teacher: UNet2DModel, student: UNet2DModel, feat: FeatureKD | None,
                     config: DistillConfig) -> StepFn:
    """The loss of one distillation step: lambda_diff * L_diff + lambda_kd * L_kd + lambda_feat * L_feat."""
    spec, reduction, k = config.spec, config.reduction, config.place_group_size
    lam_diff, lam_kd, lam_feat = config.lambdas

    def step_fn(x0, noise, t, x_t):
        with torch.no_grad():
            u = teacher(x_t, t).sample
        s = student(x_t, t).sample
        parts: dict[str, torch.Tensor | float] = {}
        l_diff = diffusion_loss(s, noise, reduction=reduction)
        loss = lam_diff * l_diff
        parts["loss_diff"] = l_diff.detach()
        if spec.kd == "outkd":
            l_kd = outkd(s, u, reduction=reduction)
            loss = loss + lam_kd * l_kd
            parts["loss_kd"] = l_kd.detach()
        elif spec.uses_lift:
            out = lift_place(s, u, group_size=k, coarse=config.coarse, curriculum=config.curriculum,
                             reduction=reduction, ablation=config.ablation)
            loss = loss + lam_kd * out.loss
            parts.update(_lift_metrics(out))
        if feat is not None:
            l_feat = feat.loss()
            loss = loss + lam_feat * l_feat
            parts["loss_feat"] = l_feat.detach()
        with torch.no_grad():
            parts["ts_distance"] = outkd(s.detach(), u, reduction=reduction)
        return loss, parts

    return step_fn


def _distill_run_info(config: DistillConfig, student: UNet2DModel) -> dict:
    """The identity of a distillation run: a checkpoint resumes only a run with the same."""
    info = _base_distill_run_info(config, student)
    if config.spec.featkd and config.featkd_layers != "blocks":
        # only then: a checkpoint written before the option existed (FeatKD on whole blocks) still resumes
        info["featkd_layers"] = config.featkd_layers
    return info


def _base_distill_run_info(config: DistillConfig, student: UNet2DModel) -> dict:
    return {
        "kind": "distill",
        "method": config.method,
        "seed": config.seed,
        "steps": config.steps,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "group_size": config.place_group_size,
        "coarse": config.coarse,
        "curriculum": config.curriculum,
        "ablation": config.ablation,
        "reduction": config.reduction,
        "lambdas": list(config.lambdas),  # a list, as checkpoints hold it
        "student_parameters": count_parameters(student),
    }


def _sample_hw(model: UNet2DModel) -> tuple[int, int]:
    size = model.config.sample_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


