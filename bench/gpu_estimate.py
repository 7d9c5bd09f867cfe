"""Estimate the GPU wall time of one run of the GPU study presets (celeba64, cifar10) from counted FLOPs.

No GPU needed: the floating-point operations of one distillation step (teacher forward, student
forward and backward, at the preset's batch) and of one DDIM sampling step of the student are
counted with torch's FLOP counter on the CPU at batch 1 and scaled; the time is that work at an
assumed sustained throughput (`--tflops`, in TFLOP/s). A 90%-pruned student is so small that
its kernels are latency-bound on a GPU, so a floor of `--min-step-ms` per training step (and
`--min-sample-ms` per sampling step of a batch) is applied as well. It is an estimate, and says
so; measure with a real step time once a GPU is at hand.

    python bench/gpu_estimate.py [--tflops 25] [--min-step-ms 15] [--min-sample-ms 5] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

# The CIFAR-10 DDPM (Ho et al.) as a diffusers UNet2DModel: ch 128, mult (1, 2, 2, 2), attention at 16x16.
CIFAR10_DDPM = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
)


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def estimate(preset_name: str, tflops: float, min_step_ms: float, min_sample_ms: float) -> dict:
    import torch
    from diffusers import UNet2DModel

    from liftplace.models import build_unet, count_parameters
    from liftplace.pruning import prune
    from liftplace.studies import get_study_preset

    torch.set_num_threads(1)
    p = get_study_preset(preset_name)
    size = int(p.options["resolution"])
    if preset_name == "celeba64":
        teacher = build_unet("ddpm-celeba64", sample_size=size, in_channels=3, seed=0)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            teacher = UNet2DModel(**CIFAR10_DDPM)
    teacher.eval()
    student = prune(teacher, p.student_ratio, "magnitude").model  # Taylor gives the same widths
    x = torch.randn(1, 3, size, size)
    t = torch.tensor([500])
    with torch.no_grad():
        f_teacher = _flops(lambda: teacher(x, t))
    f_student_fb = _flops(lambda: student(x, t).sample.square().sum().backward())
    with torch.no_grad():
        f_student = _flops(lambda: student(x, t))
    batch = int(p.options["batch_size"])
    steps = int(p.options["steps"])
    n_fid = int(p.options["fid_samples"])
    ddim = int(p.options["sample_steps"])
    step_flops = batch * (f_teacher + f_student_fb)
    step_s = max(step_flops / (tflops * 1e12), min_step_ms / 1000)
    sample_batches = -(-n_fid // 1000)  # batches of 1000 images
    sample_s = max(n_fid * ddim * f_student / (tflops * 1e12), sample_batches * ddim * min_sample_ms / 1000)
    return dict(preset=preset_name, teacher=count_parameters(teacher), student=count_parameters(student),
                batch=batch, steps=steps, step_gflops=step_flops / 1e9, step_ms=1000 * step_s,
                train_h=steps * step_s / 3600, sample_h=sample_s / 3600, jobs=p.jobs,
                total_h=(steps * step_s + sample_s) / 3600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["celeba64", "cifar10"])
    ap.add_argument("--tflops", type=float, default=25.0, help="assumed sustained TFLOP/s of one GPU (fp32/TF32)")
    ap.add_argument("--min-step-ms", type=float, default=15.0, help="latency floor of one training step (ms)")
    ap.add_argument("--min-sample-ms", type=float, default=5.0,
                    help="latency floor of one DDIM step of a 1000-image batch (ms)")
    ap.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    args = ap.parse_args()
    rows = [estimate(n, args.tflops, args.min_step_ms, args.min_sample_ms) for n in args.presets]
    lines = [
        f"Assumed: {args.tflops:g} TFLOP/s sustained on one GPU, at least {args.min_step_ms:g} ms per training step "
        f"and {args.min_sample_ms:g} ms per DDIM step of a 1000-image batch (latency floors of a tiny student).\n",
        "| preset | teacher | student | batch | GFLOP per step | step (ms) | training | FID sampling | one run | "
        "jobs | whole study, one GPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| `{r['preset']}` | {r['teacher'] / 1e6:.1f}M | {r['student'] / 1e6:.2f}M | {r['batch']} | "
                     f"{r['step_gflops']:.0f} | {r['step_ms']:.1f} | {r['train_h']:.1f} h ({r['steps']:,} steps) | "
                     f"{r['sample_h']:.2f} h | {r['total_h']:.1f} h | {r['jobs']} | "
                     f"{r['total_h'] * r['jobs'] / 24:.0f} GPU-days |")
    lines.append("\nThe study's smaller CelebA teachers are retrained first (teacher jobs; not counted above). "
                 f"Generated by `python bench/gpu_estimate.py --tflops {args.tflops:g} --min-step-ms "
                 f"{args.min_step_ms:g} --min-sample-ms {args.min_sample_ms:g}`.")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
