"""distill.tn.cp / tucker / tr: decompositions recover exactly low-rank tensors, products equal
references written from the definitions (float64), TR-SVD agrees with TensorLy, argument errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorly as tl
from tensorly.decomposition import parafac, tensor_ring

from distill.errors import DistillError
from distill.tn import cp, tr, tucker


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def conv_loops(x, K, strides, pads):
    """Cross-correlation from the definition: y[b, u, v, f] = Σ_{h,w,c} K[h, w, c, f] ·
    x_pad[b, u·sh + h, v·sw + w, c], x_pad zero-padded by pads ((top, bottom), (left, right))."""
    (top, bottom), (left, right) = pads
    xp = np.pad(np.asarray(x), ((0, 0), (top, bottom), (left, right), (0, 0)))
    kh, kw, _, c_out = K.shape
    sh, sw = strides
    n_u = (xp.shape[1] - kh) // sh + 1
    n_v = (xp.shape[2] - kw) // sw + 1
    y = np.zeros((x.shape[0], n_u, n_v, c_out))
    for u, v in itertools.product(range(n_u), range(n_v)):
        patch = xp[:, u * sh : u * sh + kh, v * sw : v * sw + kw, :]
        y[:, u, v, :] = np.einsum("bhwc,hwcf->bf", patch, np.asarray(K))
    return y


CONV_CASES = [
    ((1, 1), ((0, 0), (0, 0))),
    ((2, 1), ((1, 1), (1, 1))),
    ((1, 3), ((2, 0), (0, 1))),
    ((2, 2), "SAME"),
    ((3, 2), "VALID"),
]


# ---------------------------------------------------------------------------------------
# The dense convolution reference itself
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("strides,padding", CONV_CASES)
def test_conv2d_is_the_cross_correlation_of_the_definition(strides, padding):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(2, 9, 8, 3))
        K = rng.normal(size=(3, 2, 3, 4))
        pads = tucker.resolve_padding(padding, (9, 8), (3, 2), strides)
        got = tucker.conv2d(jnp.asarray(x), jnp.asarray(K), strides=strides, padding=padding)
        np.testing.assert_allclose(got, conv_loops(x, K, strides, pads), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# CP
# ---------------------------------------------------------------------------------------


def random_factors(rng, shape, rank):
    return [rng.normal(size=(n, rank)) for n in shape]


def test_cp_reconstruct_is_the_sum_of_outer_products():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        factors = random_factors(rng, (3, 4, 2), 5)
        want = np.zeros((3, 4, 2))
        for idx in np.ndindex(3, 4, 2):
            want[idx] = sum(
                np.prod([factors[m][idx[m], k] for m in range(3)]) for k in range(5)
            )
        got = cp.cp_reconstruct([jnp.asarray(f) for f in factors])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got, tl.cp_to_tensor((np.ones(5), factors)), rtol=1e-12)
        np.testing.assert_allclose(cp.cp_norm(factors), np.linalg.norm(want), rtol=1e-12)


@pytest.mark.parametrize("shape,rank", [((4, 5, 6), 3), ((3, 3, 8, 6), 5), ((4, 2, 5, 3), 4)])
def test_cp_als_recovers_an_exactly_low_rank_tensor(shape, rank):
    with jax.enable_x64(True):
        T = np.asarray(cp.cp_reconstruct(random_factors(np.random.default_rng(2), shape, rank)))
        got = cp.cp_decompose(T, rank, n_iter_max=3000, tol=1e-12)
        assert [f.shape for f in got] == [(n, rank) for n in shape]
        assert got[0].dtype == np.float64
        assert rel(cp.cp_reconstruct(got), T) < 1e-10
        # weights absorbed evenly: a component has the same column norm in every factor
        norms = np.stack([np.linalg.norm(f, axis=0) for f in got])
        np.testing.assert_allclose(norms, np.broadcast_to(norms[0], norms.shape), rtol=1e-10)


def test_cp_weight_absorption_keeps_the_tensorly_tensor():
    rng = np.random.default_rng(3)
    weights = np.array([2.0, -0.5, 3.0])
    factors = random_factors(rng, (3, 4, 5), 3)
    balanced = cp._balance(weights, factors)
    np.testing.assert_allclose(
        tl.cp_to_tensor((np.ones(3), balanced)), tl.cp_to_tensor((weights, factors)), rtol=1e-12
    )


def test_cp_als_on_a_generic_tensor_is_a_least_squares_fit_no_worse_than_tensorly_default():
    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        T = rng.normal(size=(5, 4, 6))
        ours = rel(cp.cp_reconstruct(cp.cp_decompose(T, 3, n_iter_max=300, tol=1e-10)), T)
        with tl.backend_context("numpy"):
            theirs = rel(tl.cp_to_tensor(parafac(T, 3, init="svd", n_iter_max=300)), T)
        assert 0.3 < ours < 1.0  # a random tensor is far from rank 3
        assert ours <= theirs + 1e-6


def test_cp_dense_layer_products_match_the_definition():
    with jax.enable_x64(True):
        rng = np.random.default_rng(5)
        in_modes, out_modes, R = (2, 3, 2), (4, 3), 4
        A = random_factors(rng, in_modes, R)
        B = random_factors(rng, out_modes, R)
        W = np.zeros((12, 12))
        for j, i in np.ndindex(12, 12):
            jj, ii = np.unravel_index(j, out_modes), np.unravel_index(i, in_modes)
            W[j, i] = sum(
                np.prod([B[q][jj[q], k] for q in range(2)]) * np.prod([A[p][ii[p], k] for p in range(3)])
                for k in range(R)
            )
        np.testing.assert_allclose(cp.cp_to_dense(A, B), W, rtol=1e-12, atol=1e-12)
        x = rng.normal(size=(2, 3, 12))
        np.testing.assert_allclose(cp.cp_matvec(A, B, jnp.asarray(x)), x @ W.T, rtol=1e-12, atol=1e-12)
        # an exactly rank-R W comes back from its CP decomposition
        in_f, out_f = cp.cp_decompose_dense(W, in_modes, out_modes, R, n_iter_max=3000, tol=1e-12)
        assert rel(cp.cp_to_dense(in_f, out_f), W) < 1e-10


@pytest.mark.parametrize("separable", [True, False])
@pytest.mark.parametrize("strides,padding", CONV_CASES)
def test_cp_conv_equals_the_dense_convolution(separable, strides, padding):
    with jax.enable_x64(True):
        rng = np.random.default_rng(6)
        kh, kw, c_in, c_out, R = 3, 2, 4, 5, 3
        H, V, Ac, Af = random_factors(rng, (kh, kw, c_in, c_out), R)
        K = np.einsum("hk,wk,ck,fk->hwcf", H, V, Ac, Af)
        if separable:
            factors = [H, V, Ac, Af]
        else:
            factors = [np.einsum("hk,wk->hwk", H, V).reshape(kh * kw, R), Ac, Af]
        np.testing.assert_allclose(cp.cp_to_kernel(factors, (kh, kw)), K, rtol=1e-12, atol=1e-12)
        x = jnp.asarray(rng.normal(size=(2, 9, 8, c_in)))
        got = cp.cp_conv(x, [jnp.asarray(f) for f in factors], kernel_size=(kh, kw),
                         strides=strides, padding=padding)
        want = tucker.conv2d(x, jnp.asarray(K), strides=strides, padding=padding)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("separable", [True, False])
def test_cp_kernel_decomposition_recovers_a_low_rank_kernel(separable):
    with jax.enable_x64(True):
        rng = np.random.default_rng(7)
        K = np.einsum("hk,wk,ck,fk->hwcf", *random_factors(rng, (3, 3, 6, 4), 3))
        factors = cp.cp_decompose_kernel(K, 3, separable=separable, n_iter_max=3000, tol=1e-12)
        assert len(factors) == (4 if separable else 3)
        assert rel(cp.cp_to_kernel(factors, (3, 3)), K) < 1e-10


# ---------------------------------------------------------------------------------------
# Tucker
# ---------------------------------------------------------------------------------------


def random_tucker(rng, shape, ranks):
    core = rng.normal(size=ranks)
    factors = [np.linalg.qr(rng.normal(size=(n, r)))[0] for n, r in zip(shape, ranks)]
    return core, factors


def test_tucker_reconstruct_is_the_multilinear_product():
    with jax.enable_x64(True):
        rng = np.random.default_rng(8)
        core = rng.normal(size=(2, 3, 2))
        U = [rng.normal(size=(n, r)) for n, r in [(4, 2), (5, 3), (3, 2)]]
        want = np.einsum("abc,ia,jb,kc->ijk", core, *U)
        np.testing.assert_allclose(tucker.tucker_reconstruct(core, U), want, rtol=1e-12)
        np.testing.assert_allclose(tl.tucker_to_tensor((core, U)), want, rtol=1e-12)
        np.testing.assert_allclose(tucker.tucker_norm(core, U), np.linalg.norm(want), rtol=1e-12)
        # partial: modes (0, 2) only, the middle axis keeps its full size
        partial = tucker.tucker_reconstruct(core, [U[0], U[2]], modes=(0, 2))
        np.testing.assert_allclose(partial, np.einsum("abc,ia,kc->ibk", core, U[0], U[2]), rtol=1e-12)


def test_hosvd_is_the_leading_singular_subspaces_of_the_unfoldings():
    rng = np.random.default_rng(9)
    T = rng.normal(size=(5, 6, 4))
    ranks = (3, 2, 3)
    core, factors = tucker.tucker_decompose(T, ranks, method="hosvd")
    for mode, (U, r) in enumerate(zip(factors, ranks)):
        unfolding = np.moveaxis(T, mode, 0).reshape(T.shape[mode], -1)
        left = np.linalg.svd(unfolding)[0][:, :r]
        np.testing.assert_allclose(U @ U.T, left @ left.T, atol=1e-12)  # same projector
    want_core = np.einsum("ijk,ia,jb,kc->abc", T, *factors)
    np.testing.assert_allclose(core, want_core, atol=1e-12)


@pytest.mark.parametrize("method", ["hosvd", "hooi"])
def test_tucker_recovers_an_exact_low_multilinear_rank_tensor(method):
    with jax.enable_x64(True):
        rng = np.random.default_rng(10)
        core, U = random_tucker(rng, (6, 5, 7), (2, 3, 2))
        T = np.einsum("abc,ia,jb,kc->ijk", core, *U)
        got_core, got_U = tucker.tucker_decompose(T, (2, 3, 2), method=method)
        assert got_core.shape == (2, 3, 2)
        assert rel(tucker.tucker_reconstruct(got_core, got_U), T) < 1e-12
        for f in got_U:
            np.testing.assert_allclose(f.T @ f, np.eye(f.shape[1]), atol=1e-12)


def test_hooi_fits_at_least_as_well_as_hosvd():
    with jax.enable_x64(True):
        T = np.random.default_rng(11).normal(size=(6, 7, 5))
        errs = {
            m: rel(tucker.tucker_reconstruct(*tucker.tucker_decompose(T, (2, 3, 2), method=m)), T)
            for m in ("hosvd", "hooi")
        }
        assert errs["hooi"] <= errs["hosvd"] + 1e-12
        assert errs["hooi"] < 0.99


def test_tucker_max_ranks_lower_what_cannot_be_used():
    assert tucker.tucker_max_ranks((10, 7), (5, 3)) == (3, 3)  # a matrix: r_in = r_out
    assert tucker.tucker_max_ranks((10, 7), 50) == (7, 7)
    assert tucker.tucker_max_ranks((3, 3, 16, 8), (20, 40), (2, 3)) == (16, 8)
    assert tucker.tucker_max_ranks((1, 1, 16, 8), (16, 2), (2, 3)) == (2, 2)  # 1×1 kernel: a matrix
    assert tucker.tucker_max_ranks((3, 3, 16, 8), (16, 1), (2, 3)) == (9, 1)  # r_in ≤ kh·kw·r_out


def test_tucker2_dense_is_the_truncated_svd():
    with jax.enable_x64(True):
        rng = np.random.default_rng(12)
        W = rng.normal(size=(9, 14))
        U_in, core, U_out = tucker.tucker2_decompose_dense(W, 4)
        assert (U_in.shape, core.shape, U_out.shape) == ((14, 4), (4, 4), (9, 4))
        s = np.linalg.svd(W, compute_uv=False)
        Wr = np.asarray(tucker.tucker2_to_dense(U_in, core, U_out))
        np.testing.assert_allclose(np.linalg.norm(W - Wr), np.sqrt(np.sum(s[4:] ** 2)), rtol=1e-10)
        np.testing.assert_allclose(Wr, U_out @ core @ U_in.T, rtol=1e-12)
        x = rng.normal(size=(3, 14))
        np.testing.assert_allclose(
            tucker.tucker2_matvec(U_in, core, U_out, jnp.asarray(x)), x @ Wr.T, rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("strides,padding", CONV_CASES)
def test_tucker2_conv_equals_the_dense_convolution(strides, padding):
    with jax.enable_x64(True):
        rng = np.random.default_rng(13)
        U_in, core, U_out = rng.normal(size=(5, 3)), rng.normal(size=(3, 2, 3, 2)), rng.normal(size=(4, 2))
        K = np.einsum("ck,hwkm,fm->hwcf", U_in, core, U_out)
        np.testing.assert_allclose(tucker.tucker2_to_kernel(U_in, core, U_out), K, rtol=1e-12)
        x = jnp.asarray(rng.normal(size=(2, 9, 8, 5)))
        got = tucker.tucker2_conv(x, U_in, core, U_out, strides=strides, padding=padding)
        want = tucker.conv2d(x, jnp.asarray(K), strides=strides, padding=padding)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("method", ["hosvd", "hooi"])
def test_tucker2_kernel_decomposition_recovers_an_exact_kernel(method):
    with jax.enable_x64(True):
        rng = np.random.default_rng(14)
        U_in, U_out = np.linalg.qr(rng.normal(size=(8, 3)))[0], np.linalg.qr(rng.normal(size=(6, 2)))[0]
        K = np.einsum("ck,hwkm,fm->hwcf", U_in, rng.normal(size=(3, 3, 3, 2)), U_out)
        got = tucker.tucker2_decompose_kernel(K, (3, 2), method=method)
        assert [a.shape for a in got] == [(8, 3), (3, 3, 3, 2), (6, 2)]
        assert rel(tucker.tucker2_to_kernel(*got), K) < 1e-12


# ---------------------------------------------------------------------------------------
# Tensor ring
# ---------------------------------------------------------------------------------------


def random_ring(rng, shape, ranks):
    d = len(shape)
    return [rng.normal(size=(ranks[k], shape[k], ranks[(k + 1) % d])) for k in range(d)]


def test_tr_reconstruct_is_the_trace_of_the_core_products():
    with jax.enable_x64(True):
        rng = np.random.default_rng(15)
        cores = random_ring(rng, (3, 2, 4), (2, 3, 2))
        want = np.zeros((3, 2, 4))
        for idx in np.ndindex(3, 2, 4):
            want[idx] = np.trace(cores[0][:, idx[0], :] @ cores[1][:, idx[1], :] @ cores[2][:, idx[2], :])
        got = tr.tr_reconstruct([jnp.asarray(c) for c in cores])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(tl.tr_to_tensor(cores), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(tr.tr_norm(cores), np.linalg.norm(want), rtol=1e-12)
        assert tr.tr_ranks(cores) == (2, 3, 2)


@pytest.mark.parametrize("shape,ranks", [((4, 5, 6, 3), (2, 3, 2, 3)), ((3, 4, 2, 5, 3), (2, 2, 2, 2, 2))])
def test_tr_svd_reconstructs_an_exact_ring_from_every_start(shape, ranks):
    with jax.enable_x64(True):
        T = np.asarray(tr.tr_reconstruct(random_ring(np.random.default_rng(16), shape, ranks)))
        for start in range(len(shape)):
            cores = tr.tr_decompose(T, start=start)
            assert [c.shape[1] for c in cores] == list(shape)
            assert rel(tr.tr_reconstruct(cores), T) < 1e-10
            # the first split keeps r_start·r_{start+1} ≤ n_start
            d = len(shape)
            assert cores[start].shape[0] * cores[start].shape[2] <= shape[start]
            assert cores[(start - 1) % d].shape[2] == cores[start].shape[0]


@pytest.mark.parametrize("ranks,start", [((1, 3, 4, 2), 0), ((3, 4, 1, 2), 2)])
def test_tr_svd_with_a_train_shaped_ring_and_its_ranks_as_caps_is_exact(ranks, start):
    """A ring with a bond of size 1 is a tensor train; started there, TR-SVD is TT-SVD and the
    generating ranks as per-bond caps (rotated with the start) reproduce it exactly."""
    with jax.enable_x64(True):
        T = np.asarray(tr.tr_reconstruct(random_ring(np.random.default_rng(17), (4, 5, 6, 3), ranks)))
        cores = tr.tr_decompose(T, rank=ranks, start=start)
        assert tr.tr_ranks(cores) == ranks
        assert rel(tr.tr_reconstruct(cores), T) < 1e-12


@pytest.mark.parametrize("start", [0, 1, 2, 3])
def test_tr_svd_agrees_with_tensorly(start):
    with jax.enable_x64(True):
        T = np.random.default_rng(18).normal(size=(6, 5, 4, 7))
        ranks = [2, 2, 2, 2]
        ours = tr.tr_decompose(T, rank=ranks, start=start)
        with tl.backend_context("numpy"):
            theirs = tensor_ring(T, rank=ranks + ranks[:1], mode=start)
        assert [c.shape for c in ours] == [f.shape for f in theirs]
        np.testing.assert_allclose(tr.tr_reconstruct(ours), tl.tr_to_tensor(theirs), rtol=1e-10, atol=1e-12)
        assert rel(tr.tr_reconstruct(ours), T) > 0.5  # a truncated fit, not a trivial exact one


def test_tr_svd_keeps_its_accuracy_bound():
    with jax.enable_x64(True):
        rng = np.random.default_rng(19)
        # a tensor with decaying structure: a low-rank ring plus small noise
        T = np.asarray(tr.tr_reconstruct(random_ring(rng, (6, 5, 4, 6), (2, 2, 2, 2)))) + 0.05 * rng.normal(size=(6, 5, 4, 6))
        sizes = []
        for eps in (0.01, 0.1, 0.3, 0.6):
            cores = tr.tr_decompose(T, eps=eps)
            assert rel(tr.tr_reconstruct(cores), T) <= eps + 1e-12
            sizes.append(sum(c.size for c in cores))
        assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]


def test_tr_dense_layer_products_match_the_definition():
    with jax.enable_x64(True):
        rng = np.random.default_rng(20)
        in_modes, out_modes = (3, 4), (2, 3, 2)
        cores = random_ring(rng, in_modes + out_modes, (2, 3, 2, 2, 3))
        A, B = cores[:2], cores[2:]
        W = np.zeros((12, 12))
        for j, i in np.ndindex(12, 12):
            ii, jj = np.unravel_index(i, in_modes), np.unravel_index(j, out_modes)
            mats = [A[p][:, ii[p], :] for p in range(2)] + [B[q][:, jj[q], :] for q in range(3)]
            W[j, i] = np.trace(np.linalg.multi_dot(mats))
        np.testing.assert_allclose(tr.tr_to_dense(A, B), W, rtol=1e-12, atol=1e-12)
        x = rng.normal(size=(2, 3, 12))
        np.testing.assert_allclose(tr.tr_matvec(A, B, jnp.asarray(x)), x @ W.T, rtol=1e-12, atol=1e-12)
        in_c, out_c = tr.tr_decompose_dense(W, in_modes, out_modes)
        assert rel(tr.tr_to_dense(in_c, out_c), W) < 1e-10


@pytest.mark.parametrize("strides,padding", CONV_CASES)
def test_tr_conv_equals_the_dense_convolution(strides, padding):
    with jax.enable_x64(True):
        rng = np.random.default_rng(21)
        kh, kw = 3, 2
        in_modes, out_modes = (2, 3), (4,)
        cores = random_ring(rng, in_modes + (kh * kw,) + out_modes, (2, 3, 2, 3))
        A, S, B = cores[:2], cores[2], cores[3:]
        K = np.zeros((kh, kw, 6, 4))
        for h, w, c, f in np.ndindex(kh, kw, 6, 4):
            cc = np.unravel_index(c, in_modes)
            mats = [A[0][:, cc[0], :], A[1][:, cc[1], :], S[:, h * kw + w, :], B[0][:, f, :]]
            K[h, w, c, f] = np.trace(np.linalg.multi_dot(mats))
        np.testing.assert_allclose(tr.tr_to_kernel(A, S, B, (kh, kw)), K, rtol=1e-12, atol=1e-12)
        x = jnp.asarray(rng.normal(size=(2, 9, 8, 6)))
        got = tr.tr_conv(x, A, S, B, kernel_size=(kh, kw), strides=strides, padding=padding)
        want = tucker.conv2d(x, jnp.asarray(K), strides=strides, padding=padding)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
        in_c, s_c, out_c = tr.tr_decompose_kernel(K, in_modes, out_modes)
        assert rel(tr.tr_to_kernel(in_c, s_c, out_c, (kh, kw)), K) < 1e-10


# ---------------------------------------------------------------------------------------
# Argument errors: one line, naming the argument
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: cp.cp_decompose(np.ones((2, 3)), 0), "rank must be an integer >= 1"),
        (lambda: cp.cp_decompose(np.ones(3), 2), "order >= 2"),
        (lambda: cp.cp_to_dense([np.ones((2, 3))], [np.ones((2, 4))]), "factor 1 must have shape"),
        (lambda: cp.cp_decompose_dense(np.ones((6, 8)), (2, 3), (2, 3), 2), "in_modes"),
        (lambda: cp.cp_conv(jnp.ones((1, 4, 4, 2)), [np.ones((9, 2)), np.ones((2, 2)), np.ones((3, 2))]),
         "need kernel_size"),
        (lambda: tucker.tucker_decompose(np.ones((3, 3)), 2, method="svd"), "method must be one of"),
        (lambda: tucker.tucker_decompose(np.ones((3, 3)), (1, 2, 3)), "Tucker rank"),
        (lambda: tucker.tucker2_decompose_kernel(np.ones((3, 3, 2)), 2), "HWIO"),
        (lambda: tucker.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), padding="FULL"), "padding must be"),
        (lambda: tucker.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), strides=0), "strides must be"),
        (lambda: tr.tr_decompose(np.ones((2, 3, 4)), rank=(2, 2)), "list of 3 integers"),
        (lambda: tr.tr_decompose(np.ones((2, 3, 4)), eps=-1.0), "eps must be"),
        (lambda: tr.tr_decompose(np.ones((2, 3, 4)), start=3), "start must be"),
        (lambda: tr.tr_reconstruct([np.ones((2, 3, 2)), np.ones((3, 2, 2))]), "does not match"),
        (lambda: tr.tr_conv(jnp.ones((1, 4, 4, 2)), [np.ones((1, 2, 1))], np.ones((1, 4, 1)), [np.ones((1, 2, 1))],
                            kernel_size=3), "spatial core has 4 positions"),
    ],
)
def test_mistakes_raise_one_line_distill_errors(call, match):
    with pytest.raises(DistillError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
