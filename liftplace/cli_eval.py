"""The evaluation commands of the `liftplace` CLI: ``fid`` and ``table``.

`register(subparsers)` adds them to the main parser (liftplace/cli.py). Each command is called
as ``args.func(args, parser)`` and returns an exit code; a bad value ends through
``parser.error`` (message naming the flag, exit code 2). `main(argv)` runs them standalone.

    liftplace fid --model DIR --dataset digits --num-samples 1000 [--features digits|inception]
    liftplace fid --samples IMAGE_DIR --dataset digits
    liftplace table RUNS.csv [--format md|csv|latex] [--collapse-threshold FID]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from liftplace import defaults
from liftplace.cli import HelpFormatter, _existing_dir, number_type, run_commands
from liftplace.features import FEATURES, INCEPTION_WEIGHTS_ENV
from liftplace.fid import FID_NUM_SAMPLES
from liftplace.stats import COLLAPSE_FID, TABLE_FORMATS

__all__ = ["register", "main"]


def _int_at_least(minimum: int):
    return number_type(int, f"an integer >= {minimum}", lambda v: v >= minimum)


_finite_float = number_type(float, "a number (finite)", math.isfinite)


def register(subparsers) -> None:
    """Add the ``fid`` and ``table`` subcommands to an argparse subparsers object."""
    fmt = HelpFormatter
    p = subparsers.add_parser(
        "fid", help="FID of a model's samples (or a folder of images) against a dataset", formatter_class=fmt,
        description=(
            "FID between generated samples and a reference dataset through torch-fidelity, in a named feature "
            "space: 'digits' (our digits CNN, fid_digits) or 'inception' (inception-v3-compat, fid_inception; "
            f"local weights only: ${INCEPTION_WEIGHTS_ENV} or torch-fidelity's cache). Reference statistics are "
            "cached under $LIFTPLACE_CACHE_DIR/fid."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=_existing_dir, help="diffusers model folder (teacher or student) to sample")
    src.add_argument("--samples", type=_existing_dir, help="folder of generated images (PNG/JPEG) to score")
    p.add_argument("--dataset", default=defaults.DATASET, help="reference: 'digits' or a local image folder")
    p.add_argument("--num-samples", type=_int_at_least(2), default=None,
                   help=f"images to generate or read (default: {FID_NUM_SAMPLES} with --model, "
                        "every image with --samples)")
    p.add_argument("--features", choices=FEATURES, default=defaults.FID_FEATURES, help="feature space of the FID")
    p.add_argument("--seed", type=_int_at_least(0), default=defaults.SEED,
                   help="seed of the sampling noise (and KID subsets)")
    p.add_argument("--steps", type=_int_at_least(1), default=defaults.DDIM_STEPS, help="DDIM steps")
    p.add_argument("--batch-size", type=_int_at_least(1), default=defaults.SAMPLE_BATCH_SIZE,
                   help="images per sampling batch")
    p.add_argument("--resolution", type=_int_at_least(1), default=None,
                   help="resolution of the reference images (default: the samples' height)")
    p.add_argument("--kid", action="store_true", help="also compute KID")
    p.add_argument("--prc", action="store_true", help="also compute precision, recall and F-score")
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached reference statistics")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_fid)

    p = subparsers.add_parser(
        "table", help="five-seed stability table (paper Table 6 layout) from a runs CSV", formatter_class=fmt,
        description=(
            "Lay out runs (columns teacher, method, seed, fid_digits|fid_inception (or fid + features), "
            "optional status and teacher_params) as the paper's Table 6: per teacher Try 1..N, mean, sample std "
            "(ddof = 1) and collapse count; best mean per teacher marked."
        ),
    )
    p.add_argument("runs", type=Path, help="runs CSV file")
    p.add_argument("--format", choices=TABLE_FORMATS, default="md", help="output format")
    p.add_argument("--collapse-threshold", type=_finite_float, default=None,
                   help="an FID above this (or a diverged run) counts as a collapse (default: by the FID features, "
                        + ", ".join(f"{k} {v:g}" for k, v in COLLAPSE_FID.items()) + ")")
    p.add_argument("--features", choices=FEATURES, default=None,
                   help="feature space of a plain 'fid' column (default: from the CSV)")
    p.add_argument("--compare", nargs=2, metavar=("METHOD_A", "METHOD_B"), default=None,
                   help="also run Welch's t-test between two methods for every teacher (printed to stderr)")
    p.add_argument("--output", type=Path, default=None, help="write the table to this file (default: stdout)")
    p.set_defaults(func=_cmd_table)


def _cmd_fid(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from liftplace.features import InceptionWeightsMissing
    from liftplace.fid import DivergedSamplesError, compute_fid

    if args.model is not None and args.num_samples is None:
        args.num_samples = FID_NUM_SAMPLES
    source = args.model if args.model is not None else args.samples
    try:
        result = compute_fid(
            source, args.dataset, features=args.features, num_samples=args.num_samples, seed=args.seed,
            num_inference_steps=args.steps, batch_size=args.batch_size, resolution=args.resolution, kid=args.kid,
            prc=args.prc, device=args.device, cache=not args.no_cache, progress=not args.quiet,
        )
    except InceptionWeightsMissing as exc:
        parser.error(f"--features inception: {exc}")
    except DivergedSamplesError as exc:
        print(f"{'fid_' + args.features}: no value, {exc}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    print(result)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    return 0


def _cmd_table(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from liftplace.stats import table_from_csv

    try:
        table = table_from_csv(args.runs, features=args.features, collapse_threshold=args.collapse_threshold)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    text = table.render(args.format)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    if args.compare:
        a, b = args.compare
        for teacher in table.teachers:
            try:
                res = table.compare(a, b, teacher)
            except ValueError as exc:
                print(f"Welch {a} vs {b}, teacher {teacher}: {exc}", file=sys.stderr)
                continue
            print(f"Welch {a} vs {b}, teacher {teacher} ({table.metric}): mean {res.mean_a:.2f} vs "
                  f"{res.mean_b:.2f}, {res}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fid`` or ``table`` without the rest of the CLI (the `liftplace` command does the same)."""
    return run_commands(register, argv, "liftplace")


if __name__ == "__main__":
    sys.exit(main())
