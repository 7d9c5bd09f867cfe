"""The server's tables as typed SQLAlchemy 2 models: teachers, datasets, studies, jobs, logs, cells.

The database is the truth about jobs: the dispatcher reads queued jobs from it, and writes
back what the executor (Ray) reports. Cell aggregates (`StudyCell`) are derived data and can
always be recomputed from the jobs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# the job lifecycle (queued -> dispatched -> running -> a terminal status), defined with the API's client
from liftplace.job_status import JOB_STATUSES, TERMINAL_STATUSES

JOB_KINDS: tuple[str, ...] = ("distill", "teacher")
TEACHER_SOURCES: tuple[str, ...] = ("local", "preset", "pruned", "shipped")
TEACHER_STATUSES: tuple[str, ...] = ("ready", "training", "failed")
DATASET_KINDS: tuple[str, ...] = ("embedded", "folder")

# Stable constraint names, so Alembic migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite drops the zone; we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class Dataset(Base):
    """A training set by name: the embedded digits, or an image folder under the datasets root."""

    __tablename__ = "datasets"
    __table_args__ = (CheckConstraint(_in("kind", DATASET_KINDS), name="kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    folder: Mapped[str | None] = mapped_column(String(255))  # a sub-folder name of the datasets root
    resolution: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    @property
    def fid_features(self) -> str:
        """The FID features of its jobs: the digits classifier's on the embedded digits, Inception's on images."""
        return "digits" if self.kind == "embedded" else "inception"


class Teacher(Base):
    """A teacher by name: a local diffusers folder or one shipped with liftplace (ready at once), or trained by a
    teacher job."""

    __tablename__ = "teachers"
    __table_args__ = (
        CheckConstraint(_in("source", TEACHER_SOURCES), name="source"),
        CheckConstraint(_in("status", TEACHER_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    source: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    # local: a sub-folder name of the teachers root; shipped: the shipped teacher's name (liftplace.shipped)
    folder: Mapped[str | None] = mapped_column(String(255))
    model_dir: Mapped[str | None] = mapped_column(Text)  # trained: where the teacher job saved it
    # Cluster mode (LIFTPLACE_STORAGE=mlflow): the teacher's version in MLflow's model registry (registered model
    # = `name`) and the sha256 digest of its files (worker.teacher_store.folder_digest); None until registered.
    model_version: Mapped[str | None] = mapped_column(String(32))
    model_digest: Mapped[str | None] = mapped_column(String(64))
    preset: Mapped[str | None] = mapped_column(String(64))
    base_teacher_id: Mapped[int | None] = mapped_column(ForeignKey("teachers.id"))
    prune_ratio: Mapped[float | None] = mapped_column(Float)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    parameters: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    base_teacher: Mapped[Teacher | None] = relationship(remote_side=[id], foreign_keys=[base_teacher_id])
    dataset: Mapped[Dataset | None] = relationship()


class Study(Base):
    """Teachers x methods x seeds, one distillation job each; summarised into a Table-6 grid."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    teachers: Mapped[list[Any]] = mapped_column()  # teacher names, in the order asked for
    methods: Mapped[list[Any]] = mapped_column()
    seeds: Mapped[list[Any]] = mapped_column()
    student_ratio: Mapped[float] = mapped_column(Float)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)  # steps and the other job options
    # FID above which a run counts as a collapse; None: its FID family's (liftplace.stats.COLLAPSE_FID)
    collapse_fid: Mapped[float | None] = mapped_column(Float)
    # option -> the values it sweeps, crossed with teachers x methods x seeds ({}: no axes)
    axes: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'"))
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))  # the parent run of the seeds
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    dataset: Mapped[Dataset] = relationship()
    jobs: Mapped[list[Job]] = relationship(back_populates="study", order_by="Job.id")
    cells: Mapped[list[StudyCell]] = relationship(back_populates="study", order_by="StudyCell.id",
                                                  cascade="all, delete-orphan")


class Job(Base):
    """One unit of work: distill a student (kind "distill") or train a teacher (kind "teacher")."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("status", JOB_STATUSES), name="status"),
        CheckConstraint(_in("kind", JOB_KINDS), name="kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    # distill: the teacher to distill; teacher job: the base teacher of a pruned copy. The job
    # waits while this teacher is still training.
    teacher_id: Mapped[int | None] = mapped_column(ForeignKey("teachers.id"), index=True)
    # distill: prune the student from this teacher instead of `teacher` (the paper's capacity study
    # distils one fixed student, pruned from the largest teacher, from every teacher). The job waits
    # while it is still training.
    student_teacher_id: Mapped[int | None] = mapped_column(ForeignKey("teachers.id"), index=True)
    # teacher job: the teacher it trains (ready when the job succeeds).
    output_teacher_id: Mapped[int | None] = mapped_column(ForeignKey("teachers.id"), index=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    method: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer, default=0)
    student_ratio: Mapped[float | None] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the remaining JobSpec fields
    # dispatch bookkeeping
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # dispatches since created or retried
    claimed_by: Mapped[str | None] = mapped_column(String(64))  # the dispatcher instance running it
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    log_offset: Mapped[int] = mapped_column(Integer, default=0)  # log lines copied from the executor
    # progress (copied from the progress store while running)
    progress_step: Mapped[int | None] = mapped_column(Integer)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # outcome
    reason: Mapped[str] = mapped_column(Text, default="")
    diverged_step: Mapped[int | None] = mapped_column(Integer)
    fid: Mapped[float | None] = mapped_column(Float)
    fid_metric: Mapped[str | None] = mapped_column(String(32))
    parameters: Mapped[int | None] = mapped_column(Integer)
    resumed_from_step: Mapped[int | None] = mapped_column(Integer)
    # where the last attempt computed (liftplace.environment), as its worker reported it; None before 0010
    environment: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    model_dir: Mapped[str | None] = mapped_column(Text)
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    # times
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[dt.datetime | None] = mapped_column()
    started_at: Mapped[dt.datetime | None] = mapped_column()  # first progress report of this dispatch
    progress_at: Mapped[dt.datetime | None] = mapped_column()
    finished_at: Mapped[dt.datetime | None] = mapped_column()

    teacher: Mapped[Teacher | None] = relationship(foreign_keys=[teacher_id])
    output_teacher: Mapped[Teacher | None] = relationship(foreign_keys=[output_teacher_id])
    student_teacher: Mapped[Teacher | None] = relationship(foreign_keys=[student_teacher_id])
    dataset: Mapped[Dataset] = relationship()
    study: Mapped[Study | None] = relationship(back_populates="jobs")

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES


class JobLog(Base):
    """Log lines of a job: the worker's (copied from the progress store) and the dispatcher's."""

    __tablename__ = "job_logs"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    line: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class StudyCell(Base):
    """One (teacher, method, axis values) cell of a study once every seed has ended: FID mean, std, collapses."""

    __tablename__ = "study_cells"
    __table_args__ = (UniqueConstraint("study_id", "teacher", "method", "axes", name="uq_study_cells_cell"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    teacher: Mapped[str] = mapped_column(String(128))
    method: Mapped[str] = mapped_column(String(64))
    # The cell's axis values as canonical JSON text (aggregation.axes_text): the axes its method uses,
    # "{}" in a study without axes. Text, not JSON, so that it can be part of the unique key on every backend.
    axes: Mapped[str] = mapped_column(String(1000), default="{}", server_default=text("'{}'"))
    fid_metric: Mapped[str | None] = mapped_column(String(32))
    tries: Mapped[list[Any]] = mapped_column()  # [{seed, job_id, status, fid}] by seed
    n: Mapped[int] = mapped_column(Integer)  # runs in the mean (succeeded with a finite FID)
    mean: Mapped[float | None] = mapped_column(Float)
    std: Mapped[float | None] = mapped_column(Float)  # sample std (ddof = 1); None for n < 2
    collapses: Mapped[int] = mapped_column(Integer)
    status_counts: Mapped[dict[str, Any]] = mapped_column()
    logged_to_mlflow: Mapped[bool] = mapped_column(Boolean, default=False)
    computed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    study: Mapped[Study] = relationship(back_populates="cells")


class Revision(Base):
    """A shard of the revision of what a page of jobs shows: the sum of `value` over the shards.

    Only the database's triggers write it (migration 0007): every transaction that writes jobs,
    teachers, datasets or studies adds at least 1. A page cached with the revision it was read at
    is current while the sum is unchanged (server.services.jobs.list_jobs_encoded).
    """

    __tablename__ = "revisions"

    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(BigInteger)


class IdempotencyKey(Base):
    """The Idempotency-Key of a creating POST, with the request it came with and the answer it got.

    A retry with the same key and the same body gets the stored answer instead of a second
    resource. The unique (endpoint, key) index is what makes concurrent twins create one
    resource: the second insert waits for the first transaction and then fails. Rows older
    than LIFTPLACE_IDEMPOTENCY_HOURS are deleted.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("endpoint", "key", name="uq_idempotency_keys_endpoint_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(64))  # e.g. "POST /api/jobs"
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the validated body
    # Set in the transaction that created the resource (always set once committed).
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any] | None] = mapped_column()
    resource_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
