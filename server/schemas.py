"""Request and response bodies of the REST API (pydantic v2).

Validation lives here, so that a bad request is refused before any code runs and the
OpenAPI document states the same rules. Checks that need the database or the runtime
limits (does the teacher exist? is `steps` under LIFTPLACE_MAX_STEPS?) are done by the
services (`server.services.checks`) and answered in the same 422 shape (see `invalid`).

Method names, pruning importances, distances, the checkpoint interval and their defaults come
from `liftplace.methods` / `liftplace.defaults`; the job's step count and FID sample count, which
the library leaves to its callers, from the job-spec contract (`worker.spec.JobSpec`).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    create_model,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from liftplace import defaults
from liftplace.job_status import JOB_STATUSES
from liftplace.methods import AXIS_OPTIONS, FEATKD_LAYER_SETS, FEATKD_LAYERS, METHOD_NAMES, PAPER_METHOD
from liftplace.presets import PRESET_NAMES
from liftplace.stats import COLLAPSE_FID

DEFAULT_STEPS: int = defaults.STEPS
DEFAULT_FID_SAMPLES: int = defaults.FID_SAMPLES
DEFAULT_SEEDS: int = defaults.SEEDS_PER_CELL
EMBEDDED_DATASETS: tuple[str, ...] = defaults.EMBEDDED_DATASETS
MAX_NAME_LENGTH: int = 128
MAX_SEEDS: int = 10_000

MethodName = Literal[METHOD_NAMES]  # type: ignore[valid-type]
PresetName = Literal[PRESET_NAMES]  # type: ignore[valid-type]
JobStatus = Literal[JOB_STATUSES]  # type: ignore[valid-type]

# --- names ---------------------------------------------------------------------------------------

_NAME_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-]*")


def check_name(value: str) -> str:
    """A registered name (teacher, dataset, a sub-folder of a configured root): never a path.

    Refused: empty, surrounding spaces, path separators, '..', a leading '.', and any
    character but letters, digits, '.', '_', '-' and '+'.
    """
    if value != value.strip():
        raise PydanticCustomError("name", "must not start or end with spaces")
    if not value:
        raise PydanticCustomError("name", "must not be empty")
    if "/" in value or "\\" in value:
        raise PydanticCustomError("name", "must be a name, not a path: no path separators ('/' or '\\')")
    if ".." in value:
        raise PydanticCustomError("name", "must not contain '..'")
    if len(value) > MAX_NAME_LENGTH:
        raise PydanticCustomError("name", f"must be at most {MAX_NAME_LENGTH} characters")
    if not _NAME_CHARS.fullmatch(value):
        raise PydanticCustomError(
            "name", "may only hold letters, digits, '.', '_', '-' and '+', and must start with a letter or digit"
        )
    return value


def _check_study_name(value: str) -> str:
    if value != value.strip():
        raise PydanticCustomError("name", "must not start or end with spaces")
    if not value:
        raise PydanticCustomError("name", "must not be empty")
    if any(ord(c) < 32 for c in value):
        raise PydanticCustomError("name", "must not hold control characters")
    return value


Name = Annotated[str, AfterValidator(check_name)]
StudyName = Annotated[str, Field(max_length=200), AfterValidator(_check_study_name)]


def _seed_count(value: Any) -> Any:
    """`seeds` may be a count n: seeds 0..n-1."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_SEEDS:
            raise PydanticCustomError("seeds", "a seed count must be between 1 and {max}", {"max": MAX_SEEDS})
        return list(range(value))
    return value


Seeds = Annotated[
    list[Annotated[int, Field(ge=0, le=2**31 - 1)]],
    BeforeValidator(_seed_count),
    WithJsonSchema({"anyOf": [{"type": "array", "items": {"type": "integer", "minimum": 0}},
                              {"type": "integer", "minimum": 1, "maximum": MAX_SEEDS}]}),
]
Ratio = Annotated[float, Field(gt=0, lt=1, description="strictly between 0 and 1")]


def invalid(field: str | tuple[str | int, ...], msg: str, value: Any = None) -> RequestValidationError:
    """A 422 in FastAPI's own shape for a check done outside the schema (database, runtime limits)."""
    loc = ("body", field) if isinstance(field, str) else ("body", *field)
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": value}])


def _unique(values: list[Any]) -> list[Any]:
    seen: set[Any] = set()
    dupes = [v for v in values if v in seen or seen.add(v)]
    if dupes:
        raise PydanticCustomError("unique", "must not repeat {dupes}", {"dupes": ", ".join(map(str, dupes))})
    return values


# --- requests ------------------------------------------------------------------------------------


class _Strict(BaseModel):
    # Unknown fields are refused: a misspelt option must not silently fall back to its default.
    # NaN and infinities too (Python's JSON parser reads NaN, Infinity and 1e400 as floats).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TrainOptions(_Strict):
    """Options shared by every training job (distillation and teacher training)."""

    steps: int = Field(DEFAULT_STEPS, ge=1, le=defaults.MAX_STEPS,
                       description="training steps (at most LIFTPLACE_MAX_STEPS)")
    dataset: Name = Field(defaults.DATASET, description="a registered dataset name")
    resolution: int | None = Field(None, ge=8, le=1024, description="image size; default: the dataset's")
    batch_size: int = Field(defaults.BATCH_SIZE, ge=1, le=4096)
    lr: float = Field(defaults.LEARNING_RATE, gt=0, le=1)
    lr_schedule: Literal[defaults.LR_SCHEDULES] = Field(  # type: ignore[valid-type]
        defaults.LR_SCHEDULE, description="constant, or cosine decay from lr to 0 over the steps")
    checkpoint_every: int = Field(defaults.CHECKPOINT_EVERY, ge=0, description="steps between checkpoints (a retry "
                                  "resumes from the last one)")
    # The FID at the end of the job (teachers are scored too: the dashboard shows their FID).
    fid_samples: int = Field(DEFAULT_FID_SAMPLES, ge=2, le=100_000, description="samples generated for the FID")
    sample_steps: int = Field(defaults.DDIM_STEPS, ge=1, le=defaults.NUM_TRAIN_TIMESTEPS, description="DDIM steps")
    log_every: int | None = Field(None, ge=1, le=defaults.MAX_STEPS, description="steps per point of the MLflow "
                                  f"history (the mean of those steps); default: steps / {defaults.MLFLOW_MAX_POINTS}")


class DistillOptions(TrainOptions):
    """Options of a distillation job, beyond teacher, ratio, method and seed."""

    importance: Literal[defaults.PRUNING_IMPORTANCES] = defaults.PRUNING_IMPORTANCE  # type: ignore[valid-type]
    group_size: int | None = Field(defaults.GROUP_SIZE, ge=1, description="PLACE group size K (must divide H*W); "
                                   "null: one group (LIFT)")
    coarse: Literal[defaults.COARSE_DISTANCES] = defaults.COARSE_DISTANCE  # type: ignore[valid-type]
    curriculum: bool = defaults.CURRICULUM
    ablation: Literal[tuple(a for a in defaults.ABLATIONS if a)] | None = None  # type: ignore[valid-type]
    reduction: Literal[defaults.REDUCTIONS] = defaults.REDUCTION  # type: ignore[valid-type]
    lambda_kd: float | None = Field(None, ge=0, description="default: the method's")
    lambda_feat: float | None = Field(None, ge=0, description="default: the method's")
    featkd_layers: Literal[FEATKD_LAYER_SETS] = Field(  # type: ignore[valid-type]
        FEATKD_LAYERS, description="FeatKD's hook set: sublayers (the LIFT and PLACE code's) or blocks")


# Job options stored as such in `Job.options` (the other request fields have their own columns).
OPTION_FIELDS: tuple[str, ...] = tuple(f for f in DistillOptions.model_fields if f not in ("steps", "dataset"))
TRAIN_OPTION_FIELDS: tuple[str, ...] = tuple(f for f in TrainOptions.model_fields if f not in ("steps", "dataset"))


# Distil one fixed student from several teachers (the paper's capacity study prunes its student
# from the largest teacher): the student is pruned from this teacher instead of the distilling one.
StudentTeacher = Annotated[Name | None, Field(
    description="prune the student from this registered teacher instead of the one it distils from "
                "(same architecture family; default: the distilling teacher)")]


class JobCreate(DistillOptions):
    """POST /api/jobs: one distillation run."""

    teacher: Name = Field(description="a registered teacher name")
    student_teacher: StudentTeacher = None
    student_ratio: Ratio = defaults.STUDENT_RATIO
    method: MethodName = PAPER_METHOD
    seed: int = Field(defaults.SEED, ge=0, le=2**31 - 1)


def _axis_field(name: str, info: FieldInfo) -> tuple[Any, Any]:
    """The axis of option `name`: a list of its values, each checked by the option's own type and bounds."""
    value = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return (list[value] | None,  # type: ignore[valid-type]
            Field(None, min_length=1, description=f"values of `{name}` to sweep"))


def _unique_axis(values: list[Any] | None) -> list[Any] | None:
    return None if values is None else _unique(values)


# The options a study may sweep and the type of their values: each option's own field (type, bounds), so an
# axis value is refused exactly as the option itself would be, naming `axes.<option>.<index>`.
_AXIS_SOURCES: dict[str, FieldInfo] = {**DistillOptions.model_fields, "student_ratio": FieldInfo.from_annotation(Ratio)}
StudyAxes = create_model(  # type: ignore[call-overload]
    "StudyAxes", __base__=_Strict, __doc__="A study's axes: option -> the values it takes, crossed with teachers x "
    "methods x seeds like a grid search (a method that ignores an option is not multiplied by its axis).",
    __validators__={"_unique_values": field_validator(*AXIS_OPTIONS)(_unique_axis)},
    **{name: _axis_field(name, _AXIS_SOURCES[name]) for name in AXIS_OPTIONS})


class StudyCreate(DistillOptions):
    """POST /api/studies: one distillation job per teacher x method x seed (x axis values)."""

    name: StudyName
    teachers: list[Name] = Field(min_length=1)
    methods: list[MethodName] = Field(min_length=1)
    student_teacher: StudentTeacher = None
    seeds: Seeds = Field(default_factory=lambda: list(range(DEFAULT_SEEDS)),
                         description=f"a list of seeds, or a count n for seeds 0..n-1 (default {DEFAULT_SEEDS})")
    student_ratio: Ratio = defaults.STUDENT_RATIO
    collapse_fid: float | None = Field(
        None, gt=0, description="FID above which a run counts as a collapse (a diverged run always does); default: "
        f"its FID family's ({', '.join(f'{k} {v:g}' for k, v in COLLAPSE_FID.items())})")
    axes: StudyAxes | None = Field(  # type: ignore[valid-type]
        None, description="options to sweep: option -> list of values (" + ", ".join(AXIS_OPTIONS) + "); an axis "
        "overrides the option's single value")

    _unique_lists = field_validator("teachers", "methods")(_unique)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise PydanticCustomError("seeds", "must hold at least one seed")
        return _unique(v)

    def axis_values(self) -> dict[str, list[Any]]:
        """The study's axes, option -> values, in AXIS_OPTIONS order ({} for a study without axes)."""
        if self.axes is None:
            return {}
        return {k: v for k in AXIS_OPTIONS if (v := getattr(self.axes, k)) is not None}


class LocalTeacherCreate(_Strict):
    """Register a diffusers folder under the teachers root (LIFTPLACE_TEACHERS_DIR) by name."""

    source: Literal["local"]
    name: Name
    folder: Name | None = Field(None, description="sub-folder of the teachers root; default: the name")


class ShippedTeacherCreate(_Strict):
    """Register a teacher shipped with liftplace (`liftplace.shipped`), its file digests checked."""

    source: Literal["shipped"]
    name: Name
    shipped: Name | None = Field(None, description="a teacher shipped with liftplace (liftplace/shipped/: "
                                 "its manifest.json lists them); default: the name")


class PresetTeacherCreate(TrainOptions):
    """Queue the training of a fresh teacher of a preset architecture."""

    source: Literal["preset"]
    name: Name
    preset: PresetName
    seed: int = Field(defaults.SEED, ge=0, le=2**31 - 1)


class PrunedTeacherCreate(TrainOptions):
    """Queue a pruned-and-retrained copy of another teacher (how the paper made its smaller teachers)."""

    source: Literal["pruned"]
    name: Name
    base_teacher: Name
    prune_ratio: Ratio
    importance: Literal[defaults.PRUNING_IMPORTANCES] = defaults.PRUNING_IMPORTANCE  # type: ignore[valid-type]
    seed: int = Field(defaults.SEED, ge=0, le=2**31 - 1)


TeacherCreate = Annotated[LocalTeacherCreate | PresetTeacherCreate | PrunedTeacherCreate | ShippedTeacherCreate,
                          Field(discriminator="source")]


class DatasetCreate(_Strict):
    """Register an image folder under the datasets root (LIFTPLACE_DATASETS_DIR) by name."""

    name: Name
    folder: Name | None = Field(None, description="sub-folder of the datasets root; default: the name")
    resolution: int = Field(defaults.IMAGE_FOLDER_RESOLUTION, ge=8, le=1024)
    description: str = Field("", max_length=2000)


# --- responses -----------------------------------------------------------------------------------


class Progress(BaseModel):
    step: int | None
    total: int | None
    fraction: float | None
    updated_at: dt.datetime | None


class JobRead(BaseModel):
    id: int
    kind: Literal["distill", "teacher"]
    status: JobStatus
    teacher: str | None
    student_teacher: str | None = Field(None, description="distill jobs: the teacher the student was pruned from, "
                                        "when not `teacher`")
    output_teacher: str | None = Field(description="teacher jobs: the teacher being trained")
    dataset: str
    study_id: int | None
    method: str | None
    seed: int
    student_ratio: float | None
    steps: int
    options: dict[str, Any]
    attempts: int
    max_attempts: int
    cancel_requested: bool
    waiting_for: str | None = Field(description="a queued job waiting for its teacher's training")
    progress: Progress
    metrics: dict[str, Any]
    reason: str
    diverged_step: int | None
    fid: float | None
    fid_metric: str | None
    parameters: int | None
    resumed_from_step: int | None
    environment: dict[str, str] | None = Field(None, description="where the job's last attempt computed: "
                                               "cpu (model name), threads, device, gpu, machine and the python, "
                                               "torch, diffusers and torch_pruning versions; null before it ended "
                                               "(or on a service from before it was recorded)")
    mlflow_experiment_id: str | None
    mlflow_run_id: str | None
    mlflow_url: str | None
    created_at: dt.datetime
    dispatched_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class LogsRead(BaseModel):
    job_id: int
    offset: int
    lines: list[str]
    next_offset: int


class TeacherRead(BaseModel):
    id: int
    name: str
    source: str
    status: Literal["ready", "training", "failed"]
    folder: str | None
    preset: str | None
    base_teacher: str | None
    prune_ratio: float | None
    dataset: str | None
    parameters: int | None
    job_id: int | None = Field(description="the training job (preset and pruned teachers)")
    model_uri: str | None = Field(None, description="cluster mode (LIFTPLACE_STORAGE=mlflow): the teacher's version "
                                  "in MLflow's model registry, models:/<name>/<version>; null until registered")
    model_digest: str | None = Field(None, description="sha256 digest of the registered version's files")
    reason: str
    created_at: dt.datetime


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: str
    folder: str | None
    resolution: int | None
    description: str
    created_at: dt.datetime


class CellRead(BaseModel):
    """One (teacher, method, axis values) cell: live while seeds run; `complete` once every seed has ended."""

    teacher: str
    method: str
    axes: dict[str, Any] = Field(default_factory=dict, description="the values of the study's axes this cell's "
                                 "method uses (an axis it ignores is absent: the cell stands beside every value)")
    key: str = Field("", description="the cell's name: teacher/method, then its axis values as JSON")
    tries: list[dict[str, Any]]
    n: int
    mean: float | None
    std: float | None
    collapses: int
    status_counts: dict[str, int]
    complete: bool
    fid_metric: str | None


class StudyRead(BaseModel):
    id: int
    name: str
    teachers: list[str]
    methods: list[str]
    axes: dict[str, list[Any]] = Field(default_factory=dict, description="option -> the values the study sweeps")
    seeds: list[int]
    student_ratio: float
    dataset: str
    options: dict[str, Any]
    collapse_fid: float | None = Field(description="the study's own collapse threshold, if it set one")
    collapse_threshold: float = Field(description="the FID above which its runs count as collapses")
    status: Literal["queued", "running", "ended"]
    status_counts: dict[str, int]
    jobs: int
    job_ids: list[int]
    cells_complete: int
    cells_total: int
    mlflow_experiment_id: str | None
    mlflow_run_id: str | None
    mlflow_synced: bool = Field(description="the parent run holds the summary of every complete cell; false while "
                                "the dispatcher has still to log one (it does so within a round or two, or once "
                                "MLflow is back) or while the study has no parent run")
    mlflow_url: str | None
    created_at: dt.datetime


class TableRead(BaseModel):
    """The Table-6 grid of a study (rows = methods, one column group per teacher)."""

    study_id: int
    metric: str | None
    teachers: list[str]
    methods: list[str]
    axes: dict[str, list[Any]] = Field(default_factory=dict, description="the study's axes (cells per axis value)")
    cells: list[CellRead]
    best: dict[str, list[str]] = Field(description="per teacher, the method(s) with the lowest mean")
    collapse_threshold: float = Field(description="FID above which a run counts as a collapse (diverged runs always)")



# --- dashboards -------------------------------------------------------------------------------------


class MetricsRead(BaseModel):
    """A job's metric history (metrics.jsonl), downsampled to at most `max_points` steps."""

    job_id: int
    steps: list[int]
    series: dict[str, list[float | None]] = Field(description="metric name -> value at each step (null: not "
                                                  "logged at that step)")
    total_points: int = Field(description="steps in the history before downsampling")


class MethodRead(BaseModel):
    name: str
    kd: str = Field(description="output loss: none, outkd, lift or lift+place")
    featkd: bool
    lambda_kd: float
    lambda_feat: float
    description: str
    paper: bool = Field(description="the paper's full method")


class WelchRead(BaseModel):
    """Welch's t-test between two methods' FIDs (succeeded runs) under one teacher; null numbers with
    a `reason` when a side has fewer than two finite FIDs."""

    teacher: str
    method_a: str
    method_b: str
    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    statistic: float | None
    df: float | None
    pvalue: float | None
    reason: str | None
    key_a: str | None = Field(None, description="against a baseline: the cell compared (A)")
    key_b: str | None = Field(None, description="against a baseline: the baseline cell (B)")


class TeacherSize(BaseModel):
    name: str
    parameters: int | None
    label: str


class RunRead(BaseModel):
    """One try of a study, for the dashboard's cells and plots."""

    job_id: int
    teacher: str
    method: str
    seed: int
    status: str
    fid: float | None
    collapse: bool = Field(description="diverged, or FID over the collapse threshold (liftplace.stats)")
    fraction: float | None = Field(description="training progress 0..1 while it runs")
    mlflow_run_id: str | None
    mlflow_url: str | None


class MlflowCellLink(BaseModel):
    """MLflow's compare view of one (teacher, method) cell's runs (its seeds)."""

    teacher: str
    method: str
    key: str = Field("", description="the cell (CellRead.key)")
    runs: int
    url: str | None
    search_filter: str = Field(description="the same runs in MLflow's search syntax")


class PanelRead(BaseModel):
    """One combination of a study's axis values: a Table-6 grid of the cells that stand in it."""

    axes: dict[str, Any]
    label: str = Field(description='e.g. "coarse = l1, lr = 0.001"')
    cells: list[str] = Field(description="the keys of its cells (a cell whose method ignores an axis stands in every "
                             "panel of that axis)")
    best: dict[str, list[str]] = Field(description="per teacher, the key(s) of the lowest mean in the panel")


class HeatmapRead(BaseModel):
    """Mean FID of one (teacher, method) over the values of two axes: rows the first, columns the second."""

    teacher: str
    method: str
    row_axis: str
    col_axis: str
    rows: list[Any]
    cols: list[Any]
    cells: list[list[str]] = Field(description="rows x cols of cell keys")


class DashboardRead(BaseModel):
    """Everything the study dashboard shows, in one consistent snapshot."""

    study: StudyRead
    table: TableRead
    runs: list[RunRead]
    teachers: list[TeacherSize]
    collapse_threshold: float
    welch: list[WelchRead]
    mlflow_compare_url: str | None = Field(description="MLflow's compare view of the study's distillation runs")
    mlflow_search_filter: str = Field(description="the same runs in MLflow's search syntax (no teacher runs)")
    mlflow_cells: list[MlflowCellLink] = Field(description="a compare view per cell")
    panels: list[PanelRead] = Field(default_factory=list, description="with axes: a grid per combination of axis "
                                    "values")
    heatmaps: list[HeatmapRead] = Field(default_factory=list, description="with two axes: a heatmap per teacher and "
                                        "method")
    baseline: str | None = Field(None, description="the baseline cell's key (the `baseline` query parameter; with "
                                 "axes, the first cell by default)")
    versus_baseline: list[WelchRead] = Field(default_factory=list, description="Welch's t-test of every other cell "
                                             "against the baseline")


class PaperCell(BaseModel):
    teacher: str
    parameters: float
    teacher_fid: float | None
    method: str
    tries: list[float]
    mean: float
    std: float


class PaperTableRead(BaseModel):
    """The paper's Table 6 as printed (liftplace/reference/paper_table6.csv)."""

    metric: str
    caption: str
    teachers: list[str]
    methods: list[str]
    cells: list[PaperCell]
    best: dict[str, list[str]]
