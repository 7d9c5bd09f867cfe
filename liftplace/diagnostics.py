"""Where a student departs from its teacher: per-pixel error maps at a few noise levels.

Like the paper's Fig. 3: the same images x0 are noised with the same noise at timesteps
t = 50, 250, 500, 750, both networks predict the noise, and |eps_teacher - eps_student|
is kept per pixel. Low t (little noise) shows fine detail errors, high t coarse structure.

    maps = error_maps(teacher, student, x0)          # [T, N, C, H, W]
    save_error_maps(maps, "error_map.png")           # one PNG: a row per timestep

Plain torch; no tracking or service code here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import UNet2DModel

from liftplace import defaults
from liftplace.schedulers import make_ddpm_scheduler

__all__ = ["ERROR_MAP_TIMESTEPS", "error_maps", "error_means", "save_error_maps", "heatmap"]

ERROR_MAP_TIMESTEPS: tuple[int, ...] = (50, 250, 500, 750)


def _check_timesteps(timesteps: Sequence[int]) -> list[int]:
    ts = list(timesteps)
    if not ts:
        raise ValueError("timesteps: expected at least one timestep")
    for t in ts:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < defaults.NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"timesteps: expected integers in 0..{defaults.NUM_TRAIN_TIMESTEPS - 1}, got {t!r}")
    return ts


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def error_maps(
    teacher: UNet2DModel,
    student: UNet2DModel,
    x0: torch.Tensor,
    timesteps: Sequence[int] = ERROR_MAP_TIMESTEPS,
    *,
    seed: int = 0,
) -> torch.Tensor:
    """|teacher eps - student eps| per pixel for the same noisy inputs, at each timestep.

    x0: [N, C, H, W] clean images in [-1, 1]. One noise tensor (seeded by `seed`) is shared
    by every timestep, so rows differ only by the noise level. Returns a CPU float tensor
    [len(timesteps), N, C, H, W]; zero everywhere when the two networks are the same.
    The models run on their own devices and are left in the train/eval mode they had.
    """
    if not isinstance(x0, torch.Tensor) or x0.dim() != 4:
        raise ValueError(f"x0: expected a [N, C, H, W] tensor, got {getattr(x0, 'shape', type(x0).__name__)}")
    ts = _check_timesteps(timesteps)
    x0 = x0.detach().float().cpu()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    scheduler = make_ddpm_scheduler()
    modes = (teacher.training, student.training)
    teacher.eval()
    student.eval()
    try:
        out = []
        for t in ts:
            tt = torch.full((x0.shape[0],), t, dtype=torch.long)
            x_t = scheduler.add_noise(x0, noise, tt)
            preds = []
            for model in (teacher, student):
                dev = _device_of(model)
                dtype = next(model.parameters()).dtype
                preds.append(model(x_t.to(dev, dtype), tt.to(dev)).sample.float().cpu())
            out.append((preds[0] - preds[1]).abs())
        return torch.stack(out)
    finally:
        teacher.train(modes[0])
        student.train(modes[1])


def error_means(maps: torch.Tensor, timesteps: Sequence[int] = ERROR_MAP_TIMESTEPS) -> dict[int, float]:
    """Mean absolute error per timestep: {t: mean over images, channels and pixels}."""
    ts = _check_timesteps(timesteps)
    if maps.dim() != 5 or maps.shape[0] != len(ts):
        raise ValueError(f"maps: expected [{len(ts)}, N, C, H, W], got {tuple(maps.shape)}")
    return {t: float(maps[i].mean()) for i, t in enumerate(ts)}


def heatmap(values: torch.Tensor) -> torch.Tensor:
    """Map values in [0, 1] ([..., H, W]) to a black-red-yellow-white RGB image in [-1, 1] ([..., 3, H, W])."""
    v = values.clamp(0, 1)
    rgb = torch.stack([(3 * v).clamp(0, 1), (3 * v - 1).clamp(0, 1), (3 * v - 2).clamp(0, 1)], dim=-3)
    return rgb * 2 - 1


def save_error_maps(
    maps: torch.Tensor, path: str | Path, *, scale: int = 4, vmax: float | None = None
) -> Path:
    """Save [T, N, C, H, W] error maps as one PNG heatmap grid: a row per timestep, a column per image.

    Channels are averaged; one colour scale (0 .. `vmax`, default the largest error) holds for
    every row, so the rows compare directly.
    """
    from liftplace.sampling import save_grid

    if maps.dim() != 5:
        raise ValueError(f"maps: expected [T, N, C, H, W], got {tuple(maps.shape)}")
    t, n = maps.shape[:2]
    m = maps.float().mean(dim=2)  # [T, N, H, W]
    top = float(m.max()) if vmax is None else float(vmax)
    if not math.isfinite(top) or top <= 0:
        top = 1.0
    images = heatmap(torch.nan_to_num(m / top, nan=1.0, posinf=1.0)).flatten(0, 1)  # [T*N, 3, H, W]
    return save_grid(images, path, nrow=n, scale=scale)
