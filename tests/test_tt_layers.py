"""distill.nn.TTLinear and LowRankLinear: warm start reproduces an nnx.Linear, honest
parameter counts, init scale of a dense He/LeCun layer, argument validation, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from distill.errors import DistillError
from distill.nn import LowRankLinear, TTLinear, param_count
from distill.tn import tt


def normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def dense_teacher(n_in, n_out, seed=0):
    """An nnx.Linear (kernel (in, out), y = x @ kernel + bias) with a nonzero bias."""
    linear = nnx.Linear(n_in, n_out, rngs=nnx.Rngs(seed))
    linear.bias[...] = normal(seed + 100, (n_out,))
    return linear


@pytest.mark.parametrize("activation", [None, "relu"])
def test_full_rank_from_dense_reproduces_an_nnx_linear(activation):
    linear = dense_teacher(48, 20)
    x = normal(1, (16, 48))
    want = linear(x) if activation is None else jax.nn.relu(linear(x))
    W = linear.kernel[...].T  # (N_out, N_in): y = W x
    ttl = TTLinear.from_dense(W, linear.bias[...], in_modes=(4, 3, 4), out_modes=(2, 5, 2),
                              activation=activation)
    assert ttl.ranks == (1, 8, 8, 1)  # full rank: min(a_1 b_1, rest) = 8, min(rest, a_3 b_3) = 8
    np.testing.assert_allclose(ttl(x), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ttl.to_dense(), W, rtol=1e-5, atol=1e-6)
    low = LowRankLinear.from_dense(W, linear.bias[...], rank=20, activation=activation)
    np.testing.assert_allclose(low(x), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(low.to_dense(), W, rtol=1e-5, atol=1e-6)


def test_truncated_warm_starts_keep_their_error_bounds():
    linear = dense_teacher(64, 32)
    W = np.asarray(linear.kernel[...].T, np.float64)
    ttl = TTLinear.from_dense(W, eps=0.5, in_modes=(4, 4, 4), out_modes=(2, 4, 4))
    err = np.linalg.norm(np.asarray(ttl.to_dense(), np.float64) - W) / np.linalg.norm(W)
    assert err <= 0.5 + 1e-5  # the ε bound holds in the layer
    full = tt.tt_max_ranks((4, 4, 4), (2, 4, 4), 64)  # (8, 16)
    assert all(r <= f for r, f in zip(ttl.ranks[1:-1], full)) and sum(ttl.ranks) < sum(full) + 2
    np.testing.assert_array_equal(ttl.bias[...], np.zeros(32, np.float32))  # b None → 0
    capped = TTLinear.from_dense(W, rank=2, in_modes=(4, 4, 4), out_modes=(2, 4, 4))
    assert capped.ranks == (1, 2, 2, 1)
    low = LowRankLinear.from_dense(W, rank=5)
    s = np.linalg.svd(W, compute_uv=False)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(low.to_dense(), np.float64) - W),
                               np.sqrt(np.sum(s[5:] ** 2)), rtol=1e-5)


def test_float64_layer_is_exact():
    with jax.enable_x64(True):
        W = np.random.default_rng(2).normal(size=(12, 30))
        ttl = TTLinear.from_dense(W, in_modes=(5, 6), out_modes=(3, 4), dtype=jnp.float64)
        assert ttl.cores[0][...].dtype == jnp.float64
        x = np.random.default_rng(3).normal(size=(7, 30))
        np.testing.assert_allclose(ttl(jnp.asarray(x)), x @ W.T, rtol=1e-12, atol=1e-12)


def test_parameter_counts_by_hand():
    layer = TTLinear(784, 512, in_modes=(4, 7, 7, 4), out_modes=(4, 4, 8, 4), rank=8,
                     rngs=nnx.Rngs(0))
    cores = 1 * 4 * 4 * 8 + 8 * 4 * 7 * 8 + 8 * 8 * 7 * 8 + 8 * 4 * 4 * 1
    assert param_count(layer) == cores + 512 == 6144
    # rank caps above what a bond can hold are lowered: bond 1 holds at most 2·3 = 6
    small = TTLinear(6, 6, in_modes=(2, 3), out_modes=(3, 2), rank=100, rngs=nnx.Rngs(0))
    assert small.ranks == (1, 6, 1)
    assert param_count(small) == 1 * 3 * 2 * 6 + 6 * 2 * 3 * 1 + 6
    assert param_count(LowRankLinear(784, 512, rank=10, rngs=nnx.Rngs(0))) == 10 * (784 + 512) + 512
    assert LowRankLinear(30, 8, rank=50, rngs=nnx.Rngs(0)).rank == 8


def test_automatic_modes():
    layer = TTLinear(784, 512, rank=4, rngs=nnx.Rngs(0))
    assert layer.in_modes == (4, 7, 7, 4) and layer.out_modes == (4, 4, 8, 4)
    two = TTLinear(784, 10, in_modes=(28, 28), rank=4, rngs=nnx.Rngs(0))
    assert two.out_modes == (2, 5)
    three = TTLinear(64, 64, n_factors=3, rank=4, rngs=nnx.Rngs(0))
    assert three.in_modes == three.out_modes == (4, 4, 4)


@pytest.mark.parametrize("activation, variance", [("relu", 2.0), (None, 1.0)])
def test_init_output_variance_matches_a_dense_layer(activation, variance):
    """relu → He (Var W = 2/N_in); linear → LeCun (1/N_in, nnx.Linear's default)."""
    n_in, n_out = 784, 512
    x = normal(4, (256, n_in))
    init = nnx.initializers.he_normal() if activation == "relu" else nnx.initializers.lecun_normal()
    dense = nnx.Linear(n_in, n_out, kernel_init=init, rngs=nnx.Rngs(0))
    act = (lambda z: z) if activation is None else jax.nn.relu
    dense_ms = float(jnp.mean(act(dense(x)) ** 2))
    for seed in range(3):
        for layer in (
            TTLinear(n_in, n_out, rank=8, activation=activation, rngs=nnx.Rngs(seed)),
            TTLinear(n_in, n_out, rank=1, activation=activation, rngs=nnx.Rngs(seed)),
            LowRankLinear(n_in, n_out, rank=16, activation=activation, rngs=nnx.Rngs(seed)),
        ):
            ratio = float(jnp.mean(layer(x) ** 2)) / dense_ms
            assert 0.5 < ratio < 2.0, (type(layer).__name__, seed, ratio)
    # the TT init is normalised exactly: ‖W‖_F² = v·N_in·N_out
    layer = TTLinear(n_in, n_out, rank=3, activation=activation, rngs=nnx.Rngs(7))
    np.testing.assert_allclose(float(tt.tt_norm(layer.core_arrays)) ** 2, variance * n_out,
                               rtol=1e-4)


@pytest.mark.parametrize("make", [
    lambda: TTLinear(16, 8, in_modes=(4, 4), out_modes=(2, 4), rank=3, activation="tanh",
                     rngs=nnx.Rngs(0)),
    lambda: LowRankLinear(16, 8, rank=3, activation="tanh", rngs=nnx.Rngs(0)),
])
def test_adam_steps_lower_a_regression_loss(make):
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(128, 16)), jnp.float32)
    target = jnp.tanh(x @ jnp.asarray(rng.normal(size=(16, 8)) / 4, jnp.float32))
    model = make()
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    def loss_fn(m):
        return jnp.mean((m(x) - target) ** 2)

    @nnx.jit
    def step(m, opt):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam: a float raised to an int32 count
            opt.update(m, grads)
        return loss

    first = float(step(model, optimizer))
    for _ in range(40):
        last = float(step(model, optimizer))
    assert np.isfinite(last) and last < 0.5 * first, (first, last)


def test_refusals():
    with pytest.raises(DistillError) as err:
        TTLinear(784, 512, in_modes=(4, 7, 7), out_modes=(8, 8, 8), rank=4, rngs=nnx.Rngs(0))
    assert str(err.value).startswith(
        "the factorisation 4·7·7 = 196 of tt.in_modes does not multiply to the layer's input "
        "width 784;"
    )
    with pytest.raises(DistillError, match="tt.out_modes does not multiply to the layer's output"):
        TTLinear(784, 512, in_modes=(28, 28), out_modes=(16, 16), rank=4, rngs=nnx.Rngs(0))
    with pytest.raises(DistillError, match="same length"):
        TTLinear(784, 512, in_modes=(28, 28), out_modes=(8, 8, 8), rank=4, rngs=nnx.Rngs(0))
    with pytest.raises(DistillError, match="TT rank"):
        TTLinear(64, 64, rank=0, rngs=nnx.Rngs(0))
    with pytest.raises(DistillError, match="unknown activation"):
        TTLinear(64, 64, rank=2, activation="swish", rngs=nnx.Rngs(0))
    with pytest.raises(DistillError, match="expected input of shape"):
        TTLinear(64, 64, rank=2, rngs=nnx.Rngs(0))(jnp.ones((3, 63)))
    with pytest.raises(DistillError, match="method must be one of cores, split, dense"):
        TTLinear(64, 64, rank=2, method="fast", rngs=nnx.Rngs(0))
    with pytest.raises(DistillError, match="linear.kernel.T"):
        TTLinear.from_dense(np.ones(8), in_modes=(2, 4), out_modes=(1, 1))
    with pytest.raises(DistillError, match="bias must have shape"):
        LowRankLinear.from_dense(np.ones((4, 6)), np.ones(6), rank=2)
    with pytest.raises(DistillError, match="expected input of shape"):
        LowRankLinear(6, 4, rank=2, rngs=nnx.Rngs(0))(jnp.ones((6, 4)))


@pytest.mark.parametrize("method", tt.TT_METHODS)
def test_every_tt_method_gives_the_layer_the_same_values(method):
    """TTLinear(method=...) and student.tt_method only change how W x is computed."""
    from distill.students import family
    from distill.students.mirror import build_mirror
    from distill.teachers import Network, mlp_spec

    W, b = normal(1, (24, 40)), normal(2, (24,))
    auto = TTLinear.from_dense(W, b, in_modes=(2, 4, 5), out_modes=(2, 3, 4), rank=3, activation="tanh")
    forced = TTLinear.from_dense(W, b, in_modes=(2, 4, 5), out_modes=(2, 3, 4), rank=3, activation="tanh",
                                 method=method)
    x = normal(3, (7, 40))
    np.testing.assert_allclose(np.asarray(forced(x)), np.asarray(auto(x)), rtol=2e-5, atol=2e-6)

    teacher = Network(mlp_spec(40, [24], 10, "relu"), rngs=nnx.Rngs(0))
    opts = family("tt").Options(rank=3, tt_factors=2, tt_method=method)
    student = build_mirror("tt", opts, teacher, seed=0)
    assert student.hidden_0.method == method
    ref = build_mirror("tt", family("tt").Options(rank=3, tt_factors=2), teacher, seed=0)
    np.testing.assert_allclose(np.asarray(student(x)), np.asarray(ref(x)), rtol=2e-5, atol=2e-6)
