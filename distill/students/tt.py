"""Family `tt`: every hidden dense layer replaced by a TT-matrix (MPO) layer, warm-started by
TT-SVD of the teacher's W (seeds 001, 002; seed 004 Algorithm 6)."""

from __future__ import annotations

from dataclasses import dataclass, field

from flax import nnx

from distill.nn import TTLinear
from distill.options import at_least, choice

__all__ = ["Options", "SIZE_KNOB", "make_layer", "describe"]


@dataclass(frozen=True)
class Options:
    rank: int = field(default=8, metadata=at_least(1))  # TT-rank cap of every inner bond
    tt_factors: int = field(default=4, metadata=at_least(2))  # cores per TT layer (modes chosen automatically)
    # How a TT layer multiplies (all give the same values): None = chosen from shape and backend;
    # see distill.tn.tt.tt_matvec.
    tt_method: str | None = field(default=None, metadata=choice("cores", "split", "dense"))
    warm_start: bool = True  # TT-SVD of the teacher's W (and the head copied from the teacher)


SIZE_KNOB = "rank"


def make_layer(opts: Options, n_in: int, n_out: int, *, dense, activation: str, input_range, seed: int,
               index: int, rngs: nnx.Rngs) -> TTLinear:
    """A TT layer n_in → n_out: TT-SVD of the teacher's (W, b) when `dense` is given, else random."""
    if dense is not None:
        return TTLinear.from_dense(*dense, n_factors=opts.tt_factors, rank=opts.rank, method=opts.tt_method)
    return TTLinear(n_in, n_out, n_factors=opts.tt_factors, rank=opts.rank, method=opts.tt_method, rngs=rngs)


def describe(opts: Options) -> str:
    return f"TT-matrix layers ({opts.tt_factors} cores, rank {opts.rank})"
