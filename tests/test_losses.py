"""LIFT / PLACE / OutKD / FeatKD against the contract (docs/method.md), property by property."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable

import pytest
import torch

from liftplace.defaults import LIFT_EPS
from liftplace.losses import FeatureKD, diffusion_loss, lift_place, outkd

torch.set_default_dtype(torch.float32)


def reference_lift_place(s, u, *, K, coarse="l1", curriculum=True, reduction="sum", eps=1e-7, ablation=None):
    """A deliberately naive, loop-based reading of the contract, independent of the library."""
    B, C, H, W = s.shape
    N = H * W
    K = N if K is None else K
    G = N // K
    coarse_b, fine_b = [], []
    all_b1, all_b0 = [], []
    for b in range(B):
        cb = 0.0
        fb = 0.0
        for c in range(C):
            sv = s[b, c].reshape(-1)
            uv = u[b, c].reshape(-1)
            err = [float((uv[i] - sv[i]).detach() ** 2) for i in range(N)]
            order = sorted(range(N), key=lambda i: err[i])
            for g in range(G):
                idx = order[g * K : (g + 1) * K]
                sk = torch.stack([sv[i] for i in idx])
                uk = torch.stack([uv[i] for i in idx])
                ms = sum(sk) / K
                mu = sum(uk) / K
                var = sum((x - ms) ** 2 for x in sk) / K
                cov = sum((sk[i] - ms) * (uk[i] - mu) for i in range(K)) / K
                b1 = cov / (var + eps)
                b0 = mu - b1 * ms
                all_b1.append(b1)
                all_b0.append(b0)
                d = (lambda x: abs(x)) if coarse == "l1" else (lambda x: x * x)
                cb = cb + K * (d(b1 - 1) + d(b0))
                b1d, b0d = b1.detach(), b0.detach()
                fb = fb + sum((b1d * sk[i] + b0d - uk[i]) ** 2 for i in range(K))
        coarse_b.append(cb)
        fine_b.append(fb)
    gap = sum(abs(float(x.detach()) - 1) for x in all_b1) / len(all_b1)
    gap += sum(abs(float(x.detach())) for x in all_b0) / len(all_b0)
    w = 1.0 - min(1.0, gap) if curriculum else 1.0
    if ablation == "coarse":
        per = coarse_b
    elif ablation == "fine":
        per = list(fine_b)  # the fine term alone, unweighted
    else:
        per = [c + w * f for c, f in zip(coarse_b, fine_b, strict=True)]
    scale = 1.0 if reduction == "sum" else 1.0 / (C * N)
    loss = sum(per) / B * scale
    return loss, sum(coarse_b) / B * scale, sum(fine_b) / B * scale, w


def _pair(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(shape, generator=g, dtype=dtype)
    u = 0.7 * s + 0.3 * torch.randn(shape, generator=g, dtype=dtype) + 0.1
    return s, u


# --- agreement with the naive reference over many settings -----------------------------------

CASES = [
    case
    for case in itertools.product(
        [(2, 1, 4, 4), (1, 3, 4, 8), (3, 2, 8, 8)],
        [None, 4, 16],
        ["l1", "l2"],
        ["sum", "mean"],
        [None, "coarse", "fine"],
        [True, False],
    )
    if case[1] is None or (case[0][2] * case[0][3]) % case[1] == 0  # K must divide H*W (tested elsewhere)
]


@pytest.mark.parametrize("shape,K,coarse,reduction,ablation,curriculum", CASES)
def test_matches_naive_reference(shape, K, coarse, reduction, ablation, curriculum):
    s, u = _pair(shape, seed=hash((shape, K)) % 1000)
    s1 = s.clone().requires_grad_(True)
    s2 = s.clone().requires_grad_(True)
    out = lift_place(s1, u, group_size=K, coarse=coarse, curriculum=curriculum, reduction=reduction, ablation=ablation)
    ref_loss, ref_coarse, ref_fine, ref_w = reference_lift_place(
        s2, u, K=K, coarse=coarse, curriculum=curriculum, reduction=reduction, ablation=ablation
    )
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out.coarse, ref_coarse.detach(), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out.fine, ref_fine.detach(), rtol=1e-9, atol=1e-10)
    assert out.weight == pytest.approx(ref_w, abs=1e-12)
    out.loss.backward()
    ref_loss.backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-8, atol=1e-10)


def test_output_fields_and_shapes():
    s, u = _pair((2, 3, 8, 8))
    out = lift_place(s, u, group_size=16)
    assert out.loss.dim() == 0 and out.coarse.dim() == 0 and out.fine.dim() == 0
    assert isinstance(out.weight, float)
    assert out.slope.shape == (2, 3, 4) and out.intercept.shape == (2, 3, 4)
    assert not out.slope.requires_grad and not out.intercept.requires_grad
    lift = lift_place(s, u, group_size=None)
    assert lift.slope.shape == (2, 3, 1)


# --- the contract's nine properties -------------------------------------------------------------


@pytest.mark.parametrize("K", [None, 4, 16])
def test_property1_identical_inputs(K):
    s = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    # Exact with eps = 0; with the default eps, beta1 = var / (var + eps) is 1 up to eps / var.
    exact = lift_place(s, s.clone(), group_size=K, eps=0.0)
    torch.testing.assert_close(exact.slope, torch.ones_like(exact.slope), atol=1e-12, rtol=0)
    assert exact.loss.item() == pytest.approx(0.0, abs=1e-9)
    out = lift_place(s, s.clone(), group_size=K)
    torch.testing.assert_close(out.slope, torch.ones_like(out.slope), atol=1e-3, rtol=0)
    torch.testing.assert_close(out.intercept, torch.zeros_like(out.intercept), atol=1e-3, rtol=0)
    assert out.coarse.item() == pytest.approx(0.0, abs=0.05)
    assert out.fine.item() == pytest.approx(0.0, abs=1e-6)
    assert out.weight == pytest.approx(1.0, abs=1e-3)
    assert out.loss.item() == pytest.approx(0.0, abs=0.05)


@pytest.mark.parametrize("coarse", ["l1", "l2"])
@pytest.mark.parametrize("K", [None, 4, 16])
def test_property2_exact_affine_teacher(coarse, K):
    a, b = 1.7, -0.4
    B, C, H, W = 2, 3, 8, 8
    s = torch.randn(B, C, H, W, dtype=torch.float64)
    u = a * s + b
    out = lift_place(s, u, group_size=K, coarse=coarse, eps=0.0)
    torch.testing.assert_close(out.slope, torch.full_like(out.slope, a))
    torch.testing.assert_close(out.intercept, torch.full_like(out.intercept, b))
    assert out.fine.item() == pytest.approx(0.0, abs=1e-18)
    k = H * W if K is None else K
    G = H * W // k
    d = (lambda x: abs(x)) if coarse == "l1" else (lambda x: x * x)
    expected_per_sample = k * C * G * (d(a - 1) + d(b))
    assert out.coarse.item() == pytest.approx(expected_per_sample, rel=1e-9)


def test_property3_full_group_is_lift():
    s, u = _pair((2, 3, 4, 8))
    for kwargs in ({}, {"coarse": "l2"}, {"curriculum": False}, {"reduction": "mean"}):
        a = lift_place(s, u, group_size=32, **kwargs)
        b = lift_place(s, u, group_size=None, **kwargs)
        torch.testing.assert_close(a.loss, b.loss)
        torch.testing.assert_close(a.slope, b.slope)
        assert a.weight == b.weight


@pytest.mark.parametrize("K", [None, 4, 16])
def test_property4_position_permutation_invariance(K):
    s, u = _pair((2, 3, 8, 8), seed=3)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    sp = s.flatten(2)[..., perm].reshape(s.shape)
    up = u.flatten(2)[..., perm].reshape(u.shape)
    a = lift_place(s, u, group_size=K)
    b = lift_place(sp, up, group_size=K)
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.coarse, b.coarse)
    torch.testing.assert_close(a.fine, b.fine)
    assert a.weight == pytest.approx(b.weight)


def test_property5_weight_is_float_in_unit_interval():
    for scale in (0.0, 0.01, 1.0, 100.0):
        s, u = _pair((2, 2, 8, 8), seed=int(scale * 10))
        u = s + scale * (u - s)
        out = lift_place(s.requires_grad_(True), u)
        assert type(out.weight) is float
        assert 0.0 <= out.weight <= 1.0
    # Far from the identity the curriculum weight is 0; off, it is exactly 1.
    s = torch.randn(2, 2, 8, 8)
    assert lift_place(s, -5 * s + 3).weight == 0.0
    assert lift_place(s, -5 * s + 3, curriculum=False).weight == 1.0


def test_property6_fine_term_sends_no_gradient_through_coefficients():
    s, u = _pair((2, 2, 8, 8))
    s = s.requires_grad_(True)
    out = lift_place(s, u, group_size=16, curriculum=False)
    (g_fine,) = torch.autograd.grad(out.fine, s, retain_graph=True)
    # With detached coefficients the fine gradient is 2 * beta1 * residual at each position.
    order = torch.argsort((u - s.detach()).pow(2).flatten(2), dim=-1, stable=True)
    b1 = out.slope.repeat_interleave(16, dim=-1)
    b0 = out.intercept.repeat_interleave(16, dim=-1)
    s_sorted = torch.gather(s.detach().flatten(2), -1, order)
    u_sorted = torch.gather(u.flatten(2), -1, order)
    expected_sorted = 2 * b1 * (b1 * s_sorted + b0 - u_sorted) / s.shape[0]
    expected = torch.zeros_like(expected_sorted).scatter(-1, order, expected_sorted).reshape(s.shape)
    torch.testing.assert_close(g_fine, expected)
    # The coarse term, in contrast, does reach s through beta1 and beta0.
    (g_coarse,) = torch.autograd.grad(out.coarse, s)
    assert g_coarse.abs().sum() > 0


@pytest.mark.parametrize("ablation", [None, "coarse", "fine"])
def test_property7_mean_is_sum_over_chw(ablation):
    s, u = _pair((3, 2, 8, 8))
    a = lift_place(s, u, reduction="sum", ablation=ablation)
    b = lift_place(s, u, reduction="mean", ablation=ablation)
    chw = 2 * 8 * 8
    for name in ("loss", "coarse", "fine"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name) / chw)
    torch.testing.assert_close(outkd(s, u, reduction="mean"), outkd(s, u, reduction="sum") / chw)


def test_property8_teacher_gets_no_gradient():
    s, u = _pair((2, 2, 8, 8))
    s.requires_grad_(True)
    u.requires_grad_(True)
    lift_place(s, u).loss.backward()
    outkd(s, u).backward()
    assert u.grad is None
    assert s.grad is not None


@pytest.mark.parametrize("H,W,K", [(8, 8, 5), (6, 6, 16), (4, 4, 32)])
def test_property9_group_size_must_divide(H, W, K):
    s = torch.randn(1, 1, H, W)
    with pytest.raises(ValueError, match=rf"group_size.*K={K}.*{H}\*{W}"):
        lift_place(s, s, group_size=K)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"coarse": "l3"}, "coarse"),
        ({"reduction": "avg"}, "reduction"),
        ({"ablation": "both"}, "ablation"),
        ({"group_size": 0}, "group_size"),
        ({"group_size": 2.5}, "group_size"),
        ({"curriculum": "yes"}, "curriculum"),
        ({"eps": -1.0}, "eps"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, field):
    s = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match=rf"^{field}:"):
        lift_place(s, s, **kwargs)


def test_shape_errors():
    with pytest.raises(ValueError, match="teacher"):
        lift_place(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 4, 16))
    with pytest.raises(ValueError, match="student"):
        lift_place(torch.randn(8, 8), torch.randn(8, 8))


# --- gradient checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "K,coarse,ablation",
    [(None, "l2", None), (4, "l2", None), (4, "l1", None), (4, "l2", "fine"), (16, "l2", "coarse"),
     (4, "l1", "coarse")],
)
def test_gradcheck(K, coarse, ablation):
    s, u = _pair((2, 2, 4, 4), seed=7)
    # Keep every |beta1 - 1| and |beta0| away from 0 so the L1 kinks are not crossed by
    # finite differences, and the error ranking away from ties.
    u = 0.5 * s + 0.3 * u + 0.2
    x = s.clone().requires_grad_(True)

    # The loss with w fixed (curriculum off), and each term separately: w itself is a
    # plain number by contract, so a finite difference through it would not match.
    def loss(x):
        return lift_place(x, u, group_size=K, coarse=coarse, ablation=ablation, curriculum=False).loss

    def terms(x):
        out = lift_place(x, u, group_size=K, coarse=coarse, ablation=ablation)
        return out.coarse, out.fine

    assert torch.autograd.gradcheck(loss, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)
    assert torch.autograd.gradcheck(terms, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)
    assert torch.autograd.gradcheck(lambda x: outkd(x, u), (x,))


def test_curriculum_weight_is_not_differentiated():
    """With w treated as a constant, the loss gradient equals coarse' + w * fine'."""
    s, u = _pair((2, 2, 8, 8), seed=11)
    u = 0.9 * s + 0.05 * u
    s = s.requires_grad_(True)
    out = lift_place(s, u)
    (g_loss,) = torch.autograd.grad(out.loss, s, retain_graph=True)
    (g_coarse,) = torch.autograd.grad(out.coarse, s, retain_graph=True)
    (g_fine,) = torch.autograd.grad(out.fine, s)
    assert 0 < out.weight < 1
    torch.testing.assert_close(g_loss, g_coarse + out.weight * g_fine)


@pytest.mark.parametrize("curriculum", [True, False])
@pytest.mark.parametrize("K", [None, 16])
def test_fine_ablation_is_the_unweighted_fine_term(curriculum, K):
    """ablation="fine" is the fine term alone: w is not applied, with or without the curriculum."""
    s, u = _pair((2, 2, 8, 8), seed=11)
    u = 0.9 * s + 0.05 * u  # lines near the identity: 0 < w < 1, so a weighted loss would differ
    s = s.requires_grad_(True)
    out = lift_place(s, u, group_size=K, curriculum=curriculum, ablation="fine")
    full = lift_place(s, u, group_size=K, curriculum=curriculum)
    if curriculum:
        assert 0 < out.weight < 1 and out.weight == full.weight  # w is still computed and reported
    torch.testing.assert_close(out.loss, out.fine)
    torch.testing.assert_close(out.fine, full.fine)
    (g_loss,) = torch.autograd.grad(out.loss, s, retain_graph=True)
    (g_fine,) = torch.autograd.grad(full.fine, s)
    torch.testing.assert_close(g_loss, g_fine)


# --- vectorisation: the operators dispatched do not grow with the number of groups ---------------

FEW_GROUPS = ((1, 1, 8, 8), 16)  # (shape, K): 4 groups in all
MANY_GROUPS = ((4, 3, 16, 16), 16)  # 4 samples x 3 channels x 16 groups = 192 groups


def _dispatched_ops(loss_fn: Callable[..., torch.Tensor], shape: tuple[int, ...], group_size: int) -> Counter[str]:
    """The aten operators one forward and backward of `loss_fn` dispatch, by name.

    Only operators called from Python or by an autograd node count, not those an operator calls
    inside itself: those depend on tensor sizes (e.g. gather's backward fills its zeros with one
    more `aten::fill_` on a large tensor), not on how many times the loss calls into torch.
    """
    g = torch.Generator().manual_seed(0)
    s = torch.randn(shape, generator=g, requires_grad=True)
    u = torch.randn(shape, generator=g)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss_fn(s, u, group_size).backward()
    return Counter(
        e.name for e in prof.events()
        if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    )


def _op_scaling(loss_fn: Callable[..., torch.Tensor]) -> tuple[str, Counter[str]]:
    """("constant" or "scales", the operators dispatched more often with many groups than with few).

    A loss vectorised over batch, channel and group dispatches the same operators for 4 groups as
    for 192; a Python loop over any of the three dispatches more as it grows.
    """
    few = _dispatched_ops(loss_fn, *FEW_GROUPS)
    many = _dispatched_ops(loss_fn, *MANY_GROUPS)
    return ("scales" if many.total() > few.total() else "constant"), many - few


def _lift_place_loss(s: torch.Tensor, u: torch.Tensor, group_size: int) -> torch.Tensor:
    return lift_place(s, u, group_size=group_size).loss


def _per_group_loop_lift_place(s: torch.Tensor, u: torch.Tensor, group_size: int) -> torch.Tensor:
    """LIFT+PLACE without the curriculum (l1 coarse term, sum reduction) with a Python loop over
    the groups: the implementation the vectorisation check must flag."""
    u = u.detach()
    order = torch.argsort((u - s.detach()).pow(2).flatten(2), dim=-1, stable=True)
    s_sorted = torch.gather(s.flatten(2), -1, order)
    u_sorted = torch.gather(u.flatten(2), -1, order)
    per_sample = s.new_zeros(s.shape[0])
    for start in range(0, s_sorted.shape[-1], group_size):
        sk, uk = s_sorted[..., start : start + group_size], u_sorted[..., start : start + group_size]
        ds = sk - sk.mean(dim=-1, keepdim=True)
        beta1 = (ds * (uk - uk.mean(dim=-1, keepdim=True))).mean(dim=-1) / (ds.pow(2).mean(dim=-1) + LIFT_EPS)
        beta0 = uk.mean(dim=-1) - beta1 * sk.mean(dim=-1)
        coarse = group_size * ((beta1 - 1).abs() + beta0.abs())
        resid = beta1.detach().unsqueeze(-1) * sk + beta0.detach().unsqueeze(-1) - uk
        per_sample = per_sample + (coarse + resid.pow(2).sum(dim=-1)).sum(dim=-1)
    return per_sample.mean()


def test_no_python_loop_scaling():
    """Vectorised: 192 groups dispatch the same operators as 4, and a 64x64, 3-channel batch goes through."""
    verdict, extra = _op_scaling(_lift_place_loss)
    assert verdict == "constant", f"more operators with more groups: {dict(extra)}"
    s = torch.randn(4, 3, 64, 64, requires_grad=True)
    u = torch.randn(4, 3, 64, 64)
    out = lift_place(s, u, group_size=16)
    out.loss.backward()
    assert out.slope.shape == (4, 3, 64 * 64 // 16)
    assert torch.isfinite(s.grad).all()


def test_op_scaling_check_flags_a_per_group_loop():
    """The check of test_no_python_loop_scaling can fail: a per-group loop computing the same loss scales."""
    s, u = _pair((2, 3, 8, 8), seed=5)
    torch.testing.assert_close(_per_group_loop_lift_place(s, u, 16), lift_place(s, u, curriculum=False).loss)
    verdict, extra = _op_scaling(_per_group_loop_lift_place)
    assert verdict == "scales"
    assert extra["aten::mean"] > 0


# --- OutKD, diffusion loss -----------------------------------------------------------------------


def test_outkd_values():
    s, u = _pair((3, 2, 4, 4))
    expected = ((s - u) ** 2).sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(outkd(s, u), expected)
    torch.testing.assert_close(outkd(s, u, reduction="mean"), ((s - u) ** 2).mean())
    torch.testing.assert_close(diffusion_loss(s, u), expected)
    with pytest.raises(ValueError, match="^reduction:"):
        outkd(s, u, reduction="none")


# --- FeatKD ---------------------------------------------------------------------------------------


def test_featurekd_pairs_blocks_and_trains_adapters(tiny_teacher, narrow_student):
    teacher, student = tiny_teacher, narrow_student
    fkd = FeatureKD(teacher, student, layers="blocks")
    assert fkd.blocks == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
    # 1x1 adapters map student widths to teacher widths.
    ad = fkd.adapters["down_blocks__0"]
    assert ad.kernel_size == (1, 1) and ad.in_channels == 8 and ad.out_channels == 16
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        teacher(x, t)
    student(x, t)
    loss = fkd.loss()
    assert loss.dim() == 0 and loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in fkd.adapters.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    # Features are consumed: a second loss() without new forwards is an error, not a stale value.
    with pytest.raises(RuntimeError, match="no recorded features"):
        fkd.loss()


def test_featurekd_value_matches_manual_fitnet(tiny_teacher, narrow_student):
    teacher, student = tiny_teacher, narrow_student
    fkd = FeatureKD(teacher, student, blocks=["mid_block"], reduction="mean")
    feats = {}
    teacher.mid_block.register_forward_hook(lambda m, i, o: feats.__setitem__("t", o))
    student.mid_block.register_forward_hook(lambda m, i, o: feats.__setitem__("s", o))
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([1, 2])
    teacher(x, t)
    student(x, t)
    manual = ((fkd.adapters["mid_block"](feats["s"]) - feats["t"].detach()) ** 2).mean()
    torch.testing.assert_close(fkd.loss(), manual)


def test_featurekd_remove_and_pause(tiny_teacher, narrow_student):
    teacher, student = tiny_teacher, narrow_student
    fkd = FeatureKD(teacher, student)
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([3])
    with fkd.paused():
        teacher(x, t)
        student(x, t)
    with pytest.raises(RuntimeError):
        fkd.loss()
    fkd.remove()
    teacher(x, t)
    student(x, t)
    with pytest.raises(RuntimeError):
        fkd.loss()


def test_featurekd_bad_block_name(tiny_teacher, narrow_student):
    teacher, student = tiny_teacher, narrow_student
    with pytest.raises(ValueError, match="^blocks:"):
        FeatureKD(teacher, student, blocks=["nope"])
