"""The training loop: batches in, one jitted step each, validation each epoch, best kept, resumable.

`fit` trains any nnx model against any loss of its outputs: cross-entropy for a teacher, the
KD loss for a student, MSE on a teacher's activations for one layer. Frozen teacher outputs are
precomputed once and passed in as targets, so the teacher is never in the optimiser and never
differentiated.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from distill.errors import DistillError
from distill.train import losses
from distill.train.checkpoint import Checkpointing, RunInterrupted, stop_requested
from distill.train.metrics import r2_score
from distill.train.predict import predict
from distill.train.sharding import check_batch_size, data_mesh, local, replicate, shard_batch
from distill.train.state import TrainSettings, TrainState, make_optimizer
from distill.train.step import METRICS, Feed, train_step

__all__ = ["History", "Validation", "fit", "train_classifier", "end_to_end", "fit_layer", "check_finite"]


@dataclass
class History:
    """Per-epoch measurements (means over the epoch's steps) and which epoch was kept.

    `val_accuracy` holds the validation score that chose the kept epoch (`score_name`):
    accuracy for classifiers, R² for a layer fitted to teacher activations. `best_epoch` counts
    from 1. `selection` says how the kept epoch was chosen: the best validation score, or the
    last epoch when there is no validation set.
    """

    train_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float | None] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    param_norm: list[float] = field(default_factory=list)
    update_norm: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_s: list[float] = field(default_factory=list)
    spikes: list[int] = field(default_factory=list)  # epochs (from 1) whose loss was a spike (`loss_spike`)
    best_epoch: int = 0
    best_val_accuracy: float | None = None
    score_name: str = "accuracy"
    selection: str = "best validation epoch"

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**d)


@dataclass(frozen=True)
class Validation:
    """What picks the kept epoch: score(model outputs on x (N, n_in), y) — higher is better."""

    x: np.ndarray
    y: np.ndarray
    score: Callable[[np.ndarray, np.ndarray], float] = losses.accuracy
    name: str = "accuracy"


#: A training loss this many times the lowest epoch loss so far marks a loss spike (a step
#: that threw the weights off; seen on 784-site MPS chains at lr 1e-3 without a warm-up).
SPIKE_FACTOR = 3.0


def loss_spike(losses_so_far: list[float], loss: float) -> float | None:
    """loss / min(losses_so_far) when that ratio exceeds `SPIKE_FACTOR` (and the minimum is
    positive), else None. losses_so_far: earlier epochs' mean training losses of this phase."""
    if not losses_so_far:
        return None
    low = min(losses_so_far)
    if low <= 0 or loss <= SPIKE_FACTOR * low:
        return None
    return loss / low


def check_finite(what: str, arrays: dict[str, np.ndarray]) -> None:
    """Raises: DistillError naming the first non-finite value (array, row, column) of `arrays`."""
    for name, arr in arrays.items():
        a = np.asarray(arr)
        if a.dtype.kind != "f":
            continue
        bad = ~np.isfinite(a)
        if bad.any():
            idx = np.argwhere(bad)[0]
            col = f", column {idx[1]}" if len(idx) > 1 else ""
            raise DistillError(f"{what}: {name} holds a non-finite value ({a[tuple(idx)]}) at row {idx[0]}{col}; "
                               "clean the data (every input and target must be a finite number)")


def fit(model: nnx.Module, loss: Callable[[jax.Array, dict], jax.Array], x: np.ndarray,
        targets: dict[str, np.ndarray], settings: TrainSettings, *, val: Validation | None = None,
        ckpt: Checkpointing | None = None, devices: int | None = None, desc: str = "train",
        progress: bool = True, feed: Feed | None = None, teacher=None) -> History:
    """Train `model` in place on `loss(model(x_batch), batch)`; keep the best-by-validation params.

    x (N, n_in); targets {name: (N, ...)} become batch[name] next to batch["x"]; `loss` is a
    hashable callable (e.g. `losses.KD`). Batches are drawn without replacement each epoch in
    an order fixed by (settings.seed, epoch); the last partial batch is dropped so every step
    has the same shape and the step compiles once. Without `val` (or an empty one) the last
    epoch is kept. With `ckpt`, the TrainState is saved every ckpt.every epochs and the phase
    continues from the newest checkpoint (or returns at once if it had finished).
    The batch is split over `devices` devices (None: all). With a `feed` (`step.Feed`), x holds
    raw images that the step augments and shows to `teacher` (a frozen native teacher, for targets
    computed in the loop) and to the model; validation inputs are the model's own view.

    Raises: DistillError for non-finite data or a non-finite training loss; RunInterrupted
    after saving a checkpoint when a stop was requested (`checkpoint.request_stop`).
    """
    check_finite(desc, {"the inputs": x, **{f"the targets {k!r}": v for k, v in targets.items()}})
    n = x.shape[0]
    mesh = data_mesh(devices)
    n_dev = mesh.devices.size
    wanted = min(settings.batch_size, n)
    batch = wanted - wanted % n_dev
    if batch < 1:
        raise DistillError(f"{desc}: {n} training examples cannot fill one batch on {n_dev} devices; "
                           "use more data or fewer devices (runtime.devices)")
    if batch != wanted and progress and jax.process_index() == 0:
        print(f"distill: {desc}: batch size {wanted} → {batch}, a multiple of the {n_dev} "
              "devices it is split over", file=sys.stderr, flush=True)
    check_batch_size(batch, mesh, "the batch size")
    steps = n // batch
    tx, schedule = make_optimizer(settings, steps)
    has_val = val is not None and len(val.y) > 0
    hist = History(score_name=val.name if val is not None else "accuracy",
                   selection="best validation epoch" if has_val else "last epoch (no validation set)")

    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = replicate(TrainState.create(params, rest, tx, settings.seed, ema=settings.ema is not None), mesh)
    teacher_state = None
    if feed is not None and feed.teacher is not None:
        teacher.eval()
        teacher_state = replicate(nnx.state(teacher), mesh)
    def zeros():
        return replicate({k: jnp.zeros((), jnp.float32) for k in METRICS}, mesh)

    sums = zeros()
    start_epoch, start_batch = 0, 0
    if ckpt is not None:
        got = ckpt.latest({"train": state, "sums": sums})
        if got is not None:
            saved, loop = got
            state, sums = saved["train"], saved["sums"]
            hist = History.from_dict(loop["history"])
            if loop["done"]:
                return _finish(model, state, hist)
            start_epoch, start_batch = loop["epoch"], loop["batch"]

    bar = tqdm(total=settings.epochs * steps, initial=start_epoch * steps + start_batch, desc=desc, unit="step",
               disable=None if progress else True, dynamic_ncols=True, leave=False)  # None: off when stderr is no terminal
    try:
        for epoch in range(start_epoch, settings.epochs):
            t0 = time.perf_counter()
            order = np.random.default_rng([settings.seed, epoch]).permutation(n)[: steps * batch]
            order = order.reshape(steps, batch)
            first = start_batch if epoch == start_epoch else 0
            if first == 0:
                sums = zeros()
            for i in range(first, steps):
                idx = order[i]
                data = shard_batch({"x": x[idx], **{k: v[idx] for k, v in targets.items()}}, mesh)
                with jax.set_mesh(mesh):  # kernels that split the batch themselves see the mesh (mps_sweep)
                    state, metrics = train_step(state, data, teacher_state, graphdef=graphdef, loss=loss, tx=tx,
                                                schedule=schedule, feed=feed, ema=settings.ema)
                sums = {k: sums[k] + metrics[k] for k in METRICS}
                bar.update(1)
                reason = stop_requested()
                if reason is not None and ckpt is not None:
                    done_i = i + 1
                    ckpt.save(int(local(state.step)), {"train": state, "sums": sums},
                              {"epoch": epoch, "batch": done_i, "done": False, "history": hist.as_dict()})
                    raise RunInterrupted(reason)
            means = {k: float(local(v)) / steps for k, v in sums.items()}
            if not np.isfinite(means["loss"]):
                raise DistillError(f"{desc}: the training loss became {means['loss']} in epoch {epoch + 1} although "
                                   "the data are finite; lower the learning rate (e.g. halve it) or lower the "
                                   "gradient clipping norm")
            ratio = loss_spike(hist.train_loss, means["loss"])
            if ratio is not None and not hist.spikes and jax.process_index() == 0:  # said once per phase
                print(f"distill: {desc}: warning: the training loss jumped to {means['loss']:.4g} in epoch {epoch + 1}, "
                      f"{ratio:.1f}× its lowest so far; training is unstable (the best validation epoch is still "
                      "the one kept) — a lower learning rate or a warm-up (distill.warmup_epochs) usually "
                      "prevents this", file=sys.stderr, flush=True)
            if ratio is not None:
                hist.spikes.append(epoch + 1)
            score = None
            kept = state.params if state.ema is None else state.ema  # what is validated and kept
            if has_val:
                _load(model, kept, state.rest)
                model.eval()
                score = float(val.score(predict(model, val.x), val.y))
                model.train()
            state = state._replace(epoch=state.epoch + 1)
            if score is None or score > float(local(state.best_score)) or int(local(state.best_epoch)) == 0:
                state = state._replace(best_params=jax.tree.map(jnp.copy, kept),
                                       best_rest=jax.tree.map(jnp.copy, state.rest),
                                       best_score=replicate(jnp.asarray(score if score is not None else 0.0,
                                                                        jnp.float32), mesh),
                                       best_epoch=jnp.copy(state.epoch))
                hist.best_epoch, hist.best_val_accuracy = epoch + 1, score
            hist.train_loss.append(means["loss"])
            hist.grad_norm.append(means["grad_norm"])
            hist.param_norm.append(means["param_norm"])
            hist.update_norm.append(means["update_norm"])
            hist.lr.append(means["lr"])
            hist.val_accuracy.append(score)
            hist.epoch_s.append(time.perf_counter() - t0)
            bar.set_postfix({"epoch": epoch + 1, "loss": f"{means['loss']:.4f}",
                             **({val.name: f"{score:.4f}"} if score is not None else {})})
            last = epoch + 1 == settings.epochs
            if ckpt is not None and (last or (epoch + 1) % ckpt.every == 0):
                ckpt.save(int(local(state.step)), {"train": state, "sums": sums},
                          {"epoch": epoch + 1, "batch": 0, "done": last, "history": hist.as_dict()})
    finally:
        bar.close()
    return _finish(model, state, hist)


def _load(model: nnx.Module, params, rest) -> None:
    """Copy state arrays into the model (copies: the state's own buffers are donated next step;
    this process's own copies: the model is used on one process's devices afterwards)."""
    def copy(x):
        return jnp.copy(local(x))

    nnx.update(model, jax.tree.map(copy, params), jax.tree.map(copy, rest))


def _finish(model: nnx.Module, state: TrainState, hist: History) -> History:
    _load(model, state.best_params, state.best_rest)
    model.eval()
    return hist


def train_classifier(model: nnx.Module, x_train, y_train, val: Validation | None, settings: TrainSettings, *,
                     ckpt: Checkpointing | None = None, devices: int | None = None, desc: str = "teacher",
                     progress: bool = True, feed: Feed | None = None) -> History:
    """Plain supervised training on labels (cross-entropy): teachers and the labels-only control
    (with a feed: on augmented images, mixed labels for mixup / cutmix)."""
    return fit(model, losses.CrossEntropy(), x_train, {"y": y_train}, settings, val=val, ckpt=ckpt, devices=devices,
               desc=desc, progress=progress, feed=feed)


def end_to_end(student: nnx.Module, x_train, teacher_logits, y_train, val: Validation | None,
               settings: TrainSettings, *, temperature: float, alpha: float, ckpt: Checkpointing | None = None,
               devices: int | None = None, desc: str = "student", progress: bool = True, feed: Feed | None = None,
               teacher=None) -> History:
    """Distil with the KD loss on the frozen teacher's logits: precomputed ((N, classes); pass
    teacher_logits), or computed in the step on the augmented images (a feed with a teacher;
    teacher_logits None)."""
    targets = {"y": y_train} if teacher_logits is None else {"t": teacher_logits, "y": y_train}
    return fit(student, losses.KD(temperature, alpha), x_train, targets, settings, val=val, ckpt=ckpt,
               devices=devices, desc=desc, progress=progress, feed=feed, teacher=teacher)


def fit_layer(layer: nnx.Module, x_train, y_train, x_val, y_val, settings: TrainSettings, *,
              ckpt: Checkpointing | None = None, devices: int | None = None, desc: str = "layer",
              progress: bool = True, feed: Feed | None = None, teacher=None) -> History:
    """Layer-wise distillation of one layer: MSE between layer(x) and the teacher's activations.

    x (N, n_in) are the teacher's inputs to that layer, y (N, n_out) its outputs (with a feed: x
    holds the raw images and y is None — both come from the teacher on the augmented images in
    the step); the epoch with the best validation R² is kept.
    """
    targets = {} if y_train is None else {"t": y_train}
    return fit(layer, losses.MSE(), x_train, targets, settings, val=Validation(x_val, y_val, r2_score, "r2"),
               ckpt=ckpt, devices=devices, desc=desc, progress=progress, feed=feed, teacher=teacher)
