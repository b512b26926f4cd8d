"""Family `tr`: the teacher's hidden dense layers and convolutions replaced by tensor-ring layers
(Wang et al. 2018; TedNet TR; seeds 003, 004), warm-started by TR-SVD of the teacher's weights
(`distill.tn.tr`, seed 004 Algorithm 7).

Dense: W (N_out, N_in) as a ring over `tr_factors` modes per side (N_in = a_1⋯a_k, N_out =
b_1⋯b_k, `tt.factorize`), every bond of rank `rank`: rank²·(Σ a + Σ b) + N_out parameters
(`TRLinear`). Convolution: the ring over (c_1…c_k, kh·kw, f_1…f_k) (the kernel reshaped, channels
split into `tr_factors` modes each), every bond `rank`: rank²·(Σ c + kh·kw + Σ f) + C_out
parameters (`TRConv`). Which layers: `replace` and `keep_first_conv` (`distill.students.mirror`).

Uniform ranks. TR-SVD finds its own ranks under the cap: the two bonds of the mode it splits
first multiply to at most that mode's size, and numerically-zero singular values are dropped
(e.g. dead units), so a warm start could come out smaller than a random layer of the same
options — and a saved student could not be rebuilt before its arrays are restored. Every layer
therefore has rank `rank` on every bond: the TR-SVD cores are padded up to it (`pad_ring`),
which leaves the ring's tensor exactly as TR-SVD made it and keeps the new entries trainable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np
from flax import nnx

from distill.nn.tr import TRConv, TRLinear
from distill.options import at_least
from distill.students.mirror import (
    conv_rank_option,
    init_activation,
    keep_first_conv_option,
    pre_activation,
    replace_option,
)

__all__ = ["SIZE_KNOB", "Options", "describe", "make_conv_layer", "make_layer", "pad_ring"]


@dataclass(frozen=True)
class Options:
    rank: int = field(default=8, metadata=at_least(1))  # every bond of every ring
    tr_factors: int = field(default=2, metadata=at_least(1))  # modes per side (dense W, conv channels)
    replace: str = replace_option()  # dense | conv | all: which teacher layers are replaced
    keep_first_conv: bool = keep_first_conv_option()  # the conv that reads the image stays the teacher's
    conv_rank: int | None = conv_rank_option()  # rank of the replaced convolutions; null = rank
    warm_start: bool = True  # TR-SVD of the teacher's weights (and the rest copied from the teacher)


SIZE_KNOB = "rank"


def pad_ring(cores: Sequence[np.ndarray], ranks: Sequence[int], seed: int) -> list[np.ndarray]:
    """Ring cores G_k (r_k, n_k, r_{k+1}) brought up to bonds `ranks` (R_k ≥ r_k), the same tensor.

    Core k becomes (R_k, n_k, R_{k+1}): G_k in the corner; entries whose right bond index is new
    are 0; entries whose left bond index is new (and right one old) are N(0, rms(G_k)²) from
    `seed`. Every term of Tr(∏_k G_k[i_k]) that uses a new index on bond k + 1 holds a zero
    factor of core k, so the tensor is unchanged; the zero entries still get gradients (their
    partners in core k + 1 are not zero), so the new directions can be learned.
    Raises: ValueError when a bond would shrink (a bug: the caps are `ranks`).
    """
    d = len(cores)
    rng = np.random.default_rng(seed)
    out = []
    for k, core in enumerate(cores):
        core = np.asarray(core, np.float64)
        r_left, n, r_right = core.shape
        big_left, big_right = int(ranks[k]), int(ranks[(k + 1) % d])
        if r_left > big_left or r_right > big_right:
            raise ValueError(f"pad_ring: core {k} {core.shape} does not fit bonds ({big_left}, {big_right})")
        rms = math.sqrt(float(np.mean(core**2))) or 1.0
        padded = np.zeros((big_left, n, big_right))
        padded[:r_left, :, :r_right] = core
        padded[r_left:, :, :r_right] = rng.normal(0.0, rms, (big_left - r_left, n, r_right))
        out.append(padded)
    return out


def _fill(layer: nnx.Module, params: Sequence[nnx.Param], values: Sequence[np.ndarray]) -> nnx.Module:
    for param, value in zip(params, values, strict=True):
        value = jnp.asarray(value, param.dtype)
        if tuple(value.shape) != tuple(param.shape):
            raise AssertionError(f"padded core {value.shape} for a parameter of shape {param.shape}")
        param.set_value(value)
    return layer


def make_layer(opts: Options, n_in: int, n_out: int, *, dense, activation: str, input_range, seed: int,
               index: int, rngs: nnx.Rngs) -> TRLinear:
    """A TR layer n_in → n_out with every bond `rank`: TR-SVD of the teacher's (W, b) (capped at
    `rank`, then padded up to it) when `dense` is given, else random with the init scale of
    `activation`."""
    if dense is None:
        return pre_activation(TRLinear(n_in, n_out, n_factors=opts.tr_factors, rank=opts.rank,
                                       activation=init_activation(activation), rngs=rngs))
    warm = TRLinear.from_dense(*dense, n_factors=opts.tr_factors, rank=opts.rank)
    if warm.ranks == (opts.rank,) * len(warm.ranks):
        return warm
    cores = [c[...] for c in warm.in_cores] + [c[...] for c in warm.out_cores]
    padded = pad_ring(cores, (opts.rank,) * len(cores), seed + 1000 * index)
    layer = nnx.eval_shape(lambda: TRLinear(n_in, n_out, in_modes=warm.in_modes, out_modes=warm.out_modes,
                                            rank=opts.rank, rngs=nnx.Rngs(0)))
    return _fill(layer, [*layer.in_cores, *layer.out_cores, layer.bias], [*padded, warm.bias[...]])


def make_conv_layer(opts: Options, layer: dict, *, conv, activation: str | None, seed: int, index: int,
                    rngs: nnx.Rngs) -> TRConv:
    """A TR convolution with the teacher conv `layer`'s geometry and every bond `conv_rank` (default
    `rank`): TR-SVD of its (kernel, bias) (capped, then padded up) when `conv` is given, else
    random."""
    geometry = {"strides": tuple(layer["stride"]), "padding": tuple(tuple(p) for p in layer["padding"])}
    c_in, c_out, kernel = layer["in_channels"], layer["out_channels"], tuple(layer["kernel"])
    rank = opts.conv_rank or opts.rank
    if conv is None:
        return pre_activation(TRConv(c_in, c_out, kernel, n_factors=opts.tr_factors, rank=rank,
                                     activation=init_activation(activation), rngs=rngs, **geometry))
    warm = TRConv.from_conv(*conv, n_factors=opts.tr_factors, rank=rank, **geometry)
    if warm.ranks == (rank,) * len(warm.ranks):
        return warm
    n_in = len(warm.in_cores)
    cores = [c[...] for c in warm.in_cores] + [warm.spatial_core[...]] + [c[...] for c in warm.out_cores]
    padded = pad_ring(cores, (rank,) * len(cores), seed + 1000 * index + 500)
    out = nnx.eval_shape(lambda: TRConv(c_in, c_out, kernel, in_modes=warm.in_modes, out_modes=warm.out_modes,
                                        rank=rank, rngs=nnx.Rngs(0), **geometry))
    return _fill(out, [*out.in_cores, out.spatial_core, *out.out_cores, out.bias],
                 [*padded[:n_in], padded[n_in], *padded[n_in + 1:], warm.bias[...]])


def describe(opts: Options) -> str:
    conv_rank = "" if opts.conv_rank is None else f", conv bonds {opts.conv_rank}"
    return f"tensor-ring layers (every bond rank {opts.rank}{conv_rank}, {opts.tr_factors}+{opts.tr_factors} modes)"
