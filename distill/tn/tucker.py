"""Tucker and Tucker-2 math: HOSVD / HOOI, reconstruction, dense and convolution products.

Tucker (seed 004 Def. 1.2.1; Kolda & Bader 2009): T (n_1, …, n_d) ≈ G ×_1 U_1 ×_2 … ×_d U_d,
core G (r_1, …, r_d), factors U_k (n_k, r_k). A *partial* Tucker decomposes only some modes
(`modes`); the others keep their full size in the core.

Tucker-2 (seed 003 "TK"; Kim et al. 2016; TedNet TK2) decomposes two modes:

    dense layer   W (N_out, N_in) ≈ U_out · G · U_inᵀ,  U_in (N_in, r_in), G (r_out, r_in),
                  U_out (N_out, r_out);  y = U_out (G (U_inᵀ x)).  For a matrix the caps below
                  force r_in = r_out = r: the same set of matrices as a rank-r SVD layer, with
                  r² more parameters (the core) and another parametrisation.
    conv kernel   K (kh, kw, C_in, C_out) ≈ Σ_{k,m} U_in[c, k] · G[h, w, k, m] · U_out[f, m],
                  U_in (C_in, r_in), G (kh, kw, r_in, r_out) (HWIO), U_out (C_out, r_out);
                  forward = 1×1 conv C_in → r_in, kh×kw conv r_in → r_out with the layer's
                  strides and padding, 1×1 conv r_out → C_out (exact: a 1×1 conv without bias
                  commutes with zero padding).

Decompositions call TensorLy (`tensorly.decomposition.partial_tucker`: HOOI started from HOSVD,
seed 004 Algorithms 4-5; `n_iter_max=0` is HOSVD) on numpy float64 inside
`tensorly.backend_context("numpy")`, so no global backend is touched. They return numpy arrays.
Products and reconstructions are jnp and jit-friendly.

Convolutions (also used by `tn.cp` and `tn.tr`, which import the helpers from here): NHWC
activations, HWIO kernels (flax.nnx.Conv's layout), strides (sh, sw), padding "SAME", "VALID"
or explicit pairs ((top, bottom), (left, right)); dilation 1, groups 1; cross-correlation
(no kernel flip), as `jax.lax.conv_general_dilated` and flax compute it.

Einsum letters: b batch · y/x image row/column · h/w kernel height/width · c/f in/out channel ·
i/j in/out feature · k in-side rank · m out-side rank (n, l its copies in norms).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from distill.errors import DistillError

__all__ = [
    "TUCKER_METHODS",
    "check_kernel_size",
    "check_padding",
    "check_strides",
    "conv2d",
    "resolve_padding",
    "tucker2_conv",
    "tucker2_decompose_dense",
    "tucker2_decompose_kernel",
    "tucker2_matvec",
    "tucker2_to_dense",
    "tucker2_to_kernel",
    "tucker_decompose",
    "tucker_max_ranks",
    "tucker_norm",
    "tucker_reconstruct",
]

TUCKER_METHODS = ("hooi", "hosvd")


# ---------------------------------------------------------------------------------------
# Argument checks (shared with tn.cp and tn.tr)
# ---------------------------------------------------------------------------------------


def _is_int(value, minimum: int) -> bool:
    return (
        not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= minimum
    )


def _float_dtype(array: np.ndarray, dtype):
    """`dtype`, or the array's floating dtype, or float32 for integer input."""
    if dtype is not None:
        return dtype
    return array.dtype if np.issubdtype(array.dtype, np.floating) else np.float32


def check_kernel_size(kernel_size, what: str = "kernel_size") -> tuple[int, int]:
    """(kh, kw) from an int or a pair of ints ≥ 1. Raises: DistillError otherwise."""
    if _is_int(kernel_size, 1):
        return (int(kernel_size), int(kernel_size))
    if (
        isinstance(kernel_size, Sequence)
        and not isinstance(kernel_size, (str, bytes))
        and len(kernel_size) == 2
        and all(_is_int(k, 1) for k in kernel_size)
    ):
        return (int(kernel_size[0]), int(kernel_size[1]))
    raise DistillError(f"{what} must be an integer >= 1 or a pair (kh, kw) of them, got {kernel_size!r}")


def check_strides(strides, what: str = "strides") -> tuple[int, int]:
    """(sh, sw) from an int or a pair of ints ≥ 1. Raises: DistillError otherwise."""
    if _is_int(strides, 1):
        return (int(strides), int(strides))
    if (
        isinstance(strides, Sequence)
        and not isinstance(strides, (str, bytes))
        and len(strides) == 2
        and all(_is_int(s, 1) for s in strides)
    ):
        return (int(strides[0]), int(strides[1]))
    raise DistillError(f"{what} must be an integer >= 1 or a pair (sh, sw) of them, got {strides!r}")


def check_padding(padding, what: str = "padding"):
    """Validated padding: "SAME", "VALID" or ((top, bottom), (left, right)) of ints ≥ 0.

    Raises: DistillError for anything else.
    """
    if isinstance(padding, str):
        if padding.upper() in ("SAME", "VALID"):
            return padding.upper()
    elif (
        isinstance(padding, Sequence)
        and len(padding) == 2
        and all(
            isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2
            and all(_is_int(v, 0) for v in p)
            for p in padding
        )
    ):
        return tuple((int(p[0]), int(p[1])) for p in padding)
    raise DistillError(
        f"{what} must be 'SAME', 'VALID' or ((top, bottom), (left, right)) of integers >= 0, "
        f"got {padding!r}"
    )


def resolve_padding(padding, spatial: Sequence[int], kernel_size, strides):
    """Explicit ((top, bottom), (left, right)) for an input of spatial size (H, W).

    "SAME"/"VALID" follow `jax.lax.padtype_to_pads` (flax's meaning). Raises: DistillError for
    anything but those strings or two pairs of integers ≥ 0.
    """
    padding = check_padding(padding)
    if isinstance(padding, str):
        pads = jax.lax.padtype_to_pads(tuple(spatial), tuple(kernel_size), tuple(strides), padding)
        return tuple((int(lo), int(hi)) for lo, hi in pads)
    return padding


def _check_image(x, channels: int, what: str) -> None:
    if x.ndim != 4 or x.shape[-1] != channels:
        raise DistillError(
            f"{what}: expected NHWC input (batch, height, width, {channels}), got shape "
            f"{tuple(x.shape)}"
        )


def conv2d(x: Array, kernel: Array, *, strides=(1, 1), padding="VALID", groups: int = 1) -> Array:
    """Plain 2-D convolution: x (B, H, W, C_in) * kernel (kh, kw, C_in/groups, C_out).

    → (B, H', W', C_out), H' = ⌊(H + top + bottom − kh)/sh⌋ + 1 (likewise W'). Cross-
    correlation, as flax.nnx.Conv. `groups` = C_in with kernel (kh, kw, 1, C_in) is a depthwise
    convolution. The dense reference for the factorised convolutions in tn.cp / tn.tr / here.
    Raises: DistillError for a bad stride or padding.
    """
    strides = check_strides(strides)
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    pads = resolve_padding(padding, x.shape[1:3], (kh, kw), strides)
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding=pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
    )


# ---------------------------------------------------------------------------------------
# General Tucker
# ---------------------------------------------------------------------------------------


def _mode_product(tensor: Array, matrix: Array, mode: int) -> Array:
    """tensor ×_mode matrix: contract tensor's axis `mode` (size r) with matrix (n, r)."""
    return jnp.moveaxis(jnp.tensordot(matrix, tensor, axes=(1, mode)), 0, mode)


def _resolve_modes(ndim: int, modes) -> tuple[int, ...]:
    if modes is None:
        return tuple(range(ndim))
    if (
        isinstance(modes, (str, bytes))
        or not isinstance(modes, Sequence)
        or not all(_is_int(m, 0) and m < ndim for m in modes)
        or len(set(modes)) != len(modes)
        or len(modes) == 0
    ):
        raise DistillError(
            f"Tucker modes must be distinct axes in 0..{ndim - 1}, got {modes!r}"
        )
    return tuple(int(m) for m in modes)


def tucker_reconstruct(core: Array, factors: Sequence[Array], modes=None) -> Array:
    """T = core ×_{modes[0]} U_0 ×_{modes[1]} U_1 …  (U_k (n_k, r_k); all modes if None).

    core has r_k on the decomposed axes and the full size elsewhere. Returns T with n_k on the
    decomposed axes. jnp; memory ∏ n_k. Raises: DistillError when counts or sizes disagree.
    """
    modes = _resolve_modes(core.ndim, modes)
    if len(factors) != len(modes):
        raise DistillError(
            f"tucker_reconstruct: {len(factors)} factors for {len(modes)} modes {modes}"
        )
    out = core
    for mode, factor in zip(modes, factors):
        if factor.ndim != 2 or factor.shape[1] != core.shape[mode]:
            raise DistillError(
                f"tucker_reconstruct: factor for mode {mode} must have shape (n, "
                f"{core.shape[mode]}), got {tuple(factor.shape)}"
            )
        out = _mode_product(out, factor, mode)
    return out


def tucker_norm(core: Array, factors: Sequence[Array], modes=None) -> Array:
    """‖core ×_k U_k‖_F without forming the full tensor: sqrt(⟨G, G ×_k (U_kᵀU_k)⟩).

    Cost Σ_k n_k r_k² (the Grams) plus products on the core. Raises: as tucker_reconstruct.
    """
    grams = [jnp.einsum("nk,nm->km", f, f) for f in factors]
    return jnp.sqrt(jnp.vdot(core, tucker_reconstruct(core, grams, modes)))


def tucker_max_ranks(shape: Sequence[int], ranks, modes=None) -> tuple[int, ...]:
    """Ranks for `modes` lowered to what the tensor can use; `ranks` one int or one per mode.

    r_k ≤ n_k and r_k ≤ ∏_{m≠k} r_m (the core's mode-k unfolding has at most that rank;
    undecomposed modes count with their full size), repeated until nothing changes. For a
    matrix this gives r_in = r_out. Raises: DistillError for ranks that are not ints ≥ 1.
    """
    shape = tuple(int(n) for n in shape)
    modes = _resolve_modes(len(shape), modes)
    if _is_int(ranks, 1):
        ranks = (int(ranks),) * len(modes)
    elif not (
        isinstance(ranks, Sequence) and not isinstance(ranks, (str, bytes))
        and len(ranks) == len(modes) and all(_is_int(r, 1) for r in ranks)
    ):
        raise DistillError(
            f"Tucker rank must be an integer >= 1 or {len(modes)} of them (one per decomposed "
            f"mode {modes}), got {ranks!r}"
        )
    sizes = list(shape)
    for mode, r in zip(modes, ranks):
        sizes[mode] = min(int(r), shape[mode])
    while True:
        new = list(sizes)
        for mode in modes:
            new[mode] = min(new[mode], math.prod(new[:mode] + new[mode + 1 :]))
        if new == sizes:
            break
        sizes = new
    return tuple(sizes[m] for m in modes)


def tucker_decompose(
    T,
    ranks,
    *,
    modes=None,
    method: str = "hooi",
    n_iter_max: int = 100,
    tol: float = 1e-10,
    dtype=None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(Partial) Tucker decomposition by HOSVD or HOOI (TensorLy's `partial_tucker`).

    T any shape; `modes` the axes to decompose (None: all); `ranks` one int or one per mode,
    lowered by `tucker_max_ranks`. "hosvd" (seed 004 Algorithm 4): U_k = r_k leading left
    singular vectors of the mode-k unfolding, core = T ×_k U_kᵀ. "hooi" (Algorithm 5): from
    HOSVD, alternately re-solve each U_k with the others fixed, until the relative error
    changes by less than `tol` or `n_iter_max` sweeps. Factors are orthonormal. Runs in numpy
    float64; returns (core, factors aligned with `modes`) as numpy arrays of `dtype` (default
    T's floating dtype). Raises: DistillError for bad ranks, modes, method or iteration limits.
    """
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    T_np = np.asarray(T)
    dtype = _float_dtype(T_np, dtype)
    if method not in TUCKER_METHODS:
        raise DistillError(f"tucker_decompose: method must be one of {TUCKER_METHODS}, got {method!r}")
    if not _is_int(n_iter_max, 0):
        raise DistillError(f"tucker_decompose: n_iter_max must be an integer >= 0, got {n_iter_max!r}")
    if not (isinstance(tol, (int, float, np.floating)) and tol >= 0):
        raise DistillError(f"tucker_decompose: tol must be a number >= 0, got {tol!r}")
    modes = _resolve_modes(T_np.ndim, modes)
    ranks = tucker_max_ranks(T_np.shape, ranks, modes)
    with tl.backend_context("numpy"):
        (core, factors), _ = partial_tucker(
            T_np.astype(np.float64), list(ranks), modes=list(modes),
            n_iter_max=0 if method == "hosvd" else int(n_iter_max), init="svd", tol=float(tol),
            random_state=0,
        )
    return np.asarray(core, dtype), [np.asarray(f, dtype) for f in factors]


# ---------------------------------------------------------------------------------------
# Tucker-2 dense layer
# ---------------------------------------------------------------------------------------


def _check_tucker2_dense(U_in, core, U_out) -> None:
    if (
        U_in.ndim != 2 or U_out.ndim != 2 or core.ndim != 2
        or core.shape != (U_out.shape[1], U_in.shape[1])
    ):
        raise DistillError(
            "Tucker-2 dense: need U_in (N_in, r_in), core (r_out, r_in), U_out (N_out, r_out), got "
            f"{tuple(U_in.shape)}, {tuple(core.shape)}, {tuple(U_out.shape)}"
        )


def tucker2_to_dense(U_in: Array, core: Array, U_out: Array) -> Array:
    """W = U_out · core · U_inᵀ (N_out, N_in). Raises: DistillError on mismatched shapes."""
    _check_tucker2_dense(U_in, core, U_out)
    return jnp.einsum("jm,mk,ik->ji", U_out, core, U_in)


def tucker2_matvec(U_in: Array, core: Array, U_out: Array, x: Array) -> Array:
    """y = W x with W = U_out·core·U_inᵀ, never formed: x (..., N_in) → (..., N_out).

    Per sample r_in·N_in + r_out·r_in + N_out·r_out MACs. Raises: DistillError on mismatched
    shapes.
    """
    _check_tucker2_dense(U_in, core, U_out)
    if x.shape[-1] != U_in.shape[0]:
        raise DistillError(
            f"tucker2_matvec: x has {x.shape[-1]} features, U_in expects {U_in.shape[0]}"
        )
    h = jnp.einsum("...i,ik->...k", x, U_in)
    h = jnp.einsum("...k,mk->...m", h, core)
    return jnp.einsum("...m,jm->...j", h, U_out)


def tucker2_decompose_dense(
    W, rank, *, method: str = "hooi", n_iter_max: int = 100, tol: float = 1e-10, dtype=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U_in, core, U_out) with W (N_out, N_in) ≈ U_out·core·U_inᵀ, by `tucker_decompose`.

    rank: one int (both sides) or (r_in, r_out); both are lowered to min(r_in, r_out, N_in,
    N_out) (`tucker_max_ranks`). For a matrix HOSVD = HOOI = the truncated SVD (core diagonal).
    Raises: DistillError when W is not a matrix, or as tucker_decompose.
    """
    W_np = np.asarray(W)
    if W_np.ndim != 2:
        raise DistillError(f"tucker2_decompose_dense: W must be a matrix (N_out, N_in), got {W_np.shape}")
    ranks = rank if _is_int(rank, 1) else _pair(rank, "tucker2_decompose_dense: rank")[::-1]
    core, (U_out, U_in) = tucker_decompose(
        W_np, ranks, method=method, n_iter_max=n_iter_max, tol=tol, dtype=dtype
    )
    return U_in, core, U_out


def _pair(value, what: str) -> tuple[int, int]:
    if (
        isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) == 2
        and all(_is_int(v, 1) for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise DistillError(f"{what} must be an integer >= 1 or a pair (r_in, r_out) of them, got {value!r}")


# ---------------------------------------------------------------------------------------
# Tucker-2 convolution
# ---------------------------------------------------------------------------------------


def _check_tucker2_conv(U_in, core, U_out) -> None:
    if (
        U_in.ndim != 2 or U_out.ndim != 2 or core.ndim != 4
        or core.shape[2:] != (U_in.shape[1], U_out.shape[1])
    ):
        raise DistillError(
            "Tucker-2 conv: need U_in (C_in, r_in), core (kh, kw, r_in, r_out), U_out "
            f"(C_out, r_out), got {tuple(U_in.shape)}, {tuple(core.shape)}, {tuple(U_out.shape)}"
        )


def tucker2_to_kernel(U_in: Array, core: Array, U_out: Array) -> Array:
    """K[h, w, c, f] = Σ_{k,m} U_in[c, k]·core[h, w, k, m]·U_out[f, m]  (kh, kw, C_in, C_out).

    Raises: DistillError on mismatched shapes.
    """
    _check_tucker2_conv(U_in, core, U_out)
    return jnp.einsum("ck,hwkm,fm->hwcf", U_in, core, U_out)


def tucker2_conv(
    x: Array, U_in: Array, core: Array, U_out: Array, *, strides=(1, 1), padding="VALID"
) -> Array:
    """conv2d(x, tucker2_to_kernel(...)) without forming the kernel: x (B, H, W, C_in) →
    (B, H', W', C_out).

    1×1 conv C_in → r_in, kh×kw conv r_in → r_out (strides, padding), 1×1 conv r_out → C_out.
    Per output pixel kh·kw·r_in·r_out + r_out·C_out MACs, plus r_in·C_in per input pixel.
    Raises: DistillError on mismatched shapes, bad strides or padding.
    """
    _check_tucker2_conv(U_in, core, U_out)
    _check_image(x, U_in.shape[0], "tucker2_conv")
    h = jnp.einsum("byxc,ck->byxk", x, U_in)
    h = conv2d(h, core, strides=strides, padding=padding)
    return jnp.einsum("byxm,fm->byxf", h, U_out)


def tucker2_decompose_kernel(
    K, rank, *, method: str = "hooi", n_iter_max: int = 100, tol: float = 1e-10, dtype=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U_in, core, U_out) of a kernel K (kh, kw, C_in, C_out) by Tucker on its channel modes.

    rank: one int or (r_in, r_out); lowered to r_in ≤ min(C_in, kh·kw·r_out), r_out ≤
    min(C_out, kh·kw·r_in) (`tucker_max_ranks`). Raises: DistillError when K is not 4-D, or as
    tucker_decompose.
    """
    K_np = np.asarray(K)
    if K_np.ndim != 4:
        raise DistillError(
            f"tucker2_decompose_kernel: kernel must be HWIO (kh, kw, C_in, C_out), got {K_np.shape}"
        )
    ranks = rank if _is_int(rank, 1) else _pair(rank, "tucker2_decompose_kernel: rank")
    core, (U_in, U_out) = tucker_decompose(
        K_np, ranks, modes=(2, 3), method=method, n_iter_max=n_iter_max, tol=tol, dtype=dtype
    )
    return U_in, core, U_out
