"""Family `lowrank`: every hidden dense layer replaced by W = A·B, warm-started by truncated SVD
(the seeds' own baseline)."""

from __future__ import annotations

from dataclasses import dataclass, field

from flax import nnx

from distill.nn import LowRankLinear
from distill.options import at_least

__all__ = ["Options", "SIZE_KNOB", "make_layer", "describe"]


@dataclass(frozen=True)
class Options:
    rank: int = field(default=8, metadata=at_least(1))
    warm_start: bool = True  # truncated SVD of the teacher's W (and the head copied from the teacher)


SIZE_KNOB = "rank"


def make_layer(opts: Options, n_in: int, n_out: int, *, dense, activation: str, input_range, seed: int,
               index: int, rngs: nnx.Rngs) -> LowRankLinear:
    if dense is not None:
        return LowRankLinear.from_dense(*dense, rank=opts.rank)
    return LowRankLinear(n_in, n_out, rank=opts.rank, rngs=rngs)


def describe(opts: Options) -> str:
    return f"low-rank layers W = A·B (rank {opts.rank})"
