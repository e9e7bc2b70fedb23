"""Pure matrix algebra for the equivalent-transform passes (smooth, rotate, flat, ost).

Nothing here knows about modules or graphs: these are the orthogonal / Kronecker / block-diagonal
building blocks that QuaRot, SpinQuant, FlatQuant and OSTQuant fold into weights (METHODS.md B.6-B.9).

Conventions
- Activations are row vectors: a transform ``T`` acts as ``x -> x @ T`` (so a reader Linear's weight
  becomes ``W @ T^{-T}``; for orthogonal ``T`` that is ``W @ T``).
- Random matrices are built in float64 from a seeded ``torch.Generator`` (deterministic on the CPU for
  a given seed) and cast to ``dtype`` at the end, so a float32 rotation is the rounding of an exactly
  orthogonal float64 one.

Hadamard orders: ``n = m * 2**k`` with ``m`` in {1, 12, 20, 28, 40} (QuaRot's ``had_12/20/28/40``).
The base orders are built here, not copied from tables:
- 12 and 20: Paley construction I over GF(11) and GF(19) (q prime, q = 3 mod 4, order q + 1);
- 28: Paley construction II over GF(13) (q prime, q = 1 mod 4, order 2(q + 1)), which avoids the
  GF(27) arithmetic Paley I would need;
- 40: Sylvester doubling of 20 (``40 * 2**k == 20 * 2**(k+1)``, so it needs no table of its own);
- powers of two: Sylvester.
"""

from __future__ import annotations

import math
from functools import cache

import torch

__all__ = [
    "HADAMARD_BASES",
    "block_diag_apply",
    "cayley",
    "hadamard",
    "hadamard_order_factor",
    "kron_apply",
    "kron_factors",
    "random_hadamard",
    "random_orthogonal",
    "rotation",
]

#: Non-power-of-two Hadamard base orders ``m`` (with 1 for pure Sylvester), ascending.
HADAMARD_BASES: tuple[int, ...] = (1, 12, 20, 28, 40)


def _check_size(n: object, what: str) -> int:
    # bool is an int subclass; hadamard(True) is a bug, not a request for order 1.
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"{what}: size must be an int, got {type(n).__name__} {n!r}")
    if n < 1:
        raise ValueError(f"{what}: size must be >= 1, got {n}")
    return n


# --------------------------------------------------------------------------------------------------
# Hadamard matrices
# --------------------------------------------------------------------------------------------------


def _quadratic_character(q: int) -> list[int]:
    """chi(a) for a in GF(q), q prime: 0 at 0, +1 on non-zero squares, -1 otherwise."""
    squares = {(i * i) % q for i in range(1, q)}
    return [0] + [1 if a in squares else -1 for a in range(1, q)]


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = chi(j - i) over GF(q) (antisymmetric for q = 3 mod 4, symmetric for q = 1 mod 4)."""
    chi = torch.tensor(_quadratic_character(q), dtype=torch.float64)
    idx = torch.arange(q)
    return chi[(idx[None, :] - idx[:, None]) % q]


def _paley1(q: int) -> torch.Tensor:
    """Paley I: order q + 1 for prime q = 3 mod 4. H = I + S with S the skew conference matrix."""
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:] = 1.0
    s[1:, 0] = -1.0
    s[1:, 1:] = _jacobsthal(q)
    return torch.eye(q + 1, dtype=torch.float64) + s


def _paley2(q: int) -> torch.Tensor:
    """Paley II: order 2(q + 1) for prime q = 1 mod 4, from the symmetric conference matrix C."""
    c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    c[0, 1:] = 1.0
    c[1:, 0] = 1.0
    c[1:, 1:] = _jacobsthal(q)
    # Off the diagonal C is +-1 and gets the first 2x2 pattern; on the diagonal C is 0 and the
    # identity term supplies the second pattern, which is orthogonal to the first.
    a = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    return torch.kron(c, a) + torch.kron(torch.eye(q + 1, dtype=torch.float64), b)


def _sylvester(n: int, dtype: torch.dtype) -> torch.Tensor:
    """Sylvester H_n for n a power of two: H_{2m} = [[H, H], [H, -H]] (so H_n = H_2^{(x) k})."""
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


@cache
def _base(m: int) -> torch.Tensor:
    if m == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if m == 12:
        return _paley1(11)
    if m == 20:
        return _paley1(19)
    if m == 28:
        return _paley2(13)
    raise ValueError(f"no Hadamard base of order {m}; bases are {HADAMARD_BASES}")


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def hadamard_order_factor(n: int) -> tuple[int, int] | None:
    """``(m, 2**k)`` with ``m`` in :data:`HADAMARD_BASES` and ``m * 2**k == n``, or None.

    Prefers the largest power of two (the part a fast Walsh-Hadamard transform handles), i.e. the
    smallest base. Since ``40 * 2**k == 20 * 2**(k+1)``, orders 40 * 2**k come back as ``(20, ...)``:
    40 is listed for parity with QuaRot's ``had_40`` but never needs a table of its own.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return None
    for m in HADAMARD_BASES:  # ascending m == descending power of two
        if n % m == 0 and _is_pow2(n // m):
            return m, n // m
    return None


def hadamard(n: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The n x n Hadamard matrix ``H_m (x) H_{2**k}`` (entries +-1, ``H @ H.T == n * I``).

    ``(m, 2**k) = hadamard_order_factor(n)``; because it is a Kronecker product,
    ``kron_apply(x, hadamard(m), hadamard(2**k))`` applies it in O(n (m + 2**k)).
    Raises ValueError when n has no supported factorisation.
    """
    _check_size(n, "hadamard")
    f = hadamard_order_factor(n)
    if f is None:
        raise ValueError(
            f"hadamard: no Hadamard matrix of order {n}: supported orders are m * 2**k with m in "
            f"{HADAMARD_BASES}"
        )
    m, p = f
    # +-1 is exact in every floating dtype, so build straight in the target dtype (halves the
    # memory of a float32 request for large n).
    return torch.kron(_base(m).to(dtype), _sylvester(p, dtype))


def random_hadamard(n: int, *, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """QuaRot's randomised Hadamard ``Q = H diag(s) / sqrt(n)``, s uniform in {-1, +1}^n.

    Orthonormal (``Q @ Q.T == I``) and deterministic for a seed. Raises ValueError when n has no
    supported Hadamard order (see :func:`hadamard_order_factor`); use :func:`rotation` to fall back.
    """
    _check_size(n, "random_hadamard")
    if hadamard_order_factor(n) is None:
        raise ValueError(
            f"random_hadamard: {n} is not m * 2**k for m in {HADAMARD_BASES}; "
            "use rotation() to fall back to a random orthogonal matrix"
        )
    g = torch.Generator().manual_seed(int(seed))
    signs = torch.randint(0, 2, (n,), generator=g, dtype=torch.int64).to(torch.float64) * 2 - 1
    q = hadamard(n) * signs[None, :] / math.sqrt(n)
    return q.to(dtype)


# --------------------------------------------------------------------------------------------------
# Orthogonal matrices
# --------------------------------------------------------------------------------------------------


def random_orthogonal(n: int, *, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A Haar-distributed n x n orthogonal matrix: QR of a Gaussian, columns sign-fixed by diag(R).

    The sign fix makes the factorisation unique, which is what makes the result Haar-distributed
    (plain Householder QR is biased). Deterministic for a seed.
    """
    _check_size(n, "random_orthogonal")
    g = torch.Generator().manual_seed(int(seed))
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    d = torch.sign(torch.diagonal(r))
    d[d == 0] = 1.0  # probability zero, but a zero would make Q singular
    return (q * d[None, :]).to(dtype)


def rotation(n: int, *, seed: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, str]:
    """A random rotation of size n: ``(random_hadamard, 'hadamard')`` when n has a supported
    Hadamard order, else ``(random_orthogonal, 'orthogonal')``."""
    _check_size(n, "rotation")
    if hadamard_order_factor(n) is not None:
        return random_hadamard(n, seed=seed, dtype=dtype), "hadamard"
    return random_orthogonal(n, seed=seed, dtype=dtype), "orthogonal"


def cayley(a: torch.Tensor) -> torch.Tensor:
    """Orthogonal matrix from the skew-symmetric part of ``a``: ``A = a - a^T``,
    ``Q = (I - A/2)^{-1} (I + A/2)``.

    Works on batches (``(..., n, n)``), is differentiable in ``a`` and gives exactly I at ``a = 0``
    (the LU of I is I, so the solve is exact). ``I - A/2`` is always invertible: the eigenvalues of a
    real skew-symmetric A are imaginary. Cayley maps never reach orthogonal matrices with eigenvalue
    -1; SpinQuant/FlatQuant-style training only needs a neighbourhood of the current point.
    """
    if a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"cayley: expected a square matrix (..., n, n), got shape {tuple(a.shape)}")
    if not a.is_floating_point():
        raise ValueError(f"cayley: expected a floating-point tensor, got {a.dtype}")
    skew = a - a.transpose(-1, -2)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    # (I - A/2) and (I + A/2) commute, so the solve equals both (I - A/2)^-1 (I + A/2) and its mirror.
    return torch.linalg.solve(eye - skew / 2, eye + skew / 2)


# --------------------------------------------------------------------------------------------------
# Kronecker and block-diagonal application
# --------------------------------------------------------------------------------------------------


def kron_factors(n: int) -> tuple[int, int]:
    """FlatQuant's Kronecker split of n: ``(n1, n2)``, ``n1 * n2 == n``, ``n1 <= n2``, near sqrt(n).

    The authors' ``get_decompose_dim`` (ruikangliu/FlatQuant, flatquant/function_utils.py) is
    Fermat's method: the first ``a >= ceil(sqrt(n))`` with ``a^2 - n = b^2`` gives ``(a - b, a + b)``.
    That is the closest factor pair *whose factors have equal parity* (smallest ``n1 + n2``), so this
    returns the largest divisor ``n1 <= sqrt(n)`` with ``n1 = n / n1 (mod 2)``: 4096 -> (64, 64),
    11008 -> (86, 128), 12 -> (2, 6) (not (3, 4)), matching the authors' shapes wherever their loop
    ends. For ``n = 2 (mod 4)`` no equal-parity pair exists and the authors' loop never terminates;
    there this returns the closest pair of any parity (6 -> (2, 3)).
    """
    _check_size(n, "kron_factors")
    root = math.isqrt(n)
    if n % 4 != 2:
        for n1 in range(root, 0, -1):
            if n % n1 == 0 and (n1 - n // n1) % 2 == 0:
                return n1, n // n1
    for n1 in range(root, 0, -1):
        if n % n1 == 0:
            return n1, n // n1
    raise AssertionError("unreachable: 1 divides n")


def kron_apply(x: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """``x @ kron(p1, p2)`` for x of shape (..., n1*n2), computed as ``p1^T X p2`` on
    ``X = x.reshape(..., n1, n2)``: O(n (n1 + n2)) per row instead of O(n^2).

    Why it holds: with ``x[i*n2 + j] = X[i, j]``, ``(x (P1 (x) P2))[k*n2 + l] =
    sum_ij X[i, j] P1[i, k] P2[j, l] = (P1^T X P2)[k, l]``.
    """
    if p1.dim() != 2 or p1.shape[0] != p1.shape[1] or p2.dim() != 2 or p2.shape[0] != p2.shape[1]:
        raise ValueError(
            f"kron_apply: p1 and p2 must be square matrices, got {tuple(p1.shape)} and {tuple(p2.shape)}"
        )
    n1, n2 = p1.shape[0], p2.shape[0]
    if x.dim() < 1 or x.shape[-1] != n1 * n2:
        raise ValueError(
            f"kron_apply: last dim of x is {x.shape[-1] if x.dim() else None}, expected "
            f"n1 * n2 = {n1} * {n2} = {n1 * n2}"
        )
    xm = x.reshape(*x.shape[:-1], n1, n2)
    y = torch.matmul(p1.transpose(0, 1), torch.matmul(xm, p2))
    return y.reshape(x.shape)


def block_diag_apply(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``x @ block_diag(B_0, ..., B_{h-1})`` for x of shape (..., h*b), without building the matrix.

    ``blocks`` is (h, b, b) (one block per group, e.g. per attention head) or (b, b) shared by all
    ``x.shape[-1] // b`` groups. Group g is ``x[..., g*b:(g+1)*b]``.
    """
    if blocks.dim() == 2:
        b = blocks.shape[0]
        if blocks.shape[1] != b:
            raise ValueError(f"block_diag_apply: a shared block must be square, got {tuple(blocks.shape)}")
        if x.dim() < 1 or x.shape[-1] % b != 0:
            raise ValueError(
                f"block_diag_apply: last dim of x ({x.shape[-1] if x.dim() else None}) is not a "
                f"multiple of the block size {b}"
            )
        h = x.shape[-1] // b
        xg = x.reshape(*x.shape[:-1], h, b)
        return torch.matmul(xg, blocks).reshape(x.shape)
    if blocks.dim() == 3:
        h, b, b2 = blocks.shape
        if b != b2:
            raise ValueError(f"block_diag_apply: blocks must be (h, b, b), got {tuple(blocks.shape)}")
        if x.dim() < 1 or x.shape[-1] != h * b:
            raise ValueError(
                f"block_diag_apply: last dim of x is {x.shape[-1] if x.dim() else None}, expected "
                f"h * b = {h} * {b} = {h * b}"
            )
        xg = x.reshape(*x.shape[:-1], h, 1, b)  # (..., h, 1, b) @ (h, b, b) broadcasts over groups
        return torch.matmul(xg, blocks).reshape(x.shape)
    raise ValueError(f"block_diag_apply: blocks must be (b, b) or (h, b, b), got {tuple(blocks.shape)}")
