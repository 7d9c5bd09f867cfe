"""A catalogue of bad requests, on SQLite and PostgreSQL: each a clear 4xx, nothing stored, nothing run.

One row per bad input: wrong types, out-of-range ratios, seeds and steps, non-finite numbers,
unknown teachers, methods and datasets, oversized studies, path traversal in every name field,
malformed JSON, huge bodies, bad query and path parameters. Each row is a subtest that checks
the status, that the message names the field, that no table changed and that the dispatcher
finds nothing to run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as default
from typing import Any

from sqlalchemy import func, select

from server.idempotency import HEADER
from server.models import Dataset, IdempotencyKey, Job, JobLog, Study, StudyCell, Teacher
from server.settings import MAX_BODY_BYTES
from tests.server.server_testkit import Harness

MAX_STEPS = 1000  # the test app's LIFTPLACE_MAX_STEPS
MAX_JOBS_PER_STUDY = 20  # the test app's LIFTPLACE_MAX_JOBS_PER_STUDY
INT32_OVER = 2**31  # one over the largest seed and id
TABLES = (Job, Study, StudyCell, Teacher, Dataset, IdempotencyKey, JobLog)

JOB = {"teacher": "t-small", "method": "lift+place+featkd", "seed": 0, "steps": 5}
STUDY = {"name": "bad", "teachers": ["t-small"], "methods": ["outkd"], "seeds": 2, "steps": 5}
PRESET = {"source": "preset", "name": "new-teacher", "preset": "tiny", "steps": 5}
PRUNED = {"source": "pruned", "name": "new-pruned", "base_teacher": "t-small", "prune_ratio": 0.5, "steps": 5}
LOCAL = {"source": "local", "name": "t-new"}
DATASET = {"name": "new-set"}

# Names that must never reach the file system (teacher, dataset and folder fields).
TRAVERSALS = ["../x", "a/b", "..", "/etc/passwd", "x\x00y", "a\\b", "..\\..\\x", ".hidden", " t-small", "t-small\n"]


@dataclass
class Case:
    """One bad request: what to send, the status it must get, and the field its message must name."""

    label: str
    url: str
    body: Any = None  # a JSON-able value, or raw bytes / a byte iterator sent as is
    status: int = 422
    field: str | None = None  # None: the request has no field at fault (malformed JSON)
    method: str = "POST"
    headers: dict[str, str] = default(default_factory=dict)


def _with(base: dict[str, Any], **change: Any) -> dict[str, Any]:
    return {**base, **change}


def _raw(text: str) -> bytes:
    return text.encode()


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield b" " * min(size, total - start)


def catalogue() -> list[Case]:
    cases = [
        # wrong types
        Case("job: teacher is a number", "/api/jobs", _with(JOB, teacher=5), field="teacher"),
        Case("job: seed is a string", "/api/jobs", _with(JOB, seed="zero"), field="seed"),
        Case("job: seed is a fraction", "/api/jobs", _with(JOB, seed=1.5), field="seed"),
        Case("job: steps is a list", "/api/jobs", _with(JOB, steps=[5]), field="steps"),
        Case("job: ratio is a word", "/api/jobs", _with(JOB, student_ratio="half"), field="student_ratio"),
        Case("job: curriculum is a word", "/api/jobs", _with(JOB, curriculum="maybe"), field="curriculum"),
        Case("job: options is null", "/api/jobs", _with(JOB, batch_size=None), field="batch_size"),
        Case("job: body is a list", "/api/jobs", [JOB], field="body"),
        Case("job: body is a string", "/api/jobs", "teacher=t-small", field="body"),
        Case("job: teacher missing", "/api/jobs", {"seed": 0}, field="teacher"),
        Case("job: misspelt option", "/api/jobs", _with(JOB, stepz=5), field="stepz"),
        # ratios
        *[Case(f"job: ratio {r}", "/api/jobs", _with(JOB, student_ratio=r), field="student_ratio")
          for r in (0, 1, -0.1, 1.5)],
        Case("job: ratio NaN", "/api/jobs", _raw('{"teacher": "t-small", "student_ratio": NaN}'),
             field="student_ratio"),
        Case("job: ratio Infinity", "/api/jobs", _raw('{"teacher": "t-small", "student_ratio": Infinity}'),
             field="student_ratio"),
        Case("job: lambda_kd overflows to inf", "/api/jobs", _raw('{"teacher": "t-small", "lambda_kd": 1e400}'),
             field="lambda_kd"),
        Case("job: lr NaN", "/api/jobs", _raw('{"teacher": "t-small", "lr": NaN}'), field="lr"),
        Case("pruned teacher: prune ratio 1", "/api/teachers", _with(PRUNED, prune_ratio=1), field="prune_ratio"),
        Case("pruned teacher: prune ratio NaN", "/api/teachers",
             _raw(json.dumps(PRUNED).replace("0.5", "NaN")), field="prune_ratio"),
        # seeds and steps
        Case("job: seed -1", "/api/jobs", _with(JOB, seed=-1), field="seed"),
        Case("job: seed 2**31", "/api/jobs", _with(JOB, seed=INT32_OVER), field="seed"),
        Case("job: seed 2**70", "/api/jobs", _with(JOB, seed=2**70), field="seed"),
        Case("job: steps 0", "/api/jobs", _with(JOB, steps=0), field="steps"),
        Case("job: steps over LIFTPLACE_MAX_STEPS", "/api/jobs", _with(JOB, steps=MAX_STEPS + 1), field="steps"),
        Case("job: steps 2**63", "/api/jobs", _with(JOB, steps=2**63), field="steps"),
        Case("study: seed -1", "/api/studies", _with(STUDY, seeds=[0, -1]), field="seeds"),
        Case("study: seed 2**31", "/api/studies", _with(STUDY, seeds=[INT32_OVER]), field="seeds"),
        Case("study: seed count 0", "/api/studies", _with(STUDY, seeds=0), field="seeds"),
        Case("study: repeated seeds", "/api/studies", _with(STUDY, seeds=[1, 1]), field="seeds"),
        Case("study: steps over LIFTPLACE_MAX_STEPS", "/api/studies", _with(STUDY, steps=MAX_STEPS + 1),
             field="steps"),
        Case("preset teacher: steps 0", "/api/teachers", _with(PRESET, steps=0), field="steps"),
        # unknown names
        Case("job: unknown teacher", "/api/jobs", _with(JOB, teacher="nobody"), field="teacher"),
        Case("job: unknown method", "/api/jobs", _with(JOB, method="lift+magic"), field="method"),
        Case("job: unknown dataset", "/api/jobs", _with(JOB, dataset="celeba"), field="dataset"),
        Case("study: unknown teacher", "/api/studies", _with(STUDY, teachers=["t-small", "nobody"]),
             field="teachers"),
        Case("study: unknown method", "/api/studies", _with(STUDY, methods=["outkd", "magic"]), field="methods"),
        Case("study: unknown dataset", "/api/studies", _with(STUDY, dataset="celeba"), field="dataset"),
        Case("teacher: unknown source", "/api/teachers", _with(LOCAL, source="hub"), field="source"),
        Case("teacher: unknown preset", "/api/teachers", _with(PRESET, preset="huge"), field="preset"),
        Case("pruned teacher: unknown base", "/api/teachers", _with(PRUNED, base_teacher="nobody"),
             field="base_teacher"),
        Case("preset teacher: unknown dataset", "/api/teachers", _with(PRESET, dataset="celeba"), field="dataset"),
        Case("local teacher: no such folder", "/api/teachers", _with(LOCAL, folder="absent"), field="folder"),
        Case("dataset: no such folder", "/api/datasets", _with(DATASET, folder="absent"), field="folder"),
        # oversized studies
        Case("study: over LIFTPLACE_MAX_JOBS_PER_STUDY", "/api/studies",
             _with(STUDY, teachers=["t-small", "t-large"], methods=["outkd", "lift"], seeds=6), field="seeds"),
        Case("study: seed count over the schema's maximum", "/api/studies", _with(STUDY, seeds=10**6),
             field="seeds"),
        Case("study: a 100,000-seed list", "/api/studies", _with(STUDY, seeds=list(range(100_000))), field="seeds"),
        Case("study: no teachers", "/api/studies", _with(STUDY, teachers=[]), field="teachers"),
        Case("study: name of 201 characters", "/api/studies", _with(STUDY, name="s" * 201), field="name"),
        Case("study: name with a NUL byte", "/api/studies", _with(STUDY, name="a\x00b"), field="name"),
        Case("study: empty name", "/api/studies", _with(STUDY, name=""), field="name"),
        # malformed JSON and bodies
        Case("malformed JSON", "/api/jobs", _raw('{"teacher": "t-small",'), field=None),
        Case("not JSON at all", "/api/jobs", _raw("teacher=t-small"), field=None),
        Case("JSON nested 100,000 deep", "/api/jobs", _raw("[" * 100_000 + "]" * 100_000), status=400, field=None),
        Case("an empty body", "/api/jobs", _raw(""), field="body"),
        Case("invalid UTF-8", "/api/jobs", b'{"teacher": "\xff\xfe"}', status=400, field=None),
        Case("a body over the size limit", "/api/jobs", b" " * (MAX_BODY_BYTES + 1), status=413,
             field="request body"),
        Case("a chunked body over the size limit", "/api/jobs", _chunks(MAX_BODY_BYTES + 1), status=413,
             field="request body"),
        # headers
        Case("an Idempotency-Key of 256 characters", "/api/jobs", JOB, headers={HEADER: "k" * 256}, field=HEADER),
        # query and path parameters
        Case("list: limit 0", "/api/jobs?limit=0", method="GET", field="limit"),
        Case("list: limit over 500", "/api/jobs?limit=501", method="GET", field="limit"),
        Case("list: offset -1", "/api/jobs?offset=-1", method="GET", field="offset"),
        Case("list: offset 2**63", f"/api/jobs?offset={2**63}", method="GET", field="offset"),
        Case("list: unknown status", "/api/jobs?status=done", method="GET", field="status"),
        Case("list: study is a word", "/api/jobs?study=first", method="GET", field="study"),
        Case("list: study id 2**63", f"/api/jobs?study={2**63}", method="GET", field="study"),
        Case("job id is a word", "/api/jobs/first", method="GET", field="job_id"),
        Case("job id 2**63", f"/api/jobs/{2**63}", method="GET", field="job_id"),
        Case("job id 2**31 (cancel)", f"/api/jobs/{INT32_OVER}/cancel", field="job_id"),
        Case("job id -1 (retry)", "/api/jobs/-1/retry", field="job_id"),
        Case("logs: offset 2**63", f"/api/jobs/1/logs?offset={2**63}", method="GET", field="offset"),
        Case("study id 2**63", f"/api/studies/{2**63}", method="GET", field="study_id"),
        Case("table: unknown format", "/api/studies/1/table?format=xlsx", method="GET", field="format"),
    ]
    # path traversal in every name field
    for name in TRAVERSALS:
        shown = repr(name)
        cases += [
            Case(f"job: teacher {shown}", "/api/jobs", _with(JOB, teacher=name), field="teacher"),
            Case(f"job: dataset {shown}", "/api/jobs", _with(JOB, dataset=name), field="dataset"),
            Case(f"study: teacher {shown}", "/api/studies", _with(STUDY, teachers=[name]), field="teachers"),
            Case(f"local teacher: name {shown}", "/api/teachers", _with(LOCAL, name=name), field="name"),
            Case(f"local teacher: folder {shown}", "/api/teachers", _with(LOCAL, folder=name), field="folder"),
            Case(f"pruned teacher: base {shown}", "/api/teachers", _with(PRUNED, base_teacher=name),
                 field="base_teacher"),
            Case(f"dataset: name {shown}", "/api/datasets", _with(DATASET, name=name), field="name"),
            Case(f"dataset: folder {shown}", "/api/datasets", _with(DATASET, folder=name), field="folder"),
        ]
    return cases


def _counts(h: Harness) -> dict[str, int]:
    with h.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        return {m.__tablename__: session.scalar(select(func.count()).select_from(m)) or 0 for m in TABLES}


def _send(h: Harness, case: Case) -> Any:
    headers = dict(case.headers)
    if case.method == "GET":
        return h.client.get(case.url, headers=headers)
    if isinstance(case.body, bytes | Iterator):
        headers.setdefault("content-type", "application/json")
        return h.client.post(case.url, content=case.body, headers=headers)
    return h.client.post(case.url, json=case.body, headers=headers)


def _names(detail: Any, name: str) -> bool:
    """Whether an error answer names `name`: in a string detail, or in a 422 error's location or message."""
    if isinstance(detail, str):
        return name in detail
    return any(name in map(str, e.get("loc", ())) or name in e.get("msg", "") for e in detail)


def _readable(detail: Any) -> bool:
    if isinstance(detail, str):
        return bool(detail.strip())
    return bool(detail) and all(isinstance(e.get("msg"), str) and e["msg"].strip() for e in detail)


def test_every_bad_request_is_a_clear_4xx_that_stores_and_runs_nothing(make_harness, subtests) -> None:
    cases = catalogue()
    assert len({c.label for c in cases}) == len(cases) > 100
    with make_harness(max_steps=MAX_STEPS, max_jobs_per_study=MAX_JOBS_PER_STUDY) as h:
        before = _counts(h)
        assert before["jobs"] == 0
        for case in cases:
            with subtests.test(case.label):
                now = _counts(h)  # per case, so that one failure does not fail every later row
                r = _send(h, case)
                assert r.status_code == case.status, r.text[:500]
                detail = r.json()["detail"]
                assert _readable(detail), detail
                if case.field is not None:
                    assert _names(detail, case.field), (case.field, detail)
                assert _counts(h) == now
        h.tick()  # a dispatcher round finds nothing to run
        assert h.runner.specs == [] and _counts(h) == before
