"""The API's request schemas and the web forms built from them read liftplace.defaults / methods: a default
restated with another value here, in the API or in a form, fails."""

from __future__ import annotations

from liftplace import defaults
from liftplace.methods import FEATKD_LAYERS, PAPER_METHOD
from liftplace.studies import SEEDS
from server.schemas import DistillOptions, JobCreate, PresetTeacherCreate, StudyCreate, TrainOptions
from web.forms import specs
from worker.spec import JobSpec

API_DEFAULTS = {
    "steps": defaults.STEPS,
    "dataset": defaults.DATASET,
    "batch_size": defaults.BATCH_SIZE,
    "lr": defaults.LEARNING_RATE,
    "lr_schedule": defaults.LR_SCHEDULE,
    "checkpoint_every": defaults.CHECKPOINT_EVERY,
    "fid_samples": defaults.FID_SAMPLES,
    "sample_steps": defaults.DDIM_STEPS,
    "importance": defaults.PRUNING_IMPORTANCE,
    "group_size": defaults.GROUP_SIZE,
    "coarse": defaults.COARSE_DISTANCE,
    "curriculum": defaults.CURRICULUM,
    "reduction": defaults.REDUCTION,
    "featkd_layers": FEATKD_LAYERS,
}


def _defaults(model) -> dict[str, object]:
    return {name: info.get_default(call_default_factory=True) for name, info in model.model_fields.items()}


def test_the_api_schemas_take_the_library_defaults() -> None:
    distill = _defaults(DistillOptions)
    assert {k: distill[k] for k in API_DEFAULTS} == API_DEFAULTS
    train = {k: v for k, v in _defaults(TrainOptions).items() if k in API_DEFAULTS}
    assert len(train) >= 8 and train == {k: API_DEFAULTS[k] for k in train}
    job = _defaults(JobCreate)
    assert (job["method"], job["student_ratio"], job["seed"]) == (PAPER_METHOD, defaults.STUDENT_RATIO, defaults.SEED)
    study = _defaults(StudyCreate)
    assert study["seeds"] == list(SEEDS) == list(range(defaults.SEEDS_PER_CELL))
    assert study["student_ratio"] == defaults.STUDENT_RATIO and study["collapse_fid"] is None
    assert _defaults(PresetTeacherCreate)["seed"] == defaults.SEED
    assert set(DistillOptions.model_fields["ablation"].annotation.__args__[0].__args__) == {
        a for a in defaults.ABLATIONS if a}


def test_the_api_and_the_job_spec_agree_on_every_shared_default() -> None:
    spec = {name: f.default for name, f in JobSpec.__dataclass_fields__.items()}
    api = _defaults(JobCreate)
    shared = sorted(set(spec) & set(api) - {"dataset", "resolution", "lambda_kd", "lambda_feat", "ablation"})
    assert shared and {k: api[k] for k in shared} == {k: spec[k] for k in shared}


def test_the_web_forms_show_the_api_defaults() -> None:
    form = specs(JobCreate, list(API_DEFAULTS) + ["method", "seed", "student_ratio"])
    assert {k: form[k].default for k in API_DEFAULTS} == API_DEFAULTS
    assert (form["method"].default, form["seed"].default, form["student_ratio"].default) == (
        PAPER_METHOD, defaults.SEED, defaults.STUDENT_RATIO)
