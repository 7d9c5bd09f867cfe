"""Feature extractors for FID: a small digits CNN of our own, and torch-fidelity's Inception.

Two feature spaces, never mixed up and always named with the number they produce:

- ``"digits"`` -> ``fid_digits``: a small CNN classifier trained by `train_digits_classifier` on
  the embedded sklearn digits (train split), deterministically, in a few seconds on a CPU. Its
  weights are cached in ``cache_dir()/features/`` under a name keyed by a hash of the training
  recipe, so a changed recipe never loads stale weights. It is registered with torch-fidelity
  as the feature extractor ``"liftplace-digits-cnn"``; FID uses its 64-d penultimate layer.
- ``"inception"`` -> ``fid_inception``: torch-fidelity's ``inception-v3-compat`` (the field's
  standard), used only when its weights are on disk: the file named by the environment variable
  ``LIFTPLACE_INCEPTION_WEIGHTS``, else torch-fidelity's own download cache
  (``<torch hub dir>/checkpoints/weights-inception-2015-12-05-6726825d.pth``). Missing weights
  raise `InceptionWeightsMissing` naming the file and both places; nothing is ever downloaded and
  there is no fallback to another metric.

Run ``python -m liftplace.features`` to train (or find) the digits classifier and print its
held-out accuracy and cache path.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from liftplace.paths import cache_dir

__all__ = [
    "FEATURES",
    "FEATURE_EXTRACTORS",
    "DIGITS_EXTRACTOR_NAME",
    "DIGITS_FEATURE_LAYER",
    "DIGITS_RECIPE",
    "DIGITS_MIN_ACCURACY",
    "INCEPTION_EXTRACTOR_NAME",
    "INCEPTION_FEATURE_LAYER",
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILE",
    "InceptionWeightsMissing",
    "DigitsCNN",
    "digits_extractor_class",
    "register_extractors",
    "INCEPTION_WEIGHTS_URL",
    "DigitsClassifier",
    "check_features",
    "train_digits_classifier",
    "digits_classifier_path",
    "ensure_digits_classifier",
    "load_digits_classifier",
    "inception_weights_path",
    "inception_hub_path",
    "feature_extractor_weights",
    "feature_extractor_fingerprint",
    "extract_features",
]

# --- constants: the two feature spaces ---------------------------------------------------------
FEATURES: tuple[str, ...] = ("digits", "inception")
DIGITS_EXTRACTOR_NAME = "liftplace-digits-cnn"  # name registered with torch-fidelity
DIGITS_FEATURE_LAYER = "64"  # penultimate layer (64-d), used for FID, KID and precision/recall
DIGITS_MIN_ACCURACY = 0.97  # a classifier below this held-out accuracy is refused
INCEPTION_EXTRACTOR_NAME = "inception-v3-compat"
INCEPTION_FEATURE_LAYER = "2048"
INCEPTION_WEIGHTS_ENV = "LIFTPLACE_INCEPTION_WEIGHTS"
# torch-fidelity 0.4.0's URL_INCEPTION_V3 (a test checks they agree; spelled out so that importing this
# module, and so the CLI's --help, does not import torch-fidelity).
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_WEIGHTS_FILE = INCEPTION_WEIGHTS_URL.rsplit("/", 1)[-1]
FEATURE_EXTRACTORS: dict[str, str] = {"digits": DIGITS_EXTRACTOR_NAME, "inception": INCEPTION_EXTRACTOR_NAME}

# The digits classifier's training recipe. Any change here changes the cache key of the weights
# (and through the weights' hash, the key of every cached FID reference statistic).
DIGITS_RECIPE: dict = {
    "version": 1,
    "architecture": {"widths": [16, 32, 32], "hidden": 64},
    "data": "sklearn digits 8x8, liftplace.data.load_digits(split='train'), through to_uint8",
    "seed": 0,
    "epochs": 12,
    "batch_size": 64,
    "optimizer": "adam",
    "max_lr": 3e-3,
    "schedule": "onecycle",
    "threads": 1,
}


class InceptionWeightsMissing(FileNotFoundError):
    """Inception FID was asked for, but the weights file is not on disk (nothing is downloaded)."""


def check_features(features: str) -> str:
    """Return `features` if it names a feature space; ValueError naming the valid ones otherwise."""
    if features not in FEATURES:
        raise ValueError(f"features: expected one of {', '.join(FEATURES)}, got {features!r}")
    return features


# --- the digits CNN ------------------------------------------------------------------------------


class DigitsCNN(nn.Module):
    """Three 3x3 convolutions and two linear layers on 8x8 grayscale digits in [-1, 1].

    `forward` returns (penultimate 64-d features after ReLU, 10 logits).
    """

    def __init__(self, widths: tuple[int, ...] | list[int] = (16, 32, 32), hidden: int = 64):
        super().__init__()
        w1, w2, w3 = widths
        self.conv1 = nn.Conv2d(1, w1, 3, padding=1)
        self.conv2 = nn.Conv2d(w1, w2, 3, padding=1)
        self.conv3 = nn.Conv2d(w2, w3, 3, padding=1)
        self.fc1 = nn.Linear(w3 * 2 * 2, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 4x4
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # 2x2
        features = F.relu(self.fc1(x.flatten(1)))
        return features, self.fc2(features)


def _preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] (C 1 or 3, any size) -> float [B, 1, 8, 8] in [-1, 1]."""
    if images.dtype != torch.uint8:
        raise ValueError(f"digits features: expected uint8 images, got {images.dtype}")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"digits features: expected [B, 1 or 3, H, W] images, got shape {tuple(images.shape)}")
    x = images.float()
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (8, 8):
        x = F.interpolate(x, size=(8, 8), mode="area")
    return x / 127.5 - 1.0


def _recipe_hash(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DigitsClassifier:
    """A trained digits CNN with its held-out accuracy and the recipe it came from."""

    model: DigitsCNN
    test_accuracy: float
    recipe: dict


def _digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits as sk_digits

    from liftplace.data import load_digits
    from liftplace.sampling import to_uint8

    labels = torch.from_numpy(sk_digits().target).long()
    index = torch.arange(labels.shape[0])
    labels = labels[index % 5 == 0] if split == "test" else labels[index % 5 != 0]
    images = to_uint8(load_digits(8, split=split))  # the same uint8 path as every FID input
    return images, labels


def train_digits_classifier(recipe: dict | None = None, *, progress: bool = False) -> DigitsClassifier:
    """Train the digits CNN from `recipe` (default `DIGITS_RECIPE`); deterministic for a recipe.

    Trains on ``load_digits(split="train")``, reports accuracy on ``split="test"``. Runs on the
    CPU with one thread (tiny tensors; one thread also keeps the float summation order fixed).
    """
    recipe = dict(DIGITS_RECIPE if recipe is None else recipe)
    x_train, y_train = _digits_split("train")
    x_test, y_test = _digits_split("test")
    x_train, x_test = _preprocess(x_train), _preprocess(x_test)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(recipe.get("threads", 1)))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(recipe["seed"]))
            arch = recipe["architecture"]
            model = DigitsCNN(tuple(arch["widths"]), int(arch["hidden"]))
        generator = torch.Generator().manual_seed(int(recipe["seed"]))
        batch, epochs = int(recipe["batch_size"]), int(recipe["epochs"])
        steps_per_epoch = -(-x_train.shape[0] // batch)
        opt = torch.optim.Adam(model.parameters(), lr=float(recipe["max_lr"]))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(recipe["max_lr"]),
                                                    total_steps=epochs * steps_per_epoch)
        model.train()
        for _ in tqdm(range(epochs), desc="training digits CNN", unit="epoch", disable=not progress):
            perm = torch.randperm(x_train.shape[0], generator=generator)
            for start in range(0, x_train.shape[0], batch):
                idx = perm[start : start + batch]
                loss = F.cross_entropy(model(x_train[idx])[1], y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_test)[1].argmax(1) == y_test).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    model.requires_grad_(False)
    return DigitsClassifier(model=model, test_accuracy=accuracy, recipe=recipe)


def digits_classifier_path(recipe: dict | None = None) -> Path:
    """Where the weights of `recipe` (default `DIGITS_RECIPE`) are cached."""
    recipe = DIGITS_RECIPE if recipe is None else recipe
    return cache_dir() / "features" / f"digits-cnn-{_recipe_hash(recipe)}.pt"


def ensure_digits_classifier(recipe: dict | None = None, *, progress: bool = False) -> Path:
    """The cached weights file of the digits classifier, training and saving it on first use.

    Raises RuntimeError if the trained classifier's held-out accuracy is below
    `DIGITS_MIN_ACCURACY` (its features would not be fit for FID).
    """
    path = digits_classifier_path(recipe)
    if path.is_file():
        return path
    trained = train_digits_classifier(recipe, progress=progress)
    if trained.test_accuracy < DIGITS_MIN_ACCURACY:
        raise RuntimeError(
            f"digits classifier: held-out accuracy {trained.test_accuracy:.4f} is below {DIGITS_MIN_ACCURACY}; "
            "refusing to use it as a feature extractor"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(
        {"state_dict": trained.model.state_dict(), "test_accuracy": trained.test_accuracy, "recipe": trained.recipe},
        tmp,
    )
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return path


def load_digits_classifier(path: str | Path | None = None) -> DigitsClassifier:
    """Load the digits classifier from `path` (default: the cached one, trained if missing)."""
    path = Path(path) if path is not None else ensure_digits_classifier()
    blob = torch.load(path, map_location="cpu", weights_only=True)
    arch = blob["recipe"]["architecture"]
    model = DigitsCNN(tuple(arch["widths"]), int(arch["hidden"]))
    model.load_state_dict(blob["state_dict"])
    model.eval().requires_grad_(False)
    return DigitsClassifier(model=model, test_accuracy=float(blob["test_accuracy"]), recipe=blob["recipe"])


_DIGITS_EXTRACTOR_CLASS: type | None = None


def digits_extractor_class() -> type:
    """The torch-fidelity feature extractor class of the digits CNN, registered on first call.

    Defined lazily so that ``import liftplace.features`` does not import torch-fidelity.
    Also reachable as ``liftplace.features.DigitsFeatureExtractor``.
    """
    global _DIGITS_EXTRACTOR_CLASS
    if _DIGITS_EXTRACTOR_CLASS is not None:
        return _DIGITS_EXTRACTOR_CLASS
    from torch_fidelity import FeatureExtractorBase, register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    class DigitsFeatureExtractor(FeatureExtractorBase):
        """torch-fidelity feature extractor around the digits CNN.

        Takes uint8 [B, C, H, W] images (1 or 3 channels, any size: converted to grayscale and
        area-resized to 8x8) and provides the features ``"64"`` (penultimate, default for FID, KID
        and precision/recall) and ``"logits"``. ``feature_extractor_weights_path`` selects a weights
        file; by default the cached classifier (trained on first use).
        """

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            self.net = load_digits_classifier(feature_extractor_weights_path).model
            self.requires_grad_(False)
            self.eval()

        @staticmethod
        def get_provided_features_list():
            return DIGITS_FEATURE_LAYER, "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"fid": DIGITS_FEATURE_LAYER, "kid": DIGITS_FEATURE_LAYER, "prc": DIGITS_FEATURE_LAYER,
                    "isc": "logits"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros((1, 1, 8, 8), dtype=torch.uint8)

        def forward(self, x):
            features, logits = self.net(_preprocess(x).to(next(self.net.parameters()).device))
            out = {DIGITS_FEATURE_LAYER: features.float(), "logits": logits.float()}
            return tuple(out[name] for name in self.features_list)

    if DIGITS_EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:  # torch-fidelity refuses re-registration
        register_feature_extractor(DIGITS_EXTRACTOR_NAME, DigitsFeatureExtractor)
    _DIGITS_EXTRACTOR_CLASS = FEATURE_EXTRACTORS_REGISTRY[DIGITS_EXTRACTOR_NAME]
    return _DIGITS_EXTRACTOR_CLASS


def register_extractors() -> None:
    """Make sure torch-fidelity knows the digits extractor (idempotent)."""
    digits_extractor_class()


def __getattr__(name: str):
    if name == "DigitsFeatureExtractor":
        return digits_extractor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- Inception weights: local only ---------------------------------------------------------------


def inception_hub_path() -> Path:
    """Where torch-fidelity's own download would have cached the Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def inception_weights_path() -> Path:
    """The local Inception weights: ``$LIFTPLACE_INCEPTION_WEIGHTS``, else torch-fidelity's cache.

    Raises `InceptionWeightsMissing` (a FileNotFoundError) naming the file and both places.
    """
    env = os.environ.get(INCEPTION_WEIGHTS_ENV)
    if env:
        path = Path(env).expanduser()
        if path.is_file():
            return path
        raise InceptionWeightsMissing(
            f"Inception FID: {INCEPTION_WEIGHTS_ENV}={env} does not name a file. Put the torch-fidelity Inception "
            f"weights file {INCEPTION_WEIGHTS_FILE} (from {INCEPTION_WEIGHTS_URL}) there, or unset the variable and "
            f"place the file at {inception_hub_path()}. Nothing is downloaded; use --features digits for fid_digits."
        )
    path = inception_hub_path()
    if path.is_file():
        return path
    raise InceptionWeightsMissing(
        f"Inception FID needs the weights file {INCEPTION_WEIGHTS_FILE} (torch-fidelity's inception-v3-compat, "
        f"from {INCEPTION_WEIGHTS_URL}), which is not on disk. Either set {INCEPTION_WEIGHTS_ENV} to the file's path, "
        f"or place it at {path} (torch-fidelity's cache). Nothing is downloaded at run time; "
        "use features='digits' (fid_digits) for the embedded digits data."
    )


def feature_extractor_weights(features: str) -> Path:
    """The local weights file for a feature space (training the digits CNN on first use)."""
    check_features(features)
    return ensure_digits_classifier() if features == "digits" else inception_weights_path()


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}
_MEMO_MIN_BYTES = 1 << 20


def feature_extractor_fingerprint(features: str) -> str:
    """A short hash of the extractor's name and weights file content.

    Large files (Inception, ~90 MB) are hashed once per (path, size, mtime); small ones every time.
    """
    path = feature_extractor_weights(features)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _FINGERPRINTS:
        return _FINGERPRINTS[key]
    h = hashlib.sha256(FEATURE_EXTRACTORS[features].encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if stat.st_size > _MEMO_MIN_BYTES:
        _FINGERPRINTS[key] = h.hexdigest()[:16]
    return h.hexdigest()[:16]


@torch.no_grad()
def extract_features(
    images: torch.Tensor, features: str = "digits", *, layer: str | None = None, batch_size: int = 256
) -> torch.Tensor:
    """Features of uint8 [N, C, H, W] images, on the CPU: [N, D]. For tests and analysis."""
    check_features(features)
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    register_extractors()
    name = FEATURE_EXTRACTORS[features]
    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    layer = layer or cls.get_default_feature_layer_for_metric("fid")
    extractor = cls(name, [layer], feature_extractor_weights_path=str(feature_extractor_weights(features)))
    if features == "inception" and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return torch.cat([extractor(images[i : i + batch_size])[0].cpu() for i in range(0, images.shape[0], batch_size)])


def _main() -> None:
    path = ensure_digits_classifier(progress=True)
    clf = load_digits_classifier(path)
    print(f"digits classifier: held-out accuracy {clf.test_accuracy:.4f} (split='test'), weights {path}")


if __name__ == "__main__":
    _main()
