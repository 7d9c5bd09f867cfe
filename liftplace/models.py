"""Teacher models: diffusers `UNet2DModel` presets, parameter counts, save and load.

A teacher is a plain diffusers `UNet2DModel`. The presets below are sized for the
embedded digits data; any local diffusers model directory (a `unet/` subfolder of a
pipeline, or a bare model folder) loads through `load_unet`. Pruned students keep
per-layer widths that no longer match their diffusers config, so `save_unet` records
the pruned widths beside the safetensors weights and `load_unet` rebuilds them (see
`liftplace.pruning`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DModel
from torch import nn

from liftplace import defaults
from liftplace.presets import PRESET_NAMES, TEACHER_PRESETS, TeacherPreset

__all__ = [
    "TeacherPreset",
    "TEACHER_PRESETS",
    "PRESET_NAMES",
    "build_unet",
    "count_parameters",
    "save_unet",
    "load_unet",
    "LIFTPLACE_META_FILE",
]

LIFTPLACE_META_FILE = "liftplace.json"




def build_unet(
    preset: str,
    *,
    sample_size: int = defaults.DIGITS_RESOLUTION,
    in_channels: int = 1,
    seed: int | None = 0,
) -> UNet2DModel:
    """A freshly initialised UNet2DModel of a preset (seeded, so the weights repeat)."""
    if preset not in TEACHER_PRESETS:
        raise ValueError(f"preset: unknown preset {preset!r}; choose one of {', '.join(PRESET_NAMES)}")
    n_down = len(TEACHER_PRESETS[preset].block_out_channels) - 1
    if sample_size % (2**n_down) != 0:
        raise ValueError(f"sample_size: {sample_size} is not divisible by 2**{n_down} (the preset's downsamplings)")
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return UNet2DModel(**TEACHER_PRESETS[preset].config(sample_size, in_channels))
    return UNet2DModel(**TEACHER_PRESETS[preset].config(sample_size, in_channels))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of a model."""
    return sum(p.numel() for p in model.parameters())


def save_unet(model: UNet2DModel, path: str | Path, *, extra: dict | None = None) -> Path:
    """Save a (possibly pruned) UNet in diffusers format (config.json + safetensors).

    A pruned model also gets `liftplace.json` with the widths needed to rebuild it;
    `extra` is stored there too (the job spec or training record, for example).
    """
    from liftplace.pruning import pruned_layout  # local import: pruning imports models

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    meta = {"parameters": count_parameters(model), "layout": pruned_layout(model)}
    if extra:
        meta["extra"] = extra
    (path / LIFTPLACE_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path


def load_unet(path: str | Path, *, device: str | torch.device = "cpu") -> UNet2DModel:
    """Load a UNet2DModel from a local diffusers directory (or its `unet/` subfolder).

    Pruned students saved by `save_unet` are rebuilt to their pruned widths first.
    `path` is a local folder, ``shipped:NAME`` for a teacher shipped with liftplace (its files are
    checked against their sha256 digests first: `liftplace.shipped.ShippedTeacherError`, naming the
    file, when one differs), or an MLflow URI of your own tracking server, ``runs:/<run id>/model``
    (the student or teacher a job logged to its run) or ``models:/<name>/<version>`` (a registered
    teacher), downloaded once into liftplace's cache (`liftplace.model_cache`; the server is
    MLflow's ``MLFLOW_TRACKING_URI``). Nothing is fetched from a model hub.
    """
    from liftplace.model_cache import is_mlflow_uri, mlflow_model_folder
    from liftplace.pruning import apply_layout
    from liftplace.shipped import resolve_reference

    path = mlflow_model_folder(path) if is_mlflow_uri(path) else resolve_reference(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model: {path} is not a directory holding a diffusers model")
    if not (path / "config.json").is_file() and (path / "unet" / "config.json").is_file():
        path = path / "unet"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model: no config.json in {path}; expected a diffusers UNet2DModel folder")
    meta_file = path / LIFTPLACE_META_FILE
    layout = json.loads(meta_file.read_text()).get("layout") if meta_file.is_file() else None
    if not layout:
        # low_cpu_mem_usage=False: the default builds the model under accelerate's init_empty_weights,
        # which patches torch.nn.Module for the whole process, so a model built by another thread
        # meanwhile (two in-process jobs) gets meta tensors.
        model = UNet2DModel.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False)
        return model.to(device)
    config = UNet2DModel.load_config(path, local_files_only=True)
    model = UNet2DModel.from_config(config)
    apply_layout(model, layout)
    from safetensors.torch import load_file

    weights = path / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"model: {weights} is missing")
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.to(device)
