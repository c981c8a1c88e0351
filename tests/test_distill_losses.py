"""DistiLLM-2's losses and the top-k teacher cache against independent references: NumPy float64
formulas with central finite differences, TRL's generalized_jsd_loss, torch's kl_div and cross_entropy.
No Ray, no models: random logits only."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dist_core.errors import ConfigError
from dist_core.posttrain import distill_losses as DL
from dist_core.posttrain import teacher_topk as TK
from dist_core.posttrain.distill_losses import distillm2_loss, skew_kl, skew_reverse_kl

B, T, V = 2, 4, 7


def _logits(seed, shape=(B, T, V), scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


MASK = torch.tensor([[False, True, True, True], [True, True, False, False]])


# ---------------------------------------------------------------- NumPy reference
def np_log_softmax(z):
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_seq_mean(tok, mask):
    return (tok * mask).sum(-1) / np.maximum(mask.sum(-1), 1)


def np_skl(zs, zt, mask, a):
    p, q = np.exp(np_log_softmax(zt)), np.exp(np_log_softmax(zs))
    return np_seq_mean((p * np.log(p / (a * p + (1 - a) * q))).sum(-1), mask)


def np_srkl(zs, zt, mask, a, z_fixed=None):
    """q inside the mixture comes from ``z_fixed`` (held constant for the finite differences)."""
    p, q = np.exp(np_log_softmax(zt)), np.exp(np_log_softmax(zs))
    qm = q if z_fixed is None else np.exp(np_log_softmax(z_fixed))
    return np_seq_mean((q * np.log(q / ((1 - a) * p + a * qm))).sum(-1), mask)


def np_kl(zs, zt, mask):
    p, q = np.exp(np_log_softmax(zt)), np.exp(np_log_softmax(zs))
    return np_seq_mean((p * np.log(p / q)).sum(-1), mask)


def np_rkl(zs, zt, mask):
    return np_kl(zt, zs, mask)


def central_diff(f, z, h=1e-6):
    g = np.zeros_like(z)
    for i in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[i] += h
        zm[i] -= h
        g[i] = (f(zp) - f(zm)) / (2 * h)
    return g


W = np.array([0.7, -1.3])  # weights on the two sequences: the gradient test sees each (B,) entry


def _torch_value_grad(fn, zs, zt, mask, **kw):
    s = zs.clone().requires_grad_(True)
    out = fn(s, zt, mask, **kw)
    (out * torch.as_tensor(W)).sum().backward()
    return out.detach().numpy(), s.grad.numpy()


# ---------------------------------------------------------------- SKL / SRKL
@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_skew_kl_matches_numpy_values_and_finite_difference_gradients(alpha):
    zs, zt, m = _logits(0), _logits(1), MASK.numpy()
    val, grad = _torch_value_grad(skew_kl, zs, zt, MASK, alpha=alpha)
    np.testing.assert_allclose(val, np_skl(zs.numpy(), zt.numpy(), m, alpha), rtol=1e-12, atol=1e-14)
    fd = central_diff(lambda z: W @ np_skl(z, zt.numpy(), m, alpha), zs.numpy())
    np.testing.assert_allclose(grad, fd, atol=1e-8)


@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_skew_reverse_kl_gradient_holds_q_fixed_inside_the_mixture(alpha):
    zs, zt, m = _logits(2), _logits(3), MASK.numpy()
    val, grad = _torch_value_grad(skew_reverse_kl, zs, zt, MASK, alpha=alpha)
    np.testing.assert_allclose(val, np_srkl(zs.numpy(), zt.numpy(), m, alpha), rtol=1e-12, atol=1e-14)
    z0 = zs.numpy()
    fd = central_diff(lambda z: W @ np_srkl(z, zt.numpy(), m, alpha, z_fixed=z0), z0)
    np.testing.assert_allclose(grad, fd, atol=1e-8)
    # Differentiating through the mixture too would give another gradient: the stop-gradient matters.
    fd_full = central_diff(lambda z: W @ np_srkl(z, zt.numpy(), m, alpha), z0)
    assert np.abs(fd_full - fd).max() > 1e-3


def test_alpha_limits_are_the_plain_kls_and_zero():
    zs, zt, m = _logits(4), _logits(5), MASK.numpy()
    np.testing.assert_allclose(skew_kl(zs, zt, MASK, 1e-8).numpy(), np_kl(zs.numpy(), zt.numpy(), m), rtol=1e-6)
    np.testing.assert_allclose(skew_reverse_kl(zs, zt, MASK, 1e-8).numpy(), np_rkl(zs.numpy(), zt.numpy(), m),
                               rtol=1e-6)
    np.testing.assert_allclose(skew_kl(zs, zt, MASK, 0.0).numpy(), np_kl(zs.numpy(), zt.numpy(), m), rtol=1e-12)
    for fn in (skew_kl, skew_reverse_kl):
        s = zs.clone().requires_grad_(True)
        out = fn(s, zt, MASK, 1.0)
        out.sum().backward()
        np.testing.assert_allclose(out.detach().numpy(), 0.0, atol=1e-14)
        assert torch.isfinite(s.grad).all()
    # SKL falls monotonically from KL(p‖q) to 0 as α goes from 0 to 1.
    values = torch.stack([skew_kl(zs, zt, MASK, a) for a in np.linspace(0, 1, 11)])
    assert bool((values[1:] <= values[:-1]).all())


def test_per_sequence_alpha_is_applied_row_by_row():
    zs, zt = _logits(6), _logits(7)
    both = skew_kl(zs, zt, MASK, torch.tensor([0.1, 0.6], dtype=torch.float64))
    assert float(both[0]) == pytest.approx(float(skew_kl(zs, zt, MASK, 0.1)[0]), rel=1e-12)
    assert float(both[1]) == pytest.approx(float(skew_kl(zs, zt, MASK, 0.6)[1]), rel=1e-12)
    with pytest.raises(ValueError, match="alpha"):
        skew_kl(zs, zt, MASK, 1.5)


@pytest.mark.parametrize("fn", [skew_kl, skew_reverse_kl, DL.forward_kl, DL.reverse_kl])
def test_masked_positions_contribute_nothing(fn):
    zs, zt = _logits(8), _logits(9)
    zs2, zt2 = zs.clone(), zt.clone()
    zs2[~MASK] = 50 * torch.randn_like(zs2[~MASK])
    zt2[~MASK] = float("inf")  # garbage, even non-finite, where the mask is False
    a, ga = _torch_value_grad(fn, zs, zt, MASK)
    b, gb = _torch_value_grad(fn, zs2, zt2, MASK)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ga, gb)
    assert np.all(ga[~MASK.numpy()] == 0)
    empty = torch.zeros(B, T, dtype=torch.bool)
    np.testing.assert_array_equal(fn(zs, zt, empty).numpy(), 0.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_the_float32_result(dtype):
    zs, zt = _logits(10, dtype=dtype), _logits(11, dtype=dtype)
    for fn in (skew_kl, skew_reverse_kl):
        half = fn(zs, zt, MASK)
        assert half.dtype == torch.float32
        torch.testing.assert_close(half, fn(zs.float(), zt.float(), MASK), rtol=1e-6, atol=1e-7)


def test_teacher_with_minus_inf_logits_gives_finite_losses_and_gradients():
    zs, zt = _logits(12), _logits(13)
    zt[..., -2:] = float("-inf")  # a padded vocabulary
    for fn in (skew_kl, skew_reverse_kl, DL.forward_kl):
        s = zs.clone().requires_grad_(True)
        out = fn(s, zt, MASK)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(s.grad).all()
    p = torch.softmax(zt[..., :-2], -1)
    np.testing.assert_allclose(DL.forward_kl(zs, zt, MASK).numpy(),
                               np_seq_mean((p * (p.log() - torch.log_softmax(zs, -1)[..., :-2])).sum(-1).numpy(),
                                           MASK.numpy()), rtol=1e-12)


@pytest.mark.parametrize("fn", [skew_kl, skew_reverse_kl])
def test_backward_keeps_two_full_size_tensors(fn):
    """Bytes saved for backward, by storage: log q and log p, each (N, V), plus index-sized scraps."""
    zs, zt = _logits(19, shape=(2, 16, 300)).requires_grad_(True), _logits(20, shape=(2, 16, 300))
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 10:] = False
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(zs, zt, mask).sum().backward()
    full = int(mask.sum()) * 300 * 8
    assert 2 * full <= sum(storages.values()) <= 2 * full + 64 * int(mask.numel())


# ---------------------------------------------------------------- baselines against libraries
def _trl_jsd():
    """``GKDTrainer.generalized_jsd_loss`` from the installed TRL, compiled from its source file.

    Importing ``trl.experimental.gkd`` pulls in transformers' whole Trainer stack (tens of seconds on two
    cores); the method is a pure staticmethod on torch and F, so its own text is taken and run unchanged.
    """
    import ast
    import importlib.util
    from pathlib import Path

    root = Path(importlib.util.find_spec("trl").origin).parent
    source = (root / "experimental/gkd/gkd_trainer.py").read_text()
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "GKDTrainer")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "generalized_jsd_loss")
    fn.decorator_list = []
    namespace = {"torch": torch, "F": F}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(root / "experimental/gkd/gkd_trainer.py"), "exec"),
         namespace)
    return namespace["generalized_jsd_loss"]


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_gkd_equals_trl_generalized_jsd_loss(beta):
    """TRL's reduction='batchmean' with labels is the token mean over the batch, at temperature 1; ours is the
    token mean per sequence, so TRL = Σ_b n_b·ours_b / Σ_b n_b. TRL's labels mark counted positions != -100."""
    zs, zt = _logits(14, dtype=torch.float32), _logits(15, dtype=torch.float32)
    labels = torch.where(MASK, torch.ones(B, T, dtype=torch.long), torch.full((B, T), -100))
    s1, s2 = zs.clone().requires_grad_(True), zs.clone().requires_grad_(True)
    trl = _trl_jsd()(s1, zt, labels=labels, beta=beta, temperature=1.0, reduction="batchmean")
    n = MASK.sum(-1).float()
    ours = (DL.generalized_jsd(s2, zt, MASK, beta) * n).sum() / n.sum()
    torch.testing.assert_close(ours, trl, rtol=1e-5, atol=1e-7)
    trl.backward()
    ours.backward()
    torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-4, atol=1e-7)


def test_kd_and_rkl_equal_torch_kl_div():
    zs, zt = _logits(16), _logits(17)
    lq, lp = torch.log_softmax(zs, -1), torch.log_softmax(zt, -1)
    fkl = F.kl_div(lq, lp, reduction="none", log_target=True).sum(-1)  # Σ p (log p − log q)
    rkl = F.kl_div(lp, lq, reduction="none", log_target=True).sum(-1)
    n = MASK.sum(-1)
    torch.testing.assert_close(DL.forward_kl(zs, zt, MASK), (fkl * MASK).sum(-1) / n, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(DL.reverse_kl(zs, zt, MASK), (rkl * MASK).sum(-1) / n, rtol=1e-12, atol=1e-14)
    # With a tiny skew, SKL is the same forward KL.
    torch.testing.assert_close(skew_kl(zs, zt, MASK, 1e-9), DL.forward_kl(zs, zt, MASK), rtol=1e-6, atol=1e-9)


def test_seqkd_equals_cross_entropy_per_sequence():
    zs = _logits(18)
    targets = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))
    ce = F.cross_entropy(zs.reshape(-1, V), torch.where(MASK, targets, -100).reshape(-1), ignore_index=-100,
                         reduction="none").reshape(B, T)
    torch.testing.assert_close(DL.sequence_nll(zs, targets, MASK), ce.sum(-1) / MASK.sum(-1), rtol=1e-12, atol=0)


# ---------------------------------------------------------------- DistiLLM-2 assembly, schedules, registry
def _sides(seed=20, dtype=torch.float64):
    zs_t, zt_t, zs_s, zt_s = (_logits(seed + i, dtype=dtype) for i in range(4))
    mask_s = torch.tensor([[True, True, True, False], [False, True, True, True]])
    g = torch.Generator().manual_seed(seed)
    tgt_t, tgt_s = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    return DL.Side(zs_t, MASK, zt_t, tgt_t), DL.Side(zs_s, mask_s, zt_s, tgt_s)


def test_distillm2_loss_is_the_weighted_sum_of_its_two_terms():
    tgo, sgo = _sides()
    for beta, a1, a2 in ((1.0, 0.1, 0.1), (1.3, 0.2, 0.05)):
        got = distillm2_loss(tgo.student_logits, tgo.teacher, tgo.mask, sgo.student_logits, sgo.teacher, sgo.mask,
                             alpha1=a1, alpha2=a2, beta=beta)
        skl = np_skl(tgo.student_logits.numpy(), tgo.teacher.numpy(), tgo.mask.numpy(), a1)
        srkl = np_srkl(sgo.student_logits.numpy(), sgo.teacher.numpy(), sgo.mask.numpy(), a2)
        assert float(got) == pytest.approx(np.mean((2 - beta) * skl + beta * srkl), rel=1e-12)


def test_beta_schedule_goes_from_one_to_one_and_a_half_over_the_first_half():
    assert [DL.beta_schedule(k, 100) for k in (0, 10, 25, 50, 80, 100)] == [1.0, 1.1, 1.25, 1.5, 1.5, 1.5]
    with pytest.raises(ValueError):
        DL.beta_schedule(0, 0)


def test_adaptive_alpha_keeps_the_mixture_gap_at_its_anchor_and_freezes_the_anchor():
    gap = torch.tensor([0.19, 0.5, 0.05, -0.1], dtype=torch.float64)
    a = DL.adaptive_alpha(gap, anchor=0.2, base_alpha=0.1)
    # Unclipped: (1−α)·gap = (1−α0)·A (up to the 1e-5 guard); above A, or negative: α0; far below A: 0.01.
    assert 0.01 < float(a[0]) < 0.1
    assert float((1 - a[0]) * (gap[0] + 1e-5)) == pytest.approx(0.9 * 0.2, rel=1e-12)
    assert float(a[1]) == pytest.approx(0.1) and float(a[2]) == 0.01 and float(a[3]) == pytest.approx(0.1)
    state = DL.AdaptiveAlphaState()
    state.alphas(gap, -gap, 0.1, 0.1)
    assert state.anchor_tgo == pytest.approx(float(gap.mean()))
    assert state.anchor_sgo == pytest.approx(-float(gap.mean()))
    state.alphas(gap * 3, gap, 0.1, 0.1)
    assert state.anchor_tgo == pytest.approx(float(gap.mean()))  # frozen after the first batch


def test_registry_runs_every_loss_and_matches_the_direct_functions():
    tgo, sgo = _sides()
    assert DL.names() == ["distillm_v1", "distillm_v2", "gkd", "kd", "rkl", "seqkd"]
    expected = {
        "kd": DL.forward_kl(tgo.student_logits, tgo.teacher, tgo.mask).mean(),
        "seqkd": DL.sequence_nll(tgo.student_logits, tgo.targets, tgo.mask).mean(),
        "rkl": DL.reverse_kl(sgo.student_logits, sgo.teacher, sgo.mask).mean(),
        "gkd": (DL.generalized_jsd(tgo.student_logits, tgo.teacher, tgo.mask, 0.9)
                + DL.generalized_jsd(sgo.student_logits, sgo.teacher, sgo.mask, 0.9)).mean(),
        "distillm_v1": (skew_reverse_kl(tgo.student_logits, tgo.teacher, tgo.mask)
                        + skew_reverse_kl(sgo.student_logits, sgo.teacher, sgo.mask)).mean(),
        "distillm_v2": distillm2_loss(tgo.student_logits, tgo.teacher, tgo.mask,
                                      sgo.student_logits, sgo.teacher, sgo.mask),
    }
    for name, want in expected.items():
        entry = DL.get(name)
        got = DL.distill_loss(name, tgo if entry.needs_tgo else None, sgo if entry.needs_sgo else None)
        assert float(got) == pytest.approx(float(want), rel=1e-12), name
    opts = DL.make_options("distillm_v2", gradual_beta=True)
    got = DL.distill_loss("distillm_v2", tgo, sgo, opts, DL.Progress(step=25, total_steps=100))
    want = distillm2_loss(tgo.student_logits, tgo.teacher, tgo.mask, sgo.student_logits, sgo.teacher, sgo.mask,
                          beta=1.25)
    assert float(got) == pytest.approx(float(want), rel=1e-12)


def test_registry_errors_name_the_valid_choices():
    tgo, sgo = _sides()
    with pytest.raises(ConfigError, match="valid: distillm_v1, distillm_v2, gkd, kd, rkl, seqkd"):
        DL.get("dpkd")
    with pytest.raises(ConfigError, match="valid: beta"):
        DL.make_options("gkd", alpha=0.1)
    with pytest.raises(ConfigError, match="SGO"):
        DL.distill_loss("rkl", tgo, None)
    with pytest.raises(ConfigError, match="alpha_state"):
        DL.distill_loss("distillm_v2", tgo, sgo, DL.make_options("distillm_v2", adaptive_alpha=True))


def test_adaptive_alpha_through_the_registry_uses_per_sequence_alphas():
    tgo, sgo = _sides()
    state = DL.AdaptiveAlphaState()
    opts = DL.make_options("distillm_v2", adaptive_alpha=True)
    got = DL.distill_loss("distillm_v2", tgo, sgo, opts, DL.Progress(alpha_state=state))

    def mean_prob(z, side):
        lp = np_log_softmax(z)
        tok = np.take_along_axis(lp, side.targets.numpy()[..., None], -1)[..., 0]
        return np.exp(np_seq_mean(tok, side.mask.numpy()))

    gap_t = mean_prob(tgo.teacher.numpy(), tgo) - mean_prob(tgo.student_logits.numpy(), tgo)
    gap_s = mean_prob(sgo.student_logits.numpy(), sgo) - mean_prob(sgo.teacher.numpy(), sgo)
    a1 = np.clip(1 - 0.9 * gap_t.mean() / (gap_t + 1e-5), 0.01, 0.1)
    a2 = np.clip(1 - 0.9 * gap_s.mean() / (gap_s + 1e-5), 0.01, 0.1)
    want = np.mean(np_skl(tgo.student_logits.numpy(), tgo.teacher.numpy(), tgo.mask.numpy(), a1[:, None, None])
                   + np_srkl(sgo.student_logits.numpy(), sgo.teacher.numpy(), sgo.mask.numpy(), a2[:, None, None]))
    assert float(got) == pytest.approx(want, rel=1e-10)
    assert state.anchor_tgo == pytest.approx(gap_t.mean(), rel=1e-10)


# ---------------------------------------------------------------- top-k teacher cache
TOPK_LOSSES = {"skew_kl": skew_kl, "skew_reverse_kl": skew_reverse_kl, "kd": DL.forward_kl, "rkl": DL.reverse_kl}


def test_topk_cache_holds_the_top_log_probs_and_the_remaining_mass():
    zt = _logits(30, shape=(B, T, 50), scale=3.0)
    c = TK.topk_teacher(zt, 5)
    lp = np_log_softmax(zt.numpy())
    order = np.argsort(-lp, -1)[..., :5]
    np.testing.assert_array_equal(c.index.numpy(), order)
    np.testing.assert_allclose(c.logp.numpy(), np.take_along_axis(lp, order, -1), rtol=1e-12)
    kept = np.exp(np.take_along_axis(lp, order, -1)).sum(-1)
    np.testing.assert_allclose(np.exp(c.log_rest.numpy()), 1 - kept, rtol=1e-10)
    rest_min = lp.min(-1)  # with k < V the smallest teacher probability is never kept
    np.testing.assert_allclose(c.log_min_rest.numpy(), rest_min, rtol=1e-12)
    full = TK.topk_teacher(zt, 50)
    assert float(full.log_rest.max()) == DL.LOG_FLOOR
    with pytest.raises(ConfigError, match="k=51"):
        TK.topk_teacher(zt, 51)


@pytest.mark.parametrize("name", list(TOPK_LOSSES))
def test_topk_with_k_equal_to_the_vocabulary_is_the_full_loss(name):
    zs, zt = _logits(31, dtype=torch.float32), _logits(32, dtype=torch.float32)
    fn = TOPK_LOSSES[name]
    cache = TK.topk_teacher(zt, V)
    s1, s2 = zs.clone().requires_grad_(True), zs.clone().requires_grad_(True)
    full, top = fn(s1, zt, MASK), fn(s2, cache, MASK)
    torch.testing.assert_close(top, full, rtol=1e-5, atol=1e-6)
    (full * torch.tensor([0.7, -1.3])).sum().backward()
    (top * torch.tensor([0.7, -1.3])).sum().backward()
    torch.testing.assert_close(s2.grad, s1.grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(TK.topk_error_bound(name, zs, cache, MASK).numpy(), 0.0, atol=1e-12)


@pytest.mark.parametrize("name", list(TOPK_LOSSES))
@pytest.mark.parametrize("k", [1, 4, 16])
def test_topk_error_stays_within_the_stated_bound(name, k):
    vocab = 64
    zs = _logits(33, shape=(3, 5, vocab), scale=2.0)
    zt = _logits(34, shape=(3, 5, vocab), scale=3.0)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, :2] = False
    cache = TK.topk_teacher(zt, k)
    fn = TOPK_LOSSES[name]
    gap = (fn(zs, zt, mask) - fn(zs, cache, mask)).numpy()
    bound = TK.topk_error_bound(name, zs, cache, mask).numpy()
    assert np.all(gap >= -1e-12), gap  # bucketing never raises a divergence
    assert np.all(gap <= bound + 1e-12), (gap, bound)
    assert np.all(bound < 1e3)  # and the bound is a finite, usable number
    if name in ("skew_kl", "skew_reverse_kl"):  # the cache-only forms: p_R log(1/(α p_R)) and (1−α) p_R / α
        p_r = np.exp(cache.log_rest.numpy())
        coarse = p_r * np.log(1 / (0.1 * p_r)) if name == "skew_kl" else 0.9 * p_r / 0.1
        assert np.all(bound <= np_seq_mean(coarse, mask.numpy()) + 1e-12)


def test_topk_bound_shrinks_as_k_grows():
    zs, zt = _logits(35, shape=(2, 6, 64)), _logits(36, shape=(2, 6, 64), scale=3.0)
    mask = torch.ones(2, 6, dtype=torch.bool)
    bounds = [float(TK.topk_error_bound("skew_kl", zs, TK.topk_teacher(zt, k), mask).mean()) for k in (1, 4, 16, 64)]
    assert bounds == sorted(bounds, reverse=True) and bounds[-1] == 0.0


def test_topk_teacher_through_the_registry_and_its_token_logps():
    tgo, sgo = _sides(dtype=torch.float32)
    ct, cs = TK.topk_teacher(tgo.teacher, V), TK.topk_teacher(sgo.teacher, V)
    t2 = DL.Side(tgo.student_logits, tgo.mask, ct, tgo.targets)
    s2 = DL.Side(sgo.student_logits, sgo.mask, cs, sgo.targets)
    for name in DL.names():
        full = DL.distill_loss(name, tgo, sgo)
        top = DL.distill_loss(name, t2, s2)
        assert float(top) == pytest.approx(float(full), rel=1e-5, abs=1e-6), name
    torch.testing.assert_close(ct.token_logps(tgo.targets, tgo.mask),
                               DL.token_logps(tgo.teacher, tgo.targets, tgo.mask), rtol=1e-5, atol=1e-6)
    small = TK.topk_teacher(tgo.teacher, 2)
    upper = small.token_logps(tgo.targets, tgo.mask)
    exact = DL.token_logps(tgo.teacher, tgo.targets, tgo.mask)
    assert bool((upper >= exact - 1e-6).all())  # a token outside the top-k gets an upper bound


def test_topk_cache_round_trips_through_safetensors(tmp_path):
    cache = TK.topk_teacher(_logits(37, shape=(2, 3, 20), dtype=torch.bfloat16), 4)
    path = tmp_path / "cache" / "topk-abc123.safetensors"
    TK.save_topk(path, cache, fingerprint="abc123")
    back = TK.load_topk(path, fingerprint="abc123")
    for f in ("logp", "index", "log_rest", "log_min_rest"):
        torch.testing.assert_close(getattr(back, f), getattr(cache, f), rtol=0, atol=0)
    assert back.logp.dtype == torch.float32 and back.index.dtype == torch.int32
    assert TK.stored_fingerprint(path) == "abc123"
    with pytest.raises(ConfigError, match="stale"):
        TK.load_topk(path, fingerprint="other")
    assert not list(path.parent.glob("*.tmp*"))
