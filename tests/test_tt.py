"""distill.tn.tt against dense float64 references and an independent tensornetwork.ncon
contraction: TT-SVD exactness and its ε bound, TT-matrix × vector, mode factorisation, and
the truncated-SVD baseline."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensornetwork as tn

from distill.errors import DistillError
from distill.tn import tt

# (in_modes a, out_modes b, inner ranks): d = 1..4, unequal a/b, modes of size 1
LAYOUTS = [
    ((12,), (5,), ()),
    ((3, 4), (2, 5), (3,)),
    ((2, 3, 4), (4, 1, 3), (2, 3)),
    ((2, 7, 7, 2), (2, 2, 4, 2), (3, 5, 2)),
    ((2, 2, 3, 2), (3, 1, 2, 2), (4, 4, 4)),
]


def random_cores(seed, in_modes, out_modes, inner):
    rng = np.random.default_rng(seed)
    ranks = (1, *inner, 1)
    return [
        rng.normal(size=(ranks[k], out_modes[k], in_modes[k], ranks[k + 1]))
        for k in range(len(in_modes))
    ]


def dense_via_ncon(cores):
    """W (N_out, N_in) from the cores by tensornetwork.ncon (independent of tt_to_dense)."""
    d = len(cores)
    labels = [[f"bond{k}", f"-j{k}", f"-i{k}", f"bond{k + 1}"] for k in range(d)]
    labels[0][0] = "-left"
    labels[-1][3] = "-right"
    out_order = ["-left"] + [f"-j{k}" for k in range(d)] + [f"-i{k}" for k in range(d)] + ["-right"]
    full = tn.ncon(cores, labels, out_order=out_order, backend="numpy")
    n_out = math.prod(c.shape[1] for c in cores)
    return np.asarray(full).reshape(n_out, -1)


def rel_err(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


# ---------------------------------------------------------------------------------------
# TT-SVD
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_modes, out_modes, inner", LAYOUTS)
def test_tt_svd_recovers_a_tt_matrix_exactly_with_no_larger_ranks(in_modes, out_modes, inner):
    W = dense_via_ncon(random_cores(0, in_modes, out_modes, inner))
    for max_rank in (None, max(inner, default=1), 50):
        cores = tt.tt_svd(W, in_modes, out_modes, max_rank=max_rank)
        assert all(c.dtype == np.float64 for c in cores)
        ranks = tt.tt_ranks(cores)
        assert ranks[0] == ranks[-1] == 1
        assert all(found <= r for found, r in zip(ranks[1:-1], inner)), (ranks, inner)
        assert rel_err(dense_via_ncon(cores), W) < 1e-10


@pytest.mark.parametrize(
    "in_modes, out_modes", [((4, 3, 6), (3, 4, 5)), ((4, 7, 7, 4), (2, 2, 2, 2))]
)
def test_tt_svd_eps_obeys_the_oseledets_bound_and_ranks_shrink(in_modes, out_modes):
    rng = np.random.default_rng(1)
    # a spectrum that decays, so that every ε cuts somewhere different
    W = rng.normal(size=(math.prod(out_modes), math.prod(in_modes)))
    W = W * np.exp(-np.arange(W.shape[1]) / 15.0)
    previous = None
    for eps in (1e-3, 0.05, 0.2, 0.5, 0.8):
        cores = tt.tt_svd(W, in_modes, out_modes, eps=eps)
        err = np.linalg.norm(dense_via_ncon(cores) - W)
        assert err <= eps * np.linalg.norm(W) * (1 + 1e-12), (eps, err / np.linalg.norm(W))
        ranks = tt.tt_ranks(cores)
        if previous is not None:
            assert all(r <= p for r, p in zip(ranks, previous)), (previous, ranks)
        previous = ranks
    full = tt.tt_ranks(tt.tt_svd(W, in_modes, out_modes))
    assert sum(previous) < sum(full)


def test_tt_svd_rank_cap_and_dtype():
    rng = np.random.default_rng(2)
    W = rng.normal(size=(16, 64))
    cores = tt.tt_svd(W, (4, 4, 4), (2, 4, 2), max_rank=3, dtype=np.float32)
    assert tt.tt_ranks(cores) == (1, 3, 3, 1)
    assert all(c.dtype == np.float32 for c in cores)
    # W float32 in → float32 out by default
    assert tt.tt_svd(W.astype(np.float32), (8, 8), (4, 4))[0].dtype == np.float32


@pytest.mark.parametrize("in_modes, out_modes, inner", LAYOUTS)
def test_to_dense_of_full_rank_tt_svd_is_w(in_modes, out_modes, inner):
    rng = np.random.default_rng(3)
    W = rng.normal(size=(math.prod(out_modes), math.prod(in_modes)))
    with jax.enable_x64(True):
        dense = tt.tt_to_dense([jnp.asarray(c) for c in tt.tt_svd(W, in_modes, out_modes)])
        assert dense.dtype == jnp.float64
    assert rel_err(dense, W) < 1e-12


def test_tt_svd_refuses_bad_arguments():
    W = np.ones((6, 8))
    with pytest.raises(DistillError, match="same length"):
        tt.tt_svd(W, (2, 4), (6,))
    with pytest.raises(DistillError, match="does not multiply to the layer's output width 6"):
        tt.tt_svd(W, (2, 4), (2, 2))
    with pytest.raises(DistillError, match="max_rank"):
        tt.tt_svd(W, (2, 4), (2, 3), max_rank=0)
    with pytest.raises(DistillError, match="eps"):
        tt.tt_svd(W, (2, 4), (2, 3), eps=-0.1)


# ---------------------------------------------------------------------------------------
# Contractions
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_modes, out_modes, inner", LAYOUTS)
def test_tt_matvec_and_to_dense_equal_the_dense_matrix(in_modes, out_modes, inner):
    cores = random_cores(4, in_modes, out_modes, inner)
    W = dense_via_ncon(cores)
    x = np.random.default_rng(5).normal(size=(2, 3, W.shape[1]))
    with jax.enable_x64(True):
        jcores = [jnp.asarray(c) for c in cores]
        y = tt.tt_matvec(jcores, jnp.asarray(x))
        assert y.dtype == jnp.float64 and y.shape == (2, 3, W.shape[0])
        dense = tt.tt_to_dense(jcores)
        norm = tt.tt_norm(jcores)
    np.testing.assert_allclose(y, np.einsum("ji,bci->bcj", W, x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dense, W, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(norm, np.linalg.norm(W), rtol=1e-12)


def test_tt_matvec_equals_an_ncon_contraction_with_x():
    in_modes, out_modes, inner = (3, 2, 4), (2, 5, 2), (3, 4)
    cores = random_cores(6, in_modes, out_modes, inner)
    x = np.random.default_rng(7).normal(size=(4, math.prod(in_modes)))
    d = len(cores)
    labels = [[f"bond{k}", f"-j{k}", f"i{k}", f"bond{k + 1}"] for k in range(d)]
    labels[0][0], labels[-1][3] = "left", "right"  # size-1 boundary bonds, summed away
    boundary = np.ones((1,))
    net = [x.reshape(4, *in_modes), boundary, *cores, boundary]
    net_labels = [["-b"] + [f"i{k}" for k in range(d)], ["left"], *labels, ["right"]]
    out_order = ["-b"] + [f"-j{k}" for k in range(d)]
    want = np.asarray(tn.ncon(net, net_labels, out_order=out_order, backend="numpy")).reshape(4, -1)
    with jax.enable_x64(True):
        got = tt.tt_matvec([jnp.asarray(c) for c in cores], jnp.asarray(x))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_tt_matvec_jits_in_float32_and_checks_the_width():
    cores = [jnp.asarray(c, jnp.float32) for c in random_cores(8, (4, 7), (3, 3), (5,))]
    x = jnp.asarray(np.random.default_rng(9).normal(size=(6, 28)), jnp.float32)
    y = jax.jit(tt.tt_matvec)(cores, x)
    assert y.dtype == jnp.float32
    W = dense_via_ncon([np.asarray(c, np.float64) for c in cores])
    np.testing.assert_allclose(y, np.asarray(x, np.float64) @ W.T, rtol=1e-4, atol=1e-4)
    with pytest.raises(DistillError, match="x has 27 features"):
        tt.tt_matvec(cores, x[:, :27])
    with pytest.raises(DistillError, match="does not match"):
        tt.tt_matvec([cores[0], cores[1][:4]], x)


# ---------------------------------------------------------------------------------------
# tt_matvec methods ("cores", "split", "dense", auto)
# ---------------------------------------------------------------------------------------

# LAYOUTS plus ranks that differ per bond next to modes of size 1, and a rank-1 bond
METHOD_LAYOUTS = LAYOUTS + [
    ((1, 3, 1, 2), (2, 1, 1, 3), (1, 2, 3)),
    ((3, 1, 5, 2, 2), (2, 4, 1, 1, 3), (2, 6, 1, 3)),
]


def naive_dense(cores):
    """W by the plain left-to-right einsum (independent of tt's merge/_outer code), jnp."""
    acc = cores[0][0]  # (o, q, r)
    for core in cores[1:]:
        o, q, _ = acc.shape
        acc = jnp.einsum("oql,ljir->ojqir", acc, core)
        acc = acc.reshape(o * core.shape[1], q * core.shape[2], -1)
    return acc[:, :, 0]


@pytest.mark.parametrize("in_modes, out_modes, inner", METHOD_LAYOUTS)
def test_every_method_equals_the_dense_float64_reference(in_modes, out_modes, inner):
    cores = random_cores(11, in_modes, out_modes, inner)
    W = dense_via_ncon(cores)
    rng = np.random.default_rng(12)
    with jax.enable_x64(True):
        jcores = [jnp.asarray(c) for c in cores]
        W_tt = np.asarray(tt.tt_to_dense(jcores))
        for lead in [(1,), (7,), (2, 3)]:
            x = rng.normal(size=lead + (W.shape[1],))
            for method in tt.TT_METHODS + (None,):
                y = tt.tt_matvec(jcores, jnp.asarray(x), method=method)
                assert y.dtype == jnp.float64 and y.shape == lead + (W.shape[0],)
                np.testing.assert_allclose(y, x @ W.T, rtol=1e-12, atol=1e-12, err_msg=str(method))
                np.testing.assert_allclose(y, x @ W_tt.T, rtol=1e-12, atol=1e-12)
            # the export plan (batch on its own axis) and the CPU plans give the same values
            for plan in [tt.tt_export_plan(jcores), *(tt.tt_plan(jcores, 7, method=m) for m in tt.TT_METHODS)]:
                y = tt.tt_matvec_planned(plan, jnp.asarray(x))
                np.testing.assert_allclose(y, x @ W.T, rtol=1e-12, atol=1e-12, err_msg=plan.method)


def test_modes_matvec_refuses_a_wrong_width():
    cores = [jnp.asarray(c, jnp.float32) for c in random_cores(3, (2, 3), (2, 2), (2,))]
    with pytest.raises(DistillError, match=r"shape \(batch, 6\)"):
        tt.tt_matvec_modes(cores, jnp.ones((4, 5), jnp.float32))


@pytest.mark.parametrize("kind", ["broadcast", "einsum"])
@pytest.mark.parametrize("in_modes, out_modes, inner", METHOD_LAYOUTS[2:])
def test_every_contraction_variant_is_exact(monkeypatch, kind, in_modes, out_modes, inner):
    """The variants the cost model can pick, each forced: both directions, every bond of
    "split" and "dense", and every way of doing a step (a GEMM where P or S is 1 has no choice)."""
    forced = lambda p, n, k, s: "plain" if p == 1 or s == 1 else kind  # noqa: E731
    monkeypatch.setattr(tt, "_step_kind", forced)
    cores = random_cores(13, in_modes, out_modes, inner)
    W = dense_via_ncon(cores)
    x = np.random.default_rng(14).normal(size=(5, W.shape[1]))
    with jax.enable_x64(True):
        jcores, jx = [jnp.asarray(c) for c in cores], jnp.asarray(x)
        for reverse in (False, True):
            got = tt._chain(jcores, jx, reverse)
            np.testing.assert_allclose(got, x @ W.T, rtol=1e-12, atol=1e-12)
            for bond in range(1, len(cores)):
                blocks = [tt._merge(jcores[:bond]), tt._merge(jcores[bond:])]
                got = tt._chain(blocks, jx, reverse)
                np.testing.assert_allclose(got, x @ W.T, rtol=1e-12, atol=1e-12)
                np.testing.assert_allclose(tt._form_dense(jcores, bond), W, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("in_modes, out_modes, inner", [METHOD_LAYOUTS[3], METHOD_LAYOUTS[-1]])
def test_methods_agree_in_gradients_and_tangents_float64(in_modes, out_modes, inner):
    cores = random_cores(15, in_modes, out_modes, inner)
    n_in, n_out = math.prod(in_modes), math.prod(out_modes)
    rng = np.random.default_rng(16)
    with jax.enable_x64(True):
        jcores = [jnp.asarray(c) for c in cores]
        x = jnp.asarray(rng.normal(size=(4, n_in)))
        g = jnp.asarray(rng.normal(size=(4, n_out)))

        def loss(cs, x, method):
            return jnp.sum(tt.tt_matvec(cs, x, method=method) * g)

        def ref_loss(cs, x):
            return jnp.sum((x @ naive_dense(cs).T) * g)

        ref = jax.grad(ref_loss, argnums=(0, 1))(jcores, x)
        tangents = [jnp.asarray(rng.normal(size=c.shape)) for c in cores]
        _, ref_tan = jax.jvp(lambda cs: x @ naive_dense(cs).T, (jcores,), (tangents,))
        for method in tt.TT_METHODS + (None,):
            got = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(jcores, x, method)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=str(method))
            # forward mode too ("dense" has a custom JVP)
            _, tan = jax.jvp(lambda cs: tt.tt_matvec(cs, x, method=method), (jcores,), (tangents,))
            np.testing.assert_allclose(tan, ref_tan, rtol=1e-10, atol=1e-12, err_msg=str(method))


def test_every_method_in_float32_under_jit():
    cores = random_cores(17, (4, 7, 7, 4), (4, 4, 8, 4), (8, 8, 8))
    cores = [jnp.asarray(c, jnp.float32) for c in cores]
    x = jnp.asarray(np.random.default_rng(18).normal(size=(33, 784)), jnp.float32)
    want = np.asarray(x, np.float64) @ dense_via_ncon([np.asarray(c, np.float64) for c in cores]).T
    for method in tt.TT_METHODS + (None,):
        y = jax.jit(tt.tt_matvec, static_argnames="method")(cores, x, method=method)
        assert y.dtype == jnp.float32
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_auto_rule_follows_the_calibration():
    mnist = ((4, 7, 7, 4), (4, 4, 8, 4))  # 784 → 512, the factorisation tt.factorize gives
    for rank in (1, 2, 4, 8, 16, 32):
        ranks = (1, *tt.tt_max_ranks(*mnist, rank), 1)
        for batch in (0, 1, 7, 64, 256, 1024, 8192):
            assert tt.choose_tt_method(*mnist, ranks, batch, backend="cpu") in tt.TT_METHODS
    # measured (docs/bench/bench_tt.json): rank 4, batch 256: split 0.46 ms, "dense" 0.58 ms
    # (x @ W.T alone 0.51); rank 16, batch 1024: split 25.5 ms, "dense" 1.9 ms
    assert tt.choose_tt_method(*mnist, (1, 4, 4, 4, 1), 256, backend="cpu") == "split"
    assert tt.choose_tt_method(*mnist, (1, 16, 16, 16, 1), 1024, backend="cpu") == "dense"
    assert tt.choose_tt_method(*mnist, (1, 4, 4, 4, 1), 256, backend="gpu") == "dense"
    with pytest.raises(DistillError, match=r"d\+1 ranks"):
        tt.choose_tt_method(*mnist, (1, 4, 4, 1), 256)


def test_unknown_method_is_refused():
    cores = [jnp.asarray(c) for c in random_cores(19, (3, 4), (2, 5), (3,))]
    with pytest.raises(DistillError) as err:
        tt.tt_matvec(cores, jnp.ones((2, 12)), method="zigzag")
    msg = str(err.value)
    assert "\n" not in msg and "'cores'" in msg and "'dense'" in msg and "'zigzag'" in msg


def test_auto_method_compiles_once_per_shape():
    cores = random_cores(20, (4, 7, 7, 4), (4, 4, 8, 4), (8, 8, 8))
    cores = [jnp.asarray(c, jnp.float32) for c in cores]
    traces = []

    def apply(cores, x):
        traces.append(None)  # Python side effect: runs once per trace
        return tt.tt_matvec(cores, x)

    f = jax.jit(apply)
    rng = np.random.default_rng(21)
    W = dense_via_ncon([np.asarray(c, np.float64) for c in cores])
    for _ in range(2):  # new data, same shapes
        x = rng.normal(size=(16, 784))
        y = f(cores, jnp.asarray(x, jnp.float32))
        np.testing.assert_allclose(y, x @ W.T, rtol=1e-4, atol=1e-4 * np.abs(x @ W.T).max())
    assert len(traces) == 1
    assert f._cache_size() == 1


def test_ranks_and_param_counts_by_hand():
    cores = random_cores(0, (4, 7, 7, 4), (4, 4, 8, 4), (8, 8, 8))
    assert tt.tt_ranks(cores) == (1, 8, 8, 8, 1)
    assert tt.tt_num_params(cores) == 1 * 4 * 4 * 8 + 8 * 4 * 7 * 8 + 8 * 8 * 7 * 8 + 8 * 4 * 4 * 1
    # caps: bond 1 can hold at most a_1·b_1 = 16, bond 3 at most a_4·b_4 = 16
    assert tt.tt_max_ranks((4, 7, 7, 4), (4, 4, 8, 4), 32) == (16, 32, 16)
    assert tt.tt_max_ranks((2, 3), (3, 2), (100,)) == (6,)
    with pytest.raises(DistillError, match="one per inner"):
        tt.tt_max_ranks((2, 3), (3, 2), (2, 2))


# ---------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------


def test_factorize_known_values():
    assert tt.factorize(784, 4) == (4, 7, 7, 4)
    assert tt.factorize(512, 4) == (4, 4, 8, 4)
    assert tt.factorize(256, 4) == (4, 4, 4, 4)
    assert tt.factorize(10, 2) == (2, 5)
    assert tt.factorize(13, 4) == (1, 1, 13, 1)
    assert tt.factorize(1, 3) == (1, 1, 1)
    assert tt.factorize(97, 1) == (97,)


def test_factorize_products_and_balance():
    for n in range(1, 400):
        for n_factors in (1, 2, 3, 4):
            fs = tt.factorize(n, n_factors)
            assert len(fs) == n_factors and math.prod(fs) == n
            # balanced: no other split into n_factors factors has a smaller largest factor
            # when n is a perfect power of a small integer
            root = round(n ** (1 / n_factors))
            if root**n_factors == n:
                assert fs == (root,) * n_factors
            # largest factors in the middle: the ends hold the two smallest
            if n_factors >= 3:
                assert max(fs[0], fs[-1]) <= min(fs[1:-1])
    # balance against brute force for two factors: the divisor pair closest to √n
    for n in range(1, 400):
        a, b = sorted(tt.factorize(n, 2))
        best = max(f for f in range(1, math.isqrt(n) + 1) if n % f == 0)
        assert (a, b) == (best, n // best)


def test_check_modes_message_and_result():
    with pytest.raises(DistillError) as err:
        tt.check_modes((4, 7, 7), 784, "tt.in_modes")
    msg = str(err.value)
    assert msg.startswith(
        "the factorisation 4·7·7 = 196 of tt.in_modes does not multiply to the layer's input "
        "width 784; "
    )
    assert "\n" not in msg and "7·14·8" in msg
    assert tt.check_modes([4, np.int64(7), 7, 4], 784, "tt.in_modes") == (4, 7, 7, 4)
    with pytest.raises(DistillError, match="positive integers"):
        tt.check_modes((4, 0, 7), 784, "tt.in_modes")
    with pytest.raises(DistillError, match="non-empty list"):
        tt.check_modes("47", 784, "tt.in_modes")
    with pytest.raises(DistillError, match="output width 512"):
        tt.check_modes((8, 8), 512, "tt.out_modes", width="output")


# ---------------------------------------------------------------------------------------
# Low-rank baseline
# ---------------------------------------------------------------------------------------


def test_truncated_svd_is_the_best_rank_r_approximation():
    rng = np.random.default_rng(10)
    W = rng.normal(size=(30, 45))
    s = np.linalg.svd(W, compute_uv=False)
    for rank in (1, 5, 29):
        A, B = tt.truncated_svd(W, rank)
        assert A.shape == (30, rank) and B.shape == (rank, 45) and A.dtype == np.float64
        err = np.linalg.norm(W - A @ B)
        np.testing.assert_allclose(err, np.sqrt(np.sum(s[rank:] ** 2)), rtol=1e-10)
        # √σ on both sides: AᵀA = BBᵀ = diag(σ_1..σ_r)
        np.testing.assert_allclose(A.T @ A, np.diag(s[:rank]), atol=1e-10)
        np.testing.assert_allclose(B @ B.T, np.diag(s[:rank]), atol=1e-10)
    A, B = tt.truncated_svd(W, 100, dtype=np.float32)  # capped at min(N_out, N_in)
    assert A.shape == (30, 30) and A.dtype == np.float32
    np.testing.assert_allclose(A @ B, W, atol=1e-4)
    with pytest.raises(DistillError, match="rank"):
        tt.truncated_svd(W, 0)
