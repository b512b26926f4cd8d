"""The small-dense baseline layer."""

from __future__ import annotations

from flax import nnx
from jax import Array

from distill.nn.common import ACTIVATIONS

__all__ = ["DenseBottleneck"]


class DenseBottleneck(nnx.Module):
    """x (B, n_in) → Linear(n_in, width) → act → Linear(width, n_out) (B, n_out): the small-dense
    baseline for one layer; its output is a pre-activation like the layer it replaces."""

    def __init__(self, n_in: int, n_out: int, *, width: int, activation: str, rngs: nnx.Rngs):
        self.down = nnx.Linear(n_in, width, rngs=rngs)
        self.up = nnx.Linear(width, n_out, rngs=rngs)
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        return self.up(ACTIVATIONS[self.activation](self.down(x)))
