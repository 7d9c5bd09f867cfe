"""Server configuration, read from the environment (pydantic-settings).

Every value has an embedded default, so ``liftplace serve`` works on a laptop with no
configuration: a SQLite database, a local Ray, MLflow in a local SQLite store, all under
the data dir. A cluster sets ``DATABASE_URL``, ``RAY_ADDRESS``, ``MLFLOW_TRACKING_URI``, ...

Names without the ``LIFTPLACE_`` prefix (``DATABASE_URL``, ``RAY_ADDRESS``, ``MLFLOW_*``) are
the conventional ones their tools already read.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from liftplace import defaults
from worker.spec import Storage

# Limits the library does not define (it has no notion of a study or of retries).
MAX_JOBS_PER_STUDY: int = 500
MAX_ATTEMPTS: int = 3
DEFAULT_PORT: int = 8000
MAX_BODY_BYTES: int = 1024 * 1024  # a study request is a few hundred bytes; 1 MiB is generous
IDEMPOTENCY_HOURS: float = 24.0  # how long a retried POST with the same Idempotency-Key is recognised
# A round makes bounded calls (Ray answers within 60 s each, MLflow retries for 30 s): five minutes
# without one ending means the dispatcher thread is stuck.
DISPATCHER_STALL_S: float = 300.0
# Where jobs find teachers, checkpoints and outcomes: "local", the paths of this host (embedded mode, or a
# cluster whose hosts share the data folder); "mlflow", MLflow (a cluster without a shared folder: teachers in
# its model registry, worker.teacher_store; a job's checkpoint and outcome in its run, worker.run_store).
STORAGE_MODES: tuple[str, ...] = get_args(Storage)


def _env(name: str) -> AliasChoices:
    """Read a field from exactly this environment variable (no prefix), or by field name in code."""
    return AliasChoices(name)


class Settings(BaseSettings):
    """All server settings. Construct with keyword arguments (field names) in tests."""

    model_config = SettingsConfigDict(env_prefix="LIFTPLACE_", populate_by_name=True, extra="ignore")

    data_dir: Path = Field(
        default=Path("liftplace-data"),
        description="database (SQLite), job outputs, MLflow store and artifacts (embedded mode)",
    )
    database_url: str | None = Field(default=None, validation_alias=_env("DATABASE_URL"),
                                     description="SQLAlchemy URL; default sqlite:///<data_dir>/liftplace.db")
    teachers_dir: Path | None = Field(default=None, description="root of registrable teacher folders")
    datasets_dir: Path | None = Field(default=None, description="root of registrable image-folder datasets")
    ray_address: str | None = Field(default=None, validation_alias=_env("RAY_ADDRESS"),
                                    description="Ray cluster to join; unset: start a local Ray")
    mlflow_tracking_uri: str | None = Field(default=None, validation_alias=_env("MLFLOW_TRACKING_URI"),
                                            description="default sqlite:///<data_dir>/mlflow.db")
    mlflow_ui_url: str = Field(default="http://127.0.0.1:5000", validation_alias=_env("MLFLOW_UI_URL"))
    mlflow_experiment: str = "liftplace"
    storage: Storage = Field(default="local", description="where jobs find teachers: 'local', by this host's paths "
                             "(embedded mode, or hosts that share the data folder); 'mlflow', as versions of MLflow's "
                             "model registry (every ready teacher is registered there; each worker downloads it once "
                             "per node into LIFTPLACE_CACHE_DIR, digest checked), and a job's checkpoint and outcome "
                             "also in its MLflow run (a retry on another node resumes from them)")
    gpus_per_job: float = Field(default=1.0, ge=0, description="GPUs per job when the cluster has GPUs (0.25: "
                                "four tiny students share one GPU)")
    cpus_per_job: float = Field(default=1.0, gt=0, description="CPUs per job")
    max_steps: int = Field(default=defaults.MAX_STEPS, ge=1, le=defaults.MAX_STEPS)
    max_jobs_per_study: int = Field(default=MAX_JOBS_PER_STUDY, ge=1)
    max_attempts: int = Field(default=MAX_ATTEMPTS, ge=1, description="dispatches of a job whose worker died")
    max_in_flight: int = Field(default=256, ge=1, description="jobs handed to the executor at once")
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    poll_interval: float = Field(default=1.0, gt=0, description="seconds between dispatcher rounds")
    cancel_grace: float = Field(default=30.0, ge=0, description="seconds a running job gets to stop by itself "
                                "after a cancel before Ray kills it")
    dispatch: bool = Field(default=True, description="run the dispatcher thread with the app")
    dispatcher_stall_s: float = Field(default=DISPATCHER_STALL_S, gt=0, description="seconds without an ended "
                                      "dispatcher round after which GET /api/ready reports it stuck (503)")
    migrate: bool = Field(default=True, description="apply Alembic migrations at start-up")
    api_token: SecretStr | None = Field(default=None, description="the token every write (and, with auth_reads, "
                                        "every read) must present, as 'Authorization: Bearer <token>' or the login "
                                        "cookie; unset or empty: no authentication")
    auth_reads: bool = Field(default=False, description="reads need the token too (only when api_token is set)")
    max_body_bytes: int = Field(default=MAX_BODY_BYTES, ge=1, description="largest request body in bytes (413 "
                                "over it)")
    idempotency_hours: float = Field(default=IDEMPOTENCY_HOURS, gt=0, description="hours an Idempotency-Key is "
                                     "remembered")

    @field_validator("api_token")
    @classmethod
    def _empty_token_is_none(cls, v: SecretStr | None) -> SecretStr | None:
        # LIFTPLACE_API_TOKEN= (empty, e.g. compose's ${VAR:-}) means "not set", not "the empty token".
        return v if v is not None and v.get_secret_value().strip() else None

    @field_validator("gpus_per_job")
    @classmethod
    def _gpu_request(cls, v: float) -> float:
        if v > 1 and v != int(v):  # Ray's rule for fractional resources
            raise ValueError(f"a fraction of a GPU must be at most 1 (several jobs share one GPU), got {v}")
        return v

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        # Absolute paths: the worker may run in another directory (a Ray worker process).
        self.data_dir = self.data_dir.expanduser().resolve()
        self.teachers_dir = (self.teachers_dir or self.data_dir / "teachers").expanduser().resolve()
        self.datasets_dir = (self.datasets_dir or self.data_dir / "datasets").expanduser().resolve()
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.data_dir / 'liftplace.db'}"
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"sqlite:///{self.data_dir / 'mlflow.db'}"
        self.mlflow_ui_url = self.mlflow_ui_url.rstrip("/")
        return self

    @property
    def jobs_dir(self) -> Path:
        """Job outputs: <data_dir>/jobs/<id> (stable across retries, so a retry resumes)."""
        return self.data_dir / "jobs"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        """Artifact root of the experiment the server creates (local stores only)."""
        return self.data_dir / "mlartifacts"

    @property
    def teachers_in_registry(self) -> bool:
        """Cluster mode: teachers are MLflow model versions and jobs get references to them, not paths."""
        return self.storage == "mlflow"

    @property
    def embedded_ray(self) -> bool:
        return not self.ray_address

    @property
    def writes_need_token(self) -> bool:
        return self.api_token is not None

    @property
    def reads_need_token(self) -> bool:
        return self.api_token is not None and self.auth_reads

    def teacher_folder(self, name: str) -> Path:
        """The teacher sub-folder `name` of LIFTPLACE_TEACHERS_DIR (never outside it)."""
        assert self.teachers_dir is not None
        return resolve_under(self.teachers_dir, name)

    def dataset_folder(self, name: str) -> Path:
        """The dataset sub-folder `name` of LIFTPLACE_DATASETS_DIR (never outside it)."""
        assert self.datasets_dir is not None
        return resolve_under(self.datasets_dir, name)


def resolve_under(root: Path, name: str) -> Path:
    """`root/name` resolved; ValueError when `name` is not a plain sub-folder name of `root`.

    Names are validated by the API already; this is the second line, and also refuses a
    symlink inside the root that points outside it.
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
        raise ValueError(f"{name!r} is not a folder name")
    base = root.resolve()
    path = (base / name).resolve()
    if not path.is_relative_to(base) or path == base:
        raise ValueError(f"{name!r} leads outside {base}")
    return path
