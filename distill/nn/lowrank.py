"""Low-rank (SVD) factorised dense layer, the seeds' baseline: W = A·B."""

from __future__ import annotations

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
from distill.tn import tt as tt_lib

__all__ = ["LowRankLinear"]


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
        y = jnp.einsum("...k,jk->...j", h, self.A[...])
        y = y + jnp.broadcast_to(self.bias[...], y.shape)
        return _apply_activation(self.activation, y)
