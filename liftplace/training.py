"""DDPM training of teachers and distillation of students: one readable loop.

Each step: draw a batch, t and noise; forward; losses; backward; clip; Adam step; EMA;
report metrics to callbacks; checkpoint every N steps. Randomness flows through explicit
generators (data order, timesteps, noise), and checkpoints save them, so a seed fixes a
run and a resumed run ends with exactly the weights of an uninterrupted one (on CPU).

No Ray, MLflow or HTTP here: the worker adapts these callbacks to its own tracking.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import UNet2DModel
from torch import nn

from liftplace import defaults
from liftplace.data import BatchSampler
from liftplace.losses import FeatureKD, diffusion_loss, lift_place, outkd
from liftplace.methods import MethodSpec, get_method
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
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / steps))
    raise ValueError(f"lr_schedule: expected one of {', '.join(defaults.LR_SCHEDULES)}, got {schedule!r}")


class EMA:
    """Exponential moving average of a model's parameters and buffers.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, as in
    diffusers' EMAModel, so short runs still average over a sensible window.
    """

    def __init__(self, model: nn.Module, decay: float = defaults.EMA_DECAY):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay: expected 0 <= decay < 1, got {decay!r}")
        self.decay = decay
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


def _check_positive_int(name: str, value: object, maximum: int = defaults.MAX_STEPS) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ValueError(f"{name}: expected an integer in 1..{maximum}, got {value!r}")
    return value


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    return seed


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def _run_loop(
    *,
    model: UNet2DModel,
    extra_modules: Sequence[nn.Module],
    step_fn: StepFn,
    data: torch.Tensor,
    steps: int,
    seed: int,
    batch_size: int,
    lr: float,
    lr_schedule: str,
    ema_decay: float,
    grad_clip: float,
    flip: bool,
    device: torch.device,
    checkpoint_dir: Path | None,
    checkpoint_every: int,
    resume: bool,
    callbacks: Sequence[TrainingCallback],
    run_info: dict,
) -> TrainResult:
    from liftplace.pruning import pruned_layout

    if not isinstance(data, torch.Tensor) or data.dim() != 4:
        raise ValueError("data: expected a [N, C, H, W] tensor in [-1, 1]")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr: expected a positive number, got {lr!r}")
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every: expected >= 0, got {checkpoint_every!r}")
    if lr_schedule not in defaults.LR_SCHEDULES:
        raise ValueError(f"lr_schedule: expected one of {', '.join(defaults.LR_SCHEDULES)}, got {lr_schedule!r}")
    if lr_schedule != defaults.LR_SCHEDULE:
        # only when not the default: checkpoints of runs made before the option existed still resume
        run_info = {**run_info, "lr_schedule": lr_schedule}

    torch.manual_seed(seed)
    model.to(device).train()
    for m in extra_modules:
        m.to(device).train()
    params = [p for p in model.parameters()] + [p for m in extra_modules for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr, eps=defaults.ADAM_EPS)
    ema = EMA(model, ema_decay)
    sampler = BatchSampler(data, batch_size, seed=seed, flip=flip)
    noise_gen = torch.Generator().manual_seed(seed + 1_000_003)  # distinct stream from the data order
    scheduler = make_ddpm_scheduler()
    T = scheduler.config.num_train_timesteps

    start = 0
    ckpt_path = checkpoint_dir / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if resume and ckpt_path is not None and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["run_info"] != run_info:
            raise ValueError(
                f"resume: the checkpoint at {ckpt_path} belongs to a different run "
                f"({ckpt['run_info']} vs {run_info})"
            )
        model.load_state_dict(ckpt["model"])
        for m, state in zip(extra_modules, ckpt["extra"], strict=True):
            m.load_state_dict(state)
        optimizer.load_state_dict(ckpt["optimizer"])
        ema.load_state_dict(ckpt["ema"])
        ema.model.to(device)
        sampler.load_state_dict(ckpt["sampler"])
        noise_gen.set_state(ckpt["noise_gen"])
        torch.set_rng_state(ckpt["torch_rng"])
        start = int(ckpt["step"])

    def save_checkpoint(step: int) -> None:
        if ckpt_path is None:
            return
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        _save_atomic(
            {
                "step": step,
                "run_info": run_info,
                "model_config": dict(model.config),
                "layout": pruned_layout(model),
                "model": model.state_dict(),
                "extra": [m.state_dict() for m in extra_modules],
                "optimizer": optimizer.state_dict(),
                "ema": ema.state_dict(),
                "sampler": sampler.state_dict(),
                "noise_gen": noise_gen.get_state(),
                "torch_rng": torch.get_rng_state(),
            },
            ckpt_path,
        )
        for cb in callbacks:
            cb.on_checkpoint(step, ckpt_path)

    for cb in callbacks:
        cb.on_start(start, steps)
    outcome, diverged_step, last_metrics, step = "completed", None, {}, start
    for step in range(start + 1, steps + 1):
        x0 = sampler().to(device)
        noise = torch.randn(x0.shape, generator=noise_gen).to(device)
        t = torch.randint(0, T, (x0.shape[0],), generator=noise_gen).to(device)
        x_t = scheduler.add_noise(x0, noise, t)
        loss, parts = step_fn(x0, noise, t, x_t)
        if not torch.isfinite(loss).item():
            outcome, diverged_step = "diverged", step
            last_metrics = {k: float(v) for k, v in parts.items()} | {"loss_total": float(loss.detach())}
            break
        if lr_schedule != "constant":
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, steps, lr, lr_schedule)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if not torch.isfinite(grad_norm).item():
            outcome, diverged_step = "diverged", step
            last_metrics = {k: float(v) for k, v in parts.items()} | {"loss_total": float(loss.detach())}
            break
        optimizer.step()
        ema.update(model)
        last_metrics = {"loss_total": float(loss.detach())}
        last_metrics.update({k: float(v) for k, v in parts.items()})
        last_metrics["grad_norm"] = float(grad_norm)
        for cb in callbacks:
            cb.on_step(step, steps, last_metrics)
        if checkpoint_every and step % checkpoint_every == 0 and step < steps:
            save_checkpoint(step)
        if any(cb.should_stop() for cb in callbacks):
            save_checkpoint(step)
            outcome = "stopped"
            break
    else:
        step = steps
    if outcome == "completed":
        save_checkpoint(steps)
    result = TrainResult(
        model=model,
        ema_model=ema.model,
        outcome=outcome,
        steps=step if outcome != "diverged" else (diverged_step or 1) - 1,
        total_steps=steps,
        diverged_step=diverged_step,
        last_metrics=last_metrics,
        parameters=count_parameters(model),
    )
    return result


def train_teacher(
    model: UNet2DModel,
    data: torch.Tensor,
    *,
    steps: int,
    seed: int = 0,
    batch_size: int = defaults.BATCH_SIZE,
    lr: float = defaults.LEARNING_RATE,
    lr_schedule: str = defaults.LR_SCHEDULE,
    ema_decay: float = defaults.EMA_DECAY,
    grad_clip: float = defaults.GRAD_CLIP,
    reduction: str = defaults.REDUCTION,
    flip: bool = False,
    device: str | torch.device | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = defaults.CHECKPOINT_EVERY,
    resume: bool = False,
    callbacks: Sequence[TrainingCallback] = (),
) -> TrainResult:
    """Train a UNet2DModel as a DDPM epsilon-predictor on `data` ([N, C, H, W] in [-1, 1]).

    Returns a TrainResult whose `ema_model` is the teacher to use. The model is trained
    in place. `lr_schedule` (see `lr_at`): "constant" or "cosine" decay to 0 over `steps`.
    With `checkpoint_dir`, a checkpoint is written every `checkpoint_every`
    steps and at the end; `resume=True` continues from it.
    """
    _check_positive_int("steps", steps)
    _check_positive_int("batch_size", batch_size, 1_000_000)
    _check_seed(seed)
    device = _resolve_device(device)

    def step_fn(x0, noise, t, x_t):
        pred = model(x_t, t).sample
        loss = diffusion_loss(pred, noise, reduction=reduction)
        return loss, {"loss_diff": loss.detach()}

    result = _run_loop(
        model=model,
        extra_modules=(),
        step_fn=step_fn,
        data=data,
        steps=steps,
        seed=seed,
        batch_size=batch_size,
        lr=lr,
        lr_schedule=lr_schedule,
        ema_decay=ema_decay,
        grad_clip=grad_clip,
        flip=flip,
        device=device,
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
        checkpoint_every=checkpoint_every,
        resume=resume,
        callbacks=callbacks,
        run_info={"kind": "teacher", "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr},
    )
    for cb in callbacks:
        cb.on_end(result)
    return result


def distill(
    teacher: UNet2DModel,
    student_ratio: float | None = defaults.STUDENT_RATIO,
    method: str = "lift+place+featkd",
    seed: int = 0,
    steps: int = 1000,
    *,
    data: torch.Tensor,
    student: UNet2DModel | None = None,
    importance: str = defaults.PRUNING_IMPORTANCE,
    batch_size: int = defaults.BATCH_SIZE,
    lr: float = defaults.LEARNING_RATE,
    lr_schedule: str = defaults.LR_SCHEDULE,
    group_size: int | None = defaults.GROUP_SIZE,
    coarse: str = defaults.COARSE_DISTANCE,
    curriculum: bool = defaults.CURRICULUM,
    ablation: str | None = None,
    reduction: str = defaults.REDUCTION,
    lambda_diff: float | None = None,
    lambda_kd: float | None = None,
    lambda_feat: float | None = None,
    ema_decay: float = defaults.EMA_DECAY,
    grad_clip: float = defaults.GRAD_CLIP,
    flip: bool = False,
    device: str | torch.device | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = defaults.CHECKPOINT_EVERY,
    resume: bool = False,
    callbacks: Sequence[TrainingCallback] = (),
) -> DistillResult:
    """Distill a frozen `teacher` into a student with one of the seven methods.

    The student is `student` if given, else the teacher pruned by Diff-Pruning at
    `student_ratio` (fraction of channels removed, in (0, 1)) with `importance`,
    seeded by `seed`. Loss: lambda_diff * L_diff + lambda_kd * L_kd + lambda_feat * L_feat,
    the lambdas defaulting to the method's (liftplace.methods). `data` is the training
    set ([N, C, H, W] in [-1, 1]), also used for Taylor importance scores.

    `lr_schedule` (see `lr_at`): "constant" or "cosine" decay to 0 over `steps`.

    Returns a DistillResult; `ema_model` is the student to sample from. A NaN or inf
    loss ends the run with outcome "diverged" and `diverged_step` set; no exception.
    """
    spec: MethodSpec = get_method(method)
    if lr_schedule not in defaults.LR_SCHEDULES:  # before the pruning, which takes a while
        raise ValueError(f"lr_schedule: expected one of {', '.join(defaults.LR_SCHEDULES)}, got {lr_schedule!r}")
    _check_positive_int("steps", steps)
    _check_positive_int("batch_size", batch_size, 1_000_000)
    _check_seed(seed)
    device = _resolve_device(device)
    if student is None:
        if student_ratio is None or isinstance(student_ratio, bool) or not (
            isinstance(student_ratio, (int, float)) and 0 < student_ratio < 1
        ):
            raise ValueError(f"student_ratio: expected a number strictly between 0 and 1, got {student_ratio!r}")
        if data.shape[1:] != (teacher.config.in_channels, *(_sample_hw(teacher))):
            raise ValueError(
                f"data: images of shape {tuple(data.shape[1:])} do not fit the teacher "
                f"(in_channels={teacher.config.in_channels}, sample_size={teacher.config.sample_size})"
            )
    # Validate the loss options once, before any work (lift_place raises the clear errors).
    if spec.uses_lift:
        h, w = data.shape[-2:]
        probe = torch.zeros(1, 1, h, w)
        lift_place(probe, probe, group_size=group_size if spec.uses_place else None, coarse=coarse,
                   curriculum=curriculum, reduction=reduction, ablation=ablation)
    elif ablation is not None:
        raise ValueError(f"ablation: {ablation!r} applies to LIFT methods only, not {method!r}")

    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher_params = count_parameters(teacher)
    if student is None:
        from liftplace.pruning import prune

        student = prune(teacher, student_ratio, importance, data=data, seed=seed).model
    student = student.to(device)

    lam_diff = spec.lambda_diff if lambda_diff is None else float(lambda_diff)
    lam_kd = spec.lambda_kd if lambda_kd is None else float(lambda_kd)
    lam_feat = spec.lambda_feat if lambda_feat is None else float(lambda_feat)
    feat = None
    if spec.featkd:
        # The adapters' initial weights come from the run's seed, not from whatever ran before.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            feat = FeatureKD(teacher, student, reduction=reduction)
    k = group_size if spec.uses_place else None

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
            out = lift_place(s, u, group_size=k, coarse=coarse, curriculum=curriculum, reduction=reduction,
                             ablation=ablation)
            loss = loss + lam_kd * out.loss
            parts.update(
                loss_kd=out.loss.detach(),
                coarse=out.coarse.detach(),
                fine=out.fine.detach(),
                w=out.weight,
                slope_mean=out.slope.mean(),
                slope_std=out.slope.std(),
                intercept_mean=out.intercept.mean(),
                intercept_std=out.intercept.std(),
            )
        if feat is not None:
            l_feat = feat.loss()
            loss = loss + lam_feat * l_feat
            parts["loss_feat"] = l_feat.detach()
        with torch.no_grad():
            parts["ts_distance"] = outkd(s.detach(), u, reduction=reduction)
        return loss, parts

    run_info = {
        "kind": "distill",
        "method": method,
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "group_size": k,
        "coarse": coarse,
        "curriculum": curriculum,
        "ablation": ablation,
        "reduction": reduction,
        "lambdas": [lam_diff, lam_kd, lam_feat],
        "student_parameters": count_parameters(student),
    }
    try:
        base = _run_loop(
            model=student,
            extra_modules=(feat,) if feat is not None else (),
            step_fn=step_fn,
            data=data,
            steps=steps,
            seed=seed,
            batch_size=batch_size,
            lr=lr,
            lr_schedule=lr_schedule,
            ema_decay=ema_decay,
            grad_clip=grad_clip,
            flip=flip,
            device=device,
            checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
            checkpoint_every=checkpoint_every,
            resume=resume,
            callbacks=callbacks,
            run_info=run_info,
        )
    finally:
        if feat is not None:
            feat.remove()  # leave the teacher without our hooks
    result = DistillResult(
        **{f: getattr(base, f) for f in TrainResult.__dataclass_fields__},
        method=method,
        seed=seed,
        teacher_parameters=teacher_params,
    )
    for cb in callbacks:
        cb.on_end(result)
    return result


def _sample_hw(model: UNet2DModel) -> tuple[int, int]:
    size = model.config.sample_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


