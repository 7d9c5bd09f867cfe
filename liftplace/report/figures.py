"""The report's PNG plots (matplotlib, loaded when a plot is drawn)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from liftplace.report.compute import find_cell, metric_label, succeeded_fids

MARKERS = {"outkd": "s", "outkd+featkd": "^", "lift+place+featkd": "o"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _pyplot().close(fig)


def capacity_plot(table: Mapping[str, Any], teacher_params: Mapping[str, int | None], path: Path,
                  title: str) -> None:
    """Student FID against teacher parameters (log-log): each method's seeds (dots) and mean ± std (line)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    teachers = sorted(table["teachers"], key=lambda t: teacher_params.get(t) or 0)
    for i, method in enumerate(table["methods"]):
        marker, color = MARKERS.get(method, "o"), f"C{i}"
        xs, means, stds = [], [], []
        for t in teachers:
            cell = find_cell(table, t, method)
            if cell is None:
                continue
            x = (teacher_params.get(t) or 0) * (1 + 0.04 * (i - 1))  # side by side: the methods' seeds do not overlap
            fids = succeeded_fids(cell)
            ax.scatter([x] * len(fids), fids, s=12, alpha=0.45, marker=marker, color=color)
            if cell["mean"] is not None:
                xs.append(x)
                means.append(cell["mean"])
                stds.append(cell["std"] or 0.0)
        if xs:
            ax.errorbar(xs, means, yerr=stds, marker=marker, capsize=4, color=color, label=f"{method} (mean ± std)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("teacher parameters (log scale)")
    ax.set_ylabel(f"{metric_label(table)} of the students (log scale)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def ablation_plot(points: Sequence[tuple[str, Sequence[float], float | None, float | None]], path: Path, title: str,
                  metric: str) -> None:
    """One column per (variant, method): its seeds' FIDs (dots) and their mean ± std (bar)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(points) + 1.5), 3.8), dpi=120)
    for i, (_, fids, mean, std) in enumerate(points):
        ax.scatter([i] * len(fids), fids, s=14, alpha=0.5, color=f"C{i}")
        if mean is not None:
            ax.errorbar([i + 0.15], [mean], yerr=[std or 0.0], marker="o", capsize=4, color=f"C{i}")
    ax.set_xticks(range(len(points)), [p[0] for p in points], fontsize=8)
    ax.set_ylabel(f"{metric} of the students")
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    _save(fig, path)
