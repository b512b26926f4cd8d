"""The small-dense baseline layer."""

from __future__ import annotations

from flax import nnx
from jax import Array

from distill.nn.common import ACTIVATIONS

__all__ = ["DenseBottleneck", "PixelMLP"]


class DenseBottleneck(nnx.Module):
    """x (B, n_in) → Linear(n_in, width) → act → Linear(width, n_out) (B, n_out): the small-dense
    baseline for one layer; its output is a pre-activation like the layer it replaces."""

    def __init__(self, n_in: int, n_out: int, *, width: int, activation: str, rngs: nnx.Rngs):
        self.down = nnx.Linear(n_in, width, rngs=rngs)
        self.up = nnx.Linear(width, n_out, rngs=rngs)
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        return self.up(ACTIVATIONS[self.activation](self.down(x)))


class PixelMLP(nnx.Module):
    """x (B, n_in) → [Linear(·, width) → act] × depth → Linear(width, n_out) (B, n_out): a small
    dense network on the student's input pixels — the pixel-level small-dense baseline for pixel
    tensor-network students (family `mlp`). Parameters: (n_in + 1)·width + (depth − 1)·(width + 1)·width
    + (width + 1)·n_out. Init: flax's Linear defaults (LeCun-normal kernels, zero biases)."""

    def __init__(self, n_in: int, n_out: int, *, width: int, depth: int, activation: str, rngs: nnx.Rngs):
        widths = [n_in] + [width] * depth
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.head = nnx.Linear(width, n_out, rngs=rngs)
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        act = ACTIVATIONS[self.activation]
        for layer in self.hidden:
            x = act(layer(x))
        return self.head(x)
