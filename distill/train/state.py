"""The train state and the optimiser that updates it.

`TrainState` is everything a training run needs to continue exactly where it stopped: the
model's parameters and its other variables (BatchNorm statistics, dropout RNG counters), the
optimiser state, the step and epoch counters, an RNG key, and the best-so-far parameters with
their validation score. It is a pytree of arrays, so it is donated to the jitted step, sharded
(replicated) over devices and saved by orbax as is.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["TrainSettings", "TrainState", "make_optimizer"]


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings of one training phase (hashable: the jitted step is cached on them).

    epochs, batch_size (global, over all devices), lr (peak learning rate), weight_decay
    (AdamW's decoupled decay; 0 = Adam), schedule ("constant" or "cosine": decay to 1 % of lr
    over all steps), warmup_epochs (linear warm-up from 0 to lr first), grad_clip (global-norm
    clipping; None = off), ema (decay of an exponential moving average of the weights, which is
    what is validated and kept; None = off), seed (batch order, RNG key).
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    schedule: str = "cosine"
    grad_clip: float | None = None
    seed: int = 0
    warmup_epochs: int = 0
    ema: float | None = None


@functools.lru_cache(maxsize=64)
def make_optimizer(settings: TrainSettings, steps_per_epoch: int) -> tuple[optax.GradientTransformation,
                                                                           Callable[[Any], jax.Array]]:
    """(Adam(W) with optional global-norm clipping, its learning-rate schedule step → lr).

    Cached: the same settings give the same objects, so the jitted step (static on them) compiles
    once per model structure and batch shape, across phases, layers and seeds."""
    s = settings
    total = max(1, s.epochs * steps_per_epoch)
    warmup = min(s.warmup_epochs * steps_per_epoch, total - 1)
    if s.schedule == "cosine" and warmup:
        schedule = optax.warmup_cosine_decay_schedule(0.0, s.lr, warmup, total, end_value=0.01 * s.lr)
    elif s.schedule == "cosine":
        schedule = optax.cosine_decay_schedule(s.lr, decay_steps=total, alpha=0.01)
    elif warmup:
        schedule = optax.join_schedules([optax.linear_schedule(0.0, s.lr, warmup), optax.constant_schedule(s.lr)],
                                        [warmup])
    else:
        schedule = optax.constant_schedule(s.lr)
    opt = optax.adamw(schedule, weight_decay=s.weight_decay) if s.weight_decay > 0 else optax.adam(schedule)
    if s.grad_clip is not None:
        opt = optax.chain(optax.clip_by_global_norm(s.grad_clip), opt)
    return opt, schedule


class TrainState(NamedTuple):
    """One training run's state; every field is an array or a pytree of arrays.

    params: nnx.State of the model's nnx.Param; rest: nnx.State of its other variables;
    opt_state: the optimiser's state; step: int32 () optimiser steps taken; epoch: int32 ()
    epochs completed; key: uint32 (2,) raw PRNG key data (augmentation draws fold in the step);
    best_params / best_rest: copies of params / rest at the best validation epoch so far;
    best_score: float32 () that epoch's validation score (−inf before any); best_epoch: int32 ()
    that epoch, counted from 1 (0 before any).
    """

    params: Any
    rest: Any
    opt_state: Any
    step: jax.Array
    epoch: jax.Array
    key: jax.Array
    best_params: Any
    best_rest: Any
    best_score: jax.Array
    best_epoch: jax.Array
    ema: Any = None

    @classmethod
    def create(cls, params, rest, tx: optax.GradientTransformation, seed: int, ema: bool = False) -> "TrainState":
        state = cls(params=params, rest=rest, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                    epoch=jnp.zeros((), jnp.int32), key=jax.random.key_data(jax.random.key(seed)),
                    best_params=params, best_rest=rest, best_score=jnp.full((), -jnp.inf, jnp.float32),
                    best_epoch=jnp.zeros((), jnp.int32), ema=params if ema else None)
        # Every leaf its own buffer: the state is donated, and JAX may hand out one cached buffer
        # for equal constants (the zero counters) or alias params and best_params.
        return jax.tree.map(jnp.copy, state)
