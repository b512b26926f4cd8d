"""Family `tucker`: the teacher's hidden dense layers and convolutions replaced by Tucker-2
layers (seed 003 "TK"; Kim et al. 2016; TedNet TK2), warm-started by HOOI / HOSVD of the
teacher's weights (TensorLy `partial_tucker`, `distill.tn.tucker`).

Dense: W = U_out·G·U_inᵀ with rank r (r·(N_in + r + N_out) + N_out parameters; for a matrix this
is the rank-r family of `lowrank` with r² more parameters, warm-started by the same truncated SVD).
Convolution: Tucker-2 over the input and output channels, 1×1 (C_in → r) → kh×kw (r → r) → 1×1
(r → C_out): C_in·r + kh·kw·r² + r·C_out + C_out parameters, r lowered to what the kernel can use.
Which layers: `replace` and `keep_first_conv` (`distill.students.mirror`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flax import nnx

from distill.nn.tucker import Tucker2Conv, Tucker2Linear
from distill.options import at_least, choice
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
    rank: int = field(default=8, metadata=at_least(1))  # Tucker rank (both sides) of every replaced layer
    tucker_method: str = field(default="hooi", metadata=choice("hooi", "hosvd"))  # the warm start's algorithm
    replace: str = replace_option()  # dense | conv | all: which teacher layers are replaced
    keep_first_conv: bool = keep_first_conv_option()  # the conv that reads the image stays the teacher's
    conv_rank: int | None = conv_rank_option()  # rank of the replaced convolutions; null = rank
    warm_start: bool = True  # HOOI / HOSVD of the teacher's weights (and the rest copied from the teacher)


SIZE_KNOB = "rank"



def make_layer(opts: Options, n_in: int, n_out: int, *, dense, activation: str, input_range, seed: int,
               index: int, rngs: nnx.Rngs) -> Tucker2Linear:
    """A Tucker-2 layer n_in → n_out: the truncated SVD (HOOI = HOSVD for a matrix) of the teacher's
    (W, b) when `dense` is given, else random with the init scale of `activation`."""
    if dense is not None:
        return Tucker2Linear.from_dense(*dense, rank=opts.rank, method=opts.tucker_method)
    return pre_activation(Tucker2Linear(n_in, n_out, rank=opts.rank, activation=init_activation(activation),
                                        rngs=rngs))


def make_conv_layer(opts: Options, layer: dict, *, conv, activation: str | None, seed: int, index: int,
                    rngs: nnx.Rngs) -> Tucker2Conv:
    """A Tucker-2 convolution of rank `conv_rank` (default `rank`) with the teacher conv `layer`'s
    geometry: HOOI / HOSVD over the channel modes of its (kernel, bias) when `conv` is given,
    else random."""
    geometry = {"strides": tuple(layer["stride"]), "padding": tuple(tuple(p) for p in layer["padding"])}
    rank = opts.conv_rank or opts.rank
    if conv is not None:
        return Tucker2Conv.from_conv(*conv, rank=rank, method=opts.tucker_method, **geometry)
    return pre_activation(Tucker2Conv(layer["in_channels"], layer["out_channels"], tuple(layer["kernel"]),
                                      rank=rank, activation=init_activation(activation), rngs=rngs,
                                      **geometry))


def describe(opts: Options) -> str:
    conv_rank = "" if opts.conv_rank is None else f", conv rank {opts.conv_rank}"
    return f"Tucker-2 layers (rank {opts.rank}{conv_rank}, {opts.tucker_method.upper()} warm start)"
