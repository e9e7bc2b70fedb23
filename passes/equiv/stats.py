"""Activation statistics for the equivalent-transform reports, OSTQuant's QSUR and KL-Top loss.

Provenance (what was checked, and where)
- Verified, OSTQuant abstract (arXiv 2501.13987; read at https://www.emergentmind.com/articles/2501.13987
  and https://hf.kigml.com/papers/2501.13987.md): QSUR "assesses the quantizability of transformed data
  by measuring the space utilization of the data in the quantization space"; KL-Top is a loss "designed
  to mitigate noise during optimization while retaining richer semantic information within the limited
  calibration data".
- Verified, the official README (BrotherHappy/OSTQuant, as mirrored at
  https://skillagent.dev/skill/BrotherHappy/OSTQuant): Fig. 1 models a batch as X ~ N(mu, Sigma) and
  reads QSUR off the eigenvalues lambda_i of Sigma's eigendecomposition, comparing smooth-based,
  rotate-based and orthogonal+scaling transforms; the training flag is ``--loss_type=kl_top``.
- Recalled, not checked against the paper body or code (neither body text nor the repository is in
  the stored corpora): the exact QSUR formula below (ellipsoid at a chi-square radius over the
  origin-centred cube of the largest per-axis extent) and KL-Top's exact form (KL(p_fp || p_q) on the
  FP model's top-k classes, both renormalised over them). METHODS.md B.8 marks both [recalled].
  What *is* proved here, by the tests, are the consequences the README/abstract state: rotations keep
  the ellipsoid volume, unequal channel scales lower QSUR, and ``T = Q Lambda^{-1/2}`` (whitening)
  attains the maximum.

QSUR as implemented. Tokens are rows of ``x`` reshaped to (N, d); mu and Sigma are the sample mean
and (unbiased) covariance; ``c^2`` is the chi-square quantile with d degrees of freedom at
``confidence``, so the ellipsoid ``{v : (v - mu)^T Sigma^{-1} (v - mu) <= c^2}`` holds that fraction
of a Gaussian's mass.
- ``V_X = pi^{d/2} / Gamma(d/2 + 1) * c^d * sqrt(det Sigma)`` (ellipsoid volume);
- ``V_S = (2 * max_i (|mu_i| + c sqrt(Sigma_ii)))^d``: the ellipsoid reaches ``mu_i +- c sqrt(Sigma_ii)``
  along axis i, and one symmetric per-tensor/per-token quantiser must cover the widest axis on every
  axis;
- ``QSUR = V_X / V_S`` in (0, 1]; at most ``pi^{d/2} / (Gamma(d/2 + 1) 2^d)`` (ball in its cube),
  reached by zero-mean isotropic data.
For d in the hundreds QSUR underflows a float64, so :func:`log_qsur` gives ``ln QSUR`` and
:func:`qsur_per_dim` gives ``exp(ln QSUR / d)``, a per-axis utilisation comparable across widths.
Cost: O(N d^2 + d^3) (covariance and a Cholesky), in float64.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "activation_stats",
    "chi2_quantile",
    "kl_top_loss",
    "log_qsur",
    "log_qsur_bound",
    "qsur",
    "qsur_per_dim",
    "qsur_volumes",
]


def _tokens(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"{what}: expected activations (..., d) with d >= 1, got shape {tuple(x.shape)}")
    if not (x.is_floating_point()):
        raise ValueError(f"{what}: expected a floating-point tensor, got {x.dtype}")
    return x.detach().reshape(-1, x.shape[-1]).to(torch.float64)


def _ratio(num: float, den: float) -> float:
    # All-zero activations make these ratios 0/0: report nan rather than raise inside a report.
    return num / den if den > 0 else float("nan")


def chi2_quantile(p: float, df: int) -> float:
    """The p-quantile of the chi-square distribution with ``df`` degrees of freedom.

    Wilson-Hilferty start, then safeguarded Newton on the regularised incomplete gamma
    ``P(df/2, x/2) = p`` (torch.special.gammainc); agrees with scipy.stats.chi2.ppf to ~1e-10
    relative (the limit is gammainc itself).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"chi2_quantile: p must be in (0, 1), got {p}")
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"chi2_quantile: df must be an int >= 1, got {df!r}")
    k = df / 2.0
    z = math.sqrt(2.0) * float(torch.special.erfinv(torch.tensor(2.0 * p - 1.0, dtype=torch.float64)))
    h = 2.0 / (9.0 * df)
    x = max(df * (1.0 - h + z * math.sqrt(h)) ** 3, 1e-8)
    lo, hi = 0.0, math.inf  # bracket kept so a wild Newton step falls back to bisection
    log_norm = k * math.log(2.0) + math.lgamma(k)
    for _ in range(100):
        cdf = float(torch.special.gammainc(torch.tensor(k, dtype=torch.float64), torch.tensor(x / 2.0, dtype=torch.float64)))
        err = cdf - p
        if err > 0:
            hi = min(hi, x)
        else:
            lo = max(lo, x)
        pdf = math.exp((k - 1.0) * math.log(x) - x / 2.0 - log_norm)
        step = err / pdf if pdf > 0 else math.inf
        nxt = x - step
        if not (lo < nxt < hi):
            nxt = (lo + hi) / 2.0 if math.isfinite(hi) else 2.0 * x
        if abs(nxt - x) <= 1e-13 * max(1.0, x):
            return nxt
        x = nxt
    return x


def qsur_volumes(x: torch.Tensor, *, confidence: float = 0.99) -> tuple[float, float]:
    """``(ln V_X, ln V_S)``: log-volume of the data's chi-square ellipsoid and of the quantiser's cube.

    ``ln V_X`` is ``-inf`` when the sample covariance is singular (fewer tokens than channels, or a
    dead channel). See the module docstring for the definitions.
    """
    t = _tokens(x, "qsur")
    n, d = t.shape
    if n < 2:
        raise ValueError(f"qsur: need at least 2 tokens to estimate a covariance, got {n}")
    mu = t.mean(0)
    xc = t - mu
    cov = xc.T @ xc / (n - 1)
    c = math.sqrt(chi2_quantile(confidence, d))
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        log_vx = -math.inf
    else:
        log_det = 2.0 * float(torch.log(torch.diagonal(chol)).sum())
        log_vx = 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1.0) + d * math.log(c) + 0.5 * log_det
    half = float((mu.abs() + c * torch.diagonal(cov).clamp_min(0).sqrt()).max())
    log_vs = d * math.log(2.0 * half) if half > 0 else -math.inf
    return log_vx, log_vs


def log_qsur(x: torch.Tensor, *, confidence: float = 0.99) -> float:
    """Natural log of OSTQuant's QSUR of activations ``x`` (..., d); ``-inf`` for degenerate data."""
    log_vx, log_vs = qsur_volumes(x, confidence=confidence)
    if log_vx == -math.inf:
        return -math.inf
    return log_vx - log_vs


def qsur(x: torch.Tensor, *, confidence: float = 0.99) -> float:
    """OSTQuant's QSUR of activations ``x`` (..., d), in [0, 1]; underflows to 0.0 for large d
    (use :func:`log_qsur` or :func:`qsur_per_dim` there)."""
    return math.exp(log_qsur(x, confidence=confidence))


def qsur_per_dim(x: torch.Tensor, *, confidence: float = 0.99) -> float:
    """``exp(log_qsur / d)``: the geometric-mean per-axis utilisation, comparable across widths d."""
    return math.exp(log_qsur(x, confidence=confidence) / x.shape[-1])


def log_qsur_bound(d: int) -> float:
    """The largest possible ``log_qsur`` in d dimensions: a ball in its bounding cube,
    ``ln(pi^{d/2} / (Gamma(d/2 + 1) 2^d))``; zero-mean isotropic (whitened) data reach it."""
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"log_qsur_bound: d must be an int >= 1, got {d!r}")
    return 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1.0) - d * math.log(2.0)


def activation_stats(
    x: torch.Tensor, *, confidence: float = 0.99, with_qsur: bool = True
) -> dict[str, float]:
    """Outlier and utilisation statistics of activations ``x`` (..., d), flattened to (tokens, d).

    - ``max_over_mean``: ``max |x| / mean |x|`` over all entries (how far the range sits above typical
      magnitudes; what per-tensor quantisation pays for).
    - ``channel_max_ratio``: largest per-channel ``max_t |x_tc|`` over the median one (the usual
      median: mean of the two middle values for even d); flags outlier channels, what
      smoothing/rotation removes.
    - ``kurtosis``: Pearson kurtosis of all entries, ``E[(x - m)^4] / Var(x)^2`` (population moments;
      a Gaussian gives 3, heavy tails more, a uniform 1.8).
    - ``qsur``, ``log_qsur``, ``qsur_per_dim``: see the module docstring (nan when ``with_qsur`` is
      False, which skips the O(d^3) part for very wide layers).
    Ratios with a zero denominator (all-zero input) are nan.
    """
    t = _tokens(x, "activation_stats")
    a = t.abs()
    chan_max = a.amax(0)
    m = t.mean()
    var = ((t - m) ** 2).mean()
    out = {
        "max_over_mean": _ratio(float(a.max()), float(a.mean())),
        "channel_max_ratio": _ratio(float(chan_max.max()), float(chan_max.quantile(0.5))),
        "kurtosis": _ratio(float(((t - m) ** 4).mean()), float(var) ** 2),
    }
    if with_qsur:
        lq = log_qsur(x, confidence=confidence)
        out.update(qsur=math.exp(lq), log_qsur=lq, qsur_per_dim=math.exp(lq / t.shape[1]))
    else:
        out.update(qsur=float("nan"), log_qsur=float("nan"), qsur_per_dim=float("nan"))
    return out


def kl_top_loss(logits_fp: torch.Tensor, logits_q: torch.Tensor, *, k: int) -> torch.Tensor:
    """OSTQuant's KL-Top: ``KL(p_fp || p_q)`` over the FP model's top-k classes, renormalised there.

    For each position, ``S`` = indices of the k largest ``logits_fp``; ``p = softmax(logits_fp[S])``
    and ``q = softmax(logits_q[S])`` (a softmax over a subset equals the full softmax renormalised on
    it); loss = ``sum_S p (ln p - ln q)``, averaged over all leading positions. Classes outside S do not
    enter at all, which is the point: with little calibration data the long tail of a 32k-128k
    vocabulary is noise. Differentiable in both arguments (pass FP logits computed under no_grad);
    half-precision inputs are computed in float32. Returns a scalar.
    """
    if logits_fp.shape != logits_q.shape:
        raise ValueError(
            f"kl_top_loss: logits shapes differ: fp {tuple(logits_fp.shape)} vs q {tuple(logits_q.shape)}"
        )
    if logits_fp.dim() < 1:
        raise ValueError("kl_top_loss: logits need a class dimension (..., V)")
    v = logits_fp.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= v:
        raise ValueError(f"kl_top_loss: k must be an int in [1, {v}] (the number of classes), got {k!r}")
    dtype = torch.promote_types(torch.promote_types(logits_fp.dtype, logits_q.dtype), torch.float32)
    fp = logits_fp.to(dtype)
    qq = logits_q.to(dtype)
    idx = fp.topk(k, dim=-1).indices
    log_p = torch.log_softmax(fp.gather(-1, idx), dim=-1)
    log_q = torch.log_softmax(qq.gather(-1, idx), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return kl.mean()
