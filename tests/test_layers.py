"""distill.layers.MPS: value equals the pure contraction, honest parameter count, argument
validation, and training through nnx.Optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from distill.errors import DistillError
from distill.layers import MPS, SiteOrder, param_count
from distill.tn import mps as mps_lib
from distill.tn.feature_maps import poly, trig


def uniform(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


@pytest.mark.parametrize("feature_map, fmap", [("trig", trig), ("poly", poly)])
def test_output_equals_scaled_contraction_after_permutation(feature_map, fmap):
    n, m, chi, d = 12, 4, 5, 3
    order = np.random.default_rng(0).permutation(n)
    layer = MPS(n, m, bond_dim=chi, feature_map=feature_map, feature_dim=d,
                site_order=order, init_std=0.2, rngs=nnx.Rngs(1))
    layer.log_scale[...] = jnp.asarray(0.7, jnp.float32)
    x = uniform(2, (6, n))
    got = layer(x)

    params = mps_lib.MPSParams(*(np.asarray(getattr(layer, f)[...]) for f in mps_lib.MPSParams._fields))
    z, _ = mps_lib.contract(params, fmap(np.asarray(x)[:, order], d))
    np.testing.assert_allclose(got, np.exp(0.7) * np.asarray(z), rtol=2e-5, atol=1e-6)

    # the order matters: identity order on pre-permuted input gives the same result
    plain = MPS(n, m, bond_dim=chi, feature_map=feature_map, feature_dim=d, init_std=0.2,
                rngs=nnx.Rngs(1))
    plain.log_scale[...] = jnp.asarray(0.7, jnp.float32)
    np.testing.assert_array_equal(np.asarray(plain.site_order[...]), np.arange(n))
    np.testing.assert_allclose(plain(x[:, order]), got, rtol=2e-5, atol=1e-6)
    assert not np.allclose(plain(x), got, atol=1e-3)


def test_float64_layer_matches_dense_reference():
    with jax.enable_x64(True):
        layer = MPS(6, 3, bond_dim=3, output_site=1, init_std=0.3, dtype=jnp.float64,
                    rngs=nnx.Rngs(0))
        x = jnp.asarray(np.random.default_rng(3).uniform(size=(4, 6)))
        got = layer(x)
        assert got.dtype == jnp.float64
        dense = mps_lib.contract_dense(layer.params, trig(x, 2))
        _, log_norm = mps_lib.contract(layer.params, trig(x, 2))
        np.testing.assert_allclose(got * jnp.exp(log_norm)[:, None], dense, rtol=1e-10)


@pytest.mark.parametrize(
    "n, m, chi, d, k",
    [(784, 10, 10, 2, None), (196, 10, 32, 3, None), (5, 2, 3, 2, 1), (5, 2, 3, 4, 4), (2, 7, 1, 2, None)],
)
def test_param_count_is_the_hand_count(n, m, chi, d, k):
    layer = MPS(n, m, bond_dim=chi, feature_dim=d, output_site=k, rngs=nnx.Rngs(0))
    k = n // 2 if k is None else k
    hand = d * chi + (k - 1) * d * chi**2 + chi * m * chi + (n - k - 1) * d * chi**2 + d * chi + 1
    assert param_count(layer) == hand
    assert param_count(layer) == mps_lib.num_params(layer.params) + 1  # + log_scale


def test_param_count_counts_nested_modules_and_skips_site_order():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = MPS(8, 3, bond_dim=2, rngs=rngs)
            self.b = nnx.Linear(3, 2, rngs=rngs)

    net = Net(nnx.Rngs(0))
    assert param_count(net) == param_count(net.a) + 3 * 2 + 2
    assert isinstance(net.a.site_order, SiteOrder)
    assert not isinstance(net.a.site_order, nnx.Param)
    # saved with the state, not with the parameters
    assert len(jax.tree.leaves(nnx.state(net, SiteOrder))) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_sites=1), "n_sites"),
        (dict(bond_dim=0), "bond_dim"),
        (dict(n_out=0), "n_out"),
        (dict(output_site=0), "output_site"),
        (dict(output_site=8), "output_site"),
        (dict(output_site=2.5), "output_site"),
        (dict(feature_dim=1), "feature_dim"),
        (dict(feature_map="legendre"), "feature map"),
        (dict(site_order=[0, 1, 2]), "site_order"),
        (dict(site_order=[0, 0, 1, 2, 3, 4, 5, 6]), "site_order"),
        (dict(site_order=np.arange(8) + 0.0), "site_order"),
        (dict(site_order=np.arange(1, 9)), "site_order"),
    ],
)
def test_bad_constructor_arguments_raise(kwargs, match):
    args = dict(n_sites=8, n_out=3, bond_dim=2)
    args.update(kwargs)
    with pytest.raises(DistillError, match=match):
        MPS(args.pop("n_sites"), args.pop("n_out"), rngs=nnx.Rngs(0), **args)


def test_wrong_input_shape_raises():
    layer = MPS(8, 3, bond_dim=2, rngs=nnx.Rngs(0))
    with pytest.raises(DistillError, match=r"\(batch, 8\)"):
        layer(jnp.zeros((4, 9)))


def test_logits_start_order_one():
    layer = MPS(196, 10, bond_dim=10, rngs=nnx.Rngs(0))
    out = layer(uniform(0, (64, 196)))
    assert 0.2 < float(jnp.std(out)) < 5.0
    assert float(layer.log_scale[...]) == 0.0


def test_training_with_nnx_optimizer_reduces_loss():
    class Net(nnx.Module):
        def __init__(self, rngs):
            order = np.random.default_rng(1).permutation(64)
            self.mps = MPS(64, 5, bond_dim=6, site_order=order, rngs=rngs)

        def __call__(self, x):
            return self.mps(x)

    model = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    x = uniform(5, (32, 64))
    y = jnp.asarray(np.random.default_rng(6).integers(0, 5, 32))
    order_before = np.asarray(model.mps.site_order[...])

    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    loss0 = float(loss_fn(model))
    for _ in range(15):
        step(model, optimizer)
    loss = float(loss_fn(model))
    assert loss < 0.8 * loss0, (loss0, loss)
    np.testing.assert_array_equal(np.asarray(model.mps.site_order[...]), order_before)
    assert int(optimizer.step[...]) == 15
