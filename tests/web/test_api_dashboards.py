"""The dashboards' read endpoints (server/api/artifacts.py) on SQLite and PostgreSQL, and the metric history
the worker writes for them (worker/run.py: metrics.jsonl)."""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import pytest

from liftplace.methods import METHODS, PAPER_METHOD
from liftplace.stats import COLLAPSE_FID, paper_table6_rows, welch_t_test
from server.services.dashboards import compare_url, downsample
from tests.server.server_testkit import FakeTracking, Harness
from worker.run import METRICS_MAX_LINES
from worker.spec import METRICS_FILE, read_metrics

# --- metric history --------------------------------------------------------------------------------------------


def test_read_metrics_keeps_the_later_line_of_a_step_and_skips_broken_lines(tmp_path: Path) -> None:
    path = tmp_path / METRICS_FILE
    lines = [{"step": 1, "loss_total": 4.0, "w": 0.1}, {"step": 2, "loss_total": 3.0},
             {"step": 3, "loss_total": 2.0, "w": 0.5},
             # a resumed run starts again from its checkpoint at step 2: its lines supersede the earlier ones
             {"step": 2, "loss_total": 3.5, "w": 0.2}, {"step": 3, "loss_total": 2.5, "w": 0.6}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"step": 4, "loss_to')  # cut by a crash
    steps, series = read_metrics(path)
    assert steps == [1, 2, 3]
    assert series == {"loss_total": [4.0, 3.5, 2.5], "w": [0.1, 0.2, 0.6]}
    assert read_metrics(tmp_path / "missing.jsonl") == ([], {})


def test_the_worker_writes_about_a_thousand_lines_whatever_the_length(tmp_path: Path) -> None:
    from worker.run import _Callbacks, _Job
    from worker.spec import JobSpec

    total = 3 * METRICS_MAX_LINES + 1  # every 3rd step, and the last one
    job = _Job(JobSpec(job_id=1, kind="distill", output_dir=str(tmp_path)), None, "cpu")
    callbacks = _Callbacks(job)
    callbacks.on_start(0, total)
    for step in range(1, total + 1):
        callbacks.on_step(step, total, {"loss_total": 1.0 / step, "w": float("nan")})
    steps, series = read_metrics(tmp_path / METRICS_FILE)
    assert steps == [*range(3, total, 3), total] and len(steps) == METRICS_MAX_LINES + 1
    assert series["loss_total"][-1] == pytest.approx(1.0 / total) and "w" not in series  # non-finite values left out

    short = tmp_path / "short"
    job = _Job(JobSpec(job_id=2, kind="distill", output_dir=str(short)), None, "cpu")
    short.mkdir()
    callbacks = _Callbacks(job)
    callbacks.on_start(0, 7)
    for step in range(1, 8):
        callbacks.on_step(step, 7, {"loss_total": float(step)})
    assert read_metrics(short / METRICS_FILE)[0] == list(range(1, 8))  # short runs: every step


def test_downsample_keeps_first_and_last_and_spreads_the_rest() -> None:
    assert downsample(5, 10) == [0, 1, 2, 3, 4]
    picked = downsample(1001, 11)
    assert picked == list(range(0, 1001, 100))
    picked = downsample(997, 300)
    assert picked[0] == 0 and picked[-1] == 996 and len(picked) <= 300 and picked == sorted(set(picked))


def _write_history(h: Harness, job_id: int, n: int) -> None:
    folder = h.settings.jobs_dir / str(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"step": s, "loss_total": 10.0 / s, "slope_mean": 1 - 1 / s, "intercept_mean": 1 / s, "w": s / n}
            for s in range(1, n + 1)]
    (folder / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_job_metrics_endpoint(harness: Harness) -> None:
    job = harness.submit(steps=50)
    r = harness.client.get(f"/api/jobs/{job['id']}/metrics")
    assert r.status_code == 200 and r.json() == {"job_id": job["id"], "steps": [], "series": {}, "total_points": 0}
    _write_history(harness, job["id"], 50)
    got = harness.client.get(f"/api/jobs/{job['id']}/metrics", params={"max_points": 8}).json()
    assert got["total_points"] == 50 and len(got["steps"]) <= 8 and got["steps"][0] == 1 and got["steps"][-1] == 50
    assert set(got["series"]) == {"loss_total", "slope_mean", "intercept_mean", "w"}
    assert all(len(values) == len(got["steps"]) for values in got["series"].values())
    assert got["series"]["w"] == [s / 50 for s in got["steps"]]
    full = harness.client.get(f"/api/jobs/{job['id']}/metrics").json()
    assert full["steps"] == list(range(1, 51))
    assert harness.client.get("/api/jobs/999/metrics").status_code == 404
    for bad in (1, 10**6):
        r = harness.client.get(f"/api/jobs/{job['id']}/metrics", params={"max_points": bad})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "max_points"]


def test_job_files_are_served_by_name_only(harness: Harness) -> None:
    job = harness.submit()
    folder = harness.settings.jobs_dir / str(job["id"])
    folder.mkdir(parents=True, exist_ok=True)
    png = b"\x89PNG\r\n\x1a\nfake"
    (folder / "samples.png").write_bytes(png)
    (folder / "job.log").write_text("line 1\n")
    (folder / "outcome.json").write_text("{}")
    r = harness.client.get(f"/api/jobs/{job['id']}/files/samples.png")
    assert r.status_code == 200 and r.content == png and r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "no-cache" and r.headers.get("etag")
    r = harness.client.get(f"/api/jobs/{job['id']}/files/job.log")
    assert r.status_code == 200 and r.text == "line 1\n" and r.headers["content-type"].startswith("text/plain")
    assert harness.client.get(f"/api/jobs/{job['id']}/files/error_map.png").status_code == 404  # not written (yet)
    assert harness.client.get("/api/jobs/999/files/samples.png").status_code == 404
    # Anything but the listed names is refused, whatever the folder holds; a path never reaches the disk.
    for name in ("outcome.json", "..%2F..%2Fliftplace.db", "%2Fetc%2Fpasswd", "samples.png%00.txt"):
        r = harness.client.get(f"/api/jobs/{job['id']}/files/{name}")
        assert r.status_code in (404, 422), (name, r.status_code)
        assert r.content != png and b"{}" != r.content
    r = harness.client.get(f"/api/jobs/{job['id']}/files/outcome.json")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "name"]


# --- study dashboard, Welch ------------------------------------------------------------------------------------


FIDS = {  # (teacher, method, seed) -> outcome: a cell with a collapse, one with a diverged try
    ("t-small", "outkd", 0): {"status": "succeeded", "fid": 30.0},
    ("t-small", "outkd", 1): {"status": "succeeded", "fid": 150.0},  # over the collapse threshold
    ("t-small", "outkd", 2): {"status": "succeeded", "fid": 45.0},
    ("t-small", "lift+place+featkd", 0): {"status": "succeeded", "fid": 20.0},
    ("t-small", "lift+place+featkd", 1): {"status": "succeeded", "fid": 21.5},
    ("t-small", "lift+place+featkd", 2): {"status": "diverged", "diverged_step": 3},
    ("t-large", "outkd", 0): {"status": "succeeded", "fid": 12.0},
    ("t-large", "outkd", 1): {"status": "succeeded", "fid": 12.0},
    ("t-large", "outkd", 2): {"status": "failed", "reason": "boom"},
    ("t-large", "lift+place+featkd", 0): {"status": "succeeded", "fid": 12.0},
    ("t-large", "lift+place+featkd", 1): {"status": "succeeded", "fid": 12.0},
    ("t-large", "lift+place+featkd", 2): {"status": "succeeded", "fid": 12.0},
}


def test_study_dashboard_and_welch(make_harness) -> None:
    threshold = COLLAPSE_FID["digits"]  # a study on the embedded digits, at its FID family's default
    assert 30.0 < threshold < 45.0 < 150.0  # t-small/outkd: one try below it, two over it
    with make_harness(tracking=FakeTracking()) as h:
        h.runner.plan = lambda spec: dict(FIDS[(spec.teacher_name, spec.method, spec.seed)])
        r = h.client.post("/api/studies", json={"name": "dash", "teachers": ["t-small", "t-large"],
                                                "methods": ["lift+place+featkd", "outkd"], "seeds": 3, "steps": 5})
        assert r.status_code == 201, r.text
        study_id = r.json()["id"]
        h.tick_until(lambda: h.client.get(f"/api/studies/{study_id}").json()["status"] == "ended", what="the study")
        d = h.client.get(f"/api/studies/{study_id}/dashboard").json()
        assert d["table"] == h.client.get(f"/api/studies/{study_id}/table").json()
        assert d["study"] == h.client.get(f"/api/studies/{study_id}").json()

    assert d["study"]["status"] == "ended" and d["table"]["methods"] == ["outkd", "lift+place+featkd"]
    assert d["collapse_threshold"] == d["table"]["collapse_threshold"] == d["study"]["collapse_threshold"] == threshold
    assert d["study"]["collapse_fid"] is None
    small_outkd = next(c for c in d["table"]["cells"] if (c["teacher"], c["method"]) == ("t-small", "outkd"))
    assert small_outkd["collapses"] == 2
    assert [(t["name"], t["parameters"]) for t in d["teachers"]] == [("t-small", 5000), ("t-large", 10000)]
    assert [t["label"] for t in d["teachers"]] == ["5,000", "0.01M"]
    runs = {(r["teacher"], r["method"], r["seed"]): r for r in d["runs"]}
    assert set(runs) == set(FIDS)
    for key, run in runs.items():
        planned = FIDS[key]
        assert run["status"] == planned["status"] and run["fid"] == planned.get("fid")
        assert run["collapse"] == (planned["status"] == "diverged" or planned.get("fid", 0) > threshold)
        assert run["fraction"] is not None and run["mlflow_run_id"] == f"run-{run['job_id']}"
        assert run["mlflow_url"].endswith(f"/#/experiments/7/runs/run-{run['job_id']}")
    assert d["mlflow_compare_url"] == compare_url(h.settings.mlflow_ui_url, ["7"],
                                                  [r["mlflow_run_id"] for r in d["runs"]])

    welch = {(w["teacher"], w["method_a"], w["method_b"]): w for w in d["welch"]}
    assert set(welch) == {(t, "outkd", "lift+place+featkd") for t in ("t-small", "t-large")}
    small = welch[("t-small", "outkd", "lift+place+featkd")]
    expected = welch_t_test([30.0, 150.0, 45.0], [20.0, 21.5])  # diverged and failed tries are not in the test
    assert (small["n_a"], small["n_b"]) == (3, 2) and small["reason"] is None
    assert small["statistic"] == pytest.approx(expected.statistic) and small["pvalue"] == pytest.approx(expected.pvalue)
    assert small["df"] == pytest.approx(expected.df) and small["mean_a"] == pytest.approx(75.0)
    large = welch[("t-large", "outkd", "lift+place+featkd")]  # no spread on either side: no t
    assert large["pvalue"] is None and large["statistic"] is None and "no spread" in large["reason"]


def test_a_study_may_set_its_own_collapse_threshold(harness: Harness) -> None:
    """collapse_fid counts runs over it as collapses, in the cells, the dashboard's runs and its caption."""
    harness.runner.plan = lambda spec: {"status": "succeeded", "fid": 12.0 + 10 * spec.seed}  # 12, 22, 32
    r = harness.client.post("/api/studies", json={"name": "strict", "teachers": ["t-small"], "methods": ["outkd"],
                                                  "seeds": 3, "steps": 5, "collapse_fid": 20})
    assert r.status_code == 201, r.text
    study_id = r.json()["id"]
    assert r.json()["collapse_fid"] == 20 and r.json()["collapse_threshold"] == 20
    harness.tick_until(lambda: harness.client.get(f"/api/studies/{study_id}").json()["status"] == "ended")
    d = harness.client.get(f"/api/studies/{study_id}/dashboard").json()
    assert d["collapse_threshold"] == d["table"]["collapse_threshold"] == 20
    assert d["table"]["cells"][0]["collapses"] == 2  # 22 and 32; at the digits default (40) none would be
    assert sorted(run["collapse"] for run in d["runs"]) == [False, True, True]
    markdown = harness.client.get(f"/api/studies/{study_id}/table", params={"format": "md"}).text
    assert "collapses = runs with fid_digits > 20 or diverged" in markdown


def test_welch_endpoint_and_too_few_runs(harness: Harness) -> None:
    harness.runner.plan = lambda spec: {"status": "succeeded",
                                        "fid": 10.0 + spec.seed * (2 if spec.method == "lift" else 3)}
    r = harness.client.post("/api/studies", json={"name": "w", "teachers": ["t-small"], "steps": 5,
                                                  "methods": ["lift", "outkd", "finetune"], "seeds": [0, 1]})
    study_id = r.json()["id"]
    pending = harness.client.get(f"/api/studies/{study_id}/welch").json()
    assert len(pending) == 3 and all(w["reason"].startswith("needs at least two") for w in pending)
    harness.tick_until(lambda: harness.client.get(f"/api/studies/{study_id}").json()["status"] == "ended")
    got = harness.client.get(f"/api/studies/{study_id}/welch").json()
    assert [(w["method_a"], w["method_b"]) for w in got] == list(combinations(["finetune", "outkd", "lift"], 2))
    w = got[2]  # outkd vs lift
    expected = welch_t_test([10.0, 13.0], [10.0, 12.0])
    assert w["pvalue"] == pytest.approx(expected.pvalue) and math.isfinite(w["df"])
    assert harness.client.get("/api/studies/99/welch").status_code == 404
    assert harness.client.get("/api/studies/99/dashboard").status_code == 404


def test_compare_url_is_mlflow_3s_route() -> None:
    url = compare_url("http://mlflow.test/", ["2", "1", "2"], ["a1", "b2"])
    assert url == "http://mlflow.test/#/compare-runs?runs=%5B%22a1%22%2C%22b2%22%5D&experiments=%5B%221%22%2C%222%22%5D"
    assert compare_url("http://mlflow.test", [], []) is None


# --- reference -------------------------------------------------------------------------------------------------


def test_methods_endpoint_lists_the_library_methods(harness: Harness) -> None:
    got = harness.client.get("/api/methods").json()
    assert [m["name"] for m in got] == list(METHODS)
    for m in got:
        spec = METHODS[m["name"]]
        assert (m["kd"], m["featkd"], m["description"]) == (spec.kd, spec.featkd, spec.description)
        assert m["paper"] == (m["name"] == PAPER_METHOD)


def test_paper_table6_endpoint_is_the_shipped_csv(harness: Harness) -> None:
    got = harness.client.get("/api/reference/paper-table6").json()
    rows = paper_table6_rows()
    assert got["metric"] == "fid_inception" and len(got["cells"]) == len(rows)
    assert got["teachers"] == list(dict.fromkeys(r["teacher_params"] for r in rows))
    for cell, row in zip(got["cells"], rows, strict=True):
        assert cell["method"] == row["method"] and cell["teacher"] == row["teacher_params"]
        assert cell["tries"] == [float(row[f"try{i}"]) for i in range(1, len(cell["tries"]) + 1)]
        assert (cell["mean"], cell["std"]) == (float(row["fid_mean"]), float(row["fid_std"]))
        assert cell["parameters"] == pytest.approx(float(row["teacher_params"][:-1]) * 1e6)
    for teacher in got["teachers"]:
        means = {r["method"]: float(r["fid_mean"]) for r in rows if r["teacher_params"] == teacher}
        assert got["best"][teacher] == [min(means, key=means.get)]
