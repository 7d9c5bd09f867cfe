"""The report's arithmetic on a study's grid: Welch's t-tests, the verdict, and comparisons of cells.

Pure functions of the service's JSON as plain dicts (a study, its ``/table``, its jobs, its teachers)
returning frozen dataclasses, which `render` turns into Markdown and `page` writes as a section's JSON
sidecar. A *cell* is one (teacher, method) entry of a table's ``cells``: its ``tries`` (seed, status,
FID), ``mean`` and ``std`` (sample std, ddof = 1, over the succeeded runs), ``n``, ``collapses`` and
``complete`` (every seed has ended).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from liftplace.methods import PAPER_METHOD
from liftplace.stats import COLLAPSE_FID_THRESHOLD, WelchResult, welch_t_test

BASELINES: tuple[str, ...] = ("outkd", "outkd+featkd")  # the baselines of the paper's Table 6
SIGNIFICANCE: float = 0.05  # level of the two-sided Welch's t-tests in the verdict
UNKNOWN_METRIC = "fid"  # the label of a grid none of whose runs has reported its FID features yet

Cell = dict[str, Any]


# --- cells ------------------------------------------------------------------------------------------


def find_cell(table: Mapping[str, Any], teacher: str, method: str) -> Cell | None:
    """The (teacher, method) cell of a study's table; None when the table has no such cell."""
    return next((c for c in table["cells"] if c["teacher"] == teacher and c["method"] == method), None)


def succeeded_by_seed(cell: Mapping[str, Any] | None) -> dict[int, float]:
    """{seed: FID} of a cell's tries that succeeded with an FID, in the table's (seed) order; {} for no cell."""
    tries = (cell or {}).get("tries", [])
    return {t["seed"]: t["fid"] for t in tries if t["status"] == "succeeded" and t["fid"] is not None}


def succeeded_fids(cell: Mapping[str, Any] | None) -> list[float]:
    """The FIDs of a cell's tries that succeeded (seed order); [] for no cell."""
    return list(succeeded_by_seed(cell).values())


def metric_label(table: Mapping[str, Any]) -> str:
    """The grid's FID features (e.g. ``fid_digits``), as the table names them."""
    return table.get("metric") or UNKNOWN_METRIC


def collapse_threshold_of(table: Mapping[str, Any]) -> float:
    """The FID above which the service counted a run of this table as a collapse: the table says it; a
    service from before per-family thresholds counted at the Inception scale's."""
    return float(table.get("collapse_threshold") or COLLAPSE_FID_THRESHOLD)


def welch(a: Sequence[float], b: Sequence[float]) -> WelchResult | None:
    """Welch's t-test of `a` against `b` (negative t: `a` has the lower mean); None below two values a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    return welch_t_test(a, b)


def job_options(options: Mapping[str, Any], job_defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A job's or study's options with the unset ones (absent or None) at the job spec's defaults."""
    return {**job_defaults, **{k: v for k, v in options.items() if v is not None}}


@dataclass(frozen=True)
class JobSpan:
    """When some jobs ran: the first start, the last end, and the wall time between them (s)."""

    first: datetime
    last: datetime
    wall_s: float


def _timestamp(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def job_span(jobs: Sequence[Mapping[str, Any]]) -> JobSpan | None:
    """The jobs' first start and last end; None before one has started and one has ended."""
    started = [d for j in jobs if (d := _timestamp(j["started_at"]))]
    finished = [d for j in jobs if (d := _timestamp(j["finished_at"]))]
    if not (started and finished):
        return None
    return JobSpan(min(started), max(finished), (max(finished) - min(started)).total_seconds())


def environments(jobs: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """Where the ended jobs computed, most jobs first: ("AMD EPYC, torch 2.14.1, 1 thread", jobs), and
    ("not recorded", jobs) for those whose service or worker predates the record."""
    tally: dict[str, int] = {}
    for j in jobs:
        if j.get("finished_at") is None:
            continue
        env = j.get("environment") or {}
        if env:
            threads = env.get("threads", "?")
            where = (f"{env.get('gpu') or env.get('cpu', '?')}, torch {env.get('torch', '?')}, "
                     f"{threads} thread{'' if threads == '1' else 's'}")
        else:
            where = "not recorded"
        tally[where] = tally.get(where, 0) + 1
    return sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))


# --- teachers and students --------------------------------------------------------------------------


@dataclass(frozen=True)
class RealVsReal:
    """Real-vs-real FIDs to read a model's FID against (digits features, `resolution` pixels a side).

    `halves`: two disjoint random halves of the digits (`halves_n` images each); `subset`: `subset_n`
    real digits against the whole set they belong to (what a model that copied its data would score).
    """

    resolution: int
    halves: float
    halves_n: int
    subset: float
    subset_n: int


@dataclass(frozen=True)
class TeacherRow:
    """A study's teacher: where it came from, its size, and its FID (on its training job's samples)."""

    name: str
    source: str  # "preset", "pruned", "local", "shipped", or "?" when the service does not list it
    preset: str | None
    base_teacher: str | None
    prune_ratio: float | None
    parameters: int | None
    steps: int | None  # its training job's steps
    fid: float | None
    fid_samples: int  # samples and DDIM steps behind that FID
    sample_steps: int
    fid_ratio: float | None  # FID / the real-vs-real FID of two halves


def teacher_row(name: str, record: Mapping[str, Any], job: Mapping[str, Any], rvr: RealVsReal | None,
                job_defaults: Mapping[str, Any]) -> TeacherRow:
    """One teacher from its service record and its training job ({} for a teacher without one; a teacher
    shipped with liftplace takes its steps and FID from its provenance, `liftplace.shipped`)."""
    if record.get("source") == "shipped" and not job:
        job = _shipped_job(record.get("folder") or name)
    fid = job.get("fid")
    options = job_options(job.get("options", {}), job_defaults)
    return TeacherRow(name=name, source=record.get("source", "?"), preset=record.get("preset"),
                      base_teacher=record.get("base_teacher"), prune_ratio=record.get("prune_ratio"),
                      parameters=record.get("parameters"), steps=job.get("steps"), fid=fid,
                      fid_samples=options["fid_samples"], sample_steps=options["sample_steps"],
                      fid_ratio=fid / rvr.halves if rvr and fid else None)


def _shipped_job(name: str) -> dict[str, Any]:
    """A shipped teacher's training as a job record: steps, FID and the FID's samples and DDIM steps."""
    from liftplace.shipped import provenance

    made = provenance(name)
    fid = made["fid"]
    return {"steps": made["steps"], "fid": fid["value"],
            "options": {"fid_samples": fid["samples"], "sample_steps": fid["sample_steps"]}}


def largest_teacher(teachers: Sequence[str], parameters: Mapping[str, int | None]) -> str:
    """The teacher with the most parameters (the first of equals; an unknown size counts as 0)."""
    return max(teachers, key=lambda t: parameters.get(t) or 0)


@dataclass(frozen=True)
class StudentRow:
    """The students of one teacher's jobs: median size, its share of the teacher, median job time."""

    teacher: str
    parameters: float | None  # median over the succeeded jobs
    share_percent: float | None
    median_job_s: float | None


def student_rows(teachers: Sequence[str], jobs: Sequence[Mapping[str, Any]],
                 teacher_params: Mapping[str, int | None]) -> list[StudentRow]:
    """Per teacher, from the metrics of its succeeded distillation jobs."""
    sizes: dict[str, list[float]] = {}
    durations: dict[str, list[float]] = {}
    for j in jobs:
        if j["status"] == "succeeded":
            if j["metrics"].get("student_parameters"):
                sizes.setdefault(j["teacher"], []).append(j["metrics"]["student_parameters"])
            if j["metrics"].get("duration_s"):
                durations.setdefault(j["teacher"], []).append(j["metrics"]["duration_s"])
    rows = []
    for t in teachers:
        size = statistics.median(sizes[t]) if sizes.get(t) else None
        share = 100 * size / teacher_params[t] if size and teacher_params.get(t) else None
        rows.append(StudentRow(t, size, share, statistics.median(durations[t]) if durations.get(t) else None))
    return rows


# --- the paper's method against the others, and the verdict ------------------------------------------


@dataclass(frozen=True)
class MethodComparison:
    """The paper's method against another under one teacher (Welch's t-test of ours against theirs)."""

    teacher: str
    other: str
    mean_other: float | None
    mean_ours: float | None
    t: float | None  # None below two succeeded seeds a side
    df: float | None
    p: float | None
    lower_mean: bool  # ours has the lower mean FID
    lower_std: bool  # ours has the lower seed std


def compared_methods(methods: Sequence[str]) -> list[str]:
    """What the paper's method is tested against: Table 6's baselines when the study has them, else every
    other method (an ablation); none without the paper's method."""
    if PAPER_METHOD not in methods:
        return []
    return [m for m in BASELINES if m in methods] or [m for m in methods if m != PAPER_METHOD]


def compare_methods(table: Mapping[str, Any], teachers: Sequence[str]) -> list[MethodComparison]:
    """Every (teacher, other method) pair of `compared_methods`, teacher by teacher."""
    rows = []
    for teacher in teachers:
        ours = find_cell(table, teacher, PAPER_METHOD) or {}
        for other in compared_methods(table["methods"]):
            theirs = find_cell(table, teacher, other) or {}
            w = welch(succeeded_fids(ours), succeeded_fids(theirs))
            m_o, m_t, s_o, s_t = ours.get("mean"), theirs.get("mean"), ours.get("std"), theirs.get("std")
            rows.append(MethodComparison(
                teacher=teacher, other=other, mean_other=w.mean_b if w else m_t, mean_ours=w.mean_a if w else m_o,
                t=w.statistic if w else None, df=w.df if w else None, p=w.pvalue if w else None,
                lower_mean=m_o is not None and m_t is not None and m_o < m_t,
                lower_std=s_o is not None and s_t is not None and s_o < s_t))
    return rows


@dataclass(frozen=True)
class Verdict:
    """Does the paper's direction appear with the largest teacher? Computed, never typed in.

    The direction: the paper's method has a lower mean FID **and** a lower seed std than every method
    it is compared with (`compared_methods`).
    """

    teacher: str  # the largest teacher
    against: tuple[MethodComparison, ...]
    complete: bool  # every compared cell of the teacher has all its seeds ended
    direction: bool
    appears: bool | None  # `direction`, or None (no verdict) while the cells are not complete
    significant: bool  # every mean difference has p < SIGNIFICANCE
    best: str | None  # the method with the lowest mean FID under the teacher (None: no mean yet)
    worst: str | None  # the one with the highest


def verdict(table: Mapping[str, Any], comparisons: Sequence[MethodComparison],
            teacher_params: Mapping[str, int | None], teachers: Sequence[str]) -> Verdict | None:
    """The verdict from `compare_methods`' rows; None when the study does not test the paper's method."""
    others = compared_methods(table["methods"])
    if not others:
        return None
    largest = largest_teacher(teachers, teacher_params)
    against = tuple(c for c in comparisons if c.teacher == largest)
    cells = {m: find_cell(table, largest, m) or {} for m in table["methods"]}
    means = {m: c["mean"] for m, c in cells.items() if c.get("mean") is not None}
    complete = all(cells[m].get("complete") for m in (PAPER_METHOD, *others))
    direction = all(c.lower_mean and c.lower_std for c in against)
    return Verdict(
        teacher=largest, against=against, complete=complete, direction=direction,
        appears=direction if complete else None,
        significant=all(c.p is not None and c.p < SIGNIFICANCE for c in against),
        best=min(means, key=means.__getitem__) if means else None,
        worst=max(means, key=means.__getitem__) if means else None)


# --- the same cells in another study, or in an earlier run -------------------------------------------


@dataclass(frozen=True)
class SameCell:
    """A (teacher, method) cell of two studies, seed by seed (same seed: same run, with the same options)."""

    teacher: str
    method: str
    mean_here: float | None
    std_here: float | None
    mean_there: float | None
    std_there: float | None
    largest_difference: float  # over the seeds both succeeded
    t: float | None  # Welch's t-test, only when some seed differs
    p: float | None


def option_differences(here: Mapping[str, Any], there: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{option: (value here, value there)} for this study's options that the other study sets otherwise."""
    return {k: (v, there.get(k)) for k, v in here.items() if there.get(k) != v}


def same_cells(table: Mapping[str, Any], other: Mapping[str, Any]) -> list[SameCell]:
    """The cells of `table` that `other` has too, with some seed succeeded on both sides."""
    rows = []
    for c in table["cells"]:
        o = find_cell(other, c["teacher"], c["method"])
        mine, theirs = succeeded_by_seed(c), succeeded_by_seed(o)
        seeds = sorted(set(mine) & set(theirs))
        if o is None or not seeds:
            continue
        worst = max(abs(mine[s] - theirs[s]) for s in seeds)
        w = welch(list(mine.values()), list(theirs.values())) if worst > 0 else None
        rows.append(SameCell(c["teacher"], c["method"], c["mean"], c["std"], o["mean"], o["std"], worst,
                             w.statistic if w else None, w.pvalue if w else None))
    return rows


@dataclass(frozen=True)
class PreviousCell:
    """A cell against the same cell of an earlier run of the section (its JSON sidecar at a commit), which may
    have run other seeds (e.g. a re-run of seeds 0 and 1 on another machine).

    `within_spread`: every seed run on both sides differs by less than the earlier cell's seed std (with no
    seed in common: the means differ by less than the larger of the two stds).
    """

    teacher: str
    method: str
    mean_here: float
    std_here: float | None
    mean_there: float  # over all of the earlier cell's succeeded seeds
    std_there: float
    seeds_in_both: tuple[int, ...]
    mean_there_same_seeds: float | None  # the earlier cell's mean over `seeds_in_both`
    largest_seed_difference: float | None  # the largest |FID here − FID there| over `seeds_in_both`
    t: float | None  # Welch's t-test of all seeds here against all there (None below two a side)
    p: float | None
    within_spread: bool


def previous_cells(table: Mapping[str, Any], earlier: Sequence[Mapping[str, Any]]) -> list[PreviousCell]:
    """The cells with a succeeded seed here and two or more in `earlier` (the earlier run's cells)."""
    rows = []
    for c in table["cells"]:
        here = succeeded_by_seed(c)
        there = succeeded_by_seed(next((e for e in earlier if (e["teacher"], e["method"]) == (c["teacher"],
                                                                                            c["method"])), None))
        if not here or len(there) < 2:
            continue
        both = tuple(sorted(set(here) & set(there)))
        diffs = [abs(here[s] - there[s]) for s in both]
        w = welch(list(here.values()), list(there.values()))
        mean_here, std_here = c["mean"], c["std"]  # the service's (over the same succeeded seeds)
        m_there, s_there = statistics.mean(there.values()), statistics.stdev(there.values())
        within = max(diffs) < s_there if diffs else abs(mean_here - m_there) < max(std_here or 0.0, s_there)
        rows.append(PreviousCell(c["teacher"], c["method"], mean_here, std_here, m_there, s_there, both,
                                 statistics.mean(there[s] for s in both) if both else None,
                                 max(diffs) if diffs else None, w.statistic if w else None,
                                 w.pvalue if w else None, within))
    return rows


# --- an ablation's variants ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AblationRow:
    """One method of one variant of an ablation, with Welch's t-test against the reference variant's row."""

    variant: str
    reference: bool
    teacher: str
    method: str
    tries: tuple[dict[str, Any], ...]  # the cell's tries as the service lists them
    mean: float | None
    std: float | None
    collapses: int
    t: float | None  # None for the reference itself, or below two succeeded seeds a side
    p: float | None


def is_default_variant(variant: Any, job_defaults: Mapping[str, Any]) -> bool:
    """Whether every option of the variant is the job spec's default."""
    missing = object()
    return all(job_defaults.get(k, missing) == val for k, val in variant.options.items())


def reference_variant(variants: Sequence[Any], job_defaults: Mapping[str, Any]) -> Any:
    """The variant whose options are all the job spec's defaults, else the first."""
    return next((v for v in variants if is_default_variant(v, job_defaults)), variants[0])


def ablation_rows(variants: Sequence[Any], tables: Sequence[Mapping[str, Any]], reference: Any) -> list[AblationRow]:
    """Every cell of every variant's table (variants in order), each against the reference's same cell.

    In one study with axes, a cell whose method ignores an axis stands in the table of every value of that
    axis (the same cell): it is listed once, under its own axis values (e.g. "lr = 0.001" for OutKD in a map
    of lr and coarse distance; "every variant" without any), and is a reference row when the reference
    variant's table holds it.
    """
    from liftplace.tables import panel_label

    ref_table = tables[list(variants).index(reference)]
    in_ref = {id(c) for c in ref_table["cells"]}
    listed = Counter(id(c) for t in tables for c in t["cells"])  # the same cell object in several tables
    rows, seen = [], set()
    for variant, table in zip(variants, tables, strict=True):
        for c in table["cells"]:
            if id(c) in seen:
                continue
            seen.add(id(c))
            label = variant.suffix
            if listed[id(c)] > 1:
                label = panel_label(c.get("axes") or {}) or "every variant"
            is_ref = variant is reference or id(c) in in_ref
            ref = find_cell(ref_table, c["teacher"], c["method"])
            w = welch(succeeded_fids(c), succeeded_fids(ref)) if ref is not None and not is_ref else None
            rows.append(AblationRow(label, is_ref, c["teacher"], c["method"], tuple(c["tries"]),
                                    c["mean"], c["std"], c.get("collapses", 0), w.statistic if w else None,
                                    w.pvalue if w else None))
    return rows


# --- the regime map: the paper's method against the others in every variant --------------------------------


@dataclass(frozen=True)
class RegimeRow:
    """The paper's method against another method in one variant (a combination of axis values) of a study.

    `direction`: the paper's direction, a lower mean **and** a lower seed std; `wins` / `loses`: its mean FID
    is lower / higher with p < SIGNIFICANCE. None of them is set before both cells have all their seeds ended.
    """

    variant: str
    teacher: str
    other: str
    mean_ours: float | None
    std_ours: float | None
    mean_other: float | None
    std_other: float | None
    t: float | None
    p: float | None
    complete: bool
    direction: bool
    wins: bool
    loses: bool


def regime_rows(variants: Sequence[Any], tables: Sequence[Mapping[str, Any]]) -> list[RegimeRow]:
    """For each variant with the paper's method and another one (`compared_methods`), teacher by teacher,
    the paper's method against each other method of that variant's table (Welch's t-test, ours first)."""
    rows = []
    for variant, table in zip(variants, tables, strict=True):
        for c in compare_methods(table, table["teachers"]):  # none without the paper's method and another
            ours = find_cell(table, c.teacher, PAPER_METHOD) or {}
            theirs = find_cell(table, c.teacher, c.other) or {}
            complete = bool(ours.get("complete")) and bool(theirs.get("complete"))
            significant = complete and c.p is not None and c.p < SIGNIFICANCE
            rows.append(RegimeRow(
                variant.suffix, c.teacher, c.other, c.mean_ours, ours.get("std"), c.mean_other, theirs.get("std"),
                c.t, c.p, complete, complete and c.lower_mean and c.lower_std, significant and c.lower_mean,
                significant and not c.lower_mean))
    return rows


# --- teachers of one recipe: how much of the answer is the teacher's -------------------------------------


@dataclass(frozen=True)
class TeacherSpreadRow:
    """One method across teachers of the same recipe (trained with different seeds): the cell mean FID per
    teacher, and their mean and sample std over the teachers."""

    method: str
    per_teacher: dict[str, float | None]
    mean: float | None
    std: float | None  # ddof = 1, over the teachers with a result


@dataclass(frozen=True)
class TeacherSpreadOrder:
    """The paper's method against another, teacher by teacher: under how many teachers its mean is lower."""

    other: str
    lower: int  # teachers under which the paper's method has the lower mean FID
    compared: int  # teachers with a result for both


def same_recipe(teachers: Sequence[str], parameters: Mapping[str, int | None]) -> bool:
    """Whether the teachers are copies of one architecture (the same parameter count), not capacities."""
    sizes = {parameters.get(t) for t in teachers}
    return len(teachers) > 1 and len(sizes) == 1 and None not in sizes


def teacher_spread(table: Mapping[str, Any], teachers: Sequence[str]
                   ) -> tuple[list[TeacherSpreadRow], list[TeacherSpreadOrder]]:
    """Each method's cell mean per teacher and its spread over the teachers; the paper's method against the
    others (`compared_methods`) teacher by teacher."""
    rows = []
    for method in table["methods"]:
        per = {t: (find_cell(table, t, method) or {}).get("mean") for t in teachers}
        got = [v for v in per.values() if v is not None]
        rows.append(TeacherSpreadRow(method, per, statistics.mean(got) if got else None,
                                     statistics.stdev(got) if len(got) > 1 else None))
    means = {r.method: r.per_teacher for r in rows}
    orders = []
    for other in compared_methods(table["methods"]):
        both = [t for t in teachers if means[PAPER_METHOD][t] is not None and means[other][t] is not None]
        orders.append(TeacherSpreadOrder(other, sum(means[PAPER_METHOD][t] < means[other][t] for t in both),
                                         len(both)))
    return rows, orders
