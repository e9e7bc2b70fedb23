"""Activation statistics, OSTQuant's QSUR and KL-Top: closed forms worked out here, the geometric
properties the OSTQuant paper states (rotation keeps the ellipsoid volume, whitening maximises QSUR),
and KL-Top's blindness to the FP model's tail."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from surgeon.passes.equiv.linalg import random_orthogonal
from surgeon.passes.equiv.stats import (
    activation_stats,
    chi2_quantile,
    kl_top_loss,
    log_qsur,
    log_qsur_bound,
    qsur,
    qsur_per_dim,
    qsur_volumes,
)

torch.set_num_threads(1)
FAST = settings(max_examples=25, deadline=None)


def _gauss(n, d, seed=0):
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------
# chi-square quantile
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.01, 0.5, 0.9, 0.99, 0.999999])
def test_chi2_quantile_closed_forms(p):
    # df = 2 is an exponential with mean 2: F(x) = 1 - exp(-x/2).
    assert chi2_quantile(p, 2) == pytest.approx(-2 * math.log1p(-p), rel=1e-11)
    # df = 1 is a squared standard normal: x = Phi^{-1}((1 + p)/2)^2 = 2 erfinv(p)^2.
    z2 = 2 * float(torch.special.erfinv(torch.tensor(p, dtype=torch.float64))) ** 2
    assert chi2_quantile(p, 1) == pytest.approx(z2, rel=1e-10)


def test_chi2_quantile_matches_scipy_for_wide_layers():
    stats = pytest.importorskip("scipy.stats")
    for df in (3, 64, 768, 4096, 11008):
        for p in (0.5, 0.99):
            assert chi2_quantile(p, df) == pytest.approx(stats.chi2.ppf(p, df), rel=1e-8)


@pytest.mark.parametrize("p,df", [(0.0, 4), (1.0, 4), (0.5, 0), (0.5, 2.5)])
def test_chi2_quantile_rejects_bad_arguments(p, df):
    with pytest.raises(ValueError, match="chi2_quantile"):
        chi2_quantile(p, df)


# ------------------------------------------------------------------------------------------------
# QSUR
# ------------------------------------------------------------------------------------------------


def test_qsur_volumes_match_the_2d_formula():
    x = _gauss(500, 2) @ torch.tensor([[2.0, 0.5], [0.0, 0.3]], dtype=torch.float64) + torch.tensor([0.4, -1.0])
    mu, cov = x.mean(0), torch.cov(x.T)
    c2 = chi2_quantile(0.95, 2)  # = -2 ln 0.05
    ellipse = math.pi * c2 * math.sqrt(float(torch.linalg.det(cov)))
    half = max(abs(float(mu[i])) + math.sqrt(c2 * float(cov[i, i])) for i in range(2))
    log_vx, log_vs = qsur_volumes(x, confidence=0.95)
    assert log_vx == pytest.approx(math.log(ellipse), rel=1e-12)
    assert log_vs == pytest.approx(2 * math.log(2 * half), rel=1e-12)
    assert qsur(x, confidence=0.95) == pytest.approx(ellipse / (2 * half) ** 2, rel=1e-10)


def test_qsur_one_dimension_is_the_mean_shift_penalty():
    x = _gauss(1000, 1)
    x = (x - x.mean()) / x.std() * 3.0  # exactly zero mean, standard deviation 3
    assert qsur(x) == pytest.approx(1.0, rel=1e-12)  # a centred interval fills its own range
    c = math.sqrt(chi2_quantile(0.99, 1))
    assert qsur(x + 2.0) == pytest.approx(3 * c / (2.0 + 3 * c), rel=1e-10)


def test_log_forms_agree_and_qsur_is_a_rate():
    x = _gauss(2000, 24) * torch.linspace(0.2, 3.0, 24, dtype=torch.float64)
    lq = log_qsur(x)
    assert 0.0 < qsur(x) < 1.0
    assert qsur(x) == pytest.approx(math.exp(lq), rel=1e-12)
    assert qsur_per_dim(x) == pytest.approx(math.exp(lq / 24), rel=1e-12)
    assert activation_stats(x)["log_qsur"] == pytest.approx(lq, rel=1e-12)


def test_isotropic_data_beats_unequal_channel_scales():
    x = _gauss(4000, 16)
    scaled = x * torch.logspace(-1, 1, 16, dtype=torch.float64)
    assert log_qsur(x) > log_qsur(scaled) + 10  # 16 dims of a 10x scale spread cost ~e^-20
    assert qsur(x) > qsur(scaled)
    assert qsur_per_dim(x) > qsur_per_dim(scaled)


@FAST
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(2, 12))
def test_rotation_keeps_the_ellipsoid_volume(seed, d):
    x = _gauss(300, d, seed) * torch.linspace(0.1, 5.0, d, dtype=torch.float64) + 0.3
    r = random_orthogonal(d, seed=seed)
    log_vx, _ = qsur_volumes(x)
    log_vx_rot, _ = qsur_volumes(x @ r)
    assert log_vx_rot == pytest.approx(log_vx, abs=1e-9)


def _whitener(x):
    """T = Q Lambda^{-1/2} from the sample covariance Sigma = Q Lambda Q^T (rows transform as x T)."""
    lam, q = torch.linalg.eigh(torch.cov(x.T))
    return q * lam.rsqrt()[None, :]


def test_whitening_attains_the_bound_and_beats_every_rotation():
    d = 16
    a = _gauss(d, d, seed=1)
    x = _gauss(3000, d) @ a  # correlated, unequal variances
    x = x - x.mean(0)  # OSTQuant's transforms leave the mean alone; centred data isolates the shape
    best = log_qsur(x @ _whitener(x))
    assert best == pytest.approx(log_qsur_bound(d), abs=1e-9)
    for seed in range(5):
        assert log_qsur(x @ random_orthogonal(d, seed=seed)) < best - 1.0
    assert log_qsur(x) < best - 1.0


@FAST
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 10), shift=st.floats(-3, 3))
def test_qsur_never_exceeds_the_ball_in_cube_bound(seed, d, shift):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, d, dtype=torch.float64, generator=g) @ torch.randn(d, d, dtype=torch.float64, generator=g)
    assert log_qsur(x + shift) <= log_qsur_bound(d) + 1e-9


def test_log_qsur_bound_small_dimensions():
    assert log_qsur_bound(1) == pytest.approx(0.0, abs=1e-15)  # a segment fills its segment
    assert log_qsur_bound(2) == pytest.approx(math.log(math.pi / 4), rel=1e-14)
    assert log_qsur_bound(3) == pytest.approx(math.log(math.pi / 6), rel=1e-14)


def test_qsur_of_degenerate_data():
    x = _gauss(5, 8)  # fewer tokens than channels: singular covariance, zero volume
    assert log_qsur(x) == -math.inf
    assert qsur(x) == 0.0
    with pytest.raises(ValueError, match="at least 2 tokens"):
        qsur(torch.zeros(1, 4))


def test_qsur_accepts_float32_and_leading_dims():
    x = _gauss(3 * 400, 8)
    assert log_qsur(x.float().reshape(3, 400, 8)) == pytest.approx(log_qsur(x), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# activation_stats
# ------------------------------------------------------------------------------------------------


def test_activation_stats_on_a_worked_example():
    x = torch.tensor([[1.0, -1.0, 2.0, -4.0], [1.0, -1.0, 2.0, 4.0]])
    s = activation_stats(x, with_qsur=False)
    assert s["max_over_mean"] == pytest.approx(4 / 2)  # mean |x| = 16 / 8
    assert s["channel_max_ratio"] == pytest.approx(4 / 1.5)  # channel maxima 1, 1, 2, 4
    m = 0.5  # mean of the entries
    dev = x.flatten().double() - m
    assert s["kurtosis"] == pytest.approx(float((dev**4).mean() / (dev**2).mean() ** 2))
    assert math.isnan(s["qsur"]) and math.isnan(s["log_qsur"]) and math.isnan(s["qsur_per_dim"])


def test_activation_stats_kurtosis_reference_distributions():
    g = torch.Generator().manual_seed(0)
    assert activation_stats(torch.randn(20000, 8, generator=g), with_qsur=False)["kurtosis"] == pytest.approx(3.0, abs=0.1)
    assert activation_stats(torch.rand(20000, 8, generator=g), with_qsur=False)["kurtosis"] == pytest.approx(1.8, abs=0.05)
    signs = torch.randint(0, 2, (1000, 8), generator=g).float() * 2 - 1
    assert activation_stats(signs, with_qsur=False)["kurtosis"] == pytest.approx(1.0, abs=0.01)


def test_activation_stats_see_an_outlier_channel():
    x = _gauss(1000, 32)
    spiky = x.clone()
    spiky[:, 5] *= 50
    a, b = activation_stats(x), activation_stats(spiky)
    assert b["channel_max_ratio"] > 20 * a["channel_max_ratio"]
    assert b["max_over_mean"] > a["max_over_mean"]
    assert b["log_qsur"] < a["log_qsur"]
    assert set(a) == {"max_over_mean", "channel_max_ratio", "kurtosis", "qsur", "log_qsur", "qsur_per_dim"}


def test_activation_stats_all_zero_is_nan_not_an_error():
    s = activation_stats(torch.zeros(10, 4))
    assert math.isnan(s["max_over_mean"]) and math.isnan(s["channel_max_ratio"]) and math.isnan(s["kurtosis"])
    assert s["qsur"] == 0.0


def test_activation_stats_rejects_integer_input():
    with pytest.raises(ValueError, match="floating-point"):
        activation_stats(torch.ones(3, 4, dtype=torch.int64))


# ------------------------------------------------------------------------------------------------
# KL-Top
# ------------------------------------------------------------------------------------------------


def _logits(seed, shape=(2, 3, 50)):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 3


def test_kl_top_is_zero_for_equal_logits_and_positive_otherwise():
    fp = _logits(0)
    assert float(kl_top_loss(fp, fp.clone(), k=10)) == 0.0
    assert float(kl_top_loss(fp, fp + 0.1 * _logits(1), k=10)) > 0.0
    # a constant shift per position is invisible to both softmaxes
    assert float(kl_top_loss(fp, fp + 5.0, k=10)) == pytest.approx(0.0, abs=1e-12)


def test_kl_top_matches_the_renormalised_formula():
    fp, q = _logits(0), _logits(1)
    k = 7
    p_full, q_full = fp.softmax(-1), q.softmax(-1)
    top = fp.topk(k, -1).indices
    p = p_full.gather(-1, top)
    p = p / p.sum(-1, keepdim=True)
    qq = q_full.gather(-1, top)
    qq = qq / qq.sum(-1, keepdim=True)
    ref = (p * (p.log() - qq.log())).sum(-1).mean()
    torch.testing.assert_close(kl_top_loss(fp, q, k=k), ref, rtol=1e-12, atol=1e-14)


def test_kl_top_with_k_equal_to_vocab_is_the_full_kl():
    fp, q = _logits(0), _logits(1)
    full = F.kl_div(q.log_softmax(-1), fp.log_softmax(-1), log_target=True, reduction="none").sum(-1).mean()
    torch.testing.assert_close(kl_top_loss(fp, q, k=fp.shape[-1]), full, rtol=1e-12, atol=1e-14)


def test_kl_top_ignores_the_tail_that_full_kl_sees():
    fp, q = _logits(0), _logits(1)
    k = 5
    top = fp.topk(k, -1).indices
    tail = torch.ones_like(fp, dtype=torch.bool).scatter(-1, top, False)
    kth = fp.topk(k, -1).values[..., -1:]
    noise = _logits(2).abs()
    # change the tail of both: q anywhere, fp only downwards (so its top-k set stays the same)
    q2 = torch.where(tail, q + noise, q)
    fp2 = torch.where(tail, torch.minimum(fp - noise, kth - 1.0), fp)
    base = kl_top_loss(fp, q, k=k)
    assert torch.equal(kl_top_loss(fp2, q2, k=k), base)
    v = fp.shape[-1]
    assert not torch.allclose(kl_top_loss(fp2, q2, k=v), kl_top_loss(fp, q, k=v))  # the full KL moves


def test_kl_top_gradient_flows_to_top_k_of_q_only():
    fp = _logits(0)
    q = _logits(1).requires_grad_(True)
    k = 6
    kl_top_loss(fp, q, k=k).backward()
    top = fp.topk(k, -1).indices
    tail = torch.ones_like(fp, dtype=torch.bool).scatter(-1, top, False)
    assert torch.all(q.grad[tail] == 0)
    assert torch.any(q.grad[~tail] != 0)
    q1 = _logits(1, (2, 9)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: kl_top_loss(_logits(0, (2, 9)), t, k=4), (q1,))


def test_kl_top_half_precision_is_computed_in_float32():
    fp, q = _logits(0).bfloat16(), _logits(1).bfloat16()
    out = kl_top_loss(fp, q, k=8)
    assert out.dtype == torch.float32 and out.dim() == 0
    torch.testing.assert_close(out, kl_top_loss(fp.float(), q.float(), k=8))


@pytest.mark.parametrize("k", [0, 51, 2.0, True])
def test_kl_top_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k must be"):
        kl_top_loss(_logits(0), _logits(1), k=k)


def test_kl_top_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        kl_top_loss(_logits(0), _logits(1, (2, 3, 49)), k=3)
