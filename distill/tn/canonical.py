"""Canonical forms, Schmidt spectra, entanglement entropies and SVD truncation of MPS and
TT-matrices: pure functions on arrays (numpy float64 inside).

**The chain.** An `MPSParams` with n sites and the output core between sites k-1 and k is
read as a chain of n+1 tensors T_0 … T_n, each indexed (l, p, r): sites 0..k-1, then the
output core (its output leg o plays the role of a physical leg of size m), then sites
k..n-1; the boundary bonds of T_0 and T_n have size 1. Bond t (t = 0..n-1) joins T_t and
T_{t+1}. A TT-matrix with cores G_k (r_{k-1}, b_k, a_k, r_k) is the chain of its cores with
the physical leg p = (b_k, a_k); its cut t (t = 1..d-1) is the bond after core t.

**Canonical forms** (Schollwöck 2011, Ann. Phys. 326, §4.4; Oseledets 2011, SIAM J. Sci.
Comput. 33, §2). A tensor is left-isometric when Σ_{l,p} A[l,p,r] A[l,p,r'] = δ_{rr'} and
right-isometric when Σ_{p,r} A[l,p,r] A[l',p,r] = δ_{ll'}. "left": T_0..T_{n-1} left-isometric,
everything else in T_n; "right": T_1..T_n right-isometric, the rest in T_0; "mixed": the
orthogonality centre at the output core (sites left of it left-isometric, sites right of it
right-isometric). Each is made by a QR sweep (`numpy.linalg.qr`).

**Norm.** For an MPS every QR step's R factor and the centre are renormalised to unit
Frobenius norm and their log-norms accumulated, so chains of thousands of sites neither
overflow nor underflow: the MPS functions return (params, log_norm) with
T = exp(log_norm) · T(params), ‖T(params)‖_F = 1 — the convention of `distill.tn.mps.contract`.
TT-matrices (a few cores) keep their norm in the centre core.

**Uniform bond dimension.** `MPSParams` stacks cores with one χ. A QR of a (χ_l·d, χ) matrix
with χ_l·d < χ (near the chain ends) has only χ_l·d columns: that bond is padded with zeros
back to χ, so the cores keep their shapes and a padded core is isometric on its first
χ_t = min(χ, product of the physical sizes on its side) bond channels only
(Σ A A = diag(1,…,1, 0,…,0)). The contraction is unchanged.

**Schmidt values and entropy.** The Schmidt values at bond t are the singular values of T
(all n pixel legs *and* the output leg) unfolded as (legs of T_0..T_t) × (legs of T_{t+1}..T_n),
normalised to Σ s² = 1; the entropy is the von Neumann entropy S = −Σ s² ln s² in nats of
that bipartition (seed 001, "Entanglement entropy": S = −Tr ρ ln ρ ≤ ln χ). The output leg
is therefore on the left of bonds t ≥ k and on the right of bonds t < k; bonds k-1 and k
both cut between sites k-1 and k, with o on either side. Why this convention rather than one
entropy per output o: the bond dimension is shared by all m outputs and truncating a bond
changes the whole m-vector-valued tensor, whose error is exactly the discarded Schmidt
weight of this bipartition (Eckart–Young); the per-output states are not simultaneously in
canonical form and their entropies do not bound the bond. For a TT-matrix W is read as the
vector W[(b_1 a_1), …, (b_d a_d)] (the TT-SVD unfoldings), normalised by ‖W‖_F.

**Truncation** (`truncate`, `tt_truncate`): bring the chain to right-canonical form, then
sweep left to right, SVD the centre at every bond and keep the r largest singular values —
at most `max_bond` / `max_rank`, and the fewest whose discarded tail has
Σ s² ≤ ε² / (number of bonds) (of the normalised tensor), numerically-zero values always
dropped (the rule of `distill.tn.tt.tt_svd`, Oseledets 2011 Thm. 2.2). The discarded parts
of successive bonds are mutually orthogonal (each lies on right Schmidt vectors the later
steps never touch), so ‖T − T′‖²_F / ‖T‖²_F = Σ_t discarded_t exactly and, with ε,
≤ ε². The first truncated bond discards exactly the tail of its Schmidt spectrum. On a
TT-matrix this is the same algorithm as TT-SVD of the dense W (same ranks, same W′).

Einsum letters: l/r left/right bond · p physical (for the output core: its output leg) ·
k the new bond a QR or SVD creates.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from distill.errors import DistillError
from distill.tn.mps import MPSParams
from distill.tn.tt import _truncation_rank

__all__ = [
    "left_canonical",
    "right_canonical",
    "mixed_canonical",
    "schmidt_values",
    "entanglement_entropy",
    "bond_report",
    "truncate",
    "MPSTruncation",
    "tt_left_canonical",
    "tt_right_canonical",
    "tt_schmidt_values",
    "tt_entanglement_entropy",
    "tt_truncate",
    "TTTruncation",
    "entropy",
]


class MPSTruncation(NamedTuple):
    """Result of `truncate`: T ≈ exp(log_norm) · T(params)."""

    params: MPSParams  # mixed-canonical, uniform bond dimension χ′
    log_norm: float  # log ‖T‖_F of the input MPS
    ranks: tuple[int, ...]  # (n,) bond dimensions kept, before padding to χ′
    discarded: np.ndarray  # (n,) float64 discarded Σ s² per bond, relative to ‖T‖²_F


class TTTruncation(NamedTuple):
    """Result of `tt_truncate`: W ≈ TT(cores)."""

    cores: list  # G_k (r′_{k-1}, b_k, a_k, r′_k) numpy; cores 0..d-2 left-isometric
    ranks: tuple[int, ...]  # (r′_0, …, r′_d), r′_0 = r′_d = 1
    discarded: np.ndarray  # (d-1,) float64 discarded Σ s² per cut, relative to ‖W‖²_F


# ---------------------------------------------------------------------------------------
# Entropy of a spectrum
# ---------------------------------------------------------------------------------------


def entropy(schmidt) -> float:
    """Von Neumann entropy in nats, −Σ λ ln λ with λ = s² / Σ s², of Schmidt values s (r,).

    Zero values contribute 0 (the limit λ ln λ → 0). Seed 001, "Entanglement entropy".
    Raises: DistillError if every value is zero.
    """
    s = np.asarray(schmidt, dtype=np.float64)
    total = float(np.einsum("k,k->", s, s))
    if not total > 0:
        raise DistillError("entropy: the Schmidt values are all zero (the tensor is zero)")
    lam = s * s / total
    lam = lam[lam > 0]
    return float(-np.einsum("k,k->", lam, np.log(lam)))


# ---------------------------------------------------------------------------------------
# Chain sweeps (float64, variable bond sizes)
# ---------------------------------------------------------------------------------------


def _qr_left(chain: list, start: int, stop: int, renormalise: bool) -> float:
    """Move the centre from chain[start] to chain[stop] (start ≤ stop) by QR; returns Σ log ‖R‖."""
    log_norm = 0.0
    for t in range(start, stop):
        l, p, r = chain[t].shape
        q, rr = np.linalg.qr(chain[t].reshape(l * p, r))
        if renormalise:
            log_norm += _renormalise_inplace(rr)
        chain[t] = q.reshape(l, p, q.shape[1])
        chain[t + 1] = np.einsum("kl,lpr->kpr", rr, chain[t + 1])
    return log_norm


def _qr_right(chain: list, start: int, stop: int, renormalise: bool) -> float:
    """Move the centre from chain[start] to chain[stop] (start ≥ stop) by LQ; returns Σ log ‖L‖."""
    log_norm = 0.0
    for t in range(start, stop, -1):
        l, p, r = chain[t].shape
        q, rr = np.linalg.qr(chain[t].reshape(l, p * r).T)  # A = rrᵀ qᵀ
        if renormalise:
            log_norm += _renormalise_inplace(rr)
        chain[t] = q.T.reshape(q.shape[1], p, r)
        chain[t - 1] = np.einsum("lpr,kr->lpk", chain[t - 1], rr)
    return log_norm


def _renormalise_inplace(a: np.ndarray) -> float:
    nrm = float(np.linalg.norm(a))
    if not nrm > 0:
        raise DistillError(
            "canonical form: the tensor network is zero (‖T‖ = 0); there is nothing to normalise"
        )
    a /= nrm
    return math.log(nrm)


def _canonical_chain(chain: list, centre: int) -> float:
    """In place: centre at chain[centre], isometric elsewhere, ‖T‖ = 1; returns log ‖T‖."""
    log_norm = _qr_left(chain, 0, centre, True)
    log_norm += _qr_right(chain, len(chain) - 1, centre, True)
    return log_norm + _renormalise_inplace(chain[centre])


def _schmidt_chain(chain: list) -> list[np.ndarray]:
    """Schmidt values (descending, Σ s² = 1, numerical zeros dropped) at every bond of a chain."""
    _canonical_chain(chain, len(chain) - 1)  # left-canonical, ‖T‖ = 1
    out = []
    for t in range(len(chain) - 1, 0, -1):
        l, p, r = chain[t].shape
        m = chain[t].reshape(l, p * r)
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        chain[t] = vt.reshape(-1, p, r)
        chain[t - 1] = np.einsum("lpr,rk,k->lpk", chain[t - 1], u, s)
        tol = s[0] * max(m.shape) * np.finfo(np.float64).eps if s.size else 0.0
        s = s[s > tol]
        out.append(s / np.sqrt(np.einsum("k,k->", s, s)))
    return out[::-1]


def _truncate_chain(chain: list, max_bond, eps) -> tuple[float, list[int], np.ndarray]:
    """In place: right-canonicalise (‖T‖ = 1), then truncate every bond left to right.

    Returns (log ‖T‖, kept rank per bond, discarded Σ s² per bond); the centre ends at
    chain[-1] with norm sqrt(1 − Σ discarded).
    """
    n_bonds = len(chain) - 1
    log_norm = _canonical_chain(chain, 0)
    delta = float(eps) / math.sqrt(n_bonds) if eps else 0.0
    ranks, discarded = [], np.zeros(n_bonds)
    for t in range(n_bonds):
        l, p, r = chain[t].shape
        m = chain[t].reshape(l * p, r)
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        keep = _truncation_rank(s, delta, max_bond, m.shape)
        discarded[t] = float(np.einsum("k,k->", s[keep:], s[keep:]))
        chain[t] = u[:, :keep].reshape(l, p, keep)
        chain[t + 1] = np.einsum("k,kl,lpr->kpr", s[:keep], vt[:keep], chain[t + 1])
        ranks.append(keep)
    return log_norm, ranks, discarded


# ---------------------------------------------------------------------------------------
# MPS <-> chain
# ---------------------------------------------------------------------------------------


def _check_mps(params) -> None:
    if not isinstance(params, MPSParams):
        raise DistillError(
            f"canonical form: expected distill.tn.mps.MPSParams, got {type(params).__name__}"
        )
    shapes = [tuple(np.shape(a)) for a in params]
    if len(shapes[0]) != 2 or len(shapes[2]) != 3:
        raise DistillError(
            f"MPSParams: first must be (d, χ) and out (χ, m, χ), got {shapes[0]} and {shapes[2]}"
        )
    d, chi = shapes[0]
    m = shapes[2][1]
    want = {
        "left": (shapes[1][:1] + (d, chi, chi)) if shapes[1] else None,
        "out": (chi, m, chi),
        "right": (shapes[3][:1] + (d, chi, chi)) if shapes[3] else None,
        "last": (d, chi),
    }
    for name, shape in zip(MPSParams._fields[1:], shapes[1:]):
        if shape != want[name]:
            raise DistillError(
                f"MPSParams: {name} has shape {shape}, expected {want[name]} for d = {d}, "
                f"χ = {chi}, m = {m}; build the cores with distill.tn.mps.init_mps"
            )


def _to_chain(params: MPSParams) -> tuple[list, int]:
    """MPSParams → (chain of n+1 float64 tensors (l, p, r), k = index of the output core)."""
    first, left, out, right, last = (np.asarray(a, dtype=np.float64) for a in params)
    chain = [first[None]]
    chain += [np.einsum("plr->lpr", a) for a in left]
    chain.append(out.copy())
    chain += [np.einsum("plr->lpr", a) for a in right]
    chain.append(np.einsum("pl->lp", last)[..., None])
    return chain, 1 + left.shape[0]


def _pad(a: np.ndarray, chi_l: int, chi_r: int) -> np.ndarray:
    l, _, r = a.shape
    return np.pad(a, ((0, chi_l - l), (0, 0), (0, chi_r - r)))


def _from_chain(chain: list, k: int, chi: int, dtype) -> MPSParams:
    """Chain → MPSParams with every inner bond zero-padded to χ; arrays of `dtype`."""
    n = len(chain) - 1
    first = _pad(chain[0], 1, chi)[0]
    left = [np.einsum("lpr->plr", _pad(a, chi, chi)) for a in chain[1:k]]
    out = _pad(chain[k], chi, chi)
    right = [np.einsum("lpr->plr", _pad(a, chi, chi)) for a in chain[k + 1 : n]]
    last = np.einsum("lp->pl", _pad(chain[n], chi, 1)[..., 0])
    d = first.shape[0]

    def stack(cores):
        return np.stack(cores) if cores else np.zeros((0, d, chi, chi))

    arrays = (first, stack(left), out, stack(right), last)
    return MPSParams(*(jnp.asarray(a, dtype=dtype) for a in arrays))


def _canonical(params: MPSParams, where: str) -> tuple[MPSParams, float]:
    _check_mps(params)
    chain, k = _to_chain(params)
    centre = {"left": len(chain) - 1, "right": 0, "mixed": k}[where]
    log_norm = _canonical_chain(chain, centre)
    return _from_chain(chain, k, params.first.shape[1], params.out.dtype), log_norm


def left_canonical(params: MPSParams) -> tuple[MPSParams, float]:
    """Left-canonical form of an MPS: (params′, log_norm) with T = exp(log_norm) · T(params′).

    Every tensor except `last` — first, left, out (as a tensor (l, o, r)), right — is
    left-isometric (up to the zero padding of small boundary bonds, module notes); `last`
    holds the rest and has unit norm. Shapes and dtype as the input; log_norm is log ‖T‖_F.
    Source: Schollwöck 2011, §4.4.1 (QR sweep). Raises: DistillError for params that are not
    a consistent MPSParams, or an MPS that is zero.
    """
    return _canonical(params, "left")


def right_canonical(params: MPSParams) -> tuple[MPSParams, float]:
    """Right-canonical form: every tensor except `first` right-isometric, `first` of unit norm.

    Returns (params′, log_norm) with T = exp(log_norm) · T(params′); shapes and dtype as the
    input. Source: Schollwöck 2011, §4.4.2. Raises: as `left_canonical`.
    """
    return _canonical(params, "right")


def mixed_canonical(params: MPSParams) -> tuple[MPSParams, float]:
    """Mixed-canonical form with the orthogonality centre at the output core.

    `first` and `left` are left-isometric, `right` and `last` right-isometric, and `out`
    (χ, m, χ) holds the non-isometric part with ‖out‖_F = 1 (= ‖T(params′)‖_F). Returns
    (params′, log_norm) with T = exp(log_norm) · T(params′); shapes and dtype as the input.
    Source: Schollwöck 2011, §4.4.3. Raises: as `left_canonical`.
    """
    return _canonical(params, "mixed")


def schmidt_values(params: MPSParams) -> list[np.ndarray]:
    """Schmidt values at each of the n bonds of the MPS (module notes: bond t joins chain
    tensors t and t+1; the output leg counts on the side the output core is on).

    Returns n float64 arrays, descending, Σ s² = 1, numerically-zero values dropped (so
    len(s) is the Schmidt rank of that bipartition). Source: Schollwöck 2011, §4.1.
    Raises: DistillError for inconsistent MPSParams or a zero MPS.
    """
    _check_mps(params)
    chain, _ = _to_chain(params)
    return _schmidt_chain(chain)


def entanglement_entropy(params: MPSParams) -> np.ndarray:
    """Von Neumann entanglement entropy (nats) at each of the n bonds: (n,) float64.

    S_t = −Σ s² ln s² of `schmidt_values`; 0 for a product bipartition, ≤ ln χ. Seed 001.
    Raises: as `schmidt_values`.
    """
    return np.asarray([entropy(s) for s in schmidt_values(params)])


def bond_report(params: MPSParams) -> list[dict]:
    """One JSON-able dict per bond of the MPS:

    {"bond": t, "sites_left": number of pixel sites left of the bond, "output_side": "left" or
    "right", "chi": Schmidt rank, "chi_stored": χ, "entropy": S_t (nats), "max_entropy": the
    largest entropy this bond can hold, ln min(χ, dimension of either side), "schmidt":
    [s_1, …]}. Raises: as `schmidt_values`.
    """
    _check_mps(params)
    d, chi = (int(v) for v in params.first.shape)
    m = int(params.out.shape[1])
    k = 1 + int(params.left.shape[0])
    n = k + 1 + int(params.right.shape[0])
    rows = []
    for t, s in enumerate(schmidt_values(params)):
        sites_left = t + 1 if t < k else t
        out_left = t >= k
        log_left = sites_left * math.log(d) + (math.log(m) if out_left else 0.0)
        log_right = (n - sites_left) * math.log(d) + (0.0 if out_left else math.log(m))
        rows.append({
            "bond": t,
            "sites_left": sites_left,
            "output_side": "left" if out_left else "right",
            "chi": int(s.size),
            "chi_stored": chi,
            "entropy": entropy(s),
            "max_entropy": min(math.log(chi), log_left, log_right),
            "schmidt": [float(v) for v in s],
        })
    return rows


def _check_truncation(max_bond, eps, what: str, knob: str) -> None:
    if max_bond is not None and (
        isinstance(max_bond, bool) or not isinstance(max_bond, Integral) or max_bond < 1
    ):
        raise DistillError(f"{what}: {knob} must be an integer >= 1 or None, got {max_bond!r}")
    if eps is not None and (
        isinstance(eps, bool) or not isinstance(eps, Real) or not 0 <= eps < 1
    ):
        raise DistillError(
            f"{what}: eps (relative Frobenius error) must be a number in [0, 1) or None, got {eps!r}"
        )


def truncate(params: MPSParams, *, max_bond: int | None = None, eps: float | None = None
             ) -> MPSTruncation:
    """SVD truncation of every bond of an MPS to χ′ = max_bond and/or relative error ε.

    Algorithm and error identity in the module notes: the returned tensor
    T′ = exp(log_norm) · T(params′) satisfies ‖T − T′‖_F / ‖T‖_F = sqrt(Σ discarded) exactly,
    ≤ eps when eps is given (and max_bond does not cap harder). params′ is mixed-canonical
    (centre at the output core, ‖out‖_F = sqrt(1 − Σ discarded)) with uniform bond dimension
    χ′ = max_bond if given (a bond kept smaller, or max_bond > χ, is zero-padded), else the
    largest kept rank. With neither knob only numerically-zero Schmidt values are dropped.
    Shapes: first (d, χ′), left (k-1, d, χ′, χ′), out (χ′, m, χ′), …; dtype as the input.
    Source: Schollwöck 2011, §4.5.1 (SVD compression); Eckart–Young.
    Raises: DistillError for inconsistent MPSParams, a zero MPS, max_bond not an integer ≥ 1,
    or eps not in [0, 1).
    """
    _check_mps(params)
    _check_truncation(max_bond, eps, "truncate", "max_bond")
    chain, k = _to_chain(params)
    log_norm, ranks, discarded = _truncate_chain(chain, max_bond, eps)
    _qr_right(chain, len(chain) - 1, k, False)  # centre back to the output core
    chi = int(max_bond) if max_bond is not None else max(ranks)
    out = _from_chain(chain, k, chi, params.out.dtype)
    return MPSTruncation(out, log_norm, tuple(ranks), discarded)


# ---------------------------------------------------------------------------------------
# TT-matrices
# ---------------------------------------------------------------------------------------


def _tt_chain(cores: Sequence, what: str) -> tuple[list, list]:
    """Cores (r, b, a, r) → (chain of float64 (l, p=(b a), r) tensors, [(b, a), …])."""
    if isinstance(cores, (str, bytes)) or not isinstance(cores, Sequence) or not cores:
        raise DistillError(f"{what}: cores must be a non-empty list of (r, b, a, r) arrays")
    arrays = [np.asarray(c, dtype=np.float64) for c in cores]
    for i, c in enumerate(arrays):
        if c.ndim != 4:
            raise DistillError(
                f"{what}: core {i} must have shape (r_left, out_mode, in_mode, r_right), "
                f"got {c.shape}"
            )
    if arrays[0].shape[0] != 1 or arrays[-1].shape[3] != 1:
        raise DistillError(f"{what}: the boundary ranks must be 1, got {arrays[0].shape[0]} "
                           f"and {arrays[-1].shape[3]}")
    for i in range(1, len(arrays)):
        if arrays[i].shape[0] != arrays[i - 1].shape[3]:
            raise DistillError(f"{what}: core {i - 1} right rank {arrays[i - 1].shape[3]} does "
                               f"not match core {i} left rank {arrays[i].shape[0]}")
    modes = [(c.shape[1], c.shape[2]) for c in arrays]
    chain = [c.reshape(c.shape[0], c.shape[1] * c.shape[2], c.shape[3]) for c in arrays]
    return chain, modes


def _tt_cores(chain: list, modes: list, dtype) -> list[np.ndarray]:
    return [
        np.asarray(c.reshape(c.shape[0], b, a, c.shape[2]), dtype=dtype)
        for c, (b, a) in zip(chain, modes)
    ]


def _tt_dtype(cores: Sequence):
    dt = np.asarray(cores[0]).dtype
    return dt if np.issubdtype(dt, np.floating) else np.float32


def tt_left_canonical(cores: Sequence) -> list[np.ndarray]:
    """Left-canonical TT-matrix: cores 0..d-2 left-isometric over (l, b, a), the norm in core d-1.

    cores G_k (r_{k-1}, b_k, a_k, r_k) → numpy cores of the input's dtype representing the
    same W; a rank r_k larger than r_{k-1}·b_k·a_k (it adds nothing) shrinks to that product.
    Source: Oseledets 2011, §2 (orthogonalisation by QR). Raises: DistillError for cores
    that do not form a TT-matrix.
    """
    chain, modes = _tt_chain(cores, "tt_left_canonical")
    _qr_left(chain, 0, len(chain) - 1, False)
    return _tt_cores(chain, modes, _tt_dtype(cores))


def tt_right_canonical(cores: Sequence) -> list[np.ndarray]:
    """Right-canonical TT-matrix: cores 1..d-1 right-isometric over (b, a, r), the norm in core 0.

    Same W, numpy cores of the input's dtype; a rank r_{k-1} larger than b_k·a_k·r_k shrinks
    to that product.
    Raises: DistillError for cores that do not form a TT-matrix.
    """
    chain, modes = _tt_chain(cores, "tt_right_canonical")
    _qr_right(chain, len(chain) - 1, 0, False)
    return _tt_cores(chain, modes, _tt_dtype(cores))


def tt_schmidt_values(cores: Sequence) -> list[np.ndarray]:
    """Schmidt values of W across every cut t = 1..d-1, W read as a vector in the modes
    (b_1 a_1), …, (b_d a_d): the singular values of the t-th TT-SVD unfolding of W, divided
    by ‖W‖_F. Returns d-1 float64 arrays, descending, numerical zeros dropped.
    Source: Oseledets 2011, eq. 2.2 (unfoldings). Raises: DistillError for cores that do not
    form a TT-matrix, or W = 0.
    """
    chain, _ = _tt_chain(cores, "tt_schmidt_values")
    return _schmidt_chain(chain)


def tt_entanglement_entropy(cores: Sequence) -> np.ndarray:
    """Von Neumann entropy (nats) of W across every cut: (d-1,) float64. Seed 001.

    Raises: as `tt_schmidt_values`.
    """
    return np.asarray([entropy(s) for s in tt_schmidt_values(cores)])


def tt_truncate(cores: Sequence, *, max_rank: int | None = None, eps: float | None = None
                ) -> TTTruncation:
    """Truncate a TT-matrix to ranks ≤ max_rank and/or relative Frobenius error ε.

    Right-canonicalise, then SVD-truncate cut by cut from the left (module notes); this is
    TT-SVD (`distill.tn.tt.tt_svd`) applied to the W the cores represent, with the same rank
    rule, without forming W. Returns TTTruncation(cores′ (left-isometric 0..d-2, numpy, the
    input's dtype), ranks, discarded) with ‖W − W′‖_F / ‖W‖_F = sqrt(Σ discarded) exactly
    (≤ eps when eps is given and max_rank does not cap harder). Source: Oseledets 2011,
    Alg. 1 and Thm. 2.2. Raises: DistillError for cores that do not form a TT-matrix,
    W = 0, max_rank not an integer ≥ 1, or eps not in [0, 1).
    """
    chain, modes = _tt_chain(cores, "tt_truncate")
    _check_truncation(max_rank, eps, "tt_truncate", "max_rank")
    if len(chain) == 1:
        return TTTruncation(_tt_cores(chain, modes, _tt_dtype(cores)), (1, 1), np.zeros(0))
    log_norm, ranks, discarded = _truncate_chain(chain, max_rank, eps)
    chain[-1] = chain[-1] * math.exp(log_norm)
    return TTTruncation(_tt_cores(chain, modes, _tt_dtype(cores)), (1, *ranks, 1), discarded)
