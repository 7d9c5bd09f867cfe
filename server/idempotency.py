"""Idempotency-Key for the creating POSTs: a retried request returns the original resource.

A client that did not get an answer (timeout, dropped connection) may send the same POST
again with the same ``Idempotency-Key`` header; it gets the answer of the first request
(same status, same body, header ``Idempotent-Replayed: true``) and nothing new is created.
The same key with a different body is a client error (422 naming the header). Keys are
scoped to one endpoint and remembered for LIFTPLACE_IDEMPOTENCY_HOURS.

Usage in a route, all in the request's one transaction::

    claimed = idempotency.claim(session, settings, "POST /api/jobs", key, body)
    if isinstance(claimed, Response):
        return claimed                       # a replay (or nothing to do)
    ... create the resource, flush ...
    idempotency.record(claimed, 201, read_model, resource.id)
    session.commit()

Concurrency rests on the unique (endpoint, key) index, not on a prior read: `claim` inserts
the key row first and flushes it. A concurrent twin's insert then waits for this transaction
(PostgreSQL) or cannot start before it ends (SQLite: BEGIN IMMEDIATE), and on commit it fails
with an IntegrityError, rolls back and replays the stored answer. If this request fails
instead, its key row goes with the rollback and the twin proceeds as the first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Annotated

from fastapi import Header, HTTPException, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.models import IdempotencyKey, utcnow
from server.settings import Settings

HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255  # the column's width

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(alias=HEADER, min_length=1, max_length=MAX_KEY_LENGTH, pattern=r"^[!-~]+$",
           description="a client-chosen unique key (e.g. a UUID; visible ASCII, at most 255 characters): a retry "
                       "with the same key and body returns the original resource instead of creating another"),
]


@dataclass
class Claim:
    """The key row this request inserted (None: the request carried no key)."""

    row: IdempotencyKey | None


def request_hash(body: BaseModel) -> str:
    """sha256 of the validated body: the same request however it was spelt (key order, spacing, defaults)."""
    canonical = json.dumps({"type": type(body).__name__, "body": body.model_dump(mode="json")}, sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _find(session: Session, endpoint: str, key: str) -> IdempotencyKey | None:
    return session.scalar(select(IdempotencyKey).where(IdempotencyKey.endpoint == endpoint,
                                                       IdempotencyKey.key == key))


def claim(session: Session, settings: Settings, endpoint: str, key: str | None, body: BaseModel) -> Claim | Response:
    """Claim `key` for this request, or answer it from the stored response of an earlier one.

    Returns a `Claim` (go on and create; call `record` before the commit) or a Response (the
    replayed original). Raises a 422 on the header when the key came with another body.
    """
    if key is None:
        return Claim(None)
    digest = request_hash(body)
    cutoff = utcnow() - dt.timedelta(hours=settings.idempotency_hours)
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))
    existing = _find(session, endpoint, key)
    if existing is None:
        row = IdempotencyKey(endpoint=endpoint, key=key, request_hash=digest)
        session.add(row)
        try:
            session.flush()  # a concurrent twin with this key waits on the unique index from here on
            return Claim(row)
        except IntegrityError:
            session.rollback()  # the twin committed first: answer with its response
            existing = _find(session, endpoint, key)
            if existing is None:  # the conflicting row is gone again (expired and purged): a rare race
                raise HTTPException(status_code=409, detail=f"{HEADER}: a concurrent request with this key "
                                                            "conflicted; send the request again") from None
    return _replay(existing, digest, endpoint, key)


def _replay(existing: IdempotencyKey, digest: str, endpoint: str, key: str) -> Response:
    if existing.request_hash != digest:
        what = f" (it created #{existing.resource_id})" if existing.resource_id is not None else ""
        msg = (f"{HEADER}: the key {key!r} was already used with another request body at {endpoint}{what}; use a "
               "new key for a new request")
        raise RequestValidationError([{"type": "value_error", "loc": ("header", HEADER), "msg": msg, "input": key}])
    if existing.response is None or existing.status_code is None:  # committed without `record`: a server bug
        raise HTTPException(status_code=409, detail=f"{HEADER}: the request with the key {key!r} has no stored "
                                                    "answer; use a new key")
    return JSONResponse(existing.response, status_code=existing.status_code, headers={REPLAY_HEADER: "true"})


def record(claimed: Claim, status_code: int, response: BaseModel, resource_id: int) -> None:
    """Store the answer with the claimed key (before the transaction's commit)."""
    if claimed.row is not None:
        claimed.row.status_code = status_code
        claimed.row.response = response.model_dump(mode="json")
        claimed.row.resource_id = resource_id
