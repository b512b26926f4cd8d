"""tn.mps contraction strategies ("scan", "tree", "chunked", auto): equal to each other and to
the dense float64 reference, stable on long float32 chains, and compiled once per shape."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distill.errors import DistillError
from distill.tn import mps
from distill.tn.feature_maps import poly, trig

from test_mps import random_params, to_f64, uniform

trig = jax.jit(trig, static_argnums=1)
poly = jax.jit(poly, static_argnums=1)

METHODS = ["scan", "tree", "chunked"]


def value(params, phi, **kw):
    z, log_norm = mps.contract(params, phi, **kw)
    return z * jnp.exp(log_norm)[:, None]


# (n, d, chi, m, k): odd and even half-chains (tree pads with the identity), an empty half
# (k = n-1), a segment shorter than the chunk, and segments that leave a remainder chunk.
@pytest.mark.parametrize(
    "n, d, chi, m, k",
    [(2, 2, 3, 2, 1), (7, 3, 2, 4, 3), (9, 2, 3, 2, 8), (10, 2, 4, 3, 2)],
)
def test_all_methods_match_dense_float64(n, d, chi, m, k):
    with jax.enable_x64(True):
        params = random_params(n + 31 * chi, n, d, chi, m, k, dtype=jnp.float64)
        phi = trig(uniform(3, (4, n), jnp.float64), d)
        dense = np.asarray(mps.contract_dense(params, phi))
        for method in METHODS + [None]:
            got = value(params, phi, method=method)
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(got, dense, rtol=1e-10, atol=1e-12 * np.abs(dense).max())
        for chunk in (2, 3):  # chunk 3 on 1..7-site halves: remainders 0, 1, 2
            got = value(params, phi, method="chunked", chunk=chunk)
            np.testing.assert_allclose(got, dense, rtol=1e-10, atol=1e-12 * np.abs(dense).max())


def test_methods_agree_in_z_and_log_norm_and_gradients_float64():
    """Not only the product: the (z, log_norm) split and the gradients are the same."""
    n, d, chi, m = 12, 3, 4, 3
    with jax.enable_x64(True):
        params = random_params(5, n, d, chi, m, 5, dtype=jnp.float64)
        phi = poly(uniform(6, (3, n), jnp.float64), d)
        y = jnp.array([0, 2, 1])

        def loss(p, method):
            z, log_norm = mps.contract(p, phi, method=method)
            ce = optax.softmax_cross_entropy_with_integer_labels(z, y).mean()
            return ce + 0.01 * jnp.sum(log_norm)

        ref_z, ref_log = mps.contract(params, phi, method="scan")
        grad = jax.jit(jax.grad(loss), static_argnums=1)
        ref_g = grad(params, "scan")
        for method in ("tree", "chunked"):
            z, log_norm = mps.contract(params, phi, method=method)
            np.testing.assert_allclose(z, ref_z, rtol=1e-10, atol=1e-13)
            np.testing.assert_allclose(log_norm, ref_log, rtol=1e-10)
            g = grad(params, method)
            for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g)):
                np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(
    "method, make", [("tree", "random"), ("chunked", "identity")]
)
def test_long_chain_float32_matches_float64(method, make):
    n, d, chi = 4096, 2, 32
    if make == "identity":
        params = mps.init_mps(jax.random.key(11), n, d, chi, 10, init_std=0.01)
    else:
        params = random_params(0, n, d, chi, 10)
    x = uniform(12, (2, n))
    z32, log32 = mps.contract(params, trig(x, d), method=method)
    assert z32.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(z32))) and bool(jnp.all(jnp.isfinite(log32)))
    with jax.enable_x64(True):
        z64, log64 = mps.contract(to_f64(params), trig(to_f64(x), d), method="scan")
        z64, log64 = np.asarray(z64), np.asarray(log64)
    assert np.abs(log64).min() > 50  # the plain float64 value would over/underflow
    rel_z = np.linalg.norm(np.asarray(z32) - z64) / np.linalg.norm(z64)
    assert rel_z < 1e-4, rel_z
    np.testing.assert_allclose(np.asarray(log32), log64, rtol=1e-4)
    assert np.linalg.norm(z64) > 1e-2


def test_auto_rule_and_bad_method():
    assert mps.choose_method(784, 3, 10, 500, backend="cpu") == "scan"
    # accelerators: the tree up to batch·χ = 15,000 if its site matrices fit in a quarter of the
    # device, else the scan (H200 measurements in choose_method's docstring)
    big = 141 << 30
    assert mps.choose_method(784, 3, 10, 500, backend="gpu", device_bytes=big) == "tree"
    assert mps.choose_method(784, 3, 10, 1500, backend="gpu", device_bytes=big) == "tree"
    assert mps.choose_method(784, 3, 10, 1501, backend="gpu", device_bytes=big) == "scan"
    assert mps.choose_method(196, 2, 20, 128, backend="gpu", device_bytes=big) == "tree"
    assert mps.choose_method(196, 2, 20, 4096, backend="gpu", device_bytes=big) == "scan"
    assert mps.choose_method(784, 2, 64, 128, backend="gpu", device_bytes=big) == "tree"
    assert mps.choose_method(784, 2, 64, 512, backend="gpu", device_bytes=big) == "scan"
    # 4·128·784·64²·3 bytes = 4.9 GB of tree: more than a quarter of 16 GiB
    assert mps.choose_method(784, 2, 64, 128, backend="gpu", device_bytes=16 << 30) == "scan"
    assert mps.choose_method(784, 2, 64, 128, backend="gpu", device_bytes=20 << 30) == "tree"
    assert all(mps.choose_method(n, 2, chi, b, backend="gpu") != "chunked"
               for n in (16, 4096) for chi in (4, 128) for b in (1, 4096))
    p = mps.init_mps(jax.random.key(0), 5, 2, 3, 2)
    with pytest.raises(DistillError, match="method must be one of"):
        mps.contract(p, jnp.zeros((4, 5, 2)), method="zigzag")


@pytest.mark.parametrize("method", [None, "chunked"])  # chunked runs tree inside its scan
def test_training_step_compiles_once_per_shape(method):
    n, d, chi, m, B = 40, 3, 4, 5, 8
    params = mps.init_mps(jax.random.key(0), n, d, chi, m)
    opt = optax.adam(1e-3)
    traces = []

    def step(p, s, x, y):
        traces.append(None)  # Python side effect: runs once per trace

        def loss(p):
            z, _ = mps.contract(p, poly(x, d), method=method)
            return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

        l, g = jax.value_and_grad(loss)(p)
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam: a float raised to an int32 count
            upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, l

    step = jax.jit(step)
    state = opt.init(params)
    rng = np.random.default_rng(0)
    losses = []
    for i in range(3):  # new data each step, same shapes
        x = jnp.asarray(rng.uniform(size=(B, n)), jnp.float32)
        y = jnp.asarray(rng.integers(0, m, B))
        params, state, l = step(params, state, x, y)
        losses.append(float(l))
    assert len(traces) == 1
    assert step._cache_size() == 1
    assert all(np.isfinite(losses))


@pytest.mark.parametrize("method", METHODS)
def test_config_contraction_reaches_the_student_and_keeps_its_values(method):
    """student.contraction overrides the automatic choice; the logits do not change."""
    from distill.config import from_dict
    from distill.experiments.common import StudentInputs, build_student

    xs = StudentInputs({}, (4, 4))
    auto = build_student(from_dict({}), xs, 10)
    forced = build_student(from_dict({"student": {"contraction": method}}), xs, 10)
    assert auto.contraction is None and forced.contraction == method
    x = jax.random.uniform(jax.random.key(3), (6, 16))
    np.testing.assert_allclose(np.asarray(forced(x)), np.asarray(auto(x)), rtol=2e-5, atol=1e-6)
