"""tn.mps: the stable scan contraction against dense / ncon references, gradients against
finite differences (float64), float32 stability on long chains, and trainability at init."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensornetwork

from distill.errors import DistillError
from distill.tn import mps
from distill.tn.feature_maps import poly, trig

# (n, d, chi, m, k): includes n = 2, χ = 1, and both edge placements k = 1 and k = n-1.
CONFIGS = [
    (2, 2, 3, 2, 1),
    (3, 2, 1, 4, 1),
    (5, 3, 4, 3, None),
    (6, 2, 3, 2, 1),
    (6, 2, 3, 2, 5),
    (7, 3, 2, 4, 3),
    (8, 2, 4, 3, None),
    (8, 2, 16, 2, 7),
]


def random_params(seed, n, d, chi, m, k=None, dtype=jnp.float32):
    """A generic (non-identity) MPS: every entry Gaussian, bulk cores scaled by 1/sqrt(dχ).

    Drawn with numpy (eager jax.random costs a compile per shape, which dominates test time).
    """
    k = n // 2 if k is None else k
    rng = np.random.default_rng(seed)
    bulk = 1.0 / np.sqrt(d * chi)
    shapes = [(d, chi), (k - 1, d, chi, chi), (chi, m, chi), (n - k - 1, d, chi, chi), (d, chi)]
    scales = [1.0, bulk, 1.0, bulk, 1.0]
    return mps.MPSParams(
        *(jnp.asarray(s * rng.standard_normal(shape), dtype) for s, shape in zip(scales, shapes))
    )


def uniform(seed, shape, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), dtype)


trig = jax.jit(trig, static_argnums=1)
poly = jax.jit(poly, static_argnums=1)


def to_f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), tree)


def full_value(params, phi):
    z, log_norm = mps.contract(params, phi)
    return z * jnp.exp(log_norm)[:, None]


def ncon_value(params, phi):
    """Independent reference: tensornetwork.ncon (numpy backend) of cores and φ vectors."""
    n, d, chi, m, k = mps.mps_dims(params)
    P = {name: np.asarray(a) for name, a in params._asdict().items()}
    phys = lambda s: n + 1 + s  # label of site s's physical leg; bond labels are 1..n
    tensors, labels = [P["first"]], [[phys(0), 1]]
    for s in range(1, k):
        tensors.append(P["left"][s - 1])
        labels.append([phys(s), s, s + 1])
    tensors.append(P["out"])
    labels.append([k, -1, k + 1])
    for s in range(k, n - 1):
        tensors.append(P["right"][s - k])
        labels.append([phys(s), s + 1, s + 2])
    tensors.append(P["last"])
    labels.append([phys(n - 1), n])
    rows = []
    for b in range(phi.shape[0]):
        vecs = [np.asarray(phi[b, s]) for s in range(n)]
        rows.append(
            tensornetwork.ncon(
                tensors + vecs, labels + [[phys(s)] for s in range(n)], backend="numpy"
            )
        )
    return np.stack(rows)


@pytest.mark.parametrize("n, d, chi, m, k", CONFIGS)
def test_contract_matches_dense_and_ncon_float64(n, d, chi, m, k):
    with jax.enable_x64(True):
        params = random_params(n * 100 + chi, n, d, chi, m, k, dtype=jnp.float64)
        x = uniform(1, (5, n), jnp.float64)
        phi = trig(x, d)
        got = full_value(params, phi)
        assert got.dtype == jnp.float64
        dense = mps.contract_dense(params, phi)
        np.testing.assert_allclose(got, dense, rtol=1e-10, atol=1e-12 * np.abs(dense).max())
        ref = ncon_value(params, phi)
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("arrangement", ["vec_core", "outer_core"])
def test_both_gemm_arrangements_are_exact(arrangement):
    with jax.enable_x64(True):
        params = random_params(3, 7, 3, 5, 2, 2, dtype=jnp.float64)
        phi = poly(uniform(4, (4, 7), jnp.float64), 3)
        z, log_norm = mps._contract_impl(params, phi, arrangement)
        np.testing.assert_allclose(
            z * jnp.exp(log_norm)[:, None], mps.contract_dense(params, phi), rtol=1e-10
        )
        # z is built from unit vectors: |z| ≤ ‖out‖ (spectral-ish bound, Frobenius is looser)
        assert float(jnp.abs(z).max()) <= float(jnp.linalg.norm(params.out))


def test_to_dense_entry_by_entry():
    """One entry of to_dense written out as the chain of matrices it must be."""
    with jax.enable_x64(True):
        n, d, chi, m, k = 5, 3, 2, 2, 2
        params = random_params(5, n, d, chi, m, k, dtype=jnp.float64)
        T = np.asarray(mps.to_dense(params))
        assert T.shape == (d,) * n + (m,)
        P = {f: np.asarray(v) for f, v in params._asdict().items()}
        for idx in [(0, 1, 2, 0, 1), (2, 2, 2, 2, 2), (1, 0, 0, 1, 0)]:
            v = P["first"][idx[0]] @ P["left"][0][idx[1]]  # sites 0, 1
            w = P["right"][0][idx[2]] @ P["right"][1][idx[3]] @ P["last"][idx[4]]  # 2..4
            expected = np.einsum("l,lor,r->o", v, P["out"], w)
            np.testing.assert_allclose(T[idx], expected, rtol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_gradients_match_central_differences_float64(k):
    n, d, chi, m = 6, 2, 3, 3
    with jax.enable_x64(True):
        params = random_params(7 + k, n, d, chi, m, k, dtype=jnp.float64)
        phi = trig(uniform(8, (4, n), jnp.float64), d)
        w = jnp.asarray(np.random.default_rng(9).standard_normal((4, m)))
        y = jnp.array([0, 2, 1, 2])

        def loss(p):
            z, log_norm = mps.contract(p, phi)
            ce = optax.softmax_cross_entropy_with_integer_labels(z, y).mean()
            return ce + jnp.sum(w * z) + 0.1 * jnp.sum(log_norm)

        loss_j = jax.jit(loss)
        grads = jax.grad(loss)(params)
        eps = 1e-6
        rng = np.random.default_rng(k)
        for field in mps.MPSParams._fields:
            leaf = getattr(params, field)
            if leaf.size == 0:
                continue
            for _ in range(2):  # random directions per leaf
                v = jnp.asarray(rng.standard_normal(leaf.shape))
                plus = params._replace(**{field: leaf + eps * v})
                minus = params._replace(**{field: leaf - eps * v})
                fd = (loss_j(plus) - loss_j(minus)) / (2 * eps)
                an = jnp.sum(getattr(grads, field) * v)
                np.testing.assert_allclose(an, fd, rtol=1e-6, atol=1e-8, err_msg=field)


def near_identity_params(key, n, d, chi, m):
    return mps.init_mps(key, n, d, chi, m, init_std=0.01)


def generic_params(key, n, d, chi, m):
    return random_params(0, n, d, chi, m)


@pytest.mark.parametrize(
    "n, d, chi, make",
    [
        (784, 2, 32, near_identity_params),
        (784, 3, 10, generic_params),
        (4096, 2, 32, near_identity_params),
        (4096, 2, 32, generic_params),
    ],
    ids=["784-identity", "784-random", "4096-identity", "4096-random"],
)
def test_long_chain_float32_matches_float64(n, d, chi, make):
    params = make(jax.random.key(11), n, d, chi, 10)
    x = uniform(12, (3, n))
    z32, log32 = mps.contract(params, trig(x, d))
    assert z32.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(z32))) and bool(jnp.all(jnp.isfinite(log32)))
    with jax.enable_x64(True):
        z64, log64 = mps.contract(to_f64(params), trig(to_f64(x), d))
        z64, log64 = np.asarray(z64), np.asarray(log64)
    assert z64.dtype == np.float64
    # the float64 value itself overflows / underflows: exp(log_norm) is astronomically far
    # from 1, which is the point of carrying the log-norm.
    assert np.abs(log64).min() > 50
    rel_z = np.linalg.norm(np.asarray(z32) - z64) / np.linalg.norm(z64)
    assert rel_z < 1e-4, rel_z
    np.testing.assert_allclose(np.asarray(log32), log64, rtol=1e-4)
    assert np.linalg.norm(z64) > 1e-2  # not a trivially tiny z


def ce_loss(params, x, y, d):
    z, _ = mps.contract(params, trig(x, d))
    return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()


def test_gradient_not_vanishing_at_init_and_adam_learns():
    n, d, chi, m, B = 784, 2, 10, 10, 16
    params = mps.init_mps(jax.random.key(0), n, d, chi, m)
    x = uniform(1, (B, n))
    y = jnp.asarray(np.random.default_rng(2).integers(0, m, B))
    vg = jax.jit(jax.value_and_grad(ce_loss), static_argnums=3)
    loss0, grads = vg(params, x, y, d)
    assert np.isfinite(float(loss0))
    gnorm = float(optax.tree.norm(grads))
    core_norm = float(optax.tree.norm((grads.left, grads.right, grads.first, grads.last)))
    assert gnorm > 1e-3, gnorm
    assert core_norm > 1e-3, core_norm  # the chain itself gets signal, not only `out`

    opt = optax.adam(1e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(ce_loss)(p, x, y, d)
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam: a float raised to an int32 count
            upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss

    for _ in range(20):
        params, state, _ = step(params, state)
    loss20 = float(ce_loss(params, x, y, d))
    # measured: 2.39 -> 0.35 (16 samples, random labels: memorisation is the signal)
    assert loss20 < 0.5 * float(loss0), (float(loss0), loss20)


def test_init_shapes_values_and_param_count():
    n, d, chi, m = 9, 3, 4, 5
    p = mps.init_mps(jax.random.key(0), n, d, chi, m, init_std=0.01)
    k = n // 2
    assert mps.mps_dims(p) == (n, d, chi, m, k)
    assert p.left.shape == (k - 1, d, chi, chi) and p.right.shape == (n - k - 1, d, chi, chi)
    eye = np.eye(chi)
    assert np.abs(np.asarray(p.left) - eye).max() < 0.1
    assert np.abs(np.asarray(p.first) - eye[0]).max() < 0.1
    assert np.asarray(p.left).std() > 0  # noise is there
    assert mps.num_params(p) == d * chi + (k - 1) * d * chi**2 + chi * m * chi + (
        n - k - 1
    ) * d * chi**2 + d * chi
    p64 = mps.init_mps(jax.random.key(0), 4, 2, 2, 2, output_site=3, dtype=jnp.bfloat16)
    assert all(a.dtype == jnp.bfloat16 for a in p64)
    assert mps.mps_dims(p64).output_site == 3 and p64.right.shape[0] == 0


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((1, 2, 2, 2), {}),
        ((4, 1, 2, 2), {}),
        ((4, 2, 0, 2), {}),
        ((4, 2, 2, 0), {}),
        ((4, 2, 2, 2), {"output_site": 0}),
        ((4, 2, 2, 2), {"output_site": 4}),
    ],
)
def test_init_rejects_bad_arguments(args, kwargs):
    with pytest.raises(DistillError):
        mps.init_mps(jax.random.key(0), *args, **kwargs)


def test_contract_rejects_wrong_phi_shape():
    p = mps.init_mps(jax.random.key(0), 5, 2, 3, 2)
    with pytest.raises(DistillError, match=r"\(batch, 5, 2\)"):
        mps.contract(p, jnp.zeros((4, 5, 3)))


def test_a_zero_feature_vector_gives_zero_output_and_finite_gradients():
    # The seed's pairwise map [x_a, x_a·x_b] is exactly 0 at x_a = 0: that sample's output must
    # be 0 and every gradient finite (a floored norm would scale it by ~1e19 and overflow).
    rng = np.random.default_rng(0)
    p = mps.init_mps(jax.random.key(0), 10, 2, 4, 3)
    phi = jnp.asarray(rng.uniform(size=(5, 10, 2)).astype(np.float32)).at[0, 3].set(0.0)

    def loss(params):
        z, log_norm = mps.contract(params, phi)
        return jnp.sum(z**2) + jnp.sum(log_norm)

    grads = jax.grad(loss)(p)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    z, _ = mps.contract(p, phi)
    np.testing.assert_array_equal(np.asarray(z[0]), 0.0)
    assert float(jnp.abs(z[1:]).min()) > 0


@pytest.mark.parametrize("phi_fn, want", [
    (lambda x: np.stack([np.cos(np.pi * x / 2), np.sin(np.pi * x / 2)], 1), [1.0, 1.0]),
    (lambda x: np.stack([np.ones_like(x), x], 1), [1.0, 0.0]),
    (lambda x: np.stack([np.ones_like(x), np.cos(2 * np.pi * x), np.sin(2 * np.pi * x)], 1), [1.0, 0.0, 0.0]),
])
def test_identity_weights_fit_the_constant(phi_fn, want):
    x = np.linspace(0, 1, 33)
    np.testing.assert_allclose(mps.identity_weights_for(phi_fn(x)), want, atol=1e-6)
