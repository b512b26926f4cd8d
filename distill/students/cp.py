"""Family `cp`: the teacher's hidden dense layers and convolutions replaced by CP layers (seeds
003, 004: TedNet's CP layer; Lebedev et al. 2015 for convolutions), warm-started by CP-ALS of the
teacher's weights (TensorLy `parafac`, `distill.tn.cp`).

Dense: W (N_out, N_in) as a tensor over `cp_factors` modes per side (N_in = a_1⋯a_k, N_out =
b_1⋯b_k, `tt.factorize`) of CP rank `rank`: rank·(Σ a + Σ b) + N_out parameters (`CPLinear`).
Convolution: K (kh, kw, C_in, C_out) of CP rank `rank` over its four modes (`cp_separable`: 1×1 →
kh×1 → 1×kw → 1×1, rank·(kh + kw + C_in + C_out) + C_out parameters) or over (kh·kw, C_in, C_out)
(`CPConv`). Which layers: `replace` and `keep_first_conv` (`distill.students.mirror`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flax import nnx

from distill.nn.cp import CPConv, CPLinear
from distill.options import at_least
from distill.students.mirror import (
    conv_rank_option,
    init_activation,
    keep_first_conv_option,
    pre_activation,
    replace_option,
)

__all__ = ["SIZE_KNOB", "Options", "describe", "make_conv_layer", "make_layer"]


@dataclass(frozen=True)
class Options:
    rank: int = field(default=8, metadata=at_least(1))  # CP rank R of every replaced layer
    cp_factors: int = field(default=2, metadata=at_least(1))  # modes per side of a dense W (1 = low rank)
    cp_separable: bool = True  # conv: CP over (kh, kw, C_in, C_out); false: over (kh·kw, C_in, C_out)
    cp_iters: int = field(default=25, metadata=at_least(1))  # CP-ALS sweeps of the warm start
    replace: str = replace_option()  # dense | conv | all: which teacher layers are replaced
    keep_first_conv: bool = keep_first_conv_option()  # the conv that reads the image stays the teacher's
    conv_rank: int | None = conv_rank_option()  # rank of the replaced convolutions; null = rank
    warm_start: bool = True  # CP-ALS of the teacher's weights (and the rest copied from the teacher)


SIZE_KNOB = "rank"



def make_layer(opts: Options, n_in: int, n_out: int, *, dense, activation: str, input_range, seed: int,
               index: int, rngs: nnx.Rngs) -> CPLinear:
    """A CP layer n_in → n_out: CP-ALS (`cp_iters` sweeps, random columns from seed + index) of the
    teacher's (W, b) when `dense` is given, else random with the init scale of `activation`."""
    if dense is not None:
        return CPLinear.from_dense(*dense, n_factors=opts.cp_factors, rank=opts.rank, n_iter_max=opts.cp_iters,
                                   seed=seed + index)
    return pre_activation(CPLinear(n_in, n_out, n_factors=opts.cp_factors, rank=opts.rank,
                                   activation=init_activation(activation), rngs=rngs))


def make_conv_layer(opts: Options, layer: dict, *, conv, activation: str | None, seed: int, index: int,
                    rngs: nnx.Rngs) -> CPConv:
    """A CP convolution of rank `conv_rank` (default `rank`) with the teacher conv `layer`'s
    geometry: CP-ALS of its (kernel, bias) when `conv` is given, else random with the init scale
    of `activation`."""
    geometry = {"strides": tuple(layer["stride"]), "padding": tuple(tuple(p) for p in layer["padding"]),
                "separable": opts.cp_separable}
    rank = opts.conv_rank or opts.rank
    if conv is not None:
        return CPConv.from_conv(*conv, rank=rank, n_iter_max=opts.cp_iters, seed=seed + index, **geometry)
    return pre_activation(CPConv(layer["in_channels"], layer["out_channels"], tuple(layer["kernel"]),
                                 rank=rank, activation=init_activation(activation), rngs=rngs, **geometry))


def describe(opts: Options) -> str:
    conv = "separable" if opts.cp_separable else "joint-spatial"
    conv_rank = "" if opts.conv_rank is None else f", conv rank {opts.conv_rank}"
    return (f"CP layers (rank {opts.rank}{conv_rank}; dense W over {opts.cp_factors}+{opts.cp_factors} modes, "
            f"{conv} conv kernels)")
