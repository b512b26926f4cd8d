"""distill: distil trained neural networks into tensor-network students with JAX.

Library entry points: `distill.layers` (MPS nnx.Module), `distill.tn` (pure contractions
and feature maps), `distill.train` (loops), `distill.pipeline.run` (the whole experiment).
"""

__version__ = "0.1.0"
