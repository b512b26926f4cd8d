"""How a student compares with its teacher and targets: R², relative error, accuracy, agreement, KL."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from distill.train import losses


def r2_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Coefficient of determination over all units: 1 − Σ(ŷ−y)² / Σ(y−ȳ)², ȳ per unit (column)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    ss_res = np.sum((pred - target) ** 2)
    ss_tot = np.sum((target - target.mean(axis=0)) ** 2)
    return float(1.0 - ss_res / max(ss_tot, np.finfo(np.float64).tiny))


def relative_error(pred: np.ndarray, target: np.ndarray) -> float:
    """‖ŷ − y‖_F / ‖y‖_F."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    return float(np.linalg.norm(pred - target) / max(np.linalg.norm(target), np.finfo(np.float64).tiny))


@dataclass(frozen=True)
class Evaluation:
    """Test-split comparison of a student with its teacher."""

    accuracy: float
    agreement: float  # argmax match with the teacher
    kl: float  # mean KL(teacher ‖ student) at τ = 1


def evaluate(student_logits: np.ndarray, teacher_logits: np.ndarray, labels: np.ndarray) -> Evaluation:
    return Evaluation(
        accuracy=losses.accuracy(student_logits, labels),
        agreement=losses.agreement(student_logits, teacher_logits),
        kl=float(jnp.mean(losses.kl_per_sample(jnp.asarray(teacher_logits), jnp.asarray(student_logits)))),
    )


