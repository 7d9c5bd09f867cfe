"""Benchmark: latency and throughput of the job API under load, with 10,000 jobs in the database.

For each backend (SQLite file, PostgreSQL database), the script:

1. starts the real server, `python -m server.cli serve` (uvicorn, one process), on a free
   127.0.0.1 port, with the dispatcher off (LIFTPLACE_DISPATCH=false: nothing runs, only the
   API and its database are measured) and RAY_ADDRESS set to an address that is never dialled;
2. registers a teacher (a local folder holding only a config and a parameter count) and fills
   the jobs table with `--jobs` jobs by a bulk insert (statuses, options and metrics like real
   ones: mostly ended, some queued and running);
3. drives it with `--clients` threads, each with its own keep-alive HTTP connection (standard
   library only: threading + http.client), `--requests` requests per operation in all:
   - floor: GET /api/status (no database, no validation: what one request costs the framework
     itself, measured in the same run, so the other rows can be read against it);
   - submit: POST /api/jobs (one distillation job each);
   - list: GET /api/jobs?limit=50 (the first page, newest first, with the total count);
   - list-status: GET /api/jobs?status=succeeded&limit=50;
   - list-deep: GET /api/jobs?limit=50&offset=<jobs - 100> (a page near the end);
   - mixed: submit and list in turn, as a lab's queue sees them (new work while people watch
     it); reported separately as "mixed submit" and "mixed list";
4. prints per operation p50 / p99 latency (ms, from sending the request to reading the whole
   answer), throughput (answers per second of wall time, all clients together) and the p50 as a
   multiple of the floor's.

PostgreSQL: a database `liftplace_bench` is created through `--pg-admin-url` (default the test
server on 127.0.0.1:5432) and dropped at the end. SQLite: a file in a temporary directory.

    .venv/bin/python bench/bench_load.py                      # 10,000 jobs, both backends
    .venv/bin/python bench/bench_load.py --quick              # 1,000 jobs, fewer requests
    .venv/bin/python bench/bench_load.py --backends sqlite --jobs 10000 --requests 2000 --clients 8

A benchmark prints figures; it never passes or fails on time. Measured figures are in
docs/reliability.md ("Load").
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCH_DATABASE = "liftplace_bench"
TEACHER = "bench-teacher"
# The status mix of a lab's queue after a while: most jobs ended, a few waiting or running.
OPERATIONS = ("floor", "submit", "list", "list-status", "list-deep", "mixed")
STATUS_MIX = (("succeeded", 80), ("failed", 5), ("diverged", 3), ("cancelled", 2), ("queued", 8), ("running", 2))


# --- the server -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(database_url: str, data_dir: Path) -> Iterator[int]:
    """`liftplace serve` on a free loopback port with the dispatcher off; yields the port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIFTPLACE_", "MLFLOW_"))}
    env.update(DATABASE_URL=database_url, LIFTPLACE_DISPATCH="false", RAY_ADDRESS="ray.invalid:1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    log = (data_dir / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--data-dir", str(data_dir), "--log-level", "warning"], env=env, cwd=data_dir,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, _ = request(port, "GET", "/api/status")
                if status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {data_dir / 'server.log'}")
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def request(port: int, method: str, path: str, body: Any = None,
            conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    """One request (on `conn` if given, else a new connection); (status, body)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"} if data is not None else {}
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        if own:
            conn.close()


# --- filling the database -------------------------------------------------------------------------------


def register_teacher(port: int, teachers_dir: Path) -> None:
    folder = teachers_dir / TEACHER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    (folder / "liftplace.json").write_text('{"parameters": 1000000}')
    status, body = request(port, "POST", "/api/teachers", {"source": "local", "name": TEACHER})
    if status != 201:
        raise RuntimeError(f"registering the teacher: {status} {body[:300]!r}")


def fill_jobs(database_url: str, n: int, seed_base: int = 1_000_000) -> float:
    """Insert `n` jobs in one bulk insert (statuses after STATUS_MIX); seconds it took."""
    from sqlalchemy import insert, select

    from liftplace import defaults
    from liftplace.methods import METHOD_NAMES
    from server.db import make_engine
    from server.models import Dataset, Job, Teacher

    engine = make_engine(database_url)
    statuses = [s for s, weight in STATUS_MIX for _ in range(weight)]
    # the options a job stores when it keeps every default
    options = {"batch_size": defaults.BATCH_SIZE, "lr": defaults.LEARNING_RATE, "group_size": defaults.GROUP_SIZE,
               "coarse": defaults.COARSE_DISTANCE, "curriculum": defaults.CURRICULUM, "reduction": defaults.REDUCTION,
               "fid_samples": defaults.FID_SAMPLES, "sample_steps": defaults.DDIM_STEPS,
               "checkpoint_every": defaults.CHECKPOINT_EVERY}
    start = time.perf_counter()
    with engine.begin() as conn:
        teacher_id = conn.scalar(select(Teacher.id).where(Teacher.name == TEACHER))
        dataset_id = conn.scalar(select(Dataset.id).where(Dataset.name == "digits"))
        now = dt.datetime.now(dt.UTC)
        rows = []
        for i in range(n):
            status = statuses[i % len(statuses)]
            ended = status not in ("queued", "running")
            rows.append(dict(
                kind="distill", status=status, teacher_id=teacher_id, dataset_id=dataset_id,
                method=METHOD_NAMES[i % len(METHOD_NAMES)], seed=seed_base + i, student_ratio=defaults.STUDENT_RATIO,
                steps=1000, options=options,
                attempts=1 if status != "queued" else 0, cancel_requested=False, log_offset=0,
                progress_step=1000 if ended else None, progress_total=1000 if status != "queued" else None,
                metrics={f"loss_{k}": 0.1 * j for j, k in enumerate(("total", "diff", "kd", "feat", "coarse", "fine"))}
                | {"beta1": 0.98, "beta0": 0.01, "w": 0.97} if status != "queued" else {},
                reason="" if status == "succeeded" else status, fid=12.5 + (i % 7) if status == "succeeded" else None,
                fid_metric="fid_digits" if status == "succeeded" else None, parameters=54321,
                created_at=now, dispatched_at=now if status != "queued" else None,
                finished_at=now if ended else None,
            ))
        conn.execute(insert(Job), rows)
    engine.dispose()
    return time.perf_counter() - start


# --- load ---------------------------------------------------------------------------------------------


Plan = Callable[[int], tuple[str, str, str, Any, int]]  # request k -> (label, method, path, body, expected status)


@dataclass
class Result:
    operation: str
    latencies: list[float]  # seconds, one per answer
    wall: float  # seconds for all of them
    errors: int
    clients: int

    @property
    def p50_ms(self) -> float | None:
        return statistics.median(self.latencies) * 1000 if self.latencies else None

    def row(self, floor_ms: float | None = None) -> list[str]:
        """The table row; `floor_ms`: the floor's p50 in the same run (for the "x floor" column)."""
        ms = sorted(x * 1000 for x in self.latencies)
        p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))] if ms else float("nan")
        p50 = self.p50_ms
        times = f"{p50 / floor_ms:.1f}" if p50 is not None and floor_ms else "-"
        return [self.operation, str(len(ms)), str(self.clients), f"{p50:.1f}" if p50 is not None else "-",
                f"{p99:.1f}", f"{len(ms) / self.wall:.0f}" if self.wall else "-", times, str(self.errors)]


def drive(port: int, total: int, clients: int, make: Plan) -> list[Result]:
    """`total` requests from `clients` threads (keep-alive connection each); request k is make(k).

    One Result per label of the requests.
    """
    latencies: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    lock = threading.Lock()
    counter = iter(range(total))
    barrier = threading.Barrier(clients + 1)

    def client() -> None:
        nonlocal errors
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.connect()
        mine: list[tuple[str, float]] = []
        bad: list[str] = []
        barrier.wait()
        while True:
            with lock:
                k = next(counter, None)
            if k is None:
                break
            label, method, path, body, expect = make(k)
            t0 = time.perf_counter()
            try:
                status, _ = request(port, method, path, body, conn)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                status = -1
            elapsed = time.perf_counter() - t0
            if status == expect:
                mine.append((label, elapsed))
            else:
                bad.append(label)
        conn.close()
        with lock:
            for label, elapsed in mine:
                latencies.setdefault(label, []).append(elapsed)
            for label in bad:
                errors[label] = errors.get(label, 0) + 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return [Result(label, latencies.get(label, []), wall, errors.get(label, 0), clients)
            for label in sorted(set(latencies) | set(errors))]


def bench_backend(name: str, database_url: str, data_dir: Path, args: argparse.Namespace) -> list[Result]:
    with running_server(database_url, data_dir) as port:
        register_teacher(port, data_dir / "teachers")
        fill_seconds = fill_jobs(database_url, args.jobs)
        status, body = request(port, "GET", "/api/jobs?limit=1")
        total = json.loads(body)["total"]
        print(f"{name}: {total:,} jobs in the database (bulk insert of {args.jobs:,}: {fill_seconds:.1f} s)",
              flush=True)
        # warm-up: connections, caches, the first-call imports
        drive(port, min(50, args.requests), min(2, args.clients), lambda k: ("warm-up", "GET", "/api/jobs", None, 200))
        deep = max(0, args.jobs - 100)

        def submit(k: int, label: str = "submit") -> tuple[str, str, str, Any, int]:
            return label, "POST", "/api/jobs", {"teacher": TEACHER, "seed": k, "steps": 1000}, 201

        def listing(label: str, query: str) -> tuple[str, str, str, Any, int]:
            return label, "GET", f"/api/jobs?{query}", None, 200

        plans: dict[str, Plan] = {
            "floor": lambda k: ("floor", "GET", "/api/status", None, 200),
            "submit": submit,
            "list": lambda k: listing("list", "limit=50"),
            "list-status": lambda k: listing("list-status", "status=succeeded&limit=50"),
            "list-deep": lambda k: listing("list-deep", f"limit=50&offset={deep}"),
            "mixed": lambda k: submit(k, "mixed submit") if k % 2 else listing("mixed list", "limit=50"),
        }
        results = []
        for operation, make in plans.items():
            if args.only and operation not in args.only:
                continue
            results += drive(port, args.requests, args.clients, make)
            print(f"  {operation}: done", flush=True)
        return results


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database BENCH_DATABASE (dropped first if a previous run left it); its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{BENCH_DATABASE}"'))
    try:
        yield make_url(admin_url).set(database=BENCH_DATABASE).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)'))
        admin.dispose()


def machine(admin_url: str | None) -> str:
    import fastapi
    import sqlalchemy
    import uvicorn

    line = (f"{platform.machine()} {os.cpu_count()} CPU(s), {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, uvicorn {uvicorn.__version__}, fastapi {fastapi.__version__}, "
            f"SQLAlchemy {sqlalchemy.__version__}, SQLite {__import__('sqlite3').sqlite_version}")
    if admin_url:
        from sqlalchemy import create_engine, text

        engine = create_engine(admin_url)
        try:
            with engine.connect() as conn:
                line += f", PostgreSQL {conn.execute(text('SHOW server_version')).scalar()}"
        except Exception as exc:  # the figures of the other backend are still worth printing
            line += f", PostgreSQL unreachable ({type(exc).__name__})"
        finally:
            engine.dispose()
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs put in the database before measuring")
    parser.add_argument("--requests", type=int, default=2_000, help="requests per operation (all clients together)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--only", nargs="*", choices=OPERATIONS,
                        help="measure only these operations")
    parser.add_argument("--pg-admin-url", default=os.environ.get(
        "LIFTPLACE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
        help="a PostgreSQL URL allowed to create and drop the database " + BENCH_DATABASE)
    parser.add_argument("--quick", action="store_true", help="1,000 jobs, 300 requests, 4 clients (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.requests, args.clients = 1_000, 300, 4
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "postgresql"}
    if unknown:
        parser.error(f"--backends: unknown {', '.join(sorted(unknown))} (sqlite, postgresql)")

    print(f"machine: {machine(args.pg_admin_url if 'postgresql' in backends else None)}")
    print(f"load: {args.jobs:,} jobs in the database, {args.requests:,} requests per operation, "
          f"{args.clients} concurrent clients (keep-alive), one uvicorn process, dispatcher off\n", flush=True)
    table: list[list[str]] = []
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix=f"liftplace-bench-{backend}-") as tmp:
            data_dir = Path(tmp)
            if backend == "sqlite":
                results = bench_backend(backend, f"sqlite:///{data_dir / 'liftplace.db'}", data_dir, args)
            else:
                with postgres_database(args.pg_admin_url) as url:
                    results = bench_backend(backend, url, data_dir, args)
        floor_ms = next((r.p50_ms for r in results if r.operation == "floor"), None)
        table += [[backend, *r.row(floor_ms)] for r in results]

    header = ["backend", "operation", "requests", "clients", "p50 ms", "p99 ms", "req/s", "p50 x floor", "errors"]
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
