"""Distillation losses: LIFT, LIFT+PLACE, OutKD, FeatKD, and the DDPM loss.

`lift_place` implements the LIFT and PLACE contract exactly (docs/method.md; Han, Yeo,
Yoo, CVPR 2026). All terms are vectorised over
batch, channel and group: no Python loop over groups or channels.

Shapes: `student` and `teacher` are [B, C, H, W] noise predictions (pixels or latents).
Reductions: `"sum"` sums each sample over C*H*W and averages over the batch (pixel-space
DDPM codebases such as Diff-Pruning); `"mean"` averages over every element. For every
term, mean = sum / (C*H*W).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from liftplace import defaults
from liftplace.methods import FEATKD_LAYER_SETS, FEATKD_LAYERS

__all__ = [
    "LiftPlaceOutput",
    "lift_place",
    "outkd",
    "diffusion_loss",
    "FeatureKD",
    "default_feature_blocks",
    "sublayer_feature_modules",
    "feature_layers",
    "SUBLAYER_ADAPTER_INIT",
]

# Half-width of the uniform initialisation of the "sublayers" adapters (the LIFT and PLACE code's FitNet).
SUBLAYER_ADAPTER_INIT: float = 0.005


@dataclass
class LiftPlaceOutput:
    """What `lift_place` returns.

    loss: scalar tensor, the LIFT(+PLACE) loss with the ablation applied.
    coarse, fine: scalar tensors, the unweighted coarse and fine terms after reduction.
    weight: the adaptive curriculum weight w in [0, 1], a plain float (no gradient).
    slope, intercept: detached [B, C, G] tensors, the per-group beta1 and beta0.
    """

    loss: torch.Tensor
    coarse: torch.Tensor
    fine: torch.Tensor
    weight: float
    slope: torch.Tensor
    intercept: torch.Tensor


def _check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)!r}, got {value!r}")


def _check_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if not isinstance(student, torch.Tensor) or not isinstance(teacher, torch.Tensor):
        raise ValueError("student, teacher: both must be torch tensors")
    if student.dim() != 4:
        raise ValueError(f"student: expected a [B, C, H, W] tensor, got shape {tuple(student.shape)}")
    if student.shape != teacher.shape:
        raise ValueError(
            f"teacher: shape {tuple(teacher.shape)} differs from student shape {tuple(student.shape)}"
        )


def _reduce_per_sample(per_sample: torch.Tensor, reduction: str, numel_per_sample: int) -> torch.Tensor:
    """Batch-average a [B] vector of per-sample sums; `mean` divides by C*H*W too."""
    out = per_sample.mean()
    if reduction == "mean":
        out = out / numel_per_sample
    return out


def _check_lift_place(student: torch.Tensor, teacher: torch.Tensor, group_size: int | None, coarse: str,
                      reduction: str, ablation: str | None, curriculum: bool, eps: float) -> int:
    """Check `lift_place`'s arguments (ValueError naming the bad one); returns K, positions per group."""
    _check_pair(student, teacher)
    _check_choice("coarse", coarse, defaults.COARSE_DISTANCES)
    _check_choice("reduction", reduction, defaults.REDUCTIONS)
    _check_choice("ablation", ablation, defaults.ABLATIONS)
    if not isinstance(curriculum, bool):
        raise ValueError(f"curriculum: expected a bool, got {curriculum!r}")
    if not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps: expected a non-negative number, got {eps!r}")
    h, w = student.shape[-2:]
    n = h * w
    if group_size is None:
        return n
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size: expected a positive integer or None, got {group_size!r}")
    if n % group_size != 0:
        raise ValueError(
            f"group_size: K={group_size} does not divide H*W = {h}*{w} = {n}; "
            f"choose K among the divisors of {n} (or None for LIFT alone)"
        )
    return group_size


def _place_groups(student: torch.Tensor, teacher: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, H, W] predictions as [B, C, G, K] groups: with G > 1, positions ranked by the current error
    (PLACE: easiest first, per sample and channel), then cut into groups of K."""
    b, c, h, w = student.shape
    n = h * w
    g = n // k
    s = student.reshape(b, c, n)
    u = teacher.reshape(b, c, n)
    if g > 1:
        with torch.no_grad():
            order = torch.argsort((u - s.detach()) ** 2, dim=-1, stable=True)
        s = torch.gather(s, -1, order)
        u = torch.gather(u, -1, order)
    return s.reshape(b, c, g, k), u.reshape(b, c, g, k)


def _line_fit(s: torch.Tensor, u: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares line u ~ beta1 * s + beta0 per group ([B, C, G, K] in, [B, C, G] each out)."""
    mean_s = s.mean(dim=-1)
    mean_u = u.mean(dim=-1)
    ds = s - mean_s.unsqueeze(-1)
    var_s = (ds * ds).mean(dim=-1)
    cov = (ds * (u - mean_u.unsqueeze(-1))).mean(dim=-1)
    beta1 = cov / (var_s + eps)
    beta0 = mean_u - beta1 * mean_s
    return beta1, beta0


def _curriculum_weight(beta1: torch.Tensor, beta0: torch.Tensor) -> float:
    """w = 1 - min(1, mean |beta1 - 1| + mean |beta0|): the fine term's weight grows as the lines reach identity."""
    with torch.no_grad():
        gap = ((beta1 - 1).abs().mean() + beta0.abs().mean()).item()
    return 1.0 - min(1.0, gap) if gap == gap else 0.0  # a NaN gap stays visible in the loss


def lift_place(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    group_size: int | None = defaults.GROUP_SIZE,
    coarse: str = defaults.COARSE_DISTANCE,
    curriculum: bool = defaults.CURRICULUM,
    reduction: str = defaults.REDUCTION,
    eps: float = defaults.LIFT_EPS,
    ablation: str | None = None,
) -> LiftPlaceOutput:
    """LIFT with PLACE grouping between student and teacher noise predictions.

    Args:
        student: [B, C, H, W] student prediction s (receives gradients).
        teacher: [B, C, H, W] teacher prediction u (treated as a constant).
        group_size: K, positions per group. `None` is LIFT alone (K = H*W). H*W must
            be divisible by K.
        coarse: distance of the coarse term, "l1" (|.|) or "l2" ((.)^2).
        curriculum: use the adaptive weight w; False fixes w = 1.
        reduction: "sum" or "mean" (see the module docstring).
        eps: added to the group variance of s before dividing.
        ablation: None (coarse + w*fine), "coarse" (coarse only) or "fine" (the
            unweighted fine term alone, whatever `curriculum` says: w weighs the fine term
            only against the coarse one, as in the LIFT and PLACE code).
    """
    k = _check_lift_place(student, teacher, group_size, coarse, reduction, ablation, curriculum, eps)
    _, c, h, w = student.shape
    n = h * w
    s, u = _place_groups(student, teacher.detach(), k)
    beta1, beta0 = _line_fit(s, u, eps)  # [B, C, G] each

    if coarse == "l1":
        coarse_map = (beta1 - 1).abs() + beta0.abs()
    else:
        coarse_map = (beta1 - 1) ** 2 + beta0**2
    coarse_b = k * coarse_map.sum(dim=(1, 2))

    # Fine term: the coefficients are constants here, so s trains only through the residual.
    resid = beta1.detach().unsqueeze(-1) * s + beta0.detach().unsqueeze(-1) - u
    fine_b = (resid * resid).sum(dim=(1, 2, 3))

    weight = _curriculum_weight(beta1, beta0) if curriculum else 1.0
    if ablation == "coarse":
        loss_b = coarse_b
    elif ablation == "fine":
        loss_b = fine_b  # no coarse term to hand over from: w does not apply
    else:
        loss_b = coarse_b + weight * fine_b

    numel = c * n
    return LiftPlaceOutput(
        loss=_reduce_per_sample(loss_b, reduction, numel),
        coarse=_reduce_per_sample(coarse_b, reduction, numel),
        fine=_reduce_per_sample(fine_b, reduction, numel),
        weight=float(weight),
        slope=beta1.detach(),
        intercept=beta0.detach(),
    )


def outkd(student: torch.Tensor, teacher: torch.Tensor, *, reduction: str = defaults.REDUCTION) -> torch.Tensor:
    """Output KD: squared error between student and (detached) teacher, [B, C, H, W] -> scalar."""
    _check_pair(student, teacher)
    _check_choice("reduction", reduction, defaults.REDUCTIONS)
    diff = student - teacher.detach()
    per_sample = (diff * diff).flatten(1).sum(dim=1)
    return _reduce_per_sample(per_sample, reduction, diff[0].numel())


def diffusion_loss(
    prediction: torch.Tensor, noise: torch.Tensor, *, reduction: str = defaults.REDUCTION
) -> torch.Tensor:
    """The DDPM epsilon loss ||eps - s||^2 under the same reduction convention."""
    return outkd(prediction, noise, reduction=reduction)


def default_feature_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks FeatKD pairs by default in a diffusers UNet2DModel.

    Every down block, the mid block and every up block: the block structure that a
    Diff-Pruning student shares with its teacher.
    """
    names: list[str] = []
    for prefix in ("down_blocks", "up_blocks"):
        blocks = getattr(model, prefix, None)
        if blocks is not None:
            names.extend(f"{prefix}.{i}" for i in range(len(blocks)))
    if getattr(model, "mid_block", None) is not None:
        names.insert(len(getattr(model, "down_blocks", [])), "mid_block")
    if not names:
        raise ValueError("blocks: the model has no down_blocks/mid_block/up_blocks; name the blocks to hook")
    return names


def _block_sublayers(block: nn.Module, prefix: str) -> list[str]:
    """A diffusers block's ResNets and attentions in forward order, then its resampling convs."""
    names: list[str] = []
    attentions = getattr(block, "attentions", None) or []
    for i in range(len(block.resnets)):
        names.append(f"{prefix}.resnets.{i}")
        if i < len(attentions) and attentions[i] is not None:
            names.append(f"{prefix}.attentions.{i}")
    for kind in ("downsamplers", "upsamplers"):
        for j, sampler in enumerate(getattr(block, kind, None) or []):
            if isinstance(getattr(sampler, "conv", None), nn.Conv2d):  # a pooling resampler has nothing to learn
                names.append(f"{prefix}.{kind}.{j}.conv")
    return names


def _mid_sublayers(mid: nn.Module) -> list[str]:
    """The mid block in forward order: resnets.0, then (attentions.i, resnets.i+1) pairs."""
    names = ["mid_block.resnets.0"]
    attentions = list(getattr(mid, "attentions", None) or [])
    for i in range(1, len(mid.resnets)):
        if i - 1 < len(attentions) and attentions[i - 1] is not None:
            names.append(f"mid_block.attentions.{i - 1}")
        names.append(f"mid_block.resnets.{i}")
    return names


def sublayer_feature_modules(model: nn.Module) -> list[str]:
    """Names of the modules FeatKD pairs with `layers="sublayers"` in a diffusers UNet2DModel.

    Every ResNet block, every attention block and every down/up-sampling conv of the down
    blocks, the mid block and the up blocks, in forward order: the modules the LIFT and PLACE
    code hooks in the DDPM UNet of its Diff-Pruning experiments (41 for the CelebA 64x64 UNet).
    """
    names: list[str] = []
    for i, block in enumerate(getattr(model, "down_blocks", None) or []):
        names.extend(_block_sublayers(block, f"down_blocks.{i}"))
    mid = getattr(model, "mid_block", None)
    if mid is not None:
        names.extend(_mid_sublayers(mid))
    for i, block in enumerate(getattr(model, "up_blocks", None) or []):
        names.extend(_block_sublayers(block, f"up_blocks.{i}"))
    if not names:
        raise ValueError("blocks: the model has no down_blocks/mid_block/up_blocks; name the modules to hook")
    return names


def feature_layers(model: nn.Module, layers: str = "blocks") -> list[str]:
    """The module names FeatKD hooks for a hook set of `FEATKD_LAYER_SETS` ("blocks" or "sublayers")."""
    _check_choice("featkd_layers", layers, FEATKD_LAYER_SETS)
    return default_feature_blocks(model) if layers == "blocks" else sublayer_feature_modules(model)


def _adapter(student_channels: int, teacher_channels: int, layers: str) -> nn.Conv2d:
    """The 1x1 conv from a student feature to the teacher's width, initialised as the hook set says."""
    if layers == "blocks":
        return nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
    conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
    with torch.no_grad():
        conv.weight.uniform_(-SUBLAYER_ADAPTER_INIT, SUBLAYER_ADAPTER_INIT)
    return conv


def _first_tensor(output: object) -> torch.Tensor:
    # diffusers down blocks return (hidden_states, residuals); the others a tensor.
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot take a feature map from a block output of type {type(output).__name__}")


class FeatureKD(nn.Module):
    """FitNet feature distillation between matching blocks of a teacher and a student.

    Forward hooks on the named blocks record each model's block outputs on every
    forward pass. `loss()` (or calling the module) maps each student feature through a
    learned 1x1 conv adapter to the teacher's channel count and returns the squared
    error to the detached teacher feature, reduced like the other terms and summed over
    blocks. The adapters are this module's parameters: optimise them with the student
    and drop them afterwards.

    Args:
        teacher, student: models with the same block structure (e.g. a UNet2DModel
            and its Diff-Pruning student).
        blocks: dotted module names to pair; default `feature_layers(teacher, layers)`.
        layers: the hook set and its adapters. "blocks": whole down/mid/up blocks, adapters
            with bias and PyTorch's default initialisation. "sublayers": every ResNet,
            attention and resampling conv, bias-free adapters initialised
            U(-SUBLAYER_ADAPTER_INIT, SUBLAYER_ADAPTER_INIT), as the LIFT and PLACE code.
            Default `methods.FEATKD_LAYERS`. With explicit `blocks`, `layers` chooses the
            adapters only.
        sample_shape: (C, H, W) of a model input, used once to probe feature widths;
            default from a diffusers config (in_channels, sample_size).
        reduction: "sum" or "mean".
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        blocks: Sequence[str] | None = None,
        *,
        layers: str = FEATKD_LAYERS,
        sample_shape: tuple[int, int, int] | None = None,
        reduction: str = defaults.REDUCTION,
    ) -> None:
        super().__init__()
        _check_choice("reduction", reduction, defaults.REDUCTIONS)
        _check_choice("featkd_layers", layers, FEATKD_LAYER_SETS)
        self.reduction = reduction
        self.layers = layers
        self.blocks = list(blocks) if blocks is not None else feature_layers(teacher, layers)
        if not self.blocks:
            raise ValueError("blocks: name at least one block to hook")
        t_modules = dict(teacher.named_modules())
        s_modules = dict(student.named_modules())
        for name in self.blocks:
            if name not in t_modules:
                raise ValueError(f"blocks: the teacher has no module named {name!r}")
            if name not in s_modules:
                raise ValueError(f"blocks: the student has no module named {name!r}")
        self._teacher_feats: dict[str, torch.Tensor] = {}
        self._student_feats: dict[str, torch.Tensor] = {}
        self.enabled = True
        self._handles = []
        for name in self.blocks:
            self._handles.append(t_modules[name].register_forward_hook(self._hook(self._teacher_feats, name, True)))
            self._handles.append(s_modules[name].register_forward_hook(self._hook(self._student_feats, name, False)))

        t_ch, s_ch = self._probe(teacher, student, sample_shape)
        # ModuleDict keys cannot hold dots.
        self.adapters = nn.ModuleDict(
            {self._key(name): _adapter(s_ch[name], t_ch[name], layers) for name in self.blocks}
        )
        ref = next(student.parameters())
        self.adapters.to(device=ref.device, dtype=ref.dtype)

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def _hook(self, store: dict[str, torch.Tensor], name: str, detach: bool):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if not self.enabled:
                return
            feat = _first_tensor(output)
            store[name] = feat.detach() if detach else feat

        return hook

    @torch.no_grad()
    def _probe(
        self, teacher: nn.Module, student: nn.Module, sample_shape: tuple[int, int, int] | None
    ) -> tuple[dict[str, int], dict[str, int]]:
        if sample_shape is None:
            config = getattr(teacher, "config", None)
            try:
                size = config.sample_size
                size = size if isinstance(size, int) else size[0]
                sample_shape = (int(config.in_channels), int(size), int(size))
            except AttributeError:
                raise ValueError("sample_shape: the teacher has no diffusers config; give (C, H, W)") from None
        widths = []
        for model in (teacher, student):
            ref = next(model.parameters())
            x = torch.zeros((1, *sample_shape), device=ref.device, dtype=ref.dtype)
            t = torch.zeros((1,), device=ref.device, dtype=torch.long)
            was_training = model.training
            model.eval()
            model(x, t)
            model.train(was_training)
        for store in (self._teacher_feats, self._student_feats):
            widths.append({name: int(store[name].shape[1]) for name in self.blocks})
        self.clear()
        return widths[0], widths[1]

    def clear(self) -> None:
        """Forget the recorded features (done after every `loss()`)."""
        self._teacher_feats.clear()
        self._student_feats.clear()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Do not record features inside this block (e.g. while sampling)."""
        previous = self.enabled
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = previous

    def remove(self) -> None:
        """Remove the hooks from both models."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def loss(self) -> torch.Tensor:
        """Feature loss of the last teacher and student forward passes, a scalar tensor."""
        missing = [n for n in self.blocks if n not in self._teacher_feats or n not in self._student_feats]
        if missing:
            raise RuntimeError(
                f"FeatureKD: no recorded features for {missing}; run the teacher and the student forward first"
            )
        total = None
        for name in self.blocks:
            t_feat = self._teacher_feats[name]
            s_feat = self.adapters[self._key(name)](self._student_feats[name])
            if s_feat.shape != t_feat.shape:
                raise RuntimeError(
                    f"FeatureKD: block {name!r} gives student {tuple(s_feat.shape)} vs teacher {tuple(t_feat.shape)}"
                )
            diff = s_feat - t_feat
            per_sample = (diff * diff).flatten(1).sum(dim=1)
            term = _reduce_per_sample(per_sample, self.reduction, diff[0].numel())
            total = term if total is None else total + term
        self.clear()
        assert total is not None
        return total

    def forward(self) -> torch.Tensor:  # noqa: D102 - same as loss()
        return self.loss()
