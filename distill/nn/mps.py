"""MPS modules: the MPS classifier over pixels and the MPS hidden layer (seed 000 §2)."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from distill.errors import DistillError
from distill.nn.common import _apply_activation, _check_activation, _check_width, store_plan, stored_plan
from distill.nn.features import SiteFeatures, _check_int
from distill.tn import mps as mps_lib
from distill.tn import mps_layer as mps_layer_lib
from distill.tn import tt as tt_lib

__all__ = ["MPS", "MPSHidden", "InputScale"]


def _contract(module: nnx.Module, params: mps_lib.MPSParams, x: Array) -> Array:
    """z of `tn.mps.contract` for the inputs x (B, n) of the module's `site_features`, through the
    module's inference plan when it has one (with a local map: `contract_planned_inputs`, the
    features formed in the sweep's own layout)."""
    sf = module.site_features
    plan = stored_plan(module)
    if plan is None:
        return mps_lib.contract(params, sf(x), method=module.contraction)[0]
    prepared, *static = plan
    if not isinstance(prepared, mps_lib.ContractionPlan):  # MPS: the layouts (MPSHidden: the whole plan)
        method, sites = static
        prepared = mps_lib.ContractionPlan(params, prepared, method, sites)
    local_map = sf.local_map()
    if local_map is None:
        return mps_lib.contract_planned(prepared, sf(x))[0]
    return mps_lib.contract_planned_inputs(prepared, local_map, x, sf.site_order[...])[0]


def _check_contraction(layer: str, contraction) -> str | None:
    if contraction is not None and contraction not in mps_lib.METHODS:
        raise DistillError(
            f"{layer}: contraction must be one of {', '.join(mps_lib.METHODS)} or None (automatic), "
            f"got {contraction!r}"
        )
    return contraction


class MPS(nnx.Module):
    """MPS layer: x (B, n) with values in [0, 1] → (B, m).

    out = exp(log_scale) · z, where (z, log_norm) = tn.mps.contract(cores, φ) and φ (B, n, d)
    holds the local feature vectors of the n sites in chain order (site s reads input feature
    order[s]). z is the output core contracted with the unit-normalised left and right
    environment vectors; the accumulated log-norm (the same for every output) is dropped and
    one learned scalar `log_scale` sets the logit size instead (DESIGN.md §1: this trained
    better). So any per-sample scalar factor of Φ(x) = ⊗ φ has no effect on the output.

    The feature map (`distill.tn.feature_maps` registry; d is always read off the map):

    * ``feature_map="learned"``: a tiny MLP 1 → hidden → d (d = feature_dim) whose weights are
      nnx.Param of its `site_features` (`phi_w1`, `phi_b1`, `phi_w2`, `phi_b2`), trained with the
      cores. ``feature_params`` may set ``hidden`` (default 8) and ``per_site`` (default
      False: one MLP shared by all sites; True: one MLP per site, site s uses MLP s).
    * ``feature_params`` given (non-empty): ``make_feature_map(name, **feature_params)``,
      e.g. ``feature_map="fourier", feature_params={"order": 2}`` (d = 5).
    * otherwise, a map that a dimension determines (trig, poly, fourier, legendre, user maps
      with a ``d`` parameter): ``feature_map_from_dim(name, feature_dim)``; any other map
      (pair_product, user maps) is built with its default parameters.

    feature_dim must equal the map's d unless it is left at its default 2. The map is
    validated at construction on [0, 1] (or [0, 1]²; seed 000 §4): a degenerate map raises
    a one-line DistillError, and so does an unknown name (with a "did you mean").

    Pairwise (arity-2) maps need ``pairing``: "neighbour" (neighbours along the chain),
    "random" (a random n-cycle drawn from ``pairing_seed``) or an explicit partner array
    (n,) over input features. The chain keeps one site per input: the site that reads input
    j sees φ(s + x_j, s + x_{partners[j]}) with the shift s = ``pair_shift``. The partners
    are a non-trainable `Partners` variable of the module state.

    Why the shift (default s = 1 for pairwise maps, 0 is the seed's literal map): the
    seed's pair_product φ(x_a, x_b) = [x_a, x_a·x_b] is the zero vector whenever x_a = 0,
    and then Φ(x) = ⊗ φ = 0 for the whole input — on images, where most samples have some
    zero pixel, the student would output a constant. Shifted into [1, 2], φ never vanishes.
    Note what the student then computes: φ = (s + x_a)·[1, s + x_b] factors into a
    per-sample scalar, which the normalisation above removes, times the local affine map
    [1, s + x_b] of the partner's pixel. With pair_shift = 0 the same identity holds where
    no x_a is 0 — pair_product in this MPS is a local map [1, x] of the partner, read in the
    partner order, not a genuinely codependent one.

    ``contraction``: "scan", "tree" or "chunked" (`tn.mps.contract`); None picks from shape
    and backend (`tn.mps.choose_method`). All give the same values.

    Parameters (nnx.Param): first (d, χ), left (k-1, d, χ, χ), out (χ, m, χ),
    right (n-k-1, d, χ, χ), last (d, χ), log_scale (), and the learned map's weights.
    `site_order` (SiteOrder) and `partners` (Partners, pairwise maps only) are fixed.
    """

    def __init__(
        self,
        n_sites: int,
        n_out: int,
        *,
        bond_dim: int,
        feature_map: str = "trig",
        feature_dim: int = 2,
        feature_params: dict | None = None,
        pairing: str | Sequence[int] | np.ndarray | None = None,
        pairing_seed: int = 0,
        pair_shift: float | None = None,
        output_site: int | None = None,
        init_std: float = 0.01,
        site_order: Sequence[int] | np.ndarray | Array | None = None,
        contraction: str | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        n_sites = _check_int("n_sites", n_sites, 2)
        n_out = _check_int("n_out", n_out, 1)
        bond_dim = _check_int("bond_dim", bond_dim, 1)
        feature_dim = _check_int("feature_dim", feature_dim, 2)
        k = mps_lib.resolve_output_site(n_sites, output_site)
        feature_params = dict(feature_params or {})
        self.site_features = SiteFeatures(
            "MPS", n_sites, feature_map=feature_map, feature_dim=feature_dim, feature_params=feature_params,
            pairing=pairing, pairing_seed=pairing_seed, pair_shift=pair_shift, site_order=site_order, dtype=dtype,
            rngs=rngs)
        d = self.site_features.d

        self.n_sites = n_sites
        self.n_out = n_out
        self.bond_dim = bond_dim
        self.feature_map = feature_map
        self.feature_dim = d
        self.feature_params = tuple(sorted(feature_params.items()))
        self.pair_shift = self.site_features.shift
        self.output_site = k
        self.contraction = _check_contraction("MPS", contraction)
        self.dtype = dtype

        # z = L̂·out·R̂ already has unit variance per output at init (out ~ N(0, 1)), so
        # exp(0) = 1 starts the logits at O(1).
        self.log_scale = nnx.Param(jnp.zeros((), dtype))
        weights = self.site_features.identity_weights(dtype)
        p = mps_lib.init_mps(
            rngs.params(), n_sites, d, bond_dim, n_out,
            output_site=k, init_std=init_std, identity_weights=weights, dtype=dtype,
        )
        self.first = nnx.Param(p.first)
        self.left = nnx.Param(p.left)
        self.out = nnx.Param(p.out)
        self.right = nnx.Param(p.right)
        self.last = nnx.Param(p.last)

    @property
    def site_order(self):
        """The SiteOrder variable: site s reads input feature site_order[s]."""
        return self.site_features.site_order

    @property
    def partners(self):
        """The Partners variable of a pairwise map (None for local maps)."""
        return self.site_features.partners

    @property
    def params(self) -> mps_lib.MPSParams:
        """The cores as a plain MPSParams of arrays (for tn.mps functions)."""
        return mps_lib.MPSParams(
            self.first[...], self.left[...], self.out[...], self.right[...], self.last[...]
        )

    def features(self, x: Array) -> Array:
        """Local feature vectors in chain order: x (B, n) in [0, 1] → φ (B, n, d)."""
        return self.site_features(self._checked(x))

    def _checked(self, x: Array) -> Array:
        if x.ndim != 2 or x.shape[-1] != self.n_sites:
            raise DistillError(
                f"MPS: expected input of shape (batch, {self.n_sites}), got {tuple(x.shape)}; "
                "flatten images and scale them to [0, 1] first"
            )
        return x.astype(self.dtype)

    def prepare_export(self) -> None:
        """Fix the contraction for an export with a symbolic batch (the automatic choice reads
        the batch size): the scan, whose graph does not depend on it."""
        if self.contraction is None:
            self.contraction = "scan"

    def prepare_inference(self, batch: int) -> None:
        """Precompute the cores' layout for batches of `batch` (`tn.mps.plan_contraction`); used
        by `nn.inference_copy` — never on a module still being trained (it is a snapshot)."""
        plan = mps_lib.plan_contraction(self.params, batch, method=self.contraction)
        store_plan(self, plan.prepared, (plan.method, plan.sites_per_step))

    def __call__(self, x: Array) -> Array:
        """x (B, n) in [0, 1] → (B, m)."""
        z = _contract(self, self.params, self._checked(x))
        return jnp.exp(self.log_scale[...]) * z


class InputScale(nnx.Variable):
    """Non-trainable affine input normalisation (offset or scale, float (n_in,)), saved with
    the state: the layer feeds clip((x - offset) / scale, 0, 1) to its feature map."""


def _per_feature(layer: str, name: str, value, n: int, dtype) -> Array:
    """A scalar or (n,) array of finite values → (n,) array of `dtype`."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full((n,), float(arr))
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise DistillError(
            f"{layer}: {name} must be a finite scalar or an array of shape ({n},), got "
            f"shape {arr.shape}"
        )
    return jnp.asarray(arr, dtype)


class MPSHidden(nnx.Module):
    """MPS hidden layer x (B, n_in) → (B, n_out): y = act(exp(s)·z + b), where
    T·Φ(x̃) = z·exp(log_norm): z is the contraction with unit-normalised environments and the
    per-sample log-norm (the same for every output of a sample) is dropped — the layer outputs the
    direction of T·Φ(x̃), scaled by one learned exp(s).

    A drop-in replacement for a dense hidden layer act(W x + b) (seed 000 §2: a = T·Φ(a_prev)),
    trained layer-wise on a teacher's activations.

    * Input: x̃ = clip((x - offset) / scale, 0, 1) per feature, with `offset`, `scale`
      non-trainable `InputScale` variables (saved with the checkpoint); set them from data
      with `set_input_scale(x_sample)` (ReLU activations are ≥ 0 but unbounded).
    * Feature map φ(x̃): any registered map, `learned`, or a pairwise map with a pairing over
      the n_in inputs — the arguments `feature_map`, `feature_dim`, `feature_params`,
      `pairing`, `pairing_seed`, `pair_shift` mean exactly what they mean for `MPS`.
    * Chain: the n_in sites of `tn.mps` (near-identity init) with the output core between
      sites k-1 and k, contracted by `tn.mps.contract` (unit-normalised left/right vectors,
      log-norm separated and dropped; one learned scalar s sets the size, DESIGN.md §1).
    * Output side, one of
      - `out_factors` (m_1, …, m_K), ∏ m_k = n_out (default `tn.tt.factorize(n_out, 3)`,
        512 → 8·8·8): K adjacent output cores (ρ_{k-1}, m_k, ρ_k), ρ_0 = ρ_K = χ and inner
        bonds ρ = `out_bond` (default 2χ) — an MPO into ℝ^{m_1}⊗…⊗ℝ^{m_K}
        (`tn.mps_layer.output_core` forms the (χ, n_out, χ) core once per step);
        `out_factors=(n_out,)` is a free output core;
      - `readout_rank` r: an output core (χ, r, χ) followed by a dense r → n_out matrix.
    * Output bias b (n_out,) and `activation` (None for pre-activation targets, or "relu",
      "tanh", "gelu", "sigmoid" for post-activation targets).

    Parameters (nnx.Param): first (d, χ), left (k-1, d, χ, χ), right (n_in-k-1, d, χ, χ),
    last (d, χ); out_cores (nnx.List of (ρ, m_k, ρ)) or readout_core (χ, r, χ) and
    readout (n_out, r); log_scale (); bias (n_out,); the learned map's weights.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        *,
        bond_dim: int,
        feature_map: str = "trig",
        feature_dim: int = 2,
        feature_params: dict | None = None,
        pairing: str | Sequence[int] | np.ndarray | None = None,
        pairing_seed: int = 0,
        pair_shift: float | None = None,
        out_factors: Sequence[int] | None = None,
        out_bond: int | None = None,
        readout_rank: int | None = None,
        activation: str | None = None,
        input_scale=None,
        input_offset=0.0,
        output_site: int | None = None,
        init_std: float = 0.01,
        site_order: Sequence[int] | np.ndarray | Array | None = None,
        contraction: str | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        layer = "MPSHidden"
        n_in = _check_width(layer, "n_in", n_in)
        if n_in < 2:
            raise DistillError(f"{layer}: n_in must be >= 2 (one MPS site per input), got {n_in}")
        n_out = _check_width(layer, "n_out", n_out)
        bond_dim = _check_width(layer, "bond_dim", bond_dim)
        feature_dim = _check_width(layer, "feature_dim", feature_dim)
        activation = _check_activation(layer, activation)
        k = mps_lib.resolve_output_site(n_in, output_site)
        feature_params = dict(feature_params or {})
        self.site_features = SiteFeatures(
            layer, n_in, feature_map=feature_map, feature_dim=feature_dim, feature_params=feature_params,
            pairing=pairing, pairing_seed=pairing_seed, pair_shift=pair_shift, site_order=site_order, dtype=dtype,
            rngs=rngs)
        feature_dim = self.site_features.d
        if readout_rank is not None:
            if out_factors is not None or out_bond is not None:
                raise DistillError(
                    f"{layer}: give either readout_rank or out_factors/out_bond, not both"
                )
            readout_rank = _check_width(layer, "readout_rank", readout_rank)
        else:
            if out_factors is None:
                out_factors = tt_lib.factorize(n_out, 3)
            out_factors = tuple(out_factors)
            if (
                not out_factors
                or any(isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 1
                       for f in out_factors)
                or math.prod(out_factors) != n_out
            ):
                raise DistillError(
                    f"{layer}: out_factors must be positive integers whose product is n_out = "
                    f"{n_out}, got {out_factors!r}"
                )
            out_factors = tuple(int(f) for f in out_factors)
            out_bond = (
                2 * bond_dim if out_bond is None else _check_width(layer, "out_bond", out_bond)
            )
        if not init_std >= 0:
            raise DistillError(f"{layer}: init_std must be >= 0, got {init_std!r}")

        self.n_in = n_in
        self.n_out = n_out
        self.bond_dim = bond_dim
        self.feature_map = feature_map
        self.feature_dim = feature_dim
        self.feature_params = tuple(sorted(feature_params.items()))
        self.pair_shift = self.site_features.shift
        self.out_factors = out_factors
        self.out_bond = out_bond
        self.readout_rank = readout_rank
        self.activation = activation
        self.output_site = k
        self.contraction = _check_contraction(layer, contraction)
        self.dtype = dtype

        key_chain, key_out, key_read = jax.random.split(rngs.params(), 3)
        p = mps_lib.init_mps(
            key_chain, n_in, feature_dim, bond_dim, 1, output_site=k, init_std=init_std,
            identity_weights=self.site_features.identity_weights(dtype), dtype=dtype,
        )  # its (χ, 1, χ) output core is not used
        self.first = nnx.Param(p.first)
        self.left = nnx.Param(p.left)
        self.right = nnx.Param(p.right)
        self.last = nnx.Param(p.last)
        if readout_rank is None:
            cores = mps_layer_lib.init_output_factors(
                key_out, bond_dim, out_factors, out_bond, dtype
            )
            self.out_cores = nnx.List([nnx.Param(c) for c in cores])
        else:
            # z (r) has unit variance per component; readout N(0, 1/r) keeps that per output
            self.readout_core = nnx.Param(
                jax.random.normal(key_out, (bond_dim, readout_rank, bond_dim), dtype)
            )
            self.readout = nnx.Param(
                jax.random.normal(key_read, (n_out, readout_rank), dtype) / math.sqrt(readout_rank)
            )
        self.log_scale = nnx.Param(jnp.zeros((), dtype))
        self.bias = nnx.Param(jnp.zeros((n_out,), dtype))
        scale = 1.0 if input_scale is None else input_scale
        scale = _per_feature(layer, "input_scale", scale, n_in, dtype)
        if not np.all(np.asarray(1.0 if input_scale is None else input_scale, np.float64) > 0):
            raise DistillError(f"{layer}: input_scale must be > 0 (x is divided by it)")
        self.input_scale = InputScale(scale)
        self.input_offset = InputScale(_per_feature(layer, "input_offset", input_offset, n_in, dtype))

    def set_input_scale(self, x_sample, *, quantile: float = 1.0, per_feature: bool = True):
        """Set offset/scale from a data sample x_sample (N, n_in) so that x̃ fills [0, 1].

        offset = min(0, min x) (0 for ReLU inputs), scale = quantile_q(x) - offset, per
        feature (or one global value with per_feature=False). Values above the quantile
        clip to 1. Where quantile_q(x) - offset is ~0 — features that are 0 throughout the
        sample (dead ReLU units), or constant and ≤ 0 — the scale is 1; a feature constant at
        c > 0 gets scale c (it maps to 1). Mirror students set the range from the teacher's
        activations instead (each unit's observed [min, max] onto [0, 1]).
        """
        x = np.asarray(x_sample, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_in or x.shape[0] < 1:
            raise DistillError(
                f"MPSHidden.set_input_scale: x_sample must have shape (N, {self.n_in}) with "
                f"N >= 1, got {x.shape}"
            )
        if not 0.0 < quantile <= 1.0:
            raise DistillError(
                f"MPSHidden.set_input_scale: quantile must be in (0, 1], got {quantile!r}"
            )
        axis = 0 if per_feature else None
        lo = np.minimum(np.min(x, axis=axis), 0.0)
        hi = np.quantile(x, quantile, axis=axis)
        scale = hi - lo
        scale = np.where(scale > 1e-12 * max(1.0, float(np.max(np.abs(x)))), scale, 1.0)
        self.input_offset[...] = _per_feature("MPSHidden", "offset", lo, self.n_in, self.dtype)
        self.input_scale[...] = _per_feature("MPSHidden", "scale", scale, self.n_in, self.dtype)
        return self

    @property
    def site_order(self):
        """The SiteOrder variable: site s reads input feature site_order[s]."""
        return self.site_features.site_order

    @property
    def partners(self):
        """The Partners variable of a pairwise map (None for local maps)."""
        return self.site_features.partners

    def prepare_export(self) -> None:
        """As `MPS.prepare_export`."""
        if self.contraction is None:
            self.contraction = "scan"

    def prepare_inference(self, batch: int) -> None:
        """As `MPS.prepare_inference`: the chain's layout, the output core formed once."""
        plan = mps_lib.plan_contraction(self.params, batch, method=self.contraction)
        store_plan(self, plan, (plan.method,))

    def output_core_array(self) -> Array:
        """The (χ, n_out, χ) output core (out_factors) or (χ, r, χ) core (readout_rank)."""
        if self.readout_rank is not None:
            return self.readout_core[...]
        return mps_layer_lib.output_core([c[...] for c in self.out_cores])

    @property
    def params(self) -> mps_lib.MPSParams:
        """Chain + output core as a plain MPSParams (for tn.mps functions)."""
        return mps_lib.MPSParams(
            self.first[...], self.left[...], self.output_core_array(), self.right[...],
            self.last[...],
        )

    def features(self, x: Array) -> Array:
        """x (B, n_in) → φ(x̃) (B, n_in, d) in site order, x̃ the clipped, scaled input."""
        return self.site_features(self._scaled(x))

    def _scaled(self, x: Array) -> Array:
        """x (B, n_in) → x̃ = clip((x - offset) / scale, 0, 1)."""
        x = (x.astype(self.dtype) - self.input_offset[...][None]) / self.input_scale[...][None]
        return jnp.clip(x, 0.0, 1.0)

    def __call__(self, x: Array) -> Array:
        """x (B, n_in) → (B, n_out)."""
        if x.ndim != 2 or x.shape[-1] != self.n_in:
            raise DistillError(
                f"MPSHidden: expected input of shape (batch, {self.n_in}), got {tuple(x.shape)}"
            )
        z = _contract(self, self.params, self._scaled(x))
        if self.readout_rank is not None:
            z = jnp.einsum("bk,ok->bo", z, self.readout[...])
        y = jnp.exp(self.log_scale[...]) * z + self.bias[...][None]
        return _apply_activation(self.activation, y)
