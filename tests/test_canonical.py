"""tn.canonical: canonical forms leave the tensor unchanged (dense float64) and make the cores
isometric; Schmidt values and entropies against SVDs of dense unfoldings and known states;
truncation error equals the discarded Schmidt weight; TT truncation equals TT-SVD; long
float32 chains stay finite."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill.errors import DistillError
from distill.tn import canonical as can
from distill.tn import mps
from distill.tn.tt import tt_svd

# (n, d, χ, m, k): χ > d^(k) near the ends (zero-padded boundary bonds), χ = 1, k at both ends.
CONFIGS = [
    (2, 2, 3, 2, 1),
    (3, 2, 1, 3, 1),
    (5, 3, 4, 3, 2),
    (6, 2, 5, 2, 1),
    (6, 2, 5, 2, 5),
    (7, 2, 6, 4, 3),
]


def random_params(seed, n, d, chi, m, k, dtype=np.float64):
    rng = np.random.default_rng(seed)
    shapes = [(d, chi), (k - 1, d, chi, chi), (chi, m, chi), (n - k - 1, d, chi, chi), (d, chi)]
    return mps.MPSParams(*(jnp.asarray(rng.standard_normal(s), dtype) for s in shapes))


def dense(params):
    return np.asarray(mps.to_dense(params), np.float64)


def dense_schmidt(T, bond, k):
    """Schmidt values of T (legs (d,)*n + (m,)) across bond `bond` of the chain (module notes)."""
    n = T.ndim - 1
    legs = list(range(k)) + [n] + list(range(k, n))  # chain order: sites 0..k-1, o, sites k..
    chain_t = np.transpose(T, legs)
    rows = math.prod(chain_t.shape[: bond + 1])
    s = np.linalg.svd(chain_t.reshape(rows, -1), compute_uv=False)
    s = s / np.linalg.norm(s)
    return s[s > 1e-12]


def left_gram(core):
    """Σ_{p,l} A[p,l,r] A[p,l,r'] for a stored site (p, l, r); for first (p, r); out (l, o, r)."""
    if core.ndim == 2:
        return np.einsum("pr,ps->rs", core, core)
    return np.einsum("plr,pls->rs", core, core)


def right_gram(core):
    if core.ndim == 2:
        return np.einsum("pl,pm->lm", core, core)
    return np.einsum("plr,pmr->lm", core, core)


def out_as_site(out):
    return np.einsum("lor->olr", out)  # (l, o, r) read as a site (p, l, r)


def assert_projector(g, rank):
    """g == diag(1 × rank, 0 × rest): isometric on the first `rank` bond channels."""
    want = np.zeros_like(g)
    want[np.arange(rank), np.arange(rank)] = 1.0
    np.testing.assert_allclose(g, want, atol=1e-12)


def side_dims(n, d, chi, m, k):
    """Stored bond dimensions after a left sweep (χ_t = min(χ, ∏ dims to the left))."""
    left = [1]
    for t in range(n):  # chain tensor t has physical size m at t == k, else d
        left.append(min(chi, left[-1] * (m if t == k else d)))
    right = [1]
    for t in range(n, 0, -1):
        right.append(min(chi, right[-1] * (m if t == k else d)))
    return left[1:], right[1:][::-1]  # left[t], right[t]: bond t after a left / right sweep


def chain_cores(params):
    """Stored cores in chain order (numpy): first, left..., out (as a (p, l, r) site), right..., last."""
    P = [np.asarray(a) for a in params]
    return [P[0]] + list(P[1]) + [out_as_site(P[2])] + list(P[3]) + [P[4]]


# ------------------------------------------------------------------ canonical forms


@pytest.mark.parametrize("n,d,chi,m,k", CONFIGS)
@pytest.mark.parametrize("form", ["left", "right", "mixed"])
def test_canonical_form_same_tensor_and_isometric(n, d, chi, m, k, form):
    with jax.enable_x64(True):
        params = random_params(n * 10 + k, n, d, chi, m, k)
        fn = {"left": can.left_canonical, "right": can.right_canonical,
              "mixed": can.mixed_canonical}[form]
        new, log_norm = fn(params)
        assert all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(new, params))
        T, T_new = dense(params), dense(new)
        np.testing.assert_allclose(np.exp(log_norm) * T_new, T, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(log_norm, np.log(np.linalg.norm(T)), rtol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(T_new), 1.0, rtol=1e-12)
        centre = {"left": n, "right": 0, "mixed": k}[form]
        lbond, rbond = side_dims(n, d, chi, m, k)
        cores = chain_cores(new)
        for t, core in enumerate(cores):
            if t < centre:
                assert_projector(left_gram(core), lbond[t])
            elif t > centre:
                assert_projector(right_gram(core), rbond[t - 1])
            else:
                np.testing.assert_allclose(np.linalg.norm(core), 1.0, rtol=1e-12)


def test_contract_unchanged_by_canonical_form():
    with jax.enable_x64(True):
        params = random_params(3, 6, 2, 4, 3, 2)
        phi = jnp.asarray(np.random.default_rng(4).uniform(size=(5, 6, 2)))
        new, log_norm = can.mixed_canonical(params)
        np.testing.assert_allclose(
            np.exp(log_norm) * np.asarray(mps.contract_dense(new, phi)),
            np.asarray(mps.contract_dense(params, phi)), rtol=1e-10)


# ------------------------------------------------------------------ Schmidt values, entropy


@pytest.mark.parametrize("n,d,chi,m,k", CONFIGS)
def test_schmidt_values_match_dense_unfoldings(n, d, chi, m, k):
    with jax.enable_x64(True):
        params = random_params(n + 100 * k, n, d, chi, m, k)
        T = dense(params)
        got = can.schmidt_values(params)
        assert len(got) == n
        for t, s in enumerate(got):
            want = dense_schmidt(T, t, k)
            assert s.shape == want.shape
            np.testing.assert_allclose(s, want, rtol=1e-9, atol=1e-12)
        ent = can.entanglement_entropy(params)
        want_ent = [-np.sum(s**2 * np.log(s**2)) for s in (dense_schmidt(T, t, k) for t in range(n))]
        np.testing.assert_allclose(ent, want_ent, rtol=1e-9, atol=1e-12)


def product_params(n, d, chi, m, k, seed=0):
    """A product state: every core nonzero only on bond channel 0."""
    rng = np.random.default_rng(seed)
    first = np.zeros((d, chi)); first[:, 0] = rng.standard_normal(d)
    left = np.zeros((k - 1, d, chi, chi)); left[:, :, 0, 0] = rng.standard_normal((k - 1, d))
    out = np.zeros((chi, m, chi)); out[0, :, 0] = rng.standard_normal(m)
    right = np.zeros((n - k - 1, d, chi, chi)); right[:, :, 0, 0] = rng.standard_normal((n - k - 1, d))
    last = np.zeros((d, chi)); last[:, 0] = rng.standard_normal(d)
    return mps.MPSParams(*(jnp.asarray(a) for a in (first, left, out, right, last)))


def test_entropy_of_product_state_is_zero():
    with jax.enable_x64(True):
        params = product_params(7, 3, 4, 5, 3)
        ent = can.entanglement_entropy(params)
        np.testing.assert_allclose(ent, 0.0, atol=1e-12)
        assert [len(s) for s in can.schmidt_values(params)] == [1] * 7


def test_entropy_of_bell_state_is_ln2():
    # T[p0, p1, o] = δ_{p0 p1} / √2 (m = 1): Schmidt values (1/√2, 1/√2) at both bonds.
    with jax.enable_x64(True):
        eye = np.eye(2)
        params = mps.MPSParams(
            first=jnp.asarray(eye / np.sqrt(2)), left=jnp.zeros((0, 2, 2, 2)),
            out=jnp.asarray(eye[:, None, :]), right=jnp.zeros((0, 2, 2, 2)),
            last=jnp.asarray(eye))
        for s in can.schmidt_values(params):
            np.testing.assert_allclose(s, [2**-0.5, 2**-0.5], rtol=1e-12)
        np.testing.assert_allclose(can.entanglement_entropy(params), [np.log(2)] * 2, rtol=1e-12)


def test_entropy_function():
    assert can.entropy([1.0, 0.0, 0.0]) == 0.0
    np.testing.assert_allclose(can.entropy([1.0, 1.0, 1.0]), np.log(3), rtol=1e-14)
    np.testing.assert_allclose(can.entropy([3.0, 4.0]),
                               -(0.36 * np.log(0.36) + 0.64 * np.log(0.64)), rtol=1e-14)
    with pytest.raises(DistillError, match="zero"):
        can.entropy([0.0, 0.0])


def test_bond_report_is_json_and_consistent():
    import json

    with jax.enable_x64(True):
        params = random_params(5, 5, 2, 3, 2, 2)
        rows = can.bond_report(params)
        json.dumps(rows)
        ent = can.entanglement_entropy(params)
    assert [r["bond"] for r in rows] == list(range(5))
    assert [r["sites_left"] for r in rows] == [1, 2, 2, 3, 4]
    assert [r["output_side"] for r in rows] == ["right", "right", "left", "left", "left"]
    np.testing.assert_allclose([r["entropy"] for r in rows], ent, rtol=1e-12)
    # bond 0: one site (d = 2) on the left → Schmidt rank ≤ 2, max entropy ln 2
    assert rows[0]["chi"] == 2 and rows[0]["max_entropy"] == pytest.approx(np.log(2))
    assert rows[2]["max_entropy"] == pytest.approx(np.log(3))  # χ = 3 caps it
    for r in rows:
        assert r["entropy"] <= r["max_entropy"] + 1e-12
        np.testing.assert_allclose(np.sum(np.square(r["schmidt"])), 1.0, rtol=1e-12)


# ------------------------------------------------------------------ truncation


def test_truncation_of_one_bond_discards_its_schmidt_tail():
    # n 6, d 2, χ 6, m 2, k 3: only bonds 2..4 can reach rank > 4 (8·… on both sides), so
    # max_bond 4 truncates those; the first one truncated (bond 2) discards exactly the tail
    # of its own Schmidt spectrum, and the total error is the sum of the discarded weights.
    with jax.enable_x64(True):
        params = random_params(21, 6, 2, 6, 2, 3)
        T = dense(params)
        spectra = can.schmidt_values(params)
        res = can.truncate(params, max_bond=4)
        assert res.params.first.shape == (2, 4) and res.params.out.shape == (4, 2, 4)
        assert res.ranks == tuple(min(4, len(s)) for s in spectra)
        first_cut = next(t for t, s in enumerate(spectra) if len(s) > 4)
        assert all(w == 0 for w in res.discarded[:first_cut])
        tail = spectra[first_cut][4:]
        np.testing.assert_allclose(res.discarded[first_cut], np.sum(tail**2), rtol=1e-10)
        T_new = np.exp(res.log_norm) * dense(res.params)
        err2 = np.sum((T - T_new) ** 2) / np.sum(T**2)
        assert np.sum(res.discarded) > 1e-3  # something was really cut
        np.testing.assert_allclose(err2, np.sum(res.discarded), rtol=1e-9)
        # and the result is mixed-canonical (centre at the output core)
        cores = chain_cores(res.params)
        for t, core in enumerate(cores):
            if t < 3:
                g = left_gram(core)
                np.testing.assert_allclose(g, np.diag(np.diag(g)), atol=1e-12)
                assert set(np.round(np.diag(g), 10)) <= {0.0, 1.0}
            elif t > 3:
                g = right_gram(core)
                np.testing.assert_allclose(g, np.diag(np.diag(g)), atol=1e-12)
        np.testing.assert_allclose(np.sum(np.asarray(res.params.out) ** 2),
                                   1 - np.sum(res.discarded), rtol=1e-10)


def test_single_bond_eckart_young():
    # n 2: the only truncatable bonds are the two around the output core; the best rank-r
    # approximation across bond 0 (Eckart–Young) has squared error Σ_{i>r} s_i².
    with jax.enable_x64(True):
        params = random_params(8, 2, 5, 5, 3, 1)
        T = dense(params)
        s0 = dense_schmidt(T, 0, 1)
        res = can.truncate(params, max_bond=2)
        np.testing.assert_allclose(res.discarded[0], np.sum(s0[2:] ** 2), rtol=1e-10)
        # Eckart–Young by SVD of the unfolding directly
        M = np.moveaxis(T, 2, 1).reshape(5, -1) / np.linalg.norm(T)
        u, s, vt = np.linalg.svd(M, full_matrices=False)
        best = (u[:, :2] * s[:2]) @ vt[:2]
        np.testing.assert_allclose(np.sum((M - best) ** 2), res.discarded[0], rtol=1e-10)


@pytest.mark.parametrize("eps", [0.05, 0.2, 0.5])
def test_truncation_to_eps_meets_the_bound(eps):
    with jax.enable_x64(True):
        params = random_params(31, 7, 2, 6, 3, 3)
        T = dense(params)
        res = can.truncate(params, eps=eps)
        T_new = np.exp(res.log_norm) * dense(res.params)
        err = np.linalg.norm(T - T_new) / np.linalg.norm(T)
        np.testing.assert_allclose(err**2, np.sum(res.discarded), rtol=1e-9, atol=1e-15)
        assert err <= eps + 1e-12
        assert res.params.out.shape[0] == max(res.ranks)
        # each bond kept the fewest values its share ε²/n allows
        for t, s in enumerate(can.schmidt_values(params)):
            assert res.ranks[t] <= len(s)
        assert res.discarded.max() <= eps**2 / 7 + 1e-15


def test_truncation_without_knobs_is_exact_and_shrinks_padding():
    with jax.enable_x64(True):
        params = random_params(41, 4, 2, 9, 2, 2)  # χ 9 > what 4 sites of d 2 can hold
        res = can.truncate(params)
        # chain legs d d | m | d d = 2 2 2 2 2: bond ranks min(left, right) = 2, 4, 4, 2
        assert res.ranks == (2, 4, 4, 2)
        assert res.params.first.shape == (2, 4)
        np.testing.assert_allclose(np.exp(res.log_norm) * dense(res.params), dense(params),
                                   rtol=1e-10, atol=1e-12)
        grow = can.truncate(params, max_bond=12)  # padding up is allowed
        assert grow.params.out.shape == (12, 2, 12)
        np.testing.assert_allclose(np.exp(grow.log_norm) * dense(grow.params), dense(params),
                                   rtol=1e-10, atol=1e-12)


def test_truncation_refuses_bad_knobs():
    params = random_params(1, 3, 2, 2, 2, 1, np.float32)
    with pytest.raises(DistillError, match="max_bond"):
        can.truncate(params, max_bond=0)
    with pytest.raises(DistillError, match="eps"):
        can.truncate(params, eps=1.5)
    with pytest.raises(DistillError, match="left"):
        can.left_canonical(params._replace(left=jnp.zeros((1, 2, 3, 3))))
    with pytest.raises(DistillError, match="zero"):
        can.mixed_canonical(jax.tree.map(jnp.zeros_like, params))


# ------------------------------------------------------------------ long chains


def test_long_chain_float32_stays_finite_and_matches_contraction():
    n, d, chi, m, k = 1000, 2, 6, 3, 500
    rng = np.random.default_rng(7)
    eye = np.eye(chi)

    def bulk(count):
        return np.einsum("p,lr->plr", np.ones(d), eye) + 0.3 * rng.standard_normal((count, d, chi, chi))

    params = mps.MPSParams(*(jnp.asarray(a, jnp.float32) for a in (
        rng.standard_normal((d, chi)), bulk(k - 1), rng.standard_normal((chi, m, chi)),
        bulk(n - k - 1), rng.standard_normal((d, chi)))))
    phi = jnp.asarray(rng.uniform(size=(4, n, d)), jnp.float32)
    z, ln = mps.contract(params, phi)
    for fn in (can.mixed_canonical, can.left_canonical):
        new, log_norm = fn(params)
        assert all(a.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(a))) for a in new)
        assert np.isfinite(log_norm) and abs(log_norm) > 50  # ‖T‖ itself is far out of range
        z2, ln2 = mps.contract(new, phi)
        # same value: z / |z| equal, log-norms add up
        total = np.asarray(ln) + np.log(np.linalg.norm(np.asarray(z), axis=1))
        total2 = log_norm + np.asarray(ln2) + np.log(np.linalg.norm(np.asarray(z2), axis=1))
        np.testing.assert_allclose(total2, total, rtol=1e-4)
        np.testing.assert_allclose(
            np.asarray(z2) / np.linalg.norm(np.asarray(z2), axis=1, keepdims=True),
            np.asarray(z) / np.linalg.norm(np.asarray(z), axis=1, keepdims=True), atol=2e-3)
    ent = can.entanglement_entropy(params)
    assert ent.shape == (n,) and np.all(np.isfinite(ent))
    assert np.all(ent >= -1e-12) and np.all(ent <= np.log(chi) + 1e-9)
    res = can.truncate(params, max_bond=3)
    assert np.all(np.isfinite(res.discarded)) and res.params.out.shape == (3, m, 3)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in res.params)


# ------------------------------------------------------------------ TT-matrices


def random_tt(seed, out_modes, in_modes, rank):
    rng = np.random.default_rng(seed)
    d = len(in_modes)
    ranks = [1] + [rank] * (d - 1) + [1]
    return [rng.standard_normal((ranks[i], out_modes[i], in_modes[i], ranks[i + 1]))
            for i in range(d)]


def tt_unfolding_schmidt(W, out_modes, in_modes, cut):
    d = len(in_modes)
    inter = tuple(ax for k in range(d) for ax in (k, d + k))
    C = np.transpose(W.reshape(tuple(out_modes) + tuple(in_modes)), inter)
    rows = math.prod(out_modes[:cut]) * math.prod(in_modes[:cut])
    s = np.linalg.svd(C.reshape(rows, -1), compute_uv=False)
    s = s / np.linalg.norm(s)
    return s[s > 1e-12]


def test_tt_canonical_forms():
    # rank 7 > b_1·a_1 = 6 and > b_3·a_3 = 4: the left sweep shrinks the first cut to 6, the
    # right sweep the last cut to 4 (a QR of a wide matrix has only as many columns as rows)
    cores = random_tt(1, (2, 3, 2), (3, 2, 2), 7)
    W = dense_tt(cores)
    for fn, iso in ((can.tt_left_canonical, "left"), (can.tt_right_canonical, "right")):
        new = fn(cores)
        np.testing.assert_allclose(dense_tt(new), W, rtol=1e-10, atol=1e-12)
        idx = range(len(new) - 1) if iso == "left" else range(1, len(new))
        for i in idx:
            c = new[i]
            g = (np.einsum("ljis,ljit->st", c, c) if iso == "left"
                 else np.einsum("ljir,mjir->lm", c, c))
            np.testing.assert_allclose(g, np.eye(g.shape[0]), atol=1e-12)
        want = (6, 7) if iso == "left" else (7, 4)
        assert (new[0].shape[3], new[-1].shape[0]) == want


def dense_tt(cores):
    """Reference W (N_out, N_in) from TT cores by explicit einsum (independent of tt_to_dense)."""
    acc = np.asarray(cores[0], np.float64)[0]  # (b, a, r)
    for c in cores[1:]:
        acc = np.einsum("jir,rbas->jbias", acc, np.asarray(c, np.float64))
        j, b, i, a, s = acc.shape
        acc = acc.reshape(j * b, i * a, s)
    return acc[..., 0]


def test_tt_schmidt_values_match_unfoldings_and_product_is_zero():
    out_modes, in_modes = (2, 3, 2, 2), (3, 2, 2, 2)
    cores = random_tt(2, out_modes, in_modes, 4)
    W = dense_tt(cores)
    got = can.tt_schmidt_values(cores)
    assert len(got) == 3
    for cut, s in enumerate(got, start=1):
        np.testing.assert_allclose(s, tt_unfolding_schmidt(W, out_modes, in_modes, cut),
                                   rtol=1e-9, atol=1e-12)
    product = random_tt(3, out_modes, in_modes, 1)
    np.testing.assert_allclose(can.tt_entanglement_entropy(product), 0.0, atol=1e-12)


@pytest.mark.parametrize("max_rank,eps", [(3, None), (None, 0.3), (2, 0.01)])
def test_tt_truncate_equals_tt_svd_of_dense(max_rank, eps):
    out_modes, in_modes = (2, 3, 2, 2), (3, 2, 2, 2)
    W = np.random.default_rng(5).standard_normal((24, 24))
    exact = tt_svd(W, in_modes, out_modes)  # exact TT of W, float64
    res = can.tt_truncate(exact, max_rank=max_rank, eps=eps)
    ref = tt_svd(W, in_modes, out_modes, max_rank=max_rank, eps=eps)
    assert res.ranks == tuple([1] + [c.shape[3] for c in ref])
    W_ref = dense_tt(ref)
    W_new = dense_tt(res.cores)
    np.testing.assert_allclose(W_new, W_ref, rtol=1e-8, atol=1e-10)
    err2 = np.sum((W - W_new) ** 2) / np.sum(W**2)
    np.testing.assert_allclose(err2, np.sum(res.discarded), rtol=1e-9)
    if eps is not None and max_rank is None:
        assert np.sqrt(err2) <= eps


def test_tt_refuses_bad_cores():
    with pytest.raises(DistillError, match="boundary"):
        can.tt_left_canonical([np.ones((2, 2, 2, 1))])
    with pytest.raises(DistillError, match="does not match"):
        can.tt_schmidt_values([np.ones((1, 2, 2, 3)), np.ones((2, 2, 2, 1))])
    with pytest.raises(DistillError, match="max_rank"):
        can.tt_truncate([np.ones((1, 2, 2, 1))], max_rank=-1)
