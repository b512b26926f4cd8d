"""What every layer family shares: activations, parameter counts, argument checks.

Weight convention: the math is y = W x with W (N_out, N_in). flax's nnx.Linear stores kernel
(N_in, N_out) and computes x @ kernel, so W = linear.kernel.T.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from distill.errors import DistillError

__all__ = ["param_count", "ACTIVATIONS"]


def param_count(module: nnx.Module) -> int:
    """Total number of scalars in all `nnx.Param` leaves of `module`."""
    state = nnx.state(module, nnx.Param)
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(state)))


#: Activation name → elementwise function, shared by these layers and the teachers
#: (`distill.teachers.ACTIVATIONS` is this dict). ``gelu`` is the exact (erf) GELU.
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "sigmoid": jax.nn.sigmoid,
}


def _check_activation(layer: str, activation: str | None) -> str | None:
    if activation is not None and (
        not isinstance(activation, str) or activation not in ACTIVATIONS
    ):
        raise DistillError(
            f"{layer}: unknown activation {activation!r}; use one of "
            f"{', '.join(sorted(ACTIVATIONS))} or None (linear)"
        )
    return activation


def _apply_activation(activation: str | None, y: Array) -> Array:
    return y if activation is None else ACTIVATIONS[activation](y)


def _init_variance(in_features: int, activation: str | None) -> float:
    """Target Var(W_ji) of a dense init: He 2/N_in for relu/gelu, else LeCun 1/N_in.

    LeCun 1/N_in is nnx.Linear's default (lecun_normal); He doubles it to keep the output
    variance through a rectifier, which zeroes half of the pre-activations.
    """
    gain = 2.0 if activation in ("relu", "gelu") else 1.0
    return gain / in_features


def _check_width(layer: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DistillError(f"{layer}: {name} must be an integer >= 1, got {value!r}")
    return int(value)


def _dense_operands(layer: str, W, b):
    """Validate a dense (W (N_out, N_in), b (N_out,) or None) pair; return numpy arrays."""
    W = np.asarray(W)
    if W.ndim != 2:
        raise DistillError(
            f"{layer}.from_dense: W must be a matrix (N_out, N_in) for y = W x, got shape "
            f"{W.shape}; for an nnx.Linear pass linear.kernel.T"
        )
    b = np.zeros(W.shape[0], W.dtype) if b is None else np.asarray(b)
    if b.shape != (W.shape[0],):
        raise DistillError(
            f"{layer}.from_dense: bias must have shape ({W.shape[0]},) to match W {W.shape} "
            f"(y = W x + b), got {b.shape}"
        )
    return W, b


# ----------------------------------------------------------------------- inference plans


class InferencePlan(nnx.Variable):
    """Non-trainable arrays precomputed from a module's weights for inference (a core layout, a
    formed product of TT cores): a snapshot, valid only for the weights it was made from."""


def store_plan(module: nnx.Module, prepared, static: tuple) -> None:
    """Keep `prepared` (a pytree of arrays) on `module` as InferencePlan variables, and `static`
    (hashable: method, layout flags) as a static attribute."""
    leaves, treedef = jax.tree.flatten(prepared)
    module.plan_arrays = nnx.List([InferencePlan(leaf) for leaf in leaves])
    module.plan_static = (treedef, *static)


def stored_plan(module: nnx.Module):
    """(prepared pytree, *static) stored by `store_plan`, or None."""
    static = getattr(module, "plan_static", None)
    if static is None:
        return None
    treedef, *rest = static
    return (jax.tree.unflatten(treedef, [v[...] for v in module.plan_arrays]), *rest)


def inference_copy(model: nnx.Module, batch: int) -> nnx.Module:
    """A copy of `model` whose tensor-network modules use precomputed layouts of their weights
    for batches of `batch` (`prepare_inference`: MPS core layouts, TT products formed once): the
    same outputs with less per-call work. The original is untouched (the plans are a snapshot of
    its current weights)."""
    copy = nnx.clone(model)
    for _, module in copy.iter_modules():
        prepare = getattr(module, "prepare_inference", None)
        if prepare is not None:
            prepare(int(batch))
    copy.eval()
    return copy
