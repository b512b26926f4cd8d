"""Pairings for codependent maps: neighbour, seeded random, explicit; apply_pairwise by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from distill.errors import DistillError
from distill.tn.feature_maps import make_feature_map, pair_product
from distill.tn.pairing import (
    apply_pairwise,
    check_partners,
    make_partners,
    neighbour_partners,
    random_partners,
)


def test_neighbour_wraps_around():
    p = neighbour_partners(5)
    assert p.dtype == np.int32
    np.testing.assert_array_equal(p, [1, 2, 3, 4, 0])


def test_neighbour_along_site_order():
    order = np.array([2, 0, 3, 1])  # chain: 2 → 0 → 3 → 1 → 2
    p = neighbour_partners(4, order)
    np.testing.assert_array_equal(p, [3, 2, 0, 1])
    np.testing.assert_array_equal(p[order], np.roll(order, -1))


@pytest.mark.parametrize("n", [2, 3, 10, 784])
def test_random_pairing_is_seeded_and_valid(n):
    a, b = random_partners(n, seed=7), random_partners(n, seed=7)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int32 and a.shape == (n,)
    assert not np.any(a == np.arange(n))  # no self-pairs
    np.testing.assert_array_equal(np.sort(a), np.arange(n))  # each input is one partner
    np.testing.assert_array_equal(check_partners(a, n), a)
    if n > 3:
        assert not np.array_equal(a, random_partners(n, seed=8))


def test_random_pairing_pinned_values():
    # numpy's default_rng (PCG64) stream is stable: a checkpoint's pairing can be re-derived
    np.testing.assert_array_equal(random_partners(6, 0), [1, 3, 5, 2, 0, 4])
    np.testing.assert_array_equal(random_partners(6, 1), [2, 5, 1, 4, 0, 3])


def test_make_partners_dispatch_and_errors():
    np.testing.assert_array_equal(make_partners("neighbour", 3), [1, 2, 0])
    np.testing.assert_array_equal(make_partners("random", 9, seed=1), random_partners(9, 1))
    np.testing.assert_array_equal(make_partners([1, 0, 0], 3), [1, 0, 0])
    with pytest.raises(DistillError, match="unknown pairing 'ring'"):
        make_partners("ring", 4)
    with pytest.raises(DistillError, match="input 1 is paired with itself"):
        check_partners([2, 1, 0], 3)
    with pytest.raises(DistillError, match=r"partners\[2\] = 3 is not an input index"):
        check_partners([1, 2, 3], 3)
    with pytest.raises(DistillError, match=r"shape \(3,\)"):
        check_partners([1, 0], 3)
    with pytest.raises(DistillError, match="integers"):
        check_partners([1.0, 0.0], 2)
    with pytest.raises(DistillError, match=">= 2"):
        random_partners(1, 0)


def test_apply_pairwise_by_hand():
    x = jnp.array([[0.5, 0.2, 0.1], [1.0, 0.0, 0.3]])
    partners = np.array([2, 0, 1], np.int32)
    out = apply_pairwise(pair_product, x, partners)
    # site i: [x_i, x_i·x_partner(i)]
    expected = [
        [[0.5, 0.05], [0.2, 0.1], [0.1, 0.02]],
        [[1.0, 0.3], [0.0, 0.0], [0.3, 0.0]],
    ]
    assert out.shape == (2, 3, 2)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    fm = make_feature_map("pair_product")
    np.testing.assert_array_equal(apply_pairwise(fm, x, partners), out)
    with pytest.raises(DistillError, match=r"partners must have shape \(3,\)"):
        apply_pairwise(pair_product, x, np.array([1, 0]))


def test_pair_affine_values_and_validity():
    import numpy as np

    from distill.tn.feature_maps import check_feature_map, make_feature_map, pair_affine

    xa, xb = np.array([0.0, 0.5, 1.0]), np.array([0.3, 0.5, 0.2])
    np.testing.assert_allclose(np.asarray(pair_affine(xa, xb)),
                               [[1, 0, 0], [1, 0.5, 0.25], [1, 1, 0.2]], rtol=1e-6)
    fm = make_feature_map("pair_affine")
    assert fm.d == 3 and fm.arity == 2
    rep = check_feature_map(fm)
    assert rep.ok and rep.n_vanishing == 0
