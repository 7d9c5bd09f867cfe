"""The browser UI of liftplace: pages, our own static files, and plotly's JS.

`install(app)` adds it to the API's FastAPI app; the entry points do so
(`create_app(settings, ui=web.install)` in `liftplace serve` and the demo).

Nothing is loaded from another origin: the only third-party script, plotly.js, is served from
the installed `plotly` Python package at /static/vendor/plotly.min.js.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["install", "plotly_js_path", "PLOTLY_JS_URL"]

PLOTLY_JS_URL = "/static/vendor/plotly.min.js"


def plotly_js_path() -> Path | None:
    """plotly.min.js as shipped in the plotly package (found without importing plotly); None if absent."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


def install(app: FastAPI) -> None:
    """Add the pages, /static (our JS/CSS) and /static/vendor/plotly.min.js to `app`."""
    from web.pages import STATIC_DIR, router

    plotly_js = plotly_js_path()

    # Registered before the /static mount, which would otherwise answer this path with a 404.
    @app.get(PLOTLY_JS_URL, include_in_schema=False)
    def plotly_min_js() -> FileResponse:
        if plotly_js is None:
            raise HTTPException(status_code=404, detail="plotly.min.js: the plotly package is not installed")
        return FileResponse(plotly_js, media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
