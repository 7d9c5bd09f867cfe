"""The compact terminal table (liftplace.tables): layout, markers, width, the service's JSON."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from liftplace.methods import METHOD_NAMES
from liftplace.stats import COLLAPSE_FID, Run, build_table, paper_table6
from liftplace.tables import TERMINAL_WIDTH, compact_cell, compact_table, table_from_service

TEACHERS = ("stability-digits-s", "stability-digits-s-p50", "stability-digits-s-p70",
            "stability-digits-s-p90")  # four long-ish names, the paper's number of teachers
METHODS = ("outkd", "outkd+featkd", "lift+place+featkd")


def _rows(text: str) -> dict[str, str]:
    """The table's rows by method (the first word of a line)."""
    return {line.split()[0]: line for line in text.splitlines() if line.split() and line.split()[0] in METHOD_NAMES}


def _wide_runs() -> list[Run]:
    """Five seeds per cell, three-digit FIDs, a diverged and a failed run: the widest cells a study makes."""
    runs = []
    for t in TEACHERS:
        for m in METHODS:
            for seed in range(5):
                if (m, seed) == ("outkd", 1):
                    runs.append(Run(t, m, seed, None, "diverged"))
                elif (m, seed) == ("outkd", 2):
                    runs.append(Run(t, m, seed, None, "failed"))
                else:
                    runs.append(Run(t, m, seed, 100.0 + 37.5 * seed + len(m)))
    return runs


def test_one_row_per_method_one_column_per_teacher_and_the_best_mean_marked() -> None:
    text = compact_table(paper_table6())
    header, rule, *_ = text.splitlines()
    assert header.split() == ["method", "78.7M", "19.7M", "16.6M", "9.2M"] and set(rule) <= {"-", " "}
    rows = _rows(text)
    assert list(rows) == list(METHODS)
    assert rows["lift+place+featkd"].count("*") == 4  # the paper's method has the best mean under every teacher
    assert "*" not in rows["outkd"] and "*" not in rows["outkd+featkd"]
    assert "17.02 ±  1.77 *" in rows["lift+place+featkd"] and "96.64 ± 64.99" in rows["outkd"]


def test_collapse_counts_follow_the_threshold() -> None:
    rows = _rows(compact_table(paper_table6()))  # Inception: 100
    assert rows["outkd+featkd"].count("×5") == 1  # all five tries under the 78.7M teacher (102-232)
    assert rows["outkd"].count("×1") == 3 and "×" not in rows["lift+place+featkd"]
    assert "×" not in _rows(compact_table(paper_table6(collapse_threshold=250)))["outkd+featkd"]
    digits = build_table([Run("t", "outkd", 0, 35.0), Run("t", "outkd", 1, 45.0)], metric="fid_digits")
    assert COLLAPSE_FID["digits"] < 45.0 and compact_cell(digits.cell("outkd", "t"), seeds=2) == "40.00 ± 7.07 ×1"


def test_a_cell_without_a_mean_says_why() -> None:
    runs = [Run("a", "outkd", 0, None, "diverged"), Run("a", "outkd", 1, float("nan")),
            Run("a", "lift", 0, None, "failed"), Run("a", "lift", 1, None, "failed"),
            Run("b", "lift", 0, 12.0), Run("b", "lift", 1, None, "failed"), Run("b", "outkd", 0, 10.0),
            Run("b", "outkd", 1, 11.0)]
    table = build_table(runs, metric="fid_digits")
    assert compact_cell(table.cell("outkd", "a"), seeds=2) == "diverged ×2"
    assert compact_cell(table.cell("lift", "a"), seeds=2) == "failed"  # a broken job is no collapse
    assert compact_cell(None) == "–"
    mixed = build_table([Run("c", "lift", 0, None, "diverged"), Run("c", "lift", 1, None, "failed")],
                        metric="fid_digits")
    assert compact_cell(mixed.cell("lift", "c"), seeds=2) == "diverged ×1"
    assert compact_cell(table.cell("lift", "b"), seeds=2) == "12.00 n=1"  # one run: no std, and says so
    assert compact_cell(table.cell("outkd", "b"), best=True, seeds=2) == "10.50 ± 0.71 *"
    text = compact_table(table)
    rows = _rows(text)
    assert rows["outkd"].split()[1:3] == ["diverged", "×2"] and "failed" in rows["lift"]
    assert "n=K: mean over K runs only" in text  # the marker is explained once it is used


def test_the_caption_names_metric_seeds_and_threshold() -> None:
    runs = [Run("t", m, s, 10.0 + s) for m in ("outkd", "lift") for s in range(3)]
    text = compact_table(build_table(runs, metric="fid_digits"))
    caption = " ".join(text.splitlines()[2 + 2:])
    assert caption.startswith("fid_digits, lower is better") and "over 3 seeds" in caption
    assert f"fid_digits > {COLLAPSE_FID['digits']:g} or diverged" in caption and "* best mean" in caption
    assert "n=K" not in caption  # no cell averages fewer runs than the seeds
    assert "fid_digits > 25 or diverged" in compact_table(build_table(runs, metric="fid_digits",
                                                                      collapse_threshold=25))
    assert "over 5 seeds" in compact_table(build_table(runs, metric="fid_digits"), seeds=5)


def test_four_long_teacher_names_fit_120_columns() -> None:
    text = compact_table(build_table(_wide_runs(), metric="fid_inception"))
    lines = text.splitlines()
    assert max(map(len, lines)) <= TERMINAL_WIDTH, "\n" + text
    assert lines[0].split()[1:] == list(TEACHERS)  # they fit whole
    row = _rows(text)["outkd"]
    assert row.count("×4") == 4 and row.count("n=3") == 4  # three FIDs over 100, one diverged; one failed


def test_teacher_names_too_long_to_fit_are_shortened_in_the_middle() -> None:
    long = tuple(f"a-teacher-with-a-very-very-long-name-{i}" for i in range(4))
    runs = [Run(t, "outkd", s, 12.0 + s) for t in long for s in range(2)]
    text = compact_table(build_table(runs, metric="fid_digits"))
    header = text.splitlines()[0].split()[1:]
    assert max(map(len, text.splitlines())) <= TERMINAL_WIDTH, "\n" + text
    assert len(set(header)) == 4 and all("…" in h and h.endswith(f"-{i}") for i, h in enumerate(header))
    assert all(h.startswith("a-teach") for h in header) and len(set(map(len, header))) == 1  # cut alike


def _service_table(metric: str | None = "fid_digits") -> dict:
    tries = {("t1", "outkd"): [("succeeded", 12.0), ("succeeded", 55.0), ("diverged", None)],
             ("t1", "lift"): [("succeeded", 10.0), ("failed", None), ("cancelled", None)],
             ("t2", "outkd"): [("pending", None), ("running", None), ("queued", None)],
             ("t2", "lift"): [("succeeded", 9.0), ("succeeded", 11.0), ("succeeded", 13.0)]}
    cells = [{"teacher": t, "method": m, "n": 0, "mean": None, "std": None, "collapses": 0,
              "tries": [{"seed": s, "job_id": 10 * i + s, "status": st, "fid": f} for s, (st, f) in enumerate(v)]}
             for i, ((t, m), v) in enumerate(tries.items())]
    return {"study_id": 1, "metric": metric, "teachers": ["t1", "t2"], "methods": ["outkd", "lift"], "cells": cells,
            "best": {}}


def test_the_services_table_is_read_and_counted_here() -> None:
    table = table_from_service(_service_table())
    assert table.teachers == ("t1", "t2") and table.methods == ("outkd", "lift")
    assert table.collapse_threshold == COLLAPSE_FID["digits"]
    c = table.cell("outkd", "t1")
    assert c.collapses == 2 and c.summary.values == (12.0, 55.0)  # 55 > 40, and the diverged run
    assert [r.seed for r in table.cell("lift", "t1").runs] == [0, 1]  # a cancelled job is no try
    assert table.cell("outkd", "t2") is None  # nothing ended yet
    assert table_from_service(_service_table(), collapse_fid=60).cell("outkd", "t1").collapses == 1
    rows = _rows(compact_table(table, seeds=3))
    assert rows["outkd"].split()[-1] == "–" and rows["lift"].split()[-1] == "*"


def test_a_study_with_no_ended_run_has_a_table_too() -> None:
    data = _service_table(metric=None)
    data["cells"] = [dict(c, tries=[dict(t, status="queued", fid=None) for t in c["tries"]]) for c in data["cells"]]
    table = table_from_service(data)
    assert table.collapse_threshold is None and table.cells == {}
    text = compact_table(table, seeds=3)
    assert _rows(text)["outkd"].split()[1:] == ["–", "–"] and "runs that diverged" in text
    with pytest.raises(ValueError, match="unknown FID feature family 'fid_foo'"):
        table_from_service(_service_table(metric="fid_foo"))


def _stability_grid() -> list[tuple[str, list[float], float, float]]:
    """(teacher, the five FIDs, mean, std) of every cell of docs/results.md's stability study."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    section = page[page.index("<!-- report:stability:begin -->"):page.index("<!-- report:stability:end -->")]
    cells = []
    for block in section.split("\n*Teacher ")[1:]:
        teacher = block.split(" ", 1)[0]
        for line in block.splitlines():
            if (m := re.fullmatch(r"\| (outkd|outkd\+featkd|lift\+place\+featkd) \|(.*)\|", line)):
                values = [float(v.strip(" *")) for v in m.group(2).split("|")]
                cells.append((teacher, values[:5], values[5], values[6]))
    return cells


def test_the_digits_threshold_sits_above_every_converged_student() -> None:
    """The measured grid the digits default is derived from (docs/results.md, section 1)."""
    cells = _stability_grid()
    assert len(cells) == 9, "the stability study's grid is no longer where this test reads it"
    threshold = COLLAPSE_FID["digits"]
    assert max(max(fids) for _, fids, _, _ in cells) < threshold
    assert max(mean + 3 * std for _, _, mean, std in cells) < threshold


def _axes_table() -> dict:
    """One teacher, outkd (ignores coarse: one cell) and lift at coarse l1 (two tries) and l2 (three)."""
    def cell(method: str, axes: dict, fids: list[float]) -> dict:
        return {"teacher": "t1", "method": method, "axes": axes,
                "tries": [{"seed": s, "job_id": s, "status": "succeeded", "fid": f} for s, f in enumerate(fids)]}

    return {"metric": "fid_digits", "teachers": ["t1"], "methods": ["outkd", "lift"], "axes": {"coarse": ["l1", "l2"]},
            "cells": [cell("outkd", {}, [30.0, 32.0]), cell("lift", {"coarse": "l1"}, [10.0, 12.0]),
                      cell("lift", {"coarse": "l2"}, [20.0, 22.0, 24.0])]}


def test_a_study_with_axes_is_one_table_per_axis_value_with_the_ignoring_method_in_each() -> None:
    from liftplace.tables import panel_label, render_panels, tables_from_service

    panels = tables_from_service(_axes_table())
    assert [p for p, _ in panels] == [{"coarse": "l1"}, {"coarse": "l2"}]
    (_, l1), (_, l2) = panels
    assert l1.cell("lift", "t1").summary.mean == 11.0 and l2.cell("lift", "t1").summary.mean == 22.0
    assert l1.cell("outkd", "t1").summary.mean == l2.cell("outkd", "t1").summary.mean == 31.0
    assert panel_label({"lr": 0.001, "curriculum": False, "ablation": None}) == "lr = 0.001, curriculum = false, " \
                                                                             "ablation = none"
    rows = list(csv.reader(io.StringIO(render_panels(panels, "csv"))))
    assert rows[0][:3] == ["coarse", "metric", "method"] and [r[0] for r in rows[1:]] == ["l1", "l1", "l2", "l2"]
    assert len({len(r) for r in rows}) == 1  # the same Try columns in every panel (l1 has two tries, l2 three)
    md = render_panels(panels, "md")
    assert md.startswith("coarse = l1: fid_digits") and "\ncoarse = l2: fid_digits" in md
    plain = tables_from_service({**_axes_table(), "axes": {}, "cells": _axes_table()["cells"][:1]})
    assert [p for p, _ in plain] == [{}] and render_panels(plain, "md") == plain[0][1].to_markdown()
