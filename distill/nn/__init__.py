"""Flax NNX modules that hold tensor-network parameters and call the pure functions in tn/.

Drop any of these into your own `nnx.Module` and train it with
`nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)`.
"""

from distill.nn.common import ACTIVATIONS, inference_copy, param_count
from distill.nn.dense import DenseBottleneck, PixelMLP
from distill.nn.features import Partners, SiteOrder
from distill.nn.lowrank import LowRankLinear
from distill.nn.mps import MPS, InputScale, MPSHidden
from distill.nn.tt import TTLinear

__all__ = ["ACTIVATIONS", "param_count", "SiteOrder", "Partners", "MPS", "MPSHidden", "InputScale",
           "TTLinear", "LowRankLinear", "DenseBottleneck", "PixelMLP", "inference_copy"]
