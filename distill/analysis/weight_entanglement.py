"""Entanglement of a dense weight matrix read as a TT-matrix, and how neuron order changes it.

Seed 001 (Harada, "Compressing neural networks by tensor networks") asks why TT-matrix / MPO
layers compress trained networks, and answers with the entanglement of the weights and the
ordering of the neurons. This module measures both on a dense W (N_out, N_in) (y = W x):

1. optionally permute the neurons: W′ = W[out_order][:, in_order] (position s of the new
   layout holds original neuron order[s], the `distill.data.orderings.site_order` convention);
2. tensorise: N_in = ∏ a_k, N_out = ∏ b_k, and read W′ as the vector
   W′[(b_1 a_1), (b_2 a_2), …, (b_d a_d)] — the layout of `distill.tn.tt` (cores
   (r_{k-1}, b_k, a_k, r_k));
3. at every cut k = 1..d-1, the Schmidt values s are the singular values of the k-th
   unfolding (∏_{m≤k} b_m a_m) × (∏_{m>k} b_m a_m) divided by ‖W‖_F (Σ s² = 1); the
   entanglement entropy is S_k = −Σ s² ln s² in nats (seed 001: S = −Tr ρ ln ρ ≤ ln D);
4. TT ranks for a relative Frobenius error ε, bracketed from the same spectra:
   "ranks" — sufficient: r_k = the fewest values whose discarded tail has Σ s² ≤ ε²/(d−1);
   TT-SVD with those per-cut tolerances reaches ‖W − W_TT‖ ≤ ε‖W‖ with ranks no larger
   (Oseledets 2011, Thm. 2.2: the matrices TT-SVD factorises are projections of the
   unfoldings, whose tails are no larger);
   "lower_ranks" — necessary: any TT-matrix within ε needs r_k ≥ the fewest values with
   tail Σ s² ≤ ε² at cut k (Eckart–Young on the unfolding).

Numpy only (float64). Every function returns plain dicts / lists of floats and ints
(JSON-able), except the permutations, which are int32 arrays.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Sequence

import numpy as np

from distill.data.orderings import DATA_ORDERINGS, ORDERINGS, greedy_chain, site_order
from distill.errors import DistillError
from distill.tn.tt import check_modes, factorize

__all__ = [
    "NEURON_ORDERINGS",
    "neuron_order",
    "cut_schmidt_values",
    "ranks_for_eps",
    "weight_entanglement",
    "ordering_study",
]

NEURON_ORDERINGS = ("identity", "random", "norm", "similarity")
DEFAULT_EPS = (0.01, 0.05, 0.1, 0.2, 0.5)


# ---------------------------------------------------------------------------------------
# Neuron orderings
# ---------------------------------------------------------------------------------------


def _as_matrix(W, what: str) -> np.ndarray:
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or 0 in W.shape:
        raise DistillError(f"{what}: W must be a non-empty matrix (N_out, N_in), got shape {W.shape}")
    if not np.all(np.isfinite(W)):
        raise DistillError(f"{what}: W has non-finite entries; check the checkpoint it came from")
    return W


def neuron_order(W, ordering: str, *, side: str = "input", seed: int = 0, image_shape=None,
                 x=None) -> np.ndarray:
    """A permutation of the input (columns) or output (rows) neurons of W (N_out, N_in).

    Returns an int32 array p (N,) with N = N_in or N_out: position s holds neuron p[s].

    - ``identity``: arange(N);
    - ``random``: ``numpy.random.default_rng(seed).permutation(N)``;
    - ``norm``: by decreasing L2 norm of each neuron's weights (‖W[:, i]‖ for inputs,
      ‖W[j, :]‖ for outputs), ties by index: weak or dead neurons (e.g. border pixels of a
      first layer) gather at one end, where they add next to nothing across any cut;
    - ``similarity``: `distill.data.orderings.greedy_chain` on the |cosine similarity| of the
      neurons' weight vectors: neurons that act alike sit next to each other, the neuron
      analogue of the pixel ``correlation`` ordering (zero vectors have similarity 0);
    - input side with ``image_shape=(H, W)`` (H·W = N_in, a first layer on image pixels):
      any image ordering of `distill.data.orderings` (``row_major``, ``snake``, ``hilbert``,
      ``random``, ``correlation`` with ``x`` …), via `site_order`.

    Raises: DistillError for an unknown ordering or side, image orderings without a matching
    image_shape, or a W that is not a finite matrix.
    """
    W = _as_matrix(W, "neuron_order")
    if side not in ("input", "output"):
        raise DistillError(f"neuron_order: side must be 'input' or 'output', got {side!r}")
    vectors = W.T if side == "input" else W  # (N, other): one row per neuron
    n = vectors.shape[0]
    if ordering == "identity":
        return np.arange(n, dtype=np.int32)
    if ordering == "random":
        if isinstance(seed, bool) or not isinstance(seed, Integral):
            raise DistillError(f"neuron_order: seed must be an integer, got {seed!r}")
        return np.random.default_rng(int(seed)).permutation(n).astype(np.int32)
    if ordering == "norm":
        norms = np.sqrt(np.einsum("nq,nq->n", vectors, vectors))
        return np.argsort(-norms, kind="stable").astype(np.int32)
    if ordering == "similarity":
        norms = np.sqrt(np.einsum("nq,nq->n", vectors, vectors))
        unit = vectors * np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)[:, None]
        return greedy_chain(np.abs(np.einsum("nq,mq->nm", unit, unit)))
    if ordering in ORDERINGS + DATA_ORDERINGS:
        if side != "input" or image_shape is None:
            raise DistillError(
                f"neuron_order: the image ordering {ordering!r} applies to the input side of a "
                "first layer only; pass side='input' and image_shape=(H, W)"
            )
        if math.prod(tuple(image_shape)) != n:
            raise DistillError(
                f"neuron_order: image_shape {tuple(image_shape)} has "
                f"{math.prod(tuple(image_shape))} pixels but W has {n} inputs"
            )
        return site_order(tuple(image_shape), ordering, seed=seed, x=x)
    raise DistillError(
        f"neuron_order: unknown ordering {ordering!r}; allowed: "
        f"{', '.join(NEURON_ORDERINGS)}, or with image_shape "
        f"{', '.join(o for o in ORDERINGS + DATA_ORDERINGS if o not in NEURON_ORDERINGS)}"
    )


# ---------------------------------------------------------------------------------------
# Spectra and ranks
# ---------------------------------------------------------------------------------------


def _resolve_modes(W: np.ndarray, in_modes, out_modes, n_cores) -> tuple[tuple, tuple]:
    """Modes for both sides: given ones checked; a missing side factorised to the other's
    length (or n_cores when both are missing) by `distill.tn.tt.factorize`."""
    n_out, n_in = W.shape
    if in_modes is not None:
        in_modes = check_modes(in_modes, n_in, "in_modes", width="input")
    if out_modes is not None:
        out_modes = check_modes(out_modes, n_out, "out_modes", width="output")
    if in_modes is None and out_modes is None:
        if isinstance(n_cores, bool) or not isinstance(n_cores, Integral) or n_cores < 2:
            raise DistillError(
                f"weight entanglement: n_cores must be an integer >= 2 (one cut needs two "
                f"cores), got {n_cores!r}"
            )
        in_modes, out_modes = factorize(n_in, int(n_cores)), factorize(n_out, int(n_cores))
    elif in_modes is None:
        in_modes = factorize(n_in, len(out_modes))
    elif out_modes is None:
        out_modes = factorize(n_out, len(in_modes))
    if len(in_modes) != len(out_modes) or len(in_modes) < 2:
        raise DistillError(
            f"weight entanglement: in_modes {in_modes} and out_modes {out_modes} must have the "
            "same length >= 2 (one (out, in) mode pair per core)"
        )
    return in_modes, out_modes


def _permute(W: np.ndarray, in_order, out_order) -> np.ndarray:
    for order, axis, name in ((in_order, 1, "in_order"), (out_order, 0, "out_order")):
        if order is None:
            continue
        p = np.asarray(order)
        n = W.shape[axis]
        if p.shape != (n,) or not np.issubdtype(p.dtype, np.integer) or not np.array_equal(
                np.sort(p), np.arange(n)):
            raise DistillError(
                f"weight entanglement: {name} must be a permutation of range({n}), got an "
                f"array of shape {p.shape}; build it with neuron_order"
            )
        W = np.take(W, p, axis=axis)
    return W


def cut_schmidt_values(W, in_modes: Sequence[int], out_modes: Sequence[int]) -> list[np.ndarray]:
    """Schmidt values of W (N_out, N_in) across the d−1 cuts of its TT-matrix layout.

    in_modes (a_1..a_d), out_modes (b_1..b_d): W is read as W[(b_1 a_1), …, (b_d a_d)] and
    cut k (k = 1..d−1) unfolds it into (∏_{m≤k} b_m a_m) × (∏_{m>k} b_m a_m). Returns d−1
    float64 arrays of singular values / ‖W‖_F, descending, numerical zeros (below
    s_0·max(shape)·eps64) dropped. Source: Oseledets 2011, eq. 2.2.
    Raises: DistillError for modes that do not multiply to W's widths, or W = 0.
    """
    W = _as_matrix(W, "cut_schmidt_values")
    n_out, n_in = W.shape
    in_modes = check_modes(in_modes, n_in, "in_modes", width="input")
    out_modes = check_modes(out_modes, n_out, "out_modes", width="output")
    d = len(in_modes)
    if len(out_modes) != d:
        raise DistillError(f"cut_schmidt_values: in_modes {in_modes} and out_modes {out_modes} "
                           "must have the same length")
    norm = float(np.linalg.norm(W))
    if not norm > 0:
        raise DistillError("cut_schmidt_values: W is zero; its entanglement is undefined")
    interleave = tuple(ax for k in range(d) for ax in (k, d + k))
    C = np.transpose(W.reshape(out_modes + in_modes), interleave) / norm
    out = []
    for k in range(1, d):
        rows = math.prod(out_modes[:k]) * math.prod(in_modes[:k])
        M = C.reshape(rows, -1)
        s = np.linalg.svd(M, compute_uv=False)
        tol = s[0] * max(M.shape) * np.finfo(np.float64).eps
        out.append(s[s > tol])
    return out


def _rank_for_tail(s: np.ndarray, tail2: float) -> int:
    """Fewest leading values r ≥ 1 whose discarded tail has Σ_{i≥r} s_i² ≤ tail2."""
    tails = np.cumsum((s * s)[::-1])[::-1]  # tails[r] = Σ_{i≥r} s_i²
    ok = np.nonzero(tails <= tail2)[0]
    return max(1, int(ok[0])) if ok.size else int(s.size)


def ranks_for_eps(schmidt: Sequence, eps: float) -> dict:
    """TT ranks for relative Frobenius error ε from normalised Schmidt values per cut.

    schmidt: d−1 arrays (Σ s² = 1 each), e.g. from `cut_schmidt_values`. Returns
    {"eps": ε, "ranks": [r_1..r_{d−1}] sufficient (TT-SVD, tail ≤ ε²/(d−1) per cut),
    "lower_ranks": [...] necessary (tail ≤ ε² at each cut)} (module notes; Oseledets 2011
    Thm. 2.2, Eckart–Young). Raises: DistillError for eps not a number in [0, 1).
    """
    if isinstance(eps, bool) or not isinstance(eps, Real) or not 0 <= eps < 1:
        raise DistillError(f"ranks_for_eps: eps must be a number in [0, 1), got {eps!r}")
    spectra = [np.asarray(s, dtype=np.float64) for s in schmidt]
    n_cuts = max(1, len(spectra))
    eps = float(eps)
    return {
        "eps": eps,
        "ranks": [_rank_for_tail(s, eps * eps / n_cuts) for s in spectra],
        "lower_ranks": [_rank_for_tail(s, eps * eps) for s in spectra],
    }


def _entropy(s: np.ndarray) -> float:
    lam = s * s
    lam = lam[lam > 0] / np.sum(lam)
    return float(-np.einsum("k,k->", lam, np.log(lam)))


def _tt_params(in_modes, out_modes, ranks) -> int:
    r = [1, *ranks, 1]
    return int(sum(r[k] * out_modes[k] * in_modes[k] * r[k + 1] for k in range(len(in_modes))))


def weight_entanglement(
    W,
    *,
    in_modes: Sequence[int] | None = None,
    out_modes: Sequence[int] | None = None,
    n_cores: int = 4,
    in_order=None,
    out_order=None,
    eps: Sequence[float] = DEFAULT_EPS,
    schmidt: bool = True,
) -> dict:
    """Entanglement entropy and Schmidt spectrum of W (N_out, N_in) at every TT cut, and the TT
    ranks for each relative error in `eps` (module notes).

    Modes default to `distill.tn.tt.factorize(N, n_cores)` for both sides; in_order /
    out_order (permutations, `neuron_order`) are applied first. Returns
    {"shape": [N_out, N_in], "in_modes": [...], "out_modes": [...], "norm": ‖W‖_F,
     "cuts": [{"cut": k, "left_dim", "right_dim", "rank": Schmidt rank, "entropy": S_k (nats),
               "max_entropy": ln min(left_dim, right_dim), "schmidt": [...] (if schmidt)}],
     "mean_entropy": mean S_k,
     "ranks_for_eps": [{"eps", "ranks", "lower_ranks", "params": TT parameters at "ranks",
                        "compression": N_out·N_in / params}]}.
    Source: seed 001 (entanglement of weights, ordering of neurons); Oseledets 2011.
    Raises: DistillError for a W that is not a finite nonzero matrix, bad modes or n_cores,
    orders that are not permutations, or eps outside [0, 1).
    """
    W = _as_matrix(W, "weight_entanglement")
    in_modes, out_modes = _resolve_modes(W, in_modes, out_modes, n_cores)
    Wp = _permute(W, in_order, out_order)
    spectra = cut_schmidt_values(Wp, in_modes, out_modes)
    sizes = [a * b for a, b in zip(in_modes, out_modes)]
    cuts = []
    for k, s in enumerate(spectra, start=1):
        left, right = math.prod(sizes[:k]), math.prod(sizes[k:])
        row = {"cut": k, "left_dim": left, "right_dim": right, "rank": int(s.size),
               "entropy": _entropy(s), "max_entropy": math.log(min(left, right))}
        if schmidt:
            row["schmidt"] = [float(v) for v in s]
        cuts.append(row)
    budget = []
    for e in eps:
        r = ranks_for_eps(spectra, e)
        params = _tt_params(in_modes, out_modes, r["ranks"])
        budget.append({**r, "params": params, "compression": W.size / params})
    return {
        "shape": [int(v) for v in W.shape],
        "in_modes": list(in_modes),
        "out_modes": list(out_modes),
        "norm": float(np.linalg.norm(W)),
        "cuts": cuts,
        "mean_entropy": float(np.mean([c["entropy"] for c in cuts])),
        "ranks_for_eps": budget,
    }


def ordering_study(
    W,
    *,
    in_orderings: Sequence[str] = ("identity", "random", "norm", "similarity"),
    out_orderings: Sequence[str] = ("identity",),
    image_shape=None,
    x=None,
    seed: int = 0,
    in_modes: Sequence[int] | None = None,
    out_modes: Sequence[int] | None = None,
    n_cores: int = 4,
    eps: Sequence[float] = DEFAULT_EPS,
) -> list[dict]:
    """`weight_entanglement` of W under every (input ordering, output ordering) pair.

    Orderings are names for `neuron_order` (image orderings on the input side need
    image_shape; ``correlation`` needs x). Returns one dict per pair: the
    `weight_entanglement` result without Schmidt lists, plus "in_ordering" and
    "out_ordering". Raises: as `neuron_order` and `weight_entanglement`.
    """
    W = _as_matrix(W, "ordering_study")
    rows = []
    for o_in in in_orderings:
        p_in = neuron_order(W, o_in, side="input", seed=seed, image_shape=image_shape, x=x)
        for o_out in out_orderings:
            p_out = neuron_order(W, o_out, side="output", seed=seed)
            res = weight_entanglement(W, in_modes=in_modes, out_modes=out_modes, n_cores=n_cores,
                                      in_order=p_in, out_order=p_out, eps=eps, schmidt=False)
            rows.append({"in_ordering": o_in, "out_ordering": o_out, **res})
    return rows
