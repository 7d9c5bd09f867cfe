"""The FastAPI application: `create_app(settings, executor)` wires settings, database, dispatcher.

Start-up applies the Alembic migrations, registers the embedded datasets and starts the
dispatcher thread (which starts or joins Ray in the background, so the API answers at once).
Shut-down stops the dispatcher and the executor (an embedded Ray stops with it).

The app is the REST API only. A user interface is added by whoever composes the service:
`create_app(..., ui=web.install)` (as `liftplace serve` and the demo do) mounts the browser UI.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request

from server import auth, errors
from server.api import artifacts, datasets, jobs, ready, studies, teachers
from server.db import make_engine, make_sessionmaker, run_migrations
from server.dispatcher import Dispatcher
from server.executors import Executor, RayExecutor
from server.middleware import BodySizeLimit
from server.page_cache import PageCache
from server.services.datasets import ensure_embedded_datasets
from server.services.readiness import Readiness
from server.settings import Settings
from server.tracking import Tracking

log = logging.getLogger(__name__)

API_DESCRIPTION = """Job queue of **liftplace**: distill tiny diffusion students with LIFT and PLACE (CVPR 2026) and
the baselines, over teachers x methods x seeds, on Ray, tracked in MLflow, summarised as five-seed stability tables.

Teachers and datasets are registered by name; no endpoint takes a file-system path."""


def default_executor(settings: Settings) -> Executor:
    """Ray: a local embedded Ray when RAY_ADDRESS is unset, else the cluster at RAY_ADDRESS."""
    return RayExecutor(settings.ray_address, gpus_per_job=settings.gpus_per_job, cpus_per_job=settings.cpus_per_job,
                       cancel_grace=settings.cancel_grace)


def create_app(settings: Settings | None = None, executor: Executor | None = None, *,
               tracking: Tracking | Literal[False] | None = None,
               ui: Callable[[FastAPI], None] | None = None) -> FastAPI:
    """Build the app. `executor`: default a RayExecutor; `tracking`: default MLflow from the
    settings, False for none (tests without MLflow); `ui`: called with the app to add a user
    interface (e.g. `web.install`), default none: the API alone."""
    settings = settings or Settings()
    engine = make_engine(str(settings.database_url))
    sessions = make_sessionmaker(engine)
    executor = executor if executor is not None else default_executor(settings)
    if tracking is None:
        tracking = Tracking(str(settings.mlflow_tracking_uri), settings.mlflow_ui_url, settings.mlflow_experiment)
    dispatcher = Dispatcher(settings, sessions, executor, tracking or None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.migrate:
            run_migrations(engine)
        with sessions() as session:
            ensure_embedded_datasets(session)
        if settings.dispatch:
            dispatcher.start()
        try:
            yield
        finally:
            dispatcher.stop()
            if dispatcher.executor_description is not None:  # started by this app: stop it too
                executor.shutdown()
            engine.dispose()

    app = FastAPI(title="liftplace", version="0.1.0", description=API_DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = sessions
    app.state.executor = executor
    app.state.dispatcher = dispatcher
    app.state.tracking = tracking or None
    app.state.page_cache = PageCache()  # pages of jobs by database revision (server.page_cache)
    app.state.readiness = Readiness(settings, engine, dispatcher, executor)
    for module in (jobs, studies, teachers, datasets, artifacts, ready):
        app.include_router(module.router)
    app.include_router(auth.router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    errors.install(app)

    @app.get("/api/status", tags=["status"], summary="Dispatcher and executor state")
    def status(request: Request) -> dict[str, Any]:
        d: Dispatcher = request.app.state.dispatcher
        return {"dispatcher": {"running": d.running, "instance": d.instance_id, "error": d.error},
                "executor": d.executor_description, "mlflow_ui_url": settings.mlflow_ui_url,
                "limits": {"max_steps": settings.max_steps, "max_jobs_per_study": settings.max_jobs_per_study,
                           "max_attempts": settings.max_attempts}}

    if ui is not None:
        ui(app)
    return app
