"""The torch device a run uses when none is named: one rule for the library, the CLI and the worker."""

from __future__ import annotations

import torch

__all__ = ["pick_device"]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """`device` if given, else cuda when visible (Ray sets CUDA_VISIBLE_DEVICES per task), else cpu."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
