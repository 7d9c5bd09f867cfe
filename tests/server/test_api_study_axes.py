"""Study axes on SQLite and PostgreSQL: a study sweeps distillation options like a grid search.

Expansion (an axis a method ignores does not multiply its jobs), validation (422 naming the axis),
cells keyed by axis values, the dashboard's panels, heatmaps and Welch's test against a chosen
baseline cell, the downloads, and the MLflow parent run.
"""

from __future__ import annotations

import csv
import io
import json
import statistics

from sqlalchemy import select

from liftplace.stats import welch_t_test
from server.models import StudyCell
from tests.server.server_testkit import FakeTracking, Harness


def _study(h: Harness, expect: int = 201, **body) -> dict:
    body = {"name": "sweep", "teachers": ["t-small"], "methods": ["outkd", "lift+place"], "seeds": 2,
            "student_ratio": 0.5, "steps": 5, **body}
    r = h.client.post("/api/studies", json=body)
    assert r.status_code == expect, r.text
    return r.json()


def _jobs(h: Harness, study_id: int) -> list[dict]:
    return h.client.get("/api/jobs", params={"study": study_id, "limit": 500}).json()["items"]


def test_axes_cross_teachers_methods_seeds_and_an_ignored_axis_does_not_multiply(harness: Harness) -> None:
    study = _study(harness, axes={"coarse": ["l1", "l2"], "lr": [0.01, 0.001]})
    # outkd ignores coarse: 2 lr x 2 seeds; lift+place uses both: 2 coarse x 2 lr x 2 seeds
    assert study["jobs"] == 4 + 8 and study["cells_total"] == 2 + 4
    assert study["axes"] == {"lr": [0.01, 0.001], "coarse": ["l1", "l2"]}  # the library's axis order
    jobs = _jobs(harness, study["id"])
    outkd = [(j["options"]["lr"], j["seed"]) for j in jobs if j["method"] == "outkd"]
    assert sorted(outkd) == sorted((lr, s) for lr in (0.01, 0.001) for s in (0, 1))
    assert {j["options"]["coarse"] for j in jobs if j["method"] == "outkd"} == {"l1"}  # the option's default
    place = {(j["options"]["coarse"], j["options"]["lr"], j["seed"]) for j in jobs if j["method"] == "lift+place"}
    assert place == {(c, lr, s) for c in ("l1", "l2") for lr in (0.01, 0.001) for s in (0, 1)}

    # steps and student_ratio have their own job columns; a single-value axis is allowed
    other = _study(harness, name="columns", methods=["outkd"], seeds=1,
                   axes={"steps": [5, 7], "student_ratio": [0.5, 0.7], "lambda_kd": [0.5]})
    assert other["jobs"] == 4
    got = {(j["steps"], j["student_ratio"], j["options"]["lambda_kd"]) for j in _jobs(harness, other["id"])}
    assert got == {(s, r, 0.5) for s in (5, 7) for r in (0.5, 0.7)}

    # no axes: exactly as before
    plain = _study(harness, name="plain")
    assert plain["axes"] == {} and plain["jobs"] == 4 and plain["cells_total"] == 2


def test_bad_axes_are_refused_naming_the_axis_and_nothing_is_stored(make_harness) -> None:
    with make_harness(max_jobs_per_study=20, max_steps=1000) as h:
        cases = [
            ({"temperature": [1, 2]}, ("axes", "temperature"), "Extra inputs are not permitted"),
            ({"featkd_layers": ["blocks"]}, ("axes", "featkd_layers"), "Extra inputs are not permitted"),
            ({"lr": ["fast"]}, ("axes", "lr", 0), "valid number"),
            ({"curriculum": ["sometimes"]}, ("axes", "curriculum", 0), "valid boolean"),
            ({"coarse": ["l1", "l3"]}, ("axes", "coarse", 1), "'l1' or 'l2'"),
            ({"lr": [0.01, 0]}, ("axes", "lr", 1), "greater than 0"),
            ({"lr": [2.0]}, ("axes", "lr", 0), "less than or equal to 1"),
            ({"student_ratio": [0.5, 1.0]}, ("axes", "student_ratio", 1), "less than 1"),
            ({"steps": [1.5]}, ("axes", "steps", 0), "valid integer"),
            ({"steps": [10, 5000]}, ("axes", "steps", 1), "axes.steps.1: 5000 is over the limit of 1000"),
            ({"group_size": [16, 3]}, ("axes", "group_size", 1), "does not divide the 64 positions"),
            ({"lr": []}, ("axes", "lr"), "at least 1 item"),
            ({"lr": [0.01, 0.01]}, ("axes", "lr"), "must not repeat 0.01"),
            ({"lr": 0.01}, ("axes", "lr"), "valid list"),
            # lift+place: 3 x 4 = 12 combinations; outkd: 3 lr; x 2 seeds = 30 jobs > 20
            ({"lr": [0.1, 0.01, 0.001], "group_size": [1, 2, 4, 16]}, ("axes", "group_size"),
             "30 jobs, over the limit of 20"),
        ]
        for axes, loc, message in cases:
            r = h.client.post("/api/studies", json={"name": "s", "teachers": ["t-small"],
                                                    "methods": ["outkd", "lift+place"], "seeds": 2, "axes": axes})
            assert r.status_code == 422, (axes, r.text)
            errors = r.json()["detail"]
            assert any(tuple(e["loc"][1:]) == loc and message in e["msg"] for e in errors), (axes, errors)
        assert h.client.get("/api/studies").json()["total"] == 0 and h.job_count() == 0
        # the limit counts what is run: outkd ignores group_size (3 + 3 x 2 = 9 jobs x 2 seeds = 18)
        assert _study(h, axes={"lr": [0.1, 0.01, 0.001], "group_size": [4, 16]})["jobs"] == 18


def _fid(spec) -> float:
    """A made-up FID that depends on the method, the coarse distance and the seed."""
    base = {"outkd": 30.0, "lift": 20.0}[spec.method] + (5.0 if spec.coarse == "l2" else 0.0)
    return base + [0.0, 1.0, 3.0][spec.seed]


def test_cells_per_axis_value_dashboard_baseline_downloads_and_mlflow(make_harness) -> None:
    tracking = FakeTracking()
    with make_harness(tracking=tracking) as h:
        h.runner.plan = lambda spec: {"status": "succeeded", "fid": _fid(spec)}
        study = _study(h, methods=["outkd", "lift"], seeds=3, axes={"coarse": ["l1", "l2"]})
        sid = study["id"]
        assert study["jobs"] == 3 + 6 and study["cells_total"] == 3
        h.tick_until(lambda: h.client.get(f"/api/studies/{sid}").json()["status"] == "ended", what="the study")

        table = h.client.get(f"/api/studies/{sid}/table").json()
        assert table["axes"] == {"coarse": ["l1", "l2"]}
        cells = {c["key"]: c for c in table["cells"]}
        outkd, l1, l2 = "t-small/outkd", 't-small/lift/{"coarse":"l1"}', 't-small/lift/{"coarse":"l2"}'
        assert list(cells) == [outkd, l1, l2]
        assert cells[outkd]["axes"] == {} and cells[l2]["axes"] == {"coarse": "l2"}
        assert cells[l1]["mean"] == statistics.mean([20, 21, 23]) and cells[l2]["mean"] == statistics.mean([25, 26, 28])
        assert cells[outkd]["mean"] == statistics.mean([30, 31, 33]) and cells[outkd]["n"] == 3
        assert table["best"] == {"t-small": ["lift"]}
        with h.app.state.sessionmaker() as s:  # the stored cells: one row per (teacher, method, axis values)
            rows = {(c.method, c.axes): c.mean for c in s.scalars(select(StudyCell).where(StudyCell.study_id == sid))}
        assert rows == {("outkd", "{}"): cells[outkd]["mean"], ("lift", '{"coarse":"l1"}'): cells[l1]["mean"],
                        ("lift", '{"coarse":"l2"}'): cells[l2]["mean"]}

        # dashboard: a grid per axis value, the outkd cell beside each; Welch against the default baseline
        d = h.client.get(f"/api/studies/{sid}/dashboard").json()
        assert [(p["axes"], p["label"], p["cells"]) for p in d["panels"]] == [
            ({"coarse": "l1"}, "coarse = l1", [outkd, l1]), ({"coarse": "l2"}, "coarse = l2", [outkd, l2])]
        assert d["panels"][1]["best"] == {"t-small": [l2]} and d["heatmaps"] == [] and d["welch"] == []
        assert d["baseline"] == outkd and [w["key_a"] for w in d["versus_baseline"]] == [l1, l2]
        # a baseline you choose
        d = h.client.get(f"/api/studies/{sid}/dashboard", params={"baseline": l1}).json()
        assert d["baseline"] == l1
        versus = {w["key_a"]: w for w in d["versus_baseline"]}
        assert set(versus) == {outkd, l2} and all(w["key_b"] == l1 for w in versus.values())
        expected = welch_t_test([25.0, 26.0, 28.0], [20.0, 21.0, 23.0])
        assert versus[l2]["pvalue"] == expected.pvalue and versus[l2]["statistic"] == expected.statistic
        assert versus[l2]["pvalue"] < 0.05 and versus[l2]["mean_a"] > versus[l2]["mean_b"]
        r = h.client.get(f"/api/studies/{sid}/dashboard", params={"baseline": "t-small/lift"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "baseline"]
        assert "no cell 't-small/lift'" in r.json()["detail"][0]["msg"]
        links = {link["key"]: link for link in d["mlflow_cells"]}
        assert links[l2]["runs"] == 3 and "params.coarse = 'l2'" in links[l2]["search_filter"]

        # downloads: a grid per axis value; the CSV's leading column is the axis
        rows_csv = list(csv.DictReader(io.StringIO(
            h.client.get(f"/api/studies/{sid}/table", params={"format": "csv"}).text)))
        assert [(r["coarse"], r["method"]) for r in rows_csv] == [("l1", "outkd"), ("l1", "lift"), ("l2", "outkd"),
                                                                   ("l2", "lift")]
        assert rows_csv[3]["t-small (5,000) mean"] == format(cells[l2]["mean"], ".6g")
        assert rows_csv[0]["t-small (5,000) mean"] == rows_csv[2]["t-small (5,000) mean"]  # outkd beside each
        md = h.client.get(f"/api/studies/{sid}/table", params={"format": "md"}).text
        assert md.count("coarse = l1: fid_digits") == 1 and md.count("coarse = l2: fid_digits") == 1
        latex = h.client.get(f"/api/studies/{sid}/table", params={"format": "latex"}).text
        assert latex.count(r"\begin{tabular}") == 2 and "coarse = l2" in latex

        # MLflow: the parent run was started with the axes; cells carry their values, tables their grids
        h.tick_until(lambda: tracking.cell_logs and tracking.cell_logs[-1]["complete"], what="cells in MLflow")
        assert tracking.study_axes[sid] == {"coarse": ["l1", "l2"]}
        last = tracking.cell_logs[-1]
        assert sorted(json.dumps(c["axes"]) for c in last["cells"]) == ['{"coarse": "l1"}', '{"coarse": "l2"}', "{}"]
        assert "coarse = l2" in last["tables"]["study_table.md"] and "coarse," in last["tables"]["study_table.csv"]


def test_two_axes_make_a_heatmap_per_teacher_and_method(harness: Harness) -> None:
    study = _study(harness, methods=["outkd", "lift"], seeds=1, axes={"coarse": ["l1", "l2"], "lr": [0.01, 0.001]})
    d = harness.client.get(f"/api/studies/{study['id']}/dashboard").json()
    assert len(d["panels"]) == 4 and d["panels"][0]["label"] == "lr = 0.01, coarse = l1"
    maps = {(m["teacher"], m["method"]): m for m in d["heatmaps"]}
    lift = maps[("t-small", "lift")]
    assert (lift["row_axis"], lift["rows"], lift["col_axis"], lift["cols"]) == ("lr", [0.01, 0.001], "coarse",
                                                                                ["l1", "l2"])
    assert lift["cells"][1][0] == 't-small/lift/{"coarse":"l1","lr":0.001}'
    outkd = maps[("t-small", "outkd")]  # ignores coarse: one cell per lr, across every coarse column
    assert outkd["cells"] == [['t-small/outkd/{"lr":0.01}'] * 2, ['t-small/outkd/{"lr":0.001}'] * 2]


def test_a_retried_job_reopens_only_its_own_cell(make_harness) -> None:
    with make_harness() as h:
        h.runner.plan = lambda spec: {"status": "failed" if spec.coarse == "l2" else "succeeded", "fid": 1.0}
        study = _study(h, methods=["lift"], seeds=1, axes={"coarse": ["l1", "l2"]})
        sid = study["id"]
        h.tick_until(lambda: h.client.get(f"/api/studies/{sid}").json()["cells_complete"] == 2, what="two cells")
        failed = next(j for j in _jobs(h, sid) if j["status"] == "failed")
        h.runner.plan = lambda spec: {"status": "succeeded", "fid": 2.0}
        h.runner.hold.set()
        assert h.client.post(f"/api/jobs/{failed['id']}/retry").status_code == 200
        with h.app.state.sessionmaker() as s:
            kept = [c.axes for c in s.scalars(select(StudyCell).where(StudyCell.study_id == sid))]
        assert kept == ['{"coarse":"l1"}']
        h.runner.release()
        h.tick_until(lambda: h.client.get(f"/api/studies/{sid}").json()["cells_complete"] == 2, what="the cell again")
