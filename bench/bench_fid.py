"""Benchmark: generate and score 1,000 digits samples with a small student on the CPU.

Prints the time to sample (DDIM, the paper's 100 steps by default) and the time to score
(fid_digits through torch-fidelity), with the reference statistics both computed afresh and
read from the cache. Never passes or fails on time.

    .venv/bin/python bench/bench_fid.py [--num-samples 1000] [--steps 100] [--threads 1]

Measured (2-core shared CPU VM, torch 2.14.1, 1 thread, 45K-parameter student, 100 DDIM steps):
sampling 1,000 images 22.9 s (44 images/s); scoring fid_digits 0.20 s with the reference
statistics computed, 0.08 s with them cached; 23 s in all. With 2 threads on the same busy
machine sampling took 276 s (thread oversubscription).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=1000, help="samples to generate and score")
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps")
    parser.add_argument("--batch-size", type=int, default=250, help="images per sampling batch")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: tiny tensors gain nothing from more, and a busy machine "
                             "makes several threads fight for cores)")
    parser.add_argument("--widths", default="8,16", help="block widths of the student (tiny preset layout)")
    args = parser.parse_args()

    os.environ.setdefault("LIFTPLACE_CACHE_DIR", tempfile.mkdtemp(prefix="liftplace-bench-"))
    import torch
    from diffusers import UNet2DModel

    from liftplace.features import ensure_digits_classifier
    from liftplace.fid import compute_fid
    from liftplace.models import build_unet, count_parameters
    from liftplace.sampling import sample

    torch.set_num_threads(args.threads)
    cfg = dict(build_unet("tiny").config)
    cfg["block_out_channels"] = tuple(int(w) for w in args.widths.split(","))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        student = UNet2DModel.from_config(cfg).eval()

    t = time.perf_counter()
    ensure_digits_classifier()
    t_clf = time.perf_counter() - t

    t = time.perf_counter()
    images = sample(student, args.num_samples, seed=0, num_inference_steps=args.steps, batch_size=args.batch_size)
    t_sample = time.perf_counter() - t

    t = time.perf_counter()
    cold = compute_fid(images, "digits", cache=False)
    t_cold = time.perf_counter() - t
    compute_fid(images, "digits")  # fills the cache
    t = time.perf_counter()
    warm = compute_fid(images, "digits")
    t_warm = time.perf_counter() - t
    assert abs(cold.fid - warm.fid) < 1e-6 * max(1.0, abs(cold.fid))

    print(f"device: CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{args.threads} threads")
    print(f"student: UNet2DModel widths {cfg['block_out_channels']}, {count_parameters(student):,} parameters "
          "(untrained: timing only)")
    print(f"digits classifier (train or load from cache): {t_clf:.2f} s")
    print(f"sampling {args.num_samples} images, DDIM {args.steps} steps, batch {args.batch_size}: {t_sample:.2f} s "
          f"({args.num_samples / t_sample:.1f} images/s)")
    print(f"scoring {warm.metric_name}, reference statistics computed: {t_cold:.2f} s")
    print(f"scoring {warm.metric_name}, reference statistics cached:   {t_warm:.2f} s")
    print(f"total (sample + score, cached reference): {t_sample + t_warm:.2f} s; {warm}")


if __name__ == "__main__":
    main()
