"""A job's checkpoint and outcome in its MLflow run (cluster mode, ``LIFTPLACE_STORAGE=mlflow``).

On a cluster whose hosts share no folder, a job retried on another node finds nothing of its earlier
attempt in its (new, empty) output folder. So in cluster mode the job's MLflow run (one per job, its id
recorded by the server and handed to every later attempt in `JobSpec.mlflow_run_id`) also holds:

- ``checkpoint/last.pt``: the latest checkpoint, replaced at every checkpoint (`CheckpointUploader`), and
  ``checkpoint/manifest.json``: its step, its sha256, its size and the MLflow history's journal at that
  checkpoint (the points not yet confirmed sent, the open window: what ``mlflow_pending.json`` holds
  beside a local checkpoint). The manifest is uploaded after the file it describes, so a reader that
  finds a file whose sha256 differs from the manifest's caught an upload half way and reads again;
- ``outcome.json``: the job's `JobOutcome`, uploaded when the job ends.

`fetch_checkpoint` brings the run's checkpoint into an output folder that has none (downloaded into a
temporary folder beside it, its sha256 checked against the manifest, then renamed into place: a broken
or half download is never used); `fetch_outcome` reads the run's outcome, so a job that already
succeeded is not run again. Both fail with `RunStoreUnavailable`, whose message names MLflow and the
tracking URI (without credentials), when MLflow cannot be read (transient errors are retried first).

Uploads never hold training up: `CheckpointUploader.submit` hard-links the checkpoint file into a
snapshot folder (``output_dir/.checkpoint-upload/step-<N>``; the training replaces ``last.pt`` by a rename,
so the snapshot keeps the bytes it had) and returns; a background thread uploads the newest snapshot,
retrying transient errors with backoff (`worker.retry.mlflow_retry`) until it is sent, a newer checkpoint
supersedes it, or the job closes the uploader. Measured with the ``tiny`` preset and a local artifact
store (SQLite tracking, files under a folder; a loaded 2-core machine): 0.15 to 0.3 ms on the training
thread per checkpoint (the hard link); on the background thread about 0.06 s per upload of a teacher's
3.1 MB checkpoint and 0.03 s of a student's 0.3 MB (pruned at 0.9). An HTTP tracking server adds the
transfer: the training thread's share stays the hard link.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.retry import RETRY_FOR_S, mlflow_retry, safe_uri
from worker.spec import OUTCOME_FILE
from worker.teacher_store import file_sha256

__all__ = [
    "CHECKPOINT_ARTIFACT_DIR",
    "MANIFEST_NAME",
    "OUTCOME_ARTIFACT",
    "UPLOAD_DIR",
    "CheckpointUploader",
    "RunStoreUnavailable",
    "fetch_checkpoint",
    "fetch_outcome",
    "upload_outcome",
]

CHECKPOINT_ARTIFACT_DIR = "checkpoint"  # the run's checkpoint/last.pt and checkpoint/manifest.json
MANIFEST_NAME = "manifest.json"
OUTCOME_ARTIFACT = OUTCOME_FILE  # at the run's root
UPLOAD_DIR = ".checkpoint-upload"  # in output_dir: snapshots of checkpoints waiting for their upload
FETCH_READS = 3  # reads of manifest and file before a sha256 that still differs fails the job


class RunStoreUnavailable(RuntimeError):
    """The job's run in MLflow cannot be read (MLflow away, a checkpoint whose sha256 never matches); the
    message names MLflow and the tracking URI."""


@dataclass
class _Snapshot:
    step: int
    folder: Path  # holds the checkpoint file under its own name
    file: Path
    journal: dict[str, Any] | None


class CheckpointUploader:
    """Uploads a job's checkpoints to its run from a background thread, newest first (see the module docstring).

    `submit` at every checkpoint (returns at once), `close` at the job's end (waits a bounded time for the
    last upload). `errors` holds what could not be uploaded (reported on the job, never raised);
    `uploads` the (step, seconds) of each upload done.
    """

    def __init__(self, client: Any, run_id: str, output_dir: Path) -> None:
        self.client = client
        self.run_id = run_id
        self.root = Path(output_dir) / UPLOAD_DIR
        shutil.rmtree(self.root, ignore_errors=True)  # snapshots of an attempt that died
        self.errors: list[str] = []
        self.uploads: list[tuple[int, float]] = []
        self._cond = threading.Condition()
        self._next: _Snapshot | None = None  # the newest checkpoint, waiting for the thread
        self._current: _Snapshot | None = None  # the one the thread uploads (None once it is in the run)
        self._closing = False
        self._deadline = float("inf")  # set by close(): past it, retries stop
        self._thread = threading.Thread(target=self._loop, name=f"checkpoint-upload-{run_id[:8]}", daemon=True)
        self._thread.start()

    def submit(self, step: int, checkpoint: Path, journal: dict[str, Any] | None = None) -> None:
        """Queue the checkpoint file of `step` (and the history's journal at it); a snapshot not yet uploaded is
        superseded. A file that cannot be snapshotted is an error on the job, not a failure."""
        folder = self.root / f"step-{step}"
        try:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            file = folder / checkpoint.name
            try:
                os.link(checkpoint, file)  # the training's next checkpoint is a rename: these bytes stay
            except OSError:  # a file system without hard links
                shutil.copy2(checkpoint, file)
        except OSError as exc:
            self.errors.append(f"mlflow: could not snapshot the checkpoint of step {step} for upload: {exc}")
            return
        with self._cond:
            if self._next is not None:
                shutil.rmtree(self._next.folder, ignore_errors=True)
            self._next = _Snapshot(step, folder, file, journal)
            self._cond.notify_all()

    def close(self, timeout_s: float) -> None:
        """Wait at most `timeout_s` for the newest checkpoint to be uploaded, then stop the thread."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + timeout_s
            self._cond.notify_all()
        self._thread.join(timeout_s + 1.0)
        with self._cond:
            left = self._next or self._current
        if not self._thread.is_alive():
            shutil.rmtree(self.root, ignore_errors=True)
        if left is not None:
            self.errors.append(f"mlflow: the checkpoint of step {left.step} was not uploaded to the run in "
                               f"{timeout_s:.0f} s; an attempt on another node resumes from an earlier one")

    # --- the thread ----------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._next is None and not self._closing:
                    self._cond.wait()
                if self._next is None or time.monotonic() > self._deadline:
                    return
                snap, self._next, self._current = self._next, None, self._next
            try:
                t0 = time.monotonic()
                mlflow_retry(self._upload, snap, retry_for_s=float("inf"), retry_give_up=self._give_up,
                             retry_sleep=self._wait)
                self.uploads.append((snap.step, time.monotonic() - t0))
            except Exception as exc:
                if not self._give_up() or time.monotonic() > self._deadline:
                    self.errors.append(f"mlflow: could not upload the checkpoint of step {snap.step}: "
                                       f"{type(exc).__name__}: {exc}")
            else:
                with self._cond:
                    self._current = None
            shutil.rmtree(snap.folder, ignore_errors=True)

    def _give_up(self) -> bool:
        """A newer checkpoint waits (it goes instead), or the close's deadline passed."""
        with self._cond:
            return self._next is not None or time.monotonic() > self._deadline

    def _wait(self, seconds: float) -> None:
        """The backoff between two tries; a newer checkpoint or the close ends it early."""
        with self._cond:
            self._cond.wait(max(0.0, min(seconds, self._deadline - time.monotonic())))

    def _upload(self, snap: _Snapshot) -> None:
        """The file, then the manifest that names its sha256 (a reader never trusts a file without it)."""
        manifest = {"step": snap.step, "sha256": file_sha256(snap.file), "bytes": snap.file.stat().st_size,
                    "file": snap.file.name, "journal": snap.journal}
        self.client.log_artifact(self.run_id, str(snap.file), CHECKPOINT_ARTIFACT_DIR)
        (snap.folder / MANIFEST_NAME).write_text(json.dumps(manifest))
        self.client.log_artifact(self.run_id, str(snap.folder / MANIFEST_NAME), CHECKPOINT_ARTIFACT_DIR)


def _where(run_id: str, tracking_uri: str | None) -> str:
    return f"MLflow run {run_id} at {safe_uri(tracking_uri)}"


def _unavailable(what: str, run_id: str, tracking_uri: str | None, exc: BaseException) -> RunStoreUnavailable:
    text = f"{type(exc).__name__}: {exc}".replace(tracking_uri or "\0", safe_uri(tracking_uri))
    return RunStoreUnavailable(f"cannot read {what} of {_where(run_id, tracking_uri)}: {text}")


def fetch_checkpoint(client: Any, run_id: str, dest: Path, *, tracking_uri: str | None,
                     retry_for_s: float = RETRY_FOR_S,
                     newer_than: int | None = None) -> tuple[int, dict[str, Any] | None] | None:
    """Download the run's checkpoint to `dest` (e.g. output_dir/checkpoint/last.pt); (its step, the history's
    journal at it), or None when the run holds no checkpoint, or none of a step after `newer_than` (the step
    of the checkpoint `dest` holds already: then nothing is downloaded).

    The file is downloaded into a temporary folder beside `dest`, its sha256 compared with the manifest's and
    only then renamed to `dest`; a mismatch reads both again (an upload was half way), up to FETCH_READS
    times. RunStoreUnavailable (naming MLflow and the URI) when MLflow cannot be read or the sha256 never
    matches; `dest` is then left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    got = None
    try:
        for _ in range(FETCH_READS):
            names = {Path(a.path).name for a in mlflow_retry(client.list_artifacts, run_id, CHECKPOINT_ARTIFACT_DIR,
                                                             retry_for_s=retry_for_s)}
            if MANIFEST_NAME not in names:
                return None
            with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as tmp:
                manifest = json.loads(Path(mlflow_retry(
                    client.download_artifacts, run_id, f"{CHECKPOINT_ARTIFACT_DIR}/{MANIFEST_NAME}", tmp,
                    retry_for_s=retry_for_s)).read_text())
                if newer_than is not None and int(manifest["step"]) <= newer_than:
                    return None
                file = Path(mlflow_retry(client.download_artifacts, run_id,
                                         f"{CHECKPOINT_ARTIFACT_DIR}/{manifest.get('file', dest.name)}", tmp,
                                         retry_for_s=retry_for_s))
                got = file_sha256(file)
                if got == manifest["sha256"]:
                    os.replace(file, dest)
                    return int(manifest["step"]), manifest.get("journal")
    except Exception as exc:
        raise _unavailable("the checkpoint", run_id, tracking_uri, exc) from exc
    raise RunStoreUnavailable(f"the checkpoint of {_where(run_id, tracking_uri)} has sha256 {got}, not its "
                              f"manifest's, in {FETCH_READS} reads (damaged in the artifact store?)")


def upload_outcome(client: Any, run_id: str, outcome_file: Path, *, retry_for_s: float = RETRY_FOR_S) -> None:
    """Upload the job's outcome.json to the root of its run (replacing an earlier attempt's); raises on failure."""
    mlflow_retry(client.log_artifact, run_id, str(outcome_file), None, retry_for_s=retry_for_s)


def fetch_outcome(client: Any, run_id: str, job_id: int, *, tracking_uri: str | None,
                  retry_for_s: float = RETRY_FOR_S) -> dict[str, Any] | None:
    """The outcome (JobOutcome's fields) the run `run_id` of job `job_id` holds, or None: no outcome yet, a
    run that no longer exists or belongs to another job. RunStoreUnavailable (naming MLflow and the URI)
    when MLflow cannot be read."""
    try:
        try:
            run = mlflow_retry(client.get_run, run_id, retry_for_s=retry_for_s)
        except Exception as exc:
            if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        if run.info.lifecycle_stage == "deleted" or run.data.tags.get("job_id") != str(job_id):
            return None
        names = {a.path for a in mlflow_retry(client.list_artifacts, run_id, retry_for_s=retry_for_s)}
        if OUTCOME_ARTIFACT not in names:
            return None
        with tempfile.TemporaryDirectory(prefix="liftplace-outcome-") as tmp:
            path = mlflow_retry(client.download_artifacts, run_id, OUTCOME_ARTIFACT, tmp, retry_for_s=retry_for_s)
            data = json.loads(Path(path).read_text())
    except Exception as exc:
        raise _unavailable("the outcome", run_id, tracking_uri, exc) from exc
    return data if isinstance(data, dict) else None
