"""distill.nn CPLinear/CPConv, Tucker2Linear/Tucker2Conv, TRLinear/TRConv: each layer equals its
dense reconstruction (float64), warm starts are the decompositions they come from and reproduce
exactly representable nnx.Linear / nnx.Conv teachers, gradients match finite differences, the
init has a dense init's norm, parameter counts by hand, argument errors, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from distill.errors import DistillError
from distill.nn.common import ACTIVATIONS, param_count
from distill.nn.cp import CPConv, CPLinear
from distill.nn.tr import TRConv, TRLinear
from distill.nn.tucker import Tucker2Conv, Tucker2Linear
from distill.tn import cp, tr, tucker

F64 = jnp.float64


def normal(seed, shape):
    return np.random.default_rng(seed).normal(size=shape)


def dense_layer(name, dtype=F64, activation=None, seed=0):
    """A 24 → 12 layer of family `name` with a random init and a random bias."""
    rngs = nnx.Rngs(seed)
    if name == "cp":
        layer = CPLinear(24, 12, in_modes=(2, 3, 4), out_modes=(3, 4), rank=3,
                         activation=activation, dtype=dtype, rngs=rngs)
    elif name == "tucker2":
        layer = Tucker2Linear(24, 12, rank=5, activation=activation, dtype=dtype, rngs=rngs)
    else:
        layer = TRLinear(24, 12, in_modes=(4, 6), out_modes=(2, 3, 2), rank=(2, 3, 2, 2, 3),
                         activation=activation, dtype=dtype, rngs=rngs)
    layer.bias[...] = jnp.asarray(normal(seed + 50, (12,)), dtype)
    return layer


def conv_layer(name, strides=1, padding="SAME", dtype=F64, activation=None, seed=0):
    """A 6 → 4 channel, 3×2 kernel conv of family `name` with a random init and bias."""
    rngs = nnx.Rngs(seed)
    common = {"strides": strides, "padding": padding, "activation": activation, "dtype": dtype,
              "rngs": rngs}
    if name == "cp":
        layer = CPConv(6, 4, (3, 2), rank=3, **common)
    elif name == "cp-joint":
        layer = CPConv(6, 4, (3, 2), rank=3, separable=False, **common)
    elif name == "tucker2":
        layer = Tucker2Conv(6, 4, (3, 2), rank=(3, 2), **common)
    else:
        layer = TRConv(6, 4, (3, 2), in_modes=(2, 3), out_modes=(4,), rank=(2, 3, 2, 3), **common)
    layer.bias[...] = jnp.asarray(normal(seed + 60, (4,)), dtype)
    return layer


DENSE = ["cp", "tucker2", "tr"]
CONV = ["cp", "cp-joint", "tucker2", "tr"]
CONV_CASES = [
    (1, "SAME"),
    ((2, 1), "VALID"),
    ((1, 3), ((1, 0), (2, 1))),
]


def flax_conv(kernel, bias, strides, padding):
    """An nnx.Conv holding this kernel and bias: flax's own convolution as the reference."""
    kh, kw, c_in, c_out = kernel.shape
    conv = nnx.Conv(c_in, c_out, (kh, kw), strides=strides, padding=padding,
                    param_dtype=kernel.dtype, dtype=kernel.dtype, rngs=nnx.Rngs(0))
    conv.kernel[...] = kernel
    conv.bias[...] = bias
    return conv


# ---------------------------------------------------------------------------------------
# Forward = dense reconstruction
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", [None, "relu", "tanh"])
@pytest.mark.parametrize("name", DENSE)
def test_dense_layers_equal_their_dense_reconstruction(name, activation):
    with jax.enable_x64(True):
        layer = dense_layer(name, activation=activation)
        x = jnp.asarray(normal(1, (2, 3, 24)))
        W = np.asarray(layer.to_dense())
        assert W.shape == (12, 24)
        pre = np.asarray(x) @ W.T + np.asarray(layer.bias[...])
        want = pre if activation is None else ACTIVATIONS[activation](pre)
        got = layer(x)
        assert got.dtype == F64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strides,padding", CONV_CASES)
@pytest.mark.parametrize("name", CONV)
def test_conv_layers_equal_flax_conv_with_their_kernel(name, strides, padding):
    with jax.enable_x64(True):
        layer = conv_layer(name, strides, padding, activation="gelu")
        K = layer.to_kernel()
        assert K.shape == (3, 2, 6, 4)
        x = jnp.asarray(normal(2, (2, 9, 8, 6)))
        want = ACTIVATIONS["gelu"](flax_conv(K, layer.bias[...], strides, padding)(x))
        got = layer(x)
        assert got.shape == want.shape and got.dtype == F64
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


def test_float32_layers_follow_their_float64_values():
    """The same warm start in float32 and float64 (the decompositions run in float64 either way)."""
    W, b = normal(3, (12, 24)), normal(4, (12,))
    K, bk = normal(5, (3, 2, 6, 4)), normal(6, (4,))
    x, xi = normal(7, (4, 24)), normal(8, (2, 7, 7, 6))
    builders = [
        lambda dt: CPLinear.from_dense(W, b, in_modes=(4, 6), out_modes=(3, 4), rank=4, n_iter_max=30, dtype=dt),
        lambda dt: Tucker2Linear.from_dense(W, b, rank=5, dtype=dt),
        lambda dt: TRLinear.from_dense(W, b, in_modes=(4, 6), out_modes=(3, 4), rank=2, dtype=dt),
        lambda dt: CPConv.from_conv(K, bk, rank=3, strides=2, n_iter_max=30, dtype=dt),
        lambda dt: Tucker2Conv.from_conv(K, bk, rank=(3, 2), padding="VALID", dtype=dt),
        lambda dt: TRConv.from_conv(K, bk, in_modes=(2, 3), out_modes=(2, 2), rank=2, dtype=dt),
    ]
    for k, build in enumerate(builders):
        inputs = x if k < 3 else xi
        lo = build(jnp.float32)(jnp.asarray(inputs, jnp.float32))
        with jax.enable_x64(True):
            hi = np.asarray(build(F64)(jnp.asarray(inputs)))
        assert lo.dtype == jnp.float32
        np.testing.assert_allclose(lo, hi, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------
# Warm starts
# ---------------------------------------------------------------------------------------


def assert_params_equal(params, arrays):
    params, arrays = list(params), list(arrays)
    assert len(params) == len(arrays)
    for p, a in zip(params, arrays):
        np.testing.assert_array_equal(p[...], a)


def test_warm_starts_are_the_decompositions_they_come_from():
    with jax.enable_x64(True):
        W, b = normal(5, (12, 24)), normal(6, (12,))
        layer = CPLinear.from_dense(W, b, in_modes=(2, 3, 4), out_modes=(3, 4), rank=3, dtype=F64,
                                    n_iter_max=50, seed=1)
        in_f, out_f = cp.cp_decompose_dense(W, (2, 3, 4), (3, 4), 3, n_iter_max=50, seed=1)
        assert_params_equal(list(layer.in_factors) + list(layer.out_factors), in_f + out_f)
        np.testing.assert_array_equal(layer.bias[...], b)

        layer = Tucker2Linear.from_dense(W, b, rank=4, method="hosvd", dtype=F64)
        assert_params_equal([layer.U_in, layer.core, layer.U_out],
                            tucker.tucker2_decompose_dense(W, 4, method="hosvd"))

        layer = TRLinear.from_dense(W, b, in_modes=(4, 6), out_modes=(2, 3, 2), rank=2, dtype=F64)
        in_c, out_c = tr.tr_decompose_dense(W, (4, 6), (2, 3, 2), rank=2)
        assert_params_equal(list(layer.in_cores) + list(layer.out_cores), in_c + out_c)
        assert layer.ranks == tr.tr_ranks(in_c + out_c)

        K, bk = normal(7, (3, 2, 6, 4)), normal(8, (4,))
        for separable in (True, False):
            layer = CPConv.from_conv(K, bk, rank=3, separable=separable, dtype=F64, n_iter_max=50)
            assert_params_equal(layer.factors,
                                cp.cp_decompose_kernel(K, 3, separable=separable, n_iter_max=50))
        layer = Tucker2Conv.from_conv(K, bk, rank=(3, 2), dtype=F64)
        assert_params_equal([layer.U_in, layer.core, layer.U_out], tucker.tucker2_decompose_kernel(K, (3, 2)))
        layer = TRConv.from_conv(K, bk, in_modes=(2, 3), out_modes=(4,), eps=0.5, dtype=F64)
        in_c, s_c, out_c = tr.tr_decompose_kernel(K, (2, 3), (4,), eps=0.5)
        assert_params_equal(list(layer.in_cores) + [layer.spatial_core] + list(layer.out_cores),
                            in_c + [s_c] + out_c)
        np.testing.assert_array_equal(layer.bias[...], bk)


def nnx_linear(W, b):
    """An nnx.Linear with y = W x + b (kernel = Wᵀ)."""
    linear = nnx.Linear(W.shape[1], W.shape[0], param_dtype=F64, dtype=F64, rngs=nnx.Rngs(0))
    linear.kernel[...] = jnp.asarray(W.T)
    linear.bias[...] = jnp.asarray(b)
    return linear


@pytest.mark.parametrize("activation", [None, "sigmoid"])
def test_warm_starts_reproduce_exactly_representable_dense_teachers(activation):
    with jax.enable_x64(True):
        rng = np.random.default_rng(9)
        x = jnp.asarray(rng.normal(size=(5, 24)))
        b = rng.normal(size=12)
        act = (lambda v: v) if activation is None else ACTIVATIONS[activation]
        # CP rank 3 over the modes (3, 4 | 2, 3, 4)
        W_cp = np.asarray(cp.cp_to_dense([rng.normal(size=(n, 3)) for n in (2, 3, 4)],
                                         [rng.normal(size=(n, 3)) for n in (3, 4)]))
        W_low = rng.normal(size=(12, 4)) @ rng.normal(size=(4, 24))  # rank 4
        W_any = rng.normal(size=(12, 24))
        cases = [
            (W_cp, CPLinear.from_dense(W_cp, b, in_modes=(2, 3, 4), out_modes=(3, 4), rank=3,
                                       activation=activation, dtype=F64, n_iter_max=3000, tol=1e-12)),
            (W_low, Tucker2Linear.from_dense(W_low, b, rank=4, activation=activation, dtype=F64)),
            (W_any, TRLinear.from_dense(W_any, b, in_modes=(4, 6), out_modes=(3, 4),
                                        activation=activation, dtype=F64)),
        ]
        for W, layer in cases:
            want = act(nnx_linear(W, b)(x))
            np.testing.assert_allclose(layer(x), want, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(layer.to_dense(), W, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("strides,padding", CONV_CASES)
def test_warm_starts_reproduce_exactly_representable_conv_teachers(strides, padding):
    with jax.enable_x64(True):
        rng = np.random.default_rng(10)
        x = jnp.asarray(rng.normal(size=(2, 9, 8, 6)))
        b = rng.normal(size=4)
        K_cp = np.einsum("hk,wk,ck,fk->hwcf", *[rng.normal(size=(n, 3)) for n in (3, 2, 6, 4)])
        K_any = rng.normal(size=(3, 2, 6, 4))
        common = {"strides": strides, "padding": padding, "dtype": F64}
        cases = [
            (K_cp, CPConv.from_conv(K_cp, b, rank=3, n_iter_max=3000, tol=1e-12, **common)),
            (K_cp, CPConv.from_conv(K_cp, b, rank=3, separable=False, n_iter_max=3000, tol=1e-12, **common)),
            (K_any, Tucker2Conv.from_conv(K_any, b, rank=(6, 4), **common)),  # full ranks: exact
            (K_any, TRConv.from_conv(K_any, b, in_modes=(3, 2), out_modes=(2, 2), **common)),
        ]
        for K, layer in cases:
            want = flax_conv(jnp.asarray(K), jnp.asarray(b), strides, padding)(x)
            np.testing.assert_allclose(layer(x), want, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(layer.to_kernel(), K, rtol=1e-9, atol=1e-9)


def test_truncated_warm_starts_keep_their_error_bounds():
    with jax.enable_x64(True):
        rng = np.random.default_rng(11)
        W = rng.normal(size=(12, 24))
        for eps in (0.2, 0.5):
            layer = TRLinear.from_dense(W, in_modes=(4, 6), out_modes=(3, 4), eps=eps, dtype=F64)
            assert np.linalg.norm(np.asarray(layer.to_dense()) - W) <= eps * np.linalg.norm(W) + 1e-12
        capped = TRLinear.from_dense(W, in_modes=(4, 6), out_modes=(3, 4), rank=2, dtype=F64)
        assert max(capped.ranks) <= 2
        low = Tucker2Linear.from_dense(W, rank=5, dtype=F64)
        s = np.linalg.svd(W, compute_uv=False)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(low.to_dense()) - W),
                                   np.sqrt(np.sum(s[5:] ** 2)), rtol=1e-10)
        K = rng.normal(size=(3, 3, 8, 6))
        errs = {m: np.linalg.norm(np.asarray(Tucker2Conv.from_conv(K, rank=(4, 3), method=m, dtype=F64)
                                             .to_kernel()) - K) for m in ("hosvd", "hooi")}
        assert errs["hooi"] <= errs["hosvd"] + 1e-12 < np.linalg.norm(K)


# ---------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------


def check_gradient_by_central_differences(layer, x, seed):
    """d/dt loss(θ + t·v, x + t·u) at 0 by central differences vs ⟨∇loss, (v, u)⟩ (one jit)."""
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
    weights = jnp.asarray(normal(seed, jax.eval_shape(layer, x).shape))
    leaves, treedef = jax.tree.flatten(params)
    v = jax.tree.unflatten(treedef, [jnp.asarray(normal(seed + 1 + k, a.shape)) for k, a in enumerate(leaves)])
    u = jnp.asarray(normal(seed + 99, x.shape))
    h = 1e-6

    def loss(params, x):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, params, rest)(x)) * weights)

    @jax.jit
    def both(params, x):
        g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, x)
        analytic = jnp.vdot(g_x, u)
        for a, b in zip(jax.tree.leaves(g_params), jax.tree.leaves(v)):
            analytic = analytic + jnp.vdot(a, b)
        def at(t):
            return loss(jax.tree.map(lambda p, d: p + t * d, params, v), x + t * u)

        return analytic, (at(h) - at(-h)) / (2 * h)

    analytic, numeric = both(params, x)
    np.testing.assert_allclose(float(numeric), float(analytic), rtol=1e-6, atol=1e-8)
    assert abs(float(analytic)) > 1e-3  # the check has something to compare


@pytest.mark.parametrize("name", DENSE)
def test_dense_layer_gradients_match_finite_differences(name):
    with jax.enable_x64(True):
        check_gradient_by_central_differences(dense_layer(name, activation="tanh"),
                                              jnp.asarray(normal(12, (3, 24))), 13)


@pytest.mark.parametrize("name", CONV)
def test_conv_layer_gradients_match_finite_differences(name):
    with jax.enable_x64(True):
        layer = conv_layer(name, strides=(2, 1), padding=((1, 0), (0, 1)), activation="tanh")
        check_gradient_by_central_differences(layer, jnp.asarray(normal(14, (2, 7, 6, 6))), 15)


# ---------------------------------------------------------------------------------------
# Init and parameter counts
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation,gain", [(None, 1.0), ("relu", 2.0)])
def test_init_has_the_norm_of_a_dense_or_conv_init(activation, gain):
    with jax.enable_x64(True):
        for name in DENSE:
            W = np.asarray(dense_layer(name, activation=activation).to_dense())
            # ‖W‖² = v·N_in·N_out with v = gain/N_in (He for relu, LeCun otherwise)
            np.testing.assert_allclose(np.sum(W**2), gain / 24 * 24 * 12, rtol=1e-10)
            assert not np.allclose(W, dense_layer(name, activation=activation, seed=1).to_dense())
        for name in CONV:
            K = np.asarray(conv_layer(name, activation=activation).to_kernel())
            fan_in = 3 * 2 * 6
            np.testing.assert_allclose(np.sum(K**2), gain / fan_in * fan_in * 4, rtol=1e-10)
    # and the bias starts at zero
    assert not np.any(CPLinear(8, 4, rank=2, rngs=nnx.Rngs(0)).bias[...])


def test_parameter_counts_by_hand():
    def build(cls, *args, **kw):  # shapes only: nothing is drawn or compiled
        return nnx.eval_shape(lambda: cls(*args, rngs=nnx.Rngs(0), **kw))

    cp_l = build(CPLinear, 784, 512, in_modes=(4, 7, 7, 4), out_modes=(8, 8, 8), rank=10)
    assert param_count(cp_l) == 10 * (4 + 7 + 7 + 4 + 8 + 8 + 8) + 512
    assert build(CPLinear, 784, 512, n_factors=2, rank=1).in_modes == (28, 28)
    tk = build(Tucker2Linear, 784, 512, rank=16)
    assert param_count(tk) == 784 * 16 + 16 * 16 + 512 * 16 + 512
    assert build(Tucker2Linear, 30, 8, rank=50).rank == 8
    trl = build(TRLinear, 784, 512, in_modes=(28, 28), out_modes=(8, 8, 8), rank=(2, 3, 4, 5, 6))
    assert param_count(trl) == 2 * 28 * 3 + 3 * 28 * 4 + 4 * 8 * 5 + 5 * 8 * 6 + 6 * 8 * 2 + 512
    cpc = build(CPConv, 64, 128, 3, rank=20)
    assert param_count(cpc) == 20 * (3 + 3 + 64 + 128) + 128
    cpj = build(CPConv, 64, 128, 3, rank=20, separable=False)
    assert param_count(cpj) == 20 * (9 + 64 + 128) + 128
    tkc = build(Tucker2Conv, 64, 128, 3, rank=(16, 32))
    assert tkc.ranks == (16, 32)
    assert param_count(tkc) == 64 * 16 + 9 * 16 * 32 + 32 * 128 + 128
    assert build(Tucker2Conv, 64, 128, 1, rank=(16, 100)).ranks == (16, 16)  # 1×1: a matrix
    trc = build(TRConv, 64, 128, 3, rank=4)  # modes (8, 8) | 9 | (8, 16)
    assert trc.in_modes == (8, 8) and trc.out_modes == (8, 16)
    assert param_count(trc) == 16 * (8 + 8 + 9 + 8 + 16) + 128
    # the abstract build has the real layer's parameters
    small = CPConv(6, 4, (3, 2), rank=3, rngs=nnx.Rngs(0))
    assert param_count(small) == param_count(build(CPConv, 6, 4, (3, 2), rank=3)) == 3 * (3 + 2 + 6 + 4) + 4


# ---------------------------------------------------------------------------------------
# Mistakes
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: CPLinear(24, 12, rank=0, rngs=nnx.Rngs(0)), "CPLinear: rank must be an integer >= 1"),
        (lambda: CPLinear(24, 12, in_modes=(5, 5), rank=2, rngs=nnx.Rngs(0)), "in_modes"),
        (lambda: CPLinear(24, 12, rank=2, activation="swish", rngs=nnx.Rngs(0)), "unknown activation"),
        (lambda: CPLinear(24, 12, rank=2, rngs=nnx.Rngs(0))(jnp.ones((3, 23))), r"shape \(\.\.\., 24\)"),
        (lambda: CPLinear.from_dense(np.ones((2, 3, 4)), rank=2), "must be a matrix"),
        (lambda: CPConv(6, 4, 3, rank=2, padding="FULL", rngs=nnx.Rngs(0)), "CPConv: padding must be"),
        (lambda: CPConv(6, 4, 0, rank=2, rngs=nnx.Rngs(0)), "CPConv: kernel_size must be"),
        (lambda: CPConv(6, 4, 3, rank=2, rngs=nnx.Rngs(0))(jnp.ones((2, 5, 5, 4))), "NHWC"),
        (lambda: CPConv.from_conv(np.ones((3, 3, 6)), rank=2), "HWIO"),
        (lambda: CPConv.from_conv(np.ones((3, 3, 6, 4)), np.ones(6), rank=2), "bias must have shape"),
        (lambda: Tucker2Linear.from_dense(np.ones((4, 5)), rank=2, method="svd"), "method must be one of"),
        (lambda: Tucker2Conv(6, 4, 3, rank=(2, 2, 2), rngs=nnx.Rngs(0)), "Tucker2Conv: rank"),
        (lambda: Tucker2Conv(6, 4, 3, rank=2, strides=(1, 0), rngs=nnx.Rngs(0)), "Tucker2Conv: strides"),
        (lambda: TRLinear(24, 12, n_factors=2, rank=(2, 2, 2), rngs=nnx.Rngs(0)), "list of 4 integers"),
        (lambda: TRLinear.from_dense(np.ones((12, 24)), eps=-0.1), "eps must be"),
        (lambda: TRConv(6, 4, 3, out_modes=(3,), rank=2, rngs=nnx.Rngs(0)), "out_modes"),
        (lambda: TRConv.from_conv(np.ones((3, 3, 6, 4)), rank=(2, 2), n_factors=1), "list of 3 integers"),
    ],
)
def test_mistakes_raise_one_line_distill_errors(call, match):
    with pytest.raises(DistillError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cp-dense", "tr"])
def test_layers_train_under_nnx_jit(name):
    """A few Adam steps on a fixed regression target lower the loss; the step compiles once."""
    kind, _, dense = name.partition("-")
    if dense:
        layer = dense_layer(kind, dtype=jnp.float32)
        x = jnp.asarray(normal(16, (32, 24)), jnp.float32)
    else:
        layer = conv_layer(kind, strides=2, dtype=jnp.float32)
        x = jnp.asarray(normal(16, (4, 6, 6, 6)), jnp.float32)
    target = jnp.asarray(normal(17, layer(x).shape), jnp.float32)
    optimizer = nnx.Optimizer(layer, optax.adam(3e-2), wrt=nnx.Param)
    traces = []

    @nnx.jit
    def step(layer, optimizer, x, target):
        traces.append(1)

        def loss_fn(layer):
            return jnp.mean((layer(x) - target) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(layer)
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam: a float raised to an int32 count
            optimizer.update(layer, grads)
        return loss

    losses = [float(step(layer, optimizer, x, target)) for _ in range(15)]
    assert losses[-1] < 0.9 * losses[0]
    assert len(traces) == 1
