"""The one jitted training step: `train_step(state, batch) → (state, metrics)`.

The state is donated (its buffers are reused for the new state) and the batch is an argument,
never a constant closed over: the step compiles once per model structure, loss, optimiser and
batch shape (static arguments are hashable: an nnx GraphDef, a frozen loss record, the cached
optimiser, a `Feed`), and runs data-parallel when the batch is sharded over a device mesh.

With a `Feed` the step also prepares the batch (function matching, Beyer et al. 2022): it
augments the raw images with a key drawn from (state.key, state.step), runs the frozen teacher
on the same augmented images (never differentiated: stop_gradient; the teacher is not in the
optimiser) and feeds the model its view of them (average-pooled pixels, or a teacher activation
for a layer-wise fit).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from distill.data.augment import Augment
from distill.train.state import TrainState

__all__ = ["train_step", "METRICS", "Feed"]

#: Per-step measurements returned by `train_step` (float32 scalars).
METRICS = ("loss", "grad_norm", "param_norm", "update_norm", "lr")


@dataclass(frozen=True)
class Feed:
    """How the step turns a batch of raw images (batch["x"] (B, H*W) in [0, 1]) into the model's
    input and targets.

    augment: the augmentation (None: the images as they are); image_shape: (H, W); pool: the model
    reads the image average-pooled k×k (a pixel student's student.downsample); teacher: the frozen
    teacher's GraphDef (its state is the step's `teacher_state`), None when targets are given;
    source: the teacher activation the model reads instead of pixels (a layer-wise fit); target:
    the teacher output that becomes batch["t"] ("logits", or an activation name).
    Labels batch["y"] get their mixing partner's label batch["y2"] and weight batch["lam"].
    """

    image_shape: tuple[int, int]
    augment: Augment | None = None
    pool: int = 1
    teacher: Any = None
    source: str | None = None
    target: str = "logits"

    def prepare(self, batch: dict, key: jax.Array, teacher_state) -> dict:
        x = batch["x"]
        out = {k: v for k, v in batch.items() if k != "x"}
        if self.augment is not None:
            x, partner, lam = self.augment.apply(x, key)
            if "y" in batch:
                out["y2"], out["lam"] = batch["y"][partner], lam
        if self.teacher is not None:
            teacher = nnx.merge(self.teacher, teacher_state)
            if self.source is None and self.target == "logits":
                out["t"] = jax.lax.stop_gradient(teacher(x))
            else:
                acts = teacher.activations(x)
                out["t"] = jax.lax.stop_gradient(acts[self.target])
                if self.source is not None:
                    out["x"] = jax.lax.stop_gradient(acts[self.source])
                    return out
        out["x"] = _pool(x, self.image_shape, self.pool)
        return out


def _pool(x: jax.Array, image_shape: tuple[int, int], k: int) -> jax.Array:
    if k == 1:
        return x
    h, w = image_shape
    b = x.shape[0]
    return x.reshape(b, h // k, k, w // k, k).mean(axis=(2, 4)).reshape(b, -1)


@functools.partial(jax.jit, static_argnames=("graphdef", "loss", "tx", "schedule", "feed", "ema"),
                   donate_argnames=("state",))
def train_step(state: TrainState, batch: dict[str, jax.Array], teacher_state=None, *, graphdef: nnx.GraphDef,
               loss: Callable[[jax.Array, dict], jax.Array], tx: optax.GradientTransformation, schedule: Callable,
               feed: Feed | None = None, ema: float | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on `loss(model(batch["x"]), batch)`.

    state: TrainState (donated); batch: dict of arrays with a leading batch axis, "x" (B, n_in)
    the model's input (with a `feed`: raw images, prepared here) and whatever else `loss` reads
    (labels "y", teacher outputs "t"); teacher_state: the frozen teacher's nnx.State (feed with a
    teacher only); ema: decay of the exponential moving average of the parameters kept in
    state.ema (None: no average).
    Returns the new state and METRICS: the batch loss, the global norms of the gradient, of the
    parameters (before the update) and of the update, and the learning rate used.
    """
    if feed is not None:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        batch = feed.prepare(batch, key, teacher_state)
    model = nnx.merge(graphdef, state.params, state.rest)

    def loss_of(m):
        return loss(m(batch["x"]), batch)

    value, grads = nnx.value_and_grad(loss_of, argnums=nnx.DiffState(0, nnx.Param))(model)
    rest = nnx.state(model, nnx.Not(nnx.Param))  # BatchNorm statistics, RNG counters after the forward
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam raises a float to an int32 count
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": value, "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(state.params),
               "update_norm": optax.tree.norm(updates), "lr": jnp.asarray(schedule(state.step), jnp.float32)}
    new = state._replace(params=params, rest=rest, opt_state=opt_state, step=state.step + 1)
    if ema is not None:
        new = new._replace(ema=jax.tree.map(lambda e, p: ema * e + (1.0 - ema) * p, state.ema, params))
    return new, metrics
