"""Benchmark: cost of LIFT+PLACE(+FeatKD) against OutKD+FeatKD per training step.

A CelebA-sized teacher (the paper's 78.7M DDPM, preset `ddpm-celeba64`) and its 90%-pruned
student (magnitude importance, so the benchmark needs no data), RGB at 64x64 and 128x128,
batch 8. For each method it times one full distillation step (student forward+backward,
teacher forward, losses, Adam step) and the loss alone, and prints medians and ratios.
The paper reports +0.6% per step at 256x256 on a GPU (reference table 9).

    python bench/bench_losses.py [--resolutions 64 128] [--repeats 5] [--device cpu]

A benchmark prints figures; it never passes or fails on time.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch

from liftplace import defaults
from liftplace.losses import FeatureKD, diffusion_loss, lift_place, outkd
from liftplace.methods import PAPER_METHOD
from liftplace.models import build_unet, count_parameters
from liftplace.pruning import prune
from liftplace.schedulers import make_ddpm_scheduler

BASELINE = "outkd+featkd"  # the paper's method against the output+feature KD baseline


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(resolution: int, repeats: int, batch: int, device: torch.device) -> dict[str, float]:
    teacher = build_unet("ddpm-celeba64", sample_size=resolution, in_channels=3, seed=0).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    base_student = prune(teacher, defaults.STUDENT_RATIO, "magnitude").model
    print(f"  teacher {count_parameters(teacher):,} params, student {count_parameters(base_student):,} params")
    sched = make_ddpm_scheduler()
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1).to(device)
    noise = torch.randn(x0.shape, generator=g).to(device)
    t = torch.randint(0, defaults.NUM_TRAIN_TIMESTEPS, (batch,), generator=g).to(device)
    x_t = sched.add_noise(x0, noise, t)
    methods = (BASELINE, PAPER_METHOD)
    state = {}
    for method in methods:
        student = copy.deepcopy(base_student).to(device).train()
        feat = FeatureKD(teacher, student)
        opt = torch.optim.Adam(list(student.parameters()) + list(feat.parameters()), lr=defaults.LEARNING_RATE)
        state[method] = (student, feat, opt, [], [])
    # The methods alternate within each repeat, and which goes first flips every repeat, so
    # that load from elsewhere and order effects hit both alike.
    for i in range(repeats + 1):  # the first repeat warms up
        for method in methods if i % 2 else methods[::-1]:
            student, feat, opt, step_times, loss_times = state[method]
            feat.enabled = True
            state[methods[1 - methods.index(method)]][1].enabled = False  # only this student's hooks record
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                u = teacher(x_t, t).sample
            s = student(x_t, t).sample
            _sync(device)
            t1 = time.perf_counter()
            kd = outkd(s, u) if method == BASELINE else lift_place(s, u, group_size=defaults.GROUP_SIZE).loss
            _sync(device)
            t2 = time.perf_counter()
            loss = diffusion_loss(s, noise) + kd + defaults.LAMBDA_FEAT * feat.loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), defaults.GRAD_CLIP)
            opt.step()
            _sync(device)
            t3 = time.perf_counter()
            if i:
                step_times.append(t3 - t0)
                loss_times.append(t2 - t1)
    out: dict[str, float] = {}
    for method in methods:
        _, feat, _, step_times, loss_times = state[method]
        feat.remove()
        out[f"{method} step"] = statistics.median(step_times)
        out[f"{method} loss"] = statistics.median(loss_times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {device}, batch {args.batch}, median of {args.repeats}")
    for res in args.resolutions:
        print(f"{res}x{res}:")
        r = bench(res, args.repeats, args.batch, device)
        for key, value in r.items():
            print(f"  {key:28s} {1000 * value:10.1f} ms")
        step_ratio = r[f"{PAPER_METHOD} step"] / r[f"{BASELINE} step"]
        loss_ratio = r[f"{PAPER_METHOD} loss"] / r[f"{BASELINE} loss"]
        print(f"  step ratio {PAPER_METHOD} / {BASELINE} = {step_ratio:.4f}")
        print(f"  loss ratio lift+place / outkd               = {loss_ratio:.2f}")
        print(f"  LIFT+PLACE loss share of its step           = "
              f"{100 * r[f'{PAPER_METHOD} loss'] / r[f'{PAPER_METHOD} step']:.2f}%")


if __name__ == "__main__":
    main()
