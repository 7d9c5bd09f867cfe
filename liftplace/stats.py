"""Five-seed stability statistics: seed summaries, the Table-6 layout, Welch's t-test, collapses.

The paper (supplementary Table 6) reports, for each method and teacher, the FIDs of five
independent runs, their mean and their sample standard deviation (ddof = 1), and marks the best
mean per teacher. `seed_summary` does the arithmetic; `build_table` / `table_from_csv` lay a set
of runs out the same way and export it as CSV, Markdown or LaTeX; `welch_t_test` compares two
methods' seed sets for one teacher.

A run is one row of a runs CSV with at least the columns ``teacher, method, seed`` and an FID
column named after its features (``fid_digits`` or ``fid_inception``; a plain ``fid`` column
needs a ``features`` column or the `features` argument), and optionally ``status``
(succeeded / diverged / failed) and ``teacher_params``.

- The mean and std of a cell use its succeeded runs with a finite FID.
- A collapse is a run that diverged (status ``diverged``, or an infinite / NaN FID) or whose FID
  exceeds the collapse threshold of its FID feature family (`COLLAPSE_FID`, read through
  `collapse_threshold`; a study may override it). Each cell counts them.
- A ``failed`` run (the job broke, not the training) is shown but neither summarised nor counted
  as a collapse.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from liftplace.methods import METHOD_NAMES, get_method

__all__ = [
    "COLLAPSE_FID",
    "COLLAPSE_FID_THRESHOLD",
    "fid_family",
    "collapse_threshold",
    "RUN_STATUSES",
    "TABLE_FORMATS",
    "PAPER_TABLE6_METRIC",
    "SeedSummary",
    "seed_summary",
    "Run",
    "Cell",
    "WelchResult",
    "welch_t_test",
    "StabilityTable",
    "build_table",
    "read_runs",
    "table_from_csv",
    "paper_table6_rows",
    "paper_table6_runs",
    "paper_table6",
]

# --- constants -----------------------------------------------------------------------------------
# An FID above this, per feature family, counts as a collapse (docs/results.md, "When a run counts as a
# collapse"). Each value sits far outside what a run that trained properly scores in that feature space.
COLLAPSE_FID: Mapping[str, float] = MappingProxyType({
    # The embedded scale (sklearn digits at 8x8, digits features, 1000 samples; docs/results.md, section 1):
    # about 10x the real-vs-real FID (4.03, two disjoint halves of the digits) and 7x the largest teacher's
    # (5.65). Every converged student of the stability study (4000 steps, 45 runs) stays below it: the
    # worst run scores 27.96, the worst cell 20.88 +- 4.03 (mean + 3 std = 32.97). A run above it has not
    # reached what every converged student reaches; the 800-step students of the ablations (29-168) mostly
    # have not, and the quick preset's 100-step ones (190-950) never have.
    "digits": 40.0,
    # The paper's scale (supplementary Table 6: CelebA 64x64, Inception features, 50K samples): its
    # teachers score 5.30-6.48, so 100 is 15-19x a teacher's FID; its lift+place+featkd tries score
    # 15.7-31.7, and the output-KD tries either 34-91 or, the collapses, 100.7-231.5.
    "inception": 100.0,
})
COLLAPSE_FID_THRESHOLD: float = COLLAPSE_FID["inception"]  # the Inception value, under its former name
RUN_STATUSES: tuple[str, ...] = ("succeeded", "diverged", "failed")
TABLE_FORMATS: tuple[str, ...] = ("md", "csv", "latex")
PAPER_TABLE6_METRIC: str = "fid_inception"  # the paper's FIDs are Inception FIDs
FID_METRICS: tuple[str, ...] = ("fid_digits", "fid_inception")
_PAPER_TABLE6 = "paper_table6.csv"


def fid_family(metric: str) -> str:
    """The FID feature family of a metric or family name: ``fid_digits`` or ``digits`` -> ``digits``."""
    family = metric[len("fid_"):] if metric.startswith("fid_") else metric
    if family not in COLLAPSE_FID:
        raise ValueError(f"collapse threshold: unknown FID feature family {metric!r}; expected one of "
                         f"{', '.join(COLLAPSE_FID)} (or {', '.join(FID_METRICS)})")
    return family


def _check_threshold(value: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"collapse_threshold: expected a finite number > 0, got {value!r}")
    return float(value)


def collapse_threshold(features: str, override: float | None = None) -> float:
    """The FID above which a run of feature family `features` (``digits``, ``fid_digits``, ...) collapsed.

    `override` (a study's own threshold) wins when given; it must be finite and > 0. The family is
    checked either way, so a misspelt one is an error, not a silent default.
    """
    family = fid_family(features)
    return _check_threshold(override) if override is not None else COLLAPSE_FID[family]


# --- seed summaries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedSummary:
    """Mean and sample standard deviation (ddof = 1) of one setting's runs over seeds."""

    values: tuple[float, ...]
    mean: float
    std: float  # NaN when n == 1
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f} (n={self.n})"


def seed_summary(values: Iterable[float]) -> SeedSummary:
    """Summarise finite values over seeds: mean, sample std (ddof = 1; NaN for one value), n."""
    vals = tuple(float(v) for v in values)
    if not vals:
        raise ValueError("seed_summary: no values")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"seed_summary: values must be finite, got {vals}")
    n = len(vals)
    mean = math.fsum(vals) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else float("nan")
    return SeedSummary(values=vals, mean=mean, std=std, n=n)


@dataclass(frozen=True)
class WelchResult:
    """Welch's unequal-variance t-test of two seed sets (scipy.stats.ttest_ind, equal_var=False)."""

    statistic: float
    pvalue: float
    df: float
    mean_a: float
    mean_b: float
    n_a: int
    n_b: int

    def __str__(self) -> str:
        return f"t = {self.statistic:.3f}, df = {self.df:.2f}, p = {self.pvalue:.4g}"


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> WelchResult:
    """Welch's t-test between two sets of FIDs (two-sided); each needs at least two finite values."""
    from scipy import stats

    sa, sb = seed_summary(a), seed_summary(b)
    if sa.n < 2 or sb.n < 2:
        raise ValueError(f"welch_t_test: need at least 2 values on each side, got {sa.n} and {sb.n}")
    res = stats.ttest_ind(sa.values, sb.values, equal_var=False)
    return WelchResult(statistic=float(res.statistic), pvalue=float(res.pvalue), df=float(res.df),
                       mean_a=sa.mean, mean_b=sb.mean, n_a=sa.n, n_b=sb.n)


# --- runs and cells ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One training run: which teacher and method, which seed, its FID and how it ended."""

    teacher: str
    method: str
    seed: int
    fid: float | None
    status: str = "succeeded"
    teacher_params: str | None = None

    def __post_init__(self):
        if self.status not in RUN_STATUSES:
            raise ValueError(f"status: expected one of {', '.join(RUN_STATUSES)}, got {self.status!r}")

    @property
    def diverged(self) -> bool:
        return self.status == "diverged" or (
            self.status == "succeeded" and (self.fid is None or not math.isfinite(self.fid))
        )

    @property
    def has_fid(self) -> bool:
        return self.status == "succeeded" and self.fid is not None and math.isfinite(self.fid)

    def is_collapse(self, threshold: float) -> bool:
        """Diverged, or an FID above `threshold` (`collapse_threshold` of the run's feature family)."""
        if self.status == "failed":
            return False
        return self.diverged or self.fid > threshold


@dataclass(frozen=True)
class Cell:
    """One method under one teacher: its runs (by seed), summary and collapse count."""

    method: str
    teacher: str
    runs: tuple[Run, ...]
    summary: SeedSummary | None  # None when no run has a finite FID
    collapses: int
    diverged: int
    failed: int


@dataclass
class StabilityTable:
    """The Table-6 layout: rows = methods; per teacher: Try 1..N, mean, std, collapses."""

    metric: str
    methods: tuple[str, ...]
    teachers: tuple[str, ...]
    cells: dict[tuple[str, str], Cell]
    # None: the metric's family default (`collapse_threshold`); stays None for a metric of no known
    # family, which only a table without any FID has (e.g. a study none of whose runs has ended).
    collapse_threshold: float | None = None
    teacher_params: dict[str, str | None] = field(default_factory=dict)
    # What the table is one panel of (e.g. "coarse = l1" in a study with axes): the caption starts with it.
    title: str = ""
    # At least this many Try columns (tables laid side by side keep the same columns).
    min_tries: int = 0

    def __post_init__(self) -> None:
        if self.collapse_threshold is not None:
            self.collapse_threshold = _check_threshold(self.collapse_threshold)
        elif self.metric in FID_METRICS:
            self.collapse_threshold = collapse_threshold(self.metric)

    @property
    def num_tries(self) -> int:
        return max(self.min_tries, max((len(c.runs) for c in self.cells.values()), default=0))

    def cell(self, method: str, teacher: str) -> Cell | None:
        return self.cells.get((method, teacher))

    def best(self, teacher: str) -> tuple[str, ...]:
        """The method(s) with the lowest mean FID under `teacher` (ties: all of them)."""
        means = {m: c.summary.mean for m in self.methods if (c := self.cell(m, teacher)) and c.summary}
        if not means:
            return ()
        low = min(means.values())
        return tuple(m for m, v in means.items() if v == low)

    def compare(self, method_a: str, method_b: str, teacher: str) -> WelchResult:
        """Welch's t-test between two methods' FIDs (succeeded runs) under the same teacher."""
        cells = []
        for m in (method_a, method_b):
            c = self.cell(m, teacher)
            if c is None or c.summary is None:
                raise ValueError(f"compare: no runs with an FID for method {m!r} under teacher {teacher!r}")
            cells.append(c)
        return welch_t_test(cells[0].summary.values, cells[1].summary.values)

    def teacher_label(self, teacher: str) -> str:
        params = self.teacher_params.get(teacher)
        return f"{teacher} ({params})" if params and params != teacher else teacher

    def collapse_rule(self) -> str:
        """What counts as a collapse in this table, in words."""
        if self.collapse_threshold is None:
            return "runs that diverged"
        return f"runs with {self.metric} > {self.collapse_threshold:g} or diverged"

    def caption(self) -> str:
        return (
            (f"{self.title}: " if self.title else "") +
            f"{self.metric} over seeds (lower is better): each try, the mean and the sample std (ddof = 1) "
            f"of the succeeded runs; collapses = {self.collapse_rule()}; best mean per teacher marked."
        )

    # --- export -------------------------------------------------------------------------------

    def _try_text(self, run: Run | None, fmt: str) -> str:
        if run is None:
            return ""
        if run.status == "failed":
            return "failed"
        if run.diverged:
            return "diverged"
        return format(run.fid, fmt)

    def _rows(self, fmt: str) -> list[tuple[str, list[tuple[list[str], str, str, str, bool]]]]:
        """Per method: per teacher (tries, mean, std, collapses, is_best), as text."""
        out = []
        n = self.num_tries
        for m in self.methods:
            groups = []
            for t in self.teachers:
                c = self.cell(m, t)
                runs = list(c.runs) if c else []
                tries = [self._try_text(runs[i] if i < len(runs) else None, fmt) for i in range(n)]
                s = c.summary if c else None
                mean = format(s.mean, fmt) if s else ""
                std = format(s.std, fmt) if s and math.isfinite(s.std) else ""
                groups.append((tries, mean, std, str(c.collapses) if c else "", m in self.best(t)))
            out.append((m, groups))
        return out

    def to_csv(self) -> str:
        """One row per method; per teacher: try1..N, mean, std, n, collapses, best (1/0)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        header = ["metric", "method"]
        for t in self.teachers:
            label = self.teacher_label(t)
            header += [f"{label} try{i + 1}" for i in range(self.num_tries)]
            header += [f"{label} mean", f"{label} std", f"{label} n", f"{label} collapses", f"{label} best"]
        w.writerow(header)
        for m, groups in self._rows(".6g"):
            row = [self.metric, m]
            for t, (tries, mean, std, coll, best) in zip(self.teachers, groups, strict=True):
                c = self.cell(m, t)
                row += tries + [mean, std, str(c.summary.n) if c and c.summary else "0", coll, "1" if best else "0"]
            w.writerow(row)
        return buf.getvalue()

    def to_markdown(self) -> str:
        """A Markdown table (flat headers); the best mean per teacher in bold."""
        n = self.num_tries
        header = ["method"]
        for t in self.teachers:
            label = self.teacher_label(t)
            header += [f"{label} Try {i + 1}" for i in range(n)] + [f"{label} mean", f"{label} std",
                                                                    f"{label} collapses"]
        lines = [f"{self.caption()}", "", "| " + " | ".join(header) + " |",
                 "|" + "---|" + "---:|" * (len(header) - 1)]
        for m, groups in self._rows(".2f"):
            cells = [m]
            for tries, mean, std, coll, best in groups:
                cells += tries + [f"**{mean}**" if best and mean else mean, std, coll]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        """A booktabs LaTeX table with one column group per teacher; the best mean in bold."""
        n = self.num_tries
        width = n + 3
        cols = "l" + ("r" * width) * len(self.teachers)
        groups = " & ".join(
            rf"\multicolumn{{{width}}}{{c}}{{{_tex(self.teacher_label(t))}}}" for t in self.teachers
        )
        rules = " ".join(
            rf"\cmidrule(lr){{{2 + i * width}-{1 + (i + 1) * width}}}" for i in range(len(self.teachers))
        )
        sub = " & ".join([*(f"Try {i + 1}" for i in range(n)), "Mean", "Std", "Coll."] * len(self.teachers))
        lines = [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{_tex(self.caption())}}}",
            rf"\begin{{tabular}}{{{cols}}}",
            r"\toprule",
            rf" & {groups} \\",
            rules,
            rf"Method & {sub} \\",
            r"\midrule",
        ]
        for m, row_groups in self._rows(".2f"):
            cells = [_tex(m)]
            for tries, mean, std, coll, best in row_groups:
                cells += [_tex(x) for x in tries] + [rf"\textbf{{{mean}}}" if best and mean else mean, std, coll]
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"

    def render(self, fmt: str = "md") -> str:
        if fmt not in TABLE_FORMATS:
            raise ValueError(f"format: expected one of {', '.join(TABLE_FORMATS)}, got {fmt!r}")
        return {"md": self.to_markdown, "csv": self.to_csv, "latex": self.to_latex}[fmt]()


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def _table_threshold(metric: str, override: float | None, runs: list[Run]) -> float | None:
    """The threshold `build_table` counts with; None only for a metric of no known family and no FID."""
    if metric in FID_METRICS:
        return collapse_threshold(metric, override)
    if override is not None:
        return _check_threshold(override)
    if any(r.has_fid for r in runs):
        fid_family(metric)  # raises: FIDs of an unknown feature family have no collapse threshold
    return None


def build_table(
    runs: Iterable[Run], *, metric: str, collapse_threshold: float | None = None
) -> StabilityTable:
    """Lay runs out as a `StabilityTable`. Methods follow `METHOD_NAMES`; teachers their first appearance.

    `collapse_threshold`: an FID above it counts as a collapse; None (default) takes the metric's
    feature family default (`COLLAPSE_FID`).
    """
    runs = list(runs)
    threshold = _table_threshold(metric, collapse_threshold, runs)
    if not runs:
        raise ValueError("build_table: no runs")
    teachers: list[str] = []
    params: dict[str, str | None] = {}
    grouped: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        get_method(r.method)
        if r.teacher not in teachers:
            teachers.append(r.teacher)
        if r.teacher_params:
            if params.get(r.teacher) not in (None, r.teacher_params):
                raise ValueError(
                    f"teacher {r.teacher!r}: two different teacher_params ({params[r.teacher]}, {r.teacher_params})"
                )
            params[r.teacher] = r.teacher_params
        group = grouped.setdefault((r.method, r.teacher), [])
        if any(o.seed == r.seed for o in group):
            raise ValueError(f"duplicate run: method {r.method!r}, teacher {r.teacher!r}, seed {r.seed}")
        group.append(r)
    cells = {}
    for (m, t), group in grouped.items():
        group.sort(key=lambda r: r.seed)
        with_fid = [r.fid for r in group if r.has_fid]
        cells[(m, t)] = Cell(
            method=m,
            teacher=t,
            runs=tuple(group),
            summary=seed_summary(with_fid) if with_fid else None,
            collapses=sum(r.is_collapse(math.inf if threshold is None else threshold) for r in group),
            diverged=sum(r.diverged for r in group),
            failed=sum(r.status == "failed" for r in group),
        )
    methods = tuple(m for m in METHOD_NAMES if any(k[0] == m for k in cells))
    return StabilityTable(metric=metric, methods=methods, teachers=tuple(teachers), cells=cells,
                          collapse_threshold=threshold, teacher_params=params)


# --- reading runs --------------------------------------------------------------------------------


def _csv_rows(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in csv.DictReader(lines)]


def _parse_fid(text: str) -> float | None:
    if text == "":
        return None
    return float(text)  # "nan" and "inf" parse; they mark a diverged run


_TRY_COLUMN = re.compile(r"^try(\d+)$")


def _wide_to_long(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rows in the paper's layout (one per method and teacher, columns try1..tryN) -> one row per try."""
    out = []
    for row in rows:
        for key, value in row.items():
            if (m := _TRY_COLUMN.match(key)) and value != "":
                out.append({"teacher": row.get("teacher") or row.get("teacher_params", ""),
                            "teacher_params": row.get("teacher_params", ""), "method": row.get("method", ""),
                            "seed": m.group(1), "fid": value, "features": row.get("features", "")})
    return out


def read_runs(path: str | Path, *, features: str | None = None) -> tuple[list[Run], str]:
    """Read a runs CSV; returns (runs, metric name such as ``fid_digits``).

    Columns: teacher (or teacher_params alone), method, seed, an FID column (``fid_digits``,
    ``fid_inception``, or ``fid`` with a ``features`` column or the `features` argument),
    optional status (default: succeeded, or diverged when the FID is empty/NaN/inf) and
    teacher_params. The paper's wide layout (one row per method and teacher with columns
    try1..tryN, like liftplace/reference/paper_table6.csv) is read too: try N becomes seed N, and
    the features come from a ``features`` column or the `features` argument. Lines starting with
    ``#`` are comments. Errors name the file and row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"runs: {path} is not a file")
    rows = _csv_rows(path.read_text())
    if not rows:
        raise ValueError(f"runs: {path} holds no rows")
    wide = "seed" not in rows[0] and any(_TRY_COLUMN.match(k) for k in rows[0])
    if wide:
        rows = _wide_to_long(rows)
    return _runs_from_rows(rows, features=features, source=str(path), first_row=2 if not wide else None)


def _runs_from_rows(
    rows: list[dict[str, str]], *, features: str | None, source: str, first_row: int | None
) -> tuple[list[Run], str]:
    columns = set(rows[0])
    fid_cols = [c for c in ("fid_digits", "fid_inception", "fid") if c in columns]
    if len(fid_cols) != 1:
        raise ValueError(f"runs: {source} needs exactly one FID column (fid_digits, fid_inception or fid), "
                         f"found {fid_cols or 'none'}")
    fid_col = fid_cols[0]
    if fid_col == "fid":
        found = {r.get("features", "") for r in rows} - {""}
        if len(found) > 1:
            raise ValueError(f"runs: {source} mixes features {sorted(found)}; a table compares one feature space")
        col_features = found.pop() if found else None
        if col_features and features and col_features != features:
            raise ValueError(f"runs: {source} says features {col_features!r}, but {features!r} was asked for")
        features = col_features or features
        if features is None:
            raise ValueError(f"runs: {source} has plain FIDs; add a 'features' column (digits or inception), "
                             "name the column fid_digits / fid_inception, or pass the features (--features)")
        metric = f"fid_{features}"
    else:
        metric = fid_col
        if features and metric != f"fid_{features}":
            raise ValueError(f"runs: {source} holds {metric}, but features {features!r} was asked for")
    if metric not in FID_METRICS:
        raise ValueError(f"runs: features must be one of digits, inception; got {metric!r}")
    missing = {"method", "seed"} - columns
    if not ({"teacher", "teacher_params"} & columns):
        missing.add("teacher")
    if missing:
        raise ValueError(f"runs: {source} lacks the column(s) {', '.join(sorted(missing))}")
    runs = []
    for i, row in enumerate(rows):
        where = f"runs: {source} " + (f"row {first_row + i}" if first_row is not None else
                                      f"method {row['method']!r}, teacher {row['teacher']!r}, try {row['seed']}")
        try:
            fid = _parse_fid(row[fid_col])
            seed = int(row["seed"])
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        status = row.get("status") or ("succeeded" if fid is not None and math.isfinite(fid) else "diverged")
        if status == "succeeded" and fid is None:
            raise ValueError(f"{where}: status succeeded but no {fid_col}")
        try:
            get_method(row["method"])
            runs.append(Run(teacher=row.get("teacher") or row["teacher_params"], method=row["method"], seed=seed,
                            fid=fid, status=status, teacher_params=row.get("teacher_params") or None))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return runs, metric


def table_from_csv(
    path: str | Path, *, features: str | None = None, collapse_threshold: float | None = None
) -> StabilityTable:
    """`read_runs` then `build_table` (collapse threshold: None = the FID family's default)."""
    runs, metric = read_runs(path, features=features)
    return build_table(runs, metric=metric, collapse_threshold=collapse_threshold)


# --- the paper's Table 6 -------------------------------------------------------------------------


def paper_table6_rows() -> list[dict[str, str]]:
    """The paper's Table 6 as shipped (liftplace/reference/paper_table6.csv): tries, mean and std."""
    from importlib.resources import files

    return _csv_rows((files("liftplace") / "reference" / _PAPER_TABLE6).read_text())


def paper_table6_runs() -> list[Run]:
    """The paper's Table 6 tries as runs: teacher = its parameter count, seed = try number."""
    runs, _ = _runs_from_rows(_wide_to_long(paper_table6_rows()), features="inception",
                              source=f"liftplace/reference/{_PAPER_TABLE6}", first_row=None)
    return runs


def paper_table6(collapse_threshold: float | None = None) -> StabilityTable:
    """The paper's Table 6 rebuilt from its tries (Inception FID, CelebA 64x64)."""
    return build_table(paper_table6_runs(), metric=PAPER_TABLE6_METRIC, collapse_threshold=collapse_threshold)
