"""Family `mlp`: a small dense network on the student's input pixels, n_sites → width (× depth)
→ n_classes — the pixel-level small-dense baseline that pixel tensor-network students (`mps`)
are compared with at matched parameter counts (DESIGN.md §1: every comparison has a small-dense
baseline). The site order does not matter to it; it is recorded like any pixel student's."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from flax import nnx

from distill.nn import ACTIVATIONS, PixelMLP
from distill.options import at_least, check, choice

__all__ = ["Options", "SIZE_KNOB", "build", "describe"]


@dataclass(frozen=True)
class Options:
    width: int = field(default=128, metadata=at_least(1))  # units per hidden layer
    # hidden layers; capped: a baseline this deep is no longer small, and building hundreds of
    # layers (even shape-only, for the size check) takes minutes
    depth: int = field(default=1, metadata=check("an integer from 1 to 16", lambda v: 1 <= v <= 16))
    activation: str = field(default="relu", metadata=choice(*ACTIVATIONS))


SIZE_KNOB = "width"
ORDERED = False  # the site order does not change what it computes (reports say so)


def build(opts: Options, *, n_sites: int, image_shape: tuple[int, int], n_classes: int,
          site_order: np.ndarray, seed: int) -> PixelMLP:
    """The MLP (n_sites → n_classes), initialised from `seed` (as the MPS family: Rngs(seed + 1))."""
    return PixelMLP(n_sites, n_classes, width=opts.width, depth=opts.depth, activation=opts.activation,
                    rngs=nnx.Rngs(seed + 1))


def describe(opts: Options) -> str:
    layers = "layer" if opts.depth == 1 else "layers"
    return f"dense MLP on the pixels, {opts.depth} hidden {layers} of width {opts.width} ({opts.activation})"
