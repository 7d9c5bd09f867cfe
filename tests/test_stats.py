"""Seed statistics: Table 6 arithmetic, layout and exports, Welch's t-test, collapses, CLI."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from liftplace import stats
from liftplace.stats import Run, build_table, paper_table6, paper_table6_rows, seed_summary, welch_t_test


def _tries(row: dict) -> list[float]:
    return [float(row[f"try{i}"]) for i in range(1, 6)]


# --- seed_summary and the paper's Table 6 -----------------------------------------------------------


def test_seed_summary_is_mean_and_sample_std():
    s = seed_summary([1.0, 2.0, 4.0])
    assert (s.n, s.values) == (3, (1.0, 2.0, 4.0))
    assert s.mean == pytest.approx(7 / 3)
    assert s.std == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert s.std != pytest.approx(np.std([1, 2, 4], ddof=0))
    assert math.isnan(seed_summary([5.0]).std) and seed_summary([5.0]).mean == 5.0
    with pytest.raises(ValueError, match="no values"):
        seed_summary([])
    with pytest.raises(ValueError, match="finite"):
        seed_summary([1.0, float("inf")])


def test_seed_summary_reproduces_paper_table6():
    """The published tries carry two decimals, so a recomputed mean can differ from the published
    (rounded) one by at most 0.005 (tries' rounding) + 0.005 (publication rounding) = 0.01; the std
    by at most 0.005 * sqrt(5 / 4) + 0.005 < 0.0106."""
    rows = paper_table6_rows()
    assert len(rows) == 12
    exact = 0
    for row in rows:
        s = seed_summary(_tries(row))
        assert s.n == 5
        assert abs(s.mean - float(row["fid_mean"])) <= 0.01 + 1e-9, row
        assert abs(s.std - float(row["fid_std"])) <= 0.0106, row
        exact += f"{s.mean:.2f}" == row["fid_mean"]
        exact += f"{s.std:.2f}" == row["fid_std"]
    assert exact >= 20  # 20 of the 24 printed numbers match to the last digit; 4 are off by one unit


def test_paper_table6_layout_and_best():
    t = paper_table6()
    assert t.metric == "fid_inception"
    assert t.methods == ("outkd", "outkd+featkd", "lift+place+featkd")
    assert t.teachers == ("78.7M", "19.7M", "16.6M", "9.2M")
    assert t.num_tries == 5
    for teacher in t.teachers:
        assert t.best(teacher) == ("lift+place+featkd",)
    row = next(r for r in paper_table6_rows() if r["method"] == "outkd" and r["teacher_params"] == "78.7M")
    cell = t.cell("outkd", "78.7M")
    assert [r.fid for r in cell.runs] == _tries(row)
    assert f"{cell.summary.mean:.2f}" == row["fid_mean"] == "96.64"
    assert f"{cell.summary.std:.2f}" == row["fid_std"] == "64.99"


def test_paper_table6_collapses():
    t = paper_table6()  # threshold 100
    assert t.cell("outkd", "78.7M").collapses == 1  # 210.09
    assert t.cell("outkd", "16.6M").collapses == 1  # 100.70
    assert t.cell("outkd+featkd", "78.7M").collapses == 5
    assert all(t.cell("lift+place+featkd", teacher).collapses == 0 for teacher in t.teachers)
    assert paper_table6(collapse_threshold=200).cell("outkd+featkd", "78.7M").collapses == 4


# --- exports --------------------------------------------------------------------------------------


def test_markdown_export_marks_best_and_names_metric():
    md = paper_table6().to_markdown()
    assert "fid_inception" in md
    assert "**17.02**" in md and "**25.38**" in md and "**96.64**" not in md
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 3  # header, rule, three methods
    assert lines[0].count("|") == lines[2].count("|")
    assert lines[2].startswith("| outkd | 210.09 | 56.67 | 90.72 | 55.41 | 70.33 | 96.64 | 64.99 | 1 |")


def test_csv_export_round_trips():
    t = paper_table6()
    rows = list(csv.DictReader(io.StringIO(t.to_csv())))
    assert [r["method"] for r in rows] == list(t.methods)
    assert {r["metric"] for r in rows} == {"fid_inception"}
    ours = rows[2]
    assert ours["78.7M best"] == "1" and rows[0]["78.7M best"] == "0"
    assert float(ours["78.7M mean"]) == pytest.approx(t.cell("lift+place+featkd", "78.7M").summary.mean, abs=1e-3)
    assert ours["78.7M try1"] == "19.65" and ours["9.2M n"] == "5" and rows[1]["78.7M collapses"] == "5"


def test_latex_export():
    tex = paper_table6().to_latex()
    assert tex.startswith(r"\begin{table}") and tex.rstrip().endswith(r"\end{table}")
    assert r"\multicolumn{8}{c}{78.7M}" in tex
    assert r"\textbf{17.02}" in tex and r"fid\_inception" in tex
    body = [line for line in tex.splitlines() if line.startswith(("outkd", "lift"))]
    assert len(body) == 3 and all(line.count("&") == 1 + 4 * 8 - 1 for line in body)


def test_render_refuses_unknown_format():
    with pytest.raises(ValueError, match="md, csv, latex"):
        paper_table6().render("html")


# --- Welch's t-test -------------------------------------------------------------------------------


def test_welch_matches_the_formula():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0, 11.0]
    r = welch_t_test(a, b)
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    assert r.statistic == pytest.approx(t) and r.df == pytest.approx(df)
    assert 0 < r.pvalue < 1 and (r.n_a, r.n_b) == (4, 5)
    with pytest.raises(ValueError, match="at least 2"):
        welch_t_test([1.0], b)


def test_welch_on_paper_tries():
    t = paper_table6()
    r = t.compare("outkd+featkd", "lift+place+featkd", "78.7M")
    assert r.mean_a == pytest.approx(193.564) and r.pvalue < 0.01
    with pytest.raises(ValueError, match="no runs"):
        t.compare("lift", "outkd", "78.7M")


# --- collapses, diverged and failed runs -------------------------------------------------------------


def _runs():
    return [
        Run("big", "outkd", 0, 30.0), Run("big", "outkd", 1, 150.0), Run("big", "outkd", 2, None, "diverged"),
        Run("big", "outkd", 3, None, "failed"), Run("big", "outkd", 4, float("nan")),
        Run("big", "lift+place+featkd", 0, 20.0), Run("big", "lift+place+featkd", 1, 22.0),
        Run("small", "outkd", 0, 40.0), Run("small", "outkd", 1, 44.0),
    ]


def test_collapses_count_threshold_and_divergence_not_failures():
    t = build_table(_runs(), metric="fid_digits", collapse_threshold=100)
    c = t.cell("outkd", "big")
    assert c.collapses == 3  # 150 > 100, one diverged, one NaN FID
    assert (c.diverged, c.failed) == (2, 1)
    assert c.summary.values == (30.0, 150.0)  # diverged and failed runs have no FID to average
    assert build_table(_runs(), metric="fid_digits", collapse_threshold=200).cell("outkd", "big").collapses == 2
    assert t.best("big") == ("lift+place+featkd",) and t.best("small") == ("outkd",)
    assert t.cell("lift+place+featkd", "small") is None
    md = t.to_markdown()
    assert "diverged" in md and "failed" in md and "fid_digits > 100" in md
    assert "| lift+place+featkd | 20.00 | 22.00 |  |  |  | **21.00** | 1.41 | 0 |" in md


def test_build_table_refuses_bad_runs():
    with pytest.raises(ValueError, match="duplicate run"):
        build_table([Run("t", "lift", 0, 1.0), Run("t", "lift", 0, 2.0)], metric="fid_digits")
    with pytest.raises(ValueError, match="unknown method"):
        build_table([Run("t", "ours", 0, 1.0)], metric="fid_digits")
    with pytest.raises(ValueError, match="status"):
        Run("t", "lift", 0, 1.0, "crashed")
    with pytest.raises(ValueError, match="no runs"):
        build_table([], metric="fid_digits")


# --- reading runs CSVs ---------------------------------------------------------------------------


RUNS_CSV = """# five seeds, two methods
teacher,teacher_params,method,seed,fid_digits,status
digits-l,2.1M,outkd,0,12.5,succeeded
digits-l,2.1M,outkd,1,,diverged
digits-l,2.1M,outkd,2,140.0,succeeded
digits-l,2.1M,lift+place+featkd,0,8.0,succeeded
digits-l,2.1M,lift+place+featkd,1,9.0,succeeded
digits-l,2.1M,lift+place+featkd,2,8.5,
"""


def test_read_runs_csv(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text(RUNS_CSV)
    runs, metric = stats.read_runs(path)
    assert metric == "fid_digits" and len(runs) == 6
    assert runs[1].status == "diverged" and runs[1].fid is None
    assert runs[5].status == "succeeded"  # empty status with an FID
    t = stats.table_from_csv(path)
    assert t.teacher_label("digits-l") == "digits-l (2.1M)"
    assert t.cell("outkd", "digits-l").collapses == 2
    assert t.best("digits-l") == ("lift+place+featkd",)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("teacher,method,seed,fid\nt,lift,0,1.0\n", "add a 'features' column"),
        ("method,teacher_params,try1,try2\nlift,1M,1.0,2.0\n", "pass the features"),
        ("teacher,method,seed,fid_digits,fid_inception\nt,lift,0,1,2\n", "exactly one FID column"),
        ("teacher,method,seed,fid,features\nt,lift,0,1,digits\nt,lift,1,2,inception\n", "mixes features"),
        ("teacher,method,seed,fid_digits\nt,lift,zero,1.0\n", "row 2"),
        ("teacher,method,seed,fid_digits,status\nt,lift,0,,succeeded\n", "no fid_digits"),
        ("teacher,method,seed,fid_digits\nt,lift,0,abc\n", "row 2"),
        ("teacher,method,seed,fid_digits\nt,ours,0,1.0\n", "unknown method"),
        ("method,seed,fid_digits\nlift,0,1.0\n", r"lacks the column\(s\) teacher"),
    ],
)
def test_read_runs_errors_name_the_problem(tmp_path, text, needle):
    path = tmp_path / "runs.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=needle):
        stats.read_runs(path)


def test_paper_wide_layout_is_read_too(tmp_path, capsys):
    from importlib.resources import files

    from liftplace.cli_eval import main

    paper = files("liftplace") / "reference" / "paper_table6.csv"
    runs, metric = stats.read_runs(paper, features="inception")
    assert metric == "fid_inception" and runs == stats.paper_table6_runs() and len(runs) == 60
    assert main(["table", str(paper), "--features", "inception"]) == 0
    assert "**17.02**" in capsys.readouterr().out


def test_plain_fid_column_with_features(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("teacher,method,seed,fid,features\nt,lift,0,1.0,inception\nt,lift,1,2.0,inception\n")
    assert stats.read_runs(path)[1] == "fid_inception"
    with pytest.raises(ValueError, match="asked for"):
        stats.read_runs(path, features="digits")
    path.write_text("teacher,method,seed,fid\nt,lift,0,1.0\n")
    assert stats.read_runs(path, features="digits")[1] == "fid_digits"


# --- CLI -------------------------------------------------------------------------------------------


def _paper_runs_csv(tmp_path):
    path = tmp_path / "paper_runs.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["teacher", "method", "seed", "fid_inception", "status"])
        for r in stats.paper_table6_runs():
            w.writerow([r.teacher, r.method, r.seed, r.fid, r.status])
    return path


@pytest.mark.parametrize("fmt, needle", [("md", "**17.02**"), ("csv", "fid_inception,lift+place+featkd,19.65"),
                                         ("latex", r"\textbf{17.02}")])
def test_cli_table_formats(tmp_path, capsys, fmt, needle):
    from liftplace.cli_eval import main

    assert main(["table", str(_paper_runs_csv(tmp_path)), "--format", fmt]) == 0
    assert needle in capsys.readouterr().out


def test_cli_table_output_threshold_and_compare(tmp_path, capsys):
    from liftplace.cli_eval import main

    out = tmp_path / "t.md"
    argv = ["table", str(_paper_runs_csv(tmp_path)), "--collapse-threshold", "50", "--output", str(out),
            "--compare", "outkd", "lift+place+featkd"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "fid_inception > 50" in out.read_text()
    assert captured.err.count("Welch outkd vs lift+place+featkd") == 4 and "p = " in captured.err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--format", "html"], "invalid choice"),
        (["--collapse-threshold", "abc"], "expected a number"),
        (["--collapse-threshold", "inf"], "finite"),
    ],
)
def test_cli_table_bad_values_exit_2(tmp_path, capsys, extra, needle):
    from liftplace.cli_eval import main

    with pytest.raises(SystemExit) as info:
        main(["table", str(_paper_runs_csv(tmp_path)), *extra])
    assert info.value.code == 2 and needle in capsys.readouterr().err


def test_cli_table_missing_or_bad_file_exit_2(tmp_path, capsys):
    from liftplace.cli_eval import main

    with pytest.raises(SystemExit) as info:
        main(["table", str(tmp_path / "nope.csv")])
    assert info.value.code == 2 and "is not a file" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("teacher,method,seed,fid\nt,lift,0,1\n")
    with pytest.raises(SystemExit) as info:
        main(["table", str(bad)])
    assert info.value.code == 2 and "features" in capsys.readouterr().err


def test_cli_table_help_states_defaults(capsys):
    from liftplace.cli_eval import main

    with pytest.raises(SystemExit):
        main(["table", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: md)" in out and "(default: by the FID features, digits 40, inception 100)" in out


def test_main_cli_has_the_evaluation_commands(tmp_path, capsys):
    cli = pytest.importorskip("liftplace.cli")
    assert cli.main(["table", str(_paper_runs_csv(tmp_path)), "--format", "csv"]) == 0
    assert "fid_inception,outkd,210.09" in capsys.readouterr().out


# --- collapse thresholds per FID feature family ------------------------------------------------------


def test_collapse_threshold_per_feature_family():
    from liftplace.features import FEATURES

    assert set(stats.COLLAPSE_FID) == set(FEATURES)  # one threshold for every feature space an FID is computed in
    assert stats.collapse_threshold("inception") == stats.collapse_threshold("fid_inception") == 100.0
    assert stats.COLLAPSE_FID_THRESHOLD == stats.COLLAPSE_FID["inception"]  # the former name still reads
    assert stats.collapse_threshold("fid_digits") == stats.COLLAPSE_FID["digits"] < stats.COLLAPSE_FID["inception"]
    assert stats.collapse_threshold("digits", 25) == 25.0  # a study's own threshold wins
    with pytest.raises(ValueError, match="unknown FID feature family 'fid_clip'.*digits, inception"):
        stats.collapse_threshold("fid_clip")
    with pytest.raises(ValueError, match="unknown FID feature family 'digit'"):
        stats.collapse_threshold("digit", 30.0)  # a misspelt family is no silent default, override or not
    for bad in (0, -5.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="finite number > 0"):
            stats.collapse_threshold("digits", bad)


def test_build_table_counts_collapses_at_the_metrics_default():
    runs = [Run("t", "outkd", 0, 35.0), Run("t", "outkd", 1, 45.0), Run("t", "outkd", 2, 120.0)]
    digits = build_table(runs, metric="fid_digits")
    assert digits.collapse_threshold == stats.COLLAPSE_FID["digits"] and digits.cell("outkd", "t").collapses == 2
    inception = build_table(runs, metric="fid_inception")
    assert inception.collapse_threshold == 100.0 and inception.cell("outkd", "t").collapses == 1
    assert build_table(runs, metric="fid_digits", collapse_threshold=30).cell("outkd", "t").collapses == 3
    assert f"fid_digits > {stats.COLLAPSE_FID['digits']:g} or diverged" in digits.caption()
    assert paper_table6().collapse_threshold == 100.0
    with pytest.raises(ValueError, match="finite number > 0"):
        build_table(runs, metric="fid_digits", collapse_threshold=float("nan"))


def test_table_from_csv_takes_the_families_threshold(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("teacher,method,seed,fid_digits\nt,lift,0,12.0\nt,lift,1,60.0\n")
    assert stats.table_from_csv(path).cell("lift", "t").collapses == 1  # 60 > the digits default
    assert stats.table_from_csv(path, collapse_threshold=100).cell("lift", "t").collapses == 0


def test_a_metric_of_no_known_family():
    """Only a table without any FID may lack a family (a study none of whose runs reported one)."""
    diverged = [Run("t", "outkd", 0, None, "diverged"), Run("t", "outkd", 1, None, "failed")]
    t = build_table(diverged, metric="fid")
    assert t.collapse_threshold is None and t.cell("outkd", "t").collapses == 1
    assert "collapses = runs that diverged;" in t.caption()
    assert stats.StabilityTable(metric="fid", methods=(), teachers=(), cells={}).collapse_threshold is None
    assert stats.StabilityTable(metric="fid_digits", methods=(), teachers=(), cells={}).collapse_threshold == 40.0
    with pytest.raises(ValueError, match="unknown FID feature family 'fid'"):
        build_table([Run("t", "outkd", 0, 12.0)], metric="fid")
    own = build_table([Run("t", "outkd", 0, 12.0)], metric="fid", collapse_threshold=10)
    assert own.collapse_threshold == 10.0 and own.cell("outkd", "t").collapses == 1
