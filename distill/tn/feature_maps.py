"""Local feature maps φ: ℝ → ℝ^d, applied elementwise to inputs scaled to [0, 1].

Every map takes an array x of shape (...,) and returns φ(x) of shape (..., d), with the
physical index `p` last. Floating dtypes are preserved; integer inputs are promoted to the
default float dtype.
"""

from __future__ import annotations

import math
from typing import Callable

import jax.numpy as jnp
from jax import Array

from distill.errors import DistillError

__all__ = ["trig", "poly", "FEATURE_MAPS", "get_feature_map"]


def _as_float(x) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _check_d(name: str, d) -> int:
    if isinstance(d, bool) or not isinstance(d, int) or d < 2:
        raise DistillError(
            f"feature map {name!r}: feature_dim must be an integer >= 2, got {d!r}; "
            "pass feature_dim=2 or larger"
        )
    return d


def trig(x, d: int = 2) -> Array:
    """Stoudenmire–Schwab map: φ_s(x) = sqrt(C(d-1, s)) cos(πx/2)^(d-1-s) sin(πx/2)^s.

    x (...,) → (..., d), s = 0..d-1. For d = 2 this is [cos(πx/2), sin(πx/2)].
    The components satisfy Σ_s φ_s(x)² = (cos² + sin²)^(d-1) = 1 for every x.
    """
    d = _check_d("trig", d)
    x = _as_float(x)
    c = jnp.cos(0.5 * jnp.pi * x)
    s = jnp.sin(0.5 * jnp.pi * x)
    comps = [
        math.sqrt(math.comb(d - 1, k)) * c ** (d - 1 - k) * s ** k for k in range(d)
    ]
    return jnp.stack(comps, axis=-1).astype(x.dtype)


def poly(x, d: int = 3) -> Array:
    """Polynomial map [1, x, x², …, x^(d-1)]: x (...,) → (..., d)."""
    d = _check_d("poly", d)
    x = _as_float(x)
    comps = [jnp.ones_like(x)]
    for _ in range(1, d):
        comps.append(comps[-1] * x)
    return jnp.stack(comps, axis=-1)


FEATURE_MAPS: dict[str, Callable[..., Array]] = {"trig": trig, "poly": poly}


def get_feature_map(name: str, d: int) -> Callable[[Array], Array]:
    """The map `name` with feature dimension `d` bound: x (...,) → (..., d)."""
    if name not in FEATURE_MAPS:
        raise DistillError(
            f"unknown feature map {name!r}; choose one of {sorted(FEATURE_MAPS)}"
        )
    d = _check_d(name, d)
    fmap = FEATURE_MAPS[name]

    def feature_map(x) -> Array:
        return fmap(x, d)

    feature_map.__name__ = f"{name}_d{d}"
    feature_map.__doc__ = f"{name} feature map with d={d}: x (...,) → (..., {d})."
    return feature_map
