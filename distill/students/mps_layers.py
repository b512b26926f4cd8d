"""Family `mps_layers`: every hidden dense layer of the teacher replaced by an MPS layer over
φ(a^{l-1}) with factorised output cores (seed 000 §2: a = T·Φ(a_prev))."""

from __future__ import annotations

from flax import nnx

from distill.nn import MPSHidden
from distill.students.mps import MPSOptions

__all__ = ["Options", "SIZE_KNOB", "NEEDS_INPUT_SCALE", "make_layer", "describe"]

Options = MPSOptions
SIZE_KNOB = "bond_dim"
NEEDS_INPUT_SCALE = True


def make_layer(opts: MPSOptions, n_in: int, n_out: int, *, dense, activation: str, input_range,
               seed: int, index: int, rngs: nnx.Rngs) -> MPSHidden:
    """An MPS layer n_in → n_out (pre-activations) reading clip((x − offset) / scale, 0, 1) with
    `input_range` = (offset (n_in,), scale (n_in,)) (None: x as is). A random pairing is drawn per
    layer, from pairing_seed + index (pairing_seed defaults to `seed`). `dense` is not used: an MPS
    layer has no warm start from a dense matrix."""
    pairing_seed = (seed if opts.pairing_seed is None else opts.pairing_seed) + index
    return MPSHidden(n_in, n_out, bond_dim=opts.bond_dim, feature_map=opts.feature_map,
                     feature_dim=opts.feature_dim, feature_params=opts.feature_params or None,
                     pairing=opts.pairing, pairing_seed=pairing_seed, pair_shift=opts.pair_shift,
                     input_offset=0.0 if input_range is None else input_range[0],
                     input_scale=None if input_range is None else input_range[1], contraction=opts.contraction, rngs=rngs)


def describe(opts: MPSOptions) -> str:
    return f"MPS layers (χ={opts.bond_dim}, {opts.feature_map} map d={opts.feature_dim})"
