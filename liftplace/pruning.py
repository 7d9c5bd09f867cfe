"""Students by structural pruning of a teacher UNet (Diff-Pruning, Fang et al., NeurIPS 2023).

`prune` removes a fraction `ratio` of the channels of every prunable layer of a diffusers
`UNet2DModel` with torch-pruning's dependency graph, scoring channels by a first-order Taylor
expansion of the DDPM loss over the early (low-noise) timesteps (Diff-Pruning) or by weight
magnitude. At ratio 0.9 about 1% of the parameters remain (widths scale by 0.1, so
parameters by about 0.1**2).

Pruning a diffusers UNet with torch-pruning's defaults leaves most of the network intact
and can break its forward pass; this module handles the known traps:

1. GroupNorm: torch-pruning treats a GroupNorm as a grouped layer and then only removes
   channels evenly from every norm group; at ratio 0.9 this rounds to "remove everything"
   and the whole coupled group (residual streams, skip concatenations) is skipped. Here the
   norms prune like plain per-channel layers and `num_groups` is re-chosen afterwards.
2. Attention heads: q/k/v/out inner widths are pruned freely and `heads` (with `inner_dim`
   and friends) is re-chosen so that it divides the new width, keeping the teacher's head
   size where the width allows it.
3. `Upsample2D`/`Downsample2D.channels` and `ResnetBlock2D.in_channels/out_channels` follow
   the pruned convolutions.
4. Every group keeps at least one channel (torch-pruning would otherwise skip a group whose
   kept width rounds to zero, leaving it unpruned).

A pruned UNet no longer matches its diffusers config; `pruned_layout` describes the pruned
widths (stored by `liftplace.models.save_unet`) and `apply_layout` rebuilds them on a fresh
`UNet2DModel.from_config(config)` (used by `liftplace.models.load_unet`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch_pruning as tp
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from liftplace import defaults
from liftplace.losses import diffusion_loss
from liftplace.models import count_parameters
from liftplace.schedulers import make_ddpm_scheduler

__all__ = ["PruneResult", "prune", "pruned_layout", "apply_layout", "LAYOUT_VERSION"]

LAYOUT_VERSION = 1


@dataclass
class PruneResult:
    """What `prune` returns.

    model: the pruned student, still a diffusers `UNet2DModel` (its `config` is the
        teacher's; the real widths are in `pruned_layout(model)`).
    params_before, params_after: parameter counts of the teacher and the student.
    remaining_fraction: params_after / params_before (about 0.01 at ratio 0.9).
    importance: "taylor" or "magnitude"; ratio: the channel pruning ratio used.
    """

    model: UNet2DModel
    params_before: int
    params_after: int
    remaining_fraction: float
    importance: str
    ratio: float


# --- layout: describe and rebuild pruned widths ------------------------------------------

# Non-parameter attributes the diffusers forward passes read; they must follow the weights.
_ATTENTION_ATTRS = ("heads", "sliceable_head_dim", "inner_dim", "inner_kv_dim", "query_dim", "out_dim", "scale")
_SAMPLER_ATTRS = ("channels", "out_channels")
_RESNET_ATTRS = ("in_channels", "out_channels")


def _describe(module: nn.Module) -> dict | None:
    """The shape-determining attributes of a module, JSON-serialisable; None for other types."""
    if isinstance(module, nn.Conv2d):
        return {
            "type": "Conv2d",
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "kernel_size": list(module.kernel_size),
            "stride": list(module.stride),
            "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
            "dilation": list(module.dilation),
            "groups": module.groups,
            "bias": module.bias is not None,
            "padding_mode": module.padding_mode,
        }
    if isinstance(module, nn.Linear):
        return {
            "type": "Linear",
            "in_features": module.in_features,
            "out_features": module.out_features,
            "bias": module.bias is not None,
        }
    if isinstance(module, nn.GroupNorm):
        return {
            "type": "GroupNorm",
            "num_groups": module.num_groups,
            "num_channels": module.num_channels,
            "eps": module.eps,
            "affine": module.affine,
        }
    if isinstance(module, Attention):
        return {"type": "Attention", **{a: getattr(module, a) for a in _ATTENTION_ATTRS}}
    if isinstance(module, Upsample2D):
        return {"type": "Upsample2D", **{a: getattr(module, a) for a in _SAMPLER_ATTRS}}
    if isinstance(module, Downsample2D):
        return {"type": "Downsample2D", **{a: getattr(module, a) for a in _SAMPLER_ATTRS}}
    if isinstance(module, ResnetBlock2D):
        return {"type": "ResnetBlock2D", **{a: getattr(module, a) for a in _RESNET_ATTRS}}
    return None


def _reference_unet(config) -> UNet2DModel:
    """`UNet2DModel.from_config(config)` without allocating real weights where possible."""
    try:
        with torch.device("meta"):
            return UNet2DModel.from_config(config)
    except Exception:  # an odd config that cannot build on meta: build it for real
        return UNet2DModel.from_config(config)


def pruned_layout(model: UNet2DModel) -> dict | None:
    """Describe the widths in which `model` differs from its own diffusers config.

    Returns None when every module matches `UNet2DModel.from_config(model.config)`;
    otherwise `{"version": 1, "modules": {name: description}}` for the differing modules,
    where a description holds the module type and its shape-determining attributes
    (Conv2d in/out channels, kernel, stride, ...; Linear in/out features; GroupNorm
    num_groups/num_channels; Attention heads/inner_dim/...; Upsample2D/Downsample2D
    channels; ResnetBlock2D in/out channels). The result is JSON-serialisable.

    Raises ValueError if a module of another type has parameters shaped differently from
    the config's (it could not be rebuilt).
    """
    reference = dict(_reference_unet(model.config).named_modules())
    modules: dict[str, dict] = {}
    for name, module in model.named_modules():
        ref = reference.get(name)
        if ref is None or type(ref) is not type(module):
            raise ValueError(f"model: module {name!r} ({type(module).__name__}) is not what its config builds")
        desc = _describe(module)
        if desc is None:
            own = {n: tuple(p.shape) for n, p in module.named_parameters(recurse=False)}
            theirs = {n: tuple(p.shape) for n, p in ref.named_parameters(recurse=False)}
            if own != theirs:
                raise ValueError(f"model: cannot describe the pruned widths of {name!r} ({type(module).__name__})")
            continue
        if desc != _describe(ref):
            modules[name] = desc
    if not modules:
        return None
    return {"version": LAYOUT_VERSION, "modules": modules}


def _build_like(desc: dict, old: nn.Module) -> nn.Module:
    """A new Conv2d / Linear / GroupNorm per `desc`, on the device and dtype of `old`."""
    ref = next(old.parameters(), None)
    factory = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
    kind = desc["type"]
    if kind == "Conv2d":
        padding = desc["padding"] if isinstance(desc["padding"], str) else tuple(desc["padding"])
        return nn.Conv2d(
            desc["in_channels"],
            desc["out_channels"],
            kernel_size=tuple(desc["kernel_size"]),
            stride=tuple(desc["stride"]),
            padding=padding,
            dilation=tuple(desc["dilation"]),
            groups=desc["groups"],
            bias=desc["bias"],
            padding_mode=desc["padding_mode"],
            **factory,
        )
    if kind == "Linear":
        return nn.Linear(desc["in_features"], desc["out_features"], bias=desc["bias"], **factory)
    if kind == "GroupNorm":
        return nn.GroupNorm(desc["num_groups"], desc["num_channels"], eps=desc["eps"], affine=desc["affine"], **factory)
    raise ValueError(f"layout: unknown module type {kind!r}")


def apply_layout(model: UNet2DModel, layout: dict) -> None:
    """Rebuild the modules of `model` in place to the widths of `layout` (from `pruned_layout`).

    `model` is normally a fresh `UNet2DModel.from_config(config)`; afterwards it accepts
    the pruned model's state dict with `load_state_dict(..., strict=True)`. Rebuilt layers
    are freshly initialised until the weights are loaded.
    """
    if not isinstance(layout, dict) or not isinstance(layout.get("modules"), dict):
        raise ValueError("layout: expected a dict with a 'modules' mapping (from pruned_layout)")
    if layout.get("version", LAYOUT_VERSION) != LAYOUT_VERSION:
        raise ValueError(f"layout: version {layout.get('version')!r} is not supported (expected {LAYOUT_VERSION})")
    for name, desc in layout["modules"].items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"layout: the model has no module named {name!r}") from None
        current = _describe(module)
        if current is None or current["type"] != desc.get("type"):
            raise ValueError(
                f"layout: module {name!r} is a {type(module).__name__}, the layout says {desc.get('type')}"
            )
        if desc["type"] in ("Conv2d", "Linear", "GroupNorm"):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, _build_like(desc, module))
        else:
            for key, value in desc.items():
                if key != "type":
                    setattr(module, key, value)


# --- pruning -----------------------------------------------------------------------------


class _AtLeastOneChannelPruner(tp.pruner.BasePruner):
    """torch-pruning's pruner, except that no group is ever pruned to zero channels.

    torch-pruning keeps int(width * (1 - ratio)) channels of a group; when that is 0 it asks
    to remove them all, the dependency check rejects the group and the group silently stays
    at full width. Used with round_to=1, this hook clamps the removal to width - 1.
    """

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        return max(0, min(super()._round_to(n_pruned, current_channels, round_to), current_channels - 1))


def _largest_divisor(n: int, cap: int) -> int:
    """The largest divisor of n that is <= cap (at least 1)."""
    for d in range(max(1, min(cap, n)), 0, -1):
        if n % d == 0:
            return d
    return 1


def _sync_attributes(model: UNet2DModel, norm_sizes: dict[nn.GroupNorm, int], head_dims: dict[Attention, int]) -> None:
    """Make the non-parameter attributes the diffusers forward reads follow the pruned weights.

    norm_sizes: channels per norm group before pruning; head_dims: attention head size before.
    """
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            # Keep the teacher's channels per group while the width allows; below that, fewer
            # groups (down to one, a LayerNorm over C*H*W), so every group keeps >= 1 channel.
            per_group = norm_sizes.get(module, module.num_channels // module.num_groups)
            cap = min(module.num_groups, max(1, module.num_channels // per_group))
            module.num_groups = _largest_divisor(module.num_channels, cap)
        elif isinstance(module, Attention):
            inner = module.to_q.out_features
            head_dim = head_dims.get(module, module.inner_dim // module.heads)
            heads = _largest_divisor(inner, min(module.heads, max(1, inner // head_dim)))
            module.heads = heads
            module.sliceable_head_dim = heads
            module.inner_dim = inner
            module.inner_kv_dim = module.to_k.out_features if module.to_k is not None else inner
            module.query_dim = module.to_q.in_features
            module.out_dim = module.to_out[0].out_features
            module.scale = (inner // heads) ** -0.5 if module.scale_qk else 1.0
        elif isinstance(module, (Upsample2D, Downsample2D)):
            conv = getattr(module, "conv", None)
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)):
                module.channels = conv.in_channels
                module.out_channels = conv.out_channels
        elif isinstance(module, ResnetBlock2D):
            module.in_channels = module.conv1.in_channels
            module.out_channels = module.conv2.out_channels


def _clone_unet(teacher: UNet2DModel) -> UNet2DModel:
    """An independent copy of a (possibly pruned) UNet: same config, widths and weights.

    Rebuilt from config + layout rather than deep-copied, so hooks (e.g. FeatureKD's) and
    other runtime state of the teacher are not carried over.
    """
    ref = next(teacher.parameters())
    clone = UNet2DModel.from_config(teacher.config)
    layout = pruned_layout(teacher)
    if layout:
        apply_layout(clone, layout)
    clone.load_state_dict(teacher.state_dict(), strict=True)
    clone.to(ref.device)
    if ref.dtype != next(clone.parameters()).dtype:  # only cast when needed: diffusers warns on every dtype cast
        clone.to(ref.dtype)
    return clone


def _check_args(
    teacher: UNet2DModel, ratio: float, importance: str, data: torch.Tensor | None, taylor_batches: int, batch_size: int
) -> None:
    if not isinstance(teacher, UNet2DModel):
        raise ValueError(f"teacher: expected a diffusers UNet2DModel, got {type(teacher).__name__}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0:
        raise ValueError(f"ratio: expected a pruning ratio strictly between 0 and 1, got {ratio!r}")
    if importance not in defaults.PRUNING_IMPORTANCES:
        raise ValueError(f"importance: expected one of {list(defaults.PRUNING_IMPORTANCES)!r}, got {importance!r}")
    if importance == "taylor":
        for name, value in (("taylor_batches", taylor_batches), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if importance == "taylor" and data is None:
        raise ValueError("data: taylor importance needs training images ([N, C, H, W] in [-1, 1]) to score channels")
    if data is not None:
        if not isinstance(data, torch.Tensor) or data.dim() != 4 or not data.is_floating_point():
            raise ValueError("data: expected a float tensor of shape [N, C, H, W]")
        if data.shape[0] < 1:
            raise ValueError("data: the tensor holds no images")
        if data.shape[1] != teacher.config.in_channels:
            raise ValueError(f"data: {data.shape[1]} channels, the teacher takes {teacher.config.in_channels}")
        lo, hi = float(data.min()), float(data.max())
        if lo < -1.0 - 1e-4 or hi > 1.0 + 1e-4:
            raise ValueError(f"data: values must lie in [-1, 1], found [{lo:.3g}, {hi:.3g}]")


def _example_inputs(model: UNet2DModel, data: torch.Tensor | None) -> dict:
    """A batch-1 input for tracing the dependency graph."""
    if data is not None:
        shape = (1, *data.shape[1:])
    else:
        size = model.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        shape = (1, model.config.in_channels, h, w)
    ref = next(model.parameters())
    return {
        "sample": torch.zeros(shape, device=ref.device, dtype=ref.dtype),
        "timestep": torch.ones((1,), dtype=torch.long, device=ref.device),
    }


def _accumulate_taylor_gradients(
    model: UNet2DModel, data: torch.Tensor, *, seed: int, batches: int, batch_size: int, progress: bool
) -> None:
    """Sum into `.grad` the gradients of the DDPM epsilon loss over early timesteps (Diff-Pruning).

    Timesteps are drawn from t < TAYLOR_MAX_TIMESTEP_FRACTION * T (low noise), where pruning
    errors hurt most; images, timesteps and noise come from a torch.Generator(seed).
    """
    scheduler = make_ddpm_scheduler()
    t_max = max(1, int(defaults.TAYLOR_MAX_TIMESTEP_FRACTION * scheduler.config.num_train_timesteps))
    gen = torch.Generator().manual_seed(int(seed))
    ref = next(model.parameters())
    n = data.shape[0]
    bs = max(1, min(int(batch_size), n))
    model.zero_grad(set_to_none=True)
    for b in range(int(batches)):
        idx = torch.randperm(n, generator=gen)[:bs]
        clean = data[idx].to(device=ref.device, dtype=ref.dtype)
        noise = torch.randn(clean.shape, generator=gen).to(device=ref.device, dtype=ref.dtype)
        timesteps = torch.randint(0, t_max, (bs,), generator=gen).to(ref.device)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        loss = diffusion_loss(model(noisy, timesteps).sample, noise, reduction="sum")
        loss.backward()  # gradients add up over the batches
        if progress:
            print(f"[prune] taylor batch {b + 1}/{batches}: loss {loss.item():.4g}", file=sys.stderr)


def _make_pruner(student: UNet2DModel, data: torch.Tensor | None, ratio: float, importance: str,
                 ignore_attention: bool) -> _AtLeastOneChannelPruner:
    """torch-pruning's pruner over `student`'s dependency graph, set up as Diff-Pruning prunes a UNet."""
    ignored: list[nn.Module] = [student.conv_out]  # the output keeps the image channels (Diff-Pruning)
    if ignore_attention:
        for attn in student.modules():
            if isinstance(attn, Attention):
                ignored.extend(m for m in (attn.to_q, attn.to_k, attn.to_v) if m is not None)
    if importance == "taylor":
        # multivariable=False: sum_i |w_i * g_i| per channel, Diff-Pruning's accumulated-error score.
        scorer = tp.importance.TaylorImportance(multivariable=False)
    else:
        scorer = tp.importance.MagnitudeImportance(p=2)
    pruner = _AtLeastOneChannelPruner(
        student,
        _example_inputs(student, data),
        importance=scorer,
        pruning_ratio=ratio,
        ignored_layers=ignored,
        round_to=1,  # activates the at-least-one-channel clamp; multiples of 1 change nothing else
        # Fresh dicts: torch-pruning's defaults are shared mutable dicts it writes into.
        in_channel_groups={},
        out_channel_groups={},
        num_heads={},
    )
    # Trap 1: without this, every group holding a GroupNorm is pruned per norm group and,
    # at high ratios, skipped entirely; num_groups is re-chosen in _sync_attributes instead.
    for groups in (pruner.in_channel_groups, pruner.out_channel_groups):
        for module in [m for m in groups if isinstance(m, nn.GroupNorm)]:
            del groups[module]
    return pruner


def prune(
    teacher: UNet2DModel,
    ratio: float,
    importance: str = defaults.PRUNING_IMPORTANCE,
    *,
    data: torch.Tensor | None = None,
    seed: int = 0,
    taylor_batches: int = defaults.TAYLOR_BATCHES,
    batch_size: int = 64,
    ignore_attention: bool = False,
    progress: bool = False,
) -> PruneResult:
    """A Diff-Pruning student: `teacher` with a fraction `ratio` of every layer's channels removed.

    Args:
        teacher: a diffusers UNet2DModel (possibly itself pruned); never modified.
        ratio: fraction of channels removed from each prunable group, in (0, 1); 0.9 leaves
            about 1% of the parameters. Every group keeps at least one channel; `conv_out`
            keeps its output channels (the image channels).
        importance: "taylor" (|w * dL/dw| summed over the DDPM loss of early timesteps, as
            Diff-Pruning) or "magnitude" (L2 norm of the weights).
        data: [N, C, H, W] float images in [-1, 1]; required for "taylor".
        seed: seeds the Taylor batches (images, noise, timesteps): same seed, same student.
        taylor_batches: batches of the diffusion loss accumulated for the Taylor scores.
        batch_size: images per Taylor batch (at most N).
        ignore_attention: leave the attention q/k/v inner widths unpruned (their input and
            output widths still follow the residual stream).
        progress: print progress lines to stderr.

    Returns:
        PruneResult with the student (in eval mode, on the teacher's device and dtype, no
        gradients stored) and its parameter counts.
    """
    _check_args(teacher, ratio, importance, data, taylor_batches, batch_size)
    ratio = float(ratio)
    student = _clone_unet(teacher)
    params_before = count_parameters(teacher)
    for p in student.parameters():
        p.requires_grad_(True)

    norm_sizes = {m: m.num_channels // m.num_groups for m in student.modules() if isinstance(m, nn.GroupNorm)}
    head_dims = {m: m.inner_dim // m.heads for m in student.modules() if isinstance(m, Attention)}
    if progress:
        print(f"[prune] tracing the dependency graph ({importance}, ratio {ratio})", file=sys.stderr)
    pruner = _make_pruner(student, data, ratio, importance, ignore_attention)

    if importance == "taylor":
        assert data is not None
        _accumulate_taylor_gradients(
            student, data, seed=seed, batches=taylor_batches, batch_size=batch_size, progress=progress
        )

    n_groups = 0
    for group in pruner.step(interactive=True):
        group.prune()
        n_groups += 1
    del pruner
    _sync_attributes(student, norm_sizes, head_dims)
    student.zero_grad(set_to_none=True)
    student.eval()

    params_after = count_parameters(student)
    if progress:
        print(
            f"[prune] pruned {n_groups} groups: {params_before:,} -> {params_after:,} parameters "
            f"({params_after / params_before:.2%} remain)",
            file=sys.stderr,
        )
    return PruneResult(
        model=student,
        params_before=params_before,
        params_after=params_after,
        remaining_fraction=params_after / params_before,
        importance=importance,
        ratio=ratio,
    )
