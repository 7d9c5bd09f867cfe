"""Benchmark: what MLflow tracking costs a long job, how a job rides out an MLflow outage, and how many
metric rows a study writes (worker/tracking.py: bounded history, sent from a background queue).

Starts a real `mlflow server` (SQLite store in a temporary folder, 127.0.0.1, a free port) and runs one
`tiny`-preset teacher job on the digits (CPU, `run_job`, as a worker does) three times:

1. tracking off (a tracker that does nothing; metrics.jsonl, checkpoints and the rest as usual);
2. tracking to the server (1 and 2 alternate `--repeat` times);
3. tracking to the server, which is stopped at a third of the run for `--outage` seconds and started
   again (a cold start takes another ~17 s, so it is down longer than that).

and prints, per job: wall time, training time (first to last step), process CPU time, the time the
training thread spent in the tracker (log_step and checkpoint calls), the metric rows the run holds
in MLflow (per metric and in all), and for 3 the history's holes and what the job reported unsent.
Then it extrapolates the rows of the `celeba64` study preset (teacher jobs and distillation jobs,
their step counts and the metrics each method logs a step, measured on one step per method):
before (every step of every metric) and after (bounded history).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_tracking.py [--steps 20000] [--batch 16] [--outage 30]
        [--repeat 1] [--job-cpu 1 --server-cpu 0] [--json results.json] [--only extrapolate]

`--job-cpu`/`--server-cpu` pin the job and the server to different cores (on a shared machine).
A benchmark prints figures; it never passes or fails on time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from liftplace import defaults  # noqa: E402
from server.demo import MlflowServer  # noqa: E402
from worker.history import has_spread, log_every_for  # noqa: E402

MLFLOW_START_TIMEOUT_S = 180.0
EXPERIMENT = "bench-tracking"


# --- the MLflow server ----------------------------------------------------------------------------------


class Server(MlflowServer):
    """The demo's `mlflow server` on 127.0.0.1 (a free port) with a SQLite store in `root`, pinned to `cpus`
    (``taskset -c``) when given."""

    def __init__(self, root: Path, cpus: str | None):
        super().__init__(root, prefix=["taskset", "-c", cpus] if cpus else [])
        self.db = root / "mlflow.db"

    def rows(self, run_id: str) -> dict[str, int]:
        """Metric rows of `run_id` in the store, per metric."""
        with sqlite3.connect(self.db) as db:
            return dict(db.execute("SELECT key, COUNT(*) FROM metrics WHERE run_uuid = ? GROUP BY key", (run_id,)))

    def steps(self, run_id: str, key: str) -> list[int]:
        with sqlite3.connect(self.db) as db:
            return [s for (s,) in db.execute("SELECT step FROM metrics WHERE run_uuid = ? AND key = ? ORDER BY step",
                                             (run_id, key))]


# --- the job --------------------------------------------------------------------------------------------


class NullTracker:
    """Tracking off: the JobTracker interface, doing nothing."""

    run_id, resumed, log_every, errors = None, False, 1, []

    @classmethod
    def start(cls, spec) -> NullTracker:
        return cls()

    def begin(self, *a) -> None: ...
    def log_step(self, *a) -> None: ...
    def checkpoint(self, *a) -> None: ...
    def end_training(self) -> None: ...
    def log_metrics(self, *a, **k) -> None: ...
    def log_artifact(self, *a) -> None: ...
    def log_artifacts(self, *a) -> None: ...
    def set_tags(self, *a) -> None: ...
    def terminate(self, *a) -> None: ...

    def drain(self, *a) -> int:
        return 0

    def history_note(self) -> None:
        return None


class Timing:
    """A reporter: the wall clock at the first and last step, and an optional action at a step."""

    def __init__(self, at_step: int | None = None, action: Callable[[], None] | None = None):
        self.first: float | None = None
        self.last: float | None = None
        self.at_step, self.action = at_step, action
        self.lines: list[str] = []

    def progress(self, job_id, step, total, metrics):
        now = time.monotonic()
        if step >= 1 and self.first is None:
            self.first = now
        if step >= 1:
            self.last = now
        if self.action is not None and self.at_step is not None and step >= self.at_step:
            action, self.action = self.action, None
            threading.Thread(target=action, daemon=True).start()

    def should_cancel(self, job_id):
        return False

    def log(self, job_id, line):
        self.lines.append(line)


def _timed_tracker(totals: dict[str, float]):
    """JobTracker with its training-thread calls (log_step, checkpoint) timed into `totals`."""
    from worker.tracking import JobTracker

    class Timed(JobTracker):
        def log_step(self, step, metrics):
            t0 = time.perf_counter()
            super().log_step(step, metrics)
            totals["log_step_s"] += time.perf_counter() - t0

        def checkpoint(self, step):
            t0 = time.perf_counter()
            super().checkpoint(step)
            totals["checkpoint_s"] += time.perf_counter() - t0

    return Timed


def run_one(label: str, root: Path, args: argparse.Namespace, *, server: Server | None,
            reporter: Timing) -> dict[str, Any]:
    """One job; `server` None: tracking off."""
    import worker.run as run_mod
    import worker.tracking as tracking
    from worker.spec import JobSpec

    totals = {"log_step_s": 0.0, "checkpoint_s": 0.0}
    original = tracking.JobTracker
    tracking.JobTracker = NullTracker if server is None else _timed_tracker(totals)
    spec = JobSpec(job_id=1, kind="teacher", output_dir=str(root / label), preset="tiny", teacher_name="tiny",
                   steps=args.steps, batch_size=args.batch, checkpoint_every=args.checkpoint_every,
                   fid_samples=0, sample_steps=5, mlflow_tracking_uri=server.url if server else None,
                   mlflow_experiment=EXPERIMENT)
    cpu0, t0 = time.process_time(), time.monotonic()
    try:
        outcome = run_mod.run_job(spec, reporter=reporter, device="cpu")
    finally:
        tracking.JobTracker = original
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    result: dict[str, Any] = {
        "label": label, "status": outcome.status, "reason": outcome.reason, "wall_s": wall, "cpu_s": cpu,
        "train_s": (reporter.last or 0) - (reporter.first or 0), **totals,
        "unsent_values": outcome.metrics.get("mlflow_unsent_values", 0.0),
        "warnings": [line for line in reporter.lines if "warning" in line],
    }
    if server is not None and outcome.mlflow_run_id:
        rows = server.rows(outcome.mlflow_run_id)
        every = log_every_for(args.steps)
        expected = list(range(every, args.steps + 1, every)) + ([args.steps] if args.steps % every else [])
        result.update(run_id=outcome.mlflow_run_id, rows=rows, rows_total=sum(rows.values()), log_every=every,
                      missing_points=sorted(set(expected) - set(server.steps(outcome.mlflow_run_id, "loss_total"))))
    return result


def outage_action(server: Server, seconds: float, log: dict[str, Any]) -> Callable[[], None]:
    def action() -> None:
        log["stopped_at"] = time.time()
        server.stop()
        time.sleep(seconds)
        log["start_s"] = server.start(MLFLOW_START_TIMEOUT_S)
        log["back_at"] = time.time()

    return action


# --- rows of a study ------------------------------------------------------------------------------------


def metrics_per_step() -> dict[str, list[str]]:
    """The metric names one training step reports: a teacher's, and each method's (one step, tiny, CPU)."""
    import torch

    from liftplace.config import DistillConfig, TeacherConfig
    from liftplace.data import load_digits
    from liftplace.methods import METHODS
    from liftplace.models import build_unet
    from liftplace.training import TrainingCallback, distill, train_teacher

    class Keys(TrainingCallback):
        keys: list[str] = []

        def on_step(self, step, total, metrics):
            self.keys = list(metrics)

    torch.manual_seed(0)
    data = load_digits(8)
    out = {}
    cb = Keys()
    train_teacher(build_unet("tiny", seed=0), data, TeacherConfig(steps=1, batch_size=8), device="cpu", callbacks=[cb])
    out["teacher"] = cb.keys
    for method in METHODS:
        cb = Keys()
        config = DistillConfig(steps=1, batch_size=8, method=method, importance="magnitude", student_ratio=0.5)
        distill(build_unet("tiny", seed=0), data=data, config=config, device="cpu", callbacks=[cb])
        out[method] = cb.keys
    return out


def rows_of(steps: int, keys: list[str], *, bounded: bool) -> int:
    """Metric rows of one run: every step of every metric (before), or the bounded history (after)."""
    if not bounded:
        return steps * len(keys)
    every = log_every_for(steps)
    points = steps // every + (steps % every != 0)
    per_point = len(keys) + (2 * sum(has_spread(k) for k in keys) if every > 1 else 0)
    return points * per_point


def extrapolate(keys: dict[str, list[str]]) -> dict[str, Any]:
    """Rows the `celeba64` study preset writes before and after (training curves; summaries are a few rows)."""
    from liftplace.studies import STUDY_PRESETS

    preset = STUDY_PRESETS["celeba64"]
    runs: list[tuple[str, int, list[str]]] = []
    for teacher in preset.teachers:
        if teacher.source != "local":  # the pruned-and-retrained teachers are trained by teacher jobs
            runs.append((f"teacher {teacher.name}", int(teacher.train["steps"]), keys["teacher"]))
    for variant in preset.variants:
        for teacher in preset.variant_teachers(variant):
            for method in variant.methods:
                for _seed in preset.seeds:
                    steps = int({**preset.options, **variant.options}["steps"])
                    runs.append((f"{teacher} {method}", steps, keys[method]))
    before = sum(rows_of(s, k, bounded=False) for _, s, k in runs)
    after = sum(rows_of(s, k, bounded=True) for _, s, k in runs)
    per_step = sorted({len(k) for _, _, k in runs})
    return {"runs": len(runs), "distill_runs": sum(1 for n, _, _ in runs if not n.startswith("teacher")),
            "steps": sorted({s for _, s, _ in runs}), "metrics_per_step": per_step, "rows_before": before,
            "rows_after": after, "max_points": defaults.MLFLOW_MAX_POINTS}


# --- main -----------------------------------------------------------------------------------------------


def _report(results: list[dict[str, Any]], outage: dict[str, Any], study: dict[str, Any] | None) -> None:
    offs = [r for r in results if r["label"].startswith("off")]
    base = {k: statistics.mean(r[k] for r in offs) for k in ("wall_s", "train_s", "cpu_s")} if offs else None
    for r in results:
        line = (f"{r['label']:>7}: {r['status']}, wall {r['wall_s']:.1f} s, training {r['train_s']:.1f} s, "
                f"CPU {r['cpu_s']:.1f} s")
        if base is not None and r not in offs:
            line += (f" | wall x{r['wall_s'] / base['wall_s']:.3f}, training x{r['train_s'] / base['train_s']:.3f}, "
                     f"CPU x{r['cpu_s'] / base['cpu_s']:.3f} of tracking off (mean of {len(offs)})")
        print(line)
        if "rows" in r:
            steps_in_tracker = r["log_step_s"] + r["checkpoint_s"]
            print(f"         training thread in the tracker {steps_in_tracker:.2f} s "
                  f"({100 * steps_in_tracker / max(r['train_s'], 1e-9):.2f}% of training); one point per "
                  f"{r['log_every']} steps; rows {r['rows_total']} in all, per metric at most "
                  f"{max(r['rows'].values())} ({', '.join(f'{k} {v}' for k, v in sorted(r['rows'].items()))})")
            print(f"         missing points of loss_total: {len(r['missing_points'])}; unsent values reported: "
                  f"{r['unsent_values']:.0f}; warnings: {r['warnings'] or 'none'}")
    if outage:
        print(f" outage: server stopped for {outage['back_at'] - outage['stopped_at']:.1f} s "
              f"(asked {outage['asked_s']:.0f} s + a {outage['start_s']:.1f} s start)")
    if study:
        print(f"celeba64 study: {study['runs']} runs ({study['distill_runs']} distillations, steps {study['steps']}, "
              f"{study['metrics_per_step']} metrics a step): {study['rows_before']:,} metric rows before, "
              f"{study['rows_after']:,} after (x{study['rows_before'] / study['rows_after']:.0f} fewer)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.CHECKPOINT_EVERY)
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the server is stopped in job 3")
    parser.add_argument("--repeat", type=int, default=1, help="pairs of jobs 1 (off) and 2 (on), alternating")
    parser.add_argument("--job-cpu", help="pin this process (the job) to these cores, e.g. 1")
    parser.add_argument("--server-cpu", help="pin the MLflow server to these cores, e.g. 0")
    parser.add_argument("--only", choices=("jobs", "extrapolate"), help="skip the other half")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.job_cpu:
        os.sched_setaffinity(0, {int(c) for c in args.job_cpu.split(",")})
    import torch

    torch.set_num_threads(1)
    print(f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, job cores "
          f"{sorted(os.sched_getaffinity(0))}, server cores {args.server_cpu or 'any'}; {args.steps} steps, "
          f"batch {args.batch}", flush=True)
    results: list[dict[str, Any]] = []
    outage: dict[str, Any] = {}
    study = None
    if args.only != "extrapolate":
        with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
            root = Path(tmp)
            server = Server(root, args.server_cpu)
            print(f"mlflow server started in {server.start(MLFLOW_START_TIMEOUT_S):.1f} s at {server.url}", flush=True)
            try:
                for i in range(args.repeat):  # off and on alternate: the machine's load drifts between jobs
                    results.append(run_one(f"off{i + 1}", root, args, server=None, reporter=Timing()))
                    results.append(run_one(f"on{i + 1}", root, args, server=server, reporter=Timing()))
                    _report(results[-2:], {}, None)
                outage = {"asked_s": args.outage}
                reporter = Timing(args.steps // 3, outage_action(server, args.outage, outage))
                results.append(run_one("outage", root, args, server=server, reporter=reporter))
            finally:
                server.stop()
    if args.only != "jobs":
        study = extrapolate(metrics_per_step())
    print("---", flush=True)
    _report(results, outage if "back_at" in outage else {}, study)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "outage": outage, "study": study}, indent=2,
                                        default=lambda o: o if not isinstance(o, float) or math.isfinite(o) else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
