"""Train the stability presets' teachers and write them as shipped artifacts (liftplace/shipped/).

    python scripts/ship_teachers.py            # one CPU thread; the provenance records how long it took

Each teacher a preset marks as shipped (`TeacherPlan.shipped`: the `stability` teacher and its two
pruned-and-retrained copies) is trained exactly as the service trains it: its plan's request body is
validated by the API's schema (which fills in the service's defaults), turned into a job spec by the
dispatcher's own `build_spec`, and run by the worker's `run_job` (MLflow into a throw-away store), bases
first, each pruned copy from the base trained here. The EMA model each job saves is copied to
`liftplace/shipped/NAME/` with its provenance in `liftplace.json` (this command, the commit, the plan, the
job's options, the FID and its settings, the library versions and the CPU), and `manifest.json` gets the
sha256 of every file. The tree must be clean (the commit must be the code that ran), unless
`--allow-dirty`, which the provenance then records.

Needs the `platform` extra (the server's schema and dispatcher, the worker, MLflow).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCRIPT = "scripts/ship_teachers.py"
DEFAULT_PRESET = "stability"
MODEL_FILES = ("config.json", "diffusion_pytorch_model.safetensors", "liftplace.json")
SAMPLES = "samples.png"  # the job's sample grid, shipped beside the model for a look
# Job-spec fields that hold this run's own locations or tracking, not the training: left out of the provenance.
_LOCAL_FIELDS = ("job_id", "output_dir", "dataset", "teacher_path", "base_teacher_path", "student_teacher_path",
                 "mlflow_tracking_uri", "mlflow_experiment", "mlflow_parent_run_id", "attempt", "extra",
                 "study_id", "study_name",
                 # a distillation's options, which a teacher job carries at their defaults and does not use
                 "student_teacher_name", "student_ratio", "method", "group_size", "coarse", "curriculum", "ablation",
                 "lambda_kd", "lambda_feat", "featkd_layers")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=DEFAULT_PRESET, help="study preset whose shipped teachers are made")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the provenance records it)")
    p.add_argument("--output", type=Path, default=None, help="where the artifacts go (default: liftplace/shipped)")
    p.add_argument("--work", type=Path, default=None, help="keep the jobs' folders here (default: a temporary one)")
    p.add_argument("--allow-dirty", action="store_true", help="run with uncommitted changes to tracked files")
    return p.parse_args(argv)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def _command(args: argparse.Namespace) -> str:
    """The invocation as the provenance records it (locations of this machine left out)."""
    parts = ["python", SCRIPT]
    if args.preset != DEFAULT_PRESET:
        parts += ["--preset", args.preset]
    if args.threads != 1:
        parts += ["--threads", str(args.threads)]
    return " ".join(parts)


def _environment(threads: int) -> dict[str, Any]:
    from liftplace.environment import run_environment

    return {**run_environment("cpu"), "threads": threads}  # the provenance keeps the thread count a number


def _spec(settings, plan, teachers: dict[str, Any], job_id: int, dataset):
    """The job spec the service would run for `plan` (its schema's defaults, the options as
    `server.services.teachers` stores them, the dispatcher's build_spec)."""
    from pydantic import TypeAdapter

    from server.dispatcher import build_spec
    from server.models import Job, Teacher
    from server.schemas import TRAIN_OPTION_FIELDS, TeacherCreate

    body = TypeAdapter(TeacherCreate).validate_python(plan.request(dataset.name, retrain=True))
    teacher = Teacher(name=plan.name, source=body.source, status="training", preset=getattr(body, "preset", None),
                      base_teacher=teachers.get(plan.base), prune_ratio=getattr(body, "prune_ratio", None))
    teachers[plan.name] = teacher
    job = Job(id=job_id, kind="teacher", status="dispatched", output_teacher=teacher, dataset=dataset,
              seed=body.seed, steps=body.steps, attempts=1,
              options=body.model_dump(include={*TRAIN_OPTION_FIELDS, "importance"}))
    return build_spec(settings, job), teacher


def _train(args: argparse.Namespace, work: Path) -> list[tuple[Any, Any, Any]]:
    """Run every shipped teacher's job; (plan, spec, outcome) each, bases first."""
    from liftplace.studies import get_study_preset
    from server.models import Dataset
    from server.settings import Settings
    from worker.run import run_job

    preset = get_study_preset(args.preset)
    plans = [t for t in preset.teachers if t.shipped is not None]
    if not plans:
        raise SystemExit(f"preset {args.preset!r} ships no teacher")
    settings = Settings(data_dir=work, mlflow_tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    dataset = Dataset(name=preset.dataset, kind="embedded")
    teachers: dict[str, Any] = {}
    done = []
    for job_id, plan in enumerate(plans, start=1):
        spec, teacher = _spec(settings, plan, teachers, job_id, dataset)
        print(f"[{plan.name}] training: {plan.request(preset.dataset, retrain=True)}", flush=True)
        start = time.monotonic()
        outcome = run_job(spec, device="cpu")
        if outcome.status != "succeeded":
            raise SystemExit(f"[{plan.name}] the job ended {outcome.status}: {outcome.reason} (log: {spec.output_dir})")
        teacher.model_dir = outcome.model_dir
        print(f"[{plan.name}] {outcome.parameters:,} parameters, {outcome.fid_metric} {outcome.fid:.4f}, "
              f"{time.monotonic() - start:.0f} s", flush=True)
        done.append((plan, spec, outcome))
    return done


def _provenance(plan, spec, outcome, origin: dict[str, Any]) -> dict[str, Any]:
    job = {k: v for k, v in spec.to_dict().items() if k not in _LOCAL_FIELDS}
    return {
        "teacher": plan.name,
        **origin,
        "plan": plan.request(spec.dataset_name, retrain=True),
        "base_teacher": plan.base,
        "job": job,
        "steps": outcome.steps_done,
        "fid": {"value": outcome.fid, "metric": outcome.fid_metric, "samples": spec.fid_samples,
                "sample_steps": spec.sample_steps, "seed": spec.seed, "features": spec.fid_features,
                "reference": f"the embedded {spec.dataset_name} at {spec.resolution}x{spec.resolution}"},
        "metrics": outcome.metrics,
    }


def _write(done: list[tuple[Any, Any, Any]], output: Path, origin: dict[str, Any]) -> dict[str, Any]:
    """Copy each job's model into `output/NAME/` with its provenance; write the manifest; returns it."""
    from liftplace.shipped import MANIFEST_FILE, MANIFEST_FORMAT, sha256_file

    teachers = {}
    for plan, spec, outcome in done:
        src, dest = Path(outcome.model_dir), output / plan.name
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        shutil.copyfile(src / MODEL_FILES[1], dest / MODEL_FILES[1])
        # diffusers records where a config was read from (`_name_or_path`: the base teacher's folder, for a
        # pruned one); that is this run's temporary folder, nothing a model needs, so it is left out
        config = json.loads((src / MODEL_FILES[0]).read_text())
        config.pop("_name_or_path", None)
        (dest / MODEL_FILES[0]).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        meta = json.loads((src / MODEL_FILES[2]).read_text())
        meta["extra"] = _provenance(plan, spec, outcome, origin)
        (dest / MODEL_FILES[2]).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        shutil.copyfile(Path(spec.output_dir) / SAMPLES, dest / SAMPLES)
        teachers[plan.name] = {"files": {f: sha256_file(dest / f) for f in (*MODEL_FILES, SAMPLES)}}
    data = {"format": MANIFEST_FORMAT, "teachers": teachers}
    (output / MANIFEST_FILE).write_text(json.dumps(data, indent=2) + "\n")
    return data


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from liftplace.shipped import SHIPPED_DIR

    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    if dirty and not args.allow_dirty:
        raise SystemExit("the tree has uncommitted changes: commit them (the provenance names the commit), "
                         "or pass --allow-dirty")
    origin = {"command": _command(args), "commit": _git("rev-parse", "HEAD"), "tree_clean": not dirty,
              "environment": _environment(args.threads)}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ship-teachers-") as tmp:
        work = (args.work or Path(tmp)).resolve()
        done = _train(args, work)
        origin["duration_s"] = round(time.monotonic() - start, 1)
        data = _write(done, args.output or SHIPPED_DIR, origin)
    for name, entry in data["teachers"].items():
        size = sum(((args.output or SHIPPED_DIR) / name / f).stat().st_size for f in entry["files"])
        print(f"{name}: {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
