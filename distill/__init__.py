"""distill: distil trained neural networks into tensor-network students with JAX.

Library entry points: `distill.nn` (MPS nnx.Module), `distill.tn` (pure contractions
and feature maps), `distill.train` (loops), `distill.experiments.run.run` (the whole experiment).
"""

__version__ = "0.1.0"
