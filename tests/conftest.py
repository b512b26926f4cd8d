"""Strict JAX numerics for every test (the equinox habit): no implicit dtype promotion, no
implicit rank promotion — a silent float64 → float32 mix or a broadcast the code did not mean
fails loudly here instead of giving a plausible number."""

import jax

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
