"""Study presets: every request body they make is one the service accepts, and the plans hold together."""

from __future__ import annotations

import ast
import statistics
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
    teachers = [TEACHER.validate_python(body) for body in preset.teacher_requests()]
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
        n = len(study.teachers) * len(study.methods) * len(study.seeds)
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
    for name in ("quick", "stability"):
        p = STUDY_PRESETS[name]
        assert not p.needs_gpu and p.dataset == "digits" and p.student_ratio == 0.9 and len(p.seeds) == 5
        assert [v.methods for v in p.variants] == [STABILITY_METHODS] and p.jobs == 45
        largest, *smaller = p.teachers
        assert largest.source == "preset" and len(smaller) >= 2
        assert all(t.source == "pruned" and t.base == largest.name for t in smaller)  # as in the paper
    assert STUDY_PRESETS["quick"].label.startswith("quick run") and "not a reproduction" in STUDY_PRESETS["quick"].label
    # the quick preset really is shorter, everywhere
    q, s = STUDY_PRESETS["quick"], STUDY_PRESETS["stability"]
    for key in ("steps", "fid_samples", "sample_steps"):
        assert q.options[key] < s.options[key], key
    assert all(tq.train["steps"] < ts.train["steps"] for tq, ts in zip(q.teachers, s.teachers, strict=True))
    # the teacher names of different presets never collide on one server, except a shared teacher
    assert not {t.name for t in q.teachers} & {t.name for t in s.teachers}


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
    assert [dict(v.options) for v in STUDY_PRESETS["ablation-group-size"].variants] == [
        {"group_size": k} for k in (4, 16, 64)]
    assert [v.options["coarse"] for v in STUDY_PRESETS["ablation-coarse"].variants] == list(defaults.COARSE_DISTANCES)
    assert [v.options["curriculum"] for v in STUDY_PRESETS["ablation-curriculum"].variants] == [True, False]
    for name in ("ablation-group-size", "ablation-coarse", "ablation-curriculum"):
        assert all(v.methods == (PAPER_METHOD,) for v in STUDY_PRESETS[name].variants)


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


# --- the results page generator (scripts/results_report.py) ---------------------------------------


def _report_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "results_report.py"
    spec = importlib.util.spec_from_file_location("results_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_report_rewrites_only_its_own_section(tmp_path: Path) -> None:
    report = _report_module()
    page = tmp_path / "results.md"
    page.write_text("# Results\n\nprose before\n\n<!-- report:a:begin -->\nold\n<!-- report:a:end -->\n\nprose after\n")
    report.replace_section(page, "a", "new table")
    report.replace_section(page, "b", "appended")
    report.replace_section(page, "a", "newer table")  # idempotent: one block per section
    text = page.read_text()
    assert text.count("<!-- report:a:begin -->") == 1 and "newer table" in text and "old" not in text
    assert text.index("prose before") < text.index("newer table") < text.index("prose after") < text.index("appended")


def test_the_report_renders_presets_and_convergence_curves(tmp_path: Path) -> None:
    report = _report_module()
    text = report.presets_report(["ablation-group-size"], "presets-ablations")
    for body in STUDY_PRESETS["ablation-group-size"].study_requests("ablation-group-size"):
        assert f"`{body['name']}`" in text and f"group_size {body['group_size']}" in text
    assert "liftplace study run ablation-group-size" in text and "--section presets-ablations" in text
    csv_file = tmp_path / "convergence.csv"
    csv_file.write_text("kind,name,step,fid_digits,elapsed_s,step_ms\nstudent,outkd,200,90.5,10,100\n"
                        "student,lift+place+featkd,200,80.25,20,120\nstudent,outkd,400,70.0,30,110\n")
    table = report.convergence_report(csv_file, tmp_path / "figures" / "convergence.png")
    assert "| step | outkd | lift+place+featkd |" in table
    assert "| 200 | 90.5 | 80.25 |" in table and "| 400 | 70.0 | – |" in table
    assert "outkd 110, lift+place+featkd 120" in table  # the last step time of each curve


class _FakeReportApi:
    """What ablation_report reads from the service, for the three studies of ablation-group-size."""

    FIDS = {"k4": [60.0, 70.0, 65.0, 55.0, 50.0], "k16": [40.0, 45.0, 50.0, 55.0, 60.0],
            "k64": [90.0, 120.0, 110.0, 100.0, 95.0]}

    def __init__(self) -> None:
        self.studies = {}
        for i, suffix in enumerate(self.FIDS, start=1):
            name = f"ablation-group-size-{suffix}"
            self.studies[name] = {
                "id": i, "name": name, "jobs": 5, "status_counts": {"succeeded": 5}, "mlflow_run_id": f"run{i}",
                "student_ratio": 0.9, "seeds": [0, 1, 2, 3, 4], "teachers": ["t"], "dataset": "faces",
                "options": {"steps": 800, "group_size": int(suffix[1:]), "resolution": 8, "fid_samples": 1000},
            }

    def study(self, name: str) -> dict:
        return self.studies[name]

    def jobs(self, study_id: int) -> list[dict]:
        return [{"started_at": "2026-11-24T06:00:00", "finished_at": f"2026-11-24T06:{10 * study_id}:00"}] * 5

    def get(self, path: str) -> object:
        if path == "/api/teachers":
            return [{"name": "t", "parameters": 1_000_000, "source": "preset", "preset": "digits-s", "job_id": None}]
        study_id = int(path.split("/")[3])
        suffix = next(s for s in self.studies.values() if s["id"] == study_id)["name"].rsplit("-", 1)[1]
        fids = self.FIDS[suffix]
        return {"metric": "fid_digits", "teachers": ["t"], "methods": ["lift+place+featkd"], "cells": [{
            "teacher": "t", "method": "lift+place+featkd", "mean": statistics.mean(fids), "std": statistics.stdev(fids),
            "collapses": sum(f > 100 for f in fids),
            "tries": [{"seed": s, "status": "succeeded", "fid": f} for s, f in enumerate(fids)]}]}


def test_the_report_puts_an_ablations_variants_in_one_table(tmp_path: Path) -> None:
    from liftplace.stats import welch_t_test

    report = _report_module()
    figure = tmp_path / "figures" / "k.png"
    text = report.ablation_report(_FakeReportApi(), "ablation-group-size", figure, "k")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if "| lift+place+featkd |" in line}
    assert set(rows) == {"k4", "**k16** (reference)", "k64"}  # K = 16 is the default, so the reference
    assert "| 60.00 | 70.00 | 65.00 | 55.00 | 50.00 | 60.00 | 7.91 | 0 |" in rows["k4"]
    assert rows["k64"].split(" | ")[-3] == "2"  # two seeds above the collapse threshold
    expected = welch_t_test(_FakeReportApi.FIDS["k64"], _FakeReportApi.FIDS["k16"])
    assert rows["k64"].rstrip(" |").endswith(f"| {expected.statistic:.2f} | {expected.pvalue:.4f}")
    assert rows["**k16** (reference)"].rstrip(" |").endswith("| – | –")  # no test against itself
    assert "varied: group_size" in text and "30 min of wall time for the 15 distillation jobs" in text
    assert figure.is_file() and "--ablation ablation-group-size --section k" in text


def test_the_convergence_summary_reads_the_last_quarter_and_the_lowest_point() -> None:
    report = _report_module()
    curve = ((400, 80.0), (800, 40.0), (1200, 30.0), (1400, 24.0), (1600, 25.0))
    rows = [{"name": "outkd", "step": str(s), "fid_digits": str(f)} for s, f in curve]
    (line,) = report.convergence_summary(rows, budget=1200)
    assert line == ("- outkd: -4.2% lower over its last 200 steps (1400 → 1600), 16.7% over its last quarter "
                    "(1200 → 1600); lowest FID 24.00 at step 1400; 16.7% lower at step 1600 than at the budget (1200).")
    short = [r for r in rows if r["step"] in ("1400", "1600")]  # one interval: no separate quarter
    assert report.convergence_summary(short, budget=None) == [
        "- outkd: -4.2% lower over its last 200 steps (1400 → 1600); lowest FID 24.00 at step 1400."]


def test_the_report_reads_a_grid_as_an_earlier_commit_published_it(tmp_path: Path) -> None:
    import subprocess

    report = _report_module()
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    page.write_text(
        "<!-- report:s:begin -->\n**Teachers**\n\n| t | x |\n\n**The Table-6 grid** (fid):\n\n*Teacher big (1.1M):*\n\n"
        "| method | seed 0 | seed 1 | mean | std | collapses |\n|---|---:|---:|---:|---:|---:|\n"
        "| lift | 10.00 | 20.00 | 15.00 | 7.07 | 0 |\n| outkd | 5.00 | failed | 5.00 | – | 1 |\n"
        "| lift+place+featkd | 1.50 | 2.50 | **2.00** | 0.71 | 0 |\n\n"
        "**Welch's t-tests**\n\n| big | lift | 15.00 | 2.00 | -1 | 1.0 | 0.5 |\n<!-- report:s:end -->\n")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "page"], check=True)
    page.write_text("changed since")
    with pytest.raises(SystemExit, match="--previous: cannot read docs/results.md at 'no-such-rev'"):
        report.previous_cells("no-such-rev", "s", results=page, repo=tmp_path)
    with pytest.raises(SystemExit, match="section 'other' is not in"):
        report.previous_cells("HEAD", "other", results=page, repo=tmp_path)
    cells = report.previous_cells("HEAD", "s", results=page, repo=tmp_path)
    # the bold best mean is read, a failed seed drops its row, the Welch table is not a grid
    assert cells == {("big", "lift"): [10.0, 20.0], ("big", "lift+place+featkd"): [1.5, 2.5]}
    table = {"cells": [{"teacher": "big", "method": "lift", "mean": 40.0, "std": 5.0,
                        "tries": [{"seed": 0, "status": "succeeded", "fid": 36.5},
                                  {"seed": 1, "status": "succeeded", "fid": 43.5}]}]}
    rows = [r for r in report.previous_comparison(table, "HEAD", "s", page, tmp_path) if r.startswith("| big")]
    assert len(rows) == 1 and rows[0].startswith("| big | lift | 40.00 ± 5.00 | 15.00 ± 7.07 |")
    assert rows[0].endswith("| no |")  # 25 apart: more than either std


def test_the_convergence_report_shows_the_fid_noise_of_the_last_checkpoint(tmp_path: Path) -> None:
    report = _report_module()
    (tmp_path / "convergence.csv").write_text("kind,name,step,fid_digits,elapsed_s,step_ms\n"
                                              "student,outkd,200,20.0,10,100\nstudent,outkd,400,19.5,20,100\n")
    (tmp_path / "fid_noise.csv").write_text("name,step,seed,fid_digits\noutkd,400,0,19.5\noutkd,400,1,21.5\n"
                                            "outkd,400,2,17.5\n")
    text = report.convergence_report(tmp_path / "convergence.csv", tmp_path / "figures" / "c.png")
    assert "| outkd | 400 | 3 | 19.50 ± 2.00 | 17.50 – 21.50 | 0.50 lower (200 → 400) |" in text


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
    named = re.findall(r"liftplace study run ([\w-]+)", page) + re.findall(r"--(?:ablation|preset) ([\w-]+)", page)
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
