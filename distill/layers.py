"""Flax NNX modules that hold tensor-network parameters and call the pure functions in tn/.

Drop any of these into your own `nnx.Module` and train it with
`nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from distill.errors import DistillError
from distill.tn import mps as mps_lib
from distill.tn.feature_maps import get_feature_map

__all__ = ["param_count", "SiteOrder", "MPS"]


def param_count(module: nnx.Module) -> int:
    """Total number of scalars in all `nnx.Param` leaves of `module`."""
    state = nnx.state(module, nnx.Param)
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(state)))


class SiteOrder(nnx.Variable):
    """Non-trainable permutation of the input features (int32 (n,)), saved with the state.

    The layer reads input feature `order[s]` at site `s`.
    """


def _validate_order(site_order, n_sites: int) -> np.ndarray:
    if site_order is None:
        return np.arange(n_sites, dtype=np.int32)
    order = np.asarray(site_order)
    if (
        order.ndim != 1
        or order.shape[0] != n_sites
        or not np.issubdtype(order.dtype, np.integer)
        or not np.array_equal(np.sort(order), np.arange(n_sites))
    ):
        raise DistillError(
            f"MPS: site_order must be a permutation of range({n_sites}) (one integer per "
            f"input feature, each used once); got shape {order.shape}, dtype {order.dtype}"
        )
    return order.astype(np.int32)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DistillError(f"MPS: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class MPS(nnx.Module):
    """MPS layer: x (B, n) with values in [0, 1] → (B, m).

    out = exp(log_scale) · z, where (z, log_norm) = tn.mps.contract(cores, φ(x[:, order])).
    z is the output core contracted with the unit-normalised left and right environment
    vectors; the accumulated log-norm (the same for every output) is dropped and one learned
    scalar `log_scale` sets the logit size instead (DESIGN.md §1: this trained better).

    Parameters (nnx.Param): first (d, χ), left (k-1, d, χ, χ), out (χ, m, χ),
    right (n-k-1, d, χ, χ), last (d, χ), log_scale (). `site_order` (SiteOrder) is fixed.
    """

    def __init__(
        self,
        n_sites: int,
        n_out: int,
        *,
        bond_dim: int,
        feature_map: str = "trig",
        feature_dim: int = 2,
        output_site: int | None = None,
        init_std: float = 0.01,
        site_order: Sequence[int] | np.ndarray | Array | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        n_sites = _check_int("n_sites", n_sites, 2)
        n_out = _check_int("n_out", n_out, 1)
        bond_dim = _check_int("bond_dim", bond_dim, 1)
        feature_dim = _check_int("feature_dim", feature_dim, 2)
        k = mps_lib.resolve_output_site(n_sites, output_site)
        get_feature_map(feature_map, feature_dim)  # validates the name early
        order = _validate_order(site_order, n_sites)

        self.n_sites = n_sites
        self.n_out = n_out
        self.bond_dim = bond_dim
        self.feature_map = feature_map
        self.feature_dim = feature_dim
        self.output_site = k
        self.dtype = dtype

        p = mps_lib.init_mps(
            rngs.params(), n_sites, feature_dim, bond_dim, n_out,
            output_site=k, init_std=init_std, dtype=dtype,
        )
        self.first = nnx.Param(p.first)
        self.left = nnx.Param(p.left)
        self.out = nnx.Param(p.out)
        self.right = nnx.Param(p.right)
        self.last = nnx.Param(p.last)
        # z = L̂·out·R̂ already has unit variance per output at init (out ~ N(0, 1)), so
        # exp(0) = 1 starts the logits at O(1).
        self.log_scale = nnx.Param(jnp.zeros((), dtype))
        self.site_order = SiteOrder(jnp.asarray(order))

    @property
    def params(self) -> mps_lib.MPSParams:
        """The cores as a plain MPSParams of arrays (for tn.mps functions)."""
        return mps_lib.MPSParams(
            self.first[...], self.left[...], self.out[...], self.right[...], self.last[...]
        )

    def __call__(self, x: Array) -> Array:
        """x (B, n) in [0, 1] → (B, m)."""
        if x.ndim != 2 or x.shape[-1] != self.n_sites:
            raise DistillError(
                f"MPS: expected input of shape (batch, {self.n_sites}), got {tuple(x.shape)}; "
                "flatten images and scale them to [0, 1] first"
            )
        x = jnp.take(x.astype(self.dtype), self.site_order[...], axis=1)
        phi = get_feature_map(self.feature_map, self.feature_dim)(x)  # (B, n, d)
        z, _ = mps_lib.contract(self.params, phi)
        return jnp.exp(self.log_scale[...]) * z
