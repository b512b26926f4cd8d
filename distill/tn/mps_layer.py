"""Output side of a wide MPS hidden layer: pure functions on arrays.

An MPS hidden layer (`distill.nn.MPSHidden`) maps x (B, n_in) to (B, n_out) with
n_out in the hundreds. The chain of n_in sites is the one of `distill.tn.mps` (contracted by
`tn.mps.contract`, unit-normalised environment vectors L̂, R̂ with the log-norm separated);
what is new here is how the output core O (χ, n_out, χ) is represented, since a free core
costs χ²·n_out parameters (131,072 for χ 16, n_out 512). Two factorised forms:

* **output MPO** ("factors"): n_out = m_1·…·m_K and K small cores placed next to each other
  between the two half-chains, G_k (ρ_{k-1}, m_k, ρ_k) with ρ_0 = ρ_K = χ and inner bonds
  ρ (`out_bond`):

      O[l, (o_1 … o_K), r] = Σ G_1[l, o_1, ·] G_2[·, o_2, ·] … G_K[·, o_K, r]

  i.e. the layer is an MPO from the feature space to the tensor-product output space
  ℝ^{m_1} ⊗ … ⊗ ℝ^{m_K}. `output_core` forms O once per step (cost n_out·χ·ρ·(χ + ρ), no
  batch factor); the per-sample output contraction L̂·O·R̂ then costs n_out·χ², the same as
  a free core. Parameters Σ_k ρ_{k-1}·m_k·ρ_k (3·8·16² = 6,144 for 512 = 8·8·8, χ = ρ = 16).
* **low-rank readout** ("readout"): an output core (χ, r, χ) and a dense r → n_out matrix.

Einsum letters: l/r bond · m inner output bond · o output · b batch.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import Array

from distill.errors import DistillError

__all__ = ["output_core", "init_output_factors", "output_factor_shapes"]


def output_factor_shapes(
    chi: int, factors: Sequence[int], out_bond: int
) -> list[tuple[int, int, int]]:
    """Shapes (ρ_{k-1}, m_k, ρ_k) of the output cores; ρ_0 = ρ_K = χ, inner ρ = out_bond."""
    k = len(factors)
    if k == 0:
        raise DistillError("MPSHidden: out_factors must name at least one output leg")
    bonds = [chi] + [out_bond] * (k - 1) + [chi]
    return [(bonds[i], int(factors[i]), bonds[i + 1]) for i in range(k)]


def init_output_factors(
    key: Array, chi: int, factors: Sequence[int], out_bond: int, dtype=jnp.float32
) -> list[Array]:
    """Output cores with i.i.d. normal entries, scaled so that O has unit variance per entry.

    An entry of O is a sum over ∏ (inner bonds) = out_bond^{K-1} paths of products of K
    independent zero-mean entries, so Var(O) = out_bond^{K-1}·σ^{2K}; σ² = out_bond^{-(K-1)/K}
    gives Var(O) = 1, and z = L̂·O·R̂ with unit L̂, R̂ then has unit variance per output, as
    for the free output core of `tn.mps.init_mps`.
    """
    shapes = output_factor_shapes(chi, factors, out_bond)
    k = len(shapes)
    std = float(out_bond) ** (-(k - 1) / (2 * k))
    sizes = [math.prod(s) for s in shapes]
    flat = std * jax.random.normal(key, (sum(sizes),), dtype)
    cores, start = [], 0
    for size, shape in zip(sizes, shapes):
        cores.append(jnp.reshape(flat[start : start + size], shape))
        start += size
    return cores


def output_core(cores: Sequence[Array]) -> Array:
    """Output MPO cores G_k (ρ_{k-1}, m_k, ρ_k) → the output core O (χ, ∏ m_k, χ).

    The flattened output index is row-major in (o_1, …, o_K): o = ((o_1·m_2 + o_2)·m_3 + …).
    """
    acc = cores[0]  # (l, o, m)
    for g in cores[1:]:
        acc = jnp.einsum("lom,mpr->lopr", acc, g)
        acc = jnp.reshape(acc, (acc.shape[0], -1, acc.shape[-1]))
    return acc
