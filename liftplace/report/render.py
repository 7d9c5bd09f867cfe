"""Markdown of the report's dataclasses (`compute`, `curves`): tables, the verdict, captions.

Each function returns the section's lines (joined with newlines by `sections`); no arithmetic beyond
formatting happens here.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

from liftplace.environment import cpu_model
from liftplace.job_status import NOT_ENDED_STATUSES
from liftplace.methods import PAPER_METHOD
from liftplace.report.compute import (
    SIGNIFICANCE,
    AblationRow,
    JobSpan,
    MethodComparison,
    PreviousCell,
    RealVsReal,
    RegimeRow,
    SameCell,
    StudentRow,
    TeacherRow,
    TeacherSpreadOrder,
    TeacherSpreadRow,
    Verdict,
    find_cell,
)
from liftplace.report.curves import Curves, CurveSummary, NoiseRow, ReproductionRow

MISSING = "–"


def fmt(x: float | None, digits: int = 2) -> str:
    """A number with `digits` decimals (no sign on one that rounds to zero); a dash for none (or a non-finite one)."""
    if x is None or not math.isfinite(x):
        return MISSING
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def params(n: float | None) -> str:
    """A parameter count as 1.11M or 99.5K; ? when unknown."""
    if not n:
        return "?"
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n / 1e3:.1f}K"


def machine() -> str:
    """Where a report was written (its job times depend on it, and a CPU's floating point its FIDs):
    "x86_64 (AMD EPYC) with 2 CPUs"."""
    model = cpu_model()
    return f"{platform.machine()}{f' ({model})' if model else ''} with {os.cpu_count()} CPUs"


def counts(status_counts: Mapping[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in status_counts.items() if v)


def fmt_difference(x: float | None) -> str:
    """A difference between two runs' FIDs: 2 decimals, or 2 significant digits when it is under 0.005 (two
    machines with the same arithmetic differ by ~1e-7, not by nothing; 0 only when the numbers are equal)."""
    if x is None or not math.isfinite(x) or x == 0 or abs(x) >= 0.005:
        return fmt(x)
    return f"{x:.1e}"


def options(opts: Mapping[str, Any]) -> str:
    """Options as "key value" pairs in key order, the unset ones left out."""
    return ", ".join(f"{k} {v}" for k, v in sorted(opts.items()) if v is not None)


def try_text(tr: Mapping[str, Any] | None) -> str:
    """One seed's cell of a grid: its FID, its status when it did not succeed, … while it has not ended."""
    if tr is None:
        return ""
    if tr["status"] in NOT_ENDED_STATUSES:
        return "…"
    return fmt(tr["fid"]) if tr["status"] == "succeeded" else tr["status"]


def seed_cells(tries: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> list[str]:
    by_seed = {tr["seed"]: tr for tr in tries}
    return [try_text(by_seed.get(s)) for s in seeds]


# --- the study -------------------------------------------------------------------------------------------


def study_header(study: Mapping[str, Any], span: JobSpan | None,
                 where: Sequence[tuple[str, int]] = ()) -> list[str]:
    lines = [f"Study **{study['name']}** (service study id {study['id']}, MLflow experiment "
             f"{study['mlflow_experiment_id']}, parent run `{study['mlflow_run_id']}`): {study['jobs']} jobs, "
             + counts(study["status_counts"]) + "."]
    if span:
        lines.append(f"First job started {span.first:%Y-%m-%d %H:%M} UTC, last ended {span.last:%H:%M} UTC: "
                     f"{span.wall_s / 60:.0f} min of wall time for the distillation jobs.")
    if where:
        lines.append("Where the jobs computed (as each worker reported it): "
                     + "; ".join(f"{w} ({n} job{'' if n == 1 else 's'})" for w, n in where) + ".")
    lines.append(f"Options shared by every job: student ratio {study['student_ratio']}, "
                 + options(study["options"]) + ".\n")
    return lines


def _teacher_source(row: TeacherRow) -> str:
    if row.source == "preset":
        return f"preset `{row.preset}`"
    if row.source == "pruned":
        return f"pruned {row.prune_ratio} of {row.base_teacher}, retrained"
    if row.source == "shipped":
        made = f"preset `{row.preset}`" if row.prune_ratio is None else f"pruned {row.prune_ratio}, retrained"
        return f"shipped with liftplace ({made})"
    return row.source


def teacher_table(rows: Sequence[TeacherRow], rvr: RealVsReal | None, metric: str) -> list[str]:
    made = ("trained by the service" if all(r.source != "shipped" for r in rows) else
            "shipped with liftplace: trained by its recipe, FID as measured then" if all(
                r.source == "shipped" for r in rows) else "trained by the service or shipped with liftplace")
    lines = [f"**Teachers** ({made}; FID of the EMA teacher on its training job's samples):\n",
             "| teacher | source | parameters | training steps | teacher FID | teacher FID / real-vs-real |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {_teacher_source(r)} | {params(r.parameters)} | "
                     f"{MISSING if r.steps is None else r.steps} | {fmt(r.fid)} ({r.fid_samples} samples, "
                     f"{r.sample_steps} DDIM steps) | {fmt(r.fid_ratio)}× |")
    if rvr:
        lines.append(f"\nReal vs real ({metric}, {rvr.resolution}×{rvr.resolution}): two disjoint halves "
                     f"of the digits ({rvr.halves_n:.0f} images each) {rvr.halves:.2f}; {rvr.subset_n:.0f} "
                     f"real digits against the whole set they are part of {rvr.subset:.2f} (a model that "
                     "copied its training set).")
    return lines


def student_table(study: Mapping[str, Any], rows: Sequence[StudentRow]) -> list[str]:
    fixed = study["options"].get("student_teacher")
    if fixed:
        lines = [f"\n**Students** (one fixed student, as in the paper: pruned from `{fixed}` at ratio "
                 f"{study['student_ratio']} by every job — same ratio, importance and seed — whichever teacher "
                 "it distils from):\n"]
    else:
        lines = ["\n**Students** (pruned from their teacher, so their size follows the teacher's):\n"]
    lines += ["| teacher | student parameters | share of the teacher | median job time (s) |", "|---|---|---|---|"]
    for r in rows:
        size = params(int(r.parameters)) if r.parameters else "?"
        lines.append(f"| {r.teacher} | {size} | {fmt(r.share_percent)}% | {fmt(r.median_job_s, 0)} |")
    return lines


def grid(table: Mapping[str, Any], teachers: Sequence[str], seeds: Sequence[int],
         teacher_params: Mapping[str, int | None], metric: str, collapse_threshold: float) -> list[str]:
    """The Table-6 grid: per teacher, a row per method with its tries by seed; best mean in bold."""
    lines = [f"\n**The Table-6 grid** ({metric}, lower is better; per teacher and method: "
             "the tries by seed, their mean and sample std (ddof = 1) over the succeeded runs, and the collapses "
             f"— runs that diverged or scored above {collapse_threshold:g}, the service's threshold for "
             f"{metric}; best mean in bold):\n"]
    for teacher in teachers:
        lines.append(f"*Teacher {teacher} ({params(teacher_params.get(teacher))}):*\n")
        lines.append("| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std | collapses |")
        lines.append("|---|" + "---:|" * (len(seeds) + 3))
        best = set(table["best"].get(teacher, []))
        for method in table["methods"]:
            c = find_cell(table, teacher, method) or {}
            mean = fmt(c.get("mean"))
            collapses = c.get("collapses", 0) if c.get("n") or c.get("collapses") else ""
            lines.append(f"| {method} | " + " | ".join(seed_cells(c.get("tries", []), seeds))
                         + f" | {f'**{mean}**' if method in best else mean} | {fmt(c.get('std'))} | {collapses} |")
        lines.append("")
    if any(tr["status"] in NOT_ENDED_STATUSES for c in table["cells"] for tr in c["tries"]):
        lines.append("(… : still queued or running.)")
    return lines


def welch_table(rows: Sequence[MethodComparison]) -> list[str]:
    lines = [f"\n**Welch's t-tests** (two-sided, unequal variances) of `{PAPER_METHOD}` against each other "
             "method; negative t: the paper's method has the lower mean FID.\n",
             "| teacher | other method | mean FID other | mean FID ours | t | df | p |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.teacher} | {r.other} | {fmt(r.mean_other)} | {fmt(r.mean_ours)} | {fmt(r.t)} | "
                     f"{fmt(r.df, 1)} | {fmt(r.p, 4)} |")
    return lines


def verdict_lines(v: Verdict) -> list[str]:
    lines = [f"\n**Verdict (computed from the numbers above)** — with the largest teacher ({v.teacher}):"]
    for c in v.against:
        if c.p is None:
            lines.append(f"- against `{c.other}`: not enough finished seeds yet to compare.")
            continue
        sig = f"{'significant' if c.p < SIGNIFICANCE else 'not significant'} at p < {SIGNIFICANCE}"
        lines.append(f"- against `{c.other}`: `{PAPER_METHOD}` has a {'lower' if c.lower_mean else 'higher or equal'} "
                     f"mean FID ({sig}, p = {fmt(c.p, 4)}) and a {'lower' if c.lower_std else 'higher or equal'} "
                     "seed std.")
    if v.appears is None:
        lines.append("- the cells of the largest teacher are not complete yet: **no verdict** (re-run this report "
                     "when the study has ended).")
    else:
        lines.append("- the paper's direction (lower mean **and** lower std than every other method with the "
                     f"largest teacher) **{'appears' if v.appears else 'does not appear'}**"
                     + (f"; the mean differences are {'all' if v.significant else 'not all'} significant at "
                        f"p < {SIGNIFICANCE}" if v.appears else "") + ".")
    return lines


def teacher_spread_lines(rows: Sequence[TeacherSpreadRow], orders: Sequence[TeacherSpreadOrder],
                         teachers: Sequence[str], metric: str) -> list[str]:
    """Each method across teachers of one recipe, and under how many of them the paper's method is ahead."""
    lines = [f"\n**Across the teachers** ({metric}; teachers of one recipe, trained with different seeds): each "
             "method's cell mean under each teacher, and their mean ± sample std over the teachers.\n",
             "| method | " + " | ".join(teachers) + " | mean over teachers | std over teachers |",
             "|---|" + "---:|" * (len(teachers) + 2)]
    for r in rows:
        lines.append(f"| {r.method} | " + " | ".join(fmt(r.per_teacher[t]) for t in teachers)
                     + f" | {fmt(r.mean)} | {fmt(r.std)} |")
    for o in orders:
        lines.append(f"- `{PAPER_METHOD}` has the lower mean FID than `{o.other}` under {o.lower} of "
                     f"{o.compared} teachers.")
    return lines


def same_cells_lines(other: Mapping[str, Any], differ: Mapping[str, tuple[Any, Any]], rows: Sequence[SameCell],
                     subject: str | None = None) -> list[str]:
    """The cells shared with another study (none: no lines); `subject` names this study when it stands alone."""
    if not rows:
        return []
    lead = f"{subject} against study" if subject else "\nAgainst study"
    lines = [f"{lead} `{other['name']}` (id {other['id']}), same teacher and method; options that differ: "
             + (", ".join(f"{k} {a} here, {b} there" for k, (a, b) in differ.items()) or "none") + ".\n",
             "| teacher | method | mean ± std here | mean ± std there | largest per-seed difference | t | p |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.teacher} | {r.method} | {fmt(r.mean_here)} ± {fmt(r.std_here)} | {fmt(r.mean_there)} ± "
                     f"{fmt(r.std_there)} | {r.largest_difference:.4f} | {fmt(r.t)} | {fmt(r.p, 4)} |")
    return lines


def previous_lines(rev: str, section: str, rows: Sequence[PreviousCell], variants: Sequence[str] = (),
                   there: str | None = None, here: str | None = None, *, own: bool = True,
                   explain: bool = True, unmatched: Sequence[str] = ()) -> list[str]:
    """The cells against an earlier run; `variants`: the ablation variants that stood for that run's cells;
    `there`, `here`: the machines the earlier section and this one were generated on, when known; `own`:
    the earlier section is this one; `explain`: say what the columns mean (the first comparison does);
    `unmatched`: this study's cells with results that the earlier run has not (fewer than two seeds there)."""
    if not rows:
        return [f"\nNo cell of this study is in section {section!r} at commit `{rev}`."]
    if variants:
        source = (f"section `{section}` as published at commit `{rev}`, an ablation whose variant"
                  f"{'s' if len(variants) > 1 else ''} {', '.join(f'*{v}*' for v in variants)} ran with this "
                  "study's options")
    else:
        source = f"{'this section' if own else f'section `{section}`'} as published at commit `{rev}`"
    columns = (": the same teacher and method; mean ± sample std here and there; the seeds run on both sides, the "
               "earlier mean over those seeds and the largest difference of one seed's FID between the runs; "
               "Welch's t-test of all the seeds here against all there; and *within the seed spread*: every seed "
               "run on both sides differs by less than the earlier cell's seed std (with no seed in common: the "
               "means differ by less than the larger std)" if explain else ", in the columns above")
    lines = [f"\nAgainst {source} (an earlier run of the same jobs, perhaps of other seeds or on another "
             f"machine){columns}." + (f" Here: {here}; there: {there or 'not recorded'}." if here else "") + "\n",
             "| teacher | method | mean ± std here | mean ± std there | seeds in both | there, same seeds | "
             "largest seed difference | t | p | within the seed spread |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = ", ".join(map(str, r.seeds_in_both)) or MISSING
        lines.append(f"| {r.teacher} | {r.method} | {fmt(r.mean_here)} ± {fmt(r.std_here)} | {fmt(r.mean_there)} ± "
                     f"{fmt(r.std_there)} | {seeds} | {fmt(r.mean_there_same_seeds)} | "
                     f"{fmt_difference(r.largest_seed_difference)} | {fmt(r.t)} | {fmt(r.p, 4)} | "
                     f"{'yes' if r.within_spread else 'no'} |")
    if unmatched:
        lines.append(f"\nNot compared (no cell with two or more succeeded seeds there): {', '.join(unmatched)}.")
    return lines


def figure_lines(alt: str, link: str, caption: str) -> list[str]:
    return [f"\n![{alt}]({link})\n", caption]


# --- an ablation -------------------------------------------------------------------------------------------


def ablation_header(preset: Any, studies: Sequence[Mapping[str, Any]], span: JobSpan | None, jobs: int,
                    varied: Sequence[str]) -> list[str]:
    lines = [f"*{preset.label}*\n", f"Preset **{preset.name}**: {preset.description}\n",
             "| variant | study | jobs | MLflow parent run |", "|---|---|---|---|"]
    for variant, study in zip(preset.variants, studies, strict=True):
        label = variant.suffix or ", ".join(f"{a} in {{{', '.join(map(str, v))}}}" for a, v in variant.axes.items())
        lines.append(f"| {label} | `{study['name']}` (id {study['id']}) | {study['jobs']}: "
                     f"{counts(study['status_counts'])} | `{study['mlflow_run_id']}` |")
    if span:
        lines.append(f"\nFirst job started {span.first:%Y-%m-%d %H:%M} UTC, last ended {span.last:%H:%M} UTC "
                     f"({span.wall_s / 60:.0f} min of wall time for the {jobs} distillation jobs).")
    shared = {k: v for k, v in studies[0]["options"].items() if k not in varied}
    lines.append(f"Options shared by every job: student ratio {studies[0]['student_ratio']}, "
                 + options(shared) + "; varied: " + ", ".join(varied) + ".\n")
    return lines


def ablation_table(rows: Sequence[AblationRow], seeds: Sequence[int], reference: str, metric: str,
                   collapse_threshold: float, reference_is_default: bool = True) -> list[str]:
    which = "the defaults" if reference_is_default else "the first"
    lines = [f"\n**The ablation** ({metric}, lower is better; the tries by seed, their "
             "mean and sample std (ddof = 1) over the succeeded runs, and the collapses — runs that diverged or "
             f"scored above {collapse_threshold:g}; Welch's t-test of each row against the reference "
             f"variant `{reference}` ({which}), same method; negative t: lower mean FID than the "
             "reference):\n",
             "| variant | teacher | method | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean | std | collapses | t | p |",
             "|---|---|---|" + "---:|" * (len(seeds) + 5)]
    for r in rows:
        label = f"**{r.variant}** (reference)" if r.reference else r.variant
        lines.append(f"| {label} | {r.teacher} | {r.method} | " + " | ".join(seed_cells(r.tries, seeds))
                     + f" | {fmt(r.mean)} | {fmt(r.std)} | {r.collapses} | {fmt(r.t)} | {fmt(r.p, 4)} |")
    if any(t["status"] in NOT_ENDED_STATUSES for r in rows for t in r.tries):
        lines.append("\n(… : still queued or running.)")
    return lines


def regime_table(rows: Sequence[RegimeRow], metric: str) -> list[str]:
    """Where the paper's method beats the others: one row per variant and compared method, then a summary."""
    if not rows:
        return []
    lines = [f"\n**Where does `{PAPER_METHOD}` win?** ({metric}, lower is better) In every variant, the paper's "
             "method against each other method of that variant, same teacher: mean ± sample std over the "
             "succeeded seeds, the difference of the means (ours − theirs), and Welch's t-test (negative t: ours "
             "lower). *Direction*: the paper's claim, a lower mean **and** a lower seed std; *significant*: "
             f"p < {SIGNIFICANCE}.\n",
             "| variant | teacher | other method | ours | theirs | ours − theirs | t | p | direction | significant |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        diff = r.mean_ours - r.mean_other if r.mean_ours is not None and r.mean_other is not None else None
        sig = ("ours lower" if r.wins else "theirs lower" if r.loses else "no") if r.complete else "…"
        lines.append(f"| {r.variant} | {r.teacher} | {r.other} | {fmt(r.mean_ours)} ± {fmt(r.std_ours)} | "
                     f"{fmt(r.mean_other)} ± {fmt(r.std_other)} | {fmt(diff)} | {fmt(r.t)} | {fmt(r.p, 4)} | "
                     f"{('yes' if r.direction else 'no') if r.complete else '…'} | {sig} |")
    done = [r for r in rows if r.complete]

    def named(subset: Sequence[RegimeRow]) -> str:
        return "; ".join(f"{r.variant} against `{r.other}` (p = {fmt(r.p, 4)})" for r in subset) or "none"

    lines += [f"\nComputed from the rows above ({len(done)} of {len(rows)} comparisons complete):",
              f"- the paper's direction appears in: {named([r for r in done if r.direction])};",
              f"- `{PAPER_METHOD}` has a significantly lower mean in: {named([r for r in done if r.wins])};",
              f"- it has a significantly higher mean in: {named([r for r in done if r.loses])}."]
    return lines


# --- convergence curves -------------------------------------------------------------------------------------


def curves_table(c: Curves) -> list[str]:
    lines = ["| step | " + " | ".join(c.names) + " |", "|---|" + "---|" * len(c.names)]
    for s in c.steps:
        lines.append(f"| {s} | " + " | ".join(p.fid_text if (p := c.at(n, s)) else MISSING for n in c.names) + " |")
    lines.append("\nTraining step time (evaluation excluded; on a shared machine, so it varies with the load), ms: "
                 + ", ".join(f"{n} {v:.0f}" for n, v in c.step_ms.items()) + ".")
    return lines


def summary_line(s: CurveSummary) -> str:
    s0, s1 = s.last_interval
    line = f"- {s.name}: {s.last_interval_drop:.1f}% lower over its last {s1 - s0} steps ({s0} → {s1})"
    if s.last_quarter:
        line += f", {s.last_quarter_drop:.1f}% over its last quarter ({s.last_quarter[0]} → {s1})"
    line += f"; lowest FID {s.lowest_fid:.2f} at step {s.lowest_step}"
    if s.budget is not None:
        line += f"; {s.budget_drop:.1f}% lower at step {s1} than at the budget ({s.budget})"
    return line + "."


def noise_table(rows: Sequence[NoiseRow]) -> list[str]:
    lines = ["\nThe resolution of a point (`bench/convergence.py noise`): each curve's last checkpoint sampled and "
             "scored again with several sampling seeds (0, 1, …; the curve's own points all use seed 0). Its FID "
             "moves this much with the sampling seed alone:\n",
             "| curve | step | sampling seeds | FID mean ± std | min – max | change over the curve's last interval |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        last = f"{r.last_change[0]:.2f} lower ({r.last_change[1]} → {r.last_change[2]})" if r.last_change else MISSING
        lines.append(f"| {r.name} | {r.step} | {r.seeds} | {r.mean:.2f} ± {fmt(r.std)} | {r.low:.2f} – {r.high:.2f} | "
                     f"{last} |")
    return lines


def reproduction_lines(study: str, rows: Sequence[ReproductionRow]) -> list[str]:
    if not rows:
        return []
    lines = [f"\nThe same run through the service: the curve at the study's step count against the study "
             f"`{study}`'s job of the same seed, teacher and method (the seed fixes everything):\n"]
    for r in rows:
        lines.append(f"- {r.name}: curve {r.curve_fid:.4f} at step {r.step}, study job {r.job_id} "
                     f"(seed 0, teacher {r.teacher}) {r.job_fid:.4f}")
    return lines


# --- study presets ------------------------------------------------------------------------------------------


def _teacher_plan(t: Any) -> str:
    made = {"preset": f"preset `{t.preset}`", "local": f"local folder `{t.folder}`",
            "pruned": f"`{t.base}` pruned at {t.prune_ratio}, retrained"}[t.source]
    return made + (f"; shipped as `{t.shipped}` (`--retrain`: trained afresh)" if t.shipped else "")


def preset_lines(name: str, preset: Any, requests: Sequence[Mapping[str, Any]]) -> list[str]:
    """A study preset's plan: its teachers, its studies (the requests it submits), the command that runs it."""
    lines = [f"**`{name}`** — {preset.description} *Label: {preset.label}.* "
             f"{preset.jobs} distillation jobs{' (needs GPUs)' if preset.needs_gpu else ''}.\n",
             "| teacher | source | training |", "|---|---|---|"]
    for t in preset.teachers:
        train = ", ".join(f"{k} {v}" for k, v in t.train.items()) or MISSING
        lines.append(f"| `{t.name}` | {_teacher_plan(t)} | {train} |")
    lines += ["", "| study | teachers | methods | seeds | student ratio | options |", "|---|---|---|---|---|---|"]
    for body in requests:
        opts = {k: v for k, v in body.items()
                if k not in ("name", "teachers", "methods", "seeds", "student_ratio", "dataset", "axes")}
        axes = "".join(f"; axis {a}: {', '.join(map(str, v))}" for a, v in body.get("axes", {}).items())
        lines.append(f"| `{body['name']}` | {', '.join(body['teachers'])} | {', '.join(body['methods'])} | "
                     f"{len(body['seeds'])} | {body['student_ratio']} | "
                     + ", ".join(f"{k} {v}" for k, v in opts.items()) + axes + " |")
    lines.append(f"\n```bash\nliftplace study run {name} --api http://127.0.0.1:8000\n```\n")
    return lines
