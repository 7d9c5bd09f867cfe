"""FeatKD's share of the student's gradient: is lambda_feat * L_feat felt at all?

For the paper's method (L = lambda_diff L_diff + lambda_kd L_kd + lambda_feat L_feat), the
gradient of each weighted term over the student's parameters, its norm, and FeatKD's share:
||grad lambda_feat L_feat|| / ||grad L_total||, and against L_diff and L_kd. Both FeatKD hook
sets are measured (`--layers`): "sublayers" (every ResNet, attention and resampling conv,
bias-free adapters U(-0.005, 0.005), the LIFT and PLACE code's) and "blocks" (whole UNet blocks,
default-initialised adapters). Also printed: the adapters' own gradient norm, and the factor by
which clipping the joint gradient (student + adapters, as `distill` does) at `grad_clip` scales
the step.

    # digits 8x8: a digits-s teacher trained briefly, the student pruned at 0.9 (Taylor); shares at
    # initialisation and after 500 steps of the stability study's run (lr 1e-2, cosine over 4000 steps)
    python bench/featkd_share.py digits --teacher-steps 1500 --steps 500
    # the 78.7M CelebA 64x64 DDPM preset with random weights: the ratio at initialisation only
    python bench/featkd_share.py celeba --batch 2

Each measurement is one batch (`--batch`) with the run's loss exactly (the library's losses,
lambdas and FeatureKD, seeded as `distill` seeds them). A benchmark prints figures; it never
passes or fails.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from liftplace.methods import FEATKD_LAYER_SETS, METHODS, PAPER_METHOD  # noqa: E402

COLUMNS = ("setup", "layers", "hooks", "step", "L_diff", "L_kd", "L_feat", "‖g_diff‖", "‖g_kd‖", "‖g_feat‖",
           "feat/total", "feat/diff", "feat/kd", "‖g_adapt‖", "clip_scale")  # ‖ not |: a Markdown table


@dataclass
class Share:
    """The gradient norms of one measurement (over the student's parameters unless said)."""

    setup: str
    layers: str
    hooks: int
    step: int
    losses: tuple[float, float, float]  # L_diff, L_kd, L_feat (unweighted)
    g_diff: float  # ||grad lambda_diff L_diff||
    g_kd: float  # ||grad lambda_kd L_kd||
    g_feat: float  # ||grad lambda_feat L_feat||
    g_total: float  # ||grad L_total||
    g_adapters: float  # ||grad lambda_feat L_feat|| over the adapters
    clip_scale: float  # min(1, grad_clip / ||grad L_total|| over student + adapters)

    def row(self) -> list[str]:
        return [self.setup, self.layers, str(self.hooks), str(self.step), *(f"{v:.4g}" for v in self.losses),
                f"{self.g_diff:.3e}", f"{self.g_kd:.3e}", f"{self.g_feat:.3e}", _ratio(self.g_feat, self.g_total),
                _ratio(self.g_feat, self.g_diff), _ratio(self.g_feat, self.g_kd), f"{self.g_adapters:.3e}",
                f"{self.clip_scale:.3g}"]


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2e}" if b > 0 else "-"


def _norm(grads: list[torch.Tensor | None]) -> float:
    """The L2 norm of a list of gradients (None: no gradient), in float64."""
    return float(torch.sqrt(sum(((g.double() ** 2).sum() for g in grads if g is not None),
                                torch.zeros((), dtype=torch.double))))


def _batch(data: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, noise, t) of `n` images of `data`, fixed by `seed`."""
    from liftplace.schedulers import make_ddpm_scheduler

    g = torch.Generator().manual_seed(seed)
    x0 = data[torch.randint(0, data.shape[0], (n,), generator=g)]
    noise = torch.randn(x0.shape, generator=g)
    scheduler = make_ddpm_scheduler()
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=g)
    return scheduler.add_noise(x0, noise, t), noise, t


def measure(setup: str, step: int, teacher, student, feat, config, batch) -> Share:
    """FeatKD's share of the gradient of the run's loss on one batch."""
    from liftplace.losses import diffusion_loss, lift_place, outkd

    x_t, noise, t = batch
    lam_diff, lam_kd, lam_feat = config.lambdas
    with torch.no_grad():
        u = teacher(x_t, t).sample
    s = student(x_t, t).sample
    l_diff = diffusion_loss(s, noise, reduction=config.reduction)
    if config.spec.uses_lift:
        l_kd = lift_place(s, u, group_size=config.place_group_size, coarse=config.coarse,
                          curriculum=config.curriculum, reduction=config.reduction, ablation=config.ablation).loss
    else:
        l_kd = outkd(s, u, reduction=config.reduction)
    l_feat = feat.loss()
    params = [p for p in student.parameters() if p.requires_grad]
    n = len(params)
    terms = [lam_diff * l_diff, lam_kd * l_kd, lam_feat * l_feat]
    # each weighted term's gradient over the student's parameters, then (FeatKD only) the adapters'
    grads = [torch.autograd.grad(term, params + list(feat.parameters()), retain_graph=True, allow_unused=True)
             for term in terms]
    total = [sum((g[i] for g in grads if g[i] is not None), torch.zeros_like(p)) for i, p in enumerate(params)]
    adapters = list(grads[2][n:])
    losses = (float(l_diff.detach()), float(l_kd.detach()), float(l_feat.detach()))
    return Share(setup, feat.layers, len(feat.blocks), step, losses, *(_norm(list(g[:n])) for g in grads),
                 _norm(total), _norm(adapters), min(1.0, config.grad_clip / _norm(total + adapters)))


def feature_kd(teacher, student, config):
    """The run's FeatureKD, its adapters seeded as `distill` seeds them."""
    from liftplace.losses import FeatureKD

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return FeatureKD(teacher, student, layers=config.featkd_layers, reduction=config.reduction)


class _StopAt:
    """A training callback that ends the run after `step` steps (its checkpoint is then written)."""

    def __init__(self, step: int):
        self.step, self.done = step, 0

    def on_start(self, start_step: int, total_steps: int) -> None: ...

    def on_step(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        self.done = step

    def on_checkpoint(self, step: int, path: Path) -> None: ...

    def on_end(self, result) -> None: ...

    def should_stop(self) -> bool:
        return self.done >= self.step


def _digits_teacher(steps: int, seed: int):
    from liftplace.data import load_digits
    from liftplace.models import build_unet
    from liftplace.studies import STABILITY_TEACHER_PRESET, STABILITY_TEACHER_TRAIN
    from liftplace.training import train_teacher

    data = load_digits(STABILITY_TEACHER_TRAIN["resolution"])
    model = build_unet(STABILITY_TEACHER_PRESET, sample_size=data.shape[-1], seed=seed)
    t0 = time.perf_counter()
    result = train_teacher(model, data, steps=steps, lr=STABILITY_TEACHER_TRAIN["lr"],
                           batch_size=STABILITY_TEACHER_TRAIN["batch_size"], seed=seed, device="cpu")
    print(f"# teacher {STABILITY_TEACHER_PRESET}: {steps} steps, lr {STABILITY_TEACHER_TRAIN['lr']}, "
          f"final L_diff {result.last_metrics.get('loss_diff', float('nan')):.4g} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return result.ema_model.eval(), data


def run_digits(args: argparse.Namespace) -> list[Share]:
    """Digits 8x8: shares at initialisation and after `args.steps` steps of the stability study's run."""
    from liftplace.config import DistillConfig
    from liftplace.pruning import prune
    from liftplace.studies import STABILITY_OPTIONS
    from liftplace.training import distill

    teacher, data = _digits_teacher(args.teacher_steps, args.seed)
    for p in teacher.parameters():
        p.requires_grad_(False)
    pruned = prune(teacher, 0.9, "taylor", data=data, seed=args.seed).model
    batch = _batch(data, args.batch, args.seed + 7)
    shares: list[Share] = []
    for layers in args.layers:
        config = DistillConfig(method=args.method, seed=args.seed, steps=STABILITY_OPTIONS["steps"],
                               lr=STABILITY_OPTIONS["lr"], lr_schedule=STABILITY_OPTIONS["lr_schedule"],
                               batch_size=STABILITY_OPTIONS["batch_size"], student_ratio=None,
                               featkd_layers=layers, lambda_feat=args.lambda_feat)
        student = copy.deepcopy(pruned)
        feat = feature_kd(teacher, student, config)
        shares.append(measure("digits-s 8x8", 0, teacher, student, feat, config, batch))
        feat.remove()
        with tempfile.TemporaryDirectory() as tmp:
            distill(teacher, data=data, student=student, config=config, device="cpu", checkpoint_dir=tmp,
                    callbacks=[_StopAt(args.steps)])
            ckpt = torch.load(Path(tmp) / "last.pt", map_location="cpu", weights_only=False)
        feat = feature_kd(teacher, student, config)
        feat.load_state_dict(ckpt["extra"][0])  # the adapters as trained
        shares.append(measure("digits-s 8x8", int(ckpt["step"]), teacher, student, feat, config, batch))
        feat.remove()
        print(f"# {layers}: measured", flush=True)
    return shares


def run_celeba(args: argparse.Namespace) -> list[Share]:
    """The 78.7M CelebA 64x64 preset with random weights, its student pruned at 0.9 (magnitude)."""
    from liftplace.config import DistillConfig
    from liftplace.models import build_unet, count_parameters
    from liftplace.pruning import prune

    teacher = build_unet("ddpm-celeba64", sample_size=64, in_channels=3, seed=args.seed).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = prune(teacher, 0.9, "magnitude", seed=args.seed).model
    print(f"# ddpm-celeba64: teacher {count_parameters(teacher):,}, student {count_parameters(student):,} "
          "parameters (random weights; magnitude pruning at 0.9)", flush=True)
    g = torch.Generator().manual_seed(args.seed)
    data = torch.rand(args.batch, 3, 64, 64, generator=g) * 2 - 1  # stand-in images in [-1, 1]
    batch = _batch(data, args.batch, args.seed + 7)
    shares = []
    for layers in args.layers:
        config = DistillConfig(method=args.method, seed=args.seed, student_ratio=None, featkd_layers=layers,
                               lambda_feat=args.lambda_feat)
        feat = feature_kd(teacher, student, config)
        shares.append(measure("ddpm-celeba64 (random)", 0, teacher, student, feat, config, batch))
        feat.remove()
    return shares


def _table(shares: list[Share]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(s.row()) + " |" for s in shares]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("setup", choices=("digits", "celeba", "all"))
    parser.add_argument("--layers", nargs="+", choices=FEATKD_LAYER_SETS, default=list(FEATKD_LAYER_SETS))
    parser.add_argument("--method", choices=[m.name for m in METHODS.values() if m.featkd and m.kd != "none"],
                        default=PAPER_METHOD, help="a FeatKD method")
    parser.add_argument("--lambda-feat", type=float, default=None, help="default: the method's")
    parser.add_argument("--teacher-steps", type=int, default=1500, help="digits teacher training steps")
    parser.add_argument("--steps", type=int, default=500, help="digits student steps before the second measurement")
    parser.add_argument("--batch", type=int, default=None, help="images per measurement (digits 256, celeba 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shares: list[Share] = []
    if args.setup in ("digits", "all"):
        shares += run_digits(argparse.Namespace(**{**vars(args), "batch": args.batch or 256}))
    if args.setup in ("celeba", "all"):
        shares += run_celeba(argparse.Namespace(**{**vars(args), "batch": args.batch or 2}))
    print(_table(shares))
    return 0


if __name__ == "__main__":
    sys.exit(main())
