"""Family `mps`: one MPS over the student's input pixels whose output leg gives the logits
(Stoudenmire & Schwab 2016; seed 000 §2)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from flax import nnx

from distill.nn import MPS
from distill.options import at_least, check, choice, non_negative

__all__ = ["MPSOptions", "Options", "SIZE_KNOB", "build", "describe"]


@dataclass(frozen=True)
class MPSOptions:
    """Options of the MPS families (`mps`, `mps_layers`): see `distill.nn.MPS` for their meaning."""

    bond_dim: int = field(default=8, metadata=at_least(1))
    feature_map: str = field(default="trig", metadata=check("a registered feature-map name", lambda v: bool(v)))
    feature_dim: int = field(default=2, metadata=at_least(2))
    feature_params: dict = field(default_factory=dict, metadata=check(
        "a mapping of map parameters to numbers (true/false), e.g. {scale: 1.0}",
        lambda v: all(isinstance(x, (int, float)) for x in v.values())))  # extra map parameters
    pairing: str | None = field(default=None, metadata=choice("neighbour", "random"))  # pairwise maps only
    pairing_seed: int | None = field(default=None, metadata=check("an integer ≥ 0", lambda v: v >= 0))  # None = seed
    # Pairwise maps read inputs shifted by this (None = 1.0): [x_a, x_a·x_b] is the zero vector
    # wherever x_a = 0, which zeroes the whole MPS on images; 0.0 gives the seed's literal map.
    pair_shift: float | None = None
    output_site: int | None = field(default=None, metadata=at_least(1))  # None = middle
    init_std: float = field(default=0.01, metadata=non_negative())
    # How MPS chains are contracted (all give the same values): None = chosen from shape and
    # backend (CPU: scan); see distill.tn.mps.contract.
    contraction: str | None = field(default=None, metadata=choice("scan", "tree", "chunked"))


Options = MPSOptions
SIZE_KNOB = "bond_dim"


def build(opts: MPSOptions, *, n_sites: int, image_shape: tuple[int, int], n_classes: int,
          site_order: np.ndarray, seed: int) -> MPS:
    """The MPS (n_sites → n_classes); a random pairing is drawn from `pairing_seed` (default `seed`)."""
    return MPS(n_sites, n_classes, bond_dim=opts.bond_dim, feature_map=opts.feature_map,
               feature_dim=opts.feature_dim, feature_params=opts.feature_params or None, pairing=opts.pairing,
               pairing_seed=seed if opts.pairing_seed is None else opts.pairing_seed, pair_shift=opts.pair_shift,
               output_site=opts.output_site, init_std=opts.init_std, site_order=site_order,
               contraction=opts.contraction, rngs=nnx.Rngs(seed + 1))


def describe(opts: MPSOptions) -> str:
    where = "mid-chain" if opts.output_site is None else f"after site {opts.output_site}"
    return (f"MPS, {opts.feature_map} map d={opts.feature_dim}, bond dimension χ={opts.bond_dim}, "
            f"output core {where}")
