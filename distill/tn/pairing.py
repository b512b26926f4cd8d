"""Pairings for codependent feature maps (seed 000 §3): which input each input is paired with.

Convention — one MPS site per input, with its partner. For n inputs the chain keeps n sites
and site i sees φ(x_i, x_{partners[i]}), where `partners` is an int32 array (n,) of input
indices. So the MPS shape (n sites, d physical) is the same as for a local map, and the
partner array is a plain integer array that a layer stores as a non-trainable nnx Variable
and restores exactly from a checkpoint.

Partners index *input features* (before any site ordering). A layer that also permutes its
inputs (SiteOrder, site s reads input order[s]) computes

    phi = apply_pairwise(fm.fn, x, partners)[:, order]        # (B, n, d), site s ← order[s]

so the pairing does not change when the site order does. `neighbour_partners(n, order)`
pairs neighbours *along the chain* instead.

Pairings:
  neighbour  partners[i] = i + 1 mod n                (seed 000 §3: φ_i(x_i, x_{i+1}))
  random     a random n-cycle drawn with numpy default_rng(seed): no self-pairs, and every
             input is some site's partner exactly once (each x_i enters two sites)
  explicit   any (n,) integer array with entries in [0, n) and no self-pairs
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from jax import Array

from distill.errors import DistillError

__all__ = [
    "PAIRINGS", "neighbour_partners", "random_partners", "check_partners", "make_partners",
    "apply_pairwise",
]

PAIRINGS = ("neighbour", "random")


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise DistillError(f"pairing: the number of inputs must be an integer >= 2, got {n!r}")
    return int(n)


def check_partners(partners, n: int) -> np.ndarray:
    """A valid partner array as int32 (n,): integers in [0, n), partners[i] != i.

    Raises DistillError with one line naming the first problem.
    """
    n = _check_n(n)
    arr = np.asarray(partners)
    if arr.shape != (n,):
        raise DistillError(
            f"pairing: partners must have one entry per input, shape ({n},); got shape "
            f"{arr.shape}"
        )
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise DistillError(f"pairing: partners must be integers, got dtype {arr.dtype}")
    bad = np.flatnonzero((arr < 0) | (arr >= n))
    if bad.size:
        i = int(bad[0])
        raise DistillError(
            f"pairing: partners[{i}] = {int(arr[i])} is not an input index in [0, {n})"
        )
    selfs = np.flatnonzero(arr == np.arange(n))
    if selfs.size:
        i = int(selfs[0])
        raise DistillError(
            f"pairing: input {i} is paired with itself; a pair needs two different inputs "
            "(use a local feature map for φ(x_i) alone)"
        )
    return arr.astype(np.int32)


def neighbour_partners(n: int, order: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """partners[i] = i + 1 mod n: int32 (n,).

    With a site order (site s reads input order[s]) the neighbours are taken along the
    chain instead: partners[order[s]] = order[s + 1 mod n].
    """
    n = _check_n(n)
    if order is None:
        return ((np.arange(n) + 1) % n).astype(np.int32)
    order = np.asarray(order)
    if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
        raise DistillError(f"pairing: order must be a permutation of range({n})")
    partners = np.empty(n, np.int32)
    partners[order] = np.roll(order, -1)
    return partners


def random_partners(n: int, seed: int) -> np.ndarray:
    """A random pairing fixed by `seed`: int32 (n,), no self-pairs.

    perm = default_rng(seed).permutation(n); partners[perm[k]] = perm[k + 1 mod n] — one
    random cycle through all inputs, so each input is also exactly one site's partner.
    The same (n, seed) always gives the same array (numpy's PCG64 stream is stable).
    """
    n = _check_n(n)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DistillError(f"pairing: seed must be an integer, got {seed!r}")
    perm = np.random.default_rng(int(seed)).permutation(n)
    partners = np.empty(n, np.int32)
    partners[perm] = np.roll(perm, -1)
    return partners


def make_partners(pairing, n: int, *, seed: int = 0, order=None) -> np.ndarray:
    """Partner array int32 (n,) from "neighbour", "random" (with seed) or an explicit array."""
    if isinstance(pairing, str):
        if pairing == "neighbour":
            return neighbour_partners(n, order)
        if pairing == "random":
            return random_partners(n, seed)
        raise DistillError(
            f"unknown pairing {pairing!r}; choose one of {list(PAIRINGS)} or pass a partner "
            "array"
        )
    return check_partners(pairing, n)


def apply_pairwise(fn: Callable[[Array, Array], Array], x: Array, partners) -> Array:
    """φ at every site: out[b, i] = fn(x[b, i], x[b, partners[i]]).

    fn: pairwise map (x_a, x_b) (...,) → (..., d) (a FeatureMap of arity 2 works);
    x (B, n); partners int (n,) → (B, n, d).
    """
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise DistillError(f"apply_pairwise: expected x of shape (batch, n), got {x.shape}")
    partners = jnp.asarray(partners)
    if partners.shape != (x.shape[1],):
        raise DistillError(
            f"apply_pairwise: partners must have shape ({x.shape[1]},) for x of shape "
            f"{tuple(x.shape)}, got {tuple(partners.shape)}"
        )
    return fn(x, jnp.take(x, partners, axis=1))
