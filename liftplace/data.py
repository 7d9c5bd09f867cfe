"""Datasets: the embedded sklearn digits, and image folders for real data (e.g. CelebA).

Every dataset yields float images in [-1, 1], [C, H, W]. Batches are drawn by
`BatchSampler` from an explicit torch.Generator, so a seed fixes the order and a saved
generator state resumes it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from liftplace import defaults

__all__ = [
    "load_digits",
    "ImageFolderDataset",
    "load_dataset",
    "BatchSampler",
    "DATASET_NAMES",
]

DATASET_NAMES: tuple[str, ...] = defaults.EMBEDDED_DATASETS


def load_digits(resolution: int = defaults.DIGITS_RESOLUTION, *, split: str = "all") -> torch.Tensor:
    """sklearn's bundled 8x8 digits (1,797 images) as a [N, 1, R, R] tensor in [-1, 1].

    `resolution` 8 keeps the native pixels; a larger multiple of 8 upsamples bilinearly.
    `split` "train" / "test" takes a fixed 80/20 split (every fifth image is test), "all" all.
    """
    from sklearn.datasets import load_digits as _sk_digits

    if not isinstance(resolution, int) or resolution < 8 or resolution % 8 != 0:
        raise ValueError(f"resolution: expected a multiple of 8 (8, 16, 32, ...), got {resolution!r}")
    if split not in ("all", "train", "test"):
        raise ValueError(f"split: expected 'all', 'train' or 'test', got {split!r}")
    images = _sk_digits().images.astype(np.float32)  # [N, 8, 8], values 0..16
    x = torch.from_numpy(images).unsqueeze(1) / 16.0 * 2.0 - 1.0
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False).clamp(-1, 1)
    index = torch.arange(x.shape[0])
    if split == "test":
        x = x[index % 5 == 0]
    elif split == "train":
        x = x[index % 5 != 0]
    return x.contiguous()


class ImageFolderDataset:
    """PNG/JPEG images under a folder (recursively), resized and center-cropped to `resolution`.

    Images load lazily; `tensor()` loads them all at once for small sets. Random
    horizontal flips are applied by `BatchSampler`, not here, so that they follow its
    generator.
    """

    def __init__(self, root: str | Path, resolution: int = defaults.IMAGE_FOLDER_RESOLUTION, channels: int = 3):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset: {self.root} is not a directory")
        if channels not in (1, 3):
            raise ValueError(f"channels: expected 1 or 3, got {channels!r}")
        if not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution: expected a positive integer, got {resolution!r}")
        self.resolution = resolution
        self.channels = channels
        self.files = sorted(
            p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in defaults.IMAGE_EXTENSIONS
        )
        if not self.files:
            raise ValueError(f"dataset: no {'/'.join(defaults.IMAGE_EXTENSIONS)} images under {self.root}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[i]) as img:
            img = img.convert("L" if self.channels == 1 else "RGB")
            w, h = img.size
            scale = self.resolution / min(w, h)
            img = img.resize((max(self.resolution, round(w * scale)), max(self.resolution, round(h * scale))),
                             Image.Resampling.BICUBIC)
            w, h = img.size
            left, top = (w - self.resolution) // 2, (h - self.resolution) // 2
            img = img.crop((left, top, left + self.resolution, top + self.resolution))
            arr = np.asarray(img, dtype=np.float32) / 255.0
        t = torch.from_numpy(arr)
        t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
        return t * 2.0 - 1.0

    def tensor(self) -> torch.Tensor:
        """All images as one [N, C, R, R] tensor in [-1, 1]."""
        return torch.stack([self[i] for i in range(len(self))])


def load_dataset(name_or_path: str, resolution: int | None = None) -> torch.Tensor:
    """`"digits"` (embedded) or a local image folder, as a [N, C, H, W] tensor in [-1, 1]."""
    if name_or_path == "digits":
        return load_digits(resolution or defaults.DIGITS_RESOLUTION)
    path = Path(name_or_path)
    if not path.is_dir():
        raise ValueError(
            f"dataset: {name_or_path!r} is neither an embedded dataset ({', '.join(DATASET_NAMES)}) "
            "nor a local image folder"
        )
    return ImageFolderDataset(path, resolution or defaults.IMAGE_FOLDER_RESOLUTION).tensor()


class BatchSampler:
    """Random batches with replacement across epochs, drawn from one torch.Generator.

    Each call returns a [batch, C, H, W] tensor; with `flip`, each image is mirrored
    horizontally with probability 1/2. `state_dict()` / `load_state_dict()` capture the
    generator so a resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(self, data: torch.Tensor | Sequence[torch.Tensor], batch_size: int, *, seed: int, flip: bool = False):
        if isinstance(data, torch.Tensor):
            self.data = data
        else:
            self.data = torch.stack(list(data))
        if self.data.dim() != 4 or self.data.shape[0] == 0:
            raise ValueError(f"data: expected a non-empty [N, C, H, W] tensor, got shape {tuple(self.data.shape)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.flip = flip
        self.generator = torch.Generator().manual_seed(seed)
        self._perm = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def __call__(self) -> torch.Tensor:
        idx = []
        need = self.batch_size
        while need > 0:
            if self._pos >= self._perm.numel():
                self._perm = torch.randperm(self.data.shape[0], generator=self.generator)
                self._pos = 0
            take = self._perm[self._pos : self._pos + need]
            self._pos += take.numel()
            need -= take.numel()
            idx.append(take)
        batch = self.data[torch.cat(idx)]
        if self.flip:
            mask = torch.rand(batch.shape[0], generator=self.generator) < 0.5
            batch = torch.where(mask[:, None, None, None], batch.flip(-1), batch)
        return batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self._perm.clone(), "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._perm = state["perm"].clone()
        self._pos = int(state["pos"])
