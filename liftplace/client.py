"""A small client of the liftplace service's REST API: submit a study preset and follow it.

Only the standard library (urllib), so the library stays free of the server's dependencies.
Used by ``liftplace study run`` and by the one-command demo.

    client = ServiceClient("http://127.0.0.1:8000")
    runs = submit_preset(client, get_study_preset("quick"), name="quick")
    follow(client, runs)                # progress bar until every job has ended
    print(client.table(runs[0].study_id, "md"))
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from liftplace.job_status import TERMINAL_STATUSES

API_URL_ENV = "LIFTPLACE_API_URL"
API_TOKEN_ENV = "LIFTPLACE_API_TOKEN"
DEFAULT_API_URL = "http://127.0.0.1:8000"
PAGE_SIZE = 500  # the largest `limit` the service's listings accept

__all__ = ["ServiceClient", "ServiceError", "StudyRun", "ensure_teachers", "submit_preset", "follow", "find_study",
           "study_jobs", "API_URL_ENV", "API_TOKEN_ENV", "DEFAULT_API_URL", "PAGE_SIZE"]


class ServiceError(RuntimeError):
    """The service answered with an error (status >= 400) or could not be reached (status 0)."""

    def __init__(self, status: int, detail: str, url: str):
        super().__init__(f"{url}: {status} {detail}" if status else f"{url}: {detail}")
        self.status = status
        self.detail = detail
        self.url = url


def _detail(body: bytes) -> str:
    """The readable part of an error body: FastAPI's `detail` (a string or pydantic's list)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:500]
    detail = data.get("detail", data) if isinstance(data, dict) else data
    if isinstance(detail, list):
        return "; ".join(_item(d) for d in detail)
    return str(detail)


def _item(error: Any) -> str:
    """One pydantic error as "field: message" (FastAPI's `loc` starts with "body")."""
    if not isinstance(error, dict):
        return str(error)
    loc = [str(p) for p in error.get("loc", ()) if p != "body"]
    msg = str(error.get("msg", error))
    return f"{'.'.join(loc)}: {msg}" if loc and not msg.startswith(loc[-1]) else msg


class ServiceClient:
    """JSON over HTTP to one liftplace service; a bearer token is sent when one is given."""

    def __init__(self, base_url: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.base_url = (base_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get(API_TOKEN_ENV) or None
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, *, raw: bool = False) -> Any:
        url = self.base_url + path
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            raise ServiceError(exc.code, _detail(exc.read()), url) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceError(0, f"cannot reach the service ({reason})", url) from None
        return payload.decode() if raw else json.loads(payload or b"null")

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return self.request("GET", path + (f"?{query}" if query else ""))

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def pages(self, path: str, page_size: int = PAGE_SIZE, **params: Any) -> Iterator[Any]:
        """Every item of a paged listing (``{"items": [...], "total": n}`` by `limit` and `offset`), in order.

        Pages are fetched as the items are consumed, so stopping early fetches no further page. Ends at
        `total`, or at the first empty page (a listing that shrank while it was read).
        """
        offset = 0
        while True:
            page = self.get(path, **params, limit=page_size, offset=offset)
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Poll /api/status until the service answers; ServiceError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.get("/api/status")
            except ServiceError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def table(self, study_id: int, fmt: str = "md") -> str:
        return self.request("GET", f"/api/studies/{study_id}/table?format={fmt}", raw=True)


# --- presets --------------------------------------------------------------------------------------


@dataclass
class StudyRun:
    """A study of a preset on the service: submitted now, or found there from an earlier run."""

    study_id: int
    name: str
    reused: bool
    status: dict[str, Any] = field(default_factory=dict)


def _say(note: Callable[[str], None] | None, line: str) -> None:
    if note is not None:
        note(line)


def ensure_dataset(client: ServiceClient, preset: Any, note: Callable[[str], None] | None = None) -> None:
    """Register the preset's image-folder dataset unless it is registered (digits always is)."""
    body = preset.dataset_request()
    if body is None:
        return
    known = {d["name"] for d in client.get("/api/datasets")}
    if body["name"] not in known:
        client.post("/api/datasets", body)
        _say(note, f"registered dataset {body['name']!r}")


def _check_source(client: ServiceClient, plan: Any, have: dict[str, Any], retrain: bool) -> None:
    """ServiceError when the service's teacher of this name is not what the plan asks for (shipped or trained)."""
    wanted, source = plan.registered_source(retrain), have.get("source")
    if source is None or (source == "shipped") == (wanted == "shipped"):  # None: a record that does not say
        return
    if wanted == "shipped":
        hint = (f"the preset uses the teacher shipped with liftplace; run with --retrain to use this service's "
                f"trained {plan.name!r}, or use a service without it")
    else:
        hint = ("the preset trains this teacher (--retrain, or a plan without a shipped teacher), but the service's "
                "is the shipped one; use another service")
    raise ServiceError(409, f"teacher {plan.name!r} exists with source {source!r}: {hint}",
                       client.base_url + "/api/teachers")


def ensure_teachers(client: ServiceClient, preset: Any, note: Callable[[str], None] | None = None, *,
                    retrain: bool = False) -> list[str]:
    """Register (or queue the training of) every teacher of the preset that the service lacks.

    A teacher shipped with liftplace (`TeacherPlan.shipped`) is registered as such, unless `retrain`:
    then it is trained by its plan like any other. Teachers are reused by name: one that exists is
    never trained again, but a shipped teacher is never stood in for by a trained one of its name, nor
    the other way round (ServiceError saying so). A teacher whose training failed raises ServiceError
    naming it (retry its job, or delete it). Returns the names of the teachers queued for training now.
    """
    existing = {t["name"]: t for t in client.get("/api/teachers")}
    queued = []
    for plan in preset.teachers:
        have = existing.get(plan.name)
        if have is not None:
            _check_source(client, plan, have, retrain)
        if have is None:
            created = client.post("/api/teachers", plan.request(preset.dataset, retrain=retrain))
            existing[plan.name] = created
            if created["status"] == "training":
                queued.append(plan.name)
                _say(note, f"teacher {plan.name!r}: training queued (job {created.get('job_id')})")
            else:
                _say(note, f"teacher {plan.name!r}: registered ({created.get('source')}, "
                           f"{created.get('parameters')} parameters)")
        elif have["status"] == "failed":
            raise ServiceError(409, f"teacher {plan.name!r} failed to train ({have.get('reason')}); retry job "
                                    f"{have.get('job_id')} first", client.base_url + "/api/teachers")
        elif have.get("parameters") is None:  # still training: its size is known once it has a model
            _say(note, f"teacher {plan.name!r}: reusing ({have['status']}, job {have.get('job_id')})")
        else:
            _say(note, f"teacher {plan.name!r}: reusing ({have['status']}, {have['parameters']} parameters)")
    return queued


def find_study(client: ServiceClient, name: str, *, match_id: bool = False) -> dict[str, Any] | None:
    """The study named `name` (or, with `match_id`, whose id is `name`); None when the service has none."""
    return next((s for s in client.pages("/api/studies") if s["name"] == name or (match_id and str(s["id"]) == name)),
                None)


def submit_preset(client: ServiceClient, preset: Any, name: str | None = None,
                  note: Callable[[str], None] | None = None, *, retrain: bool = False) -> list[StudyRun]:
    """Ensure the preset's dataset and teachers (`retrain`: train its shipped teachers afresh), then submit its
    studies (one per variant).

    A study whose name already exists on the service is reused, not submitted again, so
    running the same command twice follows (or shows) the first run.
    """
    ensure_dataset(client, preset, note)
    ensure_teachers(client, preset, note, retrain=retrain)
    runs = []
    for body in preset.study_requests(name or preset.name):
        found = find_study(client, body["name"])
        if found is not None:
            runs.append(StudyRun(found["id"], found["name"], reused=True, status=found))
            _say(note, f"study {found['name']!r}: reusing study {found['id']} ({found['status']})")
            continue
        created = client.post("/api/studies", body)
        runs.append(StudyRun(created["id"], created["name"], reused=False, status=created))
        _say(note, f"study {created['name']!r}: submitted as study {created['id']} ({created['jobs']} jobs)")
    return runs


# --- following ------------------------------------------------------------------------------------


def _progress_fraction(jobs: Iterable[dict[str, Any]]) -> float:
    """Jobs done, counting running jobs by their step fraction."""
    done = 0.0
    for job in jobs:
        if job["status"] in TERMINAL_STATUSES:
            done += 1.0
        elif job["status"] == "running":
            done += 0.9 * (job["progress"].get("fraction") or 0.0)  # the last 10%: sampling and FID
    return done


def study_jobs(client: ServiceClient, study_id: int) -> list[dict[str, Any]]:
    """Every job of a study (all pages of /api/jobs)."""
    return list(client.pages("/api/jobs", study=study_id))


def _teacher_jobs(client: ServiceClient, names: set[str]) -> list[dict[str, Any]]:
    teachers = [t for t in client.get("/api/teachers") if t["name"] in names and t.get("job_id")]
    return [client.get(f"/api/jobs/{t['job_id']}") for t in teachers]


def follow(client: ServiceClient, runs: list[StudyRun], *, teachers: Iterable[str] = (), poll: float = 2.0,
           progress: bool = True, timeout: float | None = None) -> list[dict[str, Any]]:
    """Poll until every job of the studies (and the training of `teachers`) has ended.

    Shows a tqdm bar over the jobs (teacher training included), with the running and failed
    counts. Returns the final study records. TimeoutError after `timeout` seconds.
    """
    from tqdm.auto import tqdm

    teacher_names = set(teachers)
    start = time.monotonic()
    bar = None
    try:
        while True:
            jobs = _teacher_jobs(client, teacher_names) if teacher_names else []
            studies = []
            for run in runs:
                studies.append(client.get(f"/api/studies/{run.study_id}"))
                jobs.extend(study_jobs(client, run.study_id))
            total = len(jobs)
            if bar is None and progress:
                bar = tqdm(total=total, desc="jobs", unit="job", dynamic_ncols=True,
                           bar_format="{l_bar}{bar}| {n:.1f}/{total} [{elapsed}<{remaining}{postfix}]")
            counts: dict[str, int] = {}
            for job in jobs:
                counts[job["status"]] = counts.get(job["status"], 0) + 1
            if bar is not None:
                bar.total = total
                bar.n = round(_progress_fraction(jobs), 1)
                bar.set_postfix({k: v for k, v in counts.items() if k != "succeeded"} | {"ok": counts.get(
                    "succeeded", 0)}, refresh=False)
                bar.refresh()
            if all(s["status"] == "ended" for s in studies) and all(
                    j["status"] in TERMINAL_STATUSES for j in jobs):
                return studies
            if timeout is not None and time.monotonic() - start > timeout:
                raise TimeoutError(f"studies {[r.study_id for r in runs]} still running after {timeout:.0f} s")
            time.sleep(poll)
    finally:
        if bar is not None:
            bar.close()
