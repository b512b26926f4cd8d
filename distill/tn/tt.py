"""TT-matrix (MPO) layers' math: TT-SVD, TT-matrix × vector, dense reference, low-rank SVD.

A dense weight W (N_out, N_in) acting as y = W x, with N_in = ∏ a_k and N_out = ∏ b_k, is
viewed as a 2d-way tensor W[j_1..j_d, i_1..i_d] (row-major flattening of both the output
index j and the input index i) and stored as d cores G_k of shape (r_{k-1}, b_k, a_k, r_k),
r_0 = r_d = 1:

    W[j_1..j_d, i_1..i_d] = G_1[:, j_1, i_1, :] · G_2[:, j_2, i_2, :] · … · G_d[:, j_d, i_d, :]

`tt_svd` finds the cores by sequential truncated SVDs (Oseledets 2011; seed 004, Algorithm 6)
of W with the index pairs (j_k, i_k) grouped per core; `tt_matvec` applies them to a batch
of inputs without ever forming W (t3f's algorithm: contract x core by core).

Einsum letters: b batch · i/j TT in/out mode of the current core · l/r left/right rank bond
of the current core · o the output modes already produced (flattened) · q the input modes not
yet consumed (flattened) · k rank of a low-rank factorisation.

The decompositions (`tt_svd`, `truncated_svd`) run in numpy float64 and return numpy arrays;
`tt_matvec` and `tt_to_dense` are jnp and jit-friendly.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from jax import Array

from distill.errors import DistillError

__all__ = [
    "tt_svd",
    "tt_matvec",
    "tt_to_dense",
    "tt_ranks",
    "tt_num_params",
    "tt_norm",
    "tt_max_ranks",
    "factorize",
    "check_modes",
    "truncated_svd",
]


# ---------------------------------------------------------------------------------------
# Mode factorisation
# ---------------------------------------------------------------------------------------


def _is_int(value, minimum: int) -> bool:
    return (
        not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= minimum
    )


def _sorted_factorisations(n: int, k: int, lo: int):
    """All non-decreasing k-tuples of integers ≥ lo whose product is n."""
    if k == 1:
        if n >= lo:
            yield (n,)
        return
    f = lo
    while f**k <= n:
        if n % f == 0:
            for rest in _sorted_factorisations(n // f, k - 1, f):
                yield (f,) + rest
        f += 1


def factorize(n: int, n_factors: int) -> tuple[int, ...]:
    """Most balanced factorisation of n into n_factors integers ≥ 1 (product exactly n).

    "Balanced" = smallest Σ log(f)² (the spread of the log-factors; their sum is fixed), found
    by exhaustive search over the multiplicative partitions of n. The factors are then placed
    largest in the middle, smallest at the ends: 784 → (4, 7, 7, 4), 512 → (4, 4, 8, 4),
    256 → (4, 4, 4, 4). A prime n gives ones and n itself (13 → (1, 1, 13, 1)).
    """
    if not _is_int(n, 1):
        raise DistillError(f"factorize: n must be an integer >= 1, got {n!r}")
    if not _is_int(n_factors, 1):
        raise DistillError(f"factorize: n_factors must be an integer >= 1, got {n_factors!r}")
    n, n_factors = int(n), int(n_factors)
    best = min(
        _sorted_factorisations(n, n_factors, 1),
        key=lambda fs: sum(math.log(f) ** 2 for f in fs),
    )
    # ascending factors fill the positions from the outside in: left end, right end, ...
    placed = [0] * n_factors
    left, right = 0, n_factors - 1
    for idx, f in enumerate(best):
        if idx % 2 == 0:
            placed[left] = f
            left += 1
        else:
            placed[right] = f
            right -= 1
    return tuple(placed)


def check_modes(
    modes: Sequence[int], n: int, what: str, *, width: str = "input"
) -> tuple[int, ...]:
    """Validate a TT mode tuple against a layer width; return it as a tuple of ints.

    `what` names the setting in messages (e.g. "tt.in_modes"); `width` says which width it
    factorises ("input" or "output"). Raises DistillError with one line when the modes are not
    positive integers or their product is not n.
    """
    if isinstance(modes, (str, bytes)) or not isinstance(modes, Sequence) or len(modes) == 0:
        raise DistillError(
            f"{what} must be a non-empty list of positive integers, got {modes!r}; "
            "leave it unset to factorise the width automatically"
        )
    if not all(_is_int(m, 1) for m in modes):
        raise DistillError(f"{what} must contain positive integers only, got {list(modes)!r}")
    modes = tuple(int(m) for m in modes)
    prod = math.prod(modes)
    if prod != n:
        example = "·".join(str(f) for f in factorize(n, len(modes)))
        raise DistillError(
            f"the factorisation {'·'.join(str(m) for m in modes)} = {prod} of {what} does not "
            f"multiply to the layer's {width} width {n}; give modes whose product is {n} "
            f"(e.g. {example}) or leave {what} unset to factorise it automatically"
        )
    return modes


# ---------------------------------------------------------------------------------------
# Core bookkeeping
# ---------------------------------------------------------------------------------------


def _check_cores(cores: Sequence) -> None:
    if len(cores) == 0:
        raise DistillError("TT-matrix: need at least one core")
    for k, core in enumerate(cores):
        if core.ndim != 4:
            raise DistillError(
                f"TT-matrix: core {k} must have shape (r_left, out_mode, in_mode, r_right), "
                f"got {tuple(core.shape)}"
            )
    ranks = tt_ranks(cores)
    if ranks[0] != 1 or ranks[-1] != 1:
        raise DistillError(f"TT-matrix: boundary ranks must be 1, got ranks {ranks}")
    for k in range(1, len(cores)):
        if cores[k].shape[0] != cores[k - 1].shape[3]:
            raise DistillError(
                f"TT-matrix: core {k - 1} right rank {cores[k - 1].shape[3]} does not match "
                f"core {k} left rank {cores[k].shape[0]}"
            )


def tt_ranks(cores: Sequence) -> tuple[int, ...]:
    """(r_0, r_1, …, r_d) with r_0 = r_d = 1 for valid cores."""
    return (int(cores[0].shape[0]),) + tuple(int(c.shape[3]) for c in cores)


def tt_num_params(cores: Sequence) -> int:
    """Σ_k r_{k-1}·b_k·a_k·r_k."""
    return int(sum(int(np.prod(c.shape)) for c in cores))


def tt_max_ranks(in_modes: Sequence[int], out_modes: Sequence[int], rank: int | Sequence[int]):
    """Inner ranks (r_1, …, r_{d-1}) capped at what the unfoldings can hold.

    r_k ≤ min(∏_{m≤k} a_m b_m, ∏_{m>k} a_m b_m); a rank above that adds parameters but no
    expressiveness. `rank` is one cap for every bond or one per inner bond (d-1 values).
    """
    d = len(in_modes)
    if _is_int(rank, 1):
        caps = (int(rank),) * (d - 1)
    elif (
        isinstance(rank, Sequence)
        and not isinstance(rank, (str, bytes))
        and len(rank) == d - 1
        and all(_is_int(r, 1) for r in rank)
    ):
        caps = tuple(int(r) for r in rank)
    else:
        raise DistillError(
            f"TT rank must be an integer >= 1 or a list of {d - 1} integers >= 1 (one per inner "
            f"bond), got {rank!r}"
        )
    sizes = [a * b for a, b in zip(in_modes, out_modes)]
    return tuple(
        min(caps[k], math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(d - 1)
    )


# ---------------------------------------------------------------------------------------
# TT-SVD
# ---------------------------------------------------------------------------------------


def _truncation_rank(s: np.ndarray, delta: float, max_rank: int | None, shape) -> int:
    """Smallest r ≥ 1 with sqrt(Σ_{m≥r} s_m²) ≤ delta, numerically-zero s_m dropped, ≤ max_rank."""
    # numerical rank (numpy.linalg.matrix_rank's tolerance): exact low-rank input keeps its rank
    tol = s[0] * max(shape) * np.finfo(np.float64).eps if s.size else 0.0
    r = max(1, int(np.count_nonzero(s > tol)))
    if delta > 0:
        tail = np.sqrt(np.cumsum((s**2)[::-1])[::-1])  # tail[m] = ‖s[m:]‖
        ok = np.nonzero(tail <= delta)[0]
        if ok.size:
            r = min(r, max(1, int(ok[0])))
    if max_rank is not None:
        r = min(r, max_rank)
    return r


def tt_svd(
    W,
    in_modes: Sequence[int],
    out_modes: Sequence[int],
    *,
    max_rank: int | None = None,
    eps: float | None = None,
    dtype=None,
) -> list[np.ndarray]:
    """TT-matrix decomposition of a dense W (N_out, N_in) (y = W x) by sequential SVDs.

    Returns d cores G_k (r_{k-1}, b_k, a_k, r_k) as numpy arrays of `dtype` (default: W's
    floating dtype, float32 for integer input); the SVDs run in float64.

    Truncation at every step keeps the fewest singular values whose discarded tail has norm
    ≤ δ = ε/√(d−1)·‖W‖_F (Oseledets' bound: then ‖W − TT(W)‖_F ≤ ε‖W‖_F), and at most
    `max_rank`. With both left None only numerically-zero singular values are dropped (exact).
    With `max_rank` the ε bound no longer holds (the cap wins).
    """
    W_np = np.asarray(W)
    if dtype is None:
        dtype = W_np.dtype if np.issubdtype(W_np.dtype, np.floating) else np.float32
    if W_np.ndim != 2:
        raise DistillError(f"tt_svd: W must be a matrix (N_out, N_in), got shape {W_np.shape}")
    n_out, n_in = W_np.shape
    in_modes = check_modes(in_modes, n_in, "in_modes", width="input")
    out_modes = check_modes(out_modes, n_out, "out_modes", width="output")
    d = len(in_modes)
    if len(out_modes) != d:
        raise DistillError(
            f"tt_svd: in_modes {in_modes} and out_modes {out_modes} must have the same length "
            "(one (out, in) mode pair per core)"
        )
    if max_rank is not None and not _is_int(max_rank, 1):
        raise DistillError(f"tt_svd: max_rank must be an integer >= 1 or None, got {max_rank!r}")
    if eps is not None and not (isinstance(eps, (int, float, np.floating)) and eps >= 0):
        raise DistillError(f"tt_svd: eps must be a number >= 0 or None, got {eps!r}")

    W64 = W_np.astype(np.float64)
    delta = float(eps) / math.sqrt(d - 1) * float(np.linalg.norm(W64)) if eps and d > 1 else 0.0
    # W[j_1..j_d, i_1..i_d] → C[(j_1 i_1), (j_2 i_2), …]: interleave the out and in axes
    interleave = tuple(ax for k in range(d) for ax in (k, d + k))
    C = np.transpose(W64.reshape(out_modes + in_modes), interleave)
    cores = []
    r_prev = 1
    for k in range(d - 1):
        C = C.reshape(r_prev * out_modes[k] * in_modes[k], -1)
        U, s, Vt = np.linalg.svd(C, full_matrices=False)
        r = _truncation_rank(s, delta, max_rank, C.shape)
        cores.append(U[:, :r].reshape(r_prev, out_modes[k], in_modes[k], r))
        C = s[:r, None] * Vt[:r]
        r_prev = r
    cores.append(C.reshape(r_prev, out_modes[-1], in_modes[-1], 1))
    return [np.asarray(c, dtype=dtype) for c in cores]


# ---------------------------------------------------------------------------------------
# Contractions
# ---------------------------------------------------------------------------------------


def tt_matvec(cores: Sequence[Array], x: Array) -> Array:
    """y = W x for a batch without forming W: x (..., N_in) → (..., N_out).

    x is reshaped to (B, o=1, l=1, q=N_in) and core k turns (B, o, l, i_k·q') into
    (B, o·b_k, r_k, q'): one einsum "boliq,ljir->bojrq" per core. Cost per sample
    Σ_k (∏_{m<k} b_m)·r_{k-1}·a_k·b_k·r_k·(∏_{m>k} a_m). Shapes are static: jit-friendly.
    """
    _check_cores(cores)
    n_in = math.prod(int(c.shape[2]) for c in cores)
    n_out = math.prod(int(c.shape[1]) for c in cores)
    if x.shape[-1] != n_in:
        raise DistillError(
            f"tt_matvec: x has {x.shape[-1]} features but the cores' input modes multiply to {n_in}"
        )
    lead = x.shape[:-1]
    state = jnp.reshape(x, (-1, 1, 1, n_in))
    for core in cores:
        r_l, b_k, a_k, r_r = (int(s) for s in core.shape)
        batch, o, _, q = state.shape
        state = jnp.reshape(state, (batch, o, r_l, a_k, q // a_k))
        state = jnp.einsum("boliq,ljir->bojrq", state, core)
        state = jnp.reshape(state, (batch, o * b_k, r_r, q // a_k))
    return jnp.reshape(state, lead + (n_out,))


def tt_to_dense(cores: Sequence[Array]) -> Array:
    """The dense W (N_out, N_in) (y = W x) the cores represent. Memory N_out·N_in."""
    _check_cores(cores)
    acc = jnp.reshape(cores[0], cores[0].shape[1:])  # (o, q, r): out so far, in so far, bond
    for core in cores[1:]:
        o, q, _ = acc.shape
        b_k, a_k, r_r = (int(s) for s in core.shape[1:])
        acc = jnp.einsum("oql,ljir->ojqir", acc, core)
        acc = jnp.reshape(acc, (o * b_k, q * a_k, r_r))
    return acc[:, :, 0]


def tt_norm(cores: Sequence[Array]) -> Array:
    """‖W‖_F of the TT-matrix without forming W: Σ_{j,i} G_k ⊗ G_k transfer, core by core.

    Cost Σ_k r_{k-1}·r_k·b_k·a_k·(r_{k-1} + r_k) instead of N_out·N_in.
    """
    _check_cores(cores)
    acc = jnp.ones((1, 1), cores[0].dtype)  # (l, m): bond of W and bond of its copy
    for core in cores:
        acc = jnp.einsum("lm,ljir,mjis->rs", acc, core, core)
    return jnp.sqrt(acc[0, 0])


# ---------------------------------------------------------------------------------------
# Low-rank baseline
# ---------------------------------------------------------------------------------------


def truncated_svd(W, rank: int, *, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Best rank-r approximation W ≈ A·B (Eckart–Young), A (N_out, r), B (r, N_in).

    The singular values are split evenly: A = U_r √σ, B = √σ V_rᵀ. float64 SVD; returns numpy
    arrays of `dtype` (default W's floating dtype). rank is capped at min(N_out, N_in).
    """
    W_np = np.asarray(W)
    if dtype is None:
        dtype = W_np.dtype if np.issubdtype(W_np.dtype, np.floating) else np.float32
    if W_np.ndim != 2:
        raise DistillError(f"truncated_svd: W must be a matrix, got shape {W_np.shape}")
    if not _is_int(rank, 1):
        raise DistillError(f"truncated_svd: rank must be an integer >= 1, got {rank!r}")
    U, s, Vt = np.linalg.svd(W_np.astype(np.float64), full_matrices=False)
    r = min(int(rank), s.size)
    root = np.sqrt(s[:r])
    A = np.einsum("jk,k->jk", U[:, :r], root)
    B = np.einsum("k,ki->ki", root, Vt[:r])
    return A.astype(dtype), B.astype(dtype)
