"""Site orderings: the order in which pixels become tensor-network sites.

An MPS carries correlations between sites through its bonds, so pixels that depend on each
other strongly should sit close together along the chain (seed 001, "ordering of neurons").
`site_order` returns the permutation for one of

- geometric orderings of the H×W grid (`ORDERINGS`): ``row_major``, ``column_major``,
  ``snake`` (boustrophedon rows), ``hilbert`` (a generalized Hilbert curve, every H×W), and
  ``random`` (a seeded permutation, the no-locality control);
- data-driven orderings (`DATA_ORDERINGS`): ``correlation``, a chain through the pixels that
  keeps strongly correlated pixels adjacent, computed from a sample of images.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np

from distill.errors import DistillError

ORDERINGS = ("row_major", "snake", "column_major", "hilbert", "random")
DATA_ORDERINGS = ("correlation",)

__all__ = ["ORDERINGS", "DATA_ORDERINGS", "site_order", "hilbert_curve", "greedy_chain"]


def site_order(
    image_shape: tuple[int, int], ordering: str, *, seed: int = 0, x=None
) -> np.ndarray:
    """Order in which pixels become tensor-network sites.

    Returns an ``(H*W,)`` int32 permutation ``p``: site ``s`` holds row-major pixel ``p[s]``,
    so ``x[:, p]`` reorders row-major features.

    - ``row_major``: ``arange``; ``column_major``: column by column; ``snake``: boustrophedon
      rows (row 0 left to right, row 1 right to left, ...);
    - ``hilbert``: `hilbert_curve` — the Hilbert curve on power-of-two squares, the
      generalized ("gilbert") curve on any other H×W; consecutive sites are 4-neighbours;
    - ``random``: ``numpy.random.default_rng(seed).permutation(H*W)``;
    - ``correlation``: `greedy_chain` on the absolute Pearson correlations of the pixels over
      the sample ``x`` (N, H*W) (row-major pixels); pixels constant on the sample have
      correlation 0 with every other pixel.

    Raises: DistillError for an image_shape that is not two positive integers, an unknown
    ordering, a seed that is not an integer, or (``correlation``) a missing or mis-shaped x.
    """
    if (
        not isinstance(image_shape, (tuple, list))
        or len(image_shape) != 2
        or not all(isinstance(s, Integral) and not isinstance(s, bool) and s > 0
                   for s in image_shape)
    ):
        raise DistillError(
            f"image_shape must be two positive integers (H, W), got {image_shape!r}"
        )
    h, w = int(image_shape[0]), int(image_shape[1])
    grid = np.arange(h * w, dtype=np.int32).reshape(h, w)
    if ordering == "row_major":
        order = grid.ravel()
    elif ordering == "column_major":
        order = grid.T.ravel()
    elif ordering == "snake":
        snake = grid.copy()
        snake[1::2] = snake[1::2, ::-1]
        order = snake.ravel()
    elif ordering == "hilbert":
        rows, cols = hilbert_curve(h, w)
        order = grid[rows, cols]
    elif ordering == "random":
        if isinstance(seed, bool) or not isinstance(seed, Integral):
            raise DistillError(f"site_order: seed must be an integer, got {seed!r}")
        order = np.random.default_rng(int(seed)).permutation(h * w)
    elif ordering == "correlation":
        order = greedy_chain(_abs_correlation(x, h * w))
    else:
        raise DistillError(
            f"unknown site ordering {ordering!r}; allowed: "
            f"{', '.join(ORDERINGS + DATA_ORDERINGS)}"
        )
    return np.ascontiguousarray(order, dtype=np.int32)


# ---------------------------------------------------------------------------------------
# Generalized Hilbert curve
# ---------------------------------------------------------------------------------------


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _gilbert(x: int, y: int, ax: int, ay: int, bx: int, by: int, out: list) -> None:
    """Append the cells of the rectangle spanned from (x, y) by major axis (ax, ay) and
    minor axis (bx, by) in generalized-Hilbert order (Červený's gilbert2d recursion)."""
    w, h = abs(ax + ay), abs(bx + by)
    dax, day, dbx, dby = _sign(ax), _sign(ay), _sign(bx), _sign(by)
    if h == 1:  # one row along the major axis
        out.extend((x + i * dax, y + i * day) for i in range(w))
        return
    if w == 1:  # one column along the minor axis
        out.extend((x + i * dbx, y + i * dby) for i in range(h))
        return
    ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2
    if 2 * w > 3 * h:  # long rectangle: split along the major axis only
        if abs(ax2 + ay2) % 2 and w > 2:  # prefer an even first half
            ax2, ay2 = ax2 + dax, ay2 + day
        _gilbert(x, y, ax2, ay2, bx, by, out)
        _gilbert(x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by, out)
    else:  # up the first half of the minor axis, across, and back down
        if abs(bx2 + by2) % 2 and h > 2:
            bx2, by2 = bx2 + dbx, by2 + dby
        _gilbert(x, y, bx2, by2, ax2, ay2, out)
        _gilbert(x + bx2, y + by2, ax, ay, bx - bx2, by - by2, out)
        _gilbert(x + (ax - dax) + (bx2 - dbx), y + (ay - day) + (by2 - dby),
                 -bx2, -by2, -(ax - ax2), -(ay - ay2), out)


def hilbert_curve(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Cells of an H×W grid along a generalized Hilbert curve: (rows, cols), each (H*W,) int.

    The recursion is J. Červený's "gilbert2d" (github.com/jakubcerveny/gilbert): on a 2^k×2^k
    grid it is the textbook Hilbert curve (Hilbert 1891; Wikipedia's ``d2xy`` with x the
    column, y the row); other sizes are split into near-halves of even length. The curve runs
    from (0, 0) to the far corner along its major axis, normally the longer side. When the
    longer side is odd and the shorter even, no path with those ends uses only 4-neighbour
    steps (the grid's checkerboard colouring forbids it), so the shorter side is made the
    major axis instead; with that rule every step is to a 4-neighbour for every H×W (checked
    for all sizes up to 40×40 in tests/test_orderings.py).
    """
    h, w = int(height), int(width)
    longer_odd_shorter_even = max(h, w) % 2 == 1 and min(h, w) % 2 == 0
    along_width = (w >= h) != longer_odd_shorter_even
    cells: list[tuple[int, int]] = []
    if along_width:
        _gilbert(0, 0, w, 0, 0, h, cells)
    else:
        _gilbert(0, 0, 0, h, w, 0, cells)
    xy = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    return xy[:, 1], xy[:, 0]


# ---------------------------------------------------------------------------------------
# Data-driven ordering
# ---------------------------------------------------------------------------------------


def _abs_correlation(x, n_pixels: int) -> np.ndarray:
    """|Pearson correlation| (P, P) of the columns of x (N, P); constant columns give 0."""
    if x is None:
        raise DistillError(
            "site ordering 'correlation' needs a data sample: pass x=<array (N, H*W)> to site_order"
        )
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != n_pixels or x.shape[0] < 2:
        raise DistillError(
            f"site ordering 'correlation': x must have shape (N >= 2, {n_pixels}) (row-major "
            f"pixels of N images), got {x.shape}"
        )
    centred = x - x.mean(axis=0)
    std = np.sqrt(np.einsum("np,np->p", centred, centred))
    scale = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0)
    z = centred * scale
    return np.abs(np.einsum("np,nq->pq", z, z))


def greedy_chain(affinity) -> np.ndarray:
    """A path through all P items that keeps high-affinity pairs adjacent. affinity (P, P) → (P,) int32.

    Greedy-edge heuristic for the maximum-weight Hamiltonian path (the greedy TSP tour
    construction, e.g. Johnson & McGeoch 1997, without closing the tour): take the pairs
    (i < j) in decreasing affinity and keep a pair as a chain link unless an item would get a
    third neighbour or the link would close a loop; after P−1 links the pieces form one
    path, which is read from its lower-numbered end. The strongest pair is always adjacent,
    and any pair whose affinity is the largest in both of its rows is too. Ties are broken
    by (i, j) in row-major order, so the result is deterministic. Cost O(P² log P)
    (P = 784: well under a second).

    Why a chain by affinity rather than a spectral (Fiedler-vector) ordering: the MPS bond
    between consecutive sites is what carries their dependence, so the quantity to make
    large is the affinity of *consecutive* sites, which the greedy path optimises directly;
    a Fiedler ordering places clusters contiguously but does not make a strongly related
    pair adjacent.

    Raises: DistillError if affinity is not a square matrix of finite numbers.
    """
    a = np.asarray(affinity, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0 or not np.all(np.isfinite(a)):
        raise DistillError(
            f"greedy_chain: affinity must be a finite square matrix (P, P), got shape {a.shape}"
        )
    p = a.shape[0]
    if p == 1:
        return np.zeros(1, np.int32)
    sym = np.maximum(a, a.T)
    iu, ju = np.triu_indices(p, k=1)
    edges = np.argsort(-sym[iu, ju], kind="stable")
    degree = np.zeros(p, np.int64)
    parent = np.arange(p)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    neighbours: list[list[int]] = [[] for _ in range(p)]
    links = 0
    for e in edges:
        i, j = int(iu[e]), int(ju[e])
        if degree[i] == 2 or degree[j] == 2:
            continue
        ri, rj = root(i), root(j)
        if ri == rj:
            continue
        parent[ri] = rj
        degree[i] += 1
        degree[j] += 1
        neighbours[i].append(j)
        neighbours[j].append(i)
        links += 1
        if links == p - 1:
            break
    start = int(np.nonzero(degree == 1)[0][0])
    order = [start]
    prev, cur = -1, start
    for _ in range(p - 1):
        nxt = neighbours[cur][0] if neighbours[cur][0] != prev else neighbours[cur][-1]
        order.append(nxt)
        prev, cur = cur, nxt
    return np.asarray(order, dtype=np.int32)
