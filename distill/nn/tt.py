"""TT-matrix (MPO) dense layer (seeds 001, 002): y = act(W x + b), W in TT format, never formed."""

from __future__ import annotations

import math
from typing import Sequence

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
    store_plan,
    stored_plan,
)
from distill.tn import tt as tt_lib

__all__ = ["TTLinear"]


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
    nnx.List; bias (N_out,). The forward pass is `tn.tt.tt_matvec` with `method` ("cores",
    "split", "dense"; None = `tn.tt.choose_tt_method` from the shapes and backend); all methods
    give the same values.

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
        method: str | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        in_features = _check_width("TTLinear", "in_features", in_features)
        if method is not None and method not in tt_lib.TT_METHODS:
            raise DistillError(
                f"TTLinear: method must be one of {', '.join(tt_lib.TT_METHODS)} or None (automatic), "
                f"got {method!r}"
            )
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
        self.method = method
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
        method: str | None = None,
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
            activation=activation, method=method, dtype=dtype, rngs=nnx.Rngs(0),
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

    def prepare_inference(self, batch: int) -> None:
        """Form the fixed products of the cores once for batches of `batch` (`tn.tt.tt_plan`);
        used by `nn.inference_copy` — never on a layer still being trained (it is a snapshot)."""
        plan = tt_lib.tt_plan(self.core_arrays, batch, method=self.method)
        store_plan(self, plan, ())

    def prepare_export(self) -> None:
        """Contract by `tn.tt.tt_matvec_modes` (the batch kept on its own axis) for an export with
        a symbolic batch; the cores stay cores, so the exported file stays compressed."""
        store_plan(self, tt_lib.tt_export_plan(self.core_arrays), ())

    def __call__(self, x: Array) -> Array:
        """x (..., N_in) → (..., N_out)."""
        if x.shape[-1] != self.in_features:
            raise DistillError(
                f"TTLinear: expected input of shape (..., {self.in_features}), got {tuple(x.shape)}"
            )
        plan = stored_plan(self)
        if plan is None:
            y = tt_lib.tt_matvec(self.core_arrays, x.astype(self.dtype), method=self.method)
        else:
            y = tt_lib.tt_matvec_planned(plan[0], x.astype(self.dtype))
        return _apply_activation(self.activation, y + jnp.broadcast_to(self.bias[...], y.shape))
