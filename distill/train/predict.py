"""Batched inference and latency of any nnx model."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distill.nn.common import inference_copy


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(x)


def predict(model: nnx.Module, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Model outputs for all rows of x, in fixed-size (zero-padded) batches: one compile per model.
    Tensor-network modules run their inference path (`nn.inference_copy`: weights' layouts and
    products precomputed for the batch size)."""
    n = x.shape[0]
    batch_size = min(batch_size, max(n, 1))
    graphdef, state = nnx.split(inference_copy(model, batch_size))
    out = []
    for start in range(0, n, batch_size):
        xb = x[start : start + batch_size]
        pad = batch_size - xb.shape[0]
        if pad:
            xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
        out.append(np.asarray(_apply(graphdef, state, jnp.asarray(xb)))[: batch_size - pad])
    return np.concatenate(out)


def latency_ms(model: nnx.Module, n_features: int, batch_size: int, repeats: int = 20) -> float:
    """Median wall time (ms) of one jitted forward pass at `batch_size` (compiled first), on the
    inference path `predict` uses."""
    graphdef, state = nnx.split(inference_copy(model, batch_size))
    x = jnp.full((batch_size, n_features), 0.5, jnp.float32)
    _apply(graphdef, state, x).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _apply(graphdef, state, x).block_until_ready()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)
