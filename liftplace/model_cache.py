"""A node-local cache of model folders fetched from elsewhere (an MLflow run or model version).

`cached_folder(entry, fetch)` returns `entry` when it exists, else fills it once per node:

- concurrent callers (threads or processes) take an exclusive ``fcntl.flock`` on a lock file beside
  the entry, and the ones that waited find the entry there;
- `fetch(tmp)` downloads into a temporary folder beside the entry and returns the folder that holds
  the files; `check(folder)` may refuse them (raise); only then is the folder renamed into place (one
  atomic ``rename``): an entry that exists is complete, a fetch that broke off leaves only a
  temporary folder, which the next fetch under the lock removes.

`mlflow_model_folder(uri)` uses it for ``runs:/<run id>/<path>`` and ``models:/<name>/<version>``
URIs (MLflow's own artifact URIs; MLflow is imported only then), keyed by the URI under
``<cache>/mlflow`` (`liftplace.paths.cache_dir`). `liftplace.models.load_unet` takes such a URI:
a student a job logged to its run loads on any host that reaches the tracking server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

__all__ = ["MLFLOW_SCHEMES", "cached_folder", "is_mlflow_uri", "locked", "mlflow_model_folder"]

MLFLOW_SCHEMES = ("runs:/", "models:/")
MLFLOW_CACHE_SUBDIR = "mlflow"


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """An exclusive flock on `lock_file` (created if missing), held while the block runs: one holder
    among every process and thread of this node (each call opens its own descriptor)."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def cached_folder(entry: Path, fetch: Callable[[Path], Path], check: Callable[[Path], None] | None = None) -> Path:
    """`entry`, fetched into place first if it is not there (see the module docstring).

    fetch(tmp) -> the folder holding the files (tmp or a folder inside it); check(folder) raises to refuse
    them. Whatever either raises propagates, and nothing is left in place.
    """
    if entry.is_dir():  # renamed into place only when complete
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    with locked(entry.parent / f"{entry.name}.lock"):
        if entry.is_dir():  # another caller fetched it while this one waited
            return entry
        for stale in entry.parent.glob(f".{entry.name}.tmp-*"):  # a fetch that broke off (its process died)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))
        try:
            folder = fetch(tmp)
            if check is not None:
                check(folder)
            os.rename(folder, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return entry


def is_mlflow_uri(path: str | Path) -> bool:
    """Whether `path` is an MLflow artifact URI this cache fetches (``runs:/…`` or ``models:/…``)."""
    return isinstance(path, str) and path.startswith(MLFLOW_SCHEMES)


def mlflow_model_folder(uri: str, *, tracking_uri: str | None = None, cache_root: Path | None = None) -> Path:
    """The local folder of the MLflow artifact `uri` (``runs:/<run id>/<path>``, ``models:/<name>/<version>``),
    downloaded once per node into ``<cache>/mlflow/<quoted uri>``.

    `tracking_uri`: the tracking server (default: MLflow's own, e.g. ``MLFLOW_TRACKING_URI``). A run's
    artifacts and a model version's files do not change once written, so the URI is the key. Raises
    ImportError naming the extra to install when MLflow is missing, FileNotFoundError naming the URI when
    MLflow has nothing there.
    """
    if not is_mlflow_uri(uri):
        raise ValueError(f"model: {uri!r} is not an MLflow URI ({' or '.join(s + '...' for s in MLFLOW_SCHEMES)})")
    try:
        import mlflow.artifacts
    except ImportError as exc:
        raise ImportError(f"model: loading {uri} needs MLflow (pip install 'liftplace[platform]')") from exc
    from liftplace.paths import cache_dir

    root = cache_root if cache_root is not None else cache_dir() / MLFLOW_CACHE_SUBDIR
    entry = root / quote(uri.rstrip("/"), safe="-_.")

    def fetch(tmp: Path) -> Path:
        try:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp),
                                                            tracking_uri=tracking_uri))
        except Exception as exc:  # the tracking URI may hold a password: MLflow's message names the server
            raise FileNotFoundError(f"model: could not download {uri}: {type(exc).__name__}: {exc}") from exc

    def check(folder: Path) -> None:
        if not folder.is_dir():
            raise FileNotFoundError(f"model: {uri} is a file, not a folder holding a diffusers model")

    return cached_folder(entry, fetch, check)
