"""CP layers (seeds 003, 004): a dense layer and a convolution whose weights are sums of R
rank-one tensors, never formed in the forward pass. Math in `distill.tn.cp`.

Also home of the small helpers the CP, Tucker-2 and TR layer files share (conv operands,
one-draw Gaussian init, the exact-norm rescale).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
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
    _init_variance,
)
from distill.tn import cp as cp_lib
from distill.tn import tucker as tk_lib

__all__ = ["CPConv", "CPLinear"]


# ---------------------------------------------------------------------------------------
# Shared by nn.cp, nn.tucker, nn.tr
# ---------------------------------------------------------------------------------------


def _draw_scaled(
    rngs: nnx.Rngs, shapes: Sequence[tuple[int, ...]], dtype, target: float,
    norm: Callable[[list[Array]], Array],
) -> list[Array]:
    """Arrays of `shapes` drawn N(0, 1) in one draw, all rescaled by one common factor so that
    `norm(arrays)` (the Frobenius norm of the weight they represent) equals `target`.

    The factor is spread evenly: each array is multiplied by (target / norm)^{1/len(shapes)}.
    One jitted computation (one compile per layer shape, instead of one per eager op).
    """
    shapes = tuple(tuple(int(n) for n in shape) for shape in shapes)
    return list(_draw_scaled_jit(rngs.params(), target, shapes, jnp.dtype(dtype), norm))


@functools.partial(jax.jit, static_argnames=("shapes", "dtype", "norm"))
def _draw_scaled_jit(key, target, shapes, dtype, norm):
    sizes = [math.prod(shape) for shape in shapes]
    flat = jax.random.normal(key, (sum(sizes),), dtype)
    ends = np.cumsum(sizes)
    raw = [
        jnp.reshape(flat[end - size : end], shape)
        for end, size, shape in zip(ends, sizes, shapes)
    ]
    scale = (jnp.asarray(target, dtype) / norm(raw)) ** (1.0 / len(raw))
    return tuple(scale * a for a in raw)


def _abstract(build: Callable[[], nnx.Module]) -> nnx.Module:
    """The module `build` makes, with shapes only (nnx.eval_shape): a warm start fills every
    parameter with `_set`, so nothing is drawn or compiled for the random init."""
    return nnx.eval_shape(build)


def _set(param: nnx.Param, value, dtype) -> None:
    """Fill a parameter of an `_abstract` module with `value` cast to `dtype`."""
    value = jnp.asarray(value, dtype)
    if tuple(value.shape) != tuple(param.shape):
        raise AssertionError(f"warm-start value {value.shape} for a parameter of shape {param.shape}")
    param.set_value(value)


def _add_bias(y: Array, bias: Array) -> Array:
    """y (..., n) + bias (n,), broadcast explicitly (works under jax_numpy_rank_promotion=raise)."""
    return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + tuple(bias.shape))


def _dense_target(in_features: int, out_features: int, activation: str | None) -> float:
    """‖W‖_F of a dense He/LeCun init: sqrt(v·N_in·N_out), v = `_init_variance`."""
    return math.sqrt(_init_variance(in_features, activation) * in_features * out_features)


def _conv_target(kernel_size, in_features: int, out_features: int, activation) -> float:
    """‖K‖_F of a conv He/LeCun init (fan-in kh·kw·C_in, flax nnx.Conv's lecun_normal):
    sqrt(v·kh·kw·C_in·C_out)."""
    fan_in = kernel_size[0] * kernel_size[1] * in_features
    return math.sqrt(_init_variance(fan_in, activation) * fan_in * out_features)


def _conv_operands(layer: str, kernel, bias):
    """Validate (kernel HWIO (kh, kw, C_in, C_out), bias (C_out,) or None); numpy arrays."""
    kernel = np.asarray(kernel)
    if kernel.ndim != 4:
        raise DistillError(
            f"{layer}.from_conv: kernel must be HWIO (kh, kw, C_in, C_out), got shape "
            f"{kernel.shape}; for an nnx.Conv pass conv.kernel[...]"
        )
    bias = np.zeros(kernel.shape[3], kernel.dtype) if bias is None else np.asarray(bias)
    if bias.shape != (kernel.shape[3],):
        raise DistillError(
            f"{layer}.from_conv: bias must have shape ({kernel.shape[3]},) to match kernel "
            f"{kernel.shape} (C_out last), got {bias.shape}"
        )
    return kernel, bias


def _conv_settings(layer: str, kernel_size, strides, padding):
    """(kh, kw), (sh, sw), padding checked, each error naming `layer`."""
    return (
        tk_lib.check_kernel_size(kernel_size, f"{layer}: kernel_size"),
        tk_lib.check_strides(strides, f"{layer}: strides"),
        tk_lib.check_padding(padding, f"{layer}: padding"),
    )


def _check_image(layer: str, x: Array, channels: int) -> None:
    if x.ndim != 4 or x.shape[-1] != channels:
        raise DistillError(
            f"{layer}: expected NHWC input (batch, height, width, {channels}), got shape "
            f"{tuple(x.shape)}"
        )


def _check_features(layer: str, x: Array, features: int) -> None:
    if x.shape[-1] != features:
        raise DistillError(
            f"{layer}: expected input of shape (..., {features}), got {tuple(x.shape)}"
        )


# ---------------------------------------------------------------------------------------
# CPLinear
# ---------------------------------------------------------------------------------------


class CPLinear(nnx.Module):
    """CP dense layer (TedNet CP layer; seed 004 Def. 3.4.1): y = act(W x + b), W never formed.

    x (..., N_in) → (..., N_out), N_in = ∏ a_p (`in_modes`), N_out = ∏ b_q (`out_modes`);
    W[j_1..j_M, i_1..i_N] = Σ_{k<R} ∏_q B_q[j_q, k] · ∏_p A_p[i_p, k] (`tn.cp` module docstring;
    the two sides may have different numbers of modes). Parameters (nnx.Param): in_factors[p]
    (a_p, R), out_factors[q] (b_q, R) in nnx.Lists, bias (N_out,):
    R·(Σ_p a_p + Σ_q b_q) + N_out scalars. Modes left None are `tt.factorize(width, n_factors)`.

    Init (zero bias): match a dense init, Var(W_ji) = v with v = 2/N_in (He) for relu/gelu and
    1/N_in (LeCun, nnx.Linear's default) otherwise. With i.i.d. N(0, σ²) factor entries,
    E[W_ji²] = R·σ^{2(N+M)} (R uncorrelated rank-one terms, each a product of N + M independent
    entries), i.e. σ² = (v/R)^{1/(N+M)}; but one draw of such a product fluctuates far from
    its mean, so (as TTLinear) the factors are drawn N(0, 1) and all rescaled by one common
    factor that makes ‖W‖_F² = v·N_in·N_out exactly (`tn.cp.cp_norm`, W never formed).

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
        rank: int,
        activation: str | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        in_features = _check_width("CPLinear", "in_features", in_features)
        out_features = _check_width("CPLinear", "out_features", out_features)
        rank = _check_width("CPLinear", "rank", rank)
        activation = _check_activation("CPLinear", activation)
        in_modes, out_modes = cp_lib.resolve_layer_modes(
            "CPLinear", in_features, out_features, in_modes, out_modes, n_factors
        )
        self.in_features = in_features
        self.out_features = out_features
        self.in_modes = in_modes
        self.out_modes = out_modes
        self.rank = rank
        self.activation = activation
        self.dtype = dtype
        n_in = len(in_modes)
        factors = _draw_scaled(
            rngs, [(n, rank) for n in in_modes + out_modes], dtype,
            _dense_target(in_features, out_features, activation), cp_lib.cp_norm,
        )
        self.in_factors = nnx.List([nnx.Param(f) for f in factors[:n_in]])
        self.out_factors = nnx.List([nnx.Param(f) for f in factors[n_in:]])
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
        rank: int,
        activation: str | None = None,
        dtype=jnp.float32,
        n_iter_max: int = 200,
        tol: float = 1e-6,
        seed: int = 0,
    ) -> CPLinear:
        """Warm start by CP-ALS (`tn.cp.cp_decompose_dense`) of y = act(W x + b), W (N_out, N_in).

        For an nnx.Linear pass `W = linear.kernel[...].T`. n_iter_max, tol, seed: as
        `tn.cp.cp_decompose`. Raises: DistillError for bad W, b, modes or rank.
        """
        W, b = _dense_operands("CPLinear", W, b)
        rank = _check_width("CPLinear", "rank", rank)
        n_out, n_in = W.shape
        in_modes, out_modes = cp_lib.resolve_layer_modes(
            "CPLinear", n_in, n_out, in_modes, out_modes, n_factors
        )
        in_f, out_f = cp_lib.cp_decompose_dense(
            W, in_modes, out_modes, rank, n_iter_max=n_iter_max, tol=tol, seed=seed,
            dtype=np.float64,
        )
        layer = _abstract(lambda: cls(
            n_in, n_out, in_modes=in_modes, out_modes=out_modes, rank=rank,
            activation=activation, dtype=dtype, rngs=nnx.Rngs(0),
        ))
        for param, f in zip(list(layer.in_factors) + list(layer.out_factors), in_f + out_f):
            _set(param, f, dtype)
        _set(layer.bias, b, dtype)
        return layer

    def to_dense(self) -> Array:
        """W (N_out, N_in) with y = act(W x + b). Memory N_out·N_in: for analysis, not forward."""
        return cp_lib.cp_to_dense([f[...] for f in self.in_factors], [f[...] for f in self.out_factors])

    def __call__(self, x: Array) -> Array:
        """x (..., N_in) → (..., N_out)."""
        _check_features("CPLinear", x, self.in_features)
        y = cp_lib.cp_matvec(
            [f[...] for f in self.in_factors], [f[...] for f in self.out_factors],
            x.astype(self.dtype),
        )
        return _apply_activation(self.activation, _add_bias(y, self.bias[...]))


# ---------------------------------------------------------------------------------------
# CPConv
# ---------------------------------------------------------------------------------------


class CPConv(nnx.Module):
    """CP convolution (Lebedev et al. 2015; seed 003): y = act(conv(x, K) + b), K never formed.

    x (B, H, W, C_in) NHWC → (B, H', W', C_out); strides (sh, sw); padding "SAME", "VALID" or
    ((top, bottom), (left, right)); dilation 1, groups 1 — as flax.nnx.Conv. K (kh, kw, C_in,
    C_out) = Σ_{k<R} H[:, k] ⊗ V[:, k] ⊗ A_c[:, k] ⊗ A_f[:, k] (`separable`, forward 1×1 →
    depthwise kh×1 → depthwise 1×kw → 1×1) or Σ_k S[(h, w), k]·A_c[c, k]·A_f[f, k] (joint,
    forward 1×1 → depthwise kh×kw → 1×1); see `tn.cp`. Parameters (nnx.Param): factors (in an
    nnx.List, kernel-mode order: H (kh, R), V (kw, R), A_c (C_in, R), A_f (C_out, R); or S
    (kh·kw, R), A_c, A_f), bias (C_out,): R·(kh + kw + C_in + C_out) + C_out scalars separable,
    R·(kh·kw + C_in + C_out) + C_out joint.

    Init (zero bias): a conv init has Var(K) = v with fan-in kh·kw·C_in (He 2/fan-in for
    relu/gelu, LeCun 1/fan-in otherwise, nnx.Conv's default); factors drawn N(0, 1) and
    rescaled by one common factor to ‖K‖_F² = v·kh·kw·C_in·C_out exactly (see CPLinear).

    Raises: DistillError for bad widths, kernel_size, rank, strides, padding or activation, and
    when called on an input that is not (B, H, W, C_in).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        rank: int,
        strides: int | Sequence[int] = 1,
        padding="SAME",
        separable: bool = True,
        activation: str | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        in_features = _check_width("CPConv", "in_features", in_features)
        out_features = _check_width("CPConv", "out_features", out_features)
        rank = _check_width("CPConv", "rank", rank)
        activation = _check_activation("CPConv", activation)
        kernel_size, strides, padding = _conv_settings("CPConv", kernel_size, strides, padding)
        if not isinstance(separable, bool):
            raise DistillError(f"CPConv: separable must be True or False, got {separable!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.separable = separable
        self.rank = rank
        self.activation = activation
        self.dtype = dtype
        kh, kw = kernel_size
        spatial = [(kh, rank), (kw, rank)] if separable else [(kh * kw, rank)]
        factors = _draw_scaled(
            rngs, spatial + [(in_features, rank), (out_features, rank)], dtype,
            _conv_target(kernel_size, in_features, out_features, activation), cp_lib.cp_norm,
        )
        self.factors = nnx.List([nnx.Param(f) for f in factors])
        self.bias = nnx.Param(jnp.zeros((out_features,), dtype))

    @classmethod
    def from_conv(
        cls,
        kernel,
        bias=None,
        *,
        rank: int,
        strides: int | Sequence[int] = 1,
        padding="SAME",
        separable: bool = True,
        activation: str | None = None,
        dtype=jnp.float32,
        n_iter_max: int = 200,
        tol: float = 1e-6,
        seed: int = 0,
    ) -> CPConv:
        """Warm start by CP-ALS (`tn.cp.cp_decompose_kernel`) of a conv kernel (kh, kw, C_in,
        C_out) (HWIO, an nnx.Conv's `kernel[...]`) and bias (C_out,) or None.

        Raises: DistillError for a bad kernel, bias, rank, strides or padding.
        """
        kernel, bias = _conv_operands("CPConv", kernel, bias)
        rank = _check_width("CPConv", "rank", rank)
        kh, kw, c_in, c_out = kernel.shape
        layer = _abstract(lambda: cls(
            c_in, c_out, (kh, kw), rank=rank, strides=strides, padding=padding,
            separable=separable, activation=activation, dtype=dtype, rngs=nnx.Rngs(0),
        ))
        factors = cp_lib.cp_decompose_kernel(
            kernel, rank, separable=layer.separable, n_iter_max=n_iter_max, tol=tol, seed=seed,
            dtype=np.float64,
        )
        for param, f in zip(layer.factors, factors):
            _set(param, f, dtype)
        _set(layer.bias, bias, dtype)
        return layer

    def to_kernel(self) -> Array:
        """K (kh, kw, C_in, C_out), HWIO. For analysis, not forward."""
        return cp_lib.cp_to_kernel([f[...] for f in self.factors], self.kernel_size)

    def __call__(self, x: Array) -> Array:
        """x (B, H, W, C_in) → (B, H', W', C_out)."""
        _check_image("CPConv", x, self.in_features)
        y = cp_lib.cp_conv(
            x.astype(self.dtype), [f[...] for f in self.factors], kernel_size=self.kernel_size,
            strides=self.strides, padding=self.padding,
        )
        return _apply_activation(self.activation, _add_bias(y, self.bias[...]))
