"""`liftplace demo`: the whole product on one machine, with one command.

Starts an MLflow tracking server (with its UI), a local Ray, and the API with the web UI, all on
127.0.0.1; makes sure the preset's teachers exist (those shipped with liftplace are registered,
others are trained by the service on first use; `--retrain` trains the shipped ones too; all are
reused afterwards); submits the preset's stability study (default: "quick"); prints the
dashboard and MLflow URLs; follows the study with a progress bar and prints its Table-6 grid.
It then keeps serving until Ctrl-C (or exits with --exit-when-done). Ctrl-C stops every
process it started. Running it again with the same data directory reuses the teachers and the
study (use --name for a new study).

Plugged into the `liftplace` command through the ``liftplace.commands`` entry point.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from server.settings import DEFAULT_PORT

if TYPE_CHECKING:
    from liftplace.client import ServiceClient
    from liftplace.studies import StudyPreset

DEFAULT_DATA_DIR = Path("liftplace-demo")
DEFAULT_MLFLOW_PORT = 5000
DEFAULT_PRESET = "quick"
MLFLOW_START_TIMEOUT = 120.0  # seconds; it takes ~20 s on a 2-core machine

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand (the liftplace.commands entry point)."""
    from liftplace.cli import HelpFormatter
    from liftplace.cli_study import RETRAIN_HELP
    from liftplace.studies import STUDY_PRESET_NAMES

    p = subparsers.add_parser(
        "demo", help="run the whole platform locally and a small stability study on digits",
        formatter_class=HelpFormatter, description=__doc__.split("\n\n")[1],
    )
    p.add_argument("--preset", choices=STUDY_PRESET_NAMES, default=DEFAULT_PRESET, help="study preset to run")
    p.add_argument("--name", default=None, help="study name (default: the preset's); an existing one is reused")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help="database, teachers, job outputs and the MLflow store")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="port of the API and web UI (a free one is taken when it is busy)")
    p.add_argument("--mlflow-port", type=int, default=DEFAULT_MLFLOW_PORT,
                   help="port of the MLflow server (a free one is taken when it is busy)")
    p.add_argument("--exit-when-done", action="store_true",
                   help="stop everything once the table is printed, instead of serving until Ctrl-C")
    p.add_argument("--retrain", action="store_true", help=RETRAIN_HELP)
    p.set_defaults(func=_cmd_demo)


# --- ports and processes ------------------------------------------------------------------------


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(wanted: int, host: str = "127.0.0.1") -> int:
    """`wanted` when it is free, else a free port the OS picks."""
    if wanted and port_free(wanted, host):
        return wanted
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_mlflow(data_dir: Path, port: int, prefix: Sequence[str] = ()) -> subprocess.Popen:
    """An MLflow tracking server on 127.0.0.1:`port`, its store in `data_dir` (in its own process group);
    `prefix` goes before the command (e.g. ``taskset -c 1`` to pin it to a CPU)."""
    logfile = open(data_dir / "mlflow-server.log", "ab")  # noqa: SIM115 - owned by the child process
    cmd = [*prefix, sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{(data_dir / 'mlflow.db').resolve()}",
           "--artifacts-destination", str((data_dir / "mlartifacts").resolve())]
    # start_new_session: Ctrl-C in the terminal reaches only us; we stop its whole group ourselves.
    return subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)


class MlflowServer:
    """An MLflow tracking server of `start_mlflow`'s kind on 127.0.0.1 (a free port unless `port` is given):
    launched, waited for until it answers, and stopped with its whole process group."""

    def __init__(self, root: Path, port: int = 0, prefix: Sequence[str] = ()) -> None:
        self.root, self.prefix = root, tuple(prefix)
        self.port = pick_port(port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def launch(self) -> None:
        """Start the process and return at once (other work can go on while it boots)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = start_mlflow(self.root, self.port, self.prefix)

    def wait(self, timeout: float = MLFLOW_START_TIMEOUT) -> None:
        """Until it answers on /health; RuntimeError if it exits first, TimeoutError after `timeout` s."""
        wait_http(f"{self.url}/health", timeout, self.proc)

    def start(self, timeout: float = MLFLOW_START_TIMEOUT) -> float:
        """Launch and wait; the seconds that took."""
        t0 = time.monotonic()
        self.launch()
        self.wait(timeout)
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
            self.proc = None


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process serving {url} exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.5)


def stop_process_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after `grace` seconds."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # children that outlived the leader (e.g. server workers)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class ApiServer:
    """uvicorn serving the app in a background thread (the main thread keeps Ctrl-C)."""

    def __init__(self, app, host: str, port: int):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    log_config=None))
        self.thread = threading.Thread(target=self.server.run, name="liftplace-api", daemon=True)

    def start(self, timeout: float = 60.0) -> None:
        """Start serving; RuntimeError when this server (not another on the port) did not come up."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                config = self.server.config
                raise RuntimeError(f"the API could not start on {config.host}:{config.port} (port taken? see "
                                   "demo.log)")
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


# --- the command ----------------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _say(line: str) -> None:
    print(line, flush=True)


@dataclass
class _Services:
    """The demo's running services: the API (with the web UI) and a client of it, and MLflow's UI."""

    api_url: str
    mlflow_url: str
    client: ServiceClient


def _prepare(args: argparse.Namespace) -> tuple[Path, int, int]:
    """Signals, the data folder and its log file, and two free ports: (data_dir, API port, MLflow port)."""
    # SIGINT gets Python's handler even when started in the background, where the shell ignores it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    data_dir: Path = args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    # The service's own logs go to a file, so the terminal shows only the demo's lines.
    logging.basicConfig(filename=data_dir / "demo.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    port = pick_port(args.port)
    mlflow_port = pick_port(args.mlflow_port)
    if port == mlflow_port:
        mlflow_port = pick_port(0)
    return data_dir, port, mlflow_port


def _start_services(stack: ExitStack, data_dir: Path, port: int, mlflow_port: int) -> _Services:
    """MLflow, Ray and the API, each stopped by `stack` (in the reverse order) whatever happens later."""
    from liftplace.client import ServiceClient
    from server.app import create_app
    from server.settings import Settings
    from web import install as install_web
    from worker.ray_tasks import init_ray, shutdown_ray

    mlflow = MlflowServer(data_dir, mlflow_port)
    api_url, mlflow_url = f"http://127.0.0.1:{port}", mlflow.url
    _say(f"starting MLflow at {mlflow_url} ...")
    mlflow.launch()
    stack.callback(mlflow.stop)
    settings = Settings(data_dir=data_dir, host="127.0.0.1", port=port, mlflow_tracking_uri=mlflow_url,
                        mlflow_ui_url=mlflow_url, ray_address=None)
    # Ray starts in the main thread (so its shutdown also stops its agents) while MLflow boots.
    _say(f"starting Ray: {init_ray(None, log_to_driver=False)}")
    stack.callback(shutdown_ray)
    # SIGTERM (kill, a process manager) stops everything the way Ctrl-C does; set after
    # ray.init, which installs a handler of its own that would exit without cleaning up.
    signal.signal(signal.SIGTERM, _interrupt)
    mlflow.wait()
    api = ApiServer(create_app(settings, ui=install_web), "127.0.0.1", port)
    api.start()
    stack.callback(api.stop)
    client = ServiceClient(api_url, token=os.environ.get("LIFTPLACE_API_TOKEN") or None)
    client.wait_ready(timeout=60)
    _say(f"API and web UI at {api_url}   MLflow UI at {mlflow_url}")
    return _Services(api_url, mlflow_url, client)


def _run_study(services: _Services, preset: StudyPreset, name: str | None, started: float, *,
               retrain: bool = False) -> None:
    """Submit the preset (its teachers first), follow it, print its table and where to look next."""
    from liftplace.cli_study import print_tables
    from liftplace.client import follow, submit_preset

    client, api_url = services.client, services.api_url
    runs = submit_preset(client, preset, name, note=_say, retrain=retrain)
    for run in runs:
        _say(f"dashboard: {api_url}/studies/{run.study_id}")
    _say(f"queue:     {api_url}/queue")
    follow(client, runs, teachers=[t.name for t in preset.teachers])
    print_tables(client, [r.study_id for r in runs], preset.label)
    _say(f"\nfinished in {(time.monotonic() - started) / 60:.1f} min")
    for run in runs:
        _say(f"dashboard: {api_url}/studies/{run.study_id}")
    _say(f"MLflow UI: {services.mlflow_url}")


def _cmd_demo(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    from liftplace.client import ServiceError
    from liftplace.studies import get_study_preset

    preset = get_study_preset(args.preset)
    data_dir, port, mlflow_port = _prepare(args)
    started = time.monotonic()
    _say(f"liftplace demo: preset {preset.name!r} ({preset.label}); data in {data_dir}")
    with ExitStack() as stack:  # stops what has started, in reverse order, on every way out
        stack.callback(_say, "demo stopped")
        try:
            _run_study(_start_services(stack, data_dir, port, mlflow_port), preset, args.name, started,
                       retrain=args.retrain)
            if not args.exit_when_done:
                _say("serving until Ctrl-C ...")
                while True:
                    time.sleep(3600)
            return 0
        except KeyboardInterrupt:
            _say("\nstopping the API, Ray and MLflow ...")
            return 130
        except (ServiceError, RuntimeError, TimeoutError) as exc:
            print(f"demo: {exc} (logs in {data_dir})", file=sys.stderr)
            return 1
