"""Equivalent-transform algebra: Hadamard orders, random rotations, Cayley, Kronecker and block-diagonal
application, each checked against a dense reference written out here (torch.kron, torch.block_diag)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from surgeon.passes.equiv.linalg import (
    HADAMARD_BASES,
    block_diag_apply,
    cayley,
    hadamard,
    hadamard_order_factor,
    kron_apply,
    kron_factors,
    random_hadamard,
    random_orthogonal,
    rotation,
)

torch.set_num_threads(1)
FAST = settings(max_examples=30, deadline=None)

SUPPORTED_UP_TO_2048 = sorted(
    {m * 2**k for m in HADAMARD_BASES for k in range(12) if m * 2**k <= 2048}
)
SMALL_SUPPORTED = [n for n in SUPPORTED_UP_TO_2048 if n <= 256]


def _eye(n):
    return torch.eye(n, dtype=torch.float64)


def _orth_err(q):
    return float((q @ q.T - _eye(q.shape[0])).abs().max())


# ------------------------------------------------------------------------------------------------
# Hadamard
# ------------------------------------------------------------------------------------------------


def test_every_supported_order_up_to_2048_is_hadamard():
    # float32 is exact here (integer sums up to 2048), and twice as fast as float64 for the big ones.
    assert len(SUPPORTED_UP_TO_2048) == 34
    for n in SUPPORTED_UP_TO_2048:
        h = hadamard(n, dtype=torch.float32)
        assert h.shape == (n, n)
        assert torch.equal(h.abs(), torch.ones(n, n)), n
        assert torch.equal(h @ h.T, n * torch.eye(n)), n


@pytest.mark.parametrize("n", [12, 20, 28, 40])
def test_base_orders_default_float64(n):
    h = hadamard(n)
    assert h.dtype == torch.float64
    assert torch.equal(h @ h.T, n * _eye(n))


def test_order_40_is_sylvester_doubling_of_20():
    h20 = hadamard(20)
    assert torch.equal(hadamard(40), torch.kron(h20, torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)))


@pytest.mark.parametrize(
    "n,expected",
    [
        (1, (1, 1)),
        (2, (1, 2)),
        (4096, (1, 4096)),
        (12, (12, 1)),
        (20, (20, 1)),
        (28, (28, 1)),
        (40, (20, 2)),  # 40 * 2**k is always 20 * 2**(k+1): the larger power of two wins
        (48, (12, 4)),
        (384, (12, 32)),
        (1536, (12, 128)),
        (1792, (28, 64)),
        (5120, (20, 256)),
        (3, None),
        (6, None),
        (36, None),
        (11008, None),  # 172 * 64: had_172 is out of scope
        (0, None),
        (-8, None),
    ],
)
def test_hadamard_order_factor(n, expected):
    assert hadamard_order_factor(n) == expected


def test_hadamard_is_kron_of_its_factors_and_kron_apply_applies_it():
    n = 384
    m, p = hadamard_order_factor(n)
    h = hadamard(n)
    assert torch.equal(h, torch.kron(hadamard(m), hadamard(p)))
    x = torch.randn(3, 5, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(kron_apply(x, hadamard(m), hadamard(p)), x @ h, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("bad", [11008, 6, 0, -4])
def test_hadamard_rejects_unsupported_sizes(bad):
    with pytest.raises(ValueError, match="hadamard"):
        hadamard(bad)


@pytest.mark.parametrize("bad", [True, 2.0, "8"])
def test_hadamard_rejects_non_int_sizes(bad):
    with pytest.raises(ValueError, match="must be an int"):
        hadamard(bad)


@FAST
@given(n=st.sampled_from(SMALL_SUPPORTED), seed=st.integers(0, 2**31 - 1))
def test_random_hadamard_is_orthonormal_and_seeded(n, seed):
    q = random_hadamard(n, seed=seed)
    assert q.dtype == torch.float64
    assert _orth_err(q) < 1e-10
    torch.testing.assert_close(q.abs(), torch.full((n, n), 1 / math.sqrt(n), dtype=torch.float64))
    assert torch.equal(q, random_hadamard(n, seed=seed))
    # it is H with column signs flipped: H^T Q sqrt(n) / n is diagonal +-1
    d = hadamard(n).T @ q * math.sqrt(n) / n
    torch.testing.assert_close(d, torch.diag(torch.diagonal(d)), rtol=0, atol=1e-12)


def test_random_hadamard_seeds_differ_and_dtype_is_honoured():
    a, b = random_hadamard(64, seed=0), random_hadamard(64, seed=1)
    assert not torch.equal(a, b)
    assert random_hadamard(64, seed=0, dtype=torch.float32).dtype == torch.float32


def test_random_hadamard_rejects_unsupported_size_with_a_pointer_to_rotation():
    with pytest.raises(ValueError, match="rotation"):
        random_hadamard(11008, seed=0)


# ------------------------------------------------------------------------------------------------
# Orthogonal matrices
# ------------------------------------------------------------------------------------------------


@FAST
@given(n=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_random_orthogonal_is_orthonormal_and_seeded(n, seed):
    q = random_orthogonal(n, seed=seed)
    assert _orth_err(q) < 1e-10
    assert _orth_err(q.T) < 1e-10
    assert torch.equal(q, random_orthogonal(n, seed=seed))


def test_random_orthogonal_is_unbiased():
    # Haar => E[Q_00] = 0. Without the sign fix Householder QR returns Q_00 < 0 almost always
    # (mean about -0.4 for n = 4); 400 samples of std 1/2 give a mean within 0.1 of 0.
    mean = sum(float(random_orthogonal(4, seed=s)[0, 0]) for s in range(400)) / 400
    assert abs(mean) < 0.1


def test_rotation_picks_hadamard_when_it_can():
    q, kind = rotation(96, seed=3)
    assert kind == "hadamard" and torch.equal(q, random_hadamard(96, seed=3))
    q, kind = rotation(100, seed=3)
    assert kind == "orthogonal" and torch.equal(q, random_orthogonal(100, seed=3))
    assert _orth_err(q) < 1e-10
    q, kind = rotation(12, seed=0, dtype=torch.float32)
    assert kind == "hadamard" and q.dtype == torch.float32


def test_rotation_rejects_bad_size():
    with pytest.raises(ValueError, match="rotation"):
        rotation(0, seed=0)


# ------------------------------------------------------------------------------------------------
# Cayley
# ------------------------------------------------------------------------------------------------


@FAST
@given(n=st.integers(1, 12), seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 10.0))
def test_cayley_is_orthonormal_and_sees_only_the_skew_part(n, seed, scale):
    g = torch.Generator().manual_seed(seed)
    a = scale * torch.randn(n, n, dtype=torch.float64, generator=g)
    q = cayley(a)
    assert _orth_err(q) < 1e-10
    sym = torch.randn(n, n, dtype=torch.float64, generator=g)
    torch.testing.assert_close(cayley(a + sym + sym.T), q, rtol=0, atol=1e-10)
    # Q(-A) = Q(A)^{-1} = Q(A)^T
    torch.testing.assert_close(cayley(-a), q.T, rtol=0, atol=1e-10)


def test_cayley_of_zero_is_exactly_identity():
    for dtype in (torch.float32, torch.float64):
        assert torch.equal(cayley(torch.zeros(7, 7, dtype=dtype)), torch.eye(7, dtype=dtype))


def test_cayley_matches_the_formula_batches_and_is_differentiable():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 5, 5, dtype=torch.float64, generator=g)
    skew = a - a.transpose(-1, -2)
    eye = _eye(5)
    ref = torch.stack([torch.linalg.inv(eye - s / 2) @ (eye + s / 2) for s in skew])
    torch.testing.assert_close(cayley(a), ref, rtol=1e-12, atol=1e-12)
    a1 = a[0].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(cayley, (a1,))


def test_cayley_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        cayley(torch.zeros(3, 4))


# ------------------------------------------------------------------------------------------------
# Kronecker factors and application
# ------------------------------------------------------------------------------------------------


def _fermat(n):
    """Fermat's factorisation, as FlatQuant's get_decompose_dim does it (only for n != 2 mod 4)."""
    a = math.isqrt(n)
    if a * a < n:
        a += 1
    while True:
        b2 = a * a - n
        b = math.isqrt(b2)
        if b * b == b2:
            return a - b, a + b
        a += 1


@pytest.mark.parametrize(
    "n,expected",
    [(4096, (64, 64)), (11008, (86, 128)), (2048, (32, 64)), (14336, (112, 128)), (768, (24, 32)),
     (1, (1, 1)), (7, (1, 7)), (12, (2, 6)), (6, (2, 3)), (2, (1, 2))],
)
def test_kron_factors_known_sizes(n, expected):
    assert kron_factors(n) == expected


def test_kron_factors_match_flatquant_wherever_its_loop_ends_and_are_closest_elsewhere():
    for n in range(1, 3001):
        n1, n2 = kron_factors(n)
        assert n1 * n2 == n and n1 <= n2
        if n % 4 != 2:
            assert (n1, n2) == _fermat(n), n
        else:  # no equal-parity pair: the closest divisor pair
            assert n1 == max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0), n


def test_kron_factors_rejects_bad_size():
    with pytest.raises(ValueError, match="kron_factors"):
        kron_factors(0)


@FAST
@given(
    n1=st.integers(1, 8),
    n2=st.integers(1, 8),
    batch=st.lists(st.integers(1, 3), max_size=2),
    seed=st.integers(0, 2**31 - 1),
)
def test_kron_apply_equals_dense_kron(n1, n2, batch, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, n1 * n2, dtype=torch.float64, generator=g)
    p1 = torch.randn(n1, n1, dtype=torch.float64, generator=g)
    p2 = torch.randn(n2, n2, dtype=torch.float64, generator=g)
    y = kron_apply(x, p1, p2)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x @ torch.kron(p1, p2), rtol=1e-12, atol=1e-12)


def test_kron_apply_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="n1 \\* n2"):
        kron_apply(torch.zeros(2, 12), torch.eye(3), torch.eye(5))
    with pytest.raises(ValueError, match="square"):
        kron_apply(torch.zeros(2, 12), torch.zeros(3, 4), torch.eye(4))


@FAST
@given(
    h=st.integers(1, 5),
    b=st.integers(1, 6),
    batch=st.lists(st.integers(1, 3), max_size=2),
    seed=st.integers(0, 2**31 - 1),
)
def test_block_diag_apply_equals_dense_block_diag(h, b, batch, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, h * b, dtype=torch.float64, generator=g)
    blocks = torch.randn(h, b, b, dtype=torch.float64, generator=g)
    y = block_diag_apply(x, blocks)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x @ torch.block_diag(*blocks), rtol=1e-12, atol=1e-12)
    shared = blocks[0]
    torch.testing.assert_close(
        block_diag_apply(x, shared), x @ torch.block_diag(*([shared] * h)), rtol=1e-12, atol=1e-12
    )


def test_block_diag_apply_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="h \\* b"):
        block_diag_apply(torch.zeros(2, 10), torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="multiple of the block size"):
        block_diag_apply(torch.zeros(2, 10), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="\\(h, b, b\\)"):
        block_diag_apply(torch.zeros(2, 12), torch.zeros(3, 4, 2))
