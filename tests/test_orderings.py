"""data.orderings: every ordering is a permutation; the Hilbert curve is the textbook one on
2^k squares and steps only to 4-neighbours on every H×W; random is seeded; the correlation
ordering puts a planted correlated pair side by side."""

import numpy as np
import pytest

from distill.data.orderings import (
    DATA_ORDERINGS,
    ORDERINGS,
    greedy_chain,
    hilbert_curve,
    site_order,
)
from distill.errors import DistillError


def hilbert_d2xy(n, d):
    """Textbook Hilbert curve index d → (x, y) on an n×n grid (n a power of two)."""
    x = y = 0
    s, t = 1, d
    while s < n:
        rx = 1 & (t // 2)
        ry = 1 & (t ^ rx)
        if ry == 0:
            if rx == 1:
                x, y = s - 1 - x, s - 1 - y
            x, y = y, x
        x, y = x + s * rx, y + s * ry
        t //= 4
        s *= 2
    return x, y


def assert_permutation(p, n):
    assert p.dtype == np.int32 and p.shape == (n,)
    np.testing.assert_array_equal(np.sort(p), np.arange(n))


@pytest.mark.parametrize("shape", [(3, 4), (8, 8), (7, 5), (1, 6), (28, 28)])
def test_every_ordering_is_a_permutation(shape):
    n = shape[0] * shape[1]
    for ordering in ORDERINGS:
        assert_permutation(site_order(shape, ordering), n)
    x = np.random.default_rng(0).standard_normal((20, n))
    for ordering in DATA_ORDERINGS:
        assert_permutation(site_order(shape, ordering, x=x), n)


@pytest.mark.parametrize("shape", [(8, 8), (14, 14), (28, 28), (7, 5), (5, 7), (4, 7), (9, 2)])
def test_hilbert_steps_are_4_neighbours(shape):
    _, w = shape
    p = site_order(shape, "hilbert")
    rows, cols = np.divmod(p, w)
    steps = np.abs(np.diff(rows)) + np.abs(np.diff(cols))
    np.testing.assert_array_equal(steps, 1)
    assert p[0] == 0  # starts in the top-left corner


def test_hilbert_every_grid_up_to_40():
    for h in range(1, 41):
        for w in range(1, 41):
            rows, cols = hilbert_curve(h, w)
            assert len(np.unique(rows * w + cols)) == h * w, (h, w)
            assert rows.min() >= 0 and rows.max() < h and cols.min() >= 0 and cols.max() < w
            steps = np.abs(np.diff(rows)) + np.abs(np.diff(cols))
            assert np.all(steps == 1), (h, w)


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_hilbert_is_textbook_on_power_of_two_squares(n):
    rows, cols = hilbert_curve(n, n)
    want = np.array([hilbert_d2xy(n, d) for d in range(n * n)])
    np.testing.assert_array_equal(cols, want[:, 0])
    np.testing.assert_array_equal(rows, want[:, 1])
    p = site_order((n, n), "hilbert")
    np.testing.assert_array_equal(p, want[:, 1] * n + want[:, 0])


@pytest.mark.parametrize("shape", [(14, 14), (16, 16), (28, 28), (32, 32)])
def test_hilbert_is_local(shape):
    # a Hilbert curve is 1/2-Hölder: sites L apart in the chain are within grid distance
    # ~sqrt(6 L) (squared distance ≤ 6·L holds here); snake rows break it (28 apart → 27²/28)
    h, w = shape

    def worst(ordering):
        r, c = np.divmod(site_order(shape, ordering), w)
        return max(((r[L:] - r[:-L]) ** 2 + (c[L:] - c[:-L]) ** 2).max() / L
                   for L in range(1, h * w))

    assert worst("hilbert") <= 6.0
    assert worst("snake") >= w - 1


def test_random_is_seeded():
    a = site_order((8, 8), "random", seed=3)
    np.testing.assert_array_equal(a, site_order((8, 8), "random", seed=3))
    np.testing.assert_array_equal(a, np.random.default_rng(3).permutation(64))
    assert not np.array_equal(a, site_order((8, 8), "random", seed=4))
    np.testing.assert_array_equal(site_order((8, 8), "random"), site_order((8, 8), "random", seed=0))
    with pytest.raises(DistillError, match="seed"):
        site_order((8, 8), "random", seed=1.5)


def test_correlation_puts_planted_pair_together():
    rng = np.random.default_rng(1)
    h, w = 6, 7
    x = rng.standard_normal((500, h * w))
    a, b = 3, 38  # far apart on the grid
    x[:, b] = x[:, a] + 0.05 * rng.standard_normal(500)
    x[:, 10] = 1.0  # a constant pixel must not break anything
    p = site_order((h, w), "correlation", x=x)
    pos = np.argsort(p)
    assert abs(pos[a] - pos[b]) == 1
    np.testing.assert_array_equal(p, site_order((h, w), "correlation", x=x))  # deterministic


def test_correlation_recovers_a_hidden_chain():
    # pixels form a random walk in a hidden order: neighbours in that order are the most
    # correlated, so the chain must be the hidden order (or its reverse).
    rng = np.random.default_rng(2)
    n = 30
    hidden = rng.permutation(n)
    walk = np.cumsum(rng.standard_normal((4000, n)), axis=1)
    x = np.zeros_like(walk)
    x[:, hidden] = walk
    p = site_order((5, 6), "correlation", x=x)
    assert np.array_equal(p, hidden) or np.array_equal(p, hidden[::-1])


def test_greedy_chain_on_a_path_affinity():
    # affinity 1 between i and i+1 of a hidden order, 0 otherwise: the chain is that order
    order = np.array([4, 0, 3, 1, 2])
    a = np.zeros((5, 5))
    for i, j in zip(order[:-1], order[1:]):
        a[i, j] = a[j, i] = 1.0
    got = greedy_chain(a)
    assert np.array_equal(got, order) or np.array_equal(got, order[::-1])
    np.testing.assert_array_equal(greedy_chain(np.zeros((1, 1))), [0])
    with pytest.raises(DistillError, match="square"):
        greedy_chain(np.zeros((2, 3)))


def test_refusals():
    with pytest.raises(DistillError, match="x=") as err:
        site_order((3, 4), "correlation")
    with pytest.raises(DistillError, match=r"\(N >= 2, 12\)"):
        site_order((3, 4), "correlation", x=np.zeros((5, 11)))
    with pytest.raises(DistillError) as err:
        site_order((3, 4), "spiral")
    assert all(o in str(err.value) for o in ORDERINGS + DATA_ORDERINGS)
