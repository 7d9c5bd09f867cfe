"""The results page generator: `liftplace.report` (data, compute, render, page, sections) and its CLI.

The service is a fake here (`FakeSource`: the records the REST API would return); the arithmetic is
checked against `liftplace.stats`, the Markdown against literal expected text.
"""

from __future__ import annotations

import ast
import json
import statistics
import subprocess
from pathlib import Path
from typing import Any

import pytest

from liftplace.environment import cpu_model
from liftplace.methods import PAPER_METHOD
from liftplace.report import compute, curves, page, render, sections
from liftplace.report.compute import RealVsReal
from liftplace.report.data import ReportError
from liftplace.stats import welch_t_test
from liftplace.studies import STUDY_PRESETS
from tests.scripts_kit import load_script

ROOT = Path(__file__).resolve().parents[1]
OURS = PAPER_METHOD


def _report_cli():
    """scripts/results_report.py as a module (it is a script, not a package)."""
    return load_script("scripts/results_report.py", "results_report")


def _ctx(page_path: Path = ROOT / "docs" / "results.md", repo: Path = ROOT) -> sections.ReportContext:
    def reference(resolution: int, samples: int) -> RealVsReal:  # the digits' real-vs-real FIDs, without torch
        return RealVsReal(resolution, 4.0, 898, 0.5, samples)

    return sections.ReportContext(page=page_path, repo=repo, job_defaults=_report_cli().job_defaults(),
                                  reference=reference)


def _cell(teacher: str, method: str, tries: list[float | str], seeds: list[int] | None = None) -> dict[str, Any]:
    """A cell as the service's table has it; a try is an FID (succeeded) or a status ("failed", "running", …)."""
    seeds = seeds if seeds is not None else list(range(len(tries)))
    listed = [{"seed": s, "status": "succeeded", "fid": float(t)} if not isinstance(t, str) else
              {"seed": s, "status": t, "fid": None} for s, t in zip(seeds, tries, strict=True)]
    ok = [t["fid"] for t in listed if t["status"] == "succeeded"]
    return {"teacher": teacher, "method": method, "tries": listed, "n": len(ok),
            "mean": statistics.mean(ok) if ok else None, "std": statistics.stdev(ok) if len(ok) > 1 else None,
            "collapses": sum(f > 100 for f in ok) + sum(t["status"] == "diverged" for t in listed),
            "complete": all(t["status"] not in ("queued", "running") for t in listed)}


def _table(cells: list[dict[str, Any]], methods: list[str] | None = None) -> dict[str, Any]:
    teachers = list(dict.fromkeys(c["teacher"] for c in cells))
    methods = methods or list(dict.fromkeys(c["method"] for c in cells))
    best = {}
    for t in teachers:
        means = {c["method"]: c["mean"] for c in cells if c["teacher"] == t and c["mean"] is not None}
        best[t] = [min(means, key=means.__getitem__)] if means else []
    return {"metric": "fid_digits", "teachers": teachers, "methods": methods, "cells": cells, "best": best}


BIG = {"outkd": [20.0, 25.0, 30.0, 22.0, 28.0], "outkd+featkd": [15.0, 18.0, 21.0, 16.0, 20.0],
       OURS: [10.0, 11.0, 12.0, 10.5, 11.5]}  # ours: lowest mean and lowest std under the largest teacher
SMALL = {"outkd": [30.0, 31.0, 32.0, 33.0, 34.0], "outkd+featkd": [30.0, 35.0, 31.0, 36.0, 33.0],
         OURS: [40.0, 20.0, 60.0, 35.0, 45.0]}


def _stability_table(big: dict[str, list] = BIG) -> dict[str, Any]:
    return _table([_cell("big", m, f) for m, f in big.items()] + [_cell("small", m, f) for m, f in SMALL.items()])


PARAMS = {"big": 1_000_000, "small": 99_500}


class FakeSource:
    """The service's records, as `liftplace.report.data.ReportSource` returns them."""

    def __init__(self) -> None:
        self.studies: dict[str, dict[str, Any]] = {}
        self.tables: dict[int, dict[str, Any]] = {}
        self.job_lists: dict[int, list[dict[str, Any]]] = {}
        self.teacher_records = [
            {"name": "big", "parameters": PARAMS["big"], "source": "preset", "preset": "digits-s", "job_id": 900},
            {"name": "small", "parameters": PARAMS["small"], "source": "pruned", "prune_ratio": 0.7,
             "base_teacher": "big", "job_id": None}]

    def add(self, name: str, table: dict[str, Any], dataset: str = "digits", **options: Any) -> dict[str, Any]:
        sid = len(self.studies) + 1
        seeds = sorted({t["seed"] for c in table["cells"] for t in c["tries"]})
        jobs = [{"id": 100 * sid + i, "teacher": c["teacher"], "method": c["method"], "seed": t["seed"],
                 "status": t["status"], "fid": t["fid"], "started_at": "2026-11-24T06:00:00Z",
                 "finished_at": f"2026-11-24T06:{i % 60:02d}:00Z",
                 "metrics": {"student_parameters": 10_800, "duration_s": 100.0 + i}}
                for i, (c, t) in enumerate((c, t) for c in table["cells"] for t in c["tries"])]
        self.studies[name] = {
            "id": sid, "name": name, "jobs": len(jobs), "status_counts": {"succeeded": len(jobs)},
            "mlflow_experiment_id": "1", "mlflow_run_id": f"run{sid}", "student_ratio": 0.9, "seeds": seeds,
            "teachers": table["teachers"], "dataset": dataset,
            "options": {"steps": 800, "resolution": None, "fid_samples": 1000, "group_size": 16, **options}}
        self.tables[sid], self.job_lists[sid] = table, jobs
        return self.studies[name]

    def study(self, key: str) -> dict[str, Any]:
        found = next((s for s in self.studies.values() if key in (s["name"], str(s["id"]))), None)
        if found is None:
            raise ReportError(f"no study named {key!r}")
        return found

    def table(self, study_id: int) -> dict[str, Any]:
        return self.tables[study_id]

    def jobs(self, study_id: int) -> list[dict[str, Any]]:
        return self.job_lists[study_id]

    def teachers(self) -> list[dict[str, Any]]:
        return self.teacher_records

    def job(self, job_id: int) -> dict[str, Any]:
        return {"id": job_id, "fid": 6.0, "steps": 4000, "options": {"fid_samples": None, "sample_steps": 100}}


# --- compute: cells, Welch, the verdict ------------------------------------------------------------------


def test_one_lookup_for_a_cell_and_one_for_its_succeeded_fids() -> None:
    table = _table([_cell("big", "outkd", [3.0, "failed", 1.0, "running", "diverged"], seeds=[4, 3, 0, 1, 2])])
    cell = compute.find_cell(table, "big", "outkd")
    assert cell is table["cells"][0] and compute.find_cell(table, "big", OURS) is None
    assert compute.succeeded_by_seed(cell) == {4: 3.0, 0: 1.0}  # the table's order
    assert compute.succeeded_fids(cell) == [3.0, 1.0]
    assert compute.succeeded_fids(None) == [] and compute.succeeded_by_seed({"tries": []}) == {}


def test_welch_is_liftplace_stats_and_needs_two_seeds_a_side() -> None:
    w = compute.welch(BIG[OURS], BIG["outkd"])
    expected = welch_t_test(BIG[OURS], BIG["outkd"])
    assert (w.statistic, w.pvalue, w.df) == (expected.statistic, expected.pvalue, expected.df)
    assert w.statistic < 0  # ours first: lower mean, negative t
    assert compute.welch([1.0], [1.0, 2.0]) is None and compute.welch([1.0, 2.0], []) is None


def test_the_paper_direction_appears_when_ours_has_the_lower_mean_and_std_with_the_largest_teacher() -> None:
    table = _stability_table()
    rows = compute.compare_methods(table, ["big", "small"])
    assert [(r.teacher, r.other) for r in rows] == [("big", "outkd"), ("big", "outkd+featkd"),
                                                    ("small", "outkd"), ("small", "outkd+featkd")]
    v = compute.verdict(table, rows, PARAMS, ["small", "big"])
    assert v.teacher == "big" and [c.other for c in v.against] == ["outkd", "outkd+featkd"]
    for c in v.against:
        expected = welch_t_test(BIG[OURS], BIG[c.other])
        assert (c.t, c.p, c.df) == (expected.statistic, expected.pvalue, expected.df)
        assert c.mean_ours == statistics.mean(BIG[OURS]) and c.mean_other == statistics.mean(BIG[c.other])
        assert c.lower_mean and c.lower_std and c.p < compute.SIGNIFICANCE
    assert v.complete and v.direction and v.appears is True and v.significant
    assert (v.best, v.worst) == (OURS, "outkd")
    # the smaller teacher (ours worst there) does not enter the verdict
    assert not any(r.lower_mean for r in rows if r.teacher == "small")


def test_the_paper_direction_does_not_appear_or_waits_for_the_cells() -> None:
    noisy = {**BIG, OURS: [10.0, 30.0, 5.0, 25.0, 12.0]}  # lower mean, higher std than outkd+featkd
    table = _stability_table(noisy)
    v = compute.verdict(table, compute.compare_methods(table, ["big", "small"]), PARAMS, ["big", "small"])
    by_other = {c.other: c for c in v.against}
    assert by_other["outkd+featkd"].lower_mean and not by_other["outkd+featkd"].lower_std
    assert v.complete and v.direction is False and v.appears is False and not v.significant
    running = _stability_table({**BIG, "outkd": [20.0, 25.0, 30.0, 22.0, "running"]})
    v = compute.verdict(running, compute.compare_methods(running, ["big", "small"]), PARAMS, ["big", "small"])
    assert not v.complete and v.direction is True and v.appears is None  # no verdict before the cells end
    one_seed = _table([_cell("big", m, f[:1]) for m, f in BIG.items()])
    v = compute.verdict(one_seed, compute.compare_methods(one_seed, ["big"]), PARAMS, ["big"])
    assert all(c.p is None and c.t is None for c in v.against) and not v.significant


def test_what_the_paper_method_is_compared_with() -> None:
    assert compute.compared_methods(["outkd", "outkd+featkd", OURS]) == ["outkd", "outkd+featkd"]  # Table 6
    assert compute.compared_methods(["lift", "lift+place", OURS]) == ["lift", "lift+place"]  # an ablation
    assert compute.compared_methods(["outkd", "outkd+featkd"]) == []
    table = _table([_cell("big", m, f) for m, f in BIG.items() if m != OURS])
    assert compute.verdict(table, compute.compare_methods(table, ["big"]), PARAMS, ["big"]) is None


def test_the_same_cells_of_two_studies_seed_by_seed() -> None:
    here = _table([_cell("big", OURS, [1.0, 2.0, 3.0]), _cell("big", "outkd", [5.0, 6.0])])
    there = _table([_cell("big", OURS, [1.0, 2.5, 3.0, 9.0]), _cell("small", "outkd", [5.0, 6.0])])
    (row,) = compute.same_cells(here, there)  # outkd is under another teacher there
    expected = welch_t_test([1.0, 2.0, 3.0], [1.0, 2.5, 3.0, 9.0])
    assert (row.method, row.largest_difference, row.t, row.p) == (OURS, 0.5, expected.statistic, expected.pvalue)
    (repeat,) = compute.same_cells(here, _table([_cell("big", OURS, [1.0, 2.0, 3.0])]))
    assert repeat.largest_difference == 0 and repeat.t is None  # the same runs: no test
    assert compute.option_differences({"lr": 1, "k": 4}, {"lr": 1, "k": 16, "x": 0}) == {"k": (4, 16)}


def test_the_ablation_rows_against_the_reference_variant_and_their_collapses() -> None:
    (variant,) = STUDY_PRESETS["ablation-group-size"].variants  # one study; its axis values are the variants
    variants = [sections.AxisVariant(f"k{k}", {"group_size": k}) for k in variant.axes["group_size"]]
    reference = compute.reference_variant(variants, _report_cli().job_defaults())
    assert reference.suffix == "k16"  # the job spec's default group size
    fids = {"k4": [60.0, 70.0, 65.0], "k16": [40.0, 45.0, 50.0], "k64": [120.0, "diverged", "failed"]}
    tables = [_table([_cell("t", OURS, fids[v.suffix])]) for v in variants]
    rows = compute.ablation_rows(variants, tables, reference)
    assert [(r.variant, r.reference) for r in rows] == [("k4", False), ("k16", True), ("k64", False)]
    assert [r.collapses for r in rows] == [0, 0, 2]  # one FID above the threshold, one diverged run
    assert rows[1].t is None and rows[0].t == welch_t_test(fids["k4"], fids["k16"]).statistic
    assert rows[2].t is None  # one succeeded seed: no test


def test_where_the_jobs_computed_is_tallied_from_what_each_worker_reported() -> None:
    amd = {"cpu": "AMD EPYC", "torch": "2.14.1", "threads": "1"}
    jobs = [{"finished_at": "t", "environment": amd}, {"finished_at": "t", "environment": amd},
            {"finished_at": "t", "environment": {"cpu": "x86_64", "gpu": "NVIDIA H200", "torch": "2.14.1",
                                                 "threads": "16"}},
            {"finished_at": "t", "environment": None},  # a service from before the record
            {"finished_at": None, "environment": None}]  # still running: not counted
    assert compute.environments(jobs) == [("AMD EPYC, torch 2.14.1, 1 thread", 2),
                                          ("NVIDIA H200, torch 2.14.1, 16 threads", 1), ("not recorded", 1)]
    header = render.study_header({"name": "s", "id": 1, "mlflow_experiment_id": "1", "mlflow_run_id": "r", "jobs": 4,
                                  "status_counts": {"succeeded": 4}, "student_ratio": 0.9, "options": {}}, None,
                                 compute.environments(jobs[:2]))
    assert "Where the jobs computed (as each worker reported it): AMD EPYC, torch 2.14.1, 1 thread (2 jobs)." in header


def test_teacher_and_student_rows_fill_unset_options_with_the_job_defaults() -> None:
    defaults = _report_cli().job_defaults()
    rvr = RealVsReal(8, 4.0, 898, 0.5, 1000)
    row = compute.teacher_row("big", {"source": "preset", "parameters": 10}, {"fid": 6.0, "options": {
        "fid_samples": None}}, rvr, defaults)
    assert (row.fid_samples, row.sample_steps) == (defaults["fid_samples"], defaults["sample_steps"])
    assert row.fid_ratio == 1.5
    jobs = [{"teacher": "big", "status": s, "metrics": {"student_parameters": p, "duration_s": d}}
            for s, p, d in (("succeeded", 100, 10.0), ("succeeded", 300, 30.0), ("failed", 999, 99.0))]
    (students,) = compute.student_rows(["big"], jobs, {"big": 1000})
    assert (students.parameters, students.share_percent, students.median_job_s) == (200, 20.0, 20.0)


# --- render: Markdown ----------------------------------------------------------------------------------


def test_a_small_grid_renders_to_markdown() -> None:
    table = _table([_cell("big", "outkd", [12.5, "failed"]), _cell("big", OURS, [10.0, "running"], seeds=[0, 1])],
                   methods=["outkd", OURS])
    table["best"] = {"big": ["outkd"]}
    lines = render.grid(table, ["big"], [0, 1], {"big": 1_110_000}, "fid_digits", 100.0)
    assert lines[1:] == [
        "*Teacher big (1.11M):*\n",
        "| method | seed 0 | seed 1 | mean | std | collapses |",
        "|---|---:|---:|---:|---:|---:|",
        "| outkd | 12.50 | failed | **12.50** | – | 0 |",
        f"| {OURS} | 10.00 | … | 10.00 | – | 0 |",
        "",
        "(… : still queued or running.)"]
    assert "above 100, the service's threshold for fid_digits;" in lines[0]  # each feature space has its own
    empty = _table([_cell("big", "outkd", ["queued"])])
    assert render.grid(empty, ["big"], [0, 1], {}, "fid", 100.0)[4] == "| outkd | … |  | – | – |  |"  # nothing ended


def test_the_welch_table_and_the_verdict_render_to_markdown() -> None:
    table = _stability_table()
    rows = compute.compare_methods(table, ["big"])
    v = compute.verdict(table, rows, PARAMS, ["big"])
    w = welch_t_test(BIG[OURS], BIG["outkd"])
    assert render.welch_table(rows)[3] == (f"| big | outkd | 25.00 | 11.00 | {w.statistic:.2f} | {w.df:.1f} | "
                                           f"{w.pvalue:.4f} |")
    assert render.verdict_lines(v) == [
        "\n**Verdict (computed from the numbers above)** — with the largest teacher (big):",
        f"- against `outkd`: `{OURS}` has a lower mean FID (significant at p < 0.05, p = {w.pvalue:.4f}) and a lower "
        "seed std.",
        f"- against `outkd+featkd`: `{OURS}` has a lower mean FID (significant at p < 0.05, "
        f"p = {v.against[1].p:.4f}) and a lower seed std.",
        "- the paper's direction (lower mean **and** lower std than every other method with the largest teacher) "
        "**appears**; the mean differences are all significant at p < 0.05."]
    waiting = compute.Verdict("big", (), False, True, None, False, None, None)
    assert "**no verdict**" in render.verdict_lines(waiting)[-1]
    assert render.fmt(None) == render.fmt(float("nan")) == "–" and render.fmt(1.23456, 3) == "1.235"
    assert (render.fmt(-1e-9), render.fmt(-0.004), render.fmt(-0.006)) == ("0.00", "0.00", "-0.01")
    assert [render.fmt_difference(x) for x in (0.0, 2.4e-7, 0.0049, 0.005, 2.38, None)] == [
        "0.00", "2.4e-07", "4.9e-03", "0.01", "2.38", "–"]  # two machines with the same arithmetic: not 0.00
    assert (render.params(1_110_000), render.params(99_500), render.params(None)) == ("1.11M", "99.5K", "?")


def test_the_report_rewrites_only_its_own_section(tmp_path: Path) -> None:
    results = tmp_path / "results.md"
    results.write_text("# Results\n\nprose before\n\n<!-- report:a:begin -->\nold\n<!-- report:a:end -->\n\n"
                       "prose after\n")
    page.replace_section(results, "a", "new table")
    page.replace_section(results, "b", "appended")
    page.replace_section(results, "a", "newer table")  # idempotent: one block per section
    text = results.read_text()
    assert text.count("<!-- report:a:begin -->") == 1 and "newer table" in text and "old" not in text
    assert text.index("prose before") < text.index("newer table") < text.index("prose after") < text.index("appended")


# --- sections end to end --------------------------------------------------------------------------------------


def test_a_study_section_writes_its_verdict_and_its_numbers(tmp_path: Path) -> None:
    source = FakeSource()
    source.add("stab", _stability_table(), student_teacher="big")
    source.add("other", _table([_cell("big", OURS, BIG[OURS])]))
    figure = tmp_path / "figures" / "stab-capacity-gap.png"
    results = tmp_path / "results.md"
    req = sections.StudyRequest("stab", "stab", "stability", same_as="other")
    s = sections.study_section(source, req, figure, _ctx(results, tmp_path))
    text = s.markdown
    assert text.startswith(f"*{STUDY_PRESETS['stability'].label}*\n")
    assert "| big | preset `digits-s` | 1.00M | 4000 | 6.00 (1000 samples, 100 DDIM steps) | 1.50× |" in text
    assert "| small | pruned 0.7 of big, retrained | 99.5K | – | – (1000 samples, 100 DDIM steps) | –× |" in text
    assert "Real vs real (fid_digits, 8×8)" in text  # the digits' default resolution: the study left it unset
    assert "**appears**; the mean differences are all significant" in text
    assert f"| big | {OURS} | 11.00 ± 0.79 | 11.00 ± 0.79 | 0.0000 | – | – |" in text  # --same-as
    assert figure.is_file() and "](figures/stab-capacity-gap.png)" in text
    assert "--study stab --preset stability --section stab --same-as other`" in text
    numbers = json.loads(json.dumps(s.numbers, default=str))
    assert numbers["kind"] == "study" and numbers["cells"] == source.tables[1]["cells"]
    page.write_section(results, "stab", s.markdown, s.numbers)
    sidecar = json.loads((tmp_path / "results" / "stab.json").read_text())
    assert sidecar["verdict"]["appears"] is True and sidecar["verdict"]["best"] == OURS
    assert sidecar["welch"][0]["p"] == pytest.approx(welch_t_test(BIG[OURS], BIG["outkd"]).pvalue)
    assert sidecar["same_as"]["cells"][0]["largest_difference"] == 0


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def test_previous_reads_a_sections_numbers_as_an_earlier_commit_has_them(tmp_path: Path) -> None:
    results = tmp_path / "docs" / "results.md"
    results.parent.mkdir()
    earlier = [_cell("big", "lift", [10.0, 20.0]), _cell("big", "outkd", [5.0, "failed"]),
               _cell("big", OURS, [1.5, 2.5])]
    page.write_section(results, "s", "**The Table-6 grid** …", {"kind": "study", "cells": earlier})
    page.replace_section(results, "old", "a section generated before the sidecars")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "page")
    page.write_section(results, "s", "changed since", {"kind": "study", "cells": []})
    with pytest.raises(ReportError, match="--previous: cannot read docs/results.md at 'no-such-rev'"):
        page.previous_cells("no-such-rev", results, "s", tmp_path)
    with pytest.raises(ReportError, match="section 'other' is not in"):
        page.previous_cells("HEAD", results, "other", tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere.md"  # a page git cannot have at any commit
    with pytest.raises(ReportError, match="the results page must be a file of the checkout"):
        page.previous_cells("HEAD", outside, "s", tmp_path)
    with pytest.raises(ReportError, match="section 'old' at HEAD predates the JSON sidecars"):
        page.previous_cells("HEAD", results, "old", tmp_path)
    assert page.previous_cells("HEAD", results, "s", tmp_path) == earlier  # as committed, not as it is now
    lift = {**_cell("big", "lift", [36.5, 43.5]), "std": 5.0}
    (row,) = compute.previous_cells(_table([lift]), earlier)
    (line,) = [r for r in render.previous_lines("HEAD", "s", [row]) if r.startswith("| big")]
    assert line.startswith("| big | lift | 40.00 ± 5.00 | 15.00 ± 7.07 |")
    assert line.endswith("| 0, 1 | 15.00 | 26.50 | 4.10 | 0.0658 | no |")  # seed 0: 36.5 vs 10, more than 7.07
    # a re-run of some seeds (another machine): seed by seed against the earlier cell's std
    (row,) = compute.previous_cells(_table([_cell("big", "lift", [14.0], seeds=[1])]), earlier)
    assert (row.seeds_in_both, row.mean_there_same_seeds, row.largest_seed_difference) == ((1,), 20.0, 6.0)
    assert row.within_spread and row.t is None and row.std_here is None  # 6 < 7.07; one seed: no test
    (row,) = compute.previous_cells(_table([_cell("big", OURS, [9.0], seeds=[4])]), earlier)
    assert row.seeds_in_both == () and row.largest_seed_difference is None and not row.within_spread
    # end to end: the study's section compares with its own sidecar at HEAD
    source = FakeSource()
    source.add("s", _table([lift, _cell("big", "outkd", [5.0, 6.0])]), dataset="faces")
    text = sections.study_section(source, sections.StudyRequest("s", previous=("HEAD",)), tmp_path / "f.png",
                                  _ctx(results, tmp_path)).markdown
    assert line in text and "| big | outkd |" not in text.split("as published at commit `HEAD`")[1]
    # another section at HEAD (the same study published from another machine), and the command says so
    source.add("s-check", _table([lift]), dataset="faces")
    req = sections.StudyRequest("s-check", "s-check", previous=("HEAD",), previous_section=("s",))
    s2 = sections.study_section(source, req, tmp_path / "f.png", _ctx(results, tmp_path))
    assert line in s2.markdown and "--section s-check --previous HEAD --previous-section s" in s2.markdown
    assert render.previous_lines("HEAD", "s", []) == ["\nNo cell of this study is in section 's' at commit `HEAD`."]


def test_previous_takes_the_rows_of_an_ablation_whose_variant_ran_with_the_studys_options(tmp_path: Path) -> None:
    """The regime map's "lr = 0.01" OutKD row and "lr = 0.01, coarse = l1" row stand for a study at lr 0.01, L1."""
    results = tmp_path / "docs" / "results.md"
    results.parent.mkdir()

    def row(variant: str, method: str, fids: list[float]) -> dict:
        return {"variant": variant, "teacher": "big", "method": method, **_cell("big", method, fids)}

    rows = [row("lr = 0.001", "outkd", [30.0, 31.0]), row("lr = 0.01", "outkd", [12.0, 13.0]),
            row("lr = 0.01, coarse = l1", OURS, [16.0, 22.0]), row("lr = 0.01, coarse = l2", OURS, [11.0, 13.0])]
    page.write_section(results, "map", "**regime map** …", {"kind": "ablation", "rows": rows})
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "page")
    got = page.previous_cells("HEAD", results, "map", tmp_path, {"lr": 0.01, "coarse": "l1", "steps": 4000})
    assert [(c["method"], c["variant"], [t["fid"] for t in c["tries"]]) for c in got] == [
        ("outkd", "lr = 0.01", [12.0, 13.0]), (OURS, "lr = 0.01, coarse = l1", [16.0, 22.0])]
    with pytest.raises(ReportError, match="no variant of section 'map' at HEAD was run with this study's options"):
        page.previous_cells("HEAD", results, "map", tmp_path, {"lr": 0.1, "coarse": "l1"})
    with pytest.raises(ReportError, match="is a 'ablation' section, not a study's grid"):
        page.previous_cells("HEAD", results, "map", tmp_path)  # no options to match
    with pytest.raises(ReportError, match="two variants of big/lift that match"):
        _two_variants(tmp_path, results)
    # end to end: a study at those options against the ablation's rows
    source = FakeSource()
    source.add("s", _table([_cell("big", "outkd", [12.5, 14.0]), _cell("big", OURS, [15.0, 20.0])]), dataset="faces",
               lr=0.01, coarse="l1")
    text = sections.study_section(source, sections.StudyRequest("s", previous=("HEAD",), previous_section=("map",)),
                                  tmp_path / "f.png", _ctx(results, tmp_path)).markdown
    assert "an ablation whose variants *lr = 0.01*, *lr = 0.01, coarse = l1* ran with this study's options" in text
    assert "| big | outkd | 13.25 ± 1.06 | 12.50 ± 0.71 | 0, 1 | 12.50 | 1.00 |" in text


def test_previous_can_be_repeated_and_names_the_machines_on_both_sides(tmp_path: Path) -> None:
    """The same study published from two other machines: one comparison each, each saying where its run was
    reported (the sidecar's `machine`, or for an older sidecar the footer of its Markdown)."""
    results = tmp_path / "docs" / "results.md"
    results.parent.mkdir()
    intel = "x86_64 (Intel(R) Xeon(R) Processor) with 2 CPUs"
    page.write_section(results, "a", f"grid …\n\nGenerated by `x` from the service's data (report written on {intel}).",
                       {"kind": "study", "cells": [_cell("big", "outkd", [10.0, 12.0])]})
    page.write_section(results, "b", "grid, and no footer", {"kind": "study", "machine": "arm64 with 8 CPUs",
                                                              "cells": [_cell("big", "outkd", [11.0, 11.5])]})
    page.write_section(results, "c", "an old section without its machine", {"kind": "study", "cells": []})
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "page")
    assert page.previous_machine("HEAD", results, "a", tmp_path) == intel
    assert page.previous_machine("HEAD", results, "b", tmp_path) == "arm64 with 8 CPUs"
    assert page.previous_machine("HEAD", results, "c", tmp_path) is None
    source = FakeSource()
    source.add("s", _table([_cell("big", "outkd", [10.5, 12.0])]), dataset="faces")
    req = sections.StudyRequest("s", "s", previous=("HEAD", "HEAD"), previous_section=("a", "b"))
    s = sections.study_section(source, req, tmp_path / "f.png", _ctx(results, tmp_path))
    here = render.machine()
    assert f"Here: {here}; there: {intel}." in s.markdown and f"Here: {here}; there: arm64 with 8 CPUs." in s.markdown
    assert "--previous HEAD --previous-section a --previous HEAD --previous-section b`" in s.markdown
    assert "Against section `a` as published at commit `HEAD`" in s.markdown  # not "this section": another one
    assert "Not compared" not in s.markdown  # every cell with results here has two seeds there
    source.add("s2", _table([_cell("big", "outkd", [10.5, 12.0]), _cell("big", OURS, [9.0, 9.5]),
                             _cell("small", OURS, ["running"])]), dataset="faces")
    s2 = sections.study_section(source, sections.StudyRequest("s2", "s2", previous=("HEAD",), previous_section=("a",)),
                                tmp_path / "f.png", _ctx(results, tmp_path))
    # the running cell (nothing to compare yet) is not listed
    assert f"Not compared (no cell with two or more succeeded seeds there): big / {OURS}." in s2.markdown
    assert s.markdown.count("*within the seed spread*:") == 1 and "machine), in the columns above." in s.markdown
    assert [(c["section"], c["machine"]) for c in s.numbers["previous"]] == [("a", intel), ("b", "arm64 with 8 CPUs")]
    assert [c.largest_seed_difference for c in (s.numbers["previous"][i]["cells"][0] for i in (0, 1))] == [0.5, 0.5]
    assert s.numbers["machine"] == here
    with pytest.raises(ReportError, match="one --previous-section per --previous"):
        sections.StudyRequest("s", previous=("HEAD", "HEAD"), previous_section=("a",))


def _two_variants(repo: Path, results: Path) -> None:
    rows = [{"variant": v, "teacher": "big", "method": "lift", **_cell("big", "lift", [1.0, 2.0])}
            for v in ("lr = 0.01", "coarse = l1")]
    page.write_section(results, "two", "…", {"kind": "ablation", "rows": rows})
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "two")
    page.previous_cells("HEAD", results, "two", repo, {"lr": 0.01, "coarse": "l1"})


class _FakeAblationSource(FakeSource):
    """The one study of ablation-group-size: a cell per value of its axis group_size."""

    FIDS = {4: [60.0, 70.0, 65.0, 55.0, 50.0], 16: [40.0, 45.0, 50.0, 55.0, 60.0],
            64: [90.0, 120.0, 110.0, 100.0, 95.0]}

    def __init__(self) -> None:
        super().__init__()
        self.teacher_records = [{"name": "t", "parameters": 1_000_000, "source": "preset", "preset": "digits-s",
                                 "job_id": None}]
        cells = [{**_cell("t", OURS, fids), "axes": {"group_size": k}} for k, fids in self.FIDS.items()]
        table = {**_table(cells), "axes": {"group_size": list(self.FIDS)}}
        study = self.add("ablation-group-size", table, dataset="faces", resolution=8)
        for i, job in enumerate(self.job_lists[study["id"]]):
            job["finished_at"] = "2026-11-24T06:30:00Z" if i == 0 else None


def test_the_report_puts_an_ablations_variants_in_one_table(tmp_path: Path) -> None:
    figure = tmp_path / "figures" / "k.png"
    s = sections.ablation_section(_FakeAblationSource(), "ablation-group-size", figure, "k", _ctx())
    text = s.markdown
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if f"| {OURS} |" in line}
    k4, k16, k64 = "group_size = 4", "group_size = 16", "group_size = 64"
    assert set(rows) == {k4, f"**{k16}** (reference)", k64}  # K = 16 is the default, so the reference
    assert "| 60.00 | 70.00 | 65.00 | 55.00 | 50.00 | 60.00 | 7.91 | 0 |" in rows[k4]
    assert rows[k64].split(" | ")[-3] == "2"  # two seeds above the collapse threshold
    expected = welch_t_test(_FakeAblationSource.FIDS[64], _FakeAblationSource.FIDS[16])
    assert rows[k64].rstrip(" |").endswith(f"| {expected.statistic:.2f} | {expected.pvalue:.4f}")
    assert rows[f"**{k16}** (reference)"].rstrip(" |").endswith("| – | –")  # no test against itself
    assert "varied: group_size" in text and "30 min of wall time for the 15 distillation jobs" in text
    assert "| group_size in {4, 16, 64} | `ablation-group-size`" in text
    assert figure.is_file() and "--ablation ablation-group-size --section k" in text
    assert s.numbers["reference"] == k16 and [r.p for r in s.numbers["rows"]][2] == expected.pvalue


def test_the_report_renders_presets_and_convergence_curves(tmp_path: Path) -> None:
    text = sections.presets_section(["ablation-group-size"], "presets-ablations").markdown
    for body in STUDY_PRESETS["ablation-group-size"].study_requests("ablation-group-size"):
        assert f"`{body['name']}`" in text and "axis group_size: 4, 16, 64" in text
    assert "liftplace study run ablation-group-size" in text and "--section presets-ablations" in text
    csv_file = tmp_path / "convergence.csv"
    csv_file.write_text("kind,name,step,fid_digits,elapsed_s,step_ms\nstudent,outkd,200,90.5,10,100\n"
                        "student,lift+place+featkd,200,80.25,20,120\nstudent,outkd,400,70.0,30,110\n")
    table = sections.convergence_section(csv_file, tmp_path / "figures" / "convergence.png", _ctx()).markdown
    assert "| step | outkd | lift+place+featkd |" in table
    assert "| 200 | 90.5 | 80.25 |" in table and "| 400 | 70.0 | – |" in table
    assert "outkd 110, lift+place+featkd 120" in table  # the last step time of each curve


def test_the_convergence_summary_reads_the_last_quarter_and_the_lowest_point() -> None:
    curve = ((400, 80.0), (800, 40.0), (1200, 30.0), (1400, 24.0), (1600, 25.0))
    rows = [{"name": "outkd", "step": str(s), "fid_digits": str(f)} for s, f in curve]
    (line,) = map(render.summary_line, curves.curve_summaries(rows, budget=1200))
    assert line == ("- outkd: -4.2% lower over its last 200 steps (1400 → 1600), 16.7% over its last quarter "
                    "(1200 → 1600); lowest FID 24.00 at step 1400; 16.7% lower at step 1600 than at the budget (1200).")
    short = [r for r in rows if r["step"] in ("1400", "1600")]  # one interval: no separate quarter
    assert list(map(render.summary_line, curves.curve_summaries(short, budget=None))) == [
        "- outkd: -4.2% lower over its last 200 steps (1400 → 1600); lowest FID 24.00 at step 1400."]


def test_the_convergence_report_shows_the_fid_noise_of_the_last_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "convergence.csv").write_text("kind,name,step,fid_digits,elapsed_s,step_ms\n"
                                              "student,outkd,200,20.0,10,100\nstudent,outkd,400,19.5,20,100\n")
    (tmp_path / "fid_noise.csv").write_text("name,step,seed,fid_digits\noutkd,400,0,19.5\noutkd,400,1,21.5\n"
                                            "outkd,400,2,17.5\n")
    s = sections.convergence_section(tmp_path / "convergence.csv", tmp_path / "figures" / "c.png", _ctx())
    assert "| outkd | 400 | 3 | 19.50 ± 2.00 | 17.50 – 21.50 | 0.50 lower (200 → 400) |" in s.markdown
    assert s.numbers["noise"][0].std == 2.0 and s.numbers["curves"].step_ms == {"outkd": 100.0}


def test_the_convergence_section_checks_the_curve_against_the_studys_job(tmp_path: Path) -> None:
    source = FakeSource()
    source.add("stab", _table([_cell("big", "outkd", [19.5, 30.0])]), steps=400)
    (tmp_path / "convergence.csv").write_text("kind,name,step,fid_digits,elapsed_s,step_ms\n"
                                              "student,outkd,200,20.0,10,100\nstudent,outkd,400,19.5,20,100\n")
    s = sections.convergence_section(tmp_path / "convergence.csv", tmp_path / "c.png", _ctx(), 400, source, "stab")
    assert "- outkd: curve 19.5000 at step 400, study job 100 (seed 0, teacher big) 19.5000" in s.markdown
    with pytest.raises(ReportError, match="no such CSV"):
        sections.convergence_section(tmp_path / "missing.csv", tmp_path / "c.png", _ctx())


# --- the command line and the page's sidecars ------------------------------------------------------------------


def test_the_cli_writes_a_section_and_its_sidecar_and_a_fragment_drops_a_stale_one(tmp_path: Path) -> None:
    cli = _report_cli()
    results = tmp_path / "results.md"
    cli.main(["--presets", "quick", "--section", "p", "--results", str(results)])
    sidecar = json.loads((tmp_path / "results" / "p.json").read_text())
    assert sidecar["kind"] == "presets" and sidecar["section"] == "p" and sidecar["format"] == page.SIDECAR_FORMAT
    assert sidecar["presets"]["quick"]["jobs"] == STUDY_PRESETS["quick"].jobs
    assert "<!-- report:p:begin -->\n**`quick`**" in results.read_text()
    fragment = tmp_path / "gpu.md"
    fragment.write_text("| a | b |\n")
    cli.main(["--fragment", str(fragment), "--section", "p", "--results", str(results)])
    assert "<!-- report:p:begin -->\n| a | b |\n<!-- report:p:end -->" in results.read_text()
    assert not (tmp_path / "results" / "p.json").exists()  # a copied fragment has no numbers of its own


def test_the_cli_names_a_service_it_cannot_reach(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="results_report.py: .*cannot reach the service"):
        _report_cli().main(["--api", "http://127.0.0.1:9", "--study", "s", "--results", str(tmp_path / "r.md")])


def test_the_cli_refuses_a_previous_section_without_a_revision(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _report_cli().main(["--study", "s", "--previous-section", "t"])
    assert "--previous-section needs --previous" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _report_cli().main(["--study", "s", "--previous", "a", "--previous", "b", "--previous-section", "t"])
    assert "--previous-section: give one per --previous" in capsys.readouterr().err


def test_the_sidecars_on_the_page_belong_to_its_sections() -> None:
    results = ROOT / "docs" / "results.md"
    text = results.read_text()
    for sidecar in sorted((ROOT / "docs" / "results").glob("*.json")):
        numbers = json.loads(sidecar.read_text())
        assert numbers["section"] == sidecar.stem and f"<!-- report:{sidecar.stem}:begin -->" in text, sidecar
        assert numbers["command"] in text, sidecar  # the command the section says generated it


def test_the_report_modules_import_neither_torch_nor_the_service() -> None:
    for module in sorted((ROOT / "liftplace" / "report").glob("*.py")):
        tree = ast.parse(module.read_text())
        imported = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
        banned = {m for m in imported if m.split(".")[0] in ("torch", "server", "worker", "web", "matplotlib")}
        assert not banned, (module.name, banned)


class _FakeRegimeSource(FakeSource):
    """The one study of regime-map: outkd per lr (it has no coarse term), ours per lr and coarse distance."""

    OUTKD = {0.001: [30.0, 32.0, 31.0, 29.0, 33.0], 0.01: [12.0, 14.0, 13.0, 11.0, 15.0]}
    OURS_FIDS = {(0.001, "l1"): [20.0, 21.0, 20.5, 19.5, 21.5],  # lower mean and std than outkd: the direction
                 (0.001, "l2"): [28.0, 36.0, 25.0, 34.0, 30.0],  # lower mean, higher std, not significant
                 (0.01, "l1"): [18.0, 19.0, 20.0, 17.0, 21.0],  # significantly worse
                 (0.01, "l2"): [12.0, 14.0, 13.0, 11.0, "running"]}  # not complete: no verdict

    def __init__(self) -> None:
        super().__init__()
        self.teacher_records = [{"name": "t", "parameters": 1_000_000, "source": "preset", "preset": "digits-s",
                                 "job_id": None}]
        cells = [{**_cell("t", "outkd", f), "axes": {"lr": lr}} for lr, f in self.OUTKD.items()]
        cells += [{**_cell("t", OURS, f), "axes": {"lr": lr, "coarse": c}} for (lr, c), f in self.OURS_FIDS.items()]
        table = {**_table(cells, ["outkd", OURS]), "axes": {"lr": [0.001, 0.01], "coarse": ["l1", "l2"]}}
        self.add("regime-map", table, dataset="faces", resolution=8)


def test_the_regime_map_compares_the_paper_method_with_outkd_in_every_cell_of_the_axes(tmp_path: Path) -> None:
    s = sections.ablation_section(_FakeRegimeSource(), "regime-map", tmp_path / "r.png", "regime-map", _ctx())
    rows = {(r.variant, r.other): r for r in s.numbers["regime"]}
    assert set(rows) == {(f"lr = {lr}, coarse = {c}", "outkd") for lr in (0.001, 0.01) for c in ("l1", "l2")}
    src = _FakeRegimeSource
    for (lr, c), fids in src.OURS_FIDS.items():  # each against the outkd cell of its own lr, whatever its coarse
        row = rows[(f"lr = {lr}, coarse = {c}", "outkd")]
        ok = [f for f in fids if not isinstance(f, str)]
        expected = welch_t_test(ok, src.OUTKD[lr])
        assert (row.t, row.p, row.mean_other) == (expected.statistic, expected.pvalue, statistics.mean(src.OUTKD[lr]))
    best, noisy, worse, running = (rows[(f"lr = {v}", "outkd")] for v in
                                   ("0.001, coarse = l1", "0.001, coarse = l2", "0.01, coarse = l1",
                                    "0.01, coarse = l2"))
    assert best.complete and best.direction and best.wins and not best.loses
    assert noisy.complete and not noisy.direction and not noisy.wins and not noisy.loses
    assert worse.complete and not worse.direction and worse.loses and not worse.wins
    assert not running.complete and not (running.direction or running.wins or running.loses)
    text = s.markdown
    assert f"**Where does `{OURS}` win?**" in text and "(3 of 4 comparisons complete)" in text
    assert f"- the paper's direction appears in: lr = 0.001, coarse = l1 against `outkd` (p = {best.p:.4f});" in text
    assert f"- it has a significantly higher mean in: lr = 0.01, coarse = l1 against `outkd` (p = {worse.p:.4f})." \
        in text
    regime = text.split("**Where does")[1]
    line = next(x for x in regime.splitlines() if x.startswith("| lr = 0.01, coarse = l2 | t | outkd |"))
    assert line.endswith("| … | … |")
    # the ablation table lists OutKD's cell of a rate once, under its own axis value, not once per distance
    outkd = [(r.variant, r.reference) for r in s.numbers["rows"] if r.method == "outkd"]
    assert outkd == [("lr = 0.001", True), ("lr = 0.01", False)]
    fast = next(r for r in s.numbers["rows"] if r.method == "outkd" and not r.reference)
    assert fast.t == welch_t_test(src.OUTKD[0.01], src.OUTKD[0.001]).statistic
    assert "| **lr = 0.001** (reference) | t | outkd |" in text
    assert "reference variant `lr = 0.001, coarse = l1` (the first)" in text  # lr 1e-3 is not the default
    # --same-as matches cells by teacher and method: not with a study that has several of each
    source = _FakeRegimeSource()
    source.add("plain", _table([_cell("t", "outkd", [12.0, 13.0])]))
    with pytest.raises(ReportError, match="--same-as: study 'regime-map' sweeps lr, coarse"):
        sections.study_section(source, sections.StudyRequest("plain", same_as="regime-map"), tmp_path / "p.png",
                               _ctx())
    # an ablation of one method has no such table
    assert "Where does" not in sections.ablation_section(_FakeAblationSource(), "ablation-group-size",
                                                         tmp_path / "k.png", "k", _ctx()).markdown


def test_a_study_with_nothing_ended_yet_reports_without_a_plot(tmp_path: Path) -> None:
    """Mid-study (every job queued or running) the section is written; the plot, with nothing to show, is not,
    and a plot left by an earlier run of the section is removed rather than shown beside these numbers."""
    source = FakeSource()
    source.add("early", _table([_cell(t, m, ["running"]) for t in ("big", "small") for m in ("outkd", OURS)]))
    figure = tmp_path / "figures" / "early-capacity-gap.png"
    figure.parent.mkdir()
    figure.write_bytes(b"an earlier run's plot")
    s = sections.study_section(source, sections.StudyRequest("early"), figure, _ctx(tmp_path / "r.md", tmp_path))
    assert "No capacity-gap plot: no job of this study has succeeded yet." in s.markdown
    assert not figure.exists() and "](figures/early-capacity-gap.png)" not in s.markdown
    assert "| outkd | … |" in s.markdown


def test_teachers_of_one_recipe_get_the_spread_across_teachers_instead_of_a_capacity_plot(tmp_path: Path) -> None:
    source = FakeSource()
    source.teacher_records = [{"name": f"s{i}", "parameters": 1_000_000, "source": "preset", "preset": "digits-s",
                               "job_id": None} for i in range(3)]
    fids = {"s0": {"outkd": 10.0, "outkd+featkd": 11.0, OURS: 14.0},
            "s1": {"outkd": 15.0, "outkd+featkd": 12.0, OURS: 13.0},
            "s2": {"outkd": 11.0, "outkd+featkd": 9.0, OURS: 12.0}}
    source.add("seeds", _table([_cell(t, m, [f]) for t, row in fids.items() for m, f in row.items()]))
    figure = tmp_path / "seeds.png"
    s = sections.study_section(source, sections.StudyRequest("seeds"), figure, _ctx(tmp_path / "r.md", tmp_path))
    rows = {r.method: r for r in s.numbers["teacher_spread"]["rows"]}
    ours = [fids[t][OURS] for t in fids]
    assert rows[OURS].per_teacher == {t: fids[t][OURS] for t in fids}
    assert (rows[OURS].mean, rows[OURS].std) == (statistics.mean(ours), statistics.stdev(ours))
    assert f"| {OURS} | 14.00 | 13.00 | 12.00 | 13.00 | 1.00 |" in s.markdown
    orders = {o.other: (o.lower, o.compared) for o in s.numbers["teacher_spread"]["orders"]}
    assert orders == {"outkd": (1, 3), "outkd+featkd": (0, 3)}
    assert f"- `{OURS}` has the lower mean FID than `outkd` under 1 of 3 teachers." in s.markdown
    assert not figure.exists() and "capacity gap" not in s.markdown  # one size: no capacity plot
    assert not compute.same_recipe(["big", "small"], PARAMS) and not compute.same_recipe(["s0"], {"s0": 1})


def test_the_machine_line_names_the_processor(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC  7B13 64-Core Processor\n")
    assert cpu_model(str(info)) == "AMD EPYC 7B13 64-Core Processor"
    assert cpu_model(str(tmp_path / "none")) is None
    info.write_text("processor\t: 0\n")
    assert cpu_model(str(info)) is None


def test_the_teachers_table_says_whether_its_teachers_were_shipped_or_trained() -> None:
    from liftplace.report.compute import TeacherRow

    def row(name: str, source: str) -> TeacherRow:
        return TeacherRow(name, source, "digits-s", None, None, 1_112_801, 4000, 5.07, 1000, 100, 1.26)

    def heading(*sources: str) -> str:
        return render.teacher_table([row(f"t{i}", s) for i, s in enumerate(sources)], None, "fid_digits")[0]

    assert heading("shipped", "shipped").startswith("**Teachers** (shipped with liftplace: trained by its recipe")
    assert heading("preset", "pruned").startswith("**Teachers** (trained by the service;")
    assert heading("shipped", "preset").startswith("**Teachers** (trained by the service or shipped with liftplace;")
    assert "| t0 | shipped with liftplace (preset `digits-s`) | 1.11M | 4000 | 5.07" in "\n".join(
        render.teacher_table([row("t0", "shipped")], None, "fid_digits"))
