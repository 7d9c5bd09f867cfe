"""Teachers as MLflow models (cluster mode, ``LIFTPLACE_STORAGE=mlflow``): registration, references, a node cache.

On a Ray cluster whose hosts share no folder, a job on one host cannot read a teacher another host
trained or the API host registered. So in cluster mode every ready teacher is also a version of a
registered model in MLflow's Model Registry (registered model name = the teacher's name, one version
per training or registration), and a job's spec carries a *reference* to it: the model URI
``models:/<name>/<version>`` and the digest of its files. A worker resolves the reference through a
cache on its own node (`liftplace.model_cache.cached_folder`):

- the entry is ``<cache>/models/<name>/<version>/<digest>`` (`liftplace.paths.cache_dir`, i.e.
  ``LIFTPLACE_CACHE_DIR``, default ``~/.cache/liftplace``): keyed by name, version and digest, so a
  version whose files changed in the registry is never taken for the one a job was promised;
- it is downloaded once per node: concurrent jobs (threads or processes) take an exclusive
  ``fcntl.flock`` on ``<entry>.lock`` beside the entry, and the ones that waited find it there;
- a download goes to a temporary folder beside the entry, its digest is checked, and only then is it
  renamed into place (one atomic ``rename``): an entry that exists is complete, a download that broke
  off leaves only a temporary folder, which the next download under the lock removes;
- a digest that differs, or a version the registry does not hold, fails with `TeacherUnavailable`,
  whose message names the teacher, the version and the MLflow URI.

The digest (`folder_digest`) is the sha256 of a manifest listing every file of the model folder as
``<sha256 of the file>  <path relative to the folder, with />`` lines in sorted path order (the format
of ``sha256sum``), so it does not depend on the file system's listing order, timestamps or the folder's
location. It is stored with the teacher in the server's database and as the tag `DIGEST_TAG` on the
model version.

Both sides use this module: the server registers local and shipped teachers and builds references,
the worker registers the teachers it trains and resolves references. No torch here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from worker.retry import mlflow_retry, safe_uri

__all__ = [
    "DIGEST_TAG",
    "TEACHER_TAG",
    "SOURCE_TAG",
    "MODEL_ARTIFACT_PATH",
    "MODELS_CACHE_SUBDIR",
    "TeacherRef",
    "TeacherUnavailable",
    "file_sha256",
    "folder_digest",
    "model_uri",
    "parse_model_uri",
    "find_version",
    "register_version",
    "models_cache_root",
    "resolve_teacher",
]

DIGEST_TAG = "liftplace.digest"  # tag of a model version: folder_digest() of its files
TEACHER_TAG = "liftplace.teacher"  # tag of a model version: the teacher's name in the service
SOURCE_TAG = "liftplace.source"  # tag of a model version: how the teacher came (preset, pruned, local, shipped)
MODEL_ARTIFACT_PATH = "model"  # where a run holds the model's files (the training jobs log the model there)
MODELS_CACHE_SUBDIR = "models"  # under liftplace's cache folder
_CHUNK = 1 << 20


class TeacherUnavailable(RuntimeError):
    """A teacher reference that cannot be resolved: a version missing from the registry, or files whose
    digest differs from the one the job was given. The message names the teacher, version and MLflow URI."""


@dataclass(frozen=True)
class TeacherRef:
    """A teacher as a model version of MLflow's registry: `models:/<name>/<version>` and its files' digest."""

    name: str
    version: str
    digest: str

    @property
    def uri(self) -> str:
        return model_uri(self.name, self.version)


def model_uri(name: str, version: str | int) -> str:
    """MLflow's URI of a registered model's version: ``models:/<name>/<version>``."""
    return f"models:/{name}/{version}"


def parse_model_uri(uri: str) -> tuple[str, str]:
    """(name, version) of ``models:/<name>/<version>``; ValueError for anything else (aliases, stages, paths)."""
    prefix = "models:/"
    if not uri.startswith(prefix):
        raise ValueError(f"{uri!r} is not a model URI models:/<name>/<version>")
    name, _, version = uri[len(prefix):].rpartition("/")
    if not name or "/" in name or not version.isdigit():
        raise ValueError(f"{uri!r} is not a model URI models:/<name>/<version> (a numbered version)")
    return name, version


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of one file (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def folder_digest(folder: str | Path) -> str:
    """The hex sha256 of a model folder: over ``"<file sha256>  <relative path>\\n"`` for every regular
    file below `folder`, in sorted order of the relative paths (written with "/"). FileNotFoundError when
    `folder` is not a folder, ValueError when it holds no file."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    if not files:
        raise ValueError(f"{root} holds no file")
    manifest = "".join(f"{file_sha256(p)}  {rel}\n" for rel, p in files)
    return hashlib.sha256(manifest.encode()).hexdigest()


# --- registration ---------------------------------------------------------------------------------


def _error_code(exc: BaseException) -> str | None:
    return getattr(exc, "error_code", None)


def find_version(client: Any, name: str, digest: str) -> str | None:
    """The version of registered model `name` whose files have `digest` (the newest if several), or None:
    a registration retried after it had succeeded (a worker that died before reporting it) reuses it."""
    found = mlflow_retry(client.search_model_versions, f"name = '{_quote(name)}' and tags.`{DIGEST_TAG}` = '{digest}'")
    versions = sorted((int(v.version) for v in found if v.tags.get(DIGEST_TAG) == digest), reverse=True)
    return str(versions[0]) if versions else None


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def register_version(client: Any, name: str, run_id: str, digest: str, *, tags: dict[str, str] | None = None,
                     artifact_path: str = MODEL_ARTIFACT_PATH) -> TeacherRef:
    """A new version of registered model `name` (created if missing) whose source is `artifact_path` of run
    `run_id`'s artifacts (already uploaded), tagged with `digest`; or the existing version with that
    digest (`find_version`). Transient MLflow errors are retried; others raise."""
    existing = find_version(client, name, digest)
    if existing is not None:
        return TeacherRef(name, existing, digest)
    try:
        mlflow_retry(client.create_registered_model, name,
                     description="a liftplace teacher (diffusers UNet2DModel folder); one version per training")
    except Exception as exc:
        if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise
    run = mlflow_retry(client.get_run, run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = mlflow_retry(client.create_model_version, name, source, run_id=run_id,
                           tags={DIGEST_TAG: digest, TEACHER_TAG: name, **(tags or {})})
    return TeacherRef(name, str(version.version), digest)


# --- the node cache -------------------------------------------------------------------------------


def models_cache_root() -> Path:
    """This node's cache of registry models: `<LIFTPLACE_CACHE_DIR>/models` (created on first use)."""
    from liftplace.paths import cache_dir

    root = cache_dir() / MODELS_CACHE_SUBDIR
    root.mkdir(parents=True, exist_ok=True)
    return root


def _entry(root: Path, name: str, version: str, digest: str) -> Path:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"teacher {name!r} version {version}: {digest!r} is not a sha256 digest")
    # quote(): a registered model's name may hold characters a folder name should not ("/" never does)
    return root / quote(name, safe="-_.") / version / digest


def _download(client: Any, ref: TeacherRef, tracking_uri: str | None, dst: Path) -> Path:
    """Download the version's files into `dst`; the folder that holds them."""
    import mlflow.artifacts

    source = mlflow_retry(client.get_model_version_download_uri, ref.name, ref.version)
    return Path(mlflow_retry(mlflow.artifacts.download_artifacts, artifact_uri=source, dst_path=str(dst),
                             tracking_uri=tracking_uri))


def resolve_teacher(uri: str, digest: str, *, tracking_uri: str | None, cache_root: Path | None = None,
                    client: Any = None) -> Path:
    """The local folder of the teacher `uri` (``models:/<name>/<version>``) whose files have `digest`, from
    this node's cache, downloaded there first if needed (once per node; see the module docstring).

    TeacherUnavailable (naming teacher, version and MLflow URI) when the registry has no such version or
    its files have another digest; transient MLflow errors are retried first.
    """
    from liftplace.model_cache import cached_folder

    name, version = parse_model_uri(uri)
    ref = TeacherRef(name, version, digest)
    root = cache_root if cache_root is not None else models_cache_root()
    entry = _entry(root, name, version, digest)
    if entry.is_dir():  # renamed into place only when complete
        return entry
    where = f"{uri} at {safe_uri(tracking_uri)}"

    def fetch(tmp: Path) -> Path:
        nonlocal client
        if client is None:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        try:
            mlflow_retry(client.get_model_version, name, version)
        except Exception as exc:
            if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
                raise TeacherUnavailable(f"teacher {name!r} version {version}: not in MLflow's model registry "
                                         f"({where}); was it deleted? Register the teacher again") from exc
            raise
        return _download(client, ref, tracking_uri, tmp)

    def check(folder: Path) -> None:
        got = folder_digest(folder)
        if got != digest:
            raise TeacherUnavailable(f"teacher {name!r} version {version}: the files of {where} have digest "
                                     f"{got}, the job expects {digest} (the version's files were changed "
                                     "after registration)")

    return cached_folder(entry, fetch, check)
