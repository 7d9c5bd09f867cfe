"""The browser UI's pages: server-rendered shells (Jinja2) whose live parts poll the JSON API.

A page holds no data of its own: tables, plots and choices are fetched by the page's script
from the same-origin JSON API (the login cookie goes along), so what a page shows follows the
API's authentication. The HTML itself carries only what is public anyway: form defaults and
limits (from `server.schemas`), the method names and the navigation. When reads need the token
and the browser has not signed in, a page redirects to /login.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from liftplace.job_status import JOB_STATUSES, RETRYABLE_STATUSES, TERMINAL_STATUSES
from liftplace.methods import AXIS_OPTIONS, METHOD_NAMES, PAPER_METHOD
from liftplace.presets import TEACHER_PRESETS
from liftplace.shipped import shipped_names
from server.auth import authenticated
from server.models import JOB_KINDS
from server.schemas import (
    DEFAULT_SEEDS,
    JobCreate,
    LocalTeacherCreate,
    PresetTeacherCreate,
    PrunedTeacherCreate,
    ShippedTeacherCreate,
    StudyCreate,
)
from server.settings import Settings
from web.forms import ADVANCED_FIELDS, specs

WEB_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"
POLL_MS = 1500  # how often live parts of a page ask the API again

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
router = APIRouter(include_in_schema=False)


def _static_version() -> str:
    """A hash of our static files: a changed file gets a new URL, so browsers never run a stale script."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


STATIC_VERSION = _static_version()
try:
    PLOTLY_VERSION = version("plotly")  # in plotly.min.js's URL: a new plotly is fetched anew
except PackageNotFoundError:
    PLOTLY_VERSION = "missing"

# Pages set a Content-Security-Policy: scripts, styles, images and API calls come from this origin
# only (plotly adds inline styles). A page therefore cannot load anything from elsewhere.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _safe_next(path: str) -> str:
    """A same-site path to go back to after signing in (never another origin)."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


def render(request: Request, template: str, page: str, **context: Any) -> Response:
    """Render a page; when reads need the token and this browser has not signed in, go to /login."""
    settings = _settings(request)
    signed_in = authenticated(request)
    if settings.reads_need_token and not signed_in and page != "login":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    context.update(
        page=page,
        mlflow_ui_url=settings.mlflow_ui_url,
        static_version=STATIC_VERSION,
        plotly_version=PLOTLY_VERSION,
        poll_ms=POLL_MS,
        auth={"writes_need_token": settings.writes_need_token, "reads_need_token": settings.reads_need_token,
              "authenticated": signed_in},
        method_names=list(METHOD_NAMES),
        job_statuses={"ended": list(TERMINAL_STATUSES), "retryable": list(RETRYABLE_STATUSES)},
        paper_method=PAPER_METHOD,
    )
    response = templates.TemplateResponse(request, template, context)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _distill_context() -> dict[str, Any]:
    return {"advanced_fields": list(specs(JobCreate, ADVANCED_FIELDS).values())}


# --- pages ----------------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def home() -> Response:
    return RedirectResponse("/queue", status_code=307)


@router.get("/queue", response_class=HTMLResponse)
def queue_page(request: Request) -> Response:
    return render(request, "queue.html", "queue", title="Queue", statuses=JOB_STATUSES, kinds=JOB_KINDS)


@router.get("/jobs/new", response_class=HTMLResponse)
def new_job_page(request: Request) -> Response:
    fields = specs(JobCreate, ("teacher", "student_teacher", "dataset", "method", "seed", "student_ratio", "steps"))
    return render(request, "job_new.html", "job_new", title="Submit a job", f=fields, **_distill_context())


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: int) -> Response:
    return render(request, "job.html", "job", title=f"Job {job_id}", job_id=job_id)


@router.get("/studies", response_class=HTMLResponse)
def studies_page(request: Request) -> Response:
    return render(request, "studies.html", "studies", title="Studies")


@router.get("/studies/new", response_class=HTMLResponse)
def new_study_page(request: Request) -> Response:
    fields = specs(StudyCreate, ("name", "teachers", "methods", "seeds", "dataset", "student_ratio",
                                 "student_teacher", "steps"))
    return render(request, "study_new.html", "study_new", title="Submit a study", f=fields,
                  default_seeds=DEFAULT_SEEDS, axis_fields=list(specs(StudyCreate, AXIS_OPTIONS).values()),
                  **_distill_context())


@router.get("/studies/{study_id}", response_class=HTMLResponse)
def study_page(request: Request, study_id: int) -> Response:
    return render(request, "study.html", "study", title=f"Study {study_id}", study_id=study_id)


@router.get("/teachers", response_class=HTMLResponse)
def teachers_page(request: Request) -> Response:
    train = ("steps", "batch_size", "lr", "lr_schedule", "resolution", "seed", "checkpoint_every")
    return render(
        request, "teachers.html", "teachers", title="Teachers", train_fields=train,
        local=specs(LocalTeacherCreate, ("name", "folder")),
        shipped=specs(ShippedTeacherCreate, ("name", "shipped")), shipped_names=shipped_names(),
        preset=specs(PresetTeacherCreate, ("name", "preset", "dataset", *train)),
        pruned=specs(PrunedTeacherCreate, ("name", "base_teacher", "prune_ratio", "importance", "dataset", *train)),
        presets=list(TEACHER_PRESETS.values()),
    )


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:
    return render(request, "login.html", "login", title="Sign in", next=_safe_next(next))
