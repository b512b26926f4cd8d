"""Tensor-ring layers (Wang et al. 2018; TedNet TR; seeds 003, 004): a dense layer and a
convolution whose weights are rings of 3-way cores, never formed. Math in `distill.tn.tr`."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from distill.errors import DistillError
from distill.nn.common import (
    _apply_activation,
    _check_activation,
    _check_width,
    _dense_operands,
)
from distill.nn.cp import (
    _abstract,
    _add_bias,
    _check_features,
    _check_image,
    _conv_operands,
    _conv_settings,
    _conv_target,
    _dense_target,
    _draw_scaled,
    _set,
)
from distill.tn import cp as cp_lib
from distill.tn import tr as tr_lib

__all__ = ["TRConv", "TRLinear"]


def _ring_ranks(layer: str, rank, d: int) -> tuple[int, ...]:
    """d bond ranks (r_0, …, r_{d-1}) from one int or a list of d. Raises: DistillError."""
    if isinstance(rank, Sequence) and not isinstance(rank, (str, bytes)):
        if len(rank) != d:
            raise DistillError(
                f"{layer}: rank must be an integer >= 1 or a list of {d} integers >= 1 (one per "
                f"bond of the {d}-core ring), got {list(rank)!r}"
            )
        return tuple(_check_width(layer, f"rank[{k}]", r) for k, r in enumerate(rank))
    return (_check_width(layer, "rank", rank),) * d


def _ring_shapes(modes: Sequence[int], ranks: Sequence[int]) -> list[tuple[int, int, int]]:
    d = len(modes)
    return [(ranks[k], modes[k], ranks[(k + 1) % d]) for k in range(d)]


class TRLinear(nnx.Module):
    """Tensor-ring dense layer (TedNet TR layer; seed 004 Def. 3.4.4): y = act(W x + b), W never
    formed.

    x (..., N_in) → (..., N_out), N_in = ∏ a_p (`in_modes`), N_out = ∏ b_q (`out_modes`);
    W[j, i] = Tr(A_1[i_1] ⋯ A_N[i_N] · B_1[j_1] ⋯ B_M[j_M]) over the ring (a_1…a_N, b_1…b_M)
    (`tn.tr` module docstring; the sides may have different numbers of modes). Parameters
    (nnx.Param): in_cores[p] (r_p, a_p, r_{p+1}), out_cores[q] (r_{N+q}, b_q, r_{N+q+1}) with
    r_{N+M} = r_0, in nnx.Lists, bias (N_out,): Σ_k r_k·n_k·r_{k+1} + N_out scalars. `rank` is one
    int for every bond or N + M ints (bond left of each core); `self.ranks` holds them. Modes
    left None are `tt.factorize(width, n_factors)`.

    Init (zero bias): match a dense init's Var(W_ji) = v (He 2/N_in for relu/gelu, LeCun 1/N_in
    otherwise). With i.i.d. N(0, σ²) core entries E[W_ji²] = (∏_k r_k)·σ^{2(N+M)} (one path per
    choice of every bond index, each a product of N + M independent entries); as TTLinear the
    cores are drawn N(0, 1) and rescaled by one common factor to ‖W‖_F² = v·N_in·N_out exactly
    (`tn.tr.tr_norm`, W never formed).

    Raises: DistillError for bad widths, modes, rank or activation, and when called on an input
    whose last axis is not N_in.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        n_factors: int = 4,
        rank: int | Sequence[int],
        activation: str | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        in_features = _check_width("TRLinear", "in_features", in_features)
        out_features = _check_width("TRLinear", "out_features", out_features)
        activation = _check_activation("TRLinear", activation)
        in_modes, out_modes = cp_lib.resolve_layer_modes(
            "TRLinear", in_features, out_features, in_modes, out_modes, n_factors
        )
        ranks = _ring_ranks("TRLinear", rank, len(in_modes) + len(out_modes))
        self.in_features = in_features
        self.out_features = out_features
        self.in_modes = in_modes
        self.out_modes = out_modes
        self.ranks = ranks
        self.activation = activation
        self.dtype = dtype
        n_in = len(in_modes)
        cores = _draw_scaled(
            rngs, _ring_shapes(in_modes + out_modes, ranks), dtype,
            _dense_target(in_features, out_features, activation), tr_lib.tr_norm,
        )
        self.in_cores = nnx.List([nnx.Param(c) for c in cores[:n_in]])
        self.out_cores = nnx.List([nnx.Param(c) for c in cores[n_in:]])
        self.bias = nnx.Param(jnp.zeros((out_features,), dtype))

    @classmethod
    def from_dense(
        cls,
        W,
        b=None,
        *,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        n_factors: int = 4,
        rank: int | Sequence[int] | None = None,
        eps: float | None = None,
        start: int | None = None,
        activation: str | None = None,
        dtype=jnp.float32,
    ) -> TRLinear:
        """Warm start by TR-SVD (`tn.tr.tr_decompose_dense`) of y = act(W x + b), W (N_out, N_in).

        For an nnx.Linear pass `W = linear.kernel[...].T`. `rank` caps every bond (or one cap
        per bond), `eps` bounds the relative Frobenius error when no cap binds; neither = exact.
        `start`: the ring mode TR-SVD splits first (default the largest; its two bonds multiply
        to at most its size). `self.ranks` holds the ranks found. Raises: DistillError for bad
        W, b, modes, rank, eps or start.
        """
        W, b = _dense_operands("TRLinear", W, b)
        n_out, n_in = W.shape
        in_modes, out_modes = cp_lib.resolve_layer_modes(
            "TRLinear", n_in, n_out, in_modes, out_modes, n_factors
        )
        if rank is not None:
            _ring_ranks("TRLinear", rank, len(in_modes) + len(out_modes))
        in_c, out_c = tr_lib.tr_decompose_dense(
            W, in_modes, out_modes, rank=rank, eps=eps, start=start, dtype=np.float64
        )
        layer = _abstract(lambda: cls(
            n_in, n_out, in_modes=in_modes, out_modes=out_modes, rank=tr_lib.tr_ranks(in_c + out_c),
            activation=activation, dtype=dtype, rngs=nnx.Rngs(0),
        ))
        for param, core in zip(list(layer.in_cores) + list(layer.out_cores), in_c + out_c):
            _set(param, core, dtype)
        _set(layer.bias, b, dtype)
        return layer

    def to_dense(self) -> Array:
        """W (N_out, N_in) with y = act(W x + b). Memory N_out·N_in: for analysis, not forward."""
        return tr_lib.tr_to_dense([c[...] for c in self.in_cores], [c[...] for c in self.out_cores])

    def __call__(self, x: Array) -> Array:
        """x (..., N_in) → (..., N_out)."""
        _check_features("TRLinear", x, self.in_features)
        y = tr_lib.tr_matvec(
            [c[...] for c in self.in_cores], [c[...] for c in self.out_cores], x.astype(self.dtype)
        )
        return _apply_activation(self.activation, _add_bias(y, self.bias[...]))


class TRConv(nnx.Module):
    """Tensor-ring convolution (Wang et al. 2018 TRN; TedNet TRConv2D): y = act(conv(x, K) + b),
    K never formed.

    x (B, H, W, C_in) NHWC → (B, H', W', C_out); strides (sh, sw); padding "SAME", "VALID" or
    ((top, bottom), (left, right)); dilation 1, groups 1. K (kh, kw, C_in, C_out), C_in = ∏ c_p
    (`in_modes`), C_out = ∏ f_q (`out_modes`), is the ring over (c_1…c_N, kh·kw, f_1…f_M):
    K[h, w, c, f] = Tr(A_1[c_1] ⋯ A_N[c_N] · S[(h, w)] · B_1[f_1] ⋯ B_M[f_M]); forward = merged in
    cores as a 1×1 conv, one kh×kw conv r_N → r_{N+1} on B·r_0 images, merged out cores
    (`tn.tr.tr_conv`). Parameters (nnx.Param): in_cores, spatial_core (r_N, kh·kw, r_{N+1}),
    out_cores, bias (C_out,): Σ_k r_k·n_k·r_{k+1} over the N + 1 + M ring cores + C_out scalars.
    `rank`: one int or N + 1 + M ints (bond left of each ring core); `self.ranks` holds them.
    Modes left None are `tt.factorize(channels, n_factors)`.

    Init (zero bias): a conv init has Var(K) = v with fan-in kh·kw·C_in (He 2/fan-in for
    relu/gelu, LeCun 1/fan-in otherwise); cores drawn N(0, 1) and rescaled by one common factor
    to ‖K‖_F² = v·kh·kw·C_in·C_out exactly (see TRLinear).

    Raises: DistillError for bad widths, modes, kernel_size, rank, strides, padding or
    activation, and when called on an input that is not (B, H, W, C_in).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        n_factors: int = 2,
        rank: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding="SAME",
        activation: str | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        in_features = _check_width("TRConv", "in_features", in_features)
        out_features = _check_width("TRConv", "out_features", out_features)
        activation = _check_activation("TRConv", activation)
        kernel_size, strides, padding = _conv_settings("TRConv", kernel_size, strides, padding)
        in_modes, out_modes = cp_lib.resolve_layer_modes(
            "TRConv", in_features, out_features, in_modes, out_modes, n_factors
        )
        kh, kw = kernel_size
        modes = in_modes + (kh * kw,) + out_modes
        ranks = _ring_ranks("TRConv", rank, len(modes))
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.in_modes = in_modes
        self.out_modes = out_modes
        self.ranks = ranks
        self.activation = activation
        self.dtype = dtype
        n_in = len(in_modes)
        cores = _draw_scaled(
            rngs, _ring_shapes(modes, ranks), dtype,
            _conv_target(kernel_size, in_features, out_features, activation), tr_lib.tr_norm,
        )
        self.in_cores = nnx.List([nnx.Param(c) for c in cores[:n_in]])
        self.spatial_core = nnx.Param(cores[n_in])
        self.out_cores = nnx.List([nnx.Param(c) for c in cores[n_in + 1 :]])
        self.bias = nnx.Param(jnp.zeros((out_features,), dtype))

    @classmethod
    def from_conv(
        cls,
        kernel,
        bias=None,
        *,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        n_factors: int = 2,
        rank: int | Sequence[int] | None = None,
        eps: float | None = None,
        start: int | None = None,
        strides: int | Sequence[int] = 1,
        padding="SAME",
        activation: str | None = None,
        dtype=jnp.float32,
    ) -> TRConv:
        """Warm start by TR-SVD (`tn.tr.tr_decompose_kernel`) of a conv kernel (kh, kw, C_in,
        C_out) (HWIO, an nnx.Conv's `kernel[...]`) and bias (C_out,) or None.

        rank / eps / start as TRLinear.from_dense, over the N + 1 + M ring modes. Raises:
        DistillError for a bad kernel, bias, modes, rank, eps, start, strides or padding.
        """
        kernel, bias = _conv_operands("TRConv", kernel, bias)
        kh, kw, c_in, c_out = kernel.shape
        _conv_settings("TRConv", (kh, kw), strides, padding)
        in_modes, out_modes = cp_lib.resolve_layer_modes(
            "TRConv", c_in, c_out, in_modes, out_modes, n_factors
        )
        if rank is not None:
            _ring_ranks("TRConv", rank, len(in_modes) + 1 + len(out_modes))
        in_c, spatial, out_c = tr_lib.tr_decompose_kernel(
            kernel, in_modes, out_modes, rank=rank, eps=eps, start=start, dtype=np.float64
        )
        layer = _abstract(lambda: cls(
            c_in, c_out, (kh, kw), in_modes=in_modes, out_modes=out_modes,
            rank=tr_lib.tr_ranks(in_c + [spatial] + out_c), strides=strides, padding=padding,
            activation=activation, dtype=dtype, rngs=nnx.Rngs(0),
        ))
        for param, core in zip(list(layer.in_cores) + list(layer.out_cores), in_c + out_c):
            _set(param, core, dtype)
        _set(layer.spatial_core, spatial, dtype)
        _set(layer.bias, bias, dtype)
        return layer

    def to_kernel(self) -> Array:
        """K (kh, kw, C_in, C_out), HWIO. For analysis, not forward."""
        return tr_lib.tr_to_kernel(
            [c[...] for c in self.in_cores], self.spatial_core[...],
            [c[...] for c in self.out_cores], self.kernel_size,
        )

    def __call__(self, x: Array) -> Array:
        """x (B, H, W, C_in) → (B, H', W', C_out)."""
        _check_image("TRConv", x, self.in_features)
        y = tr_lib.tr_conv(
            x.astype(self.dtype), [c[...] for c in self.in_cores], self.spatial_core[...],
            [c[...] for c in self.out_cores], kernel_size=self.kernel_size,
            strides=self.strides, padding=self.padding,
        )
        return _apply_activation(self.activation, _add_bias(y, self.bias[...]))
