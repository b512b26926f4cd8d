"""KD loss and teacher-comparison metrics against hand computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill.train import losses


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_kd_loss_is_zero_when_logits_match_and_alpha_is_one():
    z = jnp.asarray(np.random.default_rng(0).normal(size=(5, 10)), jnp.float32)
    assert float(losses.kd_loss(z, z, jnp.zeros(5, jnp.int32), temperature=4.0, alpha=1.0)) == pytest.approx(0, abs=1e-6)
    assert float(losses.kl_per_sample(z, z).max()) == pytest.approx(0, abs=1e-6)


def test_kd_loss_matches_hand_formula():
    rng = np.random.default_rng(1)
    zs, zt = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)) * 3
    y = np.array([0, 2, 1, 1])
    tau, alpha = 2.5, 0.7
    p, q = _softmax(zt / tau), _softmax(zs / tau)
    kl = np.mean(np.sum(p * (np.log(p) - np.log(q)), -1))
    ce = np.mean(-np.log(_softmax(zs)[np.arange(4), y]))
    want = alpha * tau**2 * kl + (1 - alpha) * ce
    got = losses.kd_loss(jnp.asarray(zs, jnp.float32), jnp.asarray(zt, jnp.float32), jnp.asarray(y),
                         temperature=tau, alpha=alpha)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_kd_gradient_points_towards_the_teacher():
    rng = np.random.default_rng(2)
    zt = jnp.asarray(rng.normal(size=(8, 10)) * 2, jnp.float32)
    zs = jnp.asarray(rng.normal(size=(8, 10)), jnp.float32)
    y = jnp.zeros(8, jnp.int32)
    loss = lambda z: losses.kd_loss(z, zt, y, temperature=3.0, alpha=1.0)  # noqa: E731
    g = jax.grad(loss)(zs)
    # a small step against the gradient lowers the loss and moves the student's soft targets towards the teacher's
    stepped = zs - 0.1 * g
    assert float(loss(stepped)) < float(loss(zs))
    assert float(losses.kl_per_sample(zt, stepped, 3.0).mean()) < float(losses.kl_per_sample(zt, zs, 3.0).mean())
    # at the teacher the gradient vanishes
    assert float(jnp.abs(jax.grad(loss)(zt)).max()) < 1e-6


def test_metrics():
    zs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    zt = np.array([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
    y = np.array([0, 1, 1])
    assert losses.accuracy(zs, y) == pytest.approx(2 / 3)
    assert losses.agreement(zs, zt) == pytest.approx(2 / 3)
    assert float(losses.cross_entropy(jnp.asarray(zs), jnp.asarray(y))) == pytest.approx(
        np.mean(-np.log(_softmax(zs)[np.arange(3), y])), rel=1e-6)
