"""Strict JAX numerics for every test (the equinox habit): no implicit dtype promotion, no
implicit rank promotion — a silent float64 → float32 mix or a broadcast the code did not mean
fails loudly here instead of giving a plausible number."""

import jax

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled programs after each test module: each XLA:CPU executable keeps its own
    memory mappings, and ~800 tests' worth of them made a late compile fail inside XLA (SIGSEGV /
    SIGABRT in backend_compile) while every module passed on its own."""
    yield
    jax.clear_caches()
    gc.collect()
