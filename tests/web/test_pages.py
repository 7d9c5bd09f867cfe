"""The pages as HTML (TestClient): every page renders, its forms carry the API schema's defaults and limits,
every asset it names is served from this origin, and sign-in follows the server's token settings."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from liftplace.job_status import RETRYABLE_STATUSES, TERMINAL_STATUSES
from liftplace.methods import METHOD_NAMES
from server.app import create_app
from server.auth import AUTH_COOKIE
from server.executors import ThreadExecutor
from server.schemas import DEFAULT_SEEDS, OPTION_FIELDS, JobCreate, StudyCreate
from server.settings import Settings
from tests.server.server_testkit import FakeRunner, Harness
from web import PLOTLY_JS_URL, install, plotly_js_path

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["/queue", "/jobs/new", "/jobs/1", "/studies", "/studies/new", "/studies/1", "/teachers", "/login"]

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # pages read no data: one database is enough


class _Assets(HTMLParser):
    """The inputs (id, value, data-kind) and the URLs of scripts, styles and links of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inputs: dict[str, dict[str, str | None]] = {}
        self.fields: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "img") and a.get("src"):
            self.urls.append(a["src"] or "")
        if tag == "link" and a.get("href"):
            self.urls.append(a["href"] or "")
        if tag in ("input", "select") and a.get("id"):
            self.inputs[a["id"] or ""] = a
        if a.get("data-field"):
            self.fields.append(a["data-field"] or "")


def _parse(html: str) -> _Assets:
    parser = _Assets()
    parser.feed(html)
    return parser


@sqlite_only
def test_every_page_renders_with_its_assets_from_this_origin(harness: Harness) -> None:
    c = harness.client
    for path in PAGES:
        r = c.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        assert r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
        page = _parse(r.text)
        assert page.urls, path
        for url in page.urls:
            assert url.startswith("/static/"), (path, url)  # nothing from another origin
            asset = c.get(url)
            assert asset.status_code == 200 and asset.content, (path, url)
        assert 'href="/queue"' in r.text and f'href="{harness.settings.mlflow_ui_url}/"' in r.text
    assert c.get("/", follow_redirects=False).headers["location"] == "/queue"


@sqlite_only
def test_the_pages_get_the_job_statuses_and_methods_from_the_library(harness: Harness) -> None:
    """The scripts decide what "ended" and "can be retried" mean from the page's data, which the server fills
    from liftplace.job_status; no script keeps its own list."""
    text = harness.client.get("/queue").text
    data = json.loads(re.search(r'<script type="application/json" id="page-data">(.*?)</script>', text, re.S)[1])
    assert data["job_statuses"] == {"ended": list(TERMINAL_STATUSES), "retryable": list(RETRYABLE_STATUSES)}
    assert data["methods"] == list(METHOD_NAMES)
    for script in (ROOT / "web" / "static").glob("*.js"):
        code = script.read_text()
        assert '"succeeded", "failed"' not in code and '"failed", "diverged"' not in code, script.name


@sqlite_only
def test_plotly_js_comes_from_the_installed_package(harness: Harness) -> None:
    path = plotly_js_path()
    assert path is not None and path.is_file()
    r = harness.client.get(PLOTLY_JS_URL)
    assert r.status_code == 200 and r.content == path.read_bytes()
    assert r.headers["content-type"].startswith("text/javascript")
    dashboard = harness.client.get("/studies/1").text
    assert re.search(rf'<script src="{re.escape(PLOTLY_JS_URL)}\?v=[^"]+"></script>', dashboard)


@sqlite_only
def test_forms_carry_the_api_defaults_and_limits(harness: Harness) -> None:
    job = _parse(harness.client.get("/jobs/new").text)
    assert job.fields[:6] == ["teacher", "student_teacher", "dataset", "student_ratio", "steps", "seed"]
    assert "method" in job.fields and [f for f in job.fields if f in OPTION_FIELDS] == list(OPTION_FIELDS)
    for name in ("steps", "seed", "student_ratio", "batch_size", "lr", "fid_samples", "sample_steps"):
        value = job.inputs[f"f-{name}"]["value"]
        assert value == str(JobCreate.model_fields[name].default), name
    assert job.inputs["f-steps"]["data-kind"] == "int" and job.inputs["f-lr"]["data-kind"] == "float"
    assert job.inputs["f-resolution"]["value"] == ""  # optional: empty means "the dataset's"

    study = _parse(harness.client.get("/studies/new").text)
    assert {"name", "teachers", "methods", "seeds", "dataset", "student_ratio", "student_teacher",
            "steps"} <= set(study.fields)
    assert study.inputs["f-seeds"]["value"] == str(DEFAULT_SEEDS) and study.inputs["f-seeds"]["data-kind"] == "list"
    assert study.inputs["f-student_ratio"]["value"] == str(StudyCreate.model_fields["student_ratio"].default)
    html = harness.client.get("/studies/new").text
    assert "0 &lt; x &lt; 1" in html  # the ratio's bounds, from the schema
    teachers = _parse(harness.client.get("/teachers").text)
    assert {"f-preset-name", "f-pruned-prune_ratio", "f-local-folder", "f-shipped-shipped"} <= set(teachers.inputs)
    html = harness.client.get("/teachers").text
    assert 'data-source-kind="shipped"' in html and "stability-digits-s-p70" in html  # the shipped ones named
    default = JobCreate.model_fields["lr_schedule"].default
    for prefix in ("preset", "pruned"):  # a teacher's training takes the same schedules as a job's
        assert teachers.inputs[f"f-{prefix}-lr_schedule"]["data-kind"] == "choice"
        select = html.split(f'id="f-{prefix}-lr_schedule"', 1)[1].split("</select>", 1)[0]
        assert f'<option value="{default}" selected>' in select and '<option value="cosine" >' in select


def _app(tmp_path, **overrides) -> TestClient:
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'pages.db'}", dispatch=False,
                        **overrides)
    return TestClient(create_app(settings, ThreadExecutor(FakeRunner()), tracking=False, ui=install))


def test_pages_ask_to_sign_in_when_reads_need_the_token(tmp_path) -> None:
    with _app(tmp_path, api_token="tok", auth_reads=True) as c:
        r = c.get("/studies/3?x=1", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fstudies%2F3%3Fx%3D1"
        login = c.get("/login?next=%2Fstudies%2F3")
        assert login.status_code == 200 and 'data-next="/studies/3"' in login.text
        assert 'data-next="/"' in c.get("/login?next=https://elsewhere.example/").text  # never off-site
        assert c.get("/api/jobs").status_code == 401
        assert c.post("/api/auth/login", json={"token": "tok"}).status_code == 200 and AUTH_COOKIE in c.cookies
        assert c.get("/studies/3").status_code == 200 and 'id="sign-out"' in c.get("/queue").text
        assert c.get("/api/methods").status_code == 200


def test_pages_are_open_when_only_writes_need_the_token(tmp_path) -> None:
    with _app(tmp_path, api_token="tok") as c:
        r = c.get("/studies/new")
        assert r.status_code == 200 and 'id="sign-in-link"' in r.text
        assert c.get("/api/reference/paper-table6").status_code == 200
        assert c.post("/api/studies", json={"name": "x", "teachers": ["a"], "methods": ["lift"]}).status_code == 401
    with _app(tmp_path / "open") as c:
        text = c.get("/queue").text
        assert 'id="sign-in-link"' not in text and 'id="sign-out"' not in text
