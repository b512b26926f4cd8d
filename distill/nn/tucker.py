"""Tucker-2 layers (seed 003 "TK"; Kim et al. 2016; TedNet TK2): a dense layer W = U_out·G·U_inᵀ
and a convolution 1×1 → kh×kw → 1×1, never forming W or K. Math in `distill.tn.tucker`."""

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
from distill.tn import tucker as tk_lib

__all__ = ["Tucker2Conv", "Tucker2Linear"]


def _check_method(layer: str, method) -> str:
    if method not in tk_lib.TUCKER_METHODS:
        raise DistillError(
            f"{layer}: method must be one of {', '.join(tk_lib.TUCKER_METHODS)}, got {method!r}"
        )
    return method


def _check_ranks(layer: str, rank) -> int | tuple[int, int]:
    if isinstance(rank, Sequence) and not isinstance(rank, (str, bytes)) and len(rank) == 2:
        return (_check_width(layer, "rank[0] (r_in)", rank[0]), _check_width(layer, "rank[1] (r_out)", rank[1]))
    if isinstance(rank, Sequence) and not isinstance(rank, (str, bytes)):
        raise DistillError(f"{layer}: rank must be an integer >= 1 or a pair (r_in, r_out), got {rank!r}")
    return _check_width(layer, "rank", rank)


def _tucker2_norm(arrays: list[Array]) -> Array:
    U_in, core, U_out = arrays
    modes = (0, 1) if core.ndim == 2 else (2, 3)
    factors = [U_out, U_in] if core.ndim == 2 else [U_in, U_out]
    return tk_lib.tucker_norm(core, factors, modes)


class Tucker2Linear(nnx.Module):
    """Tucker-2 dense layer: y = act(U_out (G (U_inᵀ x)) + b), W = U_out·G·U_inᵀ never formed.

    x (..., N_in) → (..., N_out). Parameters (nnx.Param): U_in (N_in, r), core (r, r), U_out
    (N_out, r), bias (N_out,): r·(N_in + r + N_out) + N_out scalars. `rank` above
    min(N_in, N_out) is lowered. For a matrix, separate in/out ranks would add parameters but no
    expressiveness (W's rank is min(r_in, r_out); `tn.tucker.tucker_max_ranks`), so there is one
    rank: the layer spans the rank-r matrices, like LowRankLinear, with r² more parameters.

    Init (zero bias): match a dense init's Var(W_ji) = v (He 2/N_in for relu/gelu, LeCun 1/N_in
    otherwise). With i.i.d. N(0, σ²) entries E[W_ji²] = r²·σ⁶ (r² paths through the core, each
    a product of three independent entries), i.e. σ² = (v/r²)^{1/3}; as TTLinear the arrays are
    drawn N(0, 1) and rescaled by one common factor to ‖W‖_F² = v·N_in·N_out exactly
    (`tn.tucker.tucker_norm`, W never formed).

    Raises: DistillError for bad widths, rank or activation, and when called on an input whose
    last axis is not N_in.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rank: int,
        activation: str | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        in_features = _check_width("Tucker2Linear", "in_features", in_features)
        out_features = _check_width("Tucker2Linear", "out_features", out_features)
        rank = min(_check_width("Tucker2Linear", "rank", rank), in_features, out_features)
        activation = _check_activation("Tucker2Linear", activation)
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.activation = activation
        self.dtype = dtype
        U_in, core, U_out = _draw_scaled(
            rngs, [(in_features, rank), (rank, rank), (out_features, rank)], dtype,
            _dense_target(in_features, out_features, activation), _tucker2_norm,
        )
        self.U_in = nnx.Param(U_in)
        self.core = nnx.Param(core)
        self.U_out = nnx.Param(U_out)
        self.bias = nnx.Param(jnp.zeros((out_features,), dtype))

    @classmethod
    def from_dense(
        cls,
        W,
        b=None,
        *,
        rank: int,
        method: str = "hooi",
        activation: str | None = None,
        dtype=jnp.float32,
    ) -> Tucker2Linear:
        """Warm start by Tucker-2 (`tn.tucker.tucker2_decompose_dense`, HOOI or HOSVD) of
        y = act(W x + b), W (N_out, N_in). For a matrix both give the truncated SVD
        (U_in = V_r, core = diag(σ_1..σ_r), U_out = U_r), the best rank-r fit.

        For an nnx.Linear pass `W = linear.kernel[...].T`. Raises: DistillError for bad W, b,
        rank or method.
        """
        W, b = _dense_operands("Tucker2Linear", W, b)
        rank = _check_width("Tucker2Linear", "rank", rank)
        method = _check_method("Tucker2Linear", method)
        U_in, core, U_out = tk_lib.tucker2_decompose_dense(W, rank, method=method, dtype=np.float64)
        layer = _abstract(lambda: cls(
            W.shape[1], W.shape[0], rank=core.shape[0], activation=activation, dtype=dtype,
            rngs=nnx.Rngs(0),
        ))
        _set(layer.U_in, U_in, dtype)
        _set(layer.core, core, dtype)
        _set(layer.U_out, U_out, dtype)
        _set(layer.bias, b, dtype)
        return layer

    def to_dense(self) -> Array:
        """W = U_out·core·U_inᵀ (N_out, N_in)."""
        return tk_lib.tucker2_to_dense(self.U_in[...], self.core[...], self.U_out[...])

    def __call__(self, x: Array) -> Array:
        """x (..., N_in) → (..., N_out)."""
        _check_features("Tucker2Linear", x, self.in_features)
        y = tk_lib.tucker2_matvec(self.U_in[...], self.core[...], self.U_out[...], x.astype(self.dtype))
        return _apply_activation(self.activation, _add_bias(y, self.bias[...]))


class Tucker2Conv(nnx.Module):
    """Tucker-2 convolution (Kim et al. 2016; TedNet TK2Conv2D): y = act(conv(x, K) + b) with
    K[h, w, c, f] = Σ_{k,m} U_in[c, k]·core[h, w, k, m]·U_out[f, m], K never formed.

    x (B, H, W, C_in) NHWC → (B, H', W', C_out): 1×1 conv C_in → r_in, kh×kw conv r_in → r_out
    with `strides` and `padding` ("SAME", "VALID" or ((top, bottom), (left, right))), 1×1 conv
    r_out → C_out. Parameters (nnx.Param): U_in (C_in, r_in), core (kh, kw, r_in, r_out) (HWIO),
    U_out (C_out, r_out), bias (C_out,): C_in·r_in + kh·kw·r_in·r_out + r_out·C_out + C_out.
    `rank` is one int or (r_in, r_out); lowered to r_in ≤ min(C_in, kh·kw·r_out) and r_out ≤
    min(C_out, kh·kw·r_in) (`tn.tucker.tucker_max_ranks`); `self.ranks` holds (r_in, r_out).

    Init (zero bias): a conv init has Var(K) = v with fan-in kh·kw·C_in (He 2/fan-in for
    relu/gelu, LeCun 1/fan-in otherwise); arrays drawn N(0, 1) and rescaled by one common factor
    to ‖K‖_F² = v·kh·kw·C_in·C_out exactly (see Tucker2Linear).

    Raises: DistillError for bad widths, kernel_size, rank, strides, padding or activation, and
    when called on an input that is not (B, H, W, C_in).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        rank: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding="SAME",
        activation: str | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        in_features = _check_width("Tucker2Conv", "in_features", in_features)
        out_features = _check_width("Tucker2Conv", "out_features", out_features)
        activation = _check_activation("Tucker2Conv", activation)
        kernel_size, strides, padding = _conv_settings("Tucker2Conv", kernel_size, strides, padding)
        rank = _check_ranks("Tucker2Conv", rank)
        kh, kw = kernel_size
        r_in, r_out = tk_lib.tucker_max_ranks((kh, kw, in_features, out_features), rank, (2, 3))
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.ranks = (r_in, r_out)
        self.activation = activation
        self.dtype = dtype
        U_in, core, U_out = _draw_scaled(
            rngs, [(in_features, r_in), (kh, kw, r_in, r_out), (out_features, r_out)], dtype,
            _conv_target(kernel_size, in_features, out_features, activation), _tucker2_norm,
        )
        self.U_in = nnx.Param(U_in)
        self.core = nnx.Param(core)
        self.U_out = nnx.Param(U_out)
        self.bias = nnx.Param(jnp.zeros((out_features,), dtype))

    @classmethod
    def from_conv(
        cls,
        kernel,
        bias=None,
        *,
        rank: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding="SAME",
        method: str = "hooi",
        activation: str | None = None,
        dtype=jnp.float32,
    ) -> Tucker2Conv:
        """Warm start by Tucker-2 of the channel modes (`tn.tucker.tucker2_decompose_kernel`,
        HOOI or HOSVD) of a conv kernel (kh, kw, C_in, C_out) (HWIO, an nnx.Conv's `kernel[...]`)
        and bias (C_out,) or None.

        Raises: DistillError for a bad kernel, bias, rank, method, strides or padding.
        """
        kernel, bias = _conv_operands("Tucker2Conv", kernel, bias)
        method = _check_method("Tucker2Conv", method)
        kh, kw, c_in, c_out = kernel.shape
        layer = _abstract(lambda: cls(
            c_in, c_out, (kh, kw), rank=rank, strides=strides, padding=padding,
            activation=activation, dtype=dtype, rngs=nnx.Rngs(0),
        ))
        U_in, core, U_out = tk_lib.tucker2_decompose_kernel(
            kernel, layer.ranks, method=method, dtype=np.float64
        )
        _set(layer.U_in, U_in, dtype)
        _set(layer.core, core, dtype)
        _set(layer.U_out, U_out, dtype)
        _set(layer.bias, bias, dtype)
        return layer

    def to_kernel(self) -> Array:
        """K (kh, kw, C_in, C_out), HWIO. For analysis, not forward."""
        return tk_lib.tucker2_to_kernel(self.U_in[...], self.core[...], self.U_out[...])

    def __call__(self, x: Array) -> Array:
        """x (B, H, W, C_in) → (B, H', W', C_out)."""
        _check_image("Tucker2Conv", x, self.in_features)
        y = tk_lib.tucker2_conv(
            x.astype(self.dtype), self.U_in[...], self.core[...], self.U_out[...],
            strides=self.strides, padding=self.padding,
        )
        return _apply_activation(self.activation, _add_bias(y, self.bias[...]))
