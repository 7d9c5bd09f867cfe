"""Study presets: every request body they make is one the service accepts, and the plans hold together."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from liftplace import defaults
from liftplace.methods import METHOD_NAMES, PAPER_METHOD
from liftplace.presets import PRESET_NAMES, TEACHER_PRESETS
from liftplace.studies import (
    ABLATION_OPTIONS,
    STABILITY_METHODS,
    STUDY_PRESET_NAMES,
    STUDY_PRESETS,
    TABLE8_METHODS,
    StudyPreset,
    StudyVariant,
    TeacherPlan,
    get_study_preset,
)
from server.schemas import DatasetCreate, StudyCreate, TeacherCreate
from server.settings import MAX_JOBS_PER_STUDY

EXPECTED = ("quick", "stability", "ablation-table8", "ablation-group-size", "ablation-coarse",
            "ablation-curriculum", "celeba64", "cifar10")  # the presets (others may be added: smoke)
TEACHER = TypeAdapter(TeacherCreate)


@pytest.fixture(params=STUDY_PRESET_NAMES)
def preset(request: pytest.FixtureRequest) -> StudyPreset:
    return STUDY_PRESETS[request.param]


def test_the_named_presets_exist_and_unknown_names_are_refused() -> None:
    assert set(EXPECTED) <= set(STUDY_PRESET_NAMES)
    assert get_study_preset("stability") is STUDY_PRESETS["stability"]
    with pytest.raises(ValueError, match="unknown study preset 'nope'.*quick, stability"):
        get_study_preset("nope")


def test_every_request_body_validates_against_the_api_schemas(preset: StudyPreset) -> None:
    from server.services.studies import method_combos

    for retrain in (False, True):  # the shipped teachers registered, or trained afresh (--retrain)
        teachers = [TEACHER.validate_python(body) for body in preset.teacher_requests(retrain=retrain)]
        assert [t.name for t in teachers] == [t.name for t in preset.teachers]
    studies = [StudyCreate.model_validate(body) for body in preset.study_requests("run1")]
    assert len(studies) == len(preset.variants)
    jobs = 0
    for study, variant in zip(studies, preset.variants, strict=True):
        assert study.name == ("run1" if not variant.suffix else f"run1-{variant.suffix}")
        assert study.dataset == preset.dataset and study.student_ratio == preset.student_ratio
        assert study.seeds == list(preset.seeds) and study.methods == list(variant.methods)
        assert set(study.teachers) <= {t.name for t in preset.teachers}
        for key, value in {**preset.options, **variant.options}.items():
            assert getattr(study, key) == value, key  # no option dropped or renamed on the way
        assert study.axis_values() == {k: list(v) for k, v in variant.axes.items()}
        # what the service creates: each method times the values of the axes it uses
        n = len(study.teachers) * sum(len(method_combos(study, m)) for m in study.methods) * len(study.seeds)
        assert n <= MAX_JOBS_PER_STUDY
        jobs += n
    assert jobs == preset.jobs
    body = preset.dataset_request()
    if preset.dataset_folder is None:
        assert body is None and preset.dataset == "digits"
    else:
        assert DatasetCreate.model_validate(body).resolution == preset.options["resolution"]


def test_images_fit_the_architectures_and_every_group_size_divides_them(preset: StudyPreset) -> None:
    size = preset.options["resolution"]
    for t in preset.teachers:
        if t.source == "preset":
            assert t.preset in PRESET_NAMES
            assert size % 2 ** (len(TEACHER_PRESETS[t.preset].block_out_channels) - 1) == 0
        if t.source != "local":
            assert t.train["resolution"] == size  # teachers train at the students' resolution
    for v in preset.variants:
        k = v.options.get("group_size", preset.options.get("group_size", defaults.GROUP_SIZE))
        assert (size * size) % k == 0, (v.suffix, k)


def test_the_embedded_studies_have_the_papers_shape() -> None:
    s = STUDY_PRESETS["stability"]
    assert not s.needs_gpu and s.dataset == "digits" and s.student_ratio == 0.9 and len(s.seeds) == 5
    assert [v.methods for v in s.variants] == [STABILITY_METHODS] and s.jobs == 45
    largest, *smaller = s.teachers
    assert largest.source == "preset" and len(smaller) >= 2
    assert all(t.source == "pruned" and t.base == largest.name for t in smaller)  # as in the paper


def test_the_quick_preset_is_a_shorter_study_of_the_shipped_teachers_with_a_larger_student() -> None:
    from liftplace.studies import QUICK_STUDENT_RATIO, STABILITY_TEACHER

    q, s = STUDY_PRESETS["quick"], STUDY_PRESETS["stability"]
    assert q.label.startswith("quick run") and "not a reproduction" in q.label
    assert f"ratio {QUICK_STUDENT_RATIO}" in q.label and f"ratio {QUICK_STUDENT_RATIO}" in q.description
    # the two largest stability teachers, shipped: nothing to train before the students
    assert q.teachers == s.teachers[:2] and q.ships_teachers
    assert all(body["source"] == "shipped" for body in q.teacher_requests())
    # one fixed student, pruned from the largest teacher, larger than the stability study's and smaller
    # than every teacher of the study (the smallest is pruned at 0.5)
    assert q.options["student_teacher"] == STABILITY_TEACHER
    assert s.student_ratio > q.student_ratio > max(t.prune_ratio or 0 for t in q.teachers)
    assert [v.methods for v in q.variants] == [STABILITY_METHODS] and len(q.seeds) == 5 and q.jobs == 30
    for key in ("steps", "fid_samples", "sample_steps"):  # shorter, everywhere
        assert q.options[key] < s.options[key], key
    assert q.options["lr_schedule"] == "cosine"


def test_the_ablations_vary_one_thing_on_the_largest_stability_teacher() -> None:
    largest = STUDY_PRESETS["stability"].teachers[0]
    for name in EXPECTED:
        if name.startswith("ablation-"):
            p = STUDY_PRESETS[name]
            assert p.teachers == (largest,) and p.options == ABLATION_OPTIONS
    # the ablations keep the budget they were measured with; the stability study differs only in its
    # budget (steps, lr, schedule) and in naming its (only) student's teacher, which for one teacher changes nothing
    stability = dict(STUDY_PRESETS["stability"].options)
    assert stability.pop("student_teacher") == largest.name
    assert stability.pop("lr_schedule") == "cosine"  # the ablations' default: constant
    assert set(stability) == set(ABLATION_OPTIONS) and "lr_schedule" not in ABLATION_OPTIONS
    assert {k for k in stability if stability[k] != ABLATION_OPTIONS[k]} <= {"steps", "lr", "checkpoint_every"}
    assert STUDY_PRESETS["ablation-table8"].variants[0].methods == TABLE8_METHODS
    # each ablation is one study that sweeps its option as an axis
    swept = {"ablation-group-size": {"group_size": (4, 16, 64)},
             "ablation-coarse": {"coarse": defaults.COARSE_DISTANCES},
             "ablation-curriculum": {"curriculum": (True, False)}}
    for name, axes in swept.items():
        (variant,) = STUDY_PRESETS[name].variants
        assert dict(variant.axes) == axes and not variant.options and variant.methods == (PAPER_METHOD,)
        (body,) = STUDY_PRESETS[name].study_requests(name)
        assert body["name"] == name and body["axes"] == {k: list(v) for k, v in axes.items()}
        assert STUDY_PRESETS[name].jobs == len(next(iter(axes.values()))) * len(STUDY_PRESETS[name].seeds)


def test_a_variant_axis_over_an_option_a_method_ignores_does_not_multiply_its_jobs() -> None:
    from liftplace.studies import StudyVariant

    variant = StudyVariant("", ("outkd", PAPER_METHOD), axes={"coarse": ("l1", "l2"), "lr": (0.1, 0.01)})
    assert variant.jobs_per_teacher_seed() == 2 + 4
    with pytest.raises(ValueError, match="axes.featkd_layers"):
        StudyVariant("", ("outkd",), axes={"featkd_layers": ("blocks",)})


def test_the_stability_teachers_are_shipped_and_retrain_trains_them_by_the_same_recipe() -> None:
    from liftplace.studies import STABILITY_PRUNED_TRAIN, STABILITY_TEACHER, STABILITY_TEACHER_TRAIN

    stability = STUDY_PRESETS["stability"]
    assert stability.ships_teachers
    assert stability.teacher_requests() == [{"source": "shipped", "name": t.name, "shipped": t.name}
                                            for t in stability.teachers]
    trained = stability.teacher_requests(retrain=True)
    assert trained[0] == {"source": "preset", "name": STABILITY_TEACHER, "dataset": "digits", "preset": "digits-s",
                          **STABILITY_TEACHER_TRAIN}
    assert [(b["source"], b["base_teacher"], b["prune_ratio"]) for b in trained[1:]] == [
        ("pruned", STABILITY_TEACHER, 0.5), ("pruned", STABILITY_TEACHER, 0.7)]
    assert all({k: b[k] for k in STABILITY_PRUNED_TRAIN} == dict(STABILITY_PRUNED_TRAIN) for b in trained[1:])
    for name in EXPECTED:  # the ablations use the shipped largest teacher too
        if name.startswith("ablation-"):
            assert STUDY_PRESETS[name].teacher_requests()[0]["source"] == "shipped"
    for name in ("smoke", "celeba64", "cifar10"):  # nothing shipped: retrain changes nothing
        p = STUDY_PRESETS[name]
        assert not p.ships_teachers and p.teacher_requests() == p.teacher_requests(retrain=True)
    with pytest.raises(ValueError, match="`shipped` names the artifact of a training recipe"):
        TeacherPlan("x", "local", folder="x", shipped="x")


def test_the_gpu_presets_follow_the_papers_protocol() -> None:
    for name, size in (("celeba64", 64), ("cifar10", 32)):
        p = STUDY_PRESETS[name]
        assert p.needs_gpu and p.teachers[0].source == "local" and p.dataset_folder
        o = p.options
        assert (o["resolution"], o["fid_samples"], o["sample_steps"], o["lr"]) == (
            size, 50_000, defaults.DDIM_STEPS, defaults.LEARNING_RATE)
        assert "lambda_kd" not in o and "coarse" not in o  # the contract's defaults at 90% pruning
    assert len(STUDY_PRESETS["celeba64"].teachers) == 4  # as the paper's Table 6


def test_bad_plans_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="needs base, prune_ratio"):
        TeacherPlan("x", "pruned")
    with pytest.raises(ValueError, match="source"):
        TeacherPlan("x", "hub", preset="tiny")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="methods"):
        StudyVariant("", ("outkd", "distill-harder"))
    base = STUDY_PRESETS["stability"]
    with pytest.raises(ValueError, match="must come before it"):
        StudyPreset(**{**base.__dict__, "teachers": tuple(reversed(base.teachers))})
    with pytest.raises(ValueError, match="not teachers of preset"):
        StudyPreset(**{**base.__dict__, "variants": (StudyVariant("", ("outkd",), teachers=("ghost",)),)})
    with pytest.raises(ValueError, match="suffixes"):
        StudyPreset(**{**base.__dict__, "variants": (StudyVariant("a", ("outkd",)), StudyVariant("a", ("lift",)))})
    assert set(METHOD_NAMES) >= set(STABILITY_METHODS) | set(TABLE8_METHODS)


def test_the_module_imports_only_light_modules() -> None:
    """The CLI and the server read the presets without paying for torch."""
    import liftplace.studies as studies

    tree = ast.parse(Path(studies.__file__).read_text())
    imported = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "collections.abc", "dataclasses", "types", "typing", "liftplace",
                        "liftplace.methods"}, imported


# --- the results page (its generator's own tests: tests/test_report.py) ---------------------------------


def test_the_results_page_is_consistent_with_the_code() -> None:
    """docs/results.md: paired report markers, figures that exist, commands that name real presets and options."""
    import re

    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "results.md").read_text()
    begins = re.findall(r"<!-- report:([\w-]+):begin -->", page)
    ends = re.findall(r"<!-- report:([\w-]+):end -->", page)
    assert begins == ends and len(set(begins)) == len(begins), (begins, ends)
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    for figure in figures:
        assert (root / "docs" / figure).is_file(), figure
    from liftplace.presets import TEACHER_PRESETS

    # `train-teacher --preset` names an architecture preset; every other --preset a study preset
    architectures = [m for line in page.splitlines() if "train-teacher" in line
                     for m in re.findall(r"--preset ([\w-]+)", line)]
    assert all(a in TEACHER_PRESETS for a in architectures), architectures
    study_lines = "\n".join(line for line in page.splitlines() if "train-teacher" not in line)
    named = (re.findall(r"liftplace study run ([\w-]+)", page)
             + re.findall(r"--(?:ablation|preset) ([\w-]+)", study_lines))
    for preset in named:
        assert preset in STUDY_PRESETS, preset
    commands = re.findall(r"results_report\.py((?:[^\n`]|\\\n)*)", page)
    assert len(begins) >= 10 and len(figures) >= 5 and len(named) >= 10 and len(commands) >= 10  # not vacuous
    for presets in re.findall(r"--presets((?: (?!--)[\w-]+)+)", page):
        assert all(p in STUDY_PRESETS for p in presets.split()), presets
    script = (root / "scripts" / "results_report.py").read_text()
    report_options = set(re.findall(r'add_argument\("(--[\w-]+)"', script))
    for command in commands:
        used = set(re.findall(r"(?<![\w-])(--[\w-]+)", command))
        assert used <= report_options, (used - report_options, command)
    # a generated section says which section it is
    for section, body in re.findall(r"<!-- report:([\w-]+):begin -->(.*?)<!-- report:\1:end -->", page, re.S):
        generated = re.search(r"--section ([\w-]+)", body)
        assert generated is None or generated.group(1) == section, (section, generated.group(1))


def test_a_preset_may_set_its_own_collapse_threshold() -> None:
    from liftplace.stats import collapse_threshold

    assert all(p.collapse_fid is None for p in STUDY_PRESETS.values())  # every preset: its FID family's default
    base = STUDY_PRESETS["smoke"]
    own = StudyPreset(**{**base.__dict__, "collapse_fid": 60})
    assert own.collapse_fid == 60.0 and collapse_threshold("fid_digits", own.collapse_fid) == 60.0
    for bad in (0, -1.0, float("nan"), float("inf"), True, "40"):
        with pytest.raises(ValueError, match="collapse_fid must be a finite number > 0"):
            StudyPreset(**{**base.__dict__, "collapse_fid": bad})
