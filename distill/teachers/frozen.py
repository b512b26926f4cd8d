"""Frozen, batched, gradient-free forward passes of a teacher over a whole split.

Using the teacher frozen: the teacher is never trained by distillation. Either call it
outside of any ``jax.grad``/``value_and_grad`` (e.g. precompute its outputs once with
:func:`frozen_logits` / :func:`frozen_activations`, which return NumPy arrays and so cannot
carry gradients), or wrap its outputs in ``jax.lax.stop_gradient`` when it is called inside
a differentiated function, and never pass its state to an optimizer.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distill.errors import DistillError
from distill.teachers.mlp import MLP


@functools.partial(jax.jit, static_argnums=(0, 3))
def _forward(graphdef, params, x, names):
    model = nnx.merge(graphdef, params)
    acts = model.activations(x)
    return {n: jax.lax.stop_gradient(acts[n]) for n in names}


def _run_frozen(model: MLP, x, names: tuple[str, ...], batch_size: int) -> dict[str, np.ndarray]:
    if not isinstance(model, MLP):
        raise DistillError(f"expected a distill MLP teacher, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise DistillError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = np.asarray(x, dtype=np.float32)
    d = model.spec["in_features"]
    if x.ndim != 2 or x.shape[1] != d:
        raise DistillError(
            f"teacher expects inputs of shape (N, {d}) but got {x.shape}; check the data's "
            "image shape / downsample match the teacher's"
        )
    graphdef, params = nnx.split(model)
    n = x.shape[0]
    bs = int(min(batch_size, max(n, 1)))
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for start in range(0, n, bs):
        xb = x[start : start + bs]
        m = xb.shape[0]
        if m < bs:  # pad the last batch so every call hits the same compiled function
            xb = np.concatenate([xb, np.zeros((bs - m, d), np.float32)], axis=0)
        out = _forward(graphdef, params, xb, names)
        for k in names:
            chunks[k].append(np.asarray(out[k])[:m])
    if n == 0:
        shapes = jax.eval_shape(
            lambda p, xx: _forward(graphdef, p, xx, names),
            params,
            jax.ShapeDtypeStruct((1, d), jnp.float32),
        )
        return {k: np.zeros((0, *shapes[k].shape[1:]), np.float32) for k in names}
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}


def frozen_logits(model: MLP, x, batch_size: int = 4096) -> np.ndarray:
    """Teacher logits for all of ``x`` (N, in_features) as a float32 NumPy array (N, n_classes),
    computed with a jitted forward in batches of ``batch_size``, with no gradient tracking."""
    return _run_frozen(model, x, ("logits",), batch_size)["logits"]


def frozen_activations(
    model: MLP, x, names: Sequence[str], batch_size: int = 4096
) -> dict[str, np.ndarray]:
    """Named teacher activations (see :meth:`MLP.activations`) for all of ``x`` as NumPy
    arrays, computed in jitted batches with no gradient tracking."""
    if isinstance(names, str):
        names = [names]
    names = tuple(names)
    known = model.activation_names if isinstance(model, MLP) else ()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DistillError(
            f"unknown teacher activation name(s) {', '.join(map(repr, unknown))}; "
            f"available: {', '.join(known)}"
        )
    return _run_frozen(model, x, names, batch_size)
