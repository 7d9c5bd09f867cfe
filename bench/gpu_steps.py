"""Measure the step times of the GPU study presets (celeba64, cifar10) on a device, and project a study from them.

Where bench/gpu_estimate.py counts FLOPs and assumes a throughput, this script times the library's
own training loop and sampler: `liftplace.training.train_teacher` (one DDPM step of a teacher) and
`liftplace.training.distill` (one distillation step per method, student pruned from the preset's
student teacher at the preset's ratio) run for `--warmup + --repeats` steps, a callback timing every
step (synchronised with the device), and `liftplace.sampling.sample` generates one batch of the
student with the preset's DDIM steps. A step is everything the loop does: drawing the batch, timesteps
and noise, the forward passes, the losses, backward, clipping, Adam, EMA and the metrics. Teachers are
the preset's architectures with random weights, the data random images in [-1, 1] (nothing loaded),
and students pruned by weight magnitude (the same widths as Taylor's; no data needed). For Inception
FID presets the feature extraction is timed on torchvision's Inception-v3 (random weights) as a stand-in
for torch-fidelity's, at the FID's batch. Reported: medians, minima and maxima over the timed steps and
the peak device memory (`torch.cuda.max_memory_allocated`) of each measurement; then the wall time of
one run and of the whole study on one device: per job, steps x step time + FID sampling and features.

    python bench/gpu_steps.py [--device cuda] [--presets celeba64 cifar10] [--repeats 10] [--warmup 3]
                              [--batch N] [--methods all] [--markdown out.md] [--json out.json]
    python bench/gpu_steps.py --device cpu --quick --presets smoke     # a smoke run of the logic

Not counted in the projection: checkpoints (every `checkpoint_every` steps), the reference statistics
of the dataset (computed once), loading the real data. A benchmark prints figures; it never passes or
fails on time.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _p in (str(HERE.parent), str(HERE)):  # run from a checkout: the repository, and bench/ (gpu_estimate)
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402

from liftplace import defaults  # noqa: E402
from liftplace.methods import METHOD_NAMES, PAPER_METHOD, get_method  # noqa: E402
from liftplace.studies import StudyPreset, get_study_preset  # noqa: E402

GPU_PRESETS: tuple[str, ...] = ("celeba64", "cifar10")
GIB = 1024**3


# --- models ----------------------------------------------------------------------------------------


def _channels(preset: StudyPreset) -> int:
    return 1 if preset.dataset in defaults.EMBEDDED_DATASETS else 3


def _local_architecture(folder: str, resolution: int, channels: int):
    """The architecture behind a preset's local teacher folder, with random weights (no file is read)."""
    from liftplace.models import build_unet

    if folder == "ddpm-celeba64":
        return build_unet("ddpm-celeba64", sample_size=resolution, in_channels=channels, seed=0)
    if folder == "ddpm-cifar10-32":
        from diffusers import UNet2DModel
        from gpu_estimate import CIFAR10_DDPM

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return UNet2DModel(**{**CIFAR10_DDPM, "sample_size": resolution, "in_channels": channels,
                                  "out_channels": channels})
    raise ValueError(f"local teacher folder {folder!r}: no known architecture to time")


def _prune(model, ratio: float, device: torch.device):
    """`model` pruned at `ratio` by magnitude (on `device`, where tracing is fastest); both end on the CPU."""
    from liftplace.pruning import prune

    try:
        student = prune(model.to(device), ratio, "magnitude").model
    except Exception as exc:  # noqa: BLE001 - the timings need a student, wherever it is pruned
        if device.type == "cpu":
            raise
        print(f"pruning on {device} failed ({type(exc).__name__}: {exc}); pruning on the CPU", flush=True)
        student = prune(model.to("cpu"), ratio, "magnitude").model
    model.to("cpu")
    return student.to("cpu")


def build_models(preset: StudyPreset, device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """(teachers by name, the student each teacher distils into), on the CPU, random weights."""
    from liftplace.models import build_unet

    res, ch = int(preset.options["resolution"]), _channels(preset)
    teachers: dict[str, Any] = {}
    for plan in preset.teachers:
        if plan.source == "preset":
            teachers[plan.name] = build_unet(plan.preset, sample_size=res, in_channels=ch, seed=0)
        elif plan.source == "pruned":
            teachers[plan.name] = _prune(teachers[plan.base], plan.prune_ratio, device)
        else:
            teachers[plan.name] = _local_architecture(plan.folder, res, ch)
    fixed = preset.options.get("student_teacher")
    students: dict[str, Any] = {}
    if fixed is not None:  # one student for every teacher (the paper's protocol)
        student = _prune(teachers[fixed], preset.student_ratio, device)
        students = {name: student for name in teachers}
    else:
        students = {name: _prune(t, preset.student_ratio, device) for name, t in teachers.items()}
    return teachers, students


# --- timing ----------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fresh_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def _step_timer(device: torch.device):
    """A TrainingCallback recording the wall time of every step of the loop (synchronised with `device`)."""
    from liftplace.training import TrainingCallback

    class StepTimer(TrainingCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.last = 0.0

        def on_start(self, start_step: int, total_steps: int) -> None:
            _sync(device)
            self.last = time.perf_counter()

        def on_step(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
            _sync(device)
            now = time.perf_counter()
            self.times.append(now - self.last)
            self.last = now

    return StepTimer()


def _summary(times: Sequence[float], warmup: int) -> dict[str, float | int]:
    timed = list(times[warmup:])
    if not timed:
        raise RuntimeError(f"no timed steps ({len(times)} steps, {warmup} of them warm-up)")
    return {"median_ms": 1000 * statistics.median(timed), "min_ms": 1000 * min(timed),
            "max_ms": 1000 * max(timed), "n": len(timed)}


def _data(n: int, channels: int, resolution: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, channels, resolution, resolution, generator=g) * 2 - 1


def time_teacher_step(teacher, data: torch.Tensor, *, batch: int, lr: float, warmup: int, repeats: int,
                      device: torch.device) -> dict:
    """One DDPM training step of `teacher` (a copy: the loop trains in place) through `train_teacher`."""
    from liftplace.training import train_teacher

    _fresh_memory(device)
    timer = _step_timer(device)
    result = train_teacher(copy.deepcopy(teacher), data, steps=warmup + repeats, batch_size=batch, lr=lr,
                           checkpoint_every=0, device=device, callbacks=[timer])
    out = {**_summary(timer.times, warmup), "peak_gib": _peak_gib(device), "outcome": result.outcome}
    del result
    return out


def time_distill_step(teacher, student, data: torch.Tensor, method: str, options: dict[str, Any], *, batch: int,
                      warmup: int, repeats: int, device: torch.device) -> dict:
    """One distillation step of `method` through `distill` (a copy of the student: the loop trains in place)."""
    from liftplace.training import distill

    _fresh_memory(device)
    timer = _step_timer(device)
    try:
        result = distill(teacher, method=method, steps=warmup + repeats, data=data, student=copy.deepcopy(student),
                         device=device, callbacks=[timer], **{**options, "batch_size": batch, "checkpoint_every": 0})
        out = {**_summary(timer.times, warmup), "peak_gib": _peak_gib(device), "outcome": result.outcome}
        del result
    finally:
        teacher.to("cpu")  # distill moves the teacher to the device; the next measurement starts clean
    return out


def time_sampling(student, *, batch: int, steps: int, warmup: int, repeats: int, device: torch.device) -> dict:
    """One batch of `steps` DDIM steps of `student` through `liftplace.sampling.sample` (per batch and per step)."""
    from liftplace.sampling import sample

    model = copy.deepcopy(student).to(device)
    _fresh_memory(device)
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        sample(model, batch, seed=i, num_inference_steps=steps, batch_size=batch, device=device)
        _sync(device)
        times.append(time.perf_counter() - t0)
    out = {**_summary(times, warmup), "peak_gib": _peak_gib(device)}
    del model
    return out


def time_inception(*, batch: int, resolution: int, warmup: int, repeats: int, device: torch.device) -> dict:
    """Inception-v3 pool features of a batch of uint8 images resized to 299 (torchvision's, random weights:
    a stand-in for torch-fidelity's inception-v3-compat, which the FID runs; same network and input size)."""
    import torch.nn.functional as F
    from torchvision.models import inception_v3

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = inception_v3(weights=None, aux_logits=False, init_weights=False)
    net.fc = torch.nn.Identity()
    net = net.eval().to(device)
    images = torch.randint(0, 256, (batch, 3, resolution, resolution), dtype=torch.uint8)
    _fresh_memory(device)
    times = []
    with torch.no_grad():
        for _ in range(warmup + repeats):
            _sync(device)
            t0 = time.perf_counter()
            x = images.to(device).float() / 127.5 - 1
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            net(x).cpu()
            _sync(device)
            times.append(time.perf_counter() - t0)
    out = {**_summary(times, warmup), "peak_gib": _peak_gib(device)}
    del net
    return out


# --- one preset -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    device: torch.device
    warmup: int
    repeats: int
    batch: int | None  # None: the preset's
    sample_batch: int
    sample_steps: int | None  # None: the preset's
    fid_batch: int
    methods: tuple[str, ...]  # measured on the first teacher besides the preset's own
    quick: bool


def _distill_options(preset: StudyPreset) -> dict[str, Any]:
    """The preset's options that are DistillConfig fields (lr, lr_schedule, featkd_layers, ...), minus the budget."""
    from liftplace.config import DistillConfig

    fields = {f.name for f in dataclasses.fields(DistillConfig)} - {"steps", "batch_size", "checkpoint_every"}
    opts = {k: v for k, v in preset.options.items() if k in fields}
    opts["student_ratio"] = None  # the student is given
    return opts


def study_jobs(preset: StudyPreset) -> dict[tuple[str, str], int]:
    """Distillation jobs of the preset by (teacher, method), over its variants, axes and seeds."""
    jobs: dict[tuple[str, str], int] = {}
    for v in preset.variants:
        for teacher in preset.variant_teachers(v):
            for m in v.methods:
                n = 1
                for axis, values in v.axes.items():
                    n *= len(values) if get_method(m).uses_option(axis) else 1
                jobs[(teacher, m)] = jobs.get((teacher, m), 0) + n * len(preset.seeds)
    return jobs


def _record(rows: list[dict], log: Callable[[str], None], row: dict, fn: Callable[[], dict]) -> None:
    t0 = time.perf_counter()
    try:
        row.update(fn())
    except Exception as exc:  # one failed measurement (e.g. out of memory) must not lose the others
        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
    row["wall_s"] = time.perf_counter() - t0
    rows.append(row)
    if "error" in row:
        log(f"  {row['kind']:16s} {row['model']:22s} {row.get('method') or '':18s} FAILED: {row['error']}")
    else:
        peak = f"{row['peak_gib']:.2f} GiB" if row.get("peak_gib") is not None else "-"
        log(f"  {row['kind']:16s} {row['model']:22s} {row.get('method') or '':18s} median {row['median_ms']:9.2f} ms "
            f"(min {row['min_ms']:.2f}, max {row['max_ms']:.2f}, n {row['n']}), peak {peak}, {row['wall_s']:.1f} s")


def measure_preset(name: str, s: Settings, log: Callable[[str], None], rows: list[dict],
                   on_row: Callable[[], None] = lambda: None) -> None:
    """Measure one study preset: its rows are appended to `rows`, `on_row` called after each."""
    from liftplace.models import count_parameters

    preset = get_study_preset(name)
    opts = preset.options
    res, ch = int(opts["resolution"]), _channels(preset)
    batch = s.batch or int(opts["batch_size"])
    sample_steps = s.sample_steps or int(opts["sample_steps"])
    t0 = time.perf_counter()
    teachers, students = build_models(preset, s.device)
    log(f"{name}: {len(teachers)} teacher(s) built and student(s) pruned in {time.perf_counter() - t0:.1f} s; "
        f"batch {batch}, {res}x{res}x{ch}")
    data = _data(batch, ch, res)
    jobs = study_jobs(preset)
    first = preset.teachers[0].name
    dist_opts = _distill_options(preset)
    train_plans = {t.name: t for t in preset.teachers}
    base = {"preset": name, "batch": batch, "resolution": res}

    def add(row: dict, fn: Callable[[], dict]) -> None:
        _record(rows, log, {**base, **row}, fn)
        on_row()

    for tname, teacher in teachers.items():
        plan = train_plans[tname]
        lr = float(plan.train.get("lr", opts.get("lr", defaults.LEARNING_RATE)))
        add({"kind": "teacher step", "model": tname, "method": None, "params": count_parameters(teacher),
             "study_steps": int(plan.train["steps"]) if plan.train else 0, "jobs": 1 if plan.train else 0},
            lambda teacher=teacher, lr=lr: time_teacher_step(teacher, data, batch=batch, lr=lr, warmup=s.warmup,
                                                           repeats=s.repeats, device=s.device))
    for tname, teacher in teachers.items():
        methods = [m for (t, m) in jobs if t == tname]
        if tname == first:
            methods += [m for m in s.methods if m not in methods]
        for m in methods:
            add({"kind": "distill step", "model": tname, "method": m,
                 "params": count_parameters(students[tname]), "teacher_params": count_parameters(teacher),
                 "study_steps": int(opts["steps"]), "jobs": jobs.get((tname, m), 0)},
                lambda teacher=teacher, student=students[tname], m=m: time_distill_step(
                    teacher, student, data, m, dist_opts, batch=batch, warmup=s.warmup, repeats=s.repeats,
                    device=s.device))
    sampled: dict[int, str] = {}
    for tname, student in students.items():
        if id(student) in sampled:
            continue
        sampled[id(student)] = tname
        add({"kind": "DDIM batch", "model": f"student of {tname}", "method": None, "batch": s.sample_batch,
             "params": count_parameters(student), "ddim_steps": sample_steps},
            lambda student=student: time_sampling(student, batch=s.sample_batch, steps=sample_steps,
                                                  warmup=min(s.warmup, 1), repeats=max(1, s.repeats // 2),
                                                  device=s.device))
    if preset.dataset not in defaults.EMBEDDED_DATASETS:  # Inception FID
        add({"kind": "Inception batch", "model": "inception-v3 (stand-in)", "method": None, "batch": s.fid_batch,
             "params": None},
            lambda: time_inception(batch=s.fid_batch, resolution=res, warmup=min(s.warmup, 1),
                                   repeats=max(1, s.repeats // 2), device=s.device))


# --- projection -------------------------------------------------------------------------------------


def project(preset: StudyPreset, rows: list[dict], s: Settings) -> dict:
    """Hours of one run and of the whole study on one device, from the preset's measured rows (of those measured
    so far: `complete` says whether every job's step and the FID were measured)."""
    opts = preset.options
    rows = [r for r in rows if r["preset"] == preset.name]
    ok = [r for r in rows if "error" not in r]
    n_fid = int(opts["fid_samples"])
    ddim = next((r for r in ok if r["kind"] == "DDIM batch"), None)
    inc = next((r for r in ok if r["kind"] == "Inception batch"), None)
    fid_s = None
    if ddim is not None:
        per_step_s = ddim["median_ms"] / 1000 / ddim["ddim_steps"]
        fid_s = math.ceil(n_fid / s.sample_batch) * int(opts["sample_steps"]) * per_step_s
        if preset.dataset not in defaults.EMBEDDED_DATASETS:
            fid_s = fid_s + math.ceil(n_fid / s.fid_batch) * inc["median_ms"] / 1000 if inc is not None else None
    steps = int(opts["steps"])
    distill_h: float | None = 0.0
    run_h, n_jobs = None, 0
    first = preset.teachers[0].name
    for (tname, method), n in study_jobs(preset).items():
        r = next((r for r in ok if r["kind"] == "distill step" and r["model"] == tname and r["method"] == method), None)
        n_jobs += n
        if r is None or fid_s is None or distill_h is None:
            distill_h = None
            continue
        job_h = (steps * r["median_ms"] / 1000 + fid_s) / 3600
        distill_h += n * job_h
        if tname == first and method == PAPER_METHOD:
            run_h = job_h
    teacher_h: float | None = 0.0
    trained = [t for t in preset.teachers if t.train]
    for plan in trained:
        r = next((r for r in ok if r["kind"] == "teacher step" and r["model"] == plan.name), None)
        if r is None or teacher_h is None:
            teacher_h = None
            continue
        teacher_h += int(plan.train["steps"]) * r["median_ms"] / 1000 / 3600
    total_h = None if distill_h is None or teacher_h is None else distill_h + teacher_h
    return {"preset": preset.name, "steps": steps, "fid_samples": n_fid, "ddim_steps": int(opts["sample_steps"]),
            "fid_h": None if fid_s is None else fid_s / 3600, "run_h": run_h, "distill_jobs": n_jobs,
            "distill_h": distill_h, "teacher_jobs": len(trained), "teacher_h": teacher_h, "total_h": total_h,
            "total_days": None if total_h is None else total_h / 24, "complete": total_h is not None}


# --- output -----------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "dtype": str(torch.get_default_dtype()).removeprefix("torch."),
        "cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,  # the library changes neither
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["device_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / GIB
    else:
        env["device_name"] = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("diffusers", "torch-pruning"):
        try:
            env[dist.replace("-", "_")] = version(dist)  # torch_pruning.__version__ lags its releases
        except PackageNotFoundError:
            env[dist.replace("-", "_")] = None
    return env


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _params(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def _hours(h: float | None) -> str:
    if h is None:
        return "n/a"
    return f"{h * 60:.1f} min" if h < 1 else f"{h:.1f} h"


def markdown(env: dict, rows: list[dict], projections: list[dict], s: Settings, command: str) -> str:
    lines = [
        f"Measured (not estimated) on **{env['device_name']}**, torch {env['torch']} (CUDA {env['cuda']}), "
        f"diffusers {env['diffusers']}, torch-pruning {env['torch_pruning']}; dtype {env['dtype']} as the library "
        f"trains (TF32: cuDNN {env['cudnn_allow_tf32']}, matmul {env['matmul_allow_tf32']}; cuDNN benchmark "
        f"{env['cudnn_benchmark']}). Median of {s.repeats} steps after {s.warmup} warm-up steps per training "
        f"measurement (of {max(1, s.repeats // 2)} batches after {min(s.warmup, 1)} for sampling and features)"
        + (f"; training batch {s.batch} for every preset (not the presets' own)" if s.batch else "")
        + ("; **quick smoke run: not representative**" if s.quick else "") + ".",
        "",
        "| preset | measured | model | method | parameters | batch | median (ms) | min-max (ms) | peak memory (GiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        params = _params(r.get("params"))
        if r.get("teacher_params"):
            params += f" (teacher {_params(r['teacher_params'])})"
        what = r["kind"] + (f" ({r['ddim_steps']} steps)" if r["kind"] == "DDIM batch" else "")
        if "error" in r:
            lines.append(f"| `{r['preset']}` | {what} | {r['model']} | {r['method'] or '-'} | {params} | "
                         f"{r['batch']} | failed: {r['error'][:120]} | | |")
            continue
        lines.append(f"| `{r['preset']}` | {what} | {r['model']} | {r['method'] or '-'} | {params} | {r['batch']} | "
                     f"{r['median_ms']:.2f} | {r['min_ms']:.2f}-{r['max_ms']:.2f} | {_fmt(r['peak_gib'])} |")
    lines += [
        "",
        "Projection on one such device, one job after another (per distillation job: the preset's steps x the "
        "measured step of its teacher and method + its FID: DDIM sampling of the student, scaled per DDIM step and "
        "batch, and Inception features for Inception presets; per teacher job: its steps x the teacher's step):",
        "",
        f"| preset | steps per job | FID per job | one run ({PAPER_METHOD}, largest teacher) | "
        "teacher jobs | distillation jobs | whole study | complete |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in projections:
        teachers = f"{p['teacher_jobs']}: {_hours(p['teacher_h'])}" if p["teacher_jobs"] else "none"
        lines.append(
            f"| `{p['preset']}` | {p['steps']:,} | {_hours(p['fid_h'])} ({p['fid_samples']:,} samples, DDIM "
            f"{p['ddim_steps']}) | {_hours(p['run_h'])} | {teachers} | "
            f"{p['distill_jobs']}: {_hours(p['distill_h'])} | {_hours(p['total_h'])} "
            f"({_fmt(p['total_days'], '.1f')} device-days) | "
            f"{'yes' if p['complete'] else 'no: a measurement failed or was not reached'} |")
    lines += ["", f"Generated by `{command}`."]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--presets", nargs="+", default=list(GPU_PRESETS), help="study presets (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per measurement (default 10; quick 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; quick 1)")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default: the preset's; quick 2)")
    ap.add_argument("--sample-batch", type=int, default=None,
                    help=f"images per DDIM batch (default {defaults.SAMPLE_BATCH_SIZE}, the worker's; quick 2)")
    ap.add_argument("--sample-steps", type=int, default=None,
                    help="DDIM steps per timed batch (default: the preset's; quick 2); the projection scales per step")
    ap.add_argument("--fid-batch", type=int, default=None,
                    help="images per Inception batch (default: the FID's; quick 2)")
    ap.add_argument("--methods", nargs="+", default=["all"],
                    help="methods timed on the first teacher besides the preset's own ('all': every method)")
    ap.add_argument("--quick", action="store_true", help="a CPU smoke run: tiny batches, few repeats")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    ap.add_argument("--json", type=Path, help="also write every measurement and projection as JSON here")
    args = ap.parse_args(argv)
    for name in ("repeats", "warmup", "batch", "sample_batch", "sample_steps", "fid_batch"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            ap.error(f"--{name.replace('_', '-')}: expected a positive integer, got {value}")
    methods = list(METHOD_NAMES) if args.methods == ["all"] else args.methods
    for m in methods:
        if m not in METHOD_NAMES:
            ap.error(f"--methods: unknown method {m!r}; choose from {', '.join(METHOD_NAMES)} or 'all'")
    args.methods = tuple(methods)
    for p in args.presets:
        try:
            get_study_preset(p)
        except ValueError as exc:
            ap.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the measurements; returns {"environment", "rows", "projections", "markdown"} (and writes the files)."""
    args = parse_args(argv)
    from liftplace.device import pick_device
    from liftplace.fid import FID_BATCH_SIZE

    if args.threads:
        torch.set_num_threads(args.threads)
    q = args.quick
    s = Settings(
        device=pick_device(args.device),
        warmup=args.warmup if args.warmup is not None else (1 if q else 3),
        repeats=args.repeats or (2 if q else 10),
        batch=args.batch or (2 if q else None),
        sample_batch=args.sample_batch or (2 if q else defaults.SAMPLE_BATCH_SIZE),
        sample_steps=args.sample_steps or (2 if q else None),
        fid_batch=args.fid_batch or (2 if q else FID_BATCH_SIZE),
        methods=args.methods,
        quick=q,
    )
    # the command as a reader would type it: output files by name, not by this machine's folders
    words = list(sys.argv[1:] if argv is None else argv)
    words = [Path(w).name if i and words[i - 1] in ("--markdown", "--json") else w for i, w in enumerate(words)]
    command = "python bench/gpu_steps.py " + " ".join(words)
    env = environment(s.device)

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"{env['device_name']}; torch {env['torch']}, CUDA {env['cuda']}, diffusers {env['diffusers']}, "
        f"torch-pruning {env['torch_pruning']}, python {env['python']}; dtype {env['dtype']}")
    rows: list[dict] = []
    projections: list[dict] = []

    def write() -> dict:
        measured = dict.fromkeys(r["preset"] for r in rows)  # the presets begun so far, in order
        projections[:] = [project(get_study_preset(p), rows, s) for p in measured]
        text = markdown(env, rows, projections, s, command)
        result = {"environment": env, "settings": {**dataclasses.asdict(s), "device": str(s.device)},
                  "command": command, "rows": rows, "projections": projections, "markdown": text}
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        if args.markdown:
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            args.markdown.write_text(text + "\n")
        return result

    t0 = time.perf_counter()
    for name in args.presets:
        try:
            measure_preset(name, s, log, rows, on_row=write)
        except Exception as exc:  # e.g. building a preset's models failed: keep the other presets
            log(f"{name}: FAILED before or between measurements: {type(exc).__name__}: {exc}")
            rows.append({"preset": name, "kind": "preset", "model": "-", "method": None, "batch": None,
                         "error": f"{type(exc).__name__}: {exc}"[:500]})
        write()
    result = write()
    log(f"\n{result['markdown']}\n\n(total {time.perf_counter() - t0:.1f} s)")
    return result


if __name__ == "__main__":
    out = main()
    sys.exit(1 if any("error" in r for r in out["rows"]) else 0)
