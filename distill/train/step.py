"""The one jitted training step: `train_step(state, batch) → (state, metrics)`.

The state is donated (its buffers are reused for the new state) and the batch is an argument,
never a constant closed over: the step compiles once per model structure, loss, optimiser and
batch shape (static arguments are hashable: an nnx GraphDef, a frozen loss record, the cached
optimiser), and runs data-parallel when the batch is sharded over a device mesh.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from distill.train.state import TrainState

__all__ = ["train_step", "METRICS"]

#: Per-step measurements returned by `train_step` (float32 scalars).
METRICS = ("loss", "grad_norm", "param_norm", "update_norm", "lr")


@functools.partial(jax.jit, static_argnames=("graphdef", "loss", "tx", "schedule"), donate_argnames=("state",))
def train_step(state: TrainState, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef,
               loss: Callable[[jax.Array, dict], jax.Array], tx: optax.GradientTransformation,
               schedule: Callable) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on `loss(model(batch["x"]), batch)`.

    state: TrainState (donated); batch: dict of arrays with a leading batch axis, "x" (B, n_in)
    the model's input and whatever else `loss` reads (labels "y", teacher outputs "t").
    Returns the new state and METRICS: the batch loss, the global norms of the gradient, of the
    parameters (before the update) and of the update, and the learning rate used.
    """
    model = nnx.merge(graphdef, state.params, state.rest)

    def loss_of(m):
        return loss(m(batch["x"]), batch)

    value, grads = nnx.value_and_grad(loss_of, argnums=nnx.DiffState(0, nnx.Param))(model)
    rest = nnx.state(model, nnx.Not(nnx.Param))  # BatchNorm statistics, RNG counters after the forward
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": value, "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(state.params),
               "update_norm": optax.tree.norm(updates), "lr": jnp.asarray(schedule(state.step), jnp.float32)}
    new = state._replace(params=params, rest=rest, opt_state=opt_state, step=state.step + 1)
    return new, metrics
