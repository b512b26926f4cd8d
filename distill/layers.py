"""Flax NNX modules that hold tensor-network parameters and call the pure functions in tn/.

Drop any of these into your own `nnx.Module` and train it with
`nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from distill.errors import DistillError
from distill.tn import mps as mps_lib
from distill.tn.feature_maps import get_feature_map

__all__ = ["param_count", "SiteOrder", "MPS"]


def param_count(module: nnx.Module) -> int:
    """Total number of scalars in all `nnx.Param` leaves of `module`."""
    state = nnx.state(module, nnx.Param)
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(state)))


class SiteOrder(nnx.Variable):
    """Non-trainable permutation of the input features (int32 (n,)), saved with the state.

    The layer reads input feature `order[s]` at site `s`.
    """


def _validate_order(site_order, n_sites: int) -> np.ndarray:
    if site_order is None:
        return np.arange(n_sites, dtype=np.int32)
    order = np.asarray(site_order)
    if (
        order.ndim != 1
        or order.shape[0] != n_sites
        or not np.issubdtype(order.dtype, np.integer)
        or not np.array_equal(np.sort(order), np.arange(n_sites))
    ):
        raise DistillError(
            f"MPS: site_order must be a permutation of range({n_sites}) (one integer per "
            f"input feature, each used once); got shape {order.shape}, dtype {order.dtype}"
        )
    return order.astype(np.int32)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DistillError(f"MPS: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class MPS(nnx.Module):
    """MPS layer: x (B, n) with values in [0, 1] → (B, m).

    out = exp(log_scale) · z, where (z, log_norm) = tn.mps.contract(cores, φ(x[:, order])).
    z is the output core contracted with the unit-normalised left and right environment
    vectors; the accumulated log-norm (the same for every output) is dropped and one learned
    scalar `log_scale` sets the logit size instead (DESIGN.md §1: this trained better).

    Parameters (nnx.Param): first (d, χ), left (k-1, d, χ, χ), out (χ, m, χ),
    right (n-k-1, d, χ, χ), last (d, χ), log_scale (). `site_order` (SiteOrder) is fixed.
    """

    def __init__(
        self,
        n_sites: int,
        n_out: int,
        *,
        bond_dim: int,
        feature_map: str = "trig",
        feature_dim: int = 2,
        output_site: int | None = None,
        init_std: float = 0.01,
        site_order: Sequence[int] | np.ndarray | Array | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        n_sites = _check_int("n_sites", n_sites, 2)
        n_out = _check_int("n_out", n_out, 1)
        bond_dim = _check_int("bond_dim", bond_dim, 1)
        feature_dim = _check_int("feature_dim", feature_dim, 2)
        k = mps_lib.resolve_output_site(n_sites, output_site)
        get_feature_map(feature_map, feature_dim)  # validates the name early
        order = _validate_order(site_order, n_sites)

        self.n_sites = n_sites
        self.n_out = n_out
        self.bond_dim = bond_dim
        self.feature_map = feature_map
        self.feature_dim = feature_dim
        self.output_site = k
        self.dtype = dtype

        p = mps_lib.init_mps(
            rngs.params(), n_sites, feature_dim, bond_dim, n_out,
            output_site=k, init_std=init_std, dtype=dtype,
        )
        self.first = nnx.Param(p.first)
        self.left = nnx.Param(p.left)
        self.out = nnx.Param(p.out)
        self.right = nnx.Param(p.right)
        self.last = nnx.Param(p.last)
        # z = L̂·out·R̂ already has unit variance per output at init (out ~ N(0, 1)), so
        # exp(0) = 1 starts the logits at O(1).
        self.log_scale = nnx.Param(jnp.zeros((), dtype))
        self.site_order = SiteOrder(jnp.asarray(order))

    @property
    def params(self) -> mps_lib.MPSParams:
        """The cores as a plain MPSParams of arrays (for tn.mps functions)."""
        return mps_lib.MPSParams(
            self.first[...], self.left[...], self.out[...], self.right[...], self.last[...]
        )

    def __call__(self, x: Array) -> Array:
        """x (B, n) in [0, 1] → (B, m)."""
        if x.ndim != 2 or x.shape[-1] != self.n_sites:
            raise DistillError(
                f"MPS: expected input of shape (batch, {self.n_sites}), got {tuple(x.shape)}; "
                "flatten images and scale them to [0, 1] first"
            )
        x = jnp.take(x.astype(self.dtype), self.site_order[...], axis=1)
        phi = get_feature_map(self.feature_map, self.feature_dim)(x)  # (B, n, d)
        z, _ = mps_lib.contract(self.params, phi)
        return jnp.exp(self.log_scale[...]) * z


# =======================================================================================
# Factorised dense layers: TT-matrix (MPO) and low-rank (SVD) baselines
# =======================================================================================
# Weight convention: the math here is y = W x with W (N_out, N_in). flax's nnx.Linear
# stores kernel (N_in, N_out) and computes x @ kernel, so W = linear.kernel.T; e.g.
# `TTLinear.from_dense(linear.kernel[...].T, linear.bias[...], ...)`.

import math  # noqa: E402  (this section is appended below the MPS layer)

from distill.tn import tt as tt_lib  # noqa: E402

__all__ += ["TTLinear", "LowRankLinear"]

#: Activation name → elementwise function. The same names and functions as
#: `distill.teachers.ACTIVATIONS`, kept here because layers.py sits above teachers.py in the
#: import order (DESIGN.md §2) and must not import it.
_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "sigmoid": jax.nn.sigmoid,
}


def _check_activation(layer: str, activation: str | None) -> str | None:
    if activation is not None and (
        not isinstance(activation, str) or activation not in _ACTIVATIONS
    ):
        raise DistillError(
            f"{layer}: unknown activation {activation!r}; use one of "
            f"{', '.join(sorted(_ACTIVATIONS))} or None (linear)"
        )
    return activation


def _apply_activation(activation: str | None, y: Array) -> Array:
    return y if activation is None else _ACTIVATIONS[activation](y)


def _init_variance(in_features: int, activation: str | None) -> float:
    """Target Var(W_ji) of a dense init: He 2/N_in for relu/gelu, else LeCun 1/N_in.

    LeCun 1/N_in is nnx.Linear's default (lecun_normal); He doubles it to keep the output
    variance through a rectifier, which zeroes half of the pre-activations.
    """
    gain = 2.0 if activation in ("relu", "gelu") else 1.0
    return gain / in_features


def _check_width(layer: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DistillError(f"{layer}: {name} must be an integer >= 1, got {value!r}")
    return int(value)


def _dense_operands(layer: str, W, b):
    """Validate a dense (W (N_out, N_in), b (N_out,) or None) pair; return numpy arrays."""
    W = np.asarray(W)
    if W.ndim != 2:
        raise DistillError(
            f"{layer}.from_dense: W must be a matrix (N_out, N_in) for y = W x, got shape "
            f"{W.shape}; for an nnx.Linear pass linear.kernel.T"
        )
    b = np.zeros(W.shape[0], W.dtype) if b is None else np.asarray(b)
    if b.shape != (W.shape[0],):
        raise DistillError(
            f"{layer}.from_dense: bias must have shape ({W.shape[0]},) to match W {W.shape} "
            f"(y = W x + b), got {b.shape}"
        )
    return W, b


def _resolve_modes(in_features, out_features, in_modes, out_modes, n_factors):
    """Validate given modes, factorise missing ones (same length d on both sides)."""
    if in_modes is not None:
        in_modes = tt_lib.check_modes(in_modes, in_features, "tt.in_modes", width="input")
    if out_modes is not None:
        out_modes = tt_lib.check_modes(out_modes, out_features, "tt.out_modes", width="output")
    if in_modes is None or out_modes is None:
        given = in_modes or out_modes
        d = len(given) if given else _check_width("TTLinear", "n_factors", n_factors)
        in_modes = in_modes or tt_lib.factorize(in_features, d)
        out_modes = out_modes or tt_lib.factorize(out_features, d)
    if len(in_modes) != len(out_modes):
        raise DistillError(
            f"TTLinear: tt.in_modes {in_modes} and tt.out_modes {out_modes} must have the "
            "same length (one (out, in) mode pair per core); pad the shorter with 1s"
        )
    return in_modes, out_modes


class TTLinear(nnx.Module):
    """TT-matrix (MPO) dense layer: y = act(W x + b) with W in TT format, never formed.

    x (..., N_in) → (..., N_out), N_in = ∏ a_k (`in_modes`), N_out = ∏ b_k (`out_modes`).
    Parameters (nnx.Param): cores[k] (r_{k-1}, b_k, a_k, r_k) with r_0 = r_d = 1, in an
    nnx.List; bias (N_out,). The forward pass is `tn.tt.tt_matvec` (core-by-core contraction).

    Modes left None are factorised automatically (`tn.tt.factorize`, `n_factors` each; if
    only one side is given, the other uses its length). `rank` caps every inner bond (or gives
    one cap per bond); caps above min(∏_{m≤k} a_m b_m, ∏_{m>k} a_m b_m) are lowered to that,
    the largest rank bond k can use. `self.ranks` holds the ranks actually used.

    Init (zero bias): match a dense init's Var(W_ji) = v, with v = 2/N_in (He) for relu/gelu
    and v = 1/N_in (LeCun, nnx.Linear's default) otherwise, so that Var(y_j) = v·‖x‖² as for
    the dense layer. With i.i.d. N(0, σ²) core entries, an entry of W is a sum over
    ∏_{k=1}^{d-1} r_k rank paths of products of d independent zero-mean entries, and entries
    with different (j, i) are uncorrelated, so E[W_ji²] = (∏_k r_k)·σ^{2d}, i.e.
    σ² = (v / ∏_k r_k)^{1/d}. That holds only on average over draws: a product of d random
    cores fluctuates a lot from one draw to the next (‖W‖² off by 0.3–2.3× at rank 1, 0.6–1.3×
    at rank 8 for 784 → 512). So the cores are drawn N(0, 1) and all rescaled by one common
    factor that makes ‖W‖_F² = v·N_in·N_out exactly (`tn.tt.tt_norm`, W never formed).
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
        in_features = _check_width("TTLinear", "in_features", in_features)
        out_features = _check_width("TTLinear", "out_features", out_features)
        activation = _check_activation("TTLinear", activation)
        in_modes, out_modes = _resolve_modes(
            in_features, out_features, in_modes, out_modes, n_factors
        )
        inner = tt_lib.tt_max_ranks(in_modes, out_modes, rank)

        self.in_features = in_features
        self.out_features = out_features
        self.in_modes = in_modes
        self.out_modes = out_modes
        self.ranks = (1, *inner, 1)
        self.activation = activation
        self.dtype = dtype

        d = len(in_modes)
        shapes = [(self.ranks[k], out_modes[k], in_modes[k], self.ranks[k + 1]) for k in range(d)]
        sizes = [math.prod(shape) for shape in shapes]
        # one draw sliced into cores: a random.normal per core shape costs a compile each
        flat = jax.random.normal(rngs.params(), (sum(sizes),), dtype)
        ends = np.cumsum(sizes)
        raw = [
            jnp.reshape(flat[end - size : end], shape)
            for end, size, shape in zip(ends, sizes, shapes)
        ]
        # ‖W‖_F² = v·N_in·N_out exactly, spread evenly over the d cores (see the docstring)
        target = math.sqrt(_init_variance(in_features, activation) * in_features * out_features)
        scale = (target / tt_lib.tt_norm(raw)) ** (1.0 / d)
        self.cores = nnx.List([nnx.Param(scale * core) for core in raw])
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
        rank: int | None = None,
        eps: float | None = None,
        activation: str | None = None,
        dtype=jnp.float32,
    ) -> "TTLinear":
        """Warm start by TT-SVD of a dense layer y = act(W x + b), W (N_out, N_in).

        For an nnx.Linear (kernel (N_in, N_out), y = x @ kernel + bias) pass
        `W = linear.kernel[...].T`. `rank` caps every bond, `eps` bounds the relative
        Frobenius error (‖W − TT‖_F ≤ eps·‖W‖_F when no cap binds); neither = exact.
        """
        W, b = _dense_operands("TTLinear", W, b)
        n_out, n_in = W.shape
        in_modes, out_modes = _resolve_modes(n_in, n_out, in_modes, out_modes, n_factors)
        cores = tt_lib.tt_svd(W, in_modes, out_modes, max_rank=rank, eps=eps, dtype=np.float64)
        ranks = tt_lib.tt_ranks(cores)
        layer = cls(
            n_in, n_out, in_modes=in_modes, out_modes=out_modes, rank=ranks[1:-1],
            activation=activation, dtype=dtype, rngs=nnx.Rngs(0),
        )
        for param, core in zip(layer.cores, cores):
            param[...] = jnp.asarray(core, dtype)
        layer.bias[...] = jnp.asarray(b, dtype)
        return layer

    @property
    def core_arrays(self) -> list[Array]:
        """The cores as plain arrays (for tn.tt functions)."""
        return [c[...] for c in self.cores]

    def to_dense(self) -> Array:
        """W (N_out, N_in) with y = act(W x + b). Memory N_out·N_in: for analysis, not forward."""
        return tt_lib.tt_to_dense(self.core_arrays)

    def __call__(self, x: Array) -> Array:
        """x (..., N_in) → (..., N_out)."""
        if x.shape[-1] != self.in_features:
            raise DistillError(
                f"TTLinear: expected input of shape (..., {self.in_features}), got {tuple(x.shape)}"
            )
        y = tt_lib.tt_matvec(self.core_arrays, x.astype(self.dtype)) + self.bias[...]
        return _apply_activation(self.activation, y)


class LowRankLinear(nnx.Module):
    """Low-rank (SVD) factorised dense layer, the seeds' baseline: y = act(A (B x) + b).

    x (..., N_in) → (..., N_out). Parameters (nnx.Param): A (N_out, r), B (r, N_in),
    bias (N_out,); r(N_in + N_out) + N_out scalars. `rank` above min(N_in, N_out) is lowered.

    Init: A, B i.i.d. N(0, σ²), zero bias. Var(W_ji) = Var(Σ_k A_jk B_ki) = r·σ⁴, so
    σ² = sqrt(v / r) with the same v as TTLinear (He 2/N_in for relu/gelu, else LeCun 1/N_in).
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
        in_features = _check_width("LowRankLinear", "in_features", in_features)
        out_features = _check_width("LowRankLinear", "out_features", out_features)
        rank = min(_check_width("LowRankLinear", "rank", rank), in_features, out_features)
        activation = _check_activation("LowRankLinear", activation)
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.activation = activation
        self.dtype = dtype
        std = (_init_variance(in_features, activation) / rank) ** 0.25
        flat = std * jax.random.normal(rngs.params(), (rank * (out_features + in_features),), dtype)
        self.A = nnx.Param(jnp.reshape(flat[: out_features * rank], (out_features, rank)))
        self.B = nnx.Param(jnp.reshape(flat[out_features * rank :], (rank, in_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,), dtype))

    @classmethod
    def from_dense(
        cls, W, b=None, *, rank: int, activation: str | None = None, dtype=jnp.float32
    ) -> "LowRankLinear":
        """Best rank-r start (truncated SVD) of y = act(W x + b), W (N_out, N_in).

        For an nnx.Linear pass `W = linear.kernel[...].T`.
        """
        W, b = _dense_operands("LowRankLinear", W, b)
        rank = _check_width("LowRankLinear", "rank", rank)
        A, B = tt_lib.truncated_svd(W, rank, dtype=np.float64)
        layer = cls(
            W.shape[1], W.shape[0], rank=A.shape[1], activation=activation, dtype=dtype,
            rngs=nnx.Rngs(0),
        )
        layer.A[...] = jnp.asarray(A, dtype)
        layer.B[...] = jnp.asarray(B, dtype)
        layer.bias[...] = jnp.asarray(b, dtype)
        return layer

    def to_dense(self) -> Array:
        """W = A·B (N_out, N_in)."""
        return jnp.einsum("jk,ki->ji", self.A[...], self.B[...])

    def __call__(self, x: Array) -> Array:
        """x (..., N_in) → (..., N_out)."""
        if x.shape[-1] != self.in_features:
            raise DistillError(
                f"LowRankLinear: expected input of shape (..., {self.in_features}), got "
                f"{tuple(x.shape)}"
            )
        h = jnp.einsum("...i,ki->...k", x.astype(self.dtype), self.B[...])
        y = jnp.einsum("...k,jk->...j", h, self.A[...]) + self.bias[...]
        return _apply_activation(self.activation, y)
