"""distill.nn.MPSHidden: values against a brute-force float64 tensor, input scaling,
honest parameter counts, fitting a teacher layer, long-chain stability, validation."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from distill.errors import DistillError
from distill.nn import InputScale, MPSHidden, param_count
from distill.tn import feature_maps


def _brute_force_reference(layer: MPSHidden, x: np.ndarray, phi_fn=None) -> np.ndarray:
    """y = act(exp(s)·(T·Φ(x̃)) / (‖L(x̃)‖·‖R(x̃)‖) + b) from the dense tensor T, in float64.

    T (d,)*n × n_out is formed entry by entry from the cores (every index combination, no
    library contraction); L, R are the unnormalised left/right environment vectors, whose
    norms the layer divides out (it keeps only the unit vectors and the learned scale).
    phi_fn(x̃) (B, n) in input order → (B, n, d) in input order; default: the layer's
    trig/poly map by name.
    """
    first = np.asarray(layer.first[...], np.float64)
    left = np.asarray(layer.left[...], np.float64)
    right = np.asarray(layer.right[...], np.float64)
    last = np.asarray(layer.last[...], np.float64)
    n, d, k = layer.n_in, layer.feature_dim, layer.output_site
    if layer.readout_rank is None:
        cores = [np.asarray(c[...], np.float64) for c in layer.out_cores]
        chi = cores[0].shape[0]
        # O[l, (o_1..o_K), r] entry by entry: product of the output MPO matrices
        out = np.zeros((chi, layer.n_out, chi))
        for o, idx in enumerate(itertools.product(*[range(c.shape[1]) for c in cores])):
            mat = np.eye(chi)
            for c, i in zip(cores, idx):
                mat = mat @ c[:, i, :]
            out[:, o, :] = mat
    else:
        out = np.asarray(layer.readout_core[...], np.float64)
    # left block TL[(p_0..p_{k-1}), l] and right block TR[r, (p_k..p_{n-1})]
    tl = np.zeros((d,) * k + (first.shape[1],))
    for ps in itertools.product(range(d), repeat=k):
        v = first[ps[0]]
        for s in range(1, k):
            v = v @ left[s - 1, ps[s]]
        tl[ps] = v
    tr = np.zeros((last.shape[1],) + (d,) * (n - k))
    for ps in itertools.product(range(d), repeat=n - k):
        v = last[ps[-1]]
        for s in reversed(range(n - k - 1)):
            v = right[s, ps[s]] @ v
        tr[(slice(None),) + ps] = v
    # full T (d^k · d^(n-k), m): T[a, c, o] = Σ TL[a, l] out[l, o, r] TR[r, c]
    T = np.einsum("al,lor,rc->aco", tl.reshape(-1, tl.shape[-1]), out, tr.reshape(tr.shape[0], -1))

    xs = (np.asarray(x, np.float64) - np.asarray(layer.input_offset[...], np.float64)) / np.asarray(
        layer.input_scale[...], np.float64
    )
    xs = np.clip(xs, 0.0, 1.0)
    if phi_fn is None:
        phi = np.asarray(feature_maps.get_feature_map(layer.feature_map, d)(jnp.asarray(xs)), np.float64)
    else:
        phi = np.asarray(phi_fn(xs), np.float64)
    phi = phi[:, np.asarray(layer.site_order[...])]
    ys = []
    for b in range(x.shape[0]):
        phi_l = phi[b, 0]
        for s in range(1, k):
            phi_l = np.kron(phi_l, phi[b, s])
        phi_r = phi[b, k]
        for s in range(k + 1, n):
            phi_r = np.kron(phi_r, phi[b, s])
        a = np.einsum("a,aco,c->o", phi_l, T, phi_r)
        norm_l = np.linalg.norm(phi_l @ tl.reshape(-1, tl.shape[-1]))
        norm_r = np.linalg.norm(tr.reshape(tr.shape[0], -1) @ phi_r)
        z = a / (norm_l * norm_r)
        if layer.readout_rank is not None:
            z = np.asarray(layer.readout[...], np.float64) @ z
        ys.append(math.exp(float(layer.log_scale[...])) * z + np.asarray(layer.bias[...], np.float64))
    y = np.stack(ys)
    if layer.activation == "tanh":
        y = np.tanh(y)
    elif layer.activation == "relu":
        y = np.maximum(y, 0.0)
    return y


CONFIGS = [
    dict(out_factors=(2, 3, 2), out_bond=4, feature_map="trig", feature_dim=2),
    dict(out_factors=(5,), feature_map="poly", feature_dim=3, activation="tanh"),
    dict(readout_rank=3, feature_map="trig", feature_dim=3, output_site=2),
    dict(out_factors=(3, 4), feature_map="trig", feature_dim=2, activation="relu"),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_output_equals_brute_force_dense_contraction(cfg):
    n_in = 5
    n_out = 7 if "readout_rank" in cfg else math.prod(cfg["out_factors"])
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        layer = MPSHidden(
            n_in, n_out, bond_dim=3, init_std=0.5, dtype=jnp.float64,
            site_order=rng.permutation(n_in), input_scale=rng.uniform(0.5, 2.0, n_in),
            input_offset=-0.25, rngs=nnx.Rngs(1), **cfg,
        )
        # non-trivial scale and bias, so that they are checked too
        layer.log_scale[...] = jnp.asarray(0.3, jnp.float64)
        layer.bias[...] = jnp.asarray(rng.normal(size=n_out))
        x = rng.uniform(-0.5, 2.5, (6, n_in))  # some entries clip at 0 and at 1
        got = np.asarray(layer(jnp.asarray(x)))
        want = _brute_force_reference(layer, x)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def _fourier1(xs):
    return np.stack([np.ones_like(xs), np.cos(2 * np.pi * xs), np.sin(2 * np.pi * xs)], axis=-1)


def _pair_affine_shifted(partners, shift):
    def phi(xs):
        a, b = xs + shift, xs[:, partners] + shift
        return np.stack([np.ones_like(a), a, a * b], axis=-1)

    return phi


@pytest.mark.parametrize("case", ["fourier", "pair_affine_random", "pair_product_neighbour"])
def test_registry_and_pairwise_maps_equal_brute_force(case):
    """MPSHidden takes every map MPS takes; φ here is written out by hand, not the library's."""
    n_in, n_out = 5, 6
    rng = np.random.default_rng(7)
    kwargs = {
        "fourier": dict(feature_map="fourier", feature_params={"order": 1}),
        "pair_affine_random": dict(feature_map="pair_affine", pairing="random", pairing_seed=3,
                                   pair_shift=0.5),
        "pair_product_neighbour": dict(feature_map="pair_product", pairing="neighbour"),
    }[case]
    with jax.enable_x64(True):
        layer = MPSHidden(
            n_in, n_out, bond_dim=3, init_std=0.5, out_factors=(2, 3), dtype=jnp.float64,
            site_order=rng.permutation(n_in), input_scale=rng.uniform(0.5, 2.0, n_in),
            activation="tanh", rngs=nnx.Rngs(2), **kwargs,
        )
        layer.bias[...] = jnp.asarray(rng.normal(size=n_out))
        x = rng.uniform(-0.5, 2.5, (5, n_in))
        if case == "fourier":
            phi_fn = _fourier1
        else:
            partners = np.asarray(layer.partners[...])
            assert sorted(partners) != list(partners) or case == "pair_product_neighbour"
            if case == "pair_product_neighbour":
                def phi_fn(xs):
                    a, b = xs + 1.0, xs[:, partners] + 1.0  # default shift 1
                    return np.stack([a, a * b], axis=-1)
            else:
                phi_fn = _pair_affine_shifted(partners, 0.5)
        got = np.asarray(layer(jnp.asarray(x)))
        want = _brute_force_reference(layer, x, phi_fn)
    assert layer.feature_dim == (2 if case == "pair_product_neighbour" else 3)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_pairing_is_seeded_saved_and_restored():
    a = MPSHidden(12, 4, bond_dim=2, feature_map="pair_affine", pairing="random", pairing_seed=5,
                  out_factors=(4,), rngs=nnx.Rngs(0))
    b = MPSHidden(12, 4, bond_dim=2, feature_map="pair_affine", pairing="random", pairing_seed=5,
                  out_factors=(4,), rngs=nnx.Rngs(1))
    c = MPSHidden(12, 4, bond_dim=2, feature_map="pair_affine", pairing="random", pairing_seed=6,
                  out_factors=(4,), rngs=nnx.Rngs(0))
    pa, pb, pc = (np.asarray(m.partners[...]) for m in (a, b, c))
    np.testing.assert_array_equal(pa, pb)
    assert not np.array_equal(pa, pc)
    assert np.all(pa != np.arange(12))  # nobody is its own partner
    nnx.update(c, nnx.state(a))  # a checkpoint carries the partners
    np.testing.assert_array_equal(np.asarray(c.partners[...]), pa)
    x = jax.random.uniform(jax.random.key(0), (3, 12))
    np.testing.assert_allclose(np.asarray(c(x)), np.asarray(a(x)), rtol=1e-6)


def test_learned_map_weights_are_trained_with_the_layer():
    layer = MPSHidden(6, 4, bond_dim=2, feature_map="learned", feature_dim=3,
                      feature_params={"hidden": 5, "per_site": True}, out_factors=(4,), rngs=nnx.Rngs(0))
    assert layer.site_features.phi_w1[...].shape[0] == 6  # one MLP per site
    x = jax.random.uniform(jax.random.key(1), (8, 6))
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
    for name in ("phi_w1", "phi_b1", "phi_w2", "phi_b2"):
        assert np.linalg.norm(np.asarray(grads["site_features"][name][...])) > 0, name


@pytest.mark.parametrize("method", ["scan", "tree", "chunked"])
def test_contraction_override_gives_the_same_values(method):
    auto = MPSHidden(9, 8, bond_dim=3, init_std=0.3, out_factors=(2, 4), rngs=nnx.Rngs(4))
    forced = MPSHidden(9, 8, bond_dim=3, init_std=0.3, out_factors=(2, 4), contraction=method,
                       rngs=nnx.Rngs(4))
    x = jax.random.uniform(jax.random.key(2), (5, 9))
    np.testing.assert_allclose(np.asarray(forced(x)), np.asarray(auto(x)), rtol=2e-5, atol=1e-6)


def test_input_scale_from_data_clips_and_is_saved_in_the_state():
    rng = np.random.default_rng(0)
    sample = np.maximum(rng.normal(size=(200, 6)), 0.0) * np.array([1, 2, 3, 4, 5, 0])  # last: dead
    layer = MPSHidden(6, 8, bond_dim=3, out_factors=(2, 4), rngs=nnx.Rngs(0))
    layer.set_input_scale(sample)
    np.testing.assert_allclose(np.asarray(layer.input_scale[...])[:5], sample.max(0)[:5], rtol=1e-6)
    assert float(layer.input_scale[...][5]) == 1.0  # a dead unit keeps scale 1
    np.testing.assert_array_equal(np.asarray(layer.input_offset[...]), np.zeros(6))

    # values at and above the scale both map to 1 (φ(1)); below 0 would map to 0
    top = np.asarray(layer.input_scale[...])[None, :]
    phi_top = np.asarray(layer.features(jnp.asarray(top, jnp.float32)))
    phi_far = np.asarray(layer.features(jnp.asarray(10.0 * top, jnp.float32)))
    phi_one = np.asarray(feature_maps.get_feature_map("trig", 2)(jnp.ones((1, 6))))
    np.testing.assert_allclose(phi_far, phi_one, atol=1e-6)
    np.testing.assert_allclose(phi_top, phi_one, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(layer(jnp.asarray(10.0 * top, jnp.float32))),
        np.asarray(layer(jnp.asarray(top, jnp.float32))), rtol=1e-6, atol=1e-6,
    )

    # global scale and quantile: one value for all features
    layer.set_input_scale(sample, per_feature=False, quantile=0.9)
    assert np.allclose(np.asarray(layer.input_scale[...]), np.quantile(sample, 0.9))

    # saved with the module state (a checkpoint), not trained (not an nnx.Param)
    state = nnx.state(layer, InputScale)
    assert {"input_scale", "input_offset"} <= set(state.keys())
    assert "input_scale" not in nnx.state(layer, nnx.Param).keys()
    fresh = MPSHidden(6, 8, bond_dim=3, out_factors=(2, 4), rngs=nnx.Rngs(0))
    nnx.update(fresh, nnx.state(layer))
    np.testing.assert_array_equal(np.asarray(fresh.input_scale[...]), np.asarray(layer.input_scale[...]))


def test_param_count_by_hand_and_compression_of_a_784_to_512_layer():
    n, d, chi, rho = 10, 3, 4, 6
    layer = MPSHidden(n, 60, bond_dim=chi, feature_dim=d, out_factors=(3, 4, 5), out_bond=rho,
                      rngs=nnx.Rngs(0))
    chain = 2 * d * chi + (n - 2) * d * chi * chi
    out = chi * 3 * rho + rho * 4 * rho + rho * 5 * chi
    assert param_count(layer) == chain + out + 1 + 60  # + log_scale + bias

    ro = MPSHidden(n, 60, bond_dim=chi, feature_dim=d, readout_rank=7, rngs=nnx.Rngs(0))
    assert param_count(ro) == chain + chi * 7 * chi + 60 * 7 + 1 + 60

    dense = 784 * 512 + 512
    # shapes only (nnx.eval_shape): param_count reads shapes, no arrays are drawn
    big = nnx.eval_shape(lambda: MPSHidden(784, 512, bond_dim=4, rngs=nnx.Rngs(0)))
    assert big.out_factors == (8, 8, 8)
    # chain + output MPO (4, 8, 8) (8, 8, 8) (8, 8, 4) (out_bond 2χ) + log_scale + bias
    assert param_count(big) == 2 * 2 * 4 + 782 * 2 * 16 + 2 * 4 * 8 * 8 + 8 * 8 * 8 + 1 + 512
    assert dense / param_count(big) >= 10
    # the factorised output side is ~8x smaller than a free (χ, 512, χ) output core at χ 16
    free = nnx.eval_shape(
        lambda: MPSHidden(784, 512, bond_dim=16, out_factors=(512,), rngs=nnx.Rngs(0))
    )
    mpo = nnx.eval_shape(lambda: MPSHidden(784, 512, bond_dim=16, rngs=nnx.Rngs(0)))
    assert param_count(free) - param_count(mpo) == 16 * 512 * 16 - (2 * 16 * 8 * 32 + 32 * 8 * 32)


def test_adam_fits_a_teacher_layer_on_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    x = (datasets.load_digits().data[:256] / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(64, 32)) * np.sqrt(2 / 64)).astype(np.float32)
    b = (0.1 * rng.normal(size=32)).astype(np.float32)
    target = jnp.asarray(np.maximum(x @ w + b, 0.0))  # teacher layer 64 -> 32, relu
    x = jnp.asarray(x)

    layer = MPSHidden(64, 32, bond_dim=6, activation="relu", rngs=nnx.Rngs(0))
    layer.set_input_scale(x)
    opt = nnx.Optimizer(layer, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(layer, opt):
        def loss(layer):
            return jnp.mean((layer(x) - target) ** 2)

        value, grads = nnx.value_and_grad(loss)(layer)
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam: a float raised to an int32 count
            opt.update(layer, grads)
        return value

    def rel_err():
        return float(jnp.linalg.norm(layer(x) - target) / jnp.linalg.norm(target))

    before = rel_err()
    for _ in range(300):
        step(layer, opt)
    after = rel_err()
    assert after < 0.5 and after < 0.3 * before, (before, after)


def test_long_chain_784_sites_chi_16_is_finite_with_live_gradients():
    layer = MPSHidden(784, 512, bond_dim=16, activation="relu", rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (4, 784), jnp.float32)
    target = jax.random.normal(jax.random.key(2), (4, 512), jnp.float32)
    y = layer(x)
    assert bool(jnp.all(jnp.isfinite(y)))
    assert 0.3 < float(jnp.std(y)) < 3.0  # O(1) activations at init, not 0 or exp(±n)

    def loss(layer):
        return jnp.mean((layer(x) - target) ** 2)

    grads = nnx.grad(loss)(layer)
    for name in ("first", "left", "right", "last", "log_scale", "bias"):
        g = np.asarray(grads[name][...])
        assert np.all(np.isfinite(g)), name
        assert np.linalg.norm(g) > 1e-6, name
    # the signal reaches the far ends of the chain, not only the sites next to the output
    assert np.linalg.norm(np.asarray(grads["left"][...])[0]) > 1e-7
    assert np.linalg.norm(np.asarray(grads["right"][...])[-1]) > 1e-7
    for g in jax.tree.leaves(grads["out_cores"]):
        assert np.all(np.isfinite(np.asarray(g))) and np.linalg.norm(np.asarray(g)) > 1e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(out_factors=(3, 3)), "product is n_out"),
        (dict(out_factors=(2, 6), readout_rank=4), "either readout_rank"),
        (dict(readout_rank=0), "readout_rank"),
        (dict(bond_dim=0), "bond_dim"),
        (dict(activation="softplus"), "unknown activation"),
        (dict(input_scale=np.ones(3)), "input_scale"),
        (dict(input_scale=-1.0), "input_scale must be > 0"),
        (dict(feature_map="nope"), "MPSHidden: unknown feature map"),
        (dict(feature_map="pair_product"), "needs pairing"),
        (dict(pairing="random"), "only for pairwise"),
        (dict(feature_map="fourier", feature_params={"order": 0}), "order"),
        (dict(contraction="fast"), "contraction must be one of"),
    ],
)
def test_bad_arguments_raise_one_line_errors(kwargs, match):
    args = dict(bond_dim=3, rngs=nnx.Rngs(0)) | kwargs
    with pytest.raises(DistillError, match=match) as err:
        MPSHidden(5, 12, **args)
    assert "\n" not in str(err.value)


def test_bad_input_shapes_raise():
    layer = MPSHidden(5, 12, bond_dim=3, rngs=nnx.Rngs(0))
    with pytest.raises(DistillError, match=r"shape \(batch, 5\)"):
        layer(jnp.ones((2, 4)))
    with pytest.raises(DistillError, match=r"\(N, 5\)"):
        layer.set_input_scale(np.ones((3, 4)))
