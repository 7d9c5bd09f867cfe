"""Write a study's results into docs/results.md from a liftplace service's data (no number typed by hand).

Fetches the study (by name), its Table-6 grid (`/api/studies/{id}/table`), its jobs
and its teachers from the REST API, then writes between the markers
``<!-- report:SECTION:begin -->`` and ``<!-- report:SECTION:end -->`` of the results page:
the study and MLflow ids, the teachers with their FID against the real-vs-real FID, the grid,
Welch's t-tests of the paper's method against each baseline under every teacher, a verdict
computed from those numbers, job timings, and a capacity-gap plot (PNG under docs/figures/).

    python scripts/results_report.py --api http://127.0.0.1:8000 --study stability
    python scripts/results_report.py --convergence runs/conv-s/convergence.csv --section convergence
    python scripts/results_report.py --api http://127.0.0.1:8000 --ablation ablation-group-size
    python scripts/results_report.py --fragment gpu.md --section gpu-estimate  # from gpu_estimate.py --markdown

With ``--convergence`` it renders a convergence curve CSV of bench/convergence.py (FID against
steps per method) and copies its plot instead. Needs matplotlib for the plot.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import shutil
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "docs" / "results.md"
FIGURES = ROOT / "docs" / "figures"
BASELINES = ("outkd", "outkd+featkd")


def _spec_defaults() -> dict[str, Any]:
    """FID settings of a job that did not set them: the job spec's defaults."""
    import dataclasses

    from worker.spec import JobSpec

    fields = {f.name: f.default for f in dataclasses.fields(JobSpec)}
    return {k: fields[k] for k in ("fid_samples", "sample_steps")}
SIGNIFICANCE = 0.05  # two-sided Welch's t-test level used in the verdict


# --- the service ---------------------------------------------------------------------------------


class Api:
    def __init__(self, base: str, timeout: float = 30.0):
        import httpx

        self.client = httpx.Client(base_url=base.rstrip("/"), timeout=timeout)
        token = os.environ.get("LIFTPLACE_API_TOKEN")
        if token:
            self.client.headers["authorization"] = f"Bearer {token}"

    def get(self, path: str, **params: Any) -> Any:
        r = self.client.get(path, params=params)
        r.raise_for_status()
        return r.text if "json" not in r.headers.get("content-type", "") else r.json()

    def study(self, name: str) -> dict[str, Any]:
        offset = 0
        while True:
            page = self.get("/api/studies", limit=500, offset=offset)
            for s in page["items"]:
                if s["name"] == name or str(s["id"]) == name:
                    return s
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                raise SystemExit(f"--study: no study named {name!r} on the service")

    def jobs(self, study_id: int) -> list[dict[str, Any]]:
        items, offset = [], 0
        while True:
            page = self.get("/api/jobs", study=study_id, limit=500, offset=offset)
            items += page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return items


# --- helpers -------------------------------------------------------------------------------------


def _ts(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _params(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n / 1e3:.1f}K"


def real_vs_real(resolution: int, num_samples: int, seed: int = 0) -> dict[str, float]:
    """Real-vs-real FIDs (digits features) to read a model's FID against.

    `halves`: two disjoint random halves of the digits (fresh samples of the same distribution);
    `subset`: `num_samples` real digits against the whole set they belong to (what a model that
    copied its training set would score).
    """
    import torch

    torch.set_num_threads(1)
    from liftplace.data import load_digits
    from liftplace.fid import compute_fid

    data = load_digits(resolution)
    idx = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed))
    half = data.shape[0] // 2
    return {
        "halves": compute_fid(data[idx[:half]], data[idx[half:]]).fid,
        "halves_n": float(half),
        "subset": compute_fid(data[idx[:num_samples]], "digits").fid,
        "subset_n": float(min(num_samples, data.shape[0])),
    }


def replace_section(path: Path, section: str, body: str) -> None:
    begin, end = f"<!-- report:{section}:begin -->", f"<!-- report:{section}:end -->"
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


# --- the study report ----------------------------------------------------------------------------


def _succeeded_fids(cell: dict[str, Any]) -> list[float]:
    """The FIDs of a grid cell's tries that succeeded (seed order)."""
    return [t["fid"] for t in cell.get("tries", []) if t["status"] == "succeeded" and t["fid"] is not None]


def _job_span(jobs: list[dict[str, Any]]) -> tuple[datetime, datetime, float] | None:
    """First start, last end and the wall time between them (s) of some jobs; None before any ended."""
    started = [d for j in jobs if (d := _ts(j["started_at"]))]
    finished = [d for j in jobs if (d := _ts(j["finished_at"]))]
    if not (started and finished):
        return None
    return min(started), max(finished), (max(finished) - min(started)).total_seconds()


def _welch(a: list[float], b: list[float]):
    from liftplace.stats import welch_t_test

    if len(a) < 2 or len(b) < 2:
        return None
    return welch_t_test(a, b)


def capacity_plot(table: dict[str, Any], teacher_params: dict[str, int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    markers = {"outkd": "s", "outkd+featkd": "^", "lift+place+featkd": "o"}
    teachers = sorted(table["teachers"], key=lambda t: teacher_params.get(t) or 0)
    for i, method in enumerate(table["methods"]):
        xs, means, stds = [], [], []
        for t in teachers:
            cell = next((c for c in table["cells"] if c["teacher"] == t and c["method"] == method), None)
            if cell is None:
                continue
            x = teacher_params.get(t) or 0
            fids = _succeeded_fids(cell)
            jitter = 1 + 0.04 * (i - 1)  # side by side, so the seeds of different methods do not overlap
            ax.scatter([x * jitter] * len(fids), fids, s=12, alpha=0.45, marker=markers.get(method, "o"),
                       color=f"C{i}")
            if cell["mean"] is not None:
                xs.append(x * jitter)
                means.append(cell["mean"])
                stds.append(cell["std"] or 0.0)
        if xs:
            ax.errorbar(xs, means, yerr=stds, marker=markers.get(method, "o"), capsize=4, color=f"C{i}",
                        label=f"{method} (mean ± std)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("teacher parameters (log scale)")
    ax.set_ylabel(f"{table.get('metric') or 'fid'} of the students (log scale)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def same_cells(api: Api, study: dict[str, Any], table: dict[str, Any], other_name: str) -> list[str]:
    """The cells this study shares with another (same teacher and method): seed by seed, and Welch's t-test.

    With the same options the FIDs must repeat (a seed fixes a run); with different options (an
    ablation's variant) the t-test compares them.
    """
    other = api.study(other_name)
    other_table = api.get(f"/api/studies/{other['id']}/table")
    differ = {k: (v, other["options"].get(k)) for k, v in study["options"].items() if other["options"].get(k) != v}
    out = [f"\nAgainst study `{other_name}` (id {other['id']}), same teacher and method; options that differ: "
           + (", ".join(f"{k} {a} here, {b} there" for k, (a, b) in differ.items()) or "none") + ".\n",
           "| teacher | method | mean ± std here | mean ± std there | largest per-seed difference | t | p |",
           "|---|---|---|---|---|---|---|"]
    rows = 0
    for c in table["cells"]:
        o = next((x for x in other_table["cells"] if x["teacher"] == c["teacher"] and x["method"] == c["method"]), None)
        if o is None:
            continue
        mine = {t["seed"]: t["fid"] for t in c["tries"] if t["status"] == "succeeded" and t["fid"] is not None}
        theirs = {t["seed"]: t["fid"] for t in o["tries"] if t["status"] == "succeeded" and t["fid"] is not None}
        seeds = sorted(set(mine) & set(theirs))
        if not seeds:
            continue
        worst = max(abs(mine[s] - theirs[s]) for s in seeds)
        w = _welch(list(mine.values()), list(theirs.values())) if worst > 0 else None
        out.append(f"| {c['teacher']} | {c['method']} | {_fmt(c['mean'])} ± {_fmt(c['std'])} | "
                   f"{_fmt(o['mean'])} ± {_fmt(o['std'])} | {worst:.4f} | {_fmt(w.statistic if w else None)} | "
                   f"{_fmt(w.pvalue if w else None, 4)} |")
        rows += 1
    return out if rows else []


def teacher_lines(api: Api, study: dict[str, Any], table: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
    """The study's teachers (source, size, FID against the real-vs-real FID) and their parameter counts."""
    teachers = {t["name"]: t for t in api.get("/api/teachers")}
    opts = study["options"]
    resolution = int(opts.get("resolution") or 8)
    fid_samples = int(opts.get("fid_samples") or 1000)
    lines: list[str] = []
    rvr = real_vs_real(resolution, fid_samples) if study["dataset"] == "digits" else None
    lines.append("**Teachers** (trained by the service; FID of the EMA teacher on its job's samples):\n")
    lines.append("| teacher | source | parameters | training steps | teacher FID | teacher FID / real-vs-real |")
    lines.append("|---|---|---|---|---|---|")
    teacher_params: dict[str, int] = {}
    for tname in study["teachers"]:
        t = teachers.get(tname, {})
        teacher_params[tname] = t.get("parameters") or 0
        tjob = api.get(f"/api/jobs/{t['job_id']}") if t.get("job_id") else {}
        src = t.get("source", "?")
        if src == "preset":
            src = f"preset `{t.get('preset')}`"
        elif src == "pruned":
            src = f"pruned {t.get('prune_ratio')} of {t.get('base_teacher')}, retrained"
        ratio = tjob.get("fid") / rvr["halves"] if rvr and tjob.get("fid") else None
        t_opts = {**_spec_defaults(), **{k: v for k, v in tjob.get("options", {}).items() if v is not None}}
        lines.append(f"| {tname} | {src} | {_params(t.get('parameters'))} | {tjob.get('steps', '–')} | "
                     f"{_fmt(tjob.get('fid'))} ({t_opts['fid_samples']} samples, {t_opts['sample_steps']} DDIM "
                     f"steps) | {_fmt(ratio)}× |")
    if rvr:
        lines.append(f"\nReal vs real ({table.get('metric') or 'fid'}, {resolution}×{resolution}): two disjoint halves "
                     f"of the digits ({rvr['halves_n']:.0f} images each) {rvr['halves']:.2f}; {rvr['subset_n']:.0f} "
                     f"real digits against the whole set they are part of {rvr['subset']:.2f} (a model that "
                     "copied its training set).")
    return lines, teacher_params


def previous_cells(rev: str, section: str, results: Path = DEFAULT_RESULTS, repo: Path = ROOT
                   ) -> dict[tuple[str, str], list[float]]:
    """The per-seed FIDs of a section's grid as an earlier commit of the results page published them.

    Reads `git show REV:<page>`; returns {(teacher, method): [FID per seed]} for the grid's rows
    whose seeds all succeeded.
    """
    import re
    import subprocess

    from liftplace.methods import METHOD_NAMES

    rel = results.resolve().relative_to(repo.resolve())
    done = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{rel.as_posix()}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"--previous: cannot read {rel} at {rev!r}: {done.stderr.strip()}")
    text = done.stdout
    begin, end = f"<!-- report:{section}:begin -->", f"<!-- report:{section}:end -->"
    if begin not in text:
        raise SystemExit(f"--previous: section {section!r} is not in {rel} at {rev}")
    body = text.split(begin, 1)[1].split(end, 1)[0]
    cells: dict[tuple[str, str], list[float]] = {}
    teacher, in_grid = None, False
    for line in body.splitlines():
        if line.startswith("**"):
            in_grid = line.startswith("**The Table-6 grid")
        elif in_grid and (m := re.match(r"\*Teacher (\S+) \(", line)):
            teacher = m.group(1)
        elif in_grid and teacher and line.startswith("| "):
            parts = [x.strip().strip("*") for x in line.strip().strip("|").split("|")]
            if parts[0] in METHOD_NAMES:
                try:
                    cells[(teacher, parts[0])] = [float(x) for x in parts[1:-3]]
                except ValueError:
                    continue  # a seed that did not succeed
    return cells


def previous_comparison(table: dict[str, Any], rev: str, section: str, results: Path = DEFAULT_RESULTS,
                        repo: Path = ROOT) -> list[str]:
    """This study's cells against the same section of the page at `rev` (e.g. an earlier machine's run)."""
    old = previous_cells(rev, section, results, repo)
    out = [f"\nAgainst this section as published at commit `{rev}` (an earlier run of the same command): the same "
           "teacher and method, mean ± sample std here and there, Welch's t-test, and whether the means differ "
           "by less than the larger of the two seed stds (*within the seed spread*).\n",
           "| teacher | method | mean ± std here | mean ± std there | t | p | within the seed spread |",
           "|---|---|---|---|---|---|---|"]
    rows = 0
    for c in table["cells"]:
        there = old.get((c["teacher"], c["method"]))
        here = _succeeded_fids(c)
        if not there or len(here) < 2 or len(there) < 2:
            continue
        w = _welch(here, there)
        m_there, s_there = statistics.mean(there), statistics.stdev(there)
        within = abs(c["mean"] - m_there) < max(c["std"] or 0.0, s_there)
        out.append(f"| {c['teacher']} | {c['method']} | {_fmt(c['mean'])} ± {_fmt(c['std'])} | {_fmt(m_there)} ± "
                   f"{_fmt(s_there)} | {_fmt(w.statistic if w else None)} | {_fmt(w.pvalue if w else None, 4)} | "
                   f"{'yes' if within else 'no'} |")
        rows += 1
    return out if rows else [f"\nNo cell of this study is in section {section!r} at commit `{rev}`."]


def study_report(api: Api, name: str, preset_name: str | None, figure: Path, section: str | None = None,
                 same_as: str | None = None, previous: str | None = None) -> str:
    from liftplace.methods import PAPER_METHOD
    from liftplace.stats import COLLAPSE_FID_THRESHOLD

    study = api.study(name)
    sid = study["id"]
    table = api.get(f"/api/studies/{sid}/table")
    jobs = api.jobs(sid)
    opts = study["options"]
    lines: list[str] = []
    label = ""
    if preset_name:
        from liftplace.studies import get_study_preset

        label = get_study_preset(preset_name).label
        lines.append(f"*{label}*\n")

    span = _job_span(jobs)
    counts = study["status_counts"]
    lines.append(f"Study **{study['name']}** (service study id {sid}, MLflow experiment "
                 f"{study['mlflow_experiment_id']}, parent run `{study['mlflow_run_id']}`): {study['jobs']} jobs, "
                 + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + ".")
    if span:
        first, last, wall = span
        lines.append(f"First job started {first:%Y-%m-%d %H:%M} UTC, last ended {last:%H:%M} UTC: "
                     f"{wall / 60:.0f} min of wall time for the distillation jobs.")
    lines.append(f"Options shared by every job: student ratio {study['student_ratio']}, "
                 + ", ".join(f"{k} {v}" for k, v in sorted(opts.items()) if v is not None) + ".\n")

    teacher_rows, teacher_params = teacher_lines(api, study, table)
    lines += teacher_rows

    # students
    student_params: dict[str, list[float]] = {}
    durations: dict[str, list[float]] = {}
    for j in jobs:
        if j["status"] == "succeeded":
            p = j["metrics"].get("student_parameters")
            if p:
                student_params.setdefault(j["teacher"], []).append(p)
            if j["metrics"].get("duration_s"):
                durations.setdefault(j["teacher"], []).append(j["metrics"]["duration_s"])
    fixed = opts.get("student_teacher")
    if fixed:
        lines.append(f"\n**Students** (one fixed student, as in the paper: pruned from `{fixed}` at ratio "
                     f"{study['student_ratio']} by every job — same ratio, importance and seed — whichever teacher "
                     "it distils from):\n")
    else:
        lines.append("\n**Students** (pruned from their teacher, so their size follows the teacher's):\n")
    lines.append("| teacher | student parameters | share of the teacher | median job time (s) |")
    lines.append("|---|---|---|---|")
    for tname in study["teachers"]:
        sp = student_params.get(tname)
        share = (100 * statistics.median(sp) / teacher_params[tname]) if sp and teacher_params.get(tname) else None
        lines.append(f"| {tname} | {_params(int(statistics.median(sp))) if sp else '?'} | {_fmt(share)}% | "
                     f"{_fmt(statistics.median(durations[tname]) if durations.get(tname) else None, 0)} |")

    def fids(teacher: str, method: str) -> list[float]:
        cell = next((c for c in table["cells"] if c["teacher"] == teacher and c["method"] == method), None)
        return [tr["fid"] for tr in (cell or {}).get("tries", []) if tr["status"] == "succeeded" and tr["fid"]]

    def cell_of(teacher: str, method: str) -> dict[str, Any]:
        return next((c for c in table["cells"] if c["teacher"] == teacher and c["method"] == method), {})

    # the grid
    lines.append(f"\n**The Table-6 grid** ({table.get('metric') or 'fid'}, lower is better; per teacher and method: "
                 "the tries by seed, their mean and sample std (ddof = 1) over the succeeded runs, and the collapses "
                 f"— runs that diverged or scored above {COLLAPSE_FID_THRESHOLD:g}, the service's threshold, set "
                 "for the paper's Inception scale; best mean in bold):\n")
    seeds = study["seeds"]
    for tname in study["teachers"]:
        lines.append(f"*Teacher {tname} ({_params(teacher_params.get(tname))}):*\n")
        lines.append("| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std | collapses |")
        lines.append("|---|" + "---:|" * (len(seeds) + 3))
        best = set(table["best"].get(tname, []))
        for method in table["methods"]:
            c = cell_of(tname, method)
            by_seed = {tr["seed"]: tr for tr in c.get("tries", [])}
            tries = []
            for s in seeds:
                tr = by_seed.get(s)
                if tr is None or tr["status"] in ("queued", "running"):
                    tries.append("…" if tr else "")
                elif tr["status"] == "succeeded":
                    tries.append(_fmt(tr["fid"]))
                else:
                    tries.append(tr["status"])
            mean = _fmt(c.get("mean"))
            collapses = c.get("collapses", 0) if c.get("n") or c.get("collapses") else ""
            lines.append(f"| {method} | " + " | ".join(tries) + f" | {f'**{mean}**' if method in best else mean} | "
                         f"{_fmt(c.get('std'))} | {collapses} |")
        lines.append("")
    if any(tr["status"] in ("queued", "running") for c in table["cells"] for tr in c["tries"]):
        lines.append("(… : still queued or running.)")

    # Welch
    # against the baselines of Table 6 when the study has them, else against every other method (ablations)
    others = [m for m in BASELINES if m in table["methods"]] or [m for m in table["methods"] if m != PAPER_METHOD]
    if PAPER_METHOD not in table["methods"]:
        others = []
    if others:
        lines.append(f"\n**Welch's t-tests** (two-sided, unequal variances) of `{PAPER_METHOD}` against each other "
                     "method; negative t: the paper's method has the lower mean FID.\n")
        lines.append("| teacher | other method | mean FID other | mean FID ours | t | df | p |")
        lines.append("|---|---|---|---|---|---|---|")
        verdicts: dict[tuple[str, str], tuple[bool, bool, float | None]] = {}
        for tname in study["teachers"]:
            ours = fids(tname, PAPER_METHOD)
            for b in others:
                base = fids(tname, b)
                w = _welch(ours, base)
                co, cb = cell_of(tname, PAPER_METHOD), cell_of(tname, b)
                lower_mean = co.get("mean") is not None and cb.get("mean") is not None and co["mean"] < cb["mean"]
                lower_std = co.get("std") is not None and cb.get("std") is not None and co["std"] < cb["std"]
                verdicts[(tname, b)] = (lower_mean, lower_std, w.pvalue if w else None)
                lines.append(f"| {tname} | {b} | {_fmt(w.mean_b if w else cb.get('mean'))} | "
                             f"{_fmt(w.mean_a if w else co.get('mean'))} | {_fmt(w.statistic if w else None)} | "
                             f"{_fmt(w.df if w else None, 1)} | {_fmt(w.pvalue if w else None, 4)} |")

        # verdict, computed
        largest = max(study["teachers"], key=lambda t: teacher_params.get(t) or 0)
        lines.append(f"\n**Verdict (computed from the numbers above)** — with the largest teacher ({largest}):")
        compared = others
        complete = all(cell_of(largest, m).get("complete") for m in (PAPER_METHOD, *compared))
        for b in compared:
            lower_mean, lower_std, p = verdicts[(largest, b)]
            if p is None:
                lines.append(f"- against `{b}`: not enough finished seeds yet to compare.")
                continue
            sig = f"{'significant' if p < SIGNIFICANCE else 'not significant'} at p < {SIGNIFICANCE}"
            lines.append(f"- against `{b}`: `{PAPER_METHOD}` has a {'lower' if lower_mean else 'higher or equal'} "
                         f"mean FID ({sig}, p = {_fmt(p, 4)}) and a {'lower' if lower_std else 'higher or equal'} "
                         "seed std.")
        both = all(verdicts[(largest, b)][0] and verdicts[(largest, b)][1] for b in compared)
        significant = all((verdicts[(largest, b)][2] or 1.0) < SIGNIFICANCE for b in compared)
        if not complete:
            lines.append("- the cells of the largest teacher are not complete yet: **no verdict** (re-run this report "
                         "when the study has ended).")
        else:
            lines.append("- the paper's direction (lower mean **and** lower std than every other method with the "
                         f"largest teacher) **{'appears' if both else 'does not appear'}**"
                         + (f"; the mean differences are {'all' if significant else 'not all'} significant at "
                            f"p < {SIGNIFICANCE}" if both else "") + ".")

    if same_as:
        lines += same_cells(api, study, table, same_as)
    if previous:
        lines += previous_comparison(table, previous, section or study["name"])
    if len(study["teachers"]) > 1:
        title = f"{study['name']} (study {sid}): student FID vs teacher size"
        capacity_plot(table, teacher_params, figure, title)
        rel = os.path.relpath(figure, DEFAULT_RESULTS.parent)
        lines.append(f"\n![capacity gap: student FID against teacher parameters]({rel})\n")
        lines.append("*Capacity-gap plot: each method's mean ± sample std over the seeds (line), and every seed "
                     f"(dots), against the teacher's parameters; file `{os.path.relpath(figure, ROOT)}`.*")
    lines.append(f"\nGenerated by `python scripts/results_report.py --api URL --study {study['name']}"
                 + (f" --preset {preset_name}" if preset_name else "") + (f" --section {section}" if section else "")
                 + (f" --same-as {same_as}" if same_as else "") + (f" --previous {previous}" if previous else "")
                 + "` from the service's data "
                 f"(report written on {platform.machine()} with {os.cpu_count()} CPUs).")
    return "\n".join(lines)


def ablation_report(api: Api, preset_name: str, figure: Path, section: str) -> str:
    """All the studies of an ablation preset (one per variant) as one table, each row against the reference.

    A row is a variant's method (its seeds, mean, sample std, collapses); the reference is the
    variant whose options are the method's defaults (the job spec's), or the first variant. Each
    other row gets Welch's t-test against the reference row of the same method.
    """
    import dataclasses

    from liftplace.stats import COLLAPSE_FID_THRESHOLD
    from liftplace.studies import get_study_preset
    from worker.spec import JobSpec

    preset = get_study_preset(preset_name)
    spec_defaults = {f.name: f.default for f in dataclasses.fields(JobSpec)}
    reference = next((v for v in preset.variants
                      if all(spec_defaults.get(k, object()) == val for k, val in v.options.items())),
                     preset.variants[0])
    studies, tables, all_jobs = [], [], []
    for body in preset.study_requests(preset.name):
        study = api.study(body["name"])
        studies.append(study)
        tables.append(api.get(f"/api/studies/{study['id']}/table"))
        all_jobs += api.jobs(study["id"])

    lines = [f"*{preset.label}*\n"]
    lines.append(f"Preset **{preset.name}**: {preset.description}\n")
    lines.append("| variant | study | jobs | MLflow parent run |")
    lines.append("|---|---|---|---|")
    for variant, study in zip(preset.variants, studies, strict=True):
        counts = ", ".join(f"{v} {k}" for k, v in study["status_counts"].items() if v)
        lines.append(f"| {variant.suffix} | `{study['name']}` (id {study['id']}) | {study['jobs']}: {counts} | "
                     f"`{study['mlflow_run_id']}` |")
    span = _job_span(all_jobs)
    if span:
        first, last, wall = span
        lines.append(f"\nFirst job started {first:%Y-%m-%d %H:%M} UTC, last ended {last:%H:%M} UTC "
                     f"({wall / 60:.0f} min of wall time for the {len(all_jobs)} distillation jobs).")
    varied = sorted({k for v in preset.variants for k in v.options})
    shared = {k: v for k, v in sorted(studies[0]["options"].items()) if v is not None and k not in varied}
    lines.append(f"Options shared by every job: student ratio {studies[0]['student_ratio']}, "
                 + ", ".join(f"{k} {v}" for k, v in shared.items()) + "; varied: " + ", ".join(varied) + ".\n")
    teacher_rows, _ = teacher_lines(api, studies[0], tables[0])
    lines += teacher_rows

    seeds = studies[0]["seeds"]
    lines.append(f"\n**The ablation** ({tables[0].get('metric') or 'fid'}, lower is better; the tries by seed, their "
                 "mean and sample std (ddof = 1) over the succeeded runs, and the collapses — runs that diverged or "
                 f"scored above {COLLAPSE_FID_THRESHOLD:g}; Welch's t-test of each row against the reference "
                 f"variant `{reference.suffix}` (the defaults), same method; negative t: lower mean FID than the "
                 "reference):\n")
    lines.append("| variant | teacher | method | " + " | ".join(f"seed {s}" for s in seeds)
                 + " | mean | std | collapses | t | p |")
    lines.append("|---|---|---|" + "---:|" * (len(seeds) + 5))
    ref_table = tables[preset.variants.index(reference)]

    points: list[tuple[str, list[float], float | None, float | None]] = []
    for variant, table in zip(preset.variants, tables, strict=True):
        for c in table["cells"]:
            by_seed = {t["seed"]: t for t in c["tries"]}
            tries = [("…" if by_seed[s]["status"] in ("queued", "running") else
                      _fmt(by_seed[s]["fid"]) if by_seed[s]["status"] == "succeeded" else by_seed[s]["status"])
                     if s in by_seed else "" for s in seeds]
            ref = next((r for r in ref_table["cells"] if r["teacher"] == c["teacher"] and r["method"] == c["method"]),
                       None)
            compared = ref is not None and variant is not reference
            w = _welch(_succeeded_fids(c), _succeeded_fids(ref)) if compared else None
            label = f"**{variant.suffix}** (reference)" if variant is reference else variant.suffix
            lines.append(f"| {label} | {c['teacher']} | {c['method']} | " + " | ".join(tries)
                         + f" | {_fmt(c['mean'])} | {_fmt(c['std'])} | {c.get('collapses', 0)} | "
                         f"{_fmt(w.statistic if w else None)} | {_fmt(w.pvalue if w else None, 4)} |")
            points.append((f"{variant.suffix}\n{c['method']}" if len(table["methods"]) > 1 else variant.suffix,
                           _succeeded_fids(c), c["mean"], c["std"]))
    if any(t["status"] in ("queued", "running") for tb in tables for c in tb["cells"] for t in c["tries"]):
        lines.append("\n(… : still queued or running.)")
    ablation_plot(points, figure, f"{preset.name}: student FID per variant ({len(seeds)} seeds)",
                  tables[0].get("metric") or "fid")
    rel = os.path.relpath(figure, DEFAULT_RESULTS.parent)
    lines.append(f"\n![{preset.name}: FID per variant]({rel})\n")
    lines.append(f"*Each variant's seeds (dots) and mean ± sample std (bar); file `{os.path.relpath(figure, ROOT)}`.*")
    lines.append(f"\nGenerated by `python scripts/results_report.py --api URL --ablation {preset.name} --section "
                 f"{section}` from the service's data (report written on {platform.machine()} with "
                 f"{os.cpu_count()} CPUs).")
    return "\n".join(lines)


def ablation_plot(points: list[tuple[str, list[float], float | None, float | None]], path: Path, title: str,
                  metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(points) + 1.5), 3.8), dpi=120)
    for i, (_, fids, mean, std) in enumerate(points):
        ax.scatter([i] * len(fids), fids, s=14, alpha=0.5, color=f"C{i}")
        if mean is not None:
            ax.errorbar([i + 0.15], [mean], yerr=[std or 0.0], marker="o", capsize=4, color=f"C{i}")
    ax.set_xticks(range(len(points)), [p[0] for p in points], fontsize=8)
    ax.set_ylabel(f"{metric} of the students")
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def convergence_summary(rows: list[dict[str, str]], budget: int | None) -> list[str]:
    """Per curve: how much the FID still fell over its last interval and after `budget` (computed, not judged)."""
    out = []
    for name in dict.fromkeys(r["name"] for r in rows):
        pts = sorted((int(r["step"]), float(r["fid_digits"])) for r in rows if r["name"] == name)
        if len(pts) < 2:
            continue
        (s0, f0), (s1, f1) = pts[-2], pts[-1]
        line = (f"- {name}: {100 * (f0 - f1) / f0:.1f}% lower over its last {s1 - s0} steps ({s0} → {s1})")
        # the last quarter of the curve: less noisy than one interval (each point is one FID estimate)
        sq, fq = next((s, f) for s, f in pts if s >= 0.75 * s1)
        if sq < s0:
            line += f", {100 * (fq - f1) / fq:.1f}% over its last quarter ({sq} → {s1})"
        best_step, best = min(pts, key=lambda p: p[1])
        line += f"; lowest FID {best:.2f} at step {best_step}"
        at = dict(pts)
        if budget in at and budget != s1:
            line += f"; {100 * (at[budget] - f1) / at[budget]:.1f}% lower at step {s1} than at the budget ({budget})"
        out.append(line + ".")
    return out


def noise_summary(rows: list[dict[str, str]], noise: list[dict[str, str]]) -> list[str]:
    """The FID of each curve's last checkpoint under several sampling seeds, against the curve's last change."""
    out = ["\nThe resolution of a point (`bench/convergence.py noise`): each curve's last checkpoint sampled and "
           "scored again with several sampling seeds (0, 1, …; the curve's own points all use seed 0). Its FID "
           "moves this much with the sampling seed alone:\n",
           "| curve | step | sampling seeds | FID mean ± std | min – max | change over the curve's last interval |",
           "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["name"] for r in noise):
        fids = [float(r["fid_digits"]) for r in noise if r["name"] == name]
        pts = sorted((int(r["step"]), float(r["fid_digits"])) for r in rows if r["name"] == name)
        last = f"{pts[-2][1] - pts[-1][1]:.2f} lower ({pts[-2][0]} → {pts[-1][0]})" if len(pts) > 1 else "–"
        sd = statistics.stdev(fids) if len(fids) > 1 else None
        step = next(r["step"] for r in noise if r["name"] == name)
        out.append(f"| {name} | {step} | "
                   f"{len(fids)} | {statistics.mean(fids):.2f} ± {_fmt(sd)} | {min(fids):.2f} – {max(fids):.2f} | "
                   f"{last} |")
    return out


def reproduction_check(rows: list[dict[str, str]], api: Api, study_name: str) -> list[str]:
    """The curve's FID at the study's step count against the study's job of the same seed, teacher and method."""
    study = api.study(study_name)
    steps = int(study["options"].get("steps") or 0)
    jobs = {(j["teacher"], j["method"], j["seed"]): j for j in api.jobs(study["id"])}
    largest = study["teachers"][0]
    out = []
    for r in rows:
        job = jobs.get((largest, r["name"], 0))
        if int(r["step"]) == steps and job and job["fid"] is not None:
            out.append(f"- {r['name']}: curve {float(r['fid_digits']):.4f} at step {steps}, study job {job['id']} "
                       f"(seed 0, teacher {largest}) {job['fid']:.4f}")
    return out


def convergence_report(csv_path: Path, figure: Path, budget: int | None = None, api: Api | None = None,
                       study: str | None = None) -> str:
    rows = list(csv.DictReader(open(csv_path)))
    names = list(dict.fromkeys(r["name"] for r in rows))
    steps = sorted({int(r["step"]) for r in rows})
    out = ["| step | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for s in steps:
        vals = []
        for n in names:
            r = next((r for r in rows if r["name"] == n and int(r["step"]) == s), None)
            vals.append(r["fid_digits"] if r else "–")
        out.append(f"| {s} | " + " | ".join(vals) + " |")
    step_ms = {n: next(float(r["step_ms"]) for r in reversed(rows) if r["name"] == n) for n in names}
    out.append("\nTraining step time (evaluation excluded; on a shared machine, so it varies with the load), ms: "
               + ", ".join(f"{n} {v:.0f}" for n, v in step_ms.items()) + ".")
    summary = convergence_summary(rows, budget)
    if summary:
        out.append("\nStill improving? The FID of each curve:\n")
        out += summary
    noise_csv = csv_path.parent / "fid_noise.csv"
    if noise_csv.is_file():
        out += noise_summary(rows, list(csv.DictReader(open(noise_csv))))
    if api is not None and study:
        check = reproduction_check(rows, api, study)
        if check:
            out.append(f"\nThe same run through the service: the curve at the study's step count against the study "
                       f"`{study}`'s job of the same seed, teacher and method (the seed fixes everything):\n")
            out += check
    src = csv_path.parent / "convergence.png"
    if src.is_file():
        figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, figure)
        out.append(f"\n![convergence: FID against steps]({os.path.relpath(figure, DEFAULT_RESULTS.parent)})")
    extra = (f" --budget {budget}" if budget else "") + (f" --study {study}" if study else "")
    out.append(f"\nGenerated by `python scripts/results_report.py --convergence {csv_path.name} --section "
               f"{figure.stem}{extra}` from the CSV of `bench/convergence.py`.")
    return "\n".join(out)


def presets_report(names: list[str], section: str) -> str:
    """The presets' plans (liftplace.studies) as tables, with the command that runs each."""
    from liftplace.studies import get_study_preset

    out: list[str] = []
    for name in names:
        p = get_study_preset(name)
        out.append(f"**`{name}`** — {p.description} *Label: {p.label}.* "
                   f"{p.jobs} distillation jobs{' (needs GPUs)' if p.needs_gpu else ''}.\n")
        out.append("| teacher | source | training |")
        out.append("|---|---|---|")
        for t in p.teachers:
            src = {"preset": f"preset `{t.preset}`", "local": f"local folder `{t.folder}`",
                   "pruned": f"`{t.base}` pruned at {t.prune_ratio}, retrained"}[t.source]
            train = ", ".join(f"{k} {v}" for k, v in t.train.items()) or "–"
            out.append(f"| `{t.name}` | {src} | {train} |")
        out.append("")
        out.append("| study | teachers | methods | seeds | student ratio | options |")
        out.append("|---|---|---|---|---|---|")
        for body in p.study_requests(name):
            opts = {k: v for k, v in body.items()
                    if k not in ("name", "teachers", "methods", "seeds", "student_ratio", "dataset")}
            out.append(f"| `{body['name']}` | {', '.join(body['teachers'])} | {', '.join(body['methods'])} | "
                       f"{len(body['seeds'])} | {body['student_ratio']} | "
                       + ", ".join(f"{k} {v}" for k, v in opts.items()) + " |")
        out.append(f"\n```bash\nliftplace study run {name} --api http://127.0.0.1:8000\n```\n")
    out.append("Generated by `python scripts/results_report.py --presets " + " ".join(names)
               + f" --section {section}` from `liftplace/studies.py`.")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api", default=os.environ.get("LIFTPLACE_API_URL", "http://127.0.0.1:8000"))
    p.add_argument("--study", help="study name (or id) on the service")
    p.add_argument("--preset", help="the study preset it ran (its label is shown)")
    p.add_argument("--convergence", type=Path, help="a convergence.csv of bench/convergence.py")
    p.add_argument("--ablation", help="an ablation study preset: all its variants' studies as one table")
    p.add_argument("--presets", nargs="+", help="study preset names: render their plans")
    p.add_argument("--budget", type=int, help="with --convergence: the study's step budget, to compare against")
    p.add_argument("--same-as", help="with --study: another study sharing cells with it; report whether they repeat")
    p.add_argument("--previous", metavar="REV", help="with --study: compare with the same section of the results "
                   "page at git commit REV (an earlier run of the same command)")
    p.add_argument("--compare-only", action="store_true", help="with --study and --same-as: write only the comparison")
    p.add_argument("--fragment", type=Path, help="a Markdown file another script wrote (e.g. bench/gpu_estimate.py "
                   "--markdown): put it in --section as it is")
    p.add_argument("--section", help="marker name in the results page (default: the study name)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    args = p.parse_args()
    if sum(map(bool, (args.convergence, args.presets, args.fragment, args.ablation))) > 1 or not any(
            (args.study, args.convergence, args.presets, args.fragment, args.ablation)):
        p.error("give one of --study, --convergence (optionally with --study), --ablation, --presets and --fragment")
    if args.ablation:
        from liftplace.studies import STUDY_PRESETS

        if len(getattr(STUDY_PRESETS.get(args.ablation), "variants", ())) < 2:
            p.error(f"--ablation: expected a study preset with several variants, one of "
                    f"{', '.join(n for n, v in STUDY_PRESETS.items() if len(v.variants) > 1)}; got {args.ablation!r}")
        section = args.section or args.ablation
        figure = FIGURES / f"{section}.png"
        replace_section(args.results, section, ablation_report(Api(args.api), args.ablation, figure, section))
        print(f"wrote section {section!r} of {args.results} and {figure}")
        return
    if args.fragment:
        if not args.section:
            p.error("--fragment needs --section")
        replace_section(args.results, args.section, args.fragment.read_text())
        print(f"wrote section {args.section!r} of {args.results}")
        return
    if args.presets:
        section = args.section or "presets"
        replace_section(args.results, section, presets_report(args.presets, section))
        print(f"wrote section {section!r} of {args.results}")
        return
    section = args.section or args.study
    figure = FIGURES / (f"{section}.png" if args.convergence else f"{section}-capacity-gap.png")
    if args.convergence:
        body = convergence_report(args.convergence, figure, args.budget, Api(args.api) if args.study else None,
                                  args.study)
    else:
        if args.compare_only:
            if not args.same_as:
                p.error("--compare-only needs --same-as")
            api = Api(args.api)
            study = api.study(args.study)
            body = "\n".join(same_cells(api, study, api.get(f"/api/studies/{study['id']}/table"), args.same_as)
                             or [f"No cell of study {args.study!r} is in study {args.same_as!r}."])
            body = body.replace("\nAgainst study", f"Study `{args.study}` (id {study['id']}) against study", 1)
            body += (f"\n\nGenerated by `python scripts/results_report.py --api URL --study {args.study} --same-as "
                     f"{args.same_as} --compare-only --section {section}`.")
        else:
            body = study_report(Api(args.api), args.study, args.preset, figure, section, args.same_as, args.previous)
    replace_section(args.results, section, body)
    print(f"wrote section {section!r} of {args.results}" + (f" and {figure}" if figure.is_file() else ""))


if __name__ == "__main__":
    main()
