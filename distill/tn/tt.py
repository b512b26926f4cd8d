"""TT-matrix (MPO) layers' math: TT-SVD, TT-matrix × vector, dense reference, low-rank SVD.

A dense weight W (N_out, N_in) acting as y = W x, with N_in = ∏ a_k and N_out = ∏ b_k, is
viewed as a 2d-way tensor W[j_1..j_d, i_1..i_d] (row-major flattening of both the output
index j and the input index i) and stored as d cores G_k of shape (r_{k-1}, b_k, a_k, r_k),
r_0 = r_d = 1:

    W[j_1..j_d, i_1..i_d] = G_1[:, j_1, i_1, :] · G_2[:, j_2, i_2, :] · … · G_d[:, j_d, i_d, :]

`tt_svd` finds the cores by sequential truncated SVDs (Oseledets 2011; seed 004, Algorithm 6)
of W with the index pairs (j_k, i_k) grouped per core; `tt_matvec` applies them to a batch
of inputs, by one of `TT_METHODS`: core by core without forming W (t3f's algorithm), the same
on the two halves of the train merged into two blocks, or by forming W once per call and doing
one GEMM. `choose_tt_method` picks one from the shapes with a cost model measured on CPU.

Einsum letters: b batch · i/j TT in/out mode of the current core · l/r left/right rank bond
of the current core · o the output modes already produced (flattened) · q the input modes not
yet consumed (flattened) · k rank of a low-rank factorisation.

The decompositions (`tt_svd`, `truncated_svd`) run in numpy float64 and return numpy arrays;
`tt_matvec` and `tt_to_dense` are jnp and jit-friendly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from distill.errors import DistillError

__all__ = [
    "tt_svd",
    "tt_matvec",
    "TTPlan",
    "tt_plan",
    "tt_matvec_planned",
    "tt_matvec_modes",
    "tt_export_plan",
    "TT_METHODS",
    "choose_tt_method",
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


TT_METHODS = ("cores", "split", "dense")

# Cost model behind `choose_tt_method` on CPU (numbers in its docstring): seconds ≈ MACs /
# _CPU_MACS_PER_S + elements touched / _CPU_ELEMS_PER_S + elements touched by contraction
# steps whose operands exceed _CPU_CACHE_ELEMS / _CPU_SPILL_PER_S + ops · _CPU_S_PER_OP.
_CPU_MACS_PER_S = 1.66e11
_CPU_ELEMS_PER_S = 8.26e9
_CPU_SPILL_PER_S = 4.0e9
_CPU_CACHE_ELEMS = 1 << 22
_CPU_S_PER_OP = 4.4e-6


def _add(*costs: tuple[int, ...]) -> tuple[int, ...]:
    """Sum of cost tuples (MACs, elements touched, elements touched out of cache, ops)."""
    return tuple(sum(c) for c in zip(*costs))


def _step_kind(p: int, n: int, k: int, s: int) -> str:
    """How `_chain` multiplies a core (N, K) into a state (P, K, S) to give (P, N, S).

    "plain" when P or S is 1 (one GEMM, nothing moved); otherwise "broadcast" (the core copied
    P times, one batched GEMM: P·N·K elements written) or "einsum" (XLA transposes the state to
    (K, P·S) and the product back: about 2·P·S·(K + N) elements), whichever moves less.
    """
    if p == 1 or s == 1:
        return "plain"
    return "broadcast" if n * k <= 2 * s * (k + n) else "einsum"


def _merge(cores: Sequence[Array]) -> Array:
    """Consecutive cores as one block (l, ∏b, ∏a, r): the sub-train they span, contracted."""
    acc = cores[0]
    for core in cores[1:]:
        l, o, q, _ = acc.shape
        _, b_k, a_k, r_r = core.shape
        acc = jnp.reshape(jnp.einsum("loqm,mjir->lojqir", acc, core), (l, o * b_k, q * a_k, r_r))
    return acc


def _merge_cost(shapes) -> tuple[int, ...]:
    """Cost tuple (see `_add`) of `_merge` over core shapes (l, b, a, r)."""
    l, o, q, m = shapes[0]
    cost = (0, 0, 0, 0)
    for _, b_k, a_k, r_r in shapes[1:]:
        macs = l * o * q * m * b_k * a_k * r_r
        o, q, m = o * b_k, q * a_k, r_r
        # the einsum's output and its transpose into (l, o·b, q·a, r)
        cost = _add(cost, (macs, 2 * l * o * q * m, 0, 2))
    return cost


def _chain(blocks: Sequence[Array], x2: Array, reverse: bool) -> Array:
    """y (B, N_out) = W x for x2 (B, N_in), contracting one block (l, O, Q, r) at a time.

    The state is (P, K, S): K the modes contracted next, P the free modes before them (the
    batch first), S those after. From the first block (reverse False): P = (B, output modes so
    far), K = (l, Q_k), S = the input modes not yet consumed, and each product (P, O·r, S)
    reshapes for free into the next (P·O, r·Q_{k+1}, S/Q_{k+1}). From the last block: P = (B,
    input modes not yet consumed), K = (Q_k, r), S = the output modes so far. Neither x nor y
    is ever transposed (on XLA:CPU, transposes fused with reshapes cost more than the GEMMs);
    see `_step_kind` for how each product is done.
    """
    shapes = tuple(tuple(int(v) for v in b.shape) for b in blocks)
    return _chain_arranged([_chain_matrix(b, reverse) for b in blocks], shapes, x2, reverse)


def _chain_matrix(block: Array, reverse: bool) -> Array:
    """A block (l, O, Q, r) as the matrix `_chain` multiplies by: (l·O, Q·r) from the last block
    (a free reshape), (O·r, l·Q) from the first (a transpose: an inference plan stores it formed,
    `tt_plan`)."""
    l, o, q, r = (int(v) for v in block.shape)
    if reverse:
        return jnp.reshape(block, (l * o, q * r))  # (N = (l, O), K = (Q, r))
    return jnp.reshape(jnp.transpose(block, (1, 3, 0, 2)), (o * r, l * q))


def _chain_arranged(mats: Sequence[Array], shapes: Sequence[tuple], x2: Array, reverse: bool) -> Array:
    """`_chain` given each block's matrix (`_chain_matrix`) and its shape (l, O, Q, r)."""
    batch = x2.shape[0]
    n = len(mats)
    in_modes = [sh[2] for sh in shapes]
    n_in = math.prod(in_modes)
    n_out = math.prod(sh[1] for sh in shapes)
    if reverse:
        state = jnp.reshape(x2, (batch * n_in // in_modes[-1], in_modes[-1], 1))
        order = range(n - 1, -1, -1)
    else:
        state = jnp.reshape(x2, (batch, in_modes[0], n_in // in_modes[0]))
        order = range(n)
    for k in order:
        l, o, q, r = shapes[k]
        core = mats[k]
        p, _, s = state.shape
        kind = _step_kind(p, core.shape[0], core.shape[1], s)
        if kind == "plain" and s == 1:
            state = jnp.matmul(state[:, :, 0], jnp.transpose(core))[:, :, None]
        elif kind == "plain":
            state = jnp.matmul(core, state[0])[None]
        elif kind == "broadcast":
            state = jnp.matmul(jnp.broadcast_to(core, (p,) + core.shape), state)
        else:
            state = jnp.einsum("nk,pks->pns", core, state)
        if reverse:  # (P', Q_{k-1}, l, O, S) → (P', Q_{k-1}·l, O·S)
            q_next = in_modes[k - 1] if k > 0 else 1
            state = jnp.reshape(state, (p // q_next, q_next * l, o * s))
        else:  # (P, O, r, Q_{k+1}, S') → (P·O, r·Q_{k+1}, S')
            q_next = in_modes[k + 1] if k + 1 < n else 1
            state = jnp.reshape(state, (p * o, r * q_next, s // q_next))
    return jnp.reshape(state, (batch, n_out))


def _chain_cost(shapes, batch: int, reverse: bool) -> tuple[int, ...]:
    """Cost tuple (see `_add`) of `_chain` over block shapes (l, O, Q, r)."""
    n = len(shapes)
    n_in = math.prod(sh[2] for sh in shapes)
    cost = (0, 0, 0, 0)
    if reverse:
        p, s, order = batch * n_in // shapes[-1][2], 1, range(n - 1, -1, -1)
    else:
        p, s, order = batch, n_in // shapes[0][2], range(n)
    for k in order:
        l, o, q, r = shapes[k]
        n_rows, n_k = (l * o, q * r) if reverse else (o * r, l * q)
        moved, ops = p * (n_k + n_rows) * s, 1  # the GEMM's state in and out
        kind = _step_kind(p, n_rows, n_k, s)
        if kind == "broadcast":
            moved, ops = moved + p * n_rows * n_k, 2
        elif kind == "einsum":
            moved, ops = 3 * moved, 3
        spilled = moved if moved > _CPU_CACHE_ELEMS else 0
        cost = _add(cost, (p * n_rows * n_k * s, moved, spilled, ops))
        if reverse:
            q_next = shapes[k - 1][2] if k > 0 else 1
            p, s = p // q_next, o * s
        else:
            q_next = shapes[k + 1][2] if k + 1 < n else 1
            p, s = p * o, s // q_next
    return cost


def _dense_cost(shapes, bond: int, batch: int) -> tuple[int, ...]:
    """Cost tuple (see `_add`) of forming W split at `bond`, then x @ W.T (a blocked GEMM:
    no out-of-cache penalty)."""
    n_in = math.prod(s[2] for s in shapes)
    n_out = math.prod(s[1] for s in shapes)
    cost = (batch * n_in * n_out, batch * (n_in + n_out) + n_in * n_out, 0, 1)
    if len(shapes) == 1:
        return cost
    # the two halves, then `_outer` writing W once
    outer = (n_out * n_in * shapes[bond][0], n_out * n_in, 0, 1)
    return _add(cost, _merge_cost(shapes[:bond]), _merge_cost(shapes[bond:]), outer)


def _split_cost(shapes, bond: int, batch: int, reverse: bool) -> tuple[int, ...]:
    """Cost tuple (see `_add`) of merging the cores into two blocks at `bond`, then `_chain`."""
    halves = (shapes[:bond], shapes[bond:])
    blocks = [
        (h[0][0], math.prod(s[1] for s in h), math.prod(s[2] for s in h), h[-1][3]) for h in halves
    ]
    return _add(_merge_cost(halves[0]), _merge_cost(halves[1]), _chain_cost(blocks, batch, reverse))


def _seconds(cost: tuple[int, ...]) -> float:
    macs, moved, spilled, ops = cost
    return (
        macs / _CPU_MACS_PER_S
        + moved / _CPU_ELEMS_PER_S
        + spilled / _CPU_SPILL_PER_S
        + ops * _CPU_S_PER_OP
    )


def _plans(shapes, batch: int) -> dict:
    """Per method, the cheapest variant under the CPU cost model: (estimated seconds, detail).

    detail: "cores" → reverse (bool); "split" → (bond, reverse); "dense" → bond. With one core
    every method is the same single GEMM.
    """
    d = len(shapes)
    cores = min((_seconds(_chain_cost(shapes, batch, rev)), rev) for rev in (False, True))
    if d == 1:
        dense = (_seconds(_dense_cost(shapes, 0, batch)), 0)
        return {"cores": cores, "split": cores, "dense": dense}
    split = min(
        (_seconds(_split_cost(shapes, bond, batch, rev)), (bond, rev))
        for bond in range(1, d)
        for rev in (False, True)
    )
    dense = min((_seconds(_dense_cost(shapes, bond, batch)), bond) for bond in range(1, d))
    return {"cores": cores, "split": split, "dense": dense}


def _method_cost(method: str, in_modes, out_modes, ranks, batch: int) -> tuple[int, ...]:
    """Cost tuple (see `_add`) of the variant of `method` that `tt_matvec` runs (for the
    calibration in scripts/bench_tt.py)."""
    shapes = _core_shapes(in_modes, out_modes, ranks)
    _, detail = _plans(shapes, batch)[method]
    if method == "dense":
        return _dense_cost(shapes, detail, batch)
    if method == "split" and len(shapes) > 1:
        bond, reverse = detail
        return _split_cost(shapes, bond, batch, reverse)
    return _chain_cost(shapes, batch, detail)


def _core_shapes(in_modes, out_modes, ranks) -> list[tuple[int, int, int, int]]:
    return [(ranks[k], out_modes[k], in_modes[k], ranks[k + 1]) for k in range(len(in_modes))]


def choose_tt_method(
    in_modes: Sequence[int],
    out_modes: Sequence[int],
    ranks: Sequence[int],
    batch: int,
    backend: str | None = None,
) -> str:
    """The method `tt_matvec(..., method=None)` uses for these sizes; ranks = (r_0, …, r_d).

    CPU: the method with the smallest estimated time, each method's cheapest variant (the
    direction, the split bond) counted exactly — GEMM MACs, elements each op reads and writes
    (states, broadcast cores, transposes, W), ops — and priced as
        s ≈ MACs / 1.66e11 + elements / 8.26e9 + spilled / 4.0e9 + ops · 4.4 µs,
    "spilled" being the elements of contraction steps that touch more than 2^22 elements
    (past ~2^23 their time jumps 3-5×; the dense GEMM is blocked and pays no such term).
    Fitted by `scripts/bench_tt.py --calibrate/--refit` (jax 0.10.2, XLA:CPU, 2 cores, load
    0.6-4.3, other jobs running) on 224 forward timings of 3 runs: layers 784→512, 512→512,
    256→256, 1024→256, 4 cores, ranks 2-32, batches 1-4096; median relative error 0.25. There
    the rule picks the fastest method 205 times; otherwise one at most 1.28× slower (1.6× at
    batch 1, where all take 0.02-0.06 ms). Measured in those runs (ms, 784→512):
        rank 4,  batch 256:  split 0.55, "dense" 1.03, cores 0.95 (x @ W.T alone 0.96)
        rank 8,  batch 64:   split 0.30, "dense" 0.40, cores 0.69 (x @ W.T 0.31)
        rank 8,  batch 1024: split 4.8,  "dense" 3.7,  cores 40   (x @ W.T 3.5)
        rank 16, batch 1024: split 30,   "dense" 3.5,  cores 162  (x @ W.T 3.2)
        rank 4,  batch 4096: split 31,   "dense" 8.9,  cores 53   (x @ W.T 7.4)
    so "split" wins at small ranks and batches, "dense" once the batch amortises forming W or
    the states outgrow the cache, and "cores" (memory-bound: its intermediates are up to
    r·b_k times the input) only ties at batch 1. Re-measure with the script on other hardware.
    GPU/TPU: "dense". Not measured on this project's hardware: accelerators run one large GEMM
    near peak, forming W is cheap next to it, and per-kernel launch cost favours few ops.
    """
    d = len(in_modes)
    if len(out_modes) != d or len(ranks) != d + 1:
        raise DistillError(
            f"choose_tt_method: need d in modes, d out modes and d+1 ranks, got {len(in_modes)}, "
            f"{len(out_modes)} and {len(ranks)}"
        )
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return "dense"
    plans = _plans(_core_shapes(in_modes, out_modes, ranks), int(batch))
    return min(TT_METHODS, key=lambda m: plans[m][0])


@jax.custom_jvp
def _outer(left: Array, right: Array) -> Array:
    """W4 (oL, oR, qL, qR) = Σ_r left (oL, qL, r) · right (r, oR, qR).

    One broadcast-multiply-reduce that XLA fuses into a loop writing W4 in the layout x @ W.T
    needs: on XLA:CPU about half the time of the GEMM (oL·qL, r)·(r, oR·qR) plus the
    transpose of its (oL, qL, oR, qR) result. Its tangent (below) is written with einsums so
    that the backward pass is GEMMs too; the transpose of this fused reduce is an elementwise
    loop 20-70× slower.
    """
    return jnp.sum(left[:, None, :, None, :] * jnp.transpose(right, (1, 2, 0))[None, :, None], -1)


@_outer.defjvp
def _outer_jvp(primals, tangents):
    left, right = primals
    d_left, d_right = tangents
    d_out = jnp.einsum("jpr,roq->jopq", d_left, right) + jnp.einsum("jpr,roq->jopq", left, d_right)
    return _outer(left, right), d_out


def _form_dense(cores: Sequence[Array], bond: int) -> Array:
    """W (N_out, N_in) from the two halves of the train merged at bond `bond`."""
    if len(cores) == 1:
        return cores[0][0, :, :, 0]
    left = _merge(cores[:bond])[0]  # (oL, qL, r)
    right = _merge(cores[bond:])[..., 0]  # (r, oR, qR)
    w = _outer(left, right)
    return jnp.reshape(w, (left.shape[0] * right.shape[1], left.shape[1] * right.shape[2]))


def tt_matvec(cores: Sequence[Array], x: Array, *, method: str | None = None) -> Array:
    """y = W x for a batch: x (..., N_in) → (..., N_out). Methods (`TT_METHODS`):

    "cores"  contract x with one core at a time, never forming W: per sample
             Σ_k (∏_{m<k} b_m)·r_{k-1}·a_k·b_k·r_k·(∏_{m>k} a_m) MACs (from the first core;
             from the last when that is cheaper). Memory-bound beyond small batches.
    "split"  merge the cores into two blocks at the bond s the cost model prefers, then
             contract as "cores" does: two GEMMs, r_s·(∏_{m≤s} b_m·N_in + ∏_{m>s} a_m·N_out)
             MACs per sample from the first block, and a smaller intermediate than "cores".
             Fastest at small ranks (to batches of ~1-2k) and mid ranks (to ~64-256).
    "dense"  form W (N_out, N_in) once per call (the two merged halves multiplied over their
             bond: N_out·N_in·r, independent of the batch) and do one GEMM x @ W.T. Fastest
             for large batches unless the ranks are small.
    None     `choose_tt_method` (cost model of the backend).

    All are jnp, differentiable and jit-friendly (the choice depends only on static shapes).
    """
    if method is not None and method not in TT_METHODS:
        raise DistillError(f"tt_matvec: method must be one of {TT_METHODS} or None, got {method!r}")
    _check_cores(cores)
    in_modes = tuple(int(c.shape[2]) for c in cores)
    out_modes = tuple(int(c.shape[1]) for c in cores)
    n_in, n_out = math.prod(in_modes), math.prod(out_modes)
    if x.shape[-1] != n_in:
        raise DistillError(
            f"tt_matvec: x has {x.shape[-1]} features but the cores' input modes multiply to {n_in}"
        )
    lead = x.shape[:-1]
    x2 = jnp.reshape(x, (math.prod(lead), n_in))
    shapes = _core_shapes(in_modes, out_modes, tt_ranks(cores))
    if method is None:
        method = choose_tt_method(in_modes, out_modes, tt_ranks(cores), x2.shape[0])
    _, detail = _plans(shapes, x2.shape[0])[method]
    if method == "dense":
        y = jnp.matmul(x2, jnp.transpose(_form_dense(cores, detail)))
    elif method == "split" and len(cores) > 1:
        bond, reverse = detail
        y = _chain([_merge(cores[:bond]), _merge(cores[bond:])], x2, reverse)
    else:  # "cores", or "split" of a single core (one block either way)
        y = _chain(list(cores), x2, detail)
    return jnp.reshape(y, lead + (n_out,))


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=("blocks",), meta_fields=("method", "reverse", "shapes")
)
@dataclasses.dataclass(frozen=True)
class TTPlan:
    """A TT-matrix laid out once for inference (`tt_plan`): "dense" holds Wᵀ (N_in, N_out);
    "split" the two merged blocks and "cores" the cores, each as the matrix the chain multiplies
    by (`_chain_matrix`; `shapes` their (l, O, Q, r)); "modes" (`tt_export_plan`) the cores for
    `tt_matvec_modes`. A pytree (method, reverse, shapes static)."""

    blocks: tuple
    method: str
    reverse: bool
    shapes: tuple | None = None


def tt_plan(cores: Sequence[Array], batch: int, *, method: str | None = None) -> TTPlan:
    """Precompute the products of the fixed cores for inference at `batch`, and choose how.

    With the cores fixed, forming W or the merged blocks is no longer per-call work, so the
    choice compares only the per-call products under the CPU cost model (`_seconds`):
    x @ Wᵀ ("dense": exactly a dense layer's GEMM) against the two-block chain ("split", at
    its best bond and direction) and the core-by-core chain ("cores"). None: the cheapest.

    Raises:
      DistillError: malformed cores or an unknown method.
    """
    if method is not None and method not in TT_METHODS:
        raise DistillError(f"tt_plan: method must be one of {TT_METHODS} or None, got {method!r}")
    _check_cores(cores)
    shapes = _core_shapes([int(c.shape[2]) for c in cores], [int(c.shape[1]) for c in cores],
                          tt_ranks(cores))
    n_in, n_out = math.prod(sh[2] for sh in shapes), math.prod(sh[1] for sh in shapes)
    batch = int(batch)
    options = {"dense": (_seconds((batch * n_in * n_out, batch * (n_in + n_out) + n_in * n_out, 0, 1)), None),
               "cores": min((_seconds(_chain_cost(shapes, batch, rev)), rev) for rev in (False, True))}
    options["split"] = options["cores"]
    for bond in range(1, len(shapes)):
        halves = (shapes[:bond], shapes[bond:])
        blocks = [(h[0][0], math.prod(x[1] for x in h), math.prod(x[2] for x in h), h[-1][3])
                  for h in halves]
        for rev in (False, True):
            cand = (_seconds(_chain_cost(blocks, batch, rev)), (bond, rev))
            if options["split"][1] is None or isinstance(options["split"][1], bool) or cand < options["split"]:
                options["split"] = cand
    method = method or min(options, key=lambda m: options[m][0])
    detail = options[method][1]
    if method == "dense":
        return TTPlan((jnp.transpose(tt_to_dense(cores)),), "dense", False)
    if method == "split" and isinstance(detail, tuple):
        bond, rev = detail
        return _chain_plan((_merge(cores[:bond]), _merge(cores[bond:])), "split", bool(rev))
    return _chain_plan(tuple(cores), method, bool(detail))


def _chain_plan(blocks: tuple, method: str, reverse: bool) -> TTPlan:
    """The blocks stored as `_chain`'s matrices: at batch 1, transposing them on every call took
    4 of the TT student's 12 XLA operations (docs/bench/speed_ii.md)."""
    shapes = tuple(tuple(int(v) for v in b.shape) for b in blocks)
    return TTPlan(tuple(_chain_matrix(b, reverse) for b in blocks), method, reverse, shapes)


def tt_matvec_modes(cores: Sequence[Array], x2: Array) -> Array:
    """y (B, N_out) = W x for x2 (B, N_in), one einsum per core with the batch on its own axis.

    x2 is read as (B, 1, a_1, …, a_d) (row-major input modes, as W's columns); core k
    (r_{k-1}, b_k, a_k, r_k) turns the state (B, b_1…b_{k-1}, r_{k-1}, a_k…a_d) into
    (B, b_1…b_k, r_k, a_{k+1}…a_d). The same MACs as "cores" from the first core, but the batch
    is never merged with a mode in a reshape — which is what an export with a symbolic batch
    (jax2onnx) needs; on CPU the chain (`tt_matvec`) is faster.

    Raises:
      DistillError: malformed cores, or x2 not (B, N_in).
    """
    _check_cores(cores)
    in_modes = [int(c.shape[2]) for c in cores]
    n_in, n_out = math.prod(in_modes), math.prod(int(c.shape[1]) for c in cores)
    if x2.ndim != 2 or x2.shape[1] != n_in:
        raise DistillError(f"tt_matvec_modes: x must have shape (batch, {n_in}), got {tuple(x2.shape)}")
    d = len(cores)
    letters = iter("abcdefghijklmnopqrstuvwxyABCDEFGHIJKLMNOPQRSTUVWXY")
    a = [next(letters) for _ in range(d)]
    b = [next(letters) for _ in range(d)]
    r = [next(letters) for _ in range(d + 1)]
    state, idx = jnp.reshape(x2, (x2.shape[0], 1, *in_modes)), ["z", r[0], *a]
    for k, core in enumerate(cores):
        out = ["z", *b[: k + 1], r[k + 1], *a[k + 1:]]
        spec = f"{''.join(idx)},{r[k]}{b[k]}{a[k]}{r[k + 1]}->{''.join(out)}"
        state, idx = jnp.einsum(spec, state, core), out
    return jnp.reshape(state, (x2.shape[0], n_out))


def tt_export_plan(cores: Sequence[Array]) -> TTPlan:
    """A plan whose `tt_matvec_planned` is `tt_matvec_modes`: the cores as they are, for an
    export whose batch is symbolic (the CPU plans merge the batch into reshapes or store W)."""
    _check_cores(cores)
    return TTPlan(tuple(cores), "modes", False)


def tt_matvec_planned(plan: TTPlan, x: Array) -> Array:
    """y = W x with a `tt_plan` (or `tt_export_plan`): x (..., N_in) → (..., N_out); the same
    values as `tt_matvec`."""
    lead = x.shape[:-1]
    x2 = jnp.reshape(x, (math.prod(lead), x.shape[-1]))
    if plan.method == "modes":
        y = tt_matvec_modes(plan.blocks, x2)
    elif plan.method == "dense":
        y = jnp.matmul(x2, plan.blocks[0])
    else:
        y = _chain_arranged(list(plan.blocks), plan.shapes, x2, plan.reverse)
    return jnp.reshape(y, lead + (y.shape[-1],))


def tt_to_dense(cores: Sequence[Array]) -> Array:
    """The dense W (N_out, N_in) (y = W x) the cores represent. Memory N_out·N_in.

    Formed as "dense" `tt_matvec` does: the train's two halves merged, then multiplied over
    the bond where that costs least (`_outer`).
    """
    _check_cores(cores)
    shapes = _core_shapes(
        [int(c.shape[2]) for c in cores], [int(c.shape[1]) for c in cores], tt_ranks(cores)
    )
    bond = min(range(1, len(cores)), key=lambda b: _dense_cost(shapes, b, 0)[0], default=0)
    return _form_dense(cores, bond)


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
