"""REST routers, one per resource, and the dependencies they share (session, settings)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.auth import require_read, require_write
from server.db import get_session
from server.settings import Settings

SessionDep = Annotated[Session, Depends(get_session)]
# Route dependencies: every GET takes READ, every POST/PUT/PATCH/DELETE takes WRITE (see server.auth).
READ = [Depends(require_read)]
WRITE = [Depends(require_write)]


def get_settings(request: Request) -> Settings:
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


def not_found(what: str, key: object) -> HTTPException:
    return HTTPException(status_code=404, detail=f"{what} {key!r} not found")


def conflict(detail: str) -> HTTPException:
    return HTTPException(status_code=409, detail=detail)


@contextmanager
def unique_or_conflict(session: Session, detail: str) -> Iterator[None]:
    """Flush and commit inside: a unique name taken meanwhile by a concurrent request is a 409, not a 500.

    The routes check the name first; this covers the race between that check and the commit.
    """
    try:
        yield
    except IntegrityError:
        session.rollback()
        raise conflict(detail) from None
