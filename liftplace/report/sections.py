"""Each kind of generated section end to end: fetch (`data`), compute, render; Markdown and its numbers.

A `Section` holds the Markdown that goes between the page's markers and the numbers that go to its JSON
sidecar (`page.write_section`). The kinds: a study (its grid, Welch's t-tests, the verdict; optionally
against another study and against an earlier run), a comparison of two studies alone, an ablation
preset (its variants' studies in one table), a convergence CSV, and study presets' plans.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liftplace.defaults import DIGITS_RESOLUTION
from liftplace.report import compute, curves, figures, render
from liftplace.report.compute import RealVsReal, TeacherRow
from liftplace.report.data import (
    ReportError,
    ReportSource,
    StudyData,
    fetch_study,
    fetch_teachers,
    read_rows,
    real_vs_real,
)
from liftplace.report.page import read_previous

SCRIPT = "python scripts/results_report.py"


@dataclass(frozen=True)
class Section:
    markdown: str
    numbers: dict[str, Any]  # what the sidecar keeps: `kind`, and the section's computed dataclasses


@dataclass(frozen=True)
class ReportContext:
    """What every section needs besides its own inputs."""

    page: Path  # the results page: figure links are relative to its folder, --previous reads its sidecars
    repo: Path  # the checkout: figure paths in captions, and git for --previous
    job_defaults: Mapping[str, Any]  # the worker's job spec defaults: the value of an option left unset
    reference: Callable[[int, int], RealVsReal] = real_vs_real  # (resolution, samples) -> real-vs-real FIDs

    def link(self, figure: Path) -> str:
        return os.path.relpath(figure, self.page.parent)

    def caption_path(self, figure: Path) -> str:
        return os.path.relpath(figure, self.repo)


def _teachers(source: ReportSource, study: Mapping[str, Any], ctx: ReportContext
              ) -> tuple[list[TeacherRow], RealVsReal | None]:
    """The study's teachers and, for the digits, the real-vs-real FIDs at the study's resolution."""
    opts = compute.job_options(study["options"], ctx.job_defaults)
    digits = study["dataset"] == "digits"
    rvr = ctx.reference(opts["resolution"] or DIGITS_RESOLUTION, opts["fid_samples"]) if digits else None
    rows = [compute.teacher_row(t.name, t.record, t.job, rvr, ctx.job_defaults)
            for t in fetch_teachers(source, study["teachers"])]
    return rows, rvr


# --- a study ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRequest:
    """What ``--study`` asks for (names as given on the command line)."""

    study: str
    section: str | None = None
    preset: str | None = None  # the study preset it ran: its label heads the section
    same_as: str | None = None  # another study sharing cells with it
    # git revisions of the page: compare with the section as it was at each (e.g. the same study published
    # from two other machines), and the section to read at each (none given: this one at every revision)
    previous: tuple[str, ...] = ()
    previous_section: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.previous_section and len(self.previous_section) != len(self.previous):
            raise ReportError(f"give one --previous-section per --previous, in the same order, or none; got "
                              f"{len(self.previous)} --previous and {len(self.previous_section)} --previous-section")

    def previous_pairs(self, default: str) -> list[tuple[str, str]]:
        """(revision, section there) for each --previous; `default`: the section when none is named."""
        return list(zip(self.previous, self.previous_section or [default] * len(self.previous), strict=True))

    def command(self, name: str) -> str:
        return (f"{SCRIPT} --api URL --study {name}" + (f" --preset {self.preset}" if self.preset else "")
                + (f" --section {self.section}" if self.section else "")
                + (f" --same-as {self.same_as}" if self.same_as else "")
                + "".join(f" --previous {rev}" + (f" --previous-section {s}" if self.previous_section else "")
                          for rev, s in self.previous_pairs("")))


def _grid_part(d: StudyData, teacher_params: Mapping[str, int]) -> tuple[list[str], dict[str, Any]]:
    """The grid, Welch's t-tests and the verdict: lines and numbers."""
    study, table = d.study, d.table
    comparisons = compute.compare_methods(table, study["teachers"])
    verdict = compute.verdict(table, comparisons, teacher_params, study["teachers"])
    lines = render.grid(table, study["teachers"], study["seeds"], teacher_params, compute.metric_label(table),
                        compute.collapse_threshold_of(table))
    if verdict is not None:
        lines += render.welch_table(comparisons) + render.verdict_lines(verdict)
    return lines, {"metric": compute.metric_label(table), "methods": table["methods"], "cells": table["cells"],
                   "best": table["best"], "welch": comparisons, "verdict": verdict}


def _no_axes(*studies: StudyData) -> None:
    """--same-as matches cells by teacher and method: a study with axes has several cells of each."""
    for d in studies:
        if d.table.get("axes"):
            raise ReportError(f"--same-as: study {d.study['name']!r} sweeps {', '.join(d.table['axes'])}, so a "
                              "teacher and method name several of its cells; compare studies without axes")


def _against_part(source: ReportSource, d: StudyData, req: StudyRequest, ctx: ReportContext
                  ) -> tuple[list[str], dict[str, Any]]:
    """The cells against another study (--same-as) and against an earlier run (--previous)."""
    lines: list[str] = []
    numbers: dict[str, Any] = {}
    if req.same_as:
        other = fetch_study(source, req.same_as, jobs=False)
        _no_axes(d, other)
        differ = compute.option_differences(d.study["options"], other.study["options"])
        rows = compute.same_cells(d.table, other.table)
        lines += render.same_cells_lines(other.study, differ, rows)
        numbers["same_as"] = {"study": other.study["name"], "id": other.study["id"], "differ": differ, "cells": rows}
    comparisons = []
    own = req.section or d.study["name"]
    here = render.machine()
    for rev, section in req.previous_pairs(own):
        earlier, there = read_previous(rev, ctx.page, section, ctx.repo, d.study["options"])
        rows = compute.previous_cells(d.table, earlier)
        variants = sorted({c["variant"] for c in earlier if "variant" in c})
        compared = {(r.teacher, r.method) for r in rows}
        unmatched = [f"{c['teacher']} / {c['method']}" for c in d.table["cells"]
                     if compute.succeeded_fids(c) and (c["teacher"], c["method"]) not in compared]
        lines += render.previous_lines(rev, section, rows, variants, there, here,
                                       own=section == own, explain=not comparisons, unmatched=unmatched)
        comparisons.append({"rev": rev, "section": section, "machine": there, "cells": rows})
    if comparisons:
        numbers["previous"] = comparisons
    return lines, numbers


def study_section(source: ReportSource, req: StudyRequest, figure: Path, ctx: ReportContext) -> Section:
    """A study's section: teachers, students, the grid, Welch's t-tests, the verdict, comparisons, and the
    capacity plot (teachers of several sizes) or the spread across teachers (copies of one recipe)."""
    d = fetch_study(source, req.study)
    study = d.study
    label = [f"*{_preset_label(req.preset)}*\n"] if req.preset else []
    span = compute.job_span(d.jobs)
    teachers, rvr = _teachers(source, study, ctx)
    teacher_params = {t.name: t.parameters or 0 for t in teachers}
    students = compute.student_rows(study["teachers"], d.jobs, teacher_params)
    grid_lines, grid_numbers = _grid_part(d, teacher_params)
    against_lines, against_numbers = _against_part(source, d, req, ctx)
    where = compute.environments(d.jobs)
    lines = [*label, *render.study_header(study, span, where),
             *render.teacher_table(teachers, rvr, compute.metric_label(d.table)),
             *render.student_table(study, students), *grid_lines, *against_lines]
    spread: dict[str, Any] = {}
    if compute.same_recipe(study["teachers"], teacher_params):  # seeded copies: no capacity gap to plot
        rows, orders = compute.teacher_spread(d.table, study["teachers"])
        lines += render.teacher_spread_lines(rows, orders, study["teachers"], compute.metric_label(d.table))
        spread = {"teacher_spread": {"rows": rows, "orders": orders}}
    elif len(study["teachers"]) > 1 and not any(compute.succeeded_fids(c) for c in d.table["cells"]):
        figure.unlink(missing_ok=True)  # a plot of an earlier run would stand for this one
        lines.append("\nNo capacity-gap plot: no job of this study has succeeded yet.")
    elif len(study["teachers"]) > 1:
        figures.capacity_plot(d.table, teacher_params, figure,
                              f"{study['name']} (study {study['id']}): student FID vs teacher size")
        lines += render.figure_lines(
            "capacity gap: student FID against teacher parameters", ctx.link(figure),
            "*Capacity-gap plot: each method's mean ± sample std over the seeds (line), and every seed "
            f"(dots), against the teacher's parameters; file `{ctx.caption_path(figure)}`.*")
    command = req.command(study["name"])
    here = render.machine()
    lines.append(render.generated_by(command, here))
    return Section("\n".join(lines), {"kind": "study", "command": command, "machine": here,
                                      "job_environments": where, "study": study, "job_span": span,
                                      "teachers": teachers, "real_vs_real": rvr, "students": students,
                                      **grid_numbers, **against_numbers, **spread})


def _preset_label(name: str) -> str:
    from liftplace.studies import get_study_preset

    return get_study_preset(name).label


def comparison_section(source: ReportSource, name: str, same_as: str, section: str) -> Section:
    """Only the cells a study shares with another (``--compare-only``)."""
    d, other = fetch_study(source, name, jobs=False), fetch_study(source, same_as, jobs=False)
    _no_axes(d, other)
    differ = compute.option_differences(d.study["options"], other.study["options"])
    rows = compute.same_cells(d.table, other.table)
    lines = render.same_cells_lines(other.study, differ, rows, subject=f"Study `{name}` (id {d.study['id']})")
    command = f"{SCRIPT} --api URL --study {name} --same-as {same_as} --compare-only --section {section}"
    body = "\n".join(lines or [f"No cell of study {name!r} is in study {same_as!r}."])
    return Section(body + f"\n\nGenerated by `{command}`.",
                   {"kind": "comparison", "command": command, "study": d.study["name"], "id": d.study["id"],
                    "same_as": {"study": other.study["name"], "id": other.study["id"], "differ": differ,
                                "cells": rows}})


# --- an ablation ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxisVariant:
    """One value (combination) of an ablation study's axes, read as a variant: its label and its options."""

    suffix: str
    options: Mapping[str, Any]


def _ablation_data(source: ReportSource, preset: Any) -> tuple[list[Any], list[dict[str, Any]], list[StudyData]]:
    """(variants, their tables, the studies fetched): a study per variant, or one study whose axes make the
    variants (each axis value's cells; a cell whose method ignores the axis stands in every one)."""
    from liftplace.tables import panel_label

    data = [fetch_study(source, body["name"]) for body in preset.study_requests(preset.name)]
    if len(preset.variants) != 1 or not preset.variants[0].axes:
        return list(preset.variants), [d.table for d in data], data
    (d,) = data
    combos: list[dict[str, Any]] = [{}]
    for axis, values in preset.variants[0].axes.items():
        combos = [{**c, axis: v} for c in combos for v in values]
    variants = [AxisVariant(panel_label(c), c) for c in combos]
    tables = [{**d.table, "cells": [cell for cell in d.table["cells"]
                                    if all(c.get(a) == v for a, v in (cell.get("axes") or {}).items())]}
              for c in combos]
    return variants, tables, data


def ablation_section(source: ReportSource, preset_name: str, figure: Path, section: str,
                     ctx: ReportContext) -> Section:
    """An ablation preset's variants as one table, each row against the reference: the values of its study's
    axis (or, for a preset of several studies, one study per variant).

    The reference is the variant whose options are the job spec's defaults (else the first); every other
    row gets Welch's t-test against the reference's row of the same teacher and method. Where a variant
    holds the paper's method and another (a regime map), they are also compared within it (`regime_rows`).
    """
    from liftplace.studies import get_study_preset

    preset = get_study_preset(preset_name)
    variants, tables, data = _ablation_data(source, preset)
    reference = compute.reference_variant(variants, ctx.job_defaults)
    studies = [d.study for d in data]
    jobs = [j for d in data for j in d.jobs]
    span = compute.job_span(jobs)
    varied = sorted({k for v in variants for k in v.options})
    teachers, rvr = _teachers(source, studies[0], ctx)
    rows = compute.ablation_rows(variants, tables, reference)
    regime = compute.regime_rows(variants, tables)
    seeds, metric = studies[0]["seeds"], compute.metric_label(tables[0])
    lines = [*render.ablation_header(preset, studies, span, len(jobs), varied),
             *render.teacher_table(teachers, rvr, metric),
             *render.ablation_table(rows, seeds, reference.suffix, metric, compute.collapse_threshold_of(tables[0]),
                                    compute.is_default_variant(reference, ctx.job_defaults)),
             *render.regime_table(regime, metric)]
    figures.ablation_plot(_ablation_points(rows, variants, tables), figure,
                          f"{preset.name}: student FID per variant ({len(seeds)} seeds)", metric)
    command = f"{SCRIPT} --api URL --ablation {preset.name} --section {section}"
    lines += render.figure_lines(f"{preset.name}: FID per variant", ctx.link(figure),
                                 "*Each variant's seeds (dots) and mean ± sample std (bar); file "
                                 f"`{ctx.caption_path(figure)}`.*")
    here = render.machine()
    lines.append(render.generated_by(command, here))
    return Section("\n".join(lines), {
        "kind": "ablation", "command": command, "machine": here, "preset": preset.name,
        "reference": reference.suffix,
        "varied": varied, "studies": studies, "job_span": span, "teachers": teachers, "real_vs_real": rvr,
        "metric": metric, "rows": rows, "regime": regime})


def _ablation_points(rows: list[compute.AblationRow], variants: Any, tables: list[dict[str, Any]]
                     ) -> list[tuple[str, list[float], float | None, float | None]]:
    """The plot's columns: (label, the row's FIDs, mean, std); a label names the method when a variant has several."""
    several = any(len(t["methods"]) > 1 for t in tables)
    return [(f"{r.variant}\n{r.method}" if several else r.variant,
             compute.succeeded_fids({"tries": r.tries}), r.mean, r.std) for r in rows]


# --- convergence curves and presets ------------------------------------------------------------------------


def convergence_section(csv_path: Path, figure: Path, ctx: ReportContext, budget: int | None = None,
                        source: ReportSource | None = None, study: str | None = None) -> Section:
    """A convergence CSV of ``bench/convergence.py`` (and its noise CSV and plot beside it), optionally against
    the jobs of `study` on the service."""
    rows = read_rows(csv_path)
    grid = curves.curves(rows)
    summaries = curves.curve_summaries(rows, budget)
    lines = render.curves_table(grid)
    if summaries:
        lines += ["\nStill improving? The FID of each curve:\n", *map(render.summary_line, summaries)]
    noise_csv = csv_path.parent / "fid_noise.csv"
    noise = curves.noise_rows(rows, read_rows(noise_csv)) if noise_csv.is_file() else None
    if noise is not None:
        lines += render.noise_table(noise)
    repro = _reproduction(rows, source, study, ctx) if source is not None and study else []
    lines += render.reproduction_lines(study or "", repro)
    src = csv_path.parent / "convergence.png"
    if src.is_file():
        figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, figure)
        lines.append(f"\n![convergence: FID against steps]({ctx.link(figure)})")
    extra = (f" --budget {budget}" if budget else "") + (f" --study {study}" if study else "")
    command = f"{SCRIPT} --convergence {csv_path.name} --section {figure.stem}{extra}"
    lines.append(f"\nGenerated by `{command}` from the CSV of `bench/convergence.py`.")
    return Section("\n".join(lines), {"kind": "convergence", "command": command, "csv": csv_path.name,
                                      "budget": budget, "curves": grid, "summaries": summaries, "noise": noise,
                                      "reproduction": repro})


def _reproduction(rows: list[dict[str, str]], source: ReportSource, study: str, ctx: ReportContext
                  ) -> list[curves.ReproductionRow]:
    d = fetch_study(source, study)
    steps = compute.job_options(d.study["options"], ctx.job_defaults)["steps"]
    return curves.reproduction_rows(rows, d.study, d.jobs, steps)


def presets_section(names: list[str], section: str) -> Section:
    """The presets' plans (`liftplace.studies`) as tables, with the command that runs each."""
    from liftplace.studies import get_study_preset

    lines: list[str] = []
    plans = {}
    for name in names:
        preset = get_study_preset(name)
        requests = preset.study_requests(name)
        lines += render.preset_lines(name, preset, requests)
        plans[name] = {"label": preset.label, "jobs": preset.jobs, "needs_gpu": preset.needs_gpu, "studies": requests}
    command = f"{SCRIPT} --presets " + " ".join(names) + f" --section {section}"
    lines.append(f"Generated by `{command}` from `liftplace/studies.py`.")
    return Section("\n".join(lines), {"kind": "presets", "command": command, "presets": plans})
