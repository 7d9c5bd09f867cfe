"""`liftplace serve`: the API, its browser UI, the dispatcher and (embedded mode) a local Ray, in one command.

Plugged into the `liftplace` command through the entry point group ``liftplace.commands``
(``serve = "server.cli:register"``); ``python -m server.cli serve`` works without it.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from liftplace.cli import HelpFormatter, run_commands

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand (the liftplace.commands entry point)."""
    p = subparsers.add_parser(
        "serve",
        help="run the job-queue API server, its dispatcher and (embedded) a local Ray",
        formatter_class=HelpFormatter,
        description=(
            "Serve the REST API (OpenAPI docs at /docs) and dispatch queued jobs to Ray. Configured by environment "
            "variables: DATABASE_URL (default: SQLite under the data dir), RAY_ADDRESS (unset: start a local Ray), "
            "MLFLOW_TRACKING_URI, MLFLOW_UI_URL, LIFTPLACE_DATA_DIR, LIFTPLACE_TEACHERS_DIR, LIFTPLACE_DATASETS_DIR, "
            "LIFTPLACE_GPUS_PER_JOB, LIFTPLACE_CPUS_PER_JOB, LIFTPLACE_MAX_STEPS, LIFTPLACE_MAX_JOBS_PER_STUDY, "
            "LIFTPLACE_MAX_ATTEMPTS, LIFTPLACE_API_TOKEN (writes need it; unset: no authentication), "
            "LIFTPLACE_AUTH_READS. Without a token, bind another address than 127.0.0.1 only behind a proxy that "
            "authenticates."
        ),
    )
    p.add_argument("--host", default=None, help="address to bind (default: LIFTPLACE_HOST, else 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: LIFTPLACE_PORT, else 8000)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="database, job outputs and MLflow store (default: LIFTPLACE_DATA_DIR, else ./liftplace-data)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="log level")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    import uvicorn
    from pydantic import ValidationError

    from server.app import create_app
    from server.settings import Settings
    from web import install as install_web  # the browser UI: pages, /static, plotly.js

    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "data_dir": args.data_dir}.items()
                 if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        if parser is not None:
            parser.error(message)
        raise SystemExit(f"serve: {message}") from None
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.api_token is None and not is_loopback(settings.host):
        print(f"liftplace: WARNING: listening on {settings.host} without LIFTPLACE_API_TOKEN: anyone who reaches "
              "this address can queue GPU jobs; set a token or bind 127.0.0.1", file=sys.stderr, flush=True)
    ray = f"Ray at {settings.ray_address}" if settings.ray_address else "an embedded local Ray"
    print(f"liftplace: API on http://{settings.host}:{settings.port} (docs: /docs), {ray}, data in "
          f"{settings.data_dir}, MLflow UI {settings.mlflow_ui_url}", flush=True)
    owns_ray = settings.embedded_ray
    if owns_ray:
        # Start the embedded Ray here, in the main thread, not in the dispatcher's thread:
        # only then does ray.shutdown() also stop Ray's agent processes at Ctrl-C.
        from worker.ray_tasks import init_ray

        init_ray(None)
    try:
        uvicorn.run(create_app(settings, ui=install_web), host=settings.host, port=settings.port,
                    log_level=args.log_level)
    finally:
        if owns_ray:
            from worker.ray_tasks import shutdown_ray

            shutdown_ray()
    return 0


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) is this machine only: 127.0.0.0/8, ::1 or localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to an outside interface


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m server.cli serve ...` (the same command without the liftplace entry point)."""
    return run_commands(register, argv, "python -m server.cli")


if __name__ == "__main__":
    sys.exit(main())
