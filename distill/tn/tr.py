"""Tensor-ring (TR) math: TR-SVD, reconstruction, dense and convolution products.

TR (seed 004 Def. 1.2.3; Zhao et al. 2016): T (n_0, …, n_{d-1}) with
    T[i_0, …, i_{d-1}] = Tr(G_0[:, i_0, :] · G_1[:, i_1, :] ⋯ G_{d-1}[:, i_{d-1}, :]),
cores G_k (r_k, n_k, r_{k+1}) with r_d = r_0: a tensor train whose ends are joined. Ranks are
written (r_0, …, r_{d-1}), r_k the bond left of core k. A ring has no first core, so any cyclic
shift of the modes is the same family.

Dense layer (TedNet TR layer, seed 004 Def. 3.4.4): W (N_out, N_in), N_in = ∏ a_p, N_out = ∏ b_q,
as the ring over the modes (a_1, …, a_N, b_1, …, b_M): in cores first, then out cores,
    W[j, i] = Tr(A_1[i_1] ⋯ A_N[i_N] · B_1[j_1] ⋯ B_M[j_M]).
`tr_matvec` merges the in cores into one block P (r_0, N_in, r_N) and the out cores into
Q (r_N, N_out, r_0) (batch-independent), then z[b, l, r] = Σ_i x[b, i] P[l, i, r] and
y[b, j] = Σ_{l,r} z[b, l, r] Q[r, j, l]: r_0·r_N·(N_in + N_out) MACs per sample, W never formed.

Convolution (Wang et al. 2018, "Wide compression: tensor ring nets"; TedNet TRConv2D): K (kh, kw,
C_in, C_out), C_in = ∏ c_p, C_out = ∏ f_q, as the ring over (c_1, …, c_N, kh·kw, f_1, …, f_M):
in cores, one spatial core S (r_N, kh·kw, r_{N+1}), out cores. Forward: the merged in block
(r_0, C_in, r_N) as a 1×1 conv C_in → r_0·r_N; the r_0 index folded into the batch and one
kh×kw conv r_N → r_{N+1} (strides, padding); then the merged out block (r_{N+1}, C_out, r_0)
contracts (r_0, r_{N+1}) → C_out. Exact against conv2d with the reconstructed kernel.

TR-SVD is our own, not TensorLy's `tensor_ring`: TensorLy takes fixed ranks only (no accuracy
ε), raises when r_0·r_1 exceeds the first unfolding, and keeps numerically-zero singular values.
Ours follows seed 004 Algorithm 7 with Zhao et al.'s thresholds δ_1 = √2·ε‖T‖/√d for the first
SVD and δ = ε‖T‖/√d for the others (so ‖T − TR‖_F ≤ ε‖T‖_F when no rank cap binds), takes rank
caps, and may start at any mode (`start`); with the same ranks, start and sign convention
(`_sign_fixed_svd`) it gives the same tensor as TensorLy (tests). Known limits of TR-SVD: the
first SVD keeps r_start·r_{start+1} singular vectors of a matrix with n_start rows, so those two
bonds multiply to at most n_start (hence the default start = the largest mode); and the ranks it
finds can exceed a ring's minimal ranks (the later bonds carry r_start along: up to r_start times
larger; Mickelin & Karaman 2020), so a ring built from random rank-r cores comes back exact but
with larger ranks, or inexact if capped at r. It runs in numpy float64 and returns numpy arrays;
the products are jnp and jit-friendly.

Einsum letters: b batch · y/x image row/column · h/w kernel height/width · c/f in/out channel ·
i/j in/out feature (flattened modes) · l/r left/right bond (m, s the next bonds; a the bond
copies in norms) · q the modes merged so far.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import Array

from distill.errors import DistillError
from distill.tn import tt as tt_lib
from distill.tn.tucker import (
    _check_image,
    _float_dtype,
    _is_int,
    check_kernel_size,
    conv2d,
)

__all__ = [
    "tr_conv",
    "tr_decompose",
    "tr_decompose_dense",
    "tr_decompose_kernel",
    "tr_matvec",
    "tr_norm",
    "tr_ranks",
    "tr_reconstruct",
    "tr_to_dense",
    "tr_to_kernel",
]


# ---------------------------------------------------------------------------------------
# Ring bookkeeping
# ---------------------------------------------------------------------------------------


def tr_ranks(cores: Sequence) -> tuple[int, ...]:
    """(r_0, …, r_{d-1}): r_k = the left bond of core k."""
    return tuple(int(c.shape[0]) for c in cores)


def _check_chain(cores: Sequence, what: str, closed: bool) -> None:
    if len(cores) == 0:
        raise DistillError(f"{what}: need at least one core")
    for k, core in enumerate(cores):
        if core.ndim != 3:
            raise DistillError(
                f"{what}: core {k} must have shape (r_left, n, r_right), got {tuple(core.shape)}"
            )
    pairs = list(itertools.pairwise(cores)) + ([(cores[-1], cores[0])] if closed else [])
    for k, (left, right) in enumerate(pairs):
        if left.shape[2] != right.shape[0]:
            raise DistillError(
                f"{what}: core {k} right bond {left.shape[2]} does not match core "
                f"{(k + 1) % len(cores)} left bond {right.shape[0]}"
            )


def _merge(cores: Sequence[Array]) -> Array:
    """Consecutive cores as one block (r_left, ∏ n, r_right)."""
    acc = cores[0]
    for core in cores[1:]:
        l, q, _ = acc.shape
        _, i, r = core.shape
        acc = jnp.reshape(jnp.einsum("lqm,mir->lqir", acc, core), (l, q * i, r))
    return acc


def tr_reconstruct(cores: Sequence[Array]) -> Array:
    """T (n_0, …, n_{d-1}) = the traces of the core products. Memory r_0²·∏ n.

    Raises: DistillError when the cores are not 3-way or their bonds do not close a ring.
    """
    _check_chain(cores, "tr_reconstruct", closed=True)
    block = _merge(cores)
    return jnp.reshape(jnp.einsum("lql->q", block), tuple(int(c.shape[1]) for c in cores))


def tr_norm(cores: Sequence[Array]) -> Array:
    """‖T‖_F of a ring without forming T, by transfer matrices Σ_i G_k[i] ⊗ G_k[i].

    Cost Σ_k r_0²·r_k·n_k·r_{k+1}·(r_k + r_{k+1}). Raises: as tr_reconstruct.
    """
    _check_chain(cores, "tr_norm", closed=True)
    acc = jnp.einsum("lir,ais->lars", cores[0], cores[0])  # (l, a, r, s): two copies' bonds
    for core in cores[1:]:
        acc = jnp.einsum("lars,rim,sin->lamn", acc, core, core)
    return jnp.sqrt(jnp.einsum("lala->", acc))


# ---------------------------------------------------------------------------------------
# TR-SVD
# ---------------------------------------------------------------------------------------


def _keep(s: np.ndarray, delta: float, cap: int | None, shape) -> int:
    """Smallest r ≥ 1 with ‖s[r:]‖ ≤ delta, numerically-zero s dropped, then ≤ cap."""
    tol = s[0] * max(shape) * np.finfo(np.float64).eps if s.size else 0.0
    r = max(1, int(np.count_nonzero(s > tol)))
    if delta > 0:
        tail = np.sqrt(np.cumsum((s**2)[::-1])[::-1])  # tail[m] = ‖s[m:]‖
        ok = np.nonzero(tail <= delta)[0]
        if ok.size:
            r = min(r, max(1, int(ok[0])))
    return r if cap is None else min(r, cap)


def _split(p: int, cap_left: int | None, cap_right: int | None) -> tuple[int, int]:
    """(r_0, r_1) with r_0·r_1 ≤ p, r_0 ≤ cap_left, r_1 ≤ cap_right: the largest product, then
    the most balanced pair, then the smaller r_0 (Zhao et al.: r_0·r_1 = p, |r_0 − r_1| least)."""
    cap_left = p if cap_left is None else cap_left
    cap_right = p if cap_right is None else cap_right
    best = (1, 1)
    for a in range(1, min(p, cap_left) + 1):
        b = min(cap_right, p // a)
        if b < 1:
            break
        if (a * b, -abs(a - b)) > (best[0] * best[1], -abs(best[0] - best[1])):
            best = (a, b)
    return best


def _sign_fixed_svd(C: np.ndarray):
    """SVD with each column of U signed so its largest-magnitude entry is positive.

    The first TR-SVD step cuts its p singular vectors into (r_0, r_1) pairs, and the next SVD
    sees r_0 on the column side and r_1 on the row side: flipping one singular pair's sign is then
    not a row or column scaling, and changes the ring that comes out (TR-SVD is not unique). This
    convention (scikit-learn's `svd_flip`, which TensorLy applies) makes the result independent of
    the LAPACK build and equal to TensorLy's `tensor_ring`.
    """
    U, s, Vt = np.linalg.svd(C, full_matrices=False)
    signs = np.sign(U[np.argmax(np.abs(U), axis=0), np.arange(U.shape[1])])
    signs[signs == 0] = 1.0
    return U * signs, s, Vt * signs[:, None]


def _caps(rank, d: int) -> list[int | None]:
    if rank is None:
        return [None] * d
    if _is_int(rank, 1):
        return [int(rank)] * d
    if (
        isinstance(rank, Sequence) and not isinstance(rank, (str, bytes)) and len(rank) == d
        and all(_is_int(r, 1) for r in rank)
    ):
        return [int(r) for r in rank]
    raise DistillError(
        f"TR rank must be None, an integer >= 1 or a list of {d} integers >= 1 (one cap per bond "
        f"r_0..r_{d - 1}), got {rank!r}"
    )


def tr_decompose(
    T, *, rank=None, eps: float | None = None, start: int | None = None, dtype=None
) -> list[np.ndarray]:
    """TR-SVD (seed 004 Algorithm 7; Zhao et al. 2016): cores G_k (r_k, n_k, r_{k+1}) of T.

    rank: None, one cap for every bond, or d caps (r_0, …, r_{d-1}). eps: relative accuracy,
    ‖T − TR‖_F ≤ eps·‖T‖_F when no cap binds. Neither: only numerically-zero singular values
    are dropped (exact up to rounding). start: the mode whose unfolding is split first (its two
    bonds multiply to at most n_start; default the largest mode); the cores come back in T's
    mode order whatever the start. The first rank p = r_start·r_{start+1} is split into the most
    balanced pair allowed by the caps (lowering p if the caps force it). Runs in numpy float64;
    returns numpy arrays of `dtype` (default T's floating dtype). Raises: DistillError for a bad
    rank, eps or start.
    """
    T_np = np.asarray(T)
    dtype = _float_dtype(T_np, dtype)
    d = T_np.ndim
    if d == 0:
        raise DistillError("tr_decompose: need a tensor of order >= 1, got a scalar")
    caps = _caps(rank, d)
    if eps is not None and not (isinstance(eps, (int, float, np.floating)) and eps >= 0):
        raise DistillError(f"tr_decompose: eps must be a number >= 0 or None, got {eps!r}")
    if start is None:
        start = int(np.argmax(T_np.shape))
    elif not (_is_int(start, 0) and start < d):
        raise DistillError(f"tr_decompose: start must be a mode in 0..{d - 1}, got {start!r}")
    if d == 1:
        return [T_np.astype(dtype).reshape(1, -1, 1)]

    order = tuple(range(start, d)) + tuple(range(start))
    T64 = np.transpose(T_np.astype(np.float64), order)
    caps = [caps[m] for m in order]  # caps[k] = bond left of the k-th core in this order
    n = T64.shape
    norm = float(np.linalg.norm(T64))
    delta = float(eps) * norm / math.sqrt(d) if eps else 0.0

    C = T64.reshape(n[0], -1)
    U, s, Vt = _sign_fixed_svd(C)
    p = _keep(s, math.sqrt(2.0) * delta, None, C.shape)
    r0, r1 = _split(p, caps[0], caps[1])
    p = r0 * r1
    cores = [np.transpose(U[:, :p].reshape(n[0], r0, r1), (1, 0, 2))]
    # the rest (r0, r1, n_1…n_{d-1}) → (r1, n_1…n_{d-1}, r0): r0 rides along at the far end
    C = np.moveaxis((s[:p, None] * Vt[:p]).reshape(r0, r1, -1), 0, -1)
    r_prev = r1
    for k in range(1, d - 1):
        C = C.reshape(r_prev * n[k], -1)
        U, s, Vt = np.linalg.svd(C, full_matrices=False)
        r = _keep(s, delta, caps[k + 1], C.shape)
        cores.append(U[:, :r].reshape(r_prev, n[k], r))
        C = s[:r, None] * Vt[:r]
        r_prev = r
    cores.append(C.reshape(r_prev, n[d - 1], r0))
    # back to T's mode order: the k-th core here is mode order[k]
    out: list[np.ndarray] = [None] * d  # type: ignore[list-item]
    for k, mode in enumerate(order):
        out[mode] = cores[k].astype(dtype)
    return out


# ---------------------------------------------------------------------------------------
# Dense layer
# ---------------------------------------------------------------------------------------


def _blocks(in_cores, out_cores, what: str):
    _check_chain(list(in_cores) + list(out_cores), what, closed=True)
    return _merge(in_cores), _merge(out_cores)


def tr_to_dense(in_cores: Sequence[Array], out_cores: Sequence[Array]) -> Array:
    """W (N_out, N_in): W[j, i] = Tr(P[:, i, :] · Q[:, j, :]), P/Q the merged in/out cores.

    Raises: DistillError when the cores do not close a ring.
    """
    P, Q = _blocks(in_cores, out_cores, "tr_to_dense")
    return jnp.einsum("lir,rjl->ji", P, Q)


def tr_matvec(in_cores: Sequence[Array], out_cores: Sequence[Array], x: Array) -> Array:
    """y = W x for a batch, W a tensor ring never formed: x (..., N_in) → (..., N_out).

    Merging the blocks costs Σ (partial products) independent of the batch; then r_0·r_N·
    (N_in + N_out) MACs per sample. Raises: DistillError for a broken ring or x's width ≠ N_in.
    """
    P, Q = _blocks(in_cores, out_cores, "tr_matvec")
    if x.shape[-1] != P.shape[1]:
        raise DistillError(
            f"tr_matvec: x has {x.shape[-1]} features but the in cores' modes multiply to {P.shape[1]}"
        )
    z = jnp.einsum("...i,lir->...lr", x, P)
    return jnp.einsum("...lr,rjl->...j", z, Q)


def tr_decompose_dense(
    W, in_modes: Sequence[int], out_modes: Sequence[int], *, rank=None, eps=None, start=None,
    dtype=None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(in_cores, out_cores) of W (N_out, N_in) by `tr_decompose` of the ring (a…, b…).

    rank: None, one cap, or N + M caps (bonds left of a_1…a_N, b_1…b_M). Raises: DistillError
    when W is not a matrix or the modes do not multiply to its widths, or as tr_decompose.
    """
    W_np = np.asarray(W)
    if W_np.ndim != 2:
        raise DistillError(f"tr_decompose_dense: W must be a matrix (N_out, N_in), got {W_np.shape}")
    in_modes = tt_lib.check_modes(in_modes, W_np.shape[1], "in_modes", width="input")
    out_modes = tt_lib.check_modes(out_modes, W_np.shape[0], "out_modes", width="output")
    T = W_np.T.reshape(in_modes + out_modes)
    cores = tr_decompose(T, rank=rank, eps=eps, start=start, dtype=dtype)
    return cores[: len(in_modes)], cores[len(in_modes) :]


# ---------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------


def _conv_blocks(in_cores, spatial_core, out_cores, kernel_size, what: str):
    _check_chain(list(in_cores) + [spatial_core] + list(out_cores), what, closed=True)
    kh, kw = check_kernel_size(kernel_size)
    if spatial_core.shape[1] != kh * kw:
        raise DistillError(
            f"{what}: spatial core has {spatial_core.shape[1]} positions, kernel_size {kh}×{kw} "
            f"needs {kh * kw}"
        )
    S = jnp.reshape(spatial_core, (spatial_core.shape[0], kh, kw, spatial_core.shape[2]))
    return _merge(in_cores), S, _merge(out_cores)


def tr_to_kernel(
    in_cores: Sequence[Array], spatial_core: Array, out_cores: Sequence[Array], kernel_size
) -> Array:
    """K (kh, kw, C_in, C_out) = Tr(P[:, c, :] · S[:, (h, w), :] · Q[:, f, :]).

    Raises: DistillError for a broken ring or a spatial core that is not (r, kh·kw, s).
    """
    P, S, Q = _conv_blocks(in_cores, spatial_core, out_cores, kernel_size, "tr_to_kernel")
    return jnp.einsum("lcr,rhws,sfl->hwcf", P, S, Q)


def tr_conv(
    x: Array,
    in_cores: Sequence[Array],
    spatial_core: Array,
    out_cores: Sequence[Array],
    *,
    kernel_size,
    strides=(1, 1),
    padding="VALID",
) -> Array:
    """conv2d(x, tr_to_kernel(...)) without forming K: x (B, H, W, C_in) → (B, H', W', C_out).

    Per input pixel r_0·r_N·C_in MACs; per output pixel r_0·kh·kw·r_N·r_{N+1} (the conv, on
    B·r_0 images) + r_0·r_{N+1}·C_out. Raises: DistillError for a broken ring, bad input,
    strides or padding.
    """
    P, S, Q = _conv_blocks(in_cores, spatial_core, out_cores, kernel_size, "tr_conv")
    _check_image(x, P.shape[1], "tr_conv")
    # one convolution per value of the ring's closing bond r_0 (unrolled): the batch is never
    # merged with r_0 in a reshape, so an export with a symbolic batch converts, and on CPU it
    # ran ~10 % faster than one convolution over B·r_0 images (a grouped convolution: ~20× slower)
    u = jnp.einsum("byxc,lcr->lbyxr", x, P)
    kernel = jnp.einsum("rhws->hwrs", S)
    v = jnp.stack([conv2d(u[l], kernel, strides=strides, padding=padding) for l in range(P.shape[0])], axis=3)
    return jnp.einsum("byxls,sfl->byxf", v, Q)


def tr_decompose_kernel(
    K, in_modes: Sequence[int], out_modes: Sequence[int], *, rank=None, eps=None, start=None,
    dtype=None,
) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """(in_cores, spatial_core, out_cores) of K (kh, kw, C_in, C_out) by `tr_decompose` of the
    ring (c_1…c_N, kh·kw, f_1…f_M).

    rank: None, one cap, or N + 1 + M caps (bond left of each ring mode). Raises: DistillError
    when K is not 4-D or the modes do not multiply to C_in / C_out, or as tr_decompose.
    """
    K_np = np.asarray(K)
    if K_np.ndim != 4:
        raise DistillError(
            f"tr_decompose_kernel: kernel must be HWIO (kh, kw, C_in, C_out), got {K_np.shape}"
        )
    kh, kw, c_in, c_out = K_np.shape
    in_modes = tt_lib.check_modes(in_modes, c_in, "in_modes", width="input-channel")
    out_modes = tt_lib.check_modes(out_modes, c_out, "out_modes", width="output-channel")
    n_in = len(in_modes)
    T = K_np.reshape((kh * kw,) + in_modes + out_modes)
    T = np.moveaxis(T, 0, n_in)  # (c_1…c_N, kh·kw, f_1…f_M)
    cores = tr_decompose(T, rank=rank, eps=eps, start=start, dtype=dtype)
    return cores[:n_in], cores[n_in], cores[n_in + 1 :]
