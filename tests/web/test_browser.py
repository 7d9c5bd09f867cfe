"""The web UI in a real browser (headless Chromium through Playwright), on the real app served on 127.0.0.1.

- A tiny study submitted through the form runs with the real worker (pruning, distillation, sampling,
  FID) in an in-process executor, shows up and finishes on the queue page, and its dashboard shows
  the Table-6 grid (numbers read from the page = the API's), the plots, downloads and MLflow links
  to runs that exist in the MLflow store.
- A bad form value shows its message next to the field and stores nothing.
- Cancel and retry buttons on the queue page; sign-in when the server has an API token.

Each test saves screenshots (see web_testkit.Shots). No request may leave 127.0.0.1 (the `page`
fixture fails the test otherwise).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from server.app import create_app
from server.executors import ThreadExecutor
from server.settings import Settings
from server.tracking import Tracking
from tests.server.server_testkit import FakeRunner, make_local_teacher
from tests.web.web_testkit import LiveServer
from web import install
from web.pages import POLL_MS

STUDY_METHODS = ["outkd", "lift+place+featkd"]
SEEDS = 2
LONG = 120_000  # ms: the whole tiny study (measured at 20 to 40 s on two busy cores)


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'web.db'}",
                                  teachers_dir=tmp_path / "teachers", datasets_dir=tmp_path / "datasets",
                                  poll_interval=0.1, mlflow_ui_url="http://127.0.0.1:5000")
    values.update(overrides)
    return Settings(**values)


def _fill(page: Any, field: str, value: str) -> None:
    page.fill(f"[data-field='{field}'] input", value)


def _study_form(page: Any, url: str, *, name: str, ratio: str = "0.5") -> None:
    page.goto(f"{url}/studies/new")
    page.wait_for_selector("#choices-teachers input[value='tiny']")
    page.wait_for_selector("#choices-methods input")
    _fill(page, "name", name)
    page.check("#choices-teachers input[value='tiny']")
    for box in page.query_selector_all("#choices-methods input"):
        box.set_checked(box.get_attribute("value") in STUDY_METHODS)
    _fill(page, "seeds", str(SEEDS))
    _fill(page, "student_ratio", ratio)
    _fill(page, "steps", "5")
    page.click("details.advanced summary")
    for field, value in {"batch_size": "16", "fid_samples": "50", "sample_steps": "5", "checkpoint_every": "0"}.items():
        _fill(page, field, value)
    page.select_option("[data-field='importance'] select", "magnitude")  # no Taylor gradient passes: faster


# --- the whole path: form -> queue -> dashboard --------------------------------------------------------------


@pytest.mark.slow
def test_a_study_submitted_in_the_browser_runs_and_fills_its_dashboard(tmp_path: Path, page: Any, shots: Any) -> None:
    from mlflow import MlflowClient

    from liftplace.features import ensure_digits_classifier
    from liftplace.models import build_unet, save_unet

    ensure_digits_classifier()  # once here, not by the two jobs at the same time
    settings = _settings(tmp_path)
    save_unet(build_unet("tiny"), settings.teachers_dir / "tiny")
    tracking = Tracking(str(settings.mlflow_tracking_uri), settings.mlflow_ui_url, settings.mlflow_experiment)
    # the real worker, in threads
    app = create_app(settings, ThreadExecutor(max_workers=2), tracking=tracking, ui=install)
    with LiveServer(app) as server:
        api = page.request
        assert api.post(f"{server.url}/api/teachers", data={"source": "local", "name": "tiny"}).status == 201

        _study_form(page, server.url, name="tiny capacity study")
        assert page.inner_text("#study-size") == f"1 teacher × {len(STUDY_METHODS)} methods × {SEEDS} seeds = " \
                                                 f"{len(STUDY_METHODS) * SEEDS} jobs"
        shots(page, "1-study-form")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/studies/\d+$"))
        study_id = int(page.url.rsplit("/", 1)[1])
        page.wait_for_selector("#t6 tbody tr")
        shots(page, "2-dashboard-started")

        # The queue page: every job of the study, live, until all have succeeded.
        page.goto(f"{server.url}/queue")
        rows = page.locator("#queue tbody tr[data-job]")
        rows.first.wait_for()
        assert rows.count() == len(STUDY_METHODS) * SEEDS
        page.wait_for_function("() => [...document.querySelectorAll('#queue tr[data-job]')]"
                               ".some(r => r.dataset.status === 'running')", timeout=LONG)
        shots(page, "3-queue-running")
        page.wait_for_function("() => { const r = [...document.querySelectorAll('#queue tr[data-job]')];"
                               f" return r.length === {len(STUDY_METHODS) * SEEDS} &&"
                               " r.every(x => x.dataset.status === 'succeeded'); }", timeout=LONG)
        assert rows.first.locator(".progress .label").inner_text() == "5 / 5"
        shots(page, "4-queue-done")

        # The dashboard: the grid holds the API's numbers, the best mean is bold, plots and links are there.
        page.goto(f"{server.url}/studies/{study_id}")
        page.wait_for_function("() => document.querySelector('#study-status .badge')?.textContent === 'ended'")
        page.wait_for_selector("#plot-capacity .scatterlayer .trace")
        page.wait_for_selector("#plot-seeds .boxlayer .trace")
        page.wait_for_selector("#plot-paper .scatterlayer .trace")
        table = api.get(f"{server.url}/api/studies/{study_id}/table").json()
        assert [c["complete"] for c in table["cells"]] == [True] * len(STUDY_METHODS)
        for cell in table["cells"]:
            row = page.locator(f"#t6 tbody tr[data-method='{cell['method']}']")
            tries = [row.locator(f"td.try[data-try='{i + 1}']").inner_text() for i in range(SEEDS)]
            assert tries == [f"{t['fid']:.2f}" for t in cell["tries"]]
            mean = row.locator("td.mean")
            assert mean.inner_text() == f"{cell['mean']:.2f}"
            assert row.locator("td.std").inner_text() == f"{cell['std']:.2f}"
            assert ("best" in mean.get_attribute("class")) == (cell["method"] in table["best"]["tiny"])
        assert page.locator("#welch tbody tr").count() == 1  # one teacher, one pair of methods
        assert page.locator("#paper-t6 tbody tr").count() == 3
        shots(page, "5-dashboard-done")

        # Downloads are the table endpoint's formats.
        for fmt in ("csv", "md", "latex"):
            href = page.get_attribute(f"#dl-{fmt}", "href")
            assert api.get(server.url + href).text() == api.get(
                f"{server.url}/api/studies/{study_id}/table?format={fmt}").text()

        # MLflow links: the study's parent run and a compare view of exactly the study's runs, all in the store.
        client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
        jobs = api.get(f"{server.url}/api/jobs?study={study_id}").json()["items"]
        parent = page.get_attribute("#mlflow-parent", "href")
        deadline = time.monotonic() + 60  # the cells reach the parent run in the dispatcher's round after the end
        while not (study := api.get(f"{server.url}/api/studies/{study_id}").json())["mlflow_synced"]:
            assert time.monotonic() < deadline, study
            time.sleep(0.5)
        assert parent == study["mlflow_url"] and client.get_run(study["mlflow_run_id"]).info.status == "FINISHED"
        compare = unquote(page.get_attribute("#mlflow-compare", "href"))
        m = re.fullmatch(re.escape(settings.mlflow_ui_url) + r"/#/compare-runs\?runs=(\[.*\])&experiments=(\[.*\])",
                         compare)
        assert m, compare
        run_ids = sorted(re.findall(r'"([0-9a-f]{32})"', m.group(1)))
        assert run_ids == sorted(j["mlflow_run_id"] for j in jobs)
        for run_id in run_ids:
            run = client.get_run(run_id)
            assert f'"{run.info.experiment_id}"' in m.group(2)
            assert run.data.tags["mlflow.parentRunId"] == study["mlflow_run_id"]

        # A job page: curves of the logged steps, the sample grid and the error maps, FID.
        job = next(j for j in jobs if j["method"] == "lift+place+featkd")
        page.goto(f"{server.url}/jobs/{job['id']}")
        page.wait_for_selector("#plot-loss .scatterlayer .trace")
        page.wait_for_selector("#plot-lift .scatterlayer .trace")
        for box in ("#img-samples img", "#img-error img"):
            page.wait_for_function(f"() => document.querySelector('{box}')?.naturalWidth > 0")
        assert f"{job['fid']:.2f}" in page.inner_text("#job-stats")
        assert page.get_attribute("#job-actions a", "href") == job["mlflow_url"]
        env = api.get(f"{server.url}/api/jobs/{job['id']}").json()["environment"]  # the real worker's record
        assert env["torch"] and env["cpu"] and f"{env['cpu']} · torch {env['torch']}" in page.inner_text("#job-outcome")
        shots(page, "6-job")

        page.goto(f"{server.url}/teachers")
        page.wait_for_selector("#teachers tr[data-teacher='tiny']")
        shots(page, "7-teachers")
        page.goto(f"{server.url}/studies")
        page.wait_for_selector(f"#studies tr[data-study='{study_id}']")
        assert "2 / 2" in page.inner_text(f"#studies tr[data-study='{study_id}']")  # cells complete
        shots(page, "8-studies")


# --- validation: a bad value shows its message and stores nothing ---------------------------------------------


def test_a_bad_form_value_shows_its_message_and_creates_nothing(tmp_path: Path, page: Any, shots: Any) -> None:
    settings = _settings(tmp_path, dispatch=False)
    make_local_teacher(settings.teachers_dir, "tiny")
    with LiveServer(create_app(settings, ThreadExecutor(FakeRunner()), tracking=False, ui=install)) as server:
        assert page.request.post(f"{server.url}/api/teachers", data={"source": "local", "name": "tiny"}).status == 201
        _study_form(page, server.url, name="bad ratio", ratio="1.5")
        page.click("button[type=submit]")
        error = page.locator("[data-field='student_ratio'] .field-error")
        error.wait_for()
        assert "less than 1" in error.inner_text()
        assert page.locator("[data-field='student_ratio']").get_attribute("class") == "field invalid"
        assert page.url.endswith("/studies/new")
        shots(page, "study-bad-ratio")

        # Fixing it clears the message; an unknown dataset-free mistake elsewhere lands on its own field.
        _fill(page, "student_ratio", "0.5")
        _fill(page, "seeds", "0, 1, x")
        page.click("button[type=submit]")
        page.locator("[data-field='seeds'] .field-error").wait_for()
        assert page.locator("[data-field='student_ratio'] .field-error").inner_text() == ""

        # The job form: steps that are not a number.
        page.goto(f"{server.url}/jobs/new")
        page.wait_for_selector("#choices-method input")
        page.wait_for_selector("[data-field='teacher'] option[value='tiny']", state="attached")
        _fill(page, "steps", "many")
        page.click("button[type=submit]")
        error = page.locator("[data-field='steps'] .field-error")
        error.wait_for()
        assert "valid integer" in error.inner_text()
        shots(page, "job-bad-steps")

        assert page.request.get(f"{server.url}/api/studies").json()["total"] == 0
        assert page.request.get(f"{server.url}/api/jobs").json()["total"] == 0

        # Names are shown as text, never as markup.
        name = '<img src="/x" onerror="document.title=1">'
        assert page.request.post(f"{server.url}/api/studies", data={"name": name, "teachers": ["tiny"],
                                                                     "methods": ["lift"]}).status == 201
        page.goto(f"{server.url}/studies")
        cell = page.locator("#studies tbody tr td").nth(1)
        cell.wait_for()
        assert cell.inner_text() == name and cell.locator("img").count() == 0


# --- queue buttons ---------------------------------------------------------------------------------------------


def test_cancel_and_retry_from_the_queue_page(tmp_path: Path, page: Any, shots: Any) -> None:
    settings = _settings(tmp_path)
    make_local_teacher(settings.teachers_dir, "tiny")
    runner = FakeRunner()
    runner.hold.set()  # jobs run until cancelled
    with LiveServer(create_app(settings, ThreadExecutor(runner), tracking=False, ui=install)) as server:
        api = page.request
        assert api.post(f"{server.url}/api/teachers", data={"source": "local", "name": "tiny"}).status == 201
        job = api.post(f"{server.url}/api/jobs", data={"teacher": "tiny", "steps": 5}).json()
        page.goto(f"{server.url}/queue")
        row = page.locator(f"#queue tr[data-job='{job['id']}']")
        page.wait_for_selector(f"#queue tr[data-job='{job['id']}'][data-status='running']")
        shots(page, "running")
        row.get_by_role("button", name="Cancel").click()
        page.wait_for_selector(f"#queue tr[data-job='{job['id']}'][data-status='cancelled']")
        runner.hold.clear()  # the retry succeeds at once
        row.get_by_role("button", name="Retry").click()
        page.wait_for_selector(f"#queue tr[data-job='{job['id']}'][data-status='succeeded']")
        shots(page, "retried")
        assert api.get(f"{server.url}/api/jobs/{job['id']}").json()["status"] == "succeeded"


# --- sign-in ---------------------------------------------------------------------------------------------------


def test_sign_in_when_the_server_has_a_token(tmp_path: Path, page: Any, shots: Any) -> None:
    token = "s3cret-token"
    settings = _settings(tmp_path, dispatch=False, api_token=token)
    make_local_teacher(settings.teachers_dir, "tiny")
    with LiveServer(create_app(settings, ThreadExecutor(FakeRunner()), tracking=False, ui=install)) as server:
        headers = {"Authorization": f"Bearer {token}"}
        assert page.request.post(f"{server.url}/api/teachers", data={"source": "local", "name": "tiny"},
                                 headers=headers).status == 201
        _study_form(page, server.url, name="needs a token")
        page.click("button[type=submit]")
        error = page.locator("#study-form .form-error")
        error.wait_for()
        assert "authentication required" in error.inner_text()
        assert page.locator("#auth-banner").is_visible()
        shots(page, "unauthenticated-submit")
        assert page.request.get(f"{server.url}/api/studies").json()["total"] == 0

        page.click("#auth-banner-link")
        page.wait_for_url(re.compile(r"/login\?next="))
        page.fill("#f-token", "wrong")
        page.click("button[type=submit]")
        page.locator("[data-field='token'] .field-error").wait_for()
        assert "wrong API token" in page.inner_text("[data-field='token'] .field-error")
        page.fill("#f-token", token)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/studies/new$"))
        assert page.locator("#sign-out").is_visible()
        _study_form(page, server.url, name="needs a token")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/studies/\d+$"))
        shots(page, "signed-in-dashboard")


# --- the job page follows a running job ----------------------------------------------------------------------


def test_the_job_page_draws_curves_as_the_job_logs_them(tmp_path: Path, page: Any, shots: Any) -> None:
    import json

    from worker.spec import METRICS_FILE

    settings = _settings(tmp_path)
    make_local_teacher(settings.teachers_dir, "tiny")
    runner = FakeRunner()
    runner.hold.set()  # the job runs until released; the test writes its metric history meanwhile
    with LiveServer(create_app(settings, ThreadExecutor(runner), tracking=False, ui=install)) as server:
        api = page.request
        assert api.post(f"{server.url}/api/teachers", data={"source": "local", "name": "tiny"}).status == 201
        job = api.post(f"{server.url}/api/jobs", data={"teacher": "tiny", "steps": 40}).json()
        history = settings.jobs_dir / str(job["id"]) / METRICS_FILE
        history.parent.mkdir(parents=True, exist_ok=True)

        def log_steps(steps: range) -> None:
            with open(history, "a") as f:
                for s in steps:
                    f.write(json.dumps({"step": s, "loss_total": 50.0 / s, "loss_diff": 20.0 / s, "loss_kd": 30.0 / s,
                                        "slope_mean": 1 - 0.5 / s, "intercept_mean": 0.3 / s, "w": 1 - 1 / s}) + "\n")

        log_steps(range(1, 11))
        page.goto(f"{server.url}/jobs/{job['id']}")
        points = "() => document.getElementById('plot-lift').data?.[0]?.x.length || 0"
        page.wait_for_function(f"() => ({points})() === 10")
        log_steps(range(11, 41))
        page.wait_for_function(f"() => ({points})() === 40")  # the page asked again by itself
        names = page.evaluate("() => document.getElementById('plot-lift').data.map(t => t.name)")
        assert names == ["β1 (slope)", "β0 (intercept)", "w (adaptive weight)"]
        assert page.locator("#img-samples .placeholder").inner_text() == "appears when training has ended"
        shots(page, "running")
        runner.release()
        page.wait_for_function("() => document.querySelector('#job-status .badge')?.textContent === 'succeeded'")


def test_the_queue_shows_jobs_waiting_for_a_worker_as_dispatched(tmp_path: Path, page: Any, shots: Any) -> None:
    """Two workers, four jobs: the queue page shows two running and two dispatched (handed over, not
    started); a job's page stops asking for updates once its job has ended."""
    settings = _settings(tmp_path)
    make_local_teacher(settings.teachers_dir, "tiny")
    runner = FakeRunner()
    runner.hold.set()  # jobs run until released
    with LiveServer(create_app(settings, ThreadExecutor(runner, max_workers=2), tracking=False, ui=install)) as server:
        api = page.request
        assert api.post(f"{server.url}/api/teachers", data={"source": "local", "name": "tiny"}).status == 201
        ids = [api.post(f"{server.url}/api/jobs", data={"teacher": "tiny", "steps": 5, "seed": s}).json()["id"]
               for s in range(4)]
        page.goto(f"{server.url}/queue")
        from playwright.sync_api import expect  # the page's CSP forbids wait_for_function's eval

        expect(page.locator("#queue tr[data-status='running']")).to_have_count(2, timeout=20_000)
        expect(page.locator("#queue tr[data-status='dispatched']")).to_have_count(2, timeout=20_000)
        dispatched = page.locator("#queue tr[data-status='dispatched']")
        assert dispatched.first.locator(".badge").inner_text().strip() == "dispatched"
        assert "waiting for a free worker" in dispatched.first.inner_text()
        shots(page, "dispatched")
        assert sorted(j["status"] for j in api.get(f"{server.url}/api/jobs").json()["items"]) == [
            "dispatched", "dispatched", "running", "running"]

        # The job page polls while the job is live and stops once it has ended.
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url) if r.url.endswith(f"/api/jobs/{ids[0]}") else None)
        page.goto(f"{server.url}/jobs/{ids[0]}")
        runner.release()
        page.wait_for_selector("#job-status .s-succeeded")
        page.wait_for_timeout(500)
        seen = len(asked)
        page.wait_for_timeout(4 * POLL_MS)
        assert len(asked) == seen, "the page of an ended job still polls"


# --- study axes ---------------------------------------------------------------------------------------------


def test_a_study_with_an_axis_from_the_form_to_its_grids_heatmap_and_baseline(tmp_path: Path, page: Any,
                                                                                shots: Any) -> None:
    runner = FakeRunner()
    # FID 10 + 3 per seed, 5 more at coarse l2: two seeds give 11.50 ± 2.12 (15.50 at l2)
    runner.plan = lambda spec: {"status": "succeeded", "fid": 10.0 + 3 * spec.seed + 5.0 * (spec.coarse == "l2")}
    settings = _settings(tmp_path)
    make_local_teacher(settings.teachers_dir, "tiny")
    with LiveServer(create_app(settings, ThreadExecutor(runner), tracking=False, ui=install)) as server:
        assert page.request.post(f"{server.url}/api/teachers", data={"source": "local", "name": "tiny"}).status == 201
        # A bad axis value: its message names the axis, next to the axes field; nothing is stored.
        _study_form(page, server.url, name="sweep")
        page.click("#add-axis")
        page.select_option("#axes-rows .axis-row:last-child .axis-name", "lr")
        page.fill("#axes-rows .axis-row:last-child .axis-values", "0.01, 0")
        page.click("button[type=submit]")
        error = page.locator("#err-axes")
        error.wait_for()
        assert "axes.lr.1" in error.inner_text() and "greater than 0" in error.inner_text()
        assert page.request.get(f"{server.url}/api/studies").json()["total"] == 0

        # The axis coarse: outkd ignores it (2 seeds), the paper's method runs both values (4).
        page.click("#axes-rows .axis-row:last-child .axis-remove")
        page.click("#add-axis")
        page.select_option("#axes-rows .axis-row:last-child .axis-name", "coarse")
        page.fill("#axes-rows .axis-row:last-child .axis-values", "l1, l2")
        assert "× 2 axis values = at most 8 jobs" in page.inner_text("#study-size")
        shots(page, "axes-form")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/studies/\d+$"))
        study_id = int(page.url.rsplit("/", 1)[1])
        study = page.request.get(f"{server.url}/api/studies/{study_id}").json()
        assert study["axes"] == {"coarse": ["l1", "l2"]} and study["jobs"] == 2 + 4

        # The dashboard: a Table-6 grid per axis value, the outkd cell in both; the main grid is replaced.
        page.wait_for_function("() => document.querySelector('#study-status .badge')?.textContent === 'ended'")
        page.wait_for_selector("#axes-card:not([hidden]) .axis-panel table tbody tr")
        assert page.locator("#t6-card").is_hidden()
        assert page.locator(".axis-panel h3").all_inner_texts() == ["coarse = l1", "coarse = l2"]
        for label in ("coarse = l1", "coarse = l2"):
            rows = page.locator(f"table[data-panel='{label}'] tbody tr")
            assert [rows.nth(i).get_attribute("data-method") for i in range(rows.count())] == STUDY_METHODS
        outkd = [page.locator(f"table[data-panel='{p}'] tr[data-method='outkd'] td.mean").inner_text()
                 for p in ("coarse = l1", "coarse = l2")]
        assert outkd[0] == outkd[1] == "11.50"
        # The plots keep the axis values apart: one series per cell (outkd's once), never one per method.
        series = ["outkd", "lift+place+featkd · coarse=l1", "lift+place+featkd · coarse=l2"]
        for plot_id in ("plot-seeds", "plot-capacity"):
            page.wait_for_function("(id) => (document.getElementById(id).data || []).length === 3", arg=plot_id)
            names = page.evaluate("(id) => document.getElementById(id).data.map((t) => t.name)", plot_id)
            assert names == series, (plot_id, names)
        points = page.evaluate("() => document.getElementById('plot-seeds').data.map((t) => t.y.length)")
        assert points == [2, 2, 2]  # each try in exactly one series

        # Welch against a baseline chosen on the page: the p values are the API's for that baseline.
        key = 'tiny/lift+place+featkd/{"coarse":"l1"}'
        page.select_option("#baseline", key)
        page.wait_for_function("() => location.search.includes('baseline=')")
        api = page.request.get(f"{server.url}/api/studies/{study_id}/dashboard", params={"baseline": key}).json()
        versus = {w["key_a"]: w for w in api["versus_baseline"]}
        other = 'tiny/lift+place+featkd/{"coarse":"l2"}'
        cell = page.locator(f"#versus-baseline tr[data-key='{other}'] td.pvalue")
        page.wait_for_function("(k) => document.querySelectorAll('#versus-baseline tbody tr').length === 2 && "
                               "![...document.querySelectorAll('#versus-baseline tr[data-key]')]"
                               ".some(r => r.dataset.key === k)", arg=key)
        assert cell.inner_text() == f"{versus[other]['pvalue']:.4f}"
        shots(page, "axes-dashboard")

        # Two axes: a heatmap of mean ± std per teacher and method.
        body = {"name": "grid", "teachers": ["tiny"], "methods": ["lift"], "seeds": 2, "steps": 5,
                "axes": {"coarse": ["l1", "l2"], "lr": [0.01, 0.001]}}
        grid = page.request.post(f"{server.url}/api/studies", data=body).json()
        page.goto(f"{server.url}/studies/{grid['id']}")
        page.wait_for_function("() => document.querySelector('#study-status .badge')?.textContent === 'ended'")
        heat = page.locator("table.heatmap[data-method='lift'] td.heat")
        heat.first.wait_for()
        assert heat.count() == 4 and heat.first.inner_text() == "11.50 ± 2.12"
        assert "hsl(" in (heat.nth(1).get_attribute("style") or "")
        shots(page, "axes-heatmap")
