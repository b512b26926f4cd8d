"""Frozen, batched, gradient-free forward passes of a teacher over a whole split.

A teacher is either native — a `distill.teachers.network.Network` run by JAX (jitted, can be
differentiated through, activations by layer name) — or a black box: a callable
x (B, n_features) → logits np.ndarray (e.g. an ONNX graph run by onnxruntime) with
`n_features`, `n_classes`, `input_shape` and optionally `outputs(x, names) -> {name: np.ndarray}`.

Using the teacher frozen: the teacher is never trained by distillation. Either call it
outside of any ``jax.grad`` (precompute its outputs once with :func:`frozen_logits` /
:func:`frozen_activations`, which return NumPy arrays and so cannot carry gradients), or wrap
its outputs in ``jax.lax.stop_gradient`` inside a differentiated function, and never pass its
state to an optimiser.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distill.errors import DistillError

__all__ = ["frozen_logits", "frozen_activations", "is_native"]


def is_native(teacher) -> bool:
    """Whether `teacher` is an nnx module run by JAX (else a callable black box)."""
    return isinstance(teacher, nnx.Module)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _forward(graphdef, state, x, names):
    model = nnx.merge(graphdef, state)
    acts = model.activations(x)
    return {n: jax.lax.stop_gradient(acts[n]) for n in names}


def _check_inputs(teacher, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    d = teacher.n_features
    if x.ndim != 2 or x.shape[1] != d:
        h, w, c = teacher.input_shape
        raise DistillError(f"the teacher expects inputs of shape (N, {d}) ({h}x{w}x{c} images) but got {x.shape}; "
                           "check the data's image shape and downsample match the teacher's")
    return x


def _batches(n: int, batch_size: int):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise DistillError(f"batch_size must be a positive integer, got {batch_size!r}")
    bs = int(min(batch_size, max(n, 1)))
    return bs, range(0, n, bs)


def _run_native(model, x: np.ndarray, names: tuple[str, ...], batch_size: int) -> dict[str, np.ndarray]:
    model.eval()
    graphdef, state = nnx.split(model)
    n, d = x.shape
    bs, starts = _batches(n, batch_size)
    if n == 0:
        shapes = jax.eval_shape(lambda s, xx: _forward(graphdef, s, xx, names), state,
                                jax.ShapeDtypeStruct((1, d), jnp.float32))
        return {k: np.zeros((0, *shapes[k].shape[1:]), np.float32) for k in names}
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for start in starts:
        xb = x[start: start + bs]
        m = xb.shape[0]
        if m < bs:  # pad the last batch so every call hits the same compiled function
            xb = np.concatenate([xb, np.zeros((bs - m, d), np.float32)], axis=0)
        out = _forward(graphdef, state, xb, names)
        for k in names:
            chunks[k].append(np.asarray(out[k])[:m])
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}


def frozen_logits(teacher, x, batch_size: int = 4096) -> np.ndarray:
    """Teacher logits for all of ``x`` (N, n_features) as a float32 NumPy array (N, n_classes),
    in batches of ``batch_size``, with no gradient tracking.
    Raises: DistillError if x does not have the teacher's input width."""
    x = _check_inputs(teacher, x)
    if not is_native(teacher):
        bs, starts = _batches(x.shape[0], batch_size)
        if x.shape[0] == 0:
            return np.zeros((0, teacher.n_classes), np.float32)
        return np.concatenate([np.asarray(teacher(x[s: s + bs]), np.float32) for s in starts])
    return _run_native(teacher, x, ("logits",), batch_size)["logits"]


def frozen_activations(teacher, x, names: Sequence[str], batch_size: int = 4096) -> dict[str, np.ndarray]:
    """Named teacher activations (`teacher.activation_names`) for all of ``x`` as NumPy arrays,
    in batches, with no gradient tracking.
    Raises: DistillError for an unknown name, or a black-box teacher without named outputs."""
    if isinstance(names, str):
        names = [names]
    names = tuple(names)
    x = _check_inputs(teacher, x)
    if not is_native(teacher):
        if not hasattr(teacher, "outputs"):
            raise DistillError("this black-box teacher gives only its logits; layer activations need a native teacher")
        bs, starts = _batches(x.shape[0], batch_size)
        parts = [teacher.outputs(x[s: s + bs], names) for s in starts]
        return {k: np.concatenate([np.asarray(p[k], np.float32) for p in parts]) for k in names}
    known = teacher.activation_names
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DistillError(f"unknown teacher activation name(s) {', '.join(map(repr, unknown))}; "
                           f"available: {', '.join(known)}")
    return _run_native(teacher, x, names, batch_size)
