"""/api/studies on SQLite and PostgreSQL: expansion, validation, the Table-6 grid, cell aggregation."""

from __future__ import annotations

import csv
import io
import statistics

from sqlalchemy import select

from server.models import StudyCell
from tests.server.server_testkit import FakeTracking, Harness


def _study(h: Harness, expect: int = 201, **body) -> dict:
    body = {"name": "stability", "teachers": ["t-small"], "methods": ["lift"], "seeds": 2, "student_ratio": 0.5,
            "steps": 5, **body}
    r = h.client.post("/api/studies", json={k: v for k, v in body.items() if v is not None})  # None: left out
    assert r.status_code == expect, r.text
    return r.json()


def test_a_study_expands_into_one_job_per_teacher_method_seed(harness: Harness) -> None:
    study = _study(harness, teachers=["t-small", "t-large"], methods=["lift+place+featkd", "outkd"],
                   seeds=[3, 7, 11], steps=9)
    assert study["jobs"] == 12 and study["status"] == "queued" and study["status_counts"]["queued"] == 12
    assert study["methods"] == ["outkd", "lift+place+featkd"]  # the library's method order
    assert study["cells_total"] == 4 and study["cells_complete"] == 0
    jobs = harness.client.get("/api/jobs", params={"study": study["id"], "limit": 100}).json()
    assert jobs["total"] == 12
    combos = {(j["teacher"], j["method"], j["seed"]) for j in jobs["items"]}
    assert combos == {(t, m, s) for t in ("t-small", "t-large") for m in ("lift+place+featkd", "outkd")
                      for s in (3, 7, 11)}
    assert all(j["steps"] == 9 and j["student_ratio"] == 0.5 and j["study_id"] == study["id"] for j in jobs["items"])
    assert _study(harness, name="default seeds")["seeds"] == [0, 1] and _study(
        harness, name="five", seeds=None)["seeds"] == [0, 1, 2, 3, 4]
    listed = harness.client.get("/api/studies").json()
    assert listed["total"] == 3 and listed["items"][0]["name"] == "five"


def test_bad_studies_are_refused_and_nothing_is_stored(make_harness) -> None:
    with make_harness(max_jobs_per_study=10) as h:
        cases = [
            ({"seeds": 6, "methods": ["lift", "outkd"]}, "seeds", "12 jobs, over the limit of 10"),
            ({"seeds": [1, 1]}, "seeds", "must not repeat 1"),
            ({"seeds": 0}, "seeds", "between 1 and"),
            ({"seeds": []}, "seeds", "at least one seed"),
            ({"teachers": ["t-small", "t-small"]}, "teachers", "must not repeat t-small"),
            ({"teachers": ["t-small", "ghost"]}, "teachers", "unknown teacher 'ghost'"),
            ({"teachers": []}, "teachers", "at least 1"),
            ({"methods": ["lift", "nope"]}, "methods", "Input should be"),
            ({"name": " padded"}, "name", "spaces"),
            ({"student_ratio": 1.2}, "student_ratio", "less than 1"),
            ({"collapse_fid": 0}, "collapse_fid", "greater than 0"),
            ({"collapse_fid": -5}, "collapse_fid", "greater than 0"),
            ({"collapse_fid": "high"}, "collapse_fid", "valid number"),
            ({"collapse_fid": "Infinity"}, "collapse_fid", "finite number"),
        ]
        for change, field, message in cases:
            r = h.client.post("/api/studies", json={"name": "s", "teachers": ["t-small"], "methods": ["lift"],
                                                    **{k: v for k, v in change.items()}})
            assert r.status_code == 422, (change, r.text)
            errors = r.json()["detail"]
            assert any(field in e["loc"] and message in e["msg"] for e in errors), (change, errors)
        assert h.client.get("/api/studies").json()["total"] == 0 and h.job_count() == 0
        _study(h, name="taken")
        r = h.client.post("/api/studies", json={"name": "taken", "teachers": ["t-small"], "methods": ["lift"]})
        assert r.status_code == 409 and "already exists" in r.json()["detail"]
        assert h.client.get("/api/studies").json()["total"] == 1 and h.job_count() == 2


class _FlakyTracking(FakeTracking):
    """MLflow that refuses cell logs while `down` is set."""

    down = True

    def log_cells(self, run_id: str, cells: list[dict], *, tables: dict[str, str], complete: bool) -> None:
        if self.down:
            raise ConnectionError("MLflow is down")
        super().log_cells(run_id, cells, tables=tables, complete=complete)


def test_mlflow_synced_says_whether_the_parent_run_holds_every_ended_cell(make_harness) -> None:
    tracking = _FlakyTracking()
    with make_harness(tracking=tracking) as h:
        study = _study(h)
        assert study["mlflow_synced"] is False  # no parent run yet
        url = f"/api/studies/{study['id']}"
        h.tick_until(lambda: h.client.get(url).json()["status"] == "ended", what="the study to end")
        for _ in range(3):
            h.tick()
        got = h.client.get(url).json()
        assert got["cells_complete"] == 1 and got["mlflow_run_id"] and got["mlflow_synced"] is False
        assert tracking.cell_logs == []
        tracking.down = False
        h.dispatcher._mlflow_wait_until = 0.0  # skip the back-off the failed log started
        h.tick_until(lambda: h.client.get(url).json()["mlflow_synced"], what="the cells to reach MLflow")
        assert tracking.cell_logs[-1]["complete"] is True


def test_the_table_aggregates_finished_cells(make_harness) -> None:
    tracking = FakeTracking()
    fids = {  # (teacher, method, seed) -> outcome
        ("t-small", "lift", 0): {"status": "succeeded", "fid": 10.0},
        ("t-small", "lift", 1): {"status": "succeeded", "fid": 14.0},
        ("t-small", "lift", 2): {"status": "succeeded", "fid": 15.0},
        ("t-small", "outkd", 0): {"status": "succeeded", "fid": 20.0},
        ("t-small", "outkd", 1): {"status": "diverged", "diverged_step": 3},
        ("t-small", "outkd", 2): {"status": "succeeded", "fid": 250.0},  # a collapse (> 100)
        ("t-large", "lift", 0): {"status": "succeeded", "fid": 8.0},
        ("t-large", "lift", 1): {"status": "failed", "reason": "disk full"},  # shown, not summarised
        ("t-large", "lift", 2): {"status": "succeeded", "fid": 9.0},
    }
    with make_harness(tracking=tracking) as h:
        h.runner.plan = lambda spec: fids[(spec.teacher_name, spec.method, spec.seed)]
        study = _study(h, teachers=["t-small", "t-large"], methods=["lift", "outkd"], seeds=3)
        # t-large x outkd: cancelled before it runs; the cell still ends
        jobs = h.client.get("/api/jobs", params={"study": study["id"], "limit": 100}).json()["items"]
        for j in jobs:
            if (j["teacher"], j["method"]) == ("t-large", "outkd"):
                assert h.client.post(f"/api/jobs/{j['id']}/cancel").status_code == 200
        h.tick_until(lambda: h.client.get(f"/api/studies/{study['id']}").json()["status"] == "ended",
                     what="the study to end")
        got = h.client.get(f"/api/studies/{study['id']}").json()
        assert got["cells_complete"] == 4 and got["status_counts"]["succeeded"] == 7
        assert got["mlflow_run_id"] == f"parent-{study['id']}"
        assert got["mlflow_url"] == f"http://mlflow.test/#/experiments/7/runs/parent-{study['id']}"

        table = h.client.get(f"/api/studies/{study['id']}/table").json()
        assert table["metric"] == "fid_digits" and table["methods"] == ["outkd", "lift"]
        cells = {(c["teacher"], c["method"]): c for c in table["cells"]}
        lift = cells[("t-small", "lift")]
        assert lift["complete"] and lift["n"] == 3 and lift["collapses"] == 0
        assert lift["mean"] == statistics.mean([10, 14, 15]) and lift["std"] == statistics.stdev([10, 14, 15])
        assert [t["fid"] for t in lift["tries"]] == [10.0, 14.0, 15.0]
        outkd = cells[("t-small", "outkd")]
        assert outkd["n"] == 2 and outkd["collapses"] == 2 and outkd["status_counts"]["diverged"] == 1
        large = cells[("t-large", "lift")]
        assert large["n"] == 2 and large["collapses"] == 0 and large["status_counts"]["failed"] == 1
        cancelled = cells[("t-large", "outkd")]
        assert cancelled["complete"] and cancelled["n"] == 0 and cancelled["mean"] is None
        assert cancelled["status_counts"]["cancelled"] == 3
        assert table["best"] == {"t-small": ["lift"], "t-large": ["lift"]}

        # Stored cells equal the live computation; each job was a nested run of the study's parent run.
        with h.app.state.sessionmaker() as s:
            rows = {(c.teacher, c.method): c for c in s.scalars(select(StudyCell))}
        assert set(rows) == set(cells)
        assert rows[("t-small", "lift")].mean == lift["mean"] and rows[("t-small", "outkd")].collapses == 2
        assert all(s.mlflow_parent_run_id == f"parent-{study['id']}" for s in h.runner.specs)
        assert all(s.study_name == "stability" for s in h.runner.specs)

        # Cell summaries reached the parent run; the last log saw the complete study.
        h.tick_until(lambda: tracking.cell_logs and tracking.cell_logs[-1]["complete"], what="cells in MLflow")
        last = tracking.cell_logs[-1]
        logged = {(c["teacher"], c["method"]): c for c in last["cells"]}
        assert last["run_id"] == f"parent-{study['id']}" and logged[("t-small", "lift")]["mean"] == lift["mean"]
        assert "study_table.md" in last["tables"] and "study_table.csv" in last["tables"]
        assert [r[0] for r in tracking.study_runs] == [study["id"]]  # one parent run per study
        assert h.client.get(f"/api/studies/{study['id']}").json()["mlflow_synced"] is True

        csv_r = h.client.get(f"/api/studies/{study['id']}/table", params={"format": "csv"})
        assert csv_r.status_code == 200 and csv_r.headers["content-type"].startswith("text/csv")
        rows_csv = {r["method"]: r for r in csv.DictReader(io.StringIO(csv_r.text))}
        assert float(rows_csv["lift"]["t-small (5,000) mean"]) == lift["mean"]
        assert rows_csv["outkd"]["t-small (5,000) try2"] == "diverged"
        md = h.client.get(f"/api/studies/{study['id']}/table", params={"format": "md"}).text
        assert "| lift |" in md and "**13.00**" in md
        latex = h.client.get(f"/api/studies/{study['id']}/table", params={"format": "latex"}).text
        assert r"\begin{tabular}" in latex and r"\textbf{13.00}" in latex
        assert h.client.get(f"/api/studies/{study['id']}/table", params={"format": "xlsx"}).status_code == 422


def test_retrying_a_seed_reopens_its_cell(harness: Harness) -> None:
    outcomes = {0: {"status": "succeeded", "fid": 5.0}, 1: {"status": "failed", "reason": "flaky"}}
    harness.runner.plan = lambda spec: outcomes[spec.seed]
    study = _study(harness, seeds=2)
    harness.tick_until(lambda: harness.client.get(f"/api/studies/{study['id']}").json()["cells_complete"] == 1,
                       what="the cell to end")
    failed = next(j for j in harness.client.get("/api/jobs", params={"status": "failed"}).json()["items"])
    outcomes[1] = {"status": "succeeded", "fid": 7.0}
    assert harness.client.post(f"/api/jobs/{failed['id']}/retry").status_code == 200
    assert harness.client.get(f"/api/studies/{study['id']}").json()["cells_complete"] == 0  # not complete anymore
    harness.tick_until(lambda: harness.client.get(f"/api/studies/{study['id']}").json()["cells_complete"] == 1,
                       what="the cell to end again")
    cell = harness.client.get(f"/api/studies/{study['id']}/table").json()["cells"][0]
    assert cell["n"] == 2 and cell["mean"] == 6.0 and cell["status_counts"]["succeeded"] == 2


def test_cancel_a_whole_study(harness: Harness) -> None:
    harness.runner.hold.set()
    study = _study(harness, seeds=3)
    harness.tick_until(lambda: harness.client.get(f"/api/studies/{study['id']}").json()["status_counts"]["running"]
                       == 3, what="the jobs to run")
    r = harness.client.post(f"/api/studies/{study['id']}/cancel")
    assert r.status_code == 200
    harness.tick_until(lambda: harness.client.get(f"/api/studies/{study['id']}").json()["status"] == "ended",
                       what="the study to end")
    got = harness.client.get(f"/api/studies/{study['id']}").json()
    assert got["status_counts"]["cancelled"] == 3 and got["cells_complete"] == 1
