"""The study dashboard's MLflow links (server/api/artifacts.py): one compare view per cell, holding exactly
that cell's runs, and the study's, holding its distillation runs; each with the equivalent MLflow search
filter. (tests/worker/test_tracking.py checks the filters against MLflow's own search.)"""

from __future__ import annotations

from server.services.dashboards import compare_url
from server.tracking import runs_filter
from tests.server.server_testkit import FakeTracking


def test_each_cell_links_to_the_compare_view_of_its_own_runs(make_harness) -> None:
    with make_harness(tracking=FakeTracking()) as h:
        h.runner.plan = lambda spec: {"status": "succeeded", "fid": 10.0 + spec.seed}
        r = h.client.post("/api/studies", json={"name": "links", "teachers": ["t-small", "t-large"],
                                                "methods": ["outkd", "lift"], "seeds": 3, "steps": 5})
        assert r.status_code == 201, r.text
        study_id = r.json()["id"]
        h.tick_until(lambda: h.client.get(f"/api/studies/{study_id}").json()["status"] == "ended", what="the study")
        d = h.client.get(f"/api/studies/{study_id}/dashboard").json()

    ui = h.settings.mlflow_ui_url
    run_of = {r["job_id"]: r["mlflow_run_id"] for r in d["runs"]}
    assert d["mlflow_search_filter"] == runs_filter(study_id)
    assert d["mlflow_compare_url"] == compare_url(ui, ["7"], list(run_of.values()))
    links = {(c["teacher"], c["method"]): c for c in d["mlflow_cells"]}
    assert set(links) == {(c["teacher"], c["method"]) for c in d["table"]["cells"]} and len(links) == 4
    for cell in d["table"]["cells"]:
        link = links[(cell["teacher"], cell["method"])]
        cell_runs = [run_of[t["job_id"]] for t in cell["tries"]]
        assert link["runs"] == 3 and link["url"] == compare_url(ui, ["7"], cell_runs)
        assert link["search_filter"] == runs_filter(study_id, cell["teacher"], cell["method"])
