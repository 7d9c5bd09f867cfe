"""The noise schedules: DDPM for training, DDIM for sampling, built from one set of defaults."""

from __future__ import annotations

from diffusers import DDIMScheduler, DDPMScheduler

from liftplace import defaults

__all__ = ["make_ddpm_scheduler", "make_ddim_scheduler"]


def _schedule_kwargs() -> dict:
    return dict(
        num_train_timesteps=defaults.NUM_TRAIN_TIMESTEPS,
        beta_start=defaults.BETA_START,
        beta_end=defaults.BETA_END,
        beta_schedule=defaults.BETA_SCHEDULE,
        clip_sample=True,
        prediction_type="epsilon",
    )


def make_ddpm_scheduler() -> DDPMScheduler:
    """Linear beta 1e-4 -> 0.02 over T = 1000 steps, epsilon prediction."""
    return DDPMScheduler(**_schedule_kwargs())


def make_ddim_scheduler() -> DDIMScheduler:
    """DDIM over the same training schedule (for sampling and diffusers pipelines)."""
    return DDIMScheduler(**_schedule_kwargs())
