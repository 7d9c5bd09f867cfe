"""The compact study table a terminal shows: one row per method, one column per teacher.

Each cell is the mean ± sample std (ddof = 1) of the succeeded runs' FIDs, then its markers:

- ``*``: the lowest mean under that teacher (ties: each of them);
- ``×N``: N collapses (runs that diverged or scored above the collapse threshold);
- ``n=K``: the mean is over K runs, fewer than the study's seeds (the others diverged, failed
  or did not run).

A cell without a mean says why: ``diverged`` (no run succeeded and some diverged), ``failed``
(every run broke: no collapse, the job failed), ``–`` (no run ended). A caption under the table
names the metric, the seeds and the collapse threshold. The every-try layout (the paper's
Table 6) stays `StabilityTable.render`'s.
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from liftplace.stats import RUN_STATUSES, Cell, Run, StabilityTable, build_table

__all__ = ["TERMINAL_WIDTH", "compact_cell", "compact_table", "format_axis_value", "panel_label", "render_panels",
           "table_from_service", "tables_from_service"]

TERMINAL_WIDTH: int = 120  # characters a line of the compact table aims to stay within
_GAP = "  "  # between columns
_MIN_HEADER = 8  # a shortened teacher name keeps at least this many characters


def _core(cell: Cell | None) -> tuple[str, str]:
    """The cell's value as (mean, std): a lone mean for one run; without a mean, why there is none."""
    if cell is None or not cell.runs:
        return ("–", "")
    s = cell.summary
    if s is not None:
        return (f"{s.mean:.2f}", f"{s.std:.2f}" if math.isfinite(s.std) else "")
    return ("diverged" if cell.diverged else "failed", "")  # no run succeeded: some diverged, or all broke


def _markers(cell: Cell | None, *, best: bool, seeds: int) -> tuple[str, str, str]:
    """The cell's (best, collapses, runs averaged) markers; an empty string where one does not apply."""
    if cell is None:
        return ("", "", "")
    n = cell.summary.n if cell.summary is not None else 0
    return ("*" if best else "", f"×{cell.collapses}" if cell.collapses else "",
            f"n={n}" if cell.summary is not None and n < seeds else "")


def compact_cell(cell: Cell | None, *, best: bool = False, seeds: int = 0) -> str:
    """One cell as text, e.g. ``13.20 ± 2.42 * ×1`` (see the module's docstring for the markers)."""
    mean, std = _core(cell)
    return " ".join(p for p in (f"{mean} ± {std}" if std else mean, *_markers(cell, best=best, seeds=seeds)) if p)


def _shorten(name: str, width: int) -> str:
    """`name` in at most `width` characters, its middle replaced by ``…`` (the ends tell teachers apart)."""
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return name[:head] + "…" + name[len(name) - (width - 1 - head):]


def _column(table: StabilityTable, teacher: str, seeds: int) -> list[str]:
    """A teacher's cells, one per method: means and stds aligned, each kind of marker in its own slot."""
    best = table.best(teacher)
    cells = [table.cell(m, teacher) for m in table.methods]
    rows = [(*_core(c), *_markers(c, best=m in best, seeds=seeds)) for m, c in zip(table.methods, cells, strict=True)]
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(5)]
    out = []
    for mean, std, *marks in rows:
        spread = " ± " + std.rjust(widths[1]) if std else " " * (3 + widths[1]) if widths[1] else ""
        value = mean.rjust(widths[0]) + spread
        out.append(" ".join([value, *(m.ljust(w) for m, w in zip(marks, widths[2:], strict=True) if w)]))
    return out


def _headers(names: tuple[str, ...], content: list[int], room: int) -> list[str]:
    """Teacher names as column headers: whole if the columns fit `room`, else cut to one common length."""
    def total(cap: int) -> int:
        return sum(max(c, min(len(n), cap)) for n, c in zip(names, content, strict=True))

    longest = max(map(len, names), default=0)
    cap = next((c for c in range(longest, _MIN_HEADER - 1, -1) if total(c) <= room), _MIN_HEADER)
    return [_shorten(n, max(cap, c)) for n, c in zip(names, content, strict=True)]


def _caption(table: StabilityTable, seeds: int, width: int, partial: bool) -> list[str]:
    """Metric, seeds, markers and the collapse rule, wrapped at `width`."""
    text = (f"{table.metric}, lower is better: mean ± sample std (ddof = 1) of the succeeded runs over {seeds} "
            f"seed{'s' if seeds != 1 else ''}; * best mean per teacher; ×N: N collapses "
            f"({table.collapse_rule()})" + ("; n=K: mean over K runs only." if partial else "."))
    return textwrap.wrap(text, width=width, break_on_hyphens=False)


def compact_table(table: StabilityTable, *, seeds: int | None = None, width: int = TERMINAL_WIDTH) -> str:
    """The table as aligned text: methods down, teachers across, and a caption under it.

    `seeds`: the study's seeds per cell (default: the most runs any cell has). Teacher names too
    long for the lines to fit `width` are shortened in the middle; the caption is wrapped at it.
    """
    seeds = table.num_tries if seeds is None else seeds
    method_w = max([len("method"), *map(len, table.methods)])
    columns = [_column(table, t, seeds) for t in table.teachers]
    content = [max(map(len, col), default=0) for col in columns]
    headers = _headers(table.teachers, content, width - method_w - len(_GAP) * len(columns))
    widths = [max(len(h), c) for h, c in zip(headers, content, strict=True)]
    lines = [_GAP.join(["method".ljust(method_w), *(h.ljust(w) for h, w in zip(headers, widths, strict=True))]),
             _GAP.join(["-" * method_w, *("-" * w for w in widths)])]
    for r, method in enumerate(table.methods):
        row = [method.ljust(method_w), *(col[r].ljust(w) for col, w in zip(columns, widths, strict=True))]
        lines.append(_GAP.join(row))
    partial = any("n=" in cell for col in columns for cell in col)
    return "\n".join(line.rstrip() for line in lines + _caption(table, seeds, width, partial)) + "\n"


def table_from_service(data: Mapping[str, Any], *, collapse_fid: float | None = None) -> StabilityTable:
    """A study's table as the service's JSON gives it (``GET /api/studies/{id}/table``), as a `StabilityTable`.

    Every ended try (succeeded, diverged, failed) is a run; pending, running and cancelled jobs are
    not. Collapses are counted here, with `collapse_fid` or the metric's family default, so the
    terminal shows the threshold it names. Rows and columns follow the study's methods and teachers.
    """
    metric = data.get("metric") or "fid"  # None while no run has reported its FID's features
    runs = [Run(teacher=c["teacher"], method=c["method"], seed=int(t["seed"]), fid=t.get("fid"), status=t["status"])
            for c in data.get("cells", []) for t in c.get("tries", []) if t.get("status") in RUN_STATUSES]
    if runs:
        table = build_table(runs, metric=metric, collapse_threshold=collapse_fid)
    else:
        table = StabilityTable(metric=metric, methods=(), teachers=(), cells={}, collapse_threshold=collapse_fid)
    table.methods, table.teachers = tuple(data.get("methods", ())), tuple(data.get("teachers", ()))
    return table


# --- studies with axes: one grid per combination of axis values ---------------------------------------------


def format_axis_value(value: Any) -> str:
    """An axis value as a label shows it: 0.001, l1, true, none."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def panel_label(axes: Mapping[str, Any]) -> str:
    """A combination of axis values as a heading: "coarse = l1, lr = 0.001" ("" without axes)."""
    return ", ".join(f"{a} = {format_axis_value(v)}" for a, v in axes.items())


def render_panels(panels: Sequence[tuple[Mapping[str, Any], StabilityTable]], fmt: str) -> str:
    """A study's grids, one per combination of axis values, as one csv, md or latex text.

    One panel without axes is the table's own rendering. With axes, every grid gets the same Try columns,
    its caption starts with its axis values, and the CSV has one header with the axes as leading columns.
    """
    if len(panels) == 1 and not panels[0][0]:
        return panels[0][1].render(fmt)
    tries = max((t.num_tries for _, t in panels), default=0)
    for axes, table in panels:
        table.min_tries, table.title = tries, panel_label(axes)
    if fmt != "csv":
        return "\n".join(table.render(fmt) for _, table in panels)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for i, (axes, table) in enumerate(panels):
        rows = list(csv.reader(io.StringIO(table.to_csv())))
        if i == 0:
            writer.writerow([*axes, *rows[0]])
        writer.writerows([*map(format_axis_value, axes.values()), *row] for row in rows[1:])
    return buf.getvalue()


def tables_from_service(data: Mapping[str, Any], *, collapse_fid: float | None = None
                        ) -> list[tuple[dict[str, Any], StabilityTable]]:
    """A study's table from the service's JSON as one `StabilityTable` per combination of its axis values
    (one, with axes {}, for a study without axes). A cell whose method ignores an axis stands in every panel."""
    axes: dict[str, list[Any]] = dict(data.get("axes") or {})
    combos: list[dict[str, Any]] = [{}]
    for axis, values in axes.items():
        combos = [{**c, axis: v} for c in combos for v in values]
    out = []
    for panel in combos:
        cells = [c for c in data.get("cells", [])
                 if all(panel.get(a) == v for a, v in (c.get("axes") or {}).items())]
        out.append((panel, table_from_service({**data, "cells": cells}, collapse_fid=collapse_fid)))
    return out

