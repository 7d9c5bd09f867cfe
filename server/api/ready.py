"""GET /api/ready: 200 when the API can do its work, 503 with the reasons otherwise (server.services.readiness).

Open without the API token, like /api/status: health checks carry none. Its checks leave the
process (database, Ray), each bounded; GET /api/status is the cheap liveness answer.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from server.services.readiness import ReadyAnswer

router = APIRouter(prefix="/api", tags=["status"])


@router.get("/ready", response_model=ReadyAnswer, summary="Readiness: database, dispatcher, Ray and node versions",
            responses={503: {"model": ReadyAnswer, "description": "not ready; `reasons` says why"}})
async def ready(request: Request) -> JSONResponse:
    answer = await run_in_threadpool(request.app.state.readiness.check)
    return JSONResponse(answer.model_dump(mode="json"), status_code=200 if answer.ready else 503)
