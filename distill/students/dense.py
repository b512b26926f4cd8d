"""Family `dense`: every hidden dense layer replaced by a small dense bottleneck
n_in → width → n_out (the small-dense baseline every comparison needs, DESIGN.md §1)."""

from __future__ import annotations

from dataclasses import dataclass, field

from flax import nnx

from distill.nn import DenseBottleneck
from distill.options import at_least

__all__ = ["Options", "SIZE_KNOB", "make_layer", "describe"]


@dataclass(frozen=True)
class Options:
    hidden_width: int = field(default=32, metadata=at_least(1))


SIZE_KNOB = "hidden_width"


def make_layer(opts: Options, n_in: int, n_out: int, *, dense, activation: str, input_range, seed: int,
               index: int, rngs: nnx.Rngs) -> DenseBottleneck:
    return DenseBottleneck(n_in, n_out, width=opts.hidden_width, activation=activation, rngs=rngs)


def describe(opts: Options) -> str:
    return f"dense bottleneck layers (width {opts.hidden_width})"
