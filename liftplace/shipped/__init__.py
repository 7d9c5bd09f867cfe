"""Teachers shipped with liftplace: small trained models, each with its provenance and checked digests.

Why ship them: a teacher trained for thousands of steps on one CPU differs from the "same" teacher
trained on another (floating-point results differ between CPUs and their vector units, and the
differences grow step by step), so a conclusion drawn from one machine's teacher rests on a model
nobody else can get. The stability presets therefore register these files instead of training
(``liftplace study run stability``; ``--retrain`` trains afresh as before).

Layout (package data, next to this module):

    manifest.json          {"format": 1, "teachers": {NAME: {"files": {FILE: sha256}, "fid": ..., ...}}}
    NAME/config.json       the diffusers UNet2DModel config
    NAME/diffusion_pytorch_model.safetensors
    NAME/liftplace.json    parameters, pruned widths, and "extra": the provenance (command, commit,
                           training plan and job options, FID with its settings, torch version, CPU)

Every file of a teacher is checked against the manifest's sha256 before it is used:
`shipped_teacher(name)` returns the folder only when every digest matches, and
`liftplace.models.load_unet` checks a shipped folder (or a ``shipped:NAME`` reference) the same way.
`scripts/ship_teachers.py` wrote them; its invocation and commit are in each provenance. No torch here.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "SHIPPED_DIR",
    "MANIFEST_FILE",
    "SHIPPED_PREFIX",
    "ShippedTeacherError",
    "manifest",
    "shipped_names",
    "shipped_teacher",
    "verify_teacher",
    "provenance",
    "teacher_meta",
    "shipped_name_of",
    "resolve_reference",
    "sha256_file",
]

SHIPPED_DIR: Path = Path(__file__).resolve().parent
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
# A model reference "shipped:NAME" (the CLI's --teacher, a job's teacher_path) names a shipped teacher
# on whatever machine reads it: the worker resolves it in its own installed liftplace.
SHIPPED_PREFIX = "shipped:"
_CHUNK = 1 << 20


class ShippedTeacherError(ValueError):
    """A shipped teacher that is unknown, or whose files do not match the manifest (the file is named)."""


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=4)
def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"format": MANIFEST_FORMAT, "teachers": {}}
    if data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("teachers"), dict):
        raise ShippedTeacherError(f"{path}: expected a shipped-teachers manifest of format {MANIFEST_FORMAT}")
    return data


def manifest(root: Path | None = None) -> dict[str, Any]:
    """The manifest of the shipped teachers under `root` (default: the package's); empty when there is none."""
    return _read_manifest((root or SHIPPED_DIR) / MANIFEST_FILE)


def shipped_names(root: Path | None = None) -> tuple[str, ...]:
    """Names of the shipped teachers, in the manifest's order."""
    return tuple(manifest(root)["teachers"])


def _entry(name: str, root: Path | None) -> dict[str, Any]:
    teachers = manifest(root)["teachers"]
    if name not in teachers:
        known = ", ".join(teachers) or "none"
        raise ShippedTeacherError(f"shipped: no shipped teacher {name!r}; shipped: {known}")
    return teachers[name]


def verify_teacher(folder: str | Path, name: str, root: Path | None = None) -> Path:
    """`folder` if every file the manifest lists for teacher `name` is there with its sha256.

    ShippedTeacherError naming the first file that is missing or differs (with both digests). Files
    the manifest does not list are ignored (diffusers reads only the ones it lists).
    """
    folder = Path(folder)
    for file, expected in _entry(name, root)["files"].items():
        path = folder / file
        if not path.is_file():
            raise ShippedTeacherError(f"shipped teacher {name!r}: file {file} is missing from {folder}")
        actual = sha256_file(path)
        if actual != expected:
            raise ShippedTeacherError(
                f"shipped teacher {name!r}: file {file} has sha256 {actual}, the manifest expects {expected} "
                "(the file was changed or damaged: reinstall liftplace, or train the teacher afresh with --retrain)")
    return folder


def shipped_teacher(name: str, root: Path | None = None) -> Path:
    """The folder of shipped teacher `name`, its digests checked (ShippedTeacherError otherwise)."""
    base = root or SHIPPED_DIR
    return verify_teacher(base / name, name, root)


def teacher_meta(name: str, root: Path | None = None) -> dict[str, Any]:
    """Teacher `name`'s liftplace.json (digests checked first): "parameters", "layout", "extra" (the provenance)."""
    folder = shipped_teacher(name, root)
    return json.loads((folder / "liftplace.json").read_text())


def provenance(name: str, root: Path | None = None) -> dict[str, Any]:
    """How teacher `name` was made (liftplace.json's "extra", checked first): command, commit, plan, job options,
    FID and its settings ("fid": value, metric, samples, sample_steps, seed), environment."""
    return teacher_meta(name, root).get("extra", {})


def shipped_name_of(path: str | Path) -> str | None:
    """The name of the shipped teacher `path` is the folder of (a ``shipped:NAME`` reference, or the package's
    folder itself); None for any other path."""
    text = str(path)
    if text.startswith(SHIPPED_PREFIX):
        return text[len(SHIPPED_PREFIX):]
    try:
        resolved = Path(path).resolve()
    except OSError:
        return None
    if resolved.parent == SHIPPED_DIR and resolved.name in manifest()["teachers"]:
        return resolved.name
    return None


def resolve_reference(path: str | Path) -> Path:
    """A model folder from a path or a ``shipped:NAME`` reference; a shipped teacher's digests are checked."""
    name = shipped_name_of(path)
    return shipped_teacher(name) if name is not None else Path(path)
