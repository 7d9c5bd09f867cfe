"""DDIM sampling (diffusers' DDIMScheduler, eta = 0 by default), batched and seeded."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from diffusers import DDIMPipeline, UNet2DModel
from tqdm.auto import tqdm

from liftplace import defaults
from liftplace.schedulers import make_ddim_scheduler

__all__ = ["sample", "to_pipeline", "save_grid", "to_uint8"]


def _input_shape(model: UNet2DModel) -> tuple[int, int, int]:
    size = model.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return (int(model.config.in_channels), int(size[0]), int(size[1]))


@torch.no_grad()
def sample(
    model: UNet2DModel,
    num_samples: int,
    *,
    seed: int = 0,
    num_inference_steps: int = defaults.DDIM_STEPS,
    eta: float = defaults.DDIM_ETA,
    batch_size: int = defaults.SAMPLE_BATCH_SIZE,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Generate `num_samples` images with DDIM; returns a CPU [N, C, H, W] tensor in [-1, 1].

    The initial noise of the whole run comes from one generator seeded by `seed`, drawn
    batch after batch, so the same seed gives the same images for any `batch_size` up to
    floating-point noise of batched convolutions.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: expected a positive integer, got {num_samples!r}")
    if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= defaults.NUM_TRAIN_TIMESTEPS:
        raise ValueError(
            f"num_inference_steps: expected 1..{defaults.NUM_TRAIN_TIMESTEPS}, got {num_inference_steps!r}"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    scheduler = make_ddim_scheduler()
    scheduler.set_timesteps(num_inference_steps)
    shape = _input_shape(model)
    generator = torch.Generator().manual_seed(seed)
    # All initial noise first, on the CPU generator: independent of batch size and device.
    noise = torch.randn((num_samples, *shape), generator=generator)
    out = []
    n_batches = math.ceil(num_samples / batch_size)
    bar = tqdm(total=n_batches * num_inference_steps, desc="DDIM sampling", unit="step", disable=not progress)
    for start in range(0, num_samples, batch_size):
        x = noise[start : start + batch_size].to(device=device, dtype=dtype)
        for t in scheduler.timesteps:
            eps = model(x, t).sample
            x = scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
            bar.update(1)
        out.append(x.clamp(-1, 1).float().cpu())
    bar.close()
    model.train(was_training)
    return torch.cat(out)


def to_pipeline(model: UNet2DModel) -> DDIMPipeline:
    """A diffusers DDIMPipeline around a (teacher or student) UNet with our schedule."""
    return DDIMPipeline(unet=model, scheduler=make_ddim_scheduler())


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 [0, 255], same shape."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_grid(images: torch.Tensor, path: str | Path, *, nrow: int | None = None, scale: int = 1) -> Path:
    """Save a [N, C, H, W] batch in [-1, 1] as one PNG grid; `scale` enlarges pixels."""
    from PIL import Image

    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    grid = torch.zeros((c, ncol * (h + 1) + 1, nrow * (w + 1) + 1), dtype=torch.uint8)
    data = to_uint8(images)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = data[i]
    arr = grid.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[:, :, 0] if c == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
