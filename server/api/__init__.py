"""REST routers, one per resource, and what they share: settings, bounds of ids, and the three ways
a route runs a service (`read`, `write`, `create`).

A router parses the request, calls the service layer (`server.services`) and answers; it never
imports another router nor the dispatcher. Services raise `server.errors.NotFound` / `Conflict`
(404 / 409, see `server.errors.install`) and 422s.

Routes are `async def` and hand their service call to a worker thread once: the session opens,
queries, commits and closes in that thread, and the answer is validated and serialised on the
event loop. (A `def` route with a session dependency was handed to worker threads four times per
request: session in, route, answer, session out; under load each hand-off waits for the GIL.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Concatenate, ParamSpec, Protocol, TypeVar

from fastapi import Depends, Path, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from server import idempotency
from server.auth import require_read, require_write
from server.db import read_session
from server.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")

# Route dependencies: every GET takes READ, every POST/PUT/PATCH/DELETE takes WRITE (see server.auth).
READ = [Depends(require_read)]
WRITE = [Depends(require_write)]


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]

# Ids and offsets are bounded by the 32-bit INTEGER columns: a larger number would reach the database
# and fail there (a 500) instead of being refused here (a 422).
MAX_ROW_ID: int = 2**31 - 1
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
Offset = Annotated[int, Query(ge=0, le=MAX_ROW_ID, description="rows to skip")]


async def read(request: Request, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(session, *args, **kwargs)` with a read-only session (server.db.READ_ONLY), in a worker thread."""
    def call() -> T:
        with read_session(request.app.state.sessionmaker) as session:
            return fn(session, *args, **kwargs)

    return await run_in_threadpool(call)


async def write(request: Request, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(session, *args, **kwargs)` in one transaction, committed when it returns, in a worker thread."""
    def call() -> T:
        with request.app.state.sessionmaker() as session:
            result = fn(session, *args, **kwargs)
            session.commit()
            return result

    return await run_in_threadpool(call)


class Created(Protocol):
    id: int


C = TypeVar("C", bound=Created)


async def create(request: Request, endpoint: str, key: str | None, body: BaseModel,
                 fn: Callable[[Session], C]) -> C | Response:
    """`fn(session)` creates a resource and returns its answer; stored with the Idempotency-Key `key`
    in the same transaction (see server.idempotency), or the stored answer of an earlier request."""
    settings: Settings = request.app.state.settings

    def call(session: Session) -> C | Response:
        claimed = idempotency.claim(session, settings, endpoint, key, body)
        if isinstance(claimed, Response):
            return claimed
        answer = fn(session)
        idempotency.record(claimed, 201, answer, answer.id)  # type: ignore[arg-type]
        return answer

    return await write(request, call)


def wake_dispatcher(request: Request) -> None:
    """Let the dispatcher act now on a new or cancelled job instead of at its next round."""
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.wake()
