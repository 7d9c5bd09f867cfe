"""FID (and on request KID, precision/recall) of a model's samples against a dataset.

One call, in the style of torch-fidelity's `calculate_metrics`, which does the work::

    result = compute_fid(model_or_folder_or_images, "digits", features="digits", num_samples=1000)
    print(result)                      # fid_digits = 12.34 (1000 samples vs 1797 reference images, ...)
    result.metric_name, result.fid     # "fid_digits", 12.34

- Samples come from a diffusers UNet (or a model folder) through DDIM in seeded batches
  (`liftplace.sampling.sample`), from a folder of images, or from an image tensor.
- The reference is ``"digits"`` (the embedded data), a local image folder, or an image tensor.
- Features are ``"digits"`` (our small CNN, `liftplace.features`) or ``"inception"``
  (torch-fidelity's inception-v3-compat, local weights only). The number is always reported
  with its feature space: ``fid_digits`` or ``fid_inception``.
- Reference statistics are computed once and cached by torch-fidelity under
  ``cache_dir()/fid/``, keyed by a hash of the reference content (pixels for tensors and the
  digits data; file names, sizes and modification times for folders), the resolution, and a
  hash of the feature extractor's weights. A changed dataset or extractor gets a new key.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from liftplace import defaults
from liftplace.device import pick_device
from liftplace.features import (
    FEATURE_EXTRACTORS,
    check_features,
    feature_extractor_fingerprint,
    feature_extractor_weights,
    register_extractors,
)
from liftplace.paths import cache_dir

__all__ = [
    "FID_NUM_SAMPLES",
    "FID_BATCH_SIZE",
    "KID_SUBSETS",
    "KID_SUBSET_SIZE",
    "FID_CACHE_SUBDIR",
    "FidResult",
    "DivergedSamplesError",
    "compute_fid",
    "fid_between",
    "reference_cache_name",
    "reference_statistics",
    "metric_name",
]

# --- constants -----------------------------------------------------------------------------------
FID_NUM_SAMPLES: int = defaults.FID_SAMPLES  # default number of generated samples (CLI)
FID_BATCH_SIZE: int = 256  # images per batch in feature extraction
KID_SUBSETS: int = 100  # torch-fidelity's default
KID_SUBSET_SIZE: int = 1000  # torch-fidelity's default, lowered to the smaller set's size when needed
FID_CACHE_SUBDIR: str = "fid"  # reference statistics live in cache_dir()/fid/

Source = "diffusers.UNet2DModel | str | Path | torch.Tensor"  # diffusers is imported lazily


def metric_name(features: str) -> str:
    """``fid_digits`` or ``fid_inception``: the name every number is shown with."""
    return f"fid_{check_features(features)}"


class DivergedSamplesError(ValueError):
    """The samples hold NaN or infinite values: the model diverged; there is no FID to compute."""


@dataclass(frozen=True)
class FidResult:
    """The outcome of `compute_fid`. `fid` is in the feature space named by `features`."""

    fid: float
    features: str
    feature_layer: str
    dataset: str
    num_samples: int
    num_reference: int
    reference_key: str
    seed: int
    kid_mean: float | None = None
    kid_std: float | None = None
    precision: float | None = None
    recall: float | None = None
    f_score: float | None = None

    @property
    def metric_name(self) -> str:
        return metric_name(self.features)

    def metrics(self) -> dict[str, float]:
        """The numbers under names that carry the feature space (fid_digits, kid_digits_mean, ...)."""
        f = self.features
        names = {"kid_mean": f"kid_{f}_mean", "kid_std": f"kid_{f}_std", "precision": f"precision_{f}",
                 "recall": f"recall_{f}", "f_score": f"f_score_{f}"}
        out = {self.metric_name: self.fid}
        out.update({name: getattr(self, key) for key, name in names.items() if getattr(self, key) is not None})
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), **self.metrics()}

    def __str__(self) -> str:
        text = ", ".join(f"{k} = {v:.4f}" for k, v in self.metrics().items())
        return (f"{text} ({self.num_samples} samples vs {self.num_reference} reference images of "
                f"{self.dataset}, features {FEATURE_EXTRACTORS[self.features]}:{self.feature_layer})")


# --- inputs: uint8 image datasets for torch-fidelity ---------------------------------------------


class _TensorImages(Dataset):
    """uint8 [N, C, H, W] images as a torch Dataset (3 channels on request)."""

    def __init__(self, images: torch.Tensor, rgb: bool):
        self.images = images
        self.rgb = rgb

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]
        return x.expand(3, -1, -1).contiguous() if self.rgb and x.shape[0] == 1 else x


class _FileImages(Dataset):
    """Image files as uint8 [C, H, W] tensors (RGB, or grayscale when `rgb` is false), unresized."""

    def __init__(self, files: list[Path], rgb: bool):
        self.files = files
        self.rgb = rgb

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        with Image.open(self.files[i]) as img:
            arr = np.asarray(img.convert("RGB" if self.rgb else "L"), dtype=np.uint8)
        t = torch.from_numpy(arr.copy())
        return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)


class _FolderImages(Dataset):
    """`liftplace.data.ImageFolderDataset` (resized, center-cropped) as uint8, loaded lazily."""

    def __init__(self, folder, rgb: bool):
        self.folder = folder
        self.rgb = rgb

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> torch.Tensor:
        from liftplace.sampling import to_uint8

        x = to_uint8(self.folder[i])
        return x.expand(3, -1, -1).contiguous() if self.rgb and x.shape[0] == 1 else x


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in defaults.IMAGE_EXTENSIONS)


def _is_digits(dataset) -> bool:
    return isinstance(dataset, str) and dataset == "digits"


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "unet" / "config.json").is_file()


def _as_uint8(images: torch.Tensor, what: str) -> torch.Tensor:
    from liftplace.sampling import to_uint8

    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 2:
        raise ValueError(f"{what}: expected [N >= 2, 1 or 3, H, W] images, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.cpu()
    if not images.is_floating_point():
        raise ValueError(f"{what}: expected uint8 or float images in [-1, 1], got {images.dtype}")
    if not torch.isfinite(images).all():
        raise DivergedSamplesError(f"{what}: the images hold NaN or infinite values (a diverged model?)")
    return to_uint8(images.detach().float().cpu())


@dataclass
class _Input:
    dataset: Dataset
    n: int
    resolution: int
    label: str
    key_parts: list[str]  # what identifies the content (for the reference cache key)


def _samples_input(
    source: Source, *, rgb: bool, num_samples: int | None, seed: int, num_inference_steps: int,
    batch_size: int, device, progress: bool,
) -> _Input:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_dir():
            raise FileNotFoundError(f"samples: {path} is neither a model folder nor a folder of images")
        if _is_model_dir(path):
            from liftplace.models import load_unet

            source = load_unet(path, device=pick_device(device))
        else:
            files = _image_files(path)
            if len(files) < 2:
                raise ValueError(
                    f"samples: need at least 2 {'/'.join(defaults.IMAGE_EXTENSIONS)} images under {path}, "
                    f"found {len(files)}"
                )
            if num_samples is not None:
                if num_samples > len(files):
                    raise ValueError(f"num_samples: {num_samples} requested but {path} holds {len(files)} images")
                files = files[:num_samples]
            from PIL import Image

            with Image.open(files[0]) as img:
                resolution = img.height
            return _Input(_FileImages(files, rgb), len(files), resolution, str(path), [])
    if isinstance(source, torch.nn.Module) and hasattr(source, "config"):  # a diffusers UNet
        if num_samples is None:
            raise ValueError("num_samples: required when the samples come from a model")
        from liftplace.sampling import sample

        images = sample(source, num_samples, seed=seed, num_inference_steps=num_inference_steps,
                        batch_size=batch_size, device=device, progress=progress)
        source = images
    if isinstance(source, torch.Tensor):
        images = _as_uint8(source, "samples")
        if num_samples is not None:
            if num_samples > images.shape[0]:
                raise ValueError(f"num_samples: {num_samples} requested but only {images.shape[0]} images given")
            images = images[:num_samples]
        return _Input(_TensorImages(images, rgb), images.shape[0], images.shape[-1], "tensor", [])
    raise TypeError(
        f"samples: expected a UNet2DModel, a model folder, a folder of images or an image tensor, "
        f"got {type(source).__name__}"
    )


def _reference_input(dataset: str | Path | torch.Tensor, *, rgb: bool, resolution: int) -> _Input:
    if isinstance(dataset, torch.Tensor):
        images = _as_uint8(dataset, "dataset")
        digest = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()[:16]
        return _Input(_TensorImages(images, rgb), images.shape[0], images.shape[-1], "tensor",
                      ["tensor", str(tuple(images.shape)), digest])
    if _is_digits(dataset):
        from liftplace.data import load_digits
        from liftplace.sampling import to_uint8

        images = to_uint8(load_digits(resolution))
        digest = hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]
        return _Input(_TensorImages(images, rgb), images.shape[0], resolution, "digits",
                      ["digits", str(resolution), digest])
    path = Path(dataset)
    if not path.is_dir():
        from liftplace.data import DATASET_NAMES

        raise ValueError(
            f"dataset: {str(dataset)!r} is neither an embedded dataset ({', '.join(DATASET_NAMES)}) "
            "nor a local image folder"
        )
    from liftplace.data import ImageFolderDataset

    folder = ImageFolderDataset(path, resolution, channels=3 if rgb else 1)
    h = hashlib.sha256()
    for f in folder.files:
        st = f.stat()
        h.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return _Input(_FolderImages(folder, rgb), len(folder), resolution, str(path),
                  ["folder", str(resolution), "rgb" if rgb else "gray", h.hexdigest()[:16]])


def _cache_name(ref: _Input, features: str) -> str:
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(ref.label).name or "dataset").strip("_.") or "dataset"
    key = hashlib.sha256("|".join([*ref.key_parts, features]).encode()).hexdigest()[:16]
    return f"liftplace-{label}-{key}-{features}-{feature_extractor_fingerprint(features)}"


def reference_cache_name(
    dataset: str | Path | torch.Tensor = defaults.DATASET,
    features: str = defaults.FID_FEATURES,
    *,
    resolution: int | None = None,
) -> str:
    """The cache entry name of a reference set's statistics: content hash + extractor weights hash.

    `resolution` defaults to the digits' native 8 for ``"digits"`` and to
    `defaults.IMAGE_FOLDER_RESOLUTION` for a folder.
    """
    check_features(features)
    if resolution is None:
        resolution = defaults.DIGITS_RESOLUTION if _is_digits(dataset) else defaults.IMAGE_FOLDER_RESOLUTION
    return _cache_name(_reference_input(dataset, rgb=features == "inception", resolution=resolution), features)


def _device_is_cuda(device) -> bool:
    return pick_device(device).type == "cuda"


def _common_kwargs(features: str, feature_layer: str | None, *, cuda: bool, cache: bool, progress: bool,
                   seed: int) -> dict:
    return dict(
        feature_extractor=FEATURE_EXTRACTORS[features],
        # Always a local file: torch-fidelity never reaches for the network.
        feature_extractor_weights_path=str(feature_extractor_weights(features)),
        feature_layer_fid=feature_layer,
        feature_layer_kid=feature_layer,
        feature_layer_prc=feature_layer,
        cuda=cuda,
        batch_size=FID_BATCH_SIZE,
        cache=cache,
        cache_root=str(cache_dir() / FID_CACHE_SUBDIR),
        rng_seed=seed,
        # torch-fidelity's own output calls every FID "Frechet Inception Distance"; for the digits
        # features (extracted in well under a second) it stays quiet and ours names the number.
        verbose=progress and features == "inception",
        save_cpu_ram=True,  # in-process data loading: the inputs are in memory or small
        datasets_download=False,
    )


def reference_statistics(
    dataset: str | Path | torch.Tensor = defaults.DATASET,
    features: str = defaults.FID_FEATURES,
    *,
    resolution: int | None = None,
    feature_layer: str | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict:
    """FID statistics ``{"mu", "sigma"}`` of a reference set, computed once and cached."""
    from torch_fidelity.metric_fid import fid_input_id_to_statistics_cached
    from torch_fidelity.utils import create_feature_extractor

    check_features(features)
    if resolution is None:
        resolution = defaults.DIGITS_RESOLUTION if _is_digits(dataset) else defaults.IMAGE_FOLDER_RESOLUTION
    ref = _reference_input(dataset, rgb=features == "inception", resolution=resolution)
    kwargs = _common_kwargs(features, feature_layer, cuda=_device_is_cuda(device), cache=True, progress=progress,
                            seed=0)
    layer = feature_layer or _default_layer(features)
    kwargs.update(input1=ref.dataset, input1_cache_name=_cache_name(ref, features), fid=True)
    cuda = kwargs.pop("cuda")
    extractor = create_feature_extractor(kwargs["feature_extractor"], [layer], cuda=cuda, **kwargs)
    return fid_input_id_to_statistics_cached(1, extractor, layer, cuda=cuda, **kwargs)


def _default_layer(features: str) -> str:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    register_extractors()
    return FEATURE_EXTRACTORS_REGISTRY[FEATURE_EXTRACTORS[features]].get_default_feature_layer_for_metric("fid")


def compute_fid(
    samples: Source,
    dataset: str | Path | torch.Tensor = defaults.DATASET,
    *,
    features: str = defaults.FID_FEATURES,
    num_samples: int | None = None,
    seed: int = 0,
    num_inference_steps: int = defaults.DDIM_STEPS,
    batch_size: int = defaults.SAMPLE_BATCH_SIZE,
    resolution: int | None = None,
    kid: bool = False,
    prc: bool = False,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    feature_layer: str | None = None,
    device: str | torch.device | None = None,
    cache: bool = True,
    progress: bool = False,
) -> FidResult:
    """FID between `samples` and the reference `dataset` in the feature space `features`.

    samples: a diffusers UNet2DModel or a model folder (DDIM, `num_samples` images seeded by
        `seed`, `num_inference_steps` steps, `batch_size` per batch), a folder of images (all of
        them, or the first `num_samples` in name order), or an image tensor (uint8, or float in
        [-1, 1]; NaN/inf raise `DivergedSamplesError`).
    dataset: ``"digits"``, a local image folder, or an image tensor.
    features: ``"digits"`` (fid_digits) or ``"inception"`` (fid_inception; local weights only,
        `liftplace.features.InceptionWeightsMissing` otherwise).
    resolution: of the reference images; default the samples' height (for the digits, their
        native 8 when the samples' height is not a multiple of 8).
    kid, prc: also KID and precision/recall/F-score (torch-fidelity, same features); KID averages
        `kid_subsets` random subsets of `kid_subset_size` (capped at the smaller set's size).
    cache: reuse / store the reference statistics (and features) in ``cache_dir()/fid``.
    """
    from torch_fidelity import calculate_metrics

    check_features(features)
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 2):
        raise ValueError(f"num_samples: expected an integer >= 2, got {num_samples!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    rgb = features == "inception"
    feature_extractor_weights(features)  # fail early (missing Inception weights) before sampling
    inp = _samples_input(samples, rgb=rgb, num_samples=num_samples, seed=seed,
                         num_inference_steps=num_inference_steps, batch_size=batch_size, device=device,
                         progress=progress)
    if resolution is None:
        resolution = inp.resolution
        if _is_digits(dataset) and (resolution < 8 or resolution % 8 != 0):
            resolution = defaults.DIGITS_RESOLUTION  # the digits extractor resizes to 8x8 anyway
    ref = _reference_input(dataset, rgb=rgb, resolution=resolution)
    layer = feature_layer or _default_layer(features)
    cache_name = _cache_name(ref, features)
    kwargs = _common_kwargs(features, layer, cuda=_device_is_cuda(device), cache=cache, progress=progress,
                            seed=seed)
    metrics = calculate_metrics(
        input1=inp.dataset,
        input2=ref.dataset,
        input2_cache_name=cache_name if cache else None,
        fid=True,
        kid=kid,
        prc=prc,
        kid_subsets=kid_subsets,
        kid_subset_size=min(kid_subset_size, inp.n, ref.n),
        **kwargs,
    )
    return _fid_result(metrics, features=features, feature_layer=layer, dataset=ref.label, num_samples=inp.n,
                       num_reference=ref.n, reference_key=cache_name, seed=seed)


def _fid_result(metrics: dict[str, Any], **fields: Any) -> FidResult:
    """torch-fidelity's metrics as a FidResult (a non-finite FID as inf; KID and PRC when computed)."""
    from torch_fidelity import (
        KEY_METRIC_F_SCORE,
        KEY_METRIC_FID,
        KEY_METRIC_KID_MEAN,
        KEY_METRIC_KID_STD,
        KEY_METRIC_PRECISION,
        KEY_METRIC_RECALL,
    )

    def get(key: str) -> float | None:
        return float(metrics[key]) if key in metrics else None

    fid = float(metrics[KEY_METRIC_FID])
    return FidResult(fid=fid if math.isfinite(fid) else float("inf"), kid_mean=get(KEY_METRIC_KID_MEAN),
                     kid_std=get(KEY_METRIC_KID_STD), precision=get(KEY_METRIC_PRECISION),
                     recall=get(KEY_METRIC_RECALL), f_score=get(KEY_METRIC_F_SCORE), **fields)


def fid_between(
    images_a: torch.Tensor | str | Path,
    images_b: torch.Tensor | str | Path,
    *,
    features: str = defaults.FID_FEATURES,
    kid: bool = False,
    prc: bool = False,
    cache: bool = True,
    progress: bool = False,
    **kwargs,
) -> FidResult:
    """FID between two image sets (uint8 or [-1, 1] float tensors, or image folders); `b` is the reference.

    ``fid_between(a, b).fid`` is the number, in the feature space `features`.
    """
    return compute_fid(images_a, images_b, features=features, kid=kid, prc=prc, cache=cache, progress=progress,
                       **kwargs)
