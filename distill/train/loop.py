"""Training loops: one jitted update per step, validation each epoch, best-by-validation kept.

`fit` trains any NNX model against any loss of its logits: cross-entropy for a teacher,
the KD loss for a student (`end_to_end`). Frozen teacher outputs are precomputed once and
passed in as targets, so the teacher is never in the optimizer and never differentiated.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from distill.errors import DistillError
from distill.train import losses
from distill.train.metrics import r2_score
from distill.train.predict import predict


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings shared by teacher training and distillation."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    schedule: str = "cosine"  # constant | cosine
    grad_clip: float | None = None  # global-norm clipping; None = off
    seed: int = 0


@dataclass
class History:
    """Per-epoch measurements; `best_epoch` is the one whose parameters were kept.

    `val_accuracy` holds the validation score that chose the best epoch: accuracy for
    classifiers, R² for a layer fitted to teacher activations (`layerwise`).
    """

    train_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    epoch_s: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_val_accuracy: float = float("nan")

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def make_optimizer(s: TrainSettings, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam(W) with a constant or cosine-decayed learning rate, optional global-norm clipping."""
    if s.schedule == "cosine":
        lr = optax.cosine_decay_schedule(s.lr, decay_steps=max(1, s.epochs * steps_per_epoch), alpha=0.01)
    else:
        lr = s.lr
    opt = optax.adamw(lr, weight_decay=s.weight_decay) if s.weight_decay > 0 else optax.adam(lr)
    if s.grad_clip is not None:
        opt = optax.chain(optax.clip_by_global_norm(s.grad_clip), opt)
    return opt


def fit(model: nnx.Module, loss_fn: Callable[..., jax.Array], x_train: np.ndarray,
        targets: tuple[np.ndarray, ...], x_val: np.ndarray, y_val: np.ndarray,
        settings: TrainSettings, *, score: Callable[[np.ndarray, np.ndarray], float] = losses.accuracy,
        score_name: str = "val_acc", desc: str = "train", progress: bool = True) -> History:
    """Train `model` in place on `loss_fn(outputs, *targets_batch)`; keep the best-by-validation params.

    x_train (N, n_in); each target (N, ...); x_val (N_val, n_in); y_val (N_val, ...) what
    `score(model outputs on x_val, y_val)` compares against (higher is better; default:
    accuracy against integer labels).
    Batches are drawn without replacement each epoch (seeded); the last partial batch is
    dropped so every step has the same shape and the step compiles once.
    """
    n = x_train.shape[0]
    batch = min(settings.batch_size, n)
    steps = n // batch
    tx = make_optimizer(settings, steps)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)
    x_dev = jnp.asarray(x_train)
    t_dev = tuple(jnp.asarray(t) for t in targets)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, rest, idx):
        def loss_of(p):
            out = nnx.merge(graphdef, p, rest)(x_dev[idx])
            return loss_fn(out, *(t[idx] for t in t_dev))

        loss, grads = jax.value_and_grad(loss_of)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)

    rng = np.random.default_rng(settings.seed)
    hist = History()
    best_params = None
    bar = tqdm(total=settings.epochs * steps, desc=desc, unit="step", disable=not progress,
               dynamic_ncols=True, leave=False)
    for epoch in range(settings.epochs):
        t0 = time.perf_counter()
        order = rng.permutation(n)[: steps * batch].reshape(steps, batch).astype(np.int32)
        loss_sum = jnp.zeros(())
        gnorm_sum = jnp.zeros(())
        for i in range(steps):
            params, opt_state, loss, gnorm = step(params, opt_state, rest, order[i])
            loss_sum += loss
            gnorm_sum += gnorm
            bar.update(1)
        train_loss = float(loss_sum) / steps
        if not np.isfinite(train_loss):
            bar.close()
            raise DistillError(f"{desc}: the training loss became {train_loss} in epoch {epoch + 1}; "
                               "lower the learning rate or set grad_clip")
        nnx.update(model, params)
        val_acc = score(predict(model, x_val), y_val) if len(y_val) else float("nan")
        hist.train_loss.append(train_loss)
        hist.grad_norm.append(float(gnorm_sum) / steps)
        hist.val_accuracy.append(val_acc)
        hist.epoch_s.append(time.perf_counter() - t0)
        if best_params is None or val_acc > hist.best_val_accuracy:
            hist.best_epoch, hist.best_val_accuracy = epoch, val_acc
            best_params = jax.tree.map(np.array, params)
        bar.set_postfix({"epoch": epoch + 1, "loss": f"{train_loss:.4f}", score_name: f"{val_acc:.4f}"})
    bar.close()
    nnx.update(model, jax.tree.map(jnp.asarray, best_params))
    return hist


def train_classifier(model: nnx.Module, x_train, y_train, x_val, y_val, settings: TrainSettings, *,
                     desc: str = "teacher", progress: bool = True) -> History:
    """Plain supervised training on labels (cross-entropy): teachers and the labels-only control."""
    return fit(model, losses.cross_entropy, x_train, (y_train,), x_val, y_val, settings,
               desc=desc, progress=progress)


def end_to_end(student: nnx.Module, x_train, teacher_logits, y_train, x_val, y_val, settings: TrainSettings, *,
               temperature: float, alpha: float, desc: str = "student", progress: bool = True) -> History:
    """Distil on the frozen teacher's logits (precomputed, (N, classes)) with the KD loss."""

    def loss_fn(z, t, y):
        return losses.kd_loss(z, t, y, temperature=temperature, alpha=alpha)

    return fit(student, loss_fn, x_train, (teacher_logits, y_train), x_val, y_val, settings,
               desc=desc, progress=progress)


def fit_layer(layer: nnx.Module, x_train, y_train, x_val, y_val, settings: TrainSettings, *,
              desc: str = "layer", progress: bool = True) -> History:
    """Layer-wise distillation of one layer: MSE between layer(x) and the teacher's activations.

    x (N, n_in) are the teacher's inputs to that layer, y (N, n_out) its outputs; the epoch
    with the best validation R² is kept.
    """

    def mse(out, y):
        return jnp.mean((out - y) ** 2)

    return fit(layer, mse, x_train, (y_train,), x_val, y_val, settings, score=r2_score, score_name="val_r2",
               desc=desc, progress=progress)


