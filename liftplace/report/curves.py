"""The arithmetic of a convergence section: FID-against-steps curves of ``bench/convergence.py``.

Pure functions of the CSV rows (dicts of strings, as `csv.DictReader` gives them: ``name``, ``step``,
``fid_digits``, ``step_ms``) returning frozen dataclasses; `render` writes them as Markdown.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Row = Mapping[str, str]


@dataclass(frozen=True)
class CurvePoint:
    step: int
    fid: float
    fid_text: str  # the CSV's own text of the FID, shown as it is


@dataclass(frozen=True)
class Curves:
    """Every curve of a convergence CSV (names in the CSV's order) and its last training step time (ms)."""

    names: tuple[str, ...]
    steps: tuple[int, ...]  # every step any curve has, ascending
    points: dict[str, tuple[CurvePoint, ...]]  # per name, ascending steps
    step_ms: dict[str, float]

    def at(self, name: str, step: int) -> CurvePoint | None:
        return next((p for p in self.points[name] if p.step == step), None)


def _names(rows: Sequence[Row]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(r["name"] for r in rows))


def _points(rows: Sequence[Row], name: str) -> tuple[CurvePoint, ...]:
    return tuple(sorted((CurvePoint(int(r["step"]), float(r["fid_digits"]), r["fid_digits"])
                         for r in rows if r["name"] == name), key=lambda p: p.step))  # stable: the CSV's order


def curves(rows: Sequence[Row]) -> Curves:
    names = _names(rows)
    return Curves(names=names, steps=tuple(sorted({int(r["step"]) for r in rows})),
                  points={n: _points(rows, n) for n in names},
                  step_ms={n: next(float(r["step_ms"]) for r in reversed(rows) if r["name"] == n) for n in names})


@dataclass(frozen=True)
class CurveSummary:
    """How much a curve's FID still fell at its end (percent of the earlier value; negative: it rose)."""

    name: str
    last_interval: tuple[int, int]  # its last two steps
    last_interval_drop: float
    last_quarter: tuple[int, int] | None  # from its first step in the last quarter, when that is earlier
    last_quarter_drop: float | None
    lowest_step: int
    lowest_fid: float
    budget: int | None  # a step budget to compare the end with, when the curve has it and goes past it
    budget_drop: float | None


def _drop(before: float, after: float) -> float:
    return 100 * (before - after) / before


def curve_summary(name: str, pts: Sequence[tuple[int, float]], budget: int | None) -> CurveSummary:
    """`pts`: (step, FID), ascending steps, at least two."""
    (s0, f0), (s1, f1) = pts[-2], pts[-1]
    # the last quarter of the curve: less noisy than one interval (each point is one FID estimate)
    sq, fq = next((s, f) for s, f in pts if s >= 0.75 * s1)
    lowest_step, lowest = min(pts, key=lambda p: p[1])
    at = dict(pts)
    past_budget = budget in at and budget != s1
    return CurveSummary(name, (s0, s1), _drop(f0, f1), (sq, s1) if sq < s0 else None,
                        _drop(fq, f1) if sq < s0 else None, lowest_step, lowest,
                        budget if past_budget else None, _drop(at[budget], f1) if past_budget else None)


def curve_summaries(rows: Sequence[Row], budget: int | None) -> list[CurveSummary]:
    """One summary per curve with two points or more (computed, not judged)."""
    out = []
    for name in _names(rows):
        pts = sorted((int(r["step"]), float(r["fid_digits"])) for r in rows if r["name"] == name)
        if len(pts) >= 2:
            out.append(curve_summary(name, pts, budget))
    return out


@dataclass(frozen=True)
class NoiseRow:
    """A curve's last checkpoint scored again under several sampling seeds (``bench/convergence.py noise``)."""

    name: str
    step: str
    seeds: int
    mean: float
    std: float | None  # None for one seed
    low: float
    high: float
    last_change: tuple[float, int, int] | None  # the curve's FID drop over its last interval, and that interval


def noise_rows(rows: Sequence[Row], noise: Sequence[Row]) -> list[NoiseRow]:
    out = []
    for name in _names(noise):
        fids = [float(r["fid_digits"]) for r in noise if r["name"] == name]
        pts = sorted((int(r["step"]), float(r["fid_digits"])) for r in rows if r["name"] == name)
        last = (pts[-2][1] - pts[-1][1], pts[-2][0], pts[-1][0]) if len(pts) > 1 else None
        out.append(NoiseRow(name, next(r["step"] for r in noise if r["name"] == name), len(fids),
                            statistics.mean(fids), statistics.stdev(fids) if len(fids) > 1 else None, min(fids),
                            max(fids), last))
    return out


@dataclass(frozen=True)
class ReproductionRow:
    """A curve's point at a study's step count against the study's job of the same seed, teacher and method."""

    name: str
    curve_fid: float
    step: int
    job_id: int
    teacher: str
    job_fid: float


def reproduction_rows(rows: Sequence[Row], study: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]],
                      steps: int) -> list[ReproductionRow]:
    """Seed 0 under the study's first teacher, at the study's `steps`."""
    by_cell = {(j["teacher"], j["method"], j["seed"]): j for j in jobs}
    teacher = study["teachers"][0]
    out = []
    for r in rows:
        job = by_cell.get((teacher, r["name"], 0))
        if int(r["step"]) == steps and job and job["fid"] is not None:
            out.append(ReproductionRow(r["name"], float(r["fid_digits"]), steps, job["id"], teacher, job["fid"]))
    return out
