"""analysis.weight_entanglement: spectra against SVDs of explicitly built unfoldings; product
W has zero entropy; a TT of rank r needs ranks ≤ r; a random W sits at Page's entropy; the
rank bracket is ordered and monotone in ε, and TT-SVD honours it; orderings permute as
documented and can undo a scrambling."""

import json
import math

import numpy as np
import pytest

from distill.analysis import weight_entanglement as we
from distill.data.orderings import site_order
from distill.errors import DistillError
from distill.tn.tt import tt_svd


def tt_dense(cores):
    """W (N_out, N_in) from TT cores (r, b, a, r) by explicit einsum."""
    acc = cores[0][0]
    for c in cores[1:]:
        acc = np.einsum("jir,rbas->jbias", acc, c)
        j, b, i, a, s = acc.shape
        acc = acc.reshape(j * b, i * a, s)
    return acc[..., 0]


def random_tt(seed, out_modes, in_modes, rank):
    rng = np.random.default_rng(seed)
    r = [1] + [rank] * (len(in_modes) - 1) + [1]
    return [rng.standard_normal((r[k], out_modes[k], in_modes[k], r[k + 1]))
            for k in range(len(in_modes))]


def unfolding_by_loops(W, out_modes, in_modes, cut):
    """The cut-th unfolding built entry by entry from the index definitions (small sizes)."""
    d = len(in_modes)
    sizes = [b * a for b, a in zip(out_modes, in_modes)]
    M = np.zeros((math.prod(sizes[:cut]), math.prod(sizes[cut:])))
    for j in range(W.shape[0]):
        jj = np.unravel_index(j, out_modes)
        for i in range(W.shape[1]):
            ii = np.unravel_index(i, in_modes)
            pair = [jj[k] * in_modes[k] + ii[k] for k in range(d)]  # (b_k a_k) row-major
            row = np.ravel_multi_index(pair[:cut], sizes[:cut])
            col = np.ravel_multi_index(pair[cut:], sizes[cut:])
            M[row, col] = W[j, i]
    return M


def test_spectra_match_unfoldings_built_by_hand():
    out_modes, in_modes = (2, 3, 2), (3, 2, 2)
    W = np.random.default_rng(0).standard_normal((12, 12))
    got = we.cut_schmidt_values(W, in_modes, out_modes)
    for cut, s in enumerate(got, start=1):
        want = np.linalg.svd(unfolding_by_loops(W, out_modes, in_modes, cut), compute_uv=False)
        np.testing.assert_allclose(s, want / np.linalg.norm(W), rtol=1e-12)
    res = we.weight_entanglement(W, in_modes=in_modes, out_modes=out_modes)
    json.dumps(res)
    for c, s in zip(res["cuts"], got):
        np.testing.assert_allclose(c["entropy"], -np.sum(s**2 * np.log(s**2)), rtol=1e-12)
        np.testing.assert_allclose(c["schmidt"], s, rtol=1e-15)
    assert [(c["left_dim"], c["right_dim"]) for c in res["cuts"]] == [(6, 24), (36, 4)]
    assert res["norm"] == pytest.approx(np.linalg.norm(W))


def test_product_W_has_zero_entropy_everywhere():
    cores = random_tt(1, (4, 2, 4, 2), (2, 7, 7, 2), 1)
    W = tt_dense(cores)
    res = we.weight_entanglement(W, in_modes=(2, 7, 7, 2), out_modes=(4, 2, 4, 2), eps=(0.0,))
    for c in res["cuts"]:
        assert c["rank"] == 1
        assert abs(c["entropy"]) < 1e-12
    assert res["ranks_for_eps"][0]["ranks"] == [1, 1, 1]


@pytest.mark.parametrize("rank", [2, 3, 5])
def test_known_tt_rank_is_recovered(rank):
    out_modes, in_modes = (4, 4, 4, 4), (4, 7, 7, 4)
    W = tt_dense(random_tt(rank, out_modes, in_modes, rank))
    res = we.weight_entanglement(W, in_modes=in_modes, out_modes=out_modes, eps=(1e-8, 0.0))
    assert [c["rank"] for c in res["cuts"]] == [rank] * 3
    for row in res["ranks_for_eps"]:
        assert all(r <= rank for r in row["ranks"]) and row["ranks"] == [rank] * 3
        assert row["params"] == sum(a * b for a, b in zip(
            [1, rank, rank, rank], [4 * 4 * rank, 4 * 7 * rank, 4 * 7 * rank, 4 * 4]))
    for c in res["cuts"]:
        assert 0 < c["entropy"] <= math.log(rank) + 1e-12


def test_random_W_has_page_entropy():
    # A random pure state on D_A × D_B (D_A ≤ D_B) has S ≈ ln D_A − D_A / (2 D_B) (Page 1993):
    # the unfoldings of a Gaussian W are such states; that is within 0.05 of the maximum ln D_A
    # for these shapes except the square middle cut (deficit 1/2).
    W = np.random.default_rng(3).standard_normal((256, 256))
    res = we.weight_entanglement(W, n_cores=4)  # 256 = 4·4·4·4 on both sides
    assert res["in_modes"] == [4, 4, 4, 4] and res["out_modes"] == [4, 4, 4, 4]
    for c in res["cuts"]:
        da, db = sorted((c["left_dim"], c["right_dim"]))
        assert c["entropy"] == pytest.approx(math.log(da) - da / (2 * db), abs=0.03)
        assert c["entropy"] <= c["max_entropy"]
        assert c["rank"] == da  # full rank


def test_ranks_monotone_in_eps_and_bracket_ordered():
    rng = np.random.default_rng(4)
    # a trained-like W: low-rank structure plus noise
    W = tt_dense(random_tt(5, (4, 4, 8, 4), (4, 7, 7, 4), 6)) + 0.3 * rng.standard_normal((512, 784))
    eps = [0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.9]
    res = we.weight_entanglement(W, in_modes=(4, 7, 7, 4), out_modes=(4, 4, 8, 4), eps=eps)
    rows = res["ranks_for_eps"]
    for a, b in zip(rows[:-1], rows[1:]):
        assert all(x >= y for x, y in zip(a["ranks"], b["ranks"]))
        assert all(x >= y for x, y in zip(a["lower_ranks"], b["lower_ranks"]))
        assert a["params"] >= b["params"]
    for row in rows:
        assert all(lo <= hi for lo, hi in zip(row["lower_ranks"], row["ranks"]))
        assert row["compression"] == pytest.approx(512 * 784 / row["params"])
    assert rows[0]["ranks"] == [c["rank"] for c in res["cuts"]]
    # each rank is the fewest Schmidt values whose tail fits the budget (ε²/3, resp. ε²)
    for row in rows:
        for c, r, lo in zip(res["cuts"], row["ranks"], row["lower_ranks"]):
            s2 = np.square(c["schmidt"])
            for rank, budget in ((r, row["eps"] ** 2 / 3), (lo, row["eps"] ** 2)):
                assert s2[rank:].sum() <= budget + 1e-15
                assert rank == 1 or s2[rank - 1:].sum() > budget
    assert rows[-1]["lower_ranks"] == [1, 1, 1] and rows[-1]["ranks"] != [1, 1, 1]


@pytest.mark.parametrize("eps", [0.1, 0.3, 0.6])
def test_tt_svd_meets_the_rank_bracket(eps):
    # TT-SVD at ε gives ranks ≤ "ranks" (sufficient) and ≥ "lower_ranks" (necessary), with
    # relative error ≤ ε.
    rng = np.random.default_rng(5)
    out_modes, in_modes = (4, 4, 4), (4, 4, 8)
    W = tt_dense(random_tt(6, out_modes, in_modes, 4)) + 0.5 * rng.standard_normal((64, 128))
    spectra = we.cut_schmidt_values(W, in_modes, out_modes)
    bracket = we.ranks_for_eps(spectra, eps)
    cores = tt_svd(W, in_modes, out_modes, eps=eps)
    got = [c.shape[3] for c in cores[:-1]]
    assert all(lo <= r <= hi for lo, r, hi in zip(bracket["lower_ranks"], got, bracket["ranks"]))
    assert np.linalg.norm(W - tt_dense(cores)) <= eps * np.linalg.norm(W) + 1e-12


def test_orders_permute_as_documented_and_can_undo_a_scramble():
    # W0 is a product (zero entropy); scrambling its inputs makes it entangled; ordering the
    # inputs by the scramble (position s holds neuron perm[s]) restores entropy 0.
    out_modes, in_modes = (2, 2, 2), (2, 4, 2)
    W0 = tt_dense(random_tt(7, out_modes, in_modes, 1))
    perm = np.random.default_rng(8).permutation(16)
    W = np.empty_like(W0)
    W[:, perm] = W0
    scrambled = we.weight_entanglement(W, in_modes=in_modes, out_modes=out_modes)
    fixed = we.weight_entanglement(W, in_modes=in_modes, out_modes=out_modes, in_order=perm)
    assert scrambled["mean_entropy"] > 0.1
    assert fixed["mean_entropy"] < 1e-12
    operm = np.random.default_rng(9).permutation(8)
    Wo = np.empty_like(W0)
    Wo[operm] = W0
    back = we.weight_entanglement(Wo, in_modes=in_modes, out_modes=out_modes, out_order=operm)
    assert back["mean_entropy"] < 1e-12


def test_neuron_orderings():
    rng = np.random.default_rng(10)
    W = rng.standard_normal((6, 9))
    np.testing.assert_array_equal(we.neuron_order(W, "identity"), np.arange(9))
    np.testing.assert_array_equal(we.neuron_order(W, "random", seed=2),
                                  np.random.default_rng(2).permutation(9))
    np.testing.assert_array_equal(we.neuron_order(W, "norm"),
                                  np.argsort(-np.linalg.norm(W, axis=0), kind="stable"))
    np.testing.assert_array_equal(we.neuron_order(W, "norm", side="output"),
                                  np.argsort(-np.linalg.norm(W, axis=1), kind="stable"))
    W[:, 7] = -2.5 * W[:, 1]  # parallel weight vectors → adjacent under "similarity"
    pos = np.argsort(we.neuron_order(W, "similarity"))
    assert abs(pos[1] - pos[7]) == 1
    # image orderings on a first layer's input side
    Wimg = rng.standard_normal((4, 12))
    np.testing.assert_array_equal(we.neuron_order(Wimg, "hilbert", image_shape=(3, 4)),
                                  site_order((3, 4), "hilbert"))
    with pytest.raises(DistillError, match="image_shape"):
        we.neuron_order(Wimg, "snake")
    with pytest.raises(DistillError, match="12 inputs"):
        we.neuron_order(Wimg, "snake", image_shape=(3, 3))
    with pytest.raises(DistillError, match="unknown ordering"):
        we.neuron_order(Wimg, "spiral")


def test_ordering_study_rows():
    rng = np.random.default_rng(11)
    W = rng.standard_normal((16, 64))
    W[:, ::2] *= 1e-3  # half the inputs nearly dead
    rows = we.ordering_study(W, in_orderings=("identity", "norm", "row_major", "hilbert"),
                             out_orderings=("identity", "random"), image_shape=(8, 8), n_cores=3)
    json.dumps(rows)
    assert [(r["in_ordering"], r["out_ordering"]) for r in rows] == [
        (i, o) for i in ("identity", "norm", "row_major", "hilbert") for o in ("identity", "random")]
    assert "schmidt" not in rows[0]["cuts"][0]
    by = {(r["in_ordering"], r["out_ordering"]): r for r in rows}
    assert by[("row_major", "identity")]["cuts"] == by[("identity", "identity")]["cuts"]
    # the same matrix, re-read: the Frobenius norm is invariant, the entropies are not
    assert len({round(r["norm"], 9) for r in rows}) == 1


def test_refusals():
    W = np.ones((4, 6))
    with pytest.raises(DistillError, match="permutation"):
        we.weight_entanglement(W, in_order=[0, 1, 2, 3, 4, 4], n_cores=2)
    with pytest.raises(DistillError, match="n_cores"):
        we.weight_entanglement(W, n_cores=1)
    with pytest.raises(DistillError, match="in_modes"):
        we.weight_entanglement(W, in_modes=(2, 2), out_modes=(2, 2))
    with pytest.raises(DistillError, match="zero"):
        we.weight_entanglement(np.zeros((4, 4)), n_cores=2)
    with pytest.raises(DistillError, match="eps"):
        we.ranks_for_eps([np.ones(2) / np.sqrt(2)], 1.0)
    with pytest.raises(DistillError, match="matrix"):
        we.weight_entanglement(np.ones(5))
