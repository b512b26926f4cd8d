"""Distillation losses and the metrics that compare a student with its teacher.

All functions take logits (B, o) and integer labels (B,) and return batch means unless the
name says per-sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean CE(y, softmax(z)); logits (B, o), labels (B,) int."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def kl_per_sample(teacher_logits: jax.Array, student_logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """KL(softmax(z_t/τ) ‖ softmax(z_s/τ)) per sample, (B,); 0 exactly when the softmaxes agree."""
    log_p = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    log_q = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, *,
            temperature: float, alpha: float) -> jax.Array:
    """Hinton et al. (2015): α·τ²·KL(p_t^τ ‖ p_s^τ) + (1−α)·CE(y, z_s).

    The τ² keeps the soft-target gradient on the same scale as the hard-label one as τ grows.
    """
    soft = kl_per_sample(teacher_logits, student_logits, temperature).mean() * temperature**2
    if alpha == 1.0:  # skip the label term (and its cost) when it has no weight
        return soft
    return alpha * soft + (1.0 - alpha) * cross_entropy(student_logits, labels)


def accuracy(logits, labels) -> float:
    """Fraction of argmax(logits) == labels."""
    return float(jnp.mean(jnp.argmax(logits, axis=-1) == labels))


def agreement(student_logits, teacher_logits) -> float:
    """Fraction of samples where student and teacher predict the same class."""
    return float(jnp.mean(jnp.argmax(student_logits, axis=-1) == jnp.argmax(teacher_logits, axis=-1)))


# Loss records for the jitted step: hashable (static arguments of `train_step`) and called as
# loss(outputs, batch) with the batch's named arrays.


def mixed_cross_entropy(z: jax.Array, batch: dict) -> jax.Array:
    """Mean CE against batch["y"], or with mixup / cutmix the mixed targets
    lam·CE(y) + (1 − lam)·CE(y2) per sample (batch["lam"] (B,), batch["y2"] the partners' labels)."""
    if "lam" not in batch:
        return cross_entropy(z, batch["y"])
    ce = optax.softmax_cross_entropy_with_integer_labels
    lam = batch["lam"]
    return jnp.mean(lam * ce(z, batch["y"]) + (1.0 - lam) * ce(z, batch["y2"]))


@dataclass(frozen=True)
class CrossEntropy:
    """CE(y, softmax(z)) on batch["y"] (B,) int labels (mixed labels with mixup / cutmix)."""

    def __call__(self, z: jax.Array, batch: dict) -> jax.Array:
        return mixed_cross_entropy(z, batch)


@dataclass(frozen=True)
class KD:
    """The KD loss (Hinton et al. 2015) on batch["t"] (B, o) teacher logits and batch["y"] labels."""

    temperature: float
    alpha: float

    def __call__(self, z: jax.Array, batch: dict) -> jax.Array:
        soft = kl_per_sample(batch["t"], z, self.temperature).mean() * self.temperature**2
        if self.alpha == 1.0:
            return soft
        return self.alpha * soft + (1.0 - self.alpha) * mixed_cross_entropy(z, batch)


@dataclass(frozen=True)
class MSE:
    """Mean squared error against batch["t"] (B, ...): layer-wise fits to teacher activations."""

    def __call__(self, out: jax.Array, batch: dict) -> jax.Array:
        return jnp.mean((out - batch["t"]) ** 2)
