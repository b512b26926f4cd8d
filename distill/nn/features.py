"""`SiteFeatures`: the local feature vectors of an MPS's sites — site order, pairing partners,
the resolved map (registered, pairwise or learned) — owned by `MPS` and `MPSHidden` alike."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from distill.errors import DistillError
from distill.nn.common import _check_width
from distill.tn import mps as mps_lib
from distill.tn.feature_maps import (
    FeatureMap,
    LearnedParams,
    feature_map_from_dim,
    feature_map_names,
    init_learned,
    learned,
    make_feature_map,
    validate_feature_map,
)
from distill.tn.pairing import apply_pairwise, make_partners

__all__ = ["SiteOrder", "Partners", "SiteFeatures"]


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


class Partners(nnx.Variable):
    """Non-trainable partner array of a pairwise feature map (int32 (n,)), saved with the state.

    Input feature j is paired with input feature `partners[j]` (see `distill.tn.pairing`).
    """


#: Keys of `feature_params` for the learned map (everything else is refused).
_LEARNED_KEYS = ("hidden", "per_site")


def _unknown_map_error(name, layer: str = "MPS") -> DistillError:
    names = feature_map_names()
    close = difflib.get_close_matches(str(name), names, n=1) if isinstance(name, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return DistillError(
        f"{layer}: unknown feature map {name!r}{hint}; registered feature maps: {', '.join(names)}"
    )


def _dimension_indexed(name: str) -> bool:
    """Whether the registered map `name` can be built from a feature dimension alone."""
    from distill.tn import feature_maps as fm_lib

    entry = fm_lib._REGISTRY[name]
    return entry.from_dim is not None or fm_lib._takes_d(entry.factory)


def _resolve_feature_map(name, feature_dim: int, feature_params: dict, layer: str = "MPS") -> FeatureMap:
    """The registered map of an MPS that is not `learned` (rule: see the MPS docstring)."""
    if not isinstance(name, str) or name not in feature_map_names():
        raise _unknown_map_error(name, layer)
    if feature_params:
        fm = make_feature_map(name, check=False, **feature_params)
    elif _dimension_indexed(name):
        fm = feature_map_from_dim(name, feature_dim)
    else:
        fm = make_feature_map(name, check=False)
    if feature_dim != 2 and fm.d != feature_dim:
        raise DistillError(
            f"{layer}: feature map {name!r} with parameters {dict(feature_params)} has d = {fm.d} "
            f"components but feature_dim = {feature_dim}; leave feature_dim at 2 (d is read "
            "off the map) or make them agree"
        )
    return fm


@dataclasses.dataclass(frozen=True)
class _FeatureChoice:
    """A layer's feature map as its arguments resolve it (shared by MPS and MPSHidden)."""

    fm: FeatureMap | None  # None: the learned map (its weights live on the layer)
    d: int
    shift: float  # pairwise maps read inputs shifted by this; 0 for local maps
    partners: np.ndarray | None  # (n,) over input features, pairwise maps only
    learned: tuple[int, bool] | None  # (hidden, per_site) of the learned map


def _choose_feature_map(
    layer: str, n_sites: int, order: np.ndarray, feature_map, feature_dim: int,
    feature_params: dict, pairing, pairing_seed: int, pair_shift,
) -> _FeatureChoice:
    """Resolve and validate a layer's feature map (the rules are in the MPS docstring)."""
    if feature_map == "learned":
        bad = sorted(set(feature_params) - set(_LEARNED_KEYS))
        if bad:
            raise DistillError(
                f"{layer}: feature map 'learned' takes feature_params {list(_LEARNED_KEYS)}, got {bad}"
            )
        hidden = _check_width(layer, "feature_params.hidden", feature_params.get("hidden", 8))
        per_site = feature_params.get("per_site", False)
        if not isinstance(per_site, bool):
            raise DistillError(f"{layer}: feature_params.per_site must be true/false, got {per_site!r}")
        fm, d, arity, learned_spec = None, feature_dim, 1, (hidden, per_site)
    else:
        fm = _resolve_feature_map(feature_map, feature_dim, feature_params, layer)
        d, arity, learned_spec = fm.d, fm.arity, None

    if arity == 2:
        if pairing is None:
            raise DistillError(
                f"{layer}: feature map {feature_map!r} is pairwise and needs pairing= "
                "'neighbour', 'random' or a partner array (n,)"
            )
        shift = 1.0 if pair_shift is None else float(pair_shift)
        partners = make_partners(pairing, n_sites, seed=pairing_seed, order=order)
        base = fm.fn
        fm = FeatureMap(fm.name, d, lambda a, b: base(a + shift, b + shift), fm.params, 2)
    else:
        if pairing is not None:
            raise DistillError(
                f"{layer}: pairing= is only for pairwise feature maps "
                f"({', '.join(feature_map_names(arity=2))}); {feature_map!r} is local"
            )
        if pair_shift is not None:
            raise DistillError(f"{layer}: pair_shift= is only for pairwise feature maps")
        shift, partners = 0.0, None
    if fm is not None:
        # eager even inside a shape-only build (nnx.eval_shape): the map's values are constants
        with jax.ensure_compile_time_eval():
            validate_feature_map(fm)
    return _FeatureChoice(fm, d, shift, partners, learned_spec)


@functools.lru_cache(maxsize=256)
def _map_fn(name: str, params_json: str, arity: int, shift: float):
    """The feature map's function (pairwise maps: applied to inputs shifted by `shift`), cached so
    that modules with the same map share one function object and compiled code."""
    fn = make_feature_map(name, check=False, **json.loads(params_json)).fn
    if arity == 2:
        return lambda a, b: fn(a + shift, b + shift)
    return fn


class SiteFeatures(nnx.Module):
    """The local feature vectors of an MPS's sites: x (B, n) in [0, 1], input order → φ (B, n, d)
    in chain order (site s reads input feature `site_order[s]`).

    Holds what the map needs: the site order (`SiteOrder`), for pairwise maps the partner of
    every input feature (`Partners`; site s sees φ(shift + x_j, shift + x_partners[j])), and for
    the learned map its weights (nnx.Param `phi_w1`, `phi_b1`, `phi_w2`, `phi_b2`, trained with
    the cores). A registered map is kept by name and parameters (hashable static attributes), so
    modules with equal maps share compiled code. The argument rules are in `distill.nn.MPS`.

    Raises: DistillError for an unknown or degenerate map (seed 000 §4), a pairing that does not
    fit the map, or a bad site order.
    """

    def __init__(self, layer: str, n_sites: int, *, feature_map, feature_dim: int, feature_params: dict,
                 pairing, pairing_seed: int, pair_shift, site_order, dtype, rngs: nnx.Rngs):
        order = _validate_order(site_order, n_sites)
        choice = _choose_feature_map(layer, n_sites, order, feature_map, feature_dim, feature_params, pairing,
                                     pairing_seed, pair_shift)
        self.n_sites = n_sites
        self.d = choice.d
        self.shift = choice.shift
        self.site_order = SiteOrder(jnp.asarray(order))
        self.partners = None if choice.partners is None else Partners(jnp.asarray(choice.partners))
        if choice.learned is not None:
            hidden, per_site = choice.learned
            lp = init_learned(rngs.params(), choice.d, hidden, n_sites if per_site else None, dtype)
            if not isinstance(lp.w1, jax.core.Tracer):  # a shape-only build has no weights to check
                for site in ({"site": i} for i in range(n_sites)) if per_site else ({},):
                    validate_feature_map(make_feature_map("learned", check=False, params=lp, **site))
            self.phi_w1, self.phi_b1, self.phi_w2, self.phi_b2 = (nnx.Param(a) for a in lp)
            self.map_key = None
        else:
            fm = choice.fm
            self.map_key = (fm.name, json.dumps(dict(fm.params), sort_keys=True, default=float), fm.arity,
                            float(self.shift))

    def __call__(self, x: Array) -> Array:
        order = self.site_order[...]
        if self.map_key is None:
            lp = LearnedParams(self.phi_w1[...], self.phi_b1[...], self.phi_w2[...], self.phi_b2[...])
            return learned(jnp.take(x, order, axis=1), lp)
        fn = _map_fn(*self.map_key)
        if self.partners is not None:
            return jnp.take(apply_pairwise(fn, x, self.partners[...]), order, axis=1)
        return fn(jnp.take(x, order, axis=1))

    def local_map(self):
        """The elementwise map x (...,) → (..., d) that every site applies to its own input, or
        None (the learned map's weights, pairwise maps): what `tn.mps.contract_planned_inputs`
        needs to form the features in the contraction's own layout. φ = local_map()(x[:, order])."""
        if self.map_key is None or self.partners is not None:
            return None
        return _map_fn(*self.map_key)

    def identity_weights(self, dtype) -> np.ndarray | None:
        """Weights for `tn.mps.init_mps`: the combination of φ's components that best fits the
        constant 1 on [0, 1] (every site matrix then starts near a positive multiple of I).
        None in a shape-only build (nnx.eval_shape) of a learned map: no values exist there."""
        with jax.ensure_compile_time_eval():
            grid = jnp.tile(jnp.linspace(0.0, 1.0, 33, dtype=dtype)[:, None], (1, self.n_sites))
            phi = self(grid)
        if isinstance(phi, jax.core.Tracer):
            return None
        return mps_lib.identity_weights_for(phi.reshape(-1, self.d))

