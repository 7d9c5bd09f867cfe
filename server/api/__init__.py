"""REST routers, one per resource, and the dependencies they share (session, settings).

A router parses the request, calls the service layer (`server.services`) and answers; it never
imports another router nor the dispatcher. Services raise `server.errors.NotFound` / `Conflict`
(404 / 409, see `server.errors.install`) and 422s; a router commits the service's work, after
storing the answer of an Idempotency-Key in the same transaction.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request
from sqlalchemy.orm import Session

from server.auth import require_read, require_write
from server.db import get_session
from server.settings import Settings

SessionDep = Annotated[Session, Depends(get_session)]
# Route dependencies: every GET takes READ, every POST/PUT/PATCH/DELETE takes WRITE (see server.auth).
READ = [Depends(require_read)]
WRITE = [Depends(require_write)]


async def get_settings(request: Request) -> Settings:
    # async: no I/O, so FastAPI calls it on the event loop instead of handing it to a worker thread
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]

# Ids and offsets are bounded by the 32-bit INTEGER columns: a larger number would reach the database
# and fail there (a 500) instead of being refused here (a 422).
MAX_ROW_ID: int = 2**31 - 1
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
Offset = Annotated[int, Query(ge=0, le=MAX_ROW_ID, description="rows to skip")]


def wake_dispatcher(request: Request) -> None:
    """Let the dispatcher act now on a new or cancelled job instead of at its next round."""
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.wake()
