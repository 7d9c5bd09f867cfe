"""Convergence curves: FID against training steps, for a teacher or for distilled students.

Calibrates the embedded study presets (`liftplace.studies`): is a teacher good enough (its FID
against the real-vs-real FID of as many real images), and does a pruned-initialised student
stop improving before its step budget ends? The run is checkpointed every `--eval-every`
steps; each checkpoint's EMA model is sampled (DDIM) and scored (digits features), so the
curve is exactly what a job of the same length would report at that step.

    # a teacher of a preset (its curve, and the model saved to OUTPUT/teacher/model)
    python bench/convergence.py teacher --preset digits-m --steps 3000 --eval-every 500 --output runs/conv-t
    # students of that teacher, one per method (same seed), pruned at the study's ratio
    python bench/convergence.py student --teacher runs/conv-t/teacher/model --steps 3000 --eval-every 250 \
        --methods outkd outkd+featkd lift+place+featkd --output runs/conv-s

    # two settings of one method side by side in one CSV and plot
    python bench/convergence.py student --teacher T --methods lift+place+featkd --steps 6000 --lr-schedule constant \
        --label "constant" --output runs/sched
    python bench/convergence.py student --teacher T --methods lift+place+featkd --lr-schedule cosine \
        --label "cosine" --append --output runs/sched

    # the resolution of the points: each curve's last checkpoint scored with 8 sampling seeds
    python bench/convergence.py noise --output runs/conv-s

Writes OUTPUT/convergence.csv (kind, name, step, fid_digits, elapsed_s, step_ms) and
OUTPUT/convergence.png, and prints the step time and the real-vs-real FID. Settings
default to the `stability` study preset. Run it with one torch thread (`--threads 1`) on a
shared machine. A benchmark prints figures; it never passes or fails.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from liftplace import defaults  # noqa: E402  (liftplace.defaults and .studies import no torch: cheap)
from liftplace.methods import FEATKD_LAYER_SETS, FEATKD_LAYERS  # noqa: E402
from liftplace.studies import StudyPreset, get_study_preset  # noqa: E402

CSV_FIELDS = ("kind", "name", "step", "fid_digits", "elapsed_s", "step_ms")


class _Curve:
    """A training callback that scores the EMA model of every checkpoint it sees."""

    def __init__(self, kind: str, name: str, *, fid_samples: int, sample_steps: int, seed: int, rows: list[dict],
                 out_csv: Path):
        self.kind, self.name = kind, name
        self.fid_samples, self.sample_steps, self.seed = fid_samples, sample_steps, seed
        self.rows, self.out_csv = rows, out_csv
        self.t0 = time.perf_counter()
        self.train_s = 0.0  # training time only (evaluation excluded), for the step time
        self.last = self.t0
        self.steps_timed = 0

    # TrainingCallback hooks (duck-typed: liftplace.training calls what exists)
    def on_start(self, start_step: int, total_steps: int) -> None:
        self.last = time.perf_counter()

    def on_step(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        self.steps_timed += 1

    def on_checkpoint(self, step: int, path: Path) -> None:
        from liftplace.fid import compute_fid
        from liftplace.training import load_checkpoint_model

        self.train_s += time.perf_counter() - self.last
        _, ema, _ = load_checkpoint_model(path)
        fid = compute_fid(ema.eval(), "digits", features="digits", num_samples=self.fid_samples,
                          num_inference_steps=self.sample_steps, seed=self.seed)
        step_ms = 1000 * self.train_s / max(1, self.steps_timed)
        row = dict(kind=self.kind, name=self.name, step=step, fid_digits=round(fid.fid, 4),
                   elapsed_s=round(time.perf_counter() - self.t0, 1), step_ms=round(step_ms, 1))
        self.rows.append(row)
        _write_csv(self.rows, self.out_csv)
        print(f"{self.kind} {self.name} step {step}: fid_digits {fid.fid:.3f} (train {step_ms:.0f} ms/step, "
              f"{row['elapsed_s']} s so far)", flush=True)
        self.last = time.perf_counter()

    def on_end(self, result) -> None: ...

    def should_stop(self) -> bool:
        return False


def rows_of(out_csv: Path) -> list[dict]:
    return [dict(r, step=int(r["step"]), fid_digits=float(r["fid_digits"])) for r in csv.DictReader(open(out_csv))]


def fid_noise(output: Path, rows: list[dict], seeds: int, fid_samples: int, sample_steps: int) -> None:
    """How much the FID of one model moves with the sampling seed alone: the resolution of a curve's points.

    Each curve's last checkpoint (OUTPUT/<curve>/checkpoint/last.pt) is sampled and scored with
    seeds 0..seeds-1; writes OUTPUT/fid_noise.csv (name, step, seed, fid_digits).
    """
    import statistics

    from liftplace.fid import compute_fid
    from liftplace.training import load_checkpoint_model

    out = []
    for name in dict.fromkeys(r["name"] for r in rows):
        ckpt = output / _slug(name) / "checkpoint" / "last.pt"
        if not ckpt.is_file():
            print(f"{name}: no checkpoint at {ckpt}; skipped", flush=True)
            continue
        _, ema, info = load_checkpoint_model(ckpt)
        fids = [compute_fid(ema.eval(), "digits", features="digits", num_samples=fid_samples,
                            num_inference_steps=sample_steps, seed=seed).fid for seed in range(seeds)]
        step = max(r["step"] for r in rows if r["name"] == name)
        out += [dict(name=name, step=step, seed=seed, fid_digits=round(f, 4)) for seed, f in enumerate(fids)]
        print(f"{name} at step {step}: fid_digits over {seeds} sampling seeds {statistics.mean(fids):.3f} "
              f"± {statistics.stdev(fids):.3f}", flush=True)
    with open(output / "fid_noise.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=("name", "step", "seed", "fid_digits"))
        w.writeheader()
        w.writerows(out)
    print(f"wrote {output / 'fid_noise.csv'}")


def _curve_name(name: str, label: str | None) -> str:
    return f"{name}, {label}" if label else name


def _slug(name: str) -> str:
    """A folder name for a curve's checkpoints (the pre-label runs used METHOD with '+' as '_')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.replace("+", "_")).strip("_")


def _write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)


def _plot(rows: list[dict], path: Path, title: str, real_fid: float | None, mark_step: int | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for name in dict.fromkeys(r["name"] for r in rows):
        pts = [(r["step"], r["fid_digits"]) for r in rows if r["name"] == name]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    if real_fid is not None:
        ax.axhline(real_fid, color="gray", linestyle="--", label=f"real vs real, disjoint halves ({real_fid:.1f})")
    if mark_step:
        ax.axvline(mark_step, color="black", linestyle=":", label=f"study budget ({mark_step} steps)")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("fid_digits (log scale)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def real_vs_real(resolution: int, seed: int = 0) -> float:
    """FID between two disjoint random halves of the digits: fresh real samples, the floor to read FIDs against."""
    import torch

    from liftplace.data import load_digits
    from liftplace.fid import compute_fid

    data = load_digits(resolution)
    idx = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed))
    half = data.shape[0] // 2
    return compute_fid(data[idx[:half]], data[idx[half:]], features="digits").fid


def _parser(stability: StudyPreset) -> argparse.ArgumentParser:
    largest = stability.teachers[0]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("teacher", "student", "plot", "noise"),
                   help="plot: redraw OUTPUT/convergence.png from OUTPUT/convergence.csv; noise: score each curve's "
                        "last checkpoint again with --noise-seeds sampling seeds (OUTPUT/fid_noise.csv)")
    p.add_argument("--preset", default=largest.preset, help="teacher architecture (kind teacher)")
    p.add_argument("--teacher", type=Path, help="teacher model folder (kind student)")
    p.add_argument("--methods", nargs="+", default=list(stability.variants[0].methods))
    p.add_argument("--steps", type=int, default=None, help="default: the stability preset's")
    p.add_argument("--eval-every", type=int, default=None, help="default: steps / 6")
    p.add_argument("--lr", type=float, default=None, help="default: the stability preset's")
    p.add_argument("--lr-schedule", choices=defaults.LR_SCHEDULES, default=None,
                   help=f"default: the stability preset's ({defaults.LR_SCHEDULE} for a teacher)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the stability preset's")
    p.add_argument("--student-ratio", type=float, default=stability.student_ratio)
    p.add_argument("--resolution", type=int, default=stability.options["resolution"])
    p.add_argument("--fid-samples", type=int, default=stability.options["fid_samples"])
    p.add_argument("--sample-steps", type=int, default=stability.options["sample_steps"])
    p.add_argument("--seed", type=int, default=defaults.SEED)
    p.add_argument("--featkd-layers", choices=FEATKD_LAYER_SETS,
                   default=stability.options.get("featkd_layers", FEATKD_LAYERS),
                   help="FeatKD's hook set (kind student); default: the stability preset's")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--label", help="appended to each curve's name (\"METHOD, LABEL\"), e.g. the setting compared")
    p.add_argument("--append", action="store_true",
                   help="add the curves to OUTPUT/convergence.csv instead of starting it anew (a curve of the same "
                        "name is replaced): several settings side by side in one CSV and plot")
    p.add_argument("--noise-seeds", type=int, default=8, help="kind noise: sampling seeds per checkpoint")
    p.add_argument("--title", help="plot title (kind plot)")
    p.add_argument("--mark-step", type=int, help="draw a vertical line at this step (kind plot): the study's budget")
    return p


def _train_options(args: argparse.Namespace, stability: StudyPreset) -> dict[str, Any]:
    """steps, lr, lr_schedule, batch_size and checkpoint_every (= --eval-every) of the curves: the flags, else
    the stability preset's (its largest teacher's for kind teacher, its students' otherwise)."""
    train = stability.teachers[0].train if args.kind == "teacher" else stability.options
    steps = args.steps if args.steps is not None else int(train["steps"])
    return dict(
        steps=steps,
        lr=args.lr if args.lr is not None else float(train["lr"]),
        lr_schedule=args.lr_schedule or str(train.get("lr_schedule", defaults.LR_SCHEDULE)),
        batch_size=args.batch_size if args.batch_size is not None else int(train["batch_size"]),
        checkpoint_every=args.eval_every if args.eval_every is not None else max(1, steps // 6),
    )


def _kept_rows(args: argparse.Namespace, out_csv: Path) -> list[dict]:
    """With --append, the rows of OUTPUT/convergence.csv of curves this run does not redraw; else none."""
    if not (args.append and args.kind in ("teacher", "student") and out_csv.is_file()):
        return []
    names = [args.preset] if args.kind == "teacher" else args.methods
    new_names = {_curve_name(n, args.label) for n in names}
    return [r for r in csv.DictReader(open(out_csv)) if r["name"] not in new_names]


def _teacher_curve(args: argparse.Namespace, options: dict[str, Any], data, curve: Callable[..., _Curve]) -> str:
    """Train a teacher of --preset, scoring every checkpoint; saves it to OUTPUT/teacher/model. Returns a title."""
    from liftplace.models import build_unet, count_parameters, save_unet
    from liftplace.training import TeacherConfig, train_teacher

    config = TeacherConfig(seed=args.seed, **options)
    model = build_unet(args.preset, sample_size=args.resolution, seed=args.seed)
    print(f"teacher {args.preset}: {count_parameters(model):,} parameters; {config.steps} steps, lr {config.lr}, "
          f"batch {config.batch_size}", flush=True)
    res = train_teacher(model, data, config, checkpoint_dir=args.output / "teacher" / "checkpoint",
                        callbacks=[curve("teacher", _curve_name(args.preset, args.label))])
    save_unet(res.ema_model, args.output / "teacher" / "model")
    return (f"teacher {args.preset} ({count_parameters(model) / 1e6:.1f}M), batch {config.batch_size}, "
            f"lr {config.lr}")


def _student_curves(args: argparse.Namespace, options: dict[str, Any], data, curve: Callable[..., _Curve]) -> str:
    """Distil one student per --methods from --teacher, scoring every checkpoint. Returns a title."""
    from liftplace.models import count_parameters, load_unet
    from liftplace.training import DistillConfig, distill

    teacher = load_unet(args.teacher)
    for method in args.methods:
        name = _curve_name(method, args.label)
        config = DistillConfig(method=method, student_ratio=args.student_ratio, seed=args.seed,
                               featkd_layers=args.featkd_layers, **options)
        res = distill(teacher, data=data, config=config, checkpoint_dir=args.output / _slug(name) / "checkpoint",
                      callbacks=[curve("student", name)])
        print(f"student {method}: {res.parameters:,} of {res.teacher_parameters:,} parameters "
              f"({100 * res.parameters / res.teacher_parameters:.2f}%)", flush=True)
    return (f"students at ratio {args.student_ratio} of a {count_parameters(teacher) / 1e6:.1f}M teacher, "
            f"batch {options['batch_size']}, lr {options['lr']} ({options['lr_schedule']})")


def main() -> None:
    stability = get_study_preset("stability")
    p = _parser(stability)
    args = p.parse_args()
    if args.kind == "student" and args.teacher is None:
        p.error("--teacher: required for kind student")
    out_csv = args.output / "convergence.csv"
    if args.kind in ("noise", "plot") and not out_csv.is_file():
        p.error(f"--output: no {out_csv} to read (run kind teacher or student first)")

    os.environ.setdefault("LIFTPLACE_CACHE_DIR", tempfile.mkdtemp(prefix="liftplace-conv-"))
    import torch

    from liftplace.data import load_digits

    torch.set_num_threads(args.threads)
    options = _train_options(args, stability)
    args.output.mkdir(parents=True, exist_ok=True)
    if args.kind == "noise":
        fid_noise(args.output, rows_of(out_csv), args.noise_seeds, args.fid_samples, args.sample_steps)
        return
    real = real_vs_real(args.resolution, args.seed)
    if args.kind == "plot":
        rows = rows_of(out_csv)
        title = args.title or (f"{'/'.join(sorted({r['kind'] for r in rows}))} convergence, "
                               f"batch {options['batch_size']}, lr {options['lr']}")
        _plot(rows, args.output / "convergence.png", title, real, args.mark_step)
        print(f"wrote {args.output / 'convergence.png'}")
        return
    data = load_digits(args.resolution)
    print(f"device: CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{args.threads} thread(s); digits {tuple(data.shape)}; real vs real fid_digits (disjoint halves) = "
          f"{real:.3f}", flush=True)
    rows = _kept_rows(args, out_csv)

    def curve(kind: str, name: str) -> _Curve:
        return _Curve(kind, name, fid_samples=args.fid_samples, sample_steps=args.sample_steps, seed=args.seed,
                      rows=rows, out_csv=out_csv)

    run = _teacher_curve if args.kind == "teacher" else _student_curves
    title = run(args, options, data, curve)
    rows = [dict(r, step=int(r["step"]), fid_digits=float(r["fid_digits"])) for r in rows]
    _plot(rows, args.output / "convergence.png", title, real)
    print(f"wrote {out_csv} and {args.output / 'convergence.png'}")


if __name__ == "__main__":
    main()
