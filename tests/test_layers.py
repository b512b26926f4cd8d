"""distill.nn.MPS: value equals the pure contraction, honest parameter count, argument
validation, and training through nnx.Optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from distill.errors import DistillError
from distill.nn import MPS, SiteOrder, param_count
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
        (dict(feature_map="legendr"), "did you mean 'legendre'"),
        (dict(feature_map="trig", pairing="neighbour"), "only for pairwise"),
        (dict(feature_map="pair_product"), "needs pairing"),
        (dict(feature_map="poly", feature_params={"degree": 3}, feature_dim=3), "d = 4"),
        (dict(feature_map="learned", feature_params={"width": 3}), "hidden"),
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
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam raises a float to an int32 count
            optimizer.update(model, grads)
        return loss

    loss0 = float(loss_fn(model))
    for _ in range(15):
        step(model, optimizer)
    loss = float(loss_fn(model))
    assert loss < 0.8 * loss0, (loss0, loss)
    np.testing.assert_array_equal(np.asarray(model.mps.site_order[...]), order_before)
    assert int(optimizer.step[...]) == 15


# ---------------------------------------------------------------------------------------
# Feature maps from the registry, pairwise maps and their partners
# ---------------------------------------------------------------------------------------

import math  # noqa: E402

from distill.io import load_state, save_state  # noqa: E402
from distill.nn import Partners  # noqa: E402
from distill.tn.feature_maps import register_feature_map, unregister_feature_map  # noqa: E402


def _cores(layer):
    return mps_lib.MPSParams(*(np.asarray(getattr(layer, f)[...], np.float64)
                               for f in mps_lib.MPSParams._fields))


def _by_hand(layer, phi):
    """exp(log_scale) · contract(cores, φ) in float64, φ (B, n, d) computed by the test."""
    with jax.enable_x64(True):
        z, _ = mps_lib.contract(_cores(layer), jnp.asarray(phi, jnp.float64))
        return math.exp(float(layer.log_scale[...])) * np.asarray(z)


def _legendre2(x):
    t = 2 * x - 1
    return np.stack([np.ones_like(x), t, (3 * t**2 - 1) / 2], -1)


LOCAL_MAPS = [
    # (feature_map, feature_dim, feature_params, φ by hand from the formula)
    ("trig", 2, None, lambda x: np.stack([np.cos(np.pi * x / 2), np.sin(np.pi * x / 2)], -1)),
    ("trig", 3, {"d": 3, "scale": 1.0},
     lambda x: np.stack([np.cos(x) ** 2, math.sqrt(2) * np.cos(x) * np.sin(x), np.sin(x) ** 2], -1)),
    ("poly", 3, None, lambda x: np.stack([np.ones_like(x), x, x * x], -1)),
    ("poly", 2, {"degree": 3}, lambda x: np.stack([np.ones_like(x), x, x**2, x**3], -1)),
    ("fourier", 3, None,
     lambda x: np.stack([np.ones_like(x), np.cos(2 * np.pi * x), np.sin(2 * np.pi * x)], -1)),
    ("legendre", 3, None, _legendre2),
]


@pytest.mark.parametrize("feature_map, d, params, hand", LOCAL_MAPS)
def test_registry_maps_value_is_contraction_of_hand_features(feature_map, d, params, hand):
    n, m = 7, 3
    order = np.random.default_rng(4).permutation(n)
    layer = MPS(n, m, bond_dim=3, feature_map=feature_map, feature_dim=d, feature_params=params,
                site_order=order, init_std=0.3, rngs=nnx.Rngs(2))
    layer.log_scale[...] = jnp.asarray(-0.4, jnp.float32)
    x = np.random.default_rng(5).uniform(size=(5, n))
    phi = hand(x[:, order])
    assert layer.feature_dim == phi.shape[-1]
    assert layer.first.shape == (phi.shape[-1], 3)
    np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), _by_hand(layer, phi),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("feature_map", ["trig", "poly"])
def test_trig_and_poly_are_bit_identical_to_the_original_maps(feature_map):
    fmap = {"trig": trig, "poly": poly}[feature_map]
    order = np.random.default_rng(0).permutation(10)
    layer = MPS(10, 4, bond_dim=4, feature_map=feature_map, feature_dim=3, site_order=order,
                init_std=0.2, rngs=nnx.Rngs(1))
    x = uniform(2, (6, 10))
    np.testing.assert_array_equal(layer.features(x), fmap(x[:, order], 3))
    z, _ = mps_lib.contract(layer.params, fmap(x[:, order], 3))
    np.testing.assert_array_equal(layer(x), jnp.exp(layer.log_scale[...]) * z)


@pytest.mark.parametrize("per_site", [False, True])
def test_learned_map_parameters_are_module_params_and_value_is_by_hand(per_site):
    n, d, h = 6, 3, 4
    layer = MPS(n, 2, bond_dim=3, feature_map="learned", feature_dim=d,
                feature_params={"hidden": h, "per_site": per_site}, init_std=0.3, rngs=nnx.Rngs(3))
    w1, b1, w2, b2 = (np.asarray(getattr(layer.site_features, f"phi_{k}")[...], np.float64)
                      for k in ("w1", "b1", "w2", "b2"))
    lead = (n,) if per_site else ()
    assert w1.shape == lead + (h,) and w2.shape == lead + (h, d) and b2.shape == lead + (d,)
    x = np.random.default_rng(1).uniform(size=(4, n))
    if per_site:
        phi = np.einsum("bnh,nhp->bnp", np.tanh(x[..., None] * w1 + b1), w2) + b2
    else:
        phi = np.einsum("bnh,hp->bnp", np.tanh(x[..., None] * w1 + b1), w2) + b2
    np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), _by_hand(layer, phi),
                               rtol=1e-4, atol=1e-5)
    cores = 2 * d * 3 + (n - 2) * d * 9 + 3 * 2 * 3 + 1
    assert param_count(layer) == cores + w1.size + b1.size + w2.size + b2.size
    # the map's weights get gradients like the cores
    grads = nnx.grad(lambda mod: jnp.sum(mod(jnp.asarray(x, jnp.float32)) ** 2))(layer)
    assert float(jnp.max(jnp.abs(grads["site_features"]["phi_w2"][...]))) > 0


def test_pairwise_site_sees_its_input_and_its_partner():
    n = 5
    order = np.array([2, 0, 4, 1, 3])
    partners = np.array([3, 4, 0, 2, 1])
    layer = MPS(n, 2, bond_dim=3, feature_map="pair_product", pairing=partners, pair_shift=0.5,
                site_order=order, init_std=0.3, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(layer.partners[...]), partners)
    x = np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [0.0, 1.0, 0.0, 0.5, 0.25]])
    # site s reads input j = order[s]: φ = [0.5 + x_j, (0.5 + x_j)(0.5 + x_partner(j))]
    j = order
    a, b = 0.5 + x[:, j], 0.5 + x[:, partners[j]]
    phi = np.stack([a, a * b], -1)
    np.testing.assert_allclose(layer.features(jnp.asarray(x, jnp.float32)), phi, rtol=1e-6)
    assert float(layer.features(jnp.asarray(x, jnp.float32))[0, 0, 1]) == pytest.approx(0.8 * 0.6)  # x_2 = 0.3, x_0 = 0.1
    np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), _by_hand(layer, phi),
                               rtol=1e-4, atol=1e-5)


def test_neighbour_pairing_follows_the_chain_and_random_pairing_follows_the_seed():
    order = np.array([3, 1, 0, 2])
    nb = MPS(4, 2, bond_dim=2, feature_map="pair_product", pairing="neighbour", site_order=order,
             rngs=nnx.Rngs(0))
    # the site after the one reading input order[s] reads order[s + 1]
    np.testing.assert_array_equal(np.asarray(nb.partners[...])[order], np.roll(order, -1))

    def rand(seed):
        return np.asarray(MPS(50, 2, bond_dim=2, feature_map="pair_product", pairing="random",
                              pairing_seed=seed, rngs=nnx.Rngs(0)).partners[...])

    np.testing.assert_array_equal(rand(7), rand(7))
    assert not np.array_equal(rand(7), rand(8))
    assert np.all(rand(7) != np.arange(50)) and sorted(rand(7)) == list(range(50))


def test_pair_shift_fixes_vanishing_pair_product_and_is_a_local_map_of_the_partner():
    n = 8
    x = np.random.default_rng(0).uniform(size=(4, n))
    x[:, 3] = 0.0  # one black pixel in every sample
    xj = jnp.asarray(x, jnp.float32)
    literal = MPS(n, 3, bond_dim=3, feature_map="pair_product", pairing="random", pairing_seed=1,
                  pair_shift=0.0, init_std=0.3, rngs=nnx.Rngs(0))
    assert float(jnp.max(jnp.abs(literal(xj)))) == 0.0  # Φ(x) = 0: a constant student
    shifted = MPS(n, 3, bond_dim=3, feature_map="pair_product", pairing="random", pairing_seed=1,
                  init_std=0.3, rngs=nnx.Rngs(0))
    assert shifted.pair_shift == 1.0
    out = np.asarray(shifted(xj))
    assert np.all(np.isfinite(out)) and np.min(np.std(out, axis=0)) > 1e-3
    # (1 + x_a)·[1, 1 + x_b]: the scalar is normalised away, leaving [1, 1 + x_partner]
    p = np.asarray(shifted.partners[...])
    local = np.stack([np.ones_like(x), 1.0 + x[:, p]], -1)
    np.testing.assert_allclose(out, _by_hand(shifted, local), rtol=1e-4, atol=1e-5)


def test_partners_survive_save_state_and_load_state(tmp_path):
    def build(seed):
        return MPS(12, 3, bond_dim=3, feature_map="pair_product", pairing="random",
                   pairing_seed=seed, init_std=0.3, rngs=nnx.Rngs(seed))

    src = build(5)
    save_state(src, tmp_path / "student")
    dst = build(5)  # same architecture, different draw of nothing: partners come from the seed
    dst.log_scale[...] = jnp.asarray(3.0, jnp.float32)
    load_state(dst, tmp_path / "student")
    np.testing.assert_array_equal(np.asarray(dst.partners[...]), np.asarray(src.partners[...]))
    assert dst.partners[...].dtype == jnp.int32
    x = uniform(1, (4, 12))
    np.testing.assert_array_equal(dst(x), src(x))
    # partners are state, not parameters: never trained, not counted
    assert isinstance(src.partners, Partners) and not isinstance(src.partners, nnx.Param)
    assert len(jax.tree.leaves(nnx.state(src, Partners))) == 1
    assert param_count(src) == 2 * 2 * 3 + 10 * 2 * 9 + 3 * 3 * 3 + 1


def test_full_state_checkpoint_restores_partners_exactly(tmp_path):
    import orbax.checkpoint as ocp

    src = MPS(12, 3, bond_dim=3, feature_map="pair_product", pairing="random", pairing_seed=5,
              rngs=nnx.Rngs(0))
    dst = MPS(12, 3, bond_dim=3, feature_map="pair_product", pairing="random", pairing_seed=6,
              rngs=nnx.Rngs(1))
    assert not np.array_equal(np.asarray(dst.partners[...]), np.asarray(src.partners[...]))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp_path / "state", nnx.to_pure_dict(nnx.state(src)))
        ckptr.wait_until_finished()
        target = nnx.state(dst)
        restored = ckptr.restore(tmp_path / "state", nnx.to_pure_dict(target))
    nnx.replace_by_pure_dict(target, restored)
    nnx.update(dst, target)
    np.testing.assert_array_equal(np.asarray(dst.partners[...]), np.asarray(src.partners[...]))
    x = uniform(1, (4, 12))
    np.testing.assert_array_equal(dst(x), src(x))


def test_degenerate_user_map_is_refused_at_construction():
    register_feature_map("twice_x", lambda: lambda x: jnp.stack([x, 2 * x], -1))
    try:
        with pytest.raises(DistillError, match="'twice_x' is degenerate") as err:
            MPS(8, 3, bond_dim=2, feature_map="twice_x", rngs=nnx.Rngs(0))
        assert "\n" not in str(err.value)
    finally:
        unregister_feature_map("twice_x")


def test_unknown_feature_map_lists_names_and_suggests():
    with pytest.raises(DistillError) as err:
        MPS(8, 3, bond_dim=2, feature_map="pair_prodcut", rngs=nnx.Rngs(0))
    msg = str(err.value)
    assert "did you mean 'pair_product'?" in msg
    for name in ("trig", "poly", "fourier", "legendre", "learned", "pair_product"):
        assert name in msg


@pytest.mark.parametrize("layer_kind", ["MPS", "MPSHidden"])
@pytest.mark.parametrize("map_kwargs, local", [
    ({"feature_map": "trig"}, True),
    ({"feature_map": "legendre", "feature_dim": 3}, True),
    ({"feature_map": "pair_product", "pairing": "random"}, False),
    ({"feature_map": "learned"}, False),
])
def test_inference_copy_gives_the_layers_own_outputs(layer_kind, map_kwargs, local):
    """`nn.inference_copy` (the planned contraction; for local maps the features formed in the
    sweep's layout by `contract_planned_inputs`) changes nothing but the speed: same outputs as
    the layer itself, site order permuted, at batch 1 and 5."""
    from distill.nn import MPSHidden, inference_copy

    n = 11
    order = np.random.default_rng(2).permutation(n)
    if layer_kind == "MPS":
        layer = MPS(n, 3, bond_dim=3, init_std=0.3, site_order=order, rngs=nnx.Rngs(1), **map_kwargs)
    else:
        layer = MPSHidden(n, 4, bond_dim=3, site_order=order, activation="relu", rngs=nnx.Rngs(1), **map_kwargs)
    assert (layer.site_features.local_map() is not None) == local
    for batch in (1, 5):
        x = jnp.asarray(np.random.default_rng(batch).uniform(size=(batch, n)), jnp.float32)
        fast = inference_copy(layer, batch)
        assert fast.plan_static is not None
        np.testing.assert_allclose(fast(x), layer(x), rtol=2e-5, atol=2e-6)
