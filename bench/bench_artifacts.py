"""Benchmark: what moving a teacher and a job's checkpoints through MLflow's proxied artifact store costs
(cluster mode, ``LIFTPLACE_STORAGE=mlflow``: worker/teacher_store.py and worker/run_store.py).

Starts a real ``mlflow server --serve-artifacts`` (SQLite backend and an artifacts destination in a temporary
folder, 127.0.0.1, a free port): the proxied artifact store, through which a cluster whose hosts share no
folder moves files. Then, with the library's own calls and a client set up as the worker's
(`quiet_mlflow_http_retries`), it measures for a preset's teacher (default the paper-sized ``ddpm-celeba64``,
78.7M parameters, 3x64x64; built with `build_unet`, saved with `save_unet`):

1. registering it as the dispatcher registers a local teacher (`server.tracking.Tracking.register_teacher`:
   the folder's digest, a run that holds its files, a model version); the digest alone is shown beside it;
2. a node's first `resolve_teacher` (an empty cache: download, digest check, atomic rename), then a second one
   (the cache hit);
3. one checkpoint of (a) a distillation job, whose student is the teacher pruned at 0.9 (magnitude importance:
   the student's widths, hence the file's size, do not depend on the importance), and (b) a teacher job
   (weights + EMA + Adam: about 4x the weights). Both are written by the library's training loop itself
   (`distill` / `train_teacher`, one step of batch 1 on the CPU, random images), i.e. the dict a job
   checkpoints. Each goes through `CheckpointUploader` as the worker does: the time the training thread is
   held in `submit` (a hard link), and from `submit` until the upload is confirmed (the file's sha256, the
   file, its manifest); then `fetch_checkpoint` into a fresh folder with a fresh client, as a retry on
   another node does (download, sha256 checked against the manifest, rename).

Prints a Markdown table (what, size MB with MB = 10^6 bytes, seconds, MB/s). A benchmark: it prints figures and
never passes or fails on time; on a shared machine the figures follow its load, which the setup lines give
(the server is this process's child and runs at its niceness). The server is stopped (its whole process
group) at the end and the temporary folder removed unless ``--keep``.

    nice -n 19 .venv/bin/python bench/bench_artifacts.py [--preset ddpm-celeba64] [--markdown results.md]
        [--keep] [--dir PARENT] [--store server|sqlite]

``--store sqlite`` skips the server (a local SQLite store with an artifact folder, as the unit tests use):
for a quick check of the script, not a measurement of the proxied store.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from server.demo import MlflowServer  # noqa: E402

MLFLOW_START_TIMEOUT_S = 180.0  # a cold `mlflow server` takes ~17 s on a quiet machine; more on a busy one
UPLOAD_TIMEOUT_S = 1800.0  # at most this long for one checkpoint's upload (then the figure reads "not uploaded")
EXPERIMENT = "bench-artifacts"
STUDENT_RATIO = 0.9
MB = 1e6


# --- figures --------------------------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    bytes: int | None  # None: the row moves no bytes of its own (a hard link, a cache hit)
    seconds: float
    note: str = ""

    @property
    def mb(self) -> float | None:
        return None if self.bytes is None else self.bytes / MB

    @property
    def mb_per_s(self) -> float | None:
        return None if self.bytes is None or self.seconds <= 0 else self.bytes / MB / self.seconds


def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def markdown_table(rows: list[Row]) -> str:
    lines = ["| what | size MB | seconds | MB/s |", "|---|---:|---:|---:|"]
    for r in rows:
        seconds = f"{r.seconds:.4f}" if r.seconds < 0.1 else f"{r.seconds:.2f}"
        lines.append(f"| {r.what} | {_fmt(r.mb, 1)} | {seconds} | {_fmt(r.mb_per_s, 1)} |")
    return "\n".join(lines)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --- the teacher and the checkpoints --------------------------------------------------------------------


def preset_shape(preset: str) -> tuple[int, int]:
    """(in_channels, sample_size) the preset is used with: 3x64 for the CelebA-sized teacher, else the digits'."""
    from liftplace import defaults

    return (3, 64) if preset == "ddpm-celeba64" else (1, defaults.DIGITS_RESOLUTION)


def build_checkpoints(preset: str, root: Path) -> tuple[Path, dict[str, Path], dict[str, int]]:
    """The teacher's folder (`save_unet`) and the checkpoint file of a distillation job (the teacher pruned at
    STUDENT_RATIO) and of a teacher job, each in its own job folder (`<job>/checkpoint/last.pt`, as a worker
    writes it), by one step of the library's training loop; also the parameter counts."""
    import torch

    from liftplace.models import build_unet, count_parameters, save_unet
    from liftplace.pruning import prune
    from liftplace.training import distill, train_teacher

    channels, size = preset_shape(preset)
    data = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    teacher = build_unet(preset, sample_size=size, in_channels=channels, seed=0)
    folder = save_unet(teacher, root / "teacher")
    params = {"teacher": count_parameters(teacher)}
    t0 = time.perf_counter()
    student = prune(teacher, STUDENT_RATIO, "magnitude").model
    params["student"] = count_parameters(student)
    distill(teacher, STUDENT_RATIO, steps=1, batch_size=1, checkpoint_every=0, data=data, student=student,
            device="cpu", checkpoint_dir=root / "job-distill" / "checkpoint")
    del student
    trained = build_unet(preset, sample_size=size, in_channels=channels, seed=0)
    train_teacher(trained, data, steps=1, batch_size=1, checkpoint_every=0, device="cpu",
                  checkpoint_dir=root / "job-teacher" / "checkpoint")
    print(f"checkpoints written in {time.perf_counter() - t0:.1f} s (pruning + one step each, CPU; not measured "
          "below)", flush=True)
    return folder, {job: root / f"job-{job}" / "checkpoint" / "last.pt" for job in ("distill", "teacher")}, params


# --- the measurements -----------------------------------------------------------------------------------


def measure_teacher(tracking: Any, name: str, folder: Path, uri: str, cache_root: Path) -> list[Row]:
    """Register the teacher as the dispatcher does, then resolve it twice on an empty node cache."""
    from worker.teacher_store import folder_digest, model_uri, resolve_teacher

    size = _folder_bytes(folder)
    digest, digest_s = _timed(lambda: folder_digest(folder))
    (version, registered_digest), register_s = _timed(lambda: tracking.register_teacher(name, folder, "local"))
    assert registered_digest == digest, (registered_digest, digest)
    ref = model_uri(name, version)
    first, first_s = _timed(lambda: resolve_teacher(ref, digest, tracking_uri=uri, cache_root=cache_root))
    assert _folder_bytes(first) == size, f"the resolved folder {first} does not hold the teacher's files"
    second, second_s = _timed(lambda: resolve_teacher(ref, digest, tracking_uri=uri, cache_root=cache_root))
    assert second == first
    return [
        Row("teacher folder: sha256 digest (`folder_digest`, local, part of the registration)", size, digest_s),
        Row("register the teacher (digest + upload to a run + model version)", size, register_s),
        Row("first `resolve_teacher` on a node (download + digest + rename)", size, first_s),
        Row("second `resolve_teacher` (cache hit)", None, second_s),
    ]


class _CountingClient:
    """The worker's MlflowClient, counting the checkpoint file's `log_artifact` calls (one per try)."""

    def __init__(self, client: Any):
        self._client = client
        self.file_tries = 0

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        if not local_path.endswith(".json"):
            self.file_tries += 1
        self._client.log_artifact(run_id, local_path, artifact_path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def measure_checkpoint(label: str, checkpoint: Path, client: Any, experiment_id: str, uri: str,
                       fetch_root: Path) -> list[Row]:
    """Upload one checkpoint through `CheckpointUploader` (as the worker), then fetch it on a 'fresh node'."""
    from mlflow import MlflowClient

    from worker.run_store import CheckpointUploader, fetch_checkpoint
    from worker.teacher_store import file_sha256

    size = checkpoint.stat().st_size
    output_dir = checkpoint.parent.parent  # the job's folder: the snapshot hard link stays on its file system
    run_id = client.create_run(experiment_id, run_name=f"bench {label} checkpoint").info.run_id
    counting = _CountingClient(client)
    uploader = CheckpointUploader(counting, run_id, output_dir)
    try:
        t0 = time.perf_counter()
        uploader.submit(1, checkpoint, None)
        submit_s = time.perf_counter() - t0
        deadline = time.monotonic() + UPLOAD_TIMEOUT_S
        while not uploader.uploads and not uploader.errors and time.monotonic() < deadline:
            time.sleep(0.005)
        confirmed_s = time.perf_counter() - t0
    finally:
        uploader.close(60.0)
    if not uploader.uploads:
        raise RuntimeError(f"the {label} checkpoint was not uploaded: {uploader.errors or 'timed out'}")
    background_s = uploader.uploads[0][1]
    client.set_terminated(run_id)

    dest = fetch_root / label / "checkpoint" / checkpoint.name  # a fresh job folder on another node
    other_node = MlflowClient(tracking_uri=uri)
    got, fetch_s = _timed(lambda: fetch_checkpoint(other_node, run_id, dest, tracking_uri=uri))
    if got is None or got[0] != 1:
        raise RuntimeError(f"fetch_checkpoint found no checkpoint of step 1 in run {run_id}: {got}")
    if file_sha256(dest) != file_sha256(checkpoint):
        raise RuntimeError(f"the fetched {label} checkpoint differs from the one uploaded")
    tries = f" ({counting.file_tries} tries)" if counting.file_tries != 1 else ""
    return [
        Row(f"{label}: training thread held in `CheckpointUploader.submit` (hard link)", None, submit_s),
        Row(f"{label}: `submit` until the upload is confirmed (sha256 + file + manifest){tries}", size,
            confirmed_s, note=f"background thread {background_s:.2f} s"),
        Row(f"{label}: `fetch_checkpoint` into a fresh folder (download + sha256 + rename)", size, fetch_s),
    ]


# --- main -----------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from liftplace.presets import PRESET_NAMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ddpm-celeba64", choices=PRESET_NAMES,
                        help="the teacher's preset (default ddpm-celeba64, the paper's 78.7M; tiny for a quick run)")
    parser.add_argument("--markdown", type=Path, help="also write the table (and the setup) to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    parser.add_argument("--dir", type=Path, help="make the temporary folder in this one (default: the system's)")
    parser.add_argument("--store", choices=("server", "sqlite"), default="server",
                        help="server (default): a real `mlflow server --serve-artifacts`; sqlite: a local store, "
                             "no server (a quick check of the script only)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns its figures (`rows`, `setup`, `table`) for tests."""
    args = _parser().parse_args(argv)
    import mlflow
    import torch
    from mlflow import MlflowClient

    from server.tracking import Tracking
    from worker.retry import quiet_mlflow_http_retries

    quiet_mlflow_http_retries()  # as the worker and the server: mlflow_retry retries, MLflow's own do not
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a readable output
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="liftplace-bench-artifacts-", dir=args.dir))
    server: MlflowServer | None = None
    rows: list[Row] = []
    setup: list[str] = []
    try:
        folder, checkpoints, params = build_checkpoints(args.preset, root)
        mlflow_root = root / "mlflow"
        mlflow_root.mkdir()
        if args.store == "server":
            server = MlflowServer(mlflow_root)  # the demo's server: artifacts proxied, its own process group
            start_s = server.start(MLFLOW_START_TIMEOUT_S)
            uri = server.url
            setup.append(f"`mlflow server --serve-artifacts` (SQLite backend, artifacts destination a local folder) "
                         f"on 127.0.0.1, started in {start_s:.1f} s")
        else:
            uri = f"sqlite:///{(mlflow_root / 'mlflow.db').resolve()}"
            setup.append("a local SQLite store with an artifact folder (no server: not the proxied store)")
        print(setup[-1], flush=True)
        tracking = Tracking(uri, uri, experiment=EXPERIMENT)
        experiment_id = tracking.experiment_id()
        location = tracking.client.get_experiment(experiment_id).artifact_location
        if args.store == "server" and not location.startswith("mlflow-artifacts:"):
            raise RuntimeError(f"the experiment's artifacts go to {location}, not through the server's proxy")
        setup.append(f"the experiment's artifact location: a `{location.split(':')[0]}:` URI")
        channels, size = preset_shape(args.preset)
        setup.append(f"preset `{args.preset}` ({channels}x{size}x{size}): "
                     f"teacher {params['teacher']:,} parameters, student pruned at {STUDENT_RATIO} "
                     f"{params['student']:,} parameters")
        setup.append(f"mlflow {mlflow.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
                     f"{platform.machine()}, {os.cpu_count()} CPUs; MB = 10^6 bytes")

        load_before = os.getloadavg()[0]
        rows += measure_teacher(tracking, args.preset, folder, uri, root / "node-cache" / "models")
        print(markdown_table(rows), flush=True)
        client = MlflowClient(tracking_uri=uri)  # the worker's client (worker/tracking.py)
        for label, job in (("distillation job checkpoint", "distill"), ("teacher job checkpoint", "teacher")):
            rows += measure_checkpoint(label, checkpoints[job], client, experiment_id, uri, root / "other-node")
            print(f"{label} done", flush=True)
        setup.append(f"load average (1 min) {load_before:.1f} when the measurements began, {os.getloadavg()[0]:.1f} "
                     f"when they ended; this process at niceness {os.nice(0)} (the server inherits it)")
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    table = markdown_table(rows)
    notes = [f"- {r.what}: {r.note}" for r in rows if r.note]
    text = "\n".join([*(f"- {line}" for line in setup), "", table, "", *notes])
    print("---\n" + text, flush=True)
    if args.markdown is not None:
        given = list(argv if argv is not None else sys.argv[1:])
        shown = [a for i, a in enumerate(given)  # without the paths of this machine (--markdown, --dir)
                 if a not in ("--markdown", "--dir") and (i == 0 or given[i - 1] not in ("--markdown", "--dir"))
                 and not a.startswith(("--markdown=", "--dir="))]
        command = "python bench/bench_artifacts.py " + " ".join(shown)
        args.markdown.write_text(f"# MLflow artifact transfers (`{command.strip()}`)\n\n{text}\n")
    return {"rows": rows, "setup": setup, "table": table, "root": root,
            "server_url": server.url if server is not None else None}


if __name__ == "__main__":
    main()
    sys.exit(0)
