"""The throw-away PostgreSQL server the data-layer tests fall back on when none answers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.server.pg_server import port_answers, start_postgres

ROOT = Path(__file__).resolve().parents[2]


def test_a_throw_away_server_starts_answers_and_leaves_nothing_behind():
    server = start_postgres()
    url = make_url(server.url)
    try:
        engine = create_engine(server.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("CREATE DATABASE scratch"))
            assert conn.execute(text("SELECT current_setting('server_version_num')::int")).scalar() >= 130000
        engine.dispose()
    finally:
        server.stop()
    assert server.process.returncode == 0, "not a clean (fast) shutdown"
    assert not server.folder.exists()
    assert not port_answers(url.host, url.port)
    server.stop()  # idempotent


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_the_server_stops_when_the_test_process_is_killed():
    """A killed test run (no atexit) must not leave a PostgreSQL server running."""
    code = ("from tests.server.pg_server import start_postgres; s = start_postgres(); "
            "print(s.process.pid, s.folder, flush=True); import time; time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])})
    try:
        pid, folder = child.stdout.readline().split()
        pid = int(pid)
        assert _alive(pid)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    shutil.rmtree(folder, ignore_errors=True)  # what the killed process could not clean up
    assert not _alive(pid), f"postgres {pid} outlived the process that started it"
