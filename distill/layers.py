"""Flax NNX modules that hold tensor-network parameters and call the pure functions in tn/.

Drop any of these into your own `nnx.Module` and train it with
`nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from distill.errors import DistillError
from distill.tn import mps as mps_lib
from distill.tn import mps_layer as mps_layer_lib
from distill.tn import tt as tt_lib
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

__all__ = ["param_count", "SiteOrder", "Partners", "MPS"]


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


def _attach_feature_map(module: nnx.Module, choice: _FeatureChoice, n_sites: int, rngs, dtype) -> None:
    """Give `module` what `_site_features` reads: partners (a Partners variable or None), the
    learned map's weights (nnx.Param phi_w1, phi_b1, phi_w2, phi_b2) or the map's function."""
    module.partners = None if choice.partners is None else Partners(jnp.asarray(choice.partners))
    if choice.learned is not None:
        hidden, per_site = choice.learned
        lp = init_learned(rngs.params(), choice.d, hidden, n_sites if per_site else None, dtype)
        if not isinstance(lp.w1, jax.core.Tracer):  # a shape-only build has no weights to check
            for i in range(n_sites) if per_site else (None,):
                validate_feature_map(make_feature_map("learned", check=False, params=lp, site=i))
        module.phi_w1, module.phi_b1, module.phi_w2, module.phi_b2 = (nnx.Param(a) for a in lp)
        module._phi = None
    else:
        module._phi = choice.fm.fn


def _site_features(module: nnx.Module, x: Array) -> Array:
    """x (B, n) in [0, 1], input order → φ (B, n, d) in chain order (site s reads order[s])."""
    order = module.site_order[...]
    if module.partners is not None:
        return jnp.take(apply_pairwise(module._phi, x, module.partners[...]), order, axis=1)
    x = jnp.take(x, order, axis=1)
    if module._phi is None:
        lp = LearnedParams(module.phi_w1[...], module.phi_b1[...], module.phi_w2[...], module.phi_b2[...])
        return learned(x, lp)
    return module._phi(x)


def _identity_weights(module: nnx.Module, n_sites: int, d: int, dtype) -> np.ndarray | None:
    """Weights for `tn.mps.init_mps`: the combination of φ's components that best fits the
    constant 1 on [0, 1] (every site matrix then starts near a positive multiple of I).
    None in a shape-only build (nnx.eval_shape) of a learned map: no values exist there."""
    with jax.ensure_compile_time_eval():
        grid = jnp.tile(jnp.linspace(0.0, 1.0, 33, dtype=dtype)[:, None], (1, n_sites))
        phi = _site_features(module, grid)
    if isinstance(phi, jax.core.Tracer):
        return None
    return mps_lib.identity_weights_for(phi.reshape(-1, d))


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
      nnx.Param of this module (`phi_w1`, `phi_b1`, `phi_w2`, `phi_b2`), trained with the
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
        order = _validate_order(site_order, n_sites)
        feature_params = dict(feature_params or {})

        choice = _choose_feature_map(
            "MPS", n_sites, order, feature_map, feature_dim, feature_params, pairing, pairing_seed,
            pair_shift,
        )
        d = choice.d

        self.n_sites = n_sites
        self.n_out = n_out
        self.bond_dim = bond_dim
        self.feature_map = feature_map
        self.feature_dim = d
        self.feature_params = tuple(sorted(feature_params.items()))
        self.pair_shift = choice.shift
        self.output_site = k
        self.contraction = _check_contraction("MPS", contraction)
        self.dtype = dtype

        # z = L̂·out·R̂ already has unit variance per output at init (out ~ N(0, 1)), so
        # exp(0) = 1 starts the logits at O(1).
        self.log_scale = nnx.Param(jnp.zeros((), dtype))
        self.site_order = SiteOrder(jnp.asarray(order))
        _attach_feature_map(self, choice, n_sites, rngs, dtype)
        weights = _identity_weights(self, n_sites, d, dtype)
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
    def params(self) -> mps_lib.MPSParams:
        """The cores as a plain MPSParams of arrays (for tn.mps functions)."""
        return mps_lib.MPSParams(
            self.first[...], self.left[...], self.out[...], self.right[...], self.last[...]
        )

    def features(self, x: Array) -> Array:
        """Local feature vectors in chain order: x (B, n) in [0, 1] → φ (B, n, d)."""
        if x.ndim != 2 or x.shape[-1] != self.n_sites:
            raise DistillError(
                f"MPS: expected input of shape (batch, {self.n_sites}), got {tuple(x.shape)}; "
                "flatten images and scale them to [0, 1] first"
            )
        return _site_features(self, x.astype(self.dtype))

    def __call__(self, x: Array) -> Array:
        """x (B, n) in [0, 1] → (B, m)."""
        z, _ = mps_lib.contract(self.params, self.features(x), method=self.contraction)
        return jnp.exp(self.log_scale[...]) * z


# =======================================================================================
# Factorised dense layers: TT-matrix (MPO) and low-rank (SVD) baselines
# =======================================================================================
# Weight convention: the math here is y = W x with W (N_out, N_in). flax's nnx.Linear
# stores kernel (N_in, N_out) and computes x @ kernel, so W = linear.kernel.T; e.g.
# `TTLinear.from_dense(linear.kernel[...].T, linear.bias[...], ...)`.

__all__ += ["TTLinear", "LowRankLinear"]

#: Activation name → elementwise function, shared by these layers and the teachers
#: (`distill.teachers.ACTIVATIONS` is this dict). ``gelu`` is the exact (erf) GELU.
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "sigmoid": jax.nn.sigmoid,
}


def _check_activation(layer: str, activation: str | None) -> str | None:
    if activation is not None and (
        not isinstance(activation, str) or activation not in ACTIVATIONS
    ):
        raise DistillError(
            f"{layer}: unknown activation {activation!r}; use one of "
            f"{', '.join(sorted(ACTIVATIONS))} or None (linear)"
        )
    return activation


def _apply_activation(activation: str | None, y: Array) -> Array:
    return y if activation is None else ACTIVATIONS[activation](y)


def _init_variance(in_features: int, activation: str | None) -> float:
    """Target Var(W_ji) of a dense init: He 2/N_in for relu/gelu, else LeCun 1/N_in.

    LeCun 1/N_in is nnx.Linear's default (lecun_normal); He doubles it to keep the output
    variance through a rectifier, which zeroes half of the pre-activations.
    """
    gain = 2.0 if activation in ("relu", "gelu") else 1.0
    return gain / in_features


def _check_width(layer: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DistillError(f"{layer}: {name} must be an integer >= 1, got {value!r}")
    return int(value)


def _dense_operands(layer: str, W, b):
    """Validate a dense (W (N_out, N_in), b (N_out,) or None) pair; return numpy arrays."""
    W = np.asarray(W)
    if W.ndim != 2:
        raise DistillError(
            f"{layer}.from_dense: W must be a matrix (N_out, N_in) for y = W x, got shape "
            f"{W.shape}; for an nnx.Linear pass linear.kernel.T"
        )
    b = np.zeros(W.shape[0], W.dtype) if b is None else np.asarray(b)
    if b.shape != (W.shape[0],):
        raise DistillError(
            f"{layer}.from_dense: bias must have shape ({W.shape[0]},) to match W {W.shape} "
            f"(y = W x + b), got {b.shape}"
        )
    return W, b


def _resolve_modes(in_features, out_features, in_modes, out_modes, n_factors):
    """Validate given modes, factorise missing ones (same length d on both sides)."""
    if in_modes is not None:
        in_modes = tt_lib.check_modes(in_modes, in_features, "tt.in_modes", width="input")
    if out_modes is not None:
        out_modes = tt_lib.check_modes(out_modes, out_features, "tt.out_modes", width="output")
    if in_modes is None or out_modes is None:
        given = in_modes or out_modes
        d = len(given) if given else _check_width("TTLinear", "n_factors", n_factors)
        in_modes = in_modes or tt_lib.factorize(in_features, d)
        out_modes = out_modes or tt_lib.factorize(out_features, d)
    if len(in_modes) != len(out_modes):
        raise DistillError(
            f"TTLinear: tt.in_modes {in_modes} and tt.out_modes {out_modes} must have the "
            "same length (one (out, in) mode pair per core); pad the shorter with 1s"
        )
    return in_modes, out_modes


class TTLinear(nnx.Module):
    """TT-matrix (MPO) dense layer: y = act(W x + b) with W in TT format, never formed.

    x (..., N_in) → (..., N_out), N_in = ∏ a_k (`in_modes`), N_out = ∏ b_k (`out_modes`).
    Parameters (nnx.Param): cores[k] (r_{k-1}, b_k, a_k, r_k) with r_0 = r_d = 1, in an
    nnx.List; bias (N_out,). The forward pass is `tn.tt.tt_matvec` with `method` ("cores",
    "split", "dense"; None = `tn.tt.choose_tt_method` from the shapes and backend); all methods
    give the same values.

    Modes left None are factorised automatically (`tn.tt.factorize`, `n_factors` each; if
    only one side is given, the other uses its length). `rank` caps every inner bond (or gives
    one cap per bond); caps above min(∏_{m≤k} a_m b_m, ∏_{m>k} a_m b_m) are lowered to that,
    the largest rank bond k can use. `self.ranks` holds the ranks actually used.

    Init (zero bias): match a dense init's Var(W_ji) = v, with v = 2/N_in (He) for relu/gelu
    and v = 1/N_in (LeCun, nnx.Linear's default) otherwise, so that Var(y_j) = v·‖x‖² as for
    the dense layer. With i.i.d. N(0, σ²) core entries, an entry of W is a sum over
    ∏_{k=1}^{d-1} r_k rank paths of products of d independent zero-mean entries, and entries
    with different (j, i) are uncorrelated, so E[W_ji²] = (∏_k r_k)·σ^{2d}, i.e.
    σ² = (v / ∏_k r_k)^{1/d}. That holds only on average over draws: a product of d random
    cores fluctuates a lot from one draw to the next (‖W‖² off by 0.3–2.3× at rank 1, 0.6–1.3×
    at rank 8 for 784 → 512). So the cores are drawn N(0, 1) and all rescaled by one common
    factor that makes ‖W‖_F² = v·N_in·N_out exactly (`tn.tt.tt_norm`, W never formed).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        n_factors: int = 4,
        rank: int | Sequence[int],
        activation: str | None = None,
        method: str | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        in_features = _check_width("TTLinear", "in_features", in_features)
        if method is not None and method not in tt_lib.TT_METHODS:
            raise DistillError(
                f"TTLinear: method must be one of {', '.join(tt_lib.TT_METHODS)} or None (automatic), "
                f"got {method!r}"
            )
        out_features = _check_width("TTLinear", "out_features", out_features)
        activation = _check_activation("TTLinear", activation)
        in_modes, out_modes = _resolve_modes(
            in_features, out_features, in_modes, out_modes, n_factors
        )
        inner = tt_lib.tt_max_ranks(in_modes, out_modes, rank)

        self.in_features = in_features
        self.out_features = out_features
        self.in_modes = in_modes
        self.out_modes = out_modes
        self.ranks = (1, *inner, 1)
        self.activation = activation
        self.method = method
        self.dtype = dtype

        d = len(in_modes)
        shapes = [(self.ranks[k], out_modes[k], in_modes[k], self.ranks[k + 1]) for k in range(d)]
        sizes = [math.prod(shape) for shape in shapes]
        # one draw sliced into cores: a random.normal per core shape costs a compile each
        flat = jax.random.normal(rngs.params(), (sum(sizes),), dtype)
        ends = np.cumsum(sizes)
        raw = [
            jnp.reshape(flat[end - size : end], shape)
            for end, size, shape in zip(ends, sizes, shapes)
        ]
        # ‖W‖_F² = v·N_in·N_out exactly, spread evenly over the d cores (see the docstring)
        target = math.sqrt(_init_variance(in_features, activation) * in_features * out_features)
        scale = (target / tt_lib.tt_norm(raw)) ** (1.0 / d)
        self.cores = nnx.List([nnx.Param(scale * core) for core in raw])
        self.bias = nnx.Param(jnp.zeros((out_features,), dtype))

    @classmethod
    def from_dense(
        cls,
        W,
        b=None,
        *,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        n_factors: int = 4,
        rank: int | None = None,
        eps: float | None = None,
        activation: str | None = None,
        method: str | None = None,
        dtype=jnp.float32,
    ) -> "TTLinear":
        """Warm start by TT-SVD of a dense layer y = act(W x + b), W (N_out, N_in).

        For an nnx.Linear (kernel (N_in, N_out), y = x @ kernel + bias) pass
        `W = linear.kernel[...].T`. `rank` caps every bond, `eps` bounds the relative
        Frobenius error (‖W − TT‖_F ≤ eps·‖W‖_F when no cap binds); neither = exact.
        """
        W, b = _dense_operands("TTLinear", W, b)
        n_out, n_in = W.shape
        in_modes, out_modes = _resolve_modes(n_in, n_out, in_modes, out_modes, n_factors)
        cores = tt_lib.tt_svd(W, in_modes, out_modes, max_rank=rank, eps=eps, dtype=np.float64)
        ranks = tt_lib.tt_ranks(cores)
        layer = cls(
            n_in, n_out, in_modes=in_modes, out_modes=out_modes, rank=ranks[1:-1],
            activation=activation, method=method, dtype=dtype, rngs=nnx.Rngs(0),
        )
        for param, core in zip(layer.cores, cores):
            param[...] = jnp.asarray(core, dtype)
        layer.bias[...] = jnp.asarray(b, dtype)
        return layer

    @property
    def core_arrays(self) -> list[Array]:
        """The cores as plain arrays (for tn.tt functions)."""
        return [c[...] for c in self.cores]

    def to_dense(self) -> Array:
        """W (N_out, N_in) with y = act(W x + b). Memory N_out·N_in: for analysis, not forward."""
        return tt_lib.tt_to_dense(self.core_arrays)

    def __call__(self, x: Array) -> Array:
        """x (..., N_in) → (..., N_out)."""
        if x.shape[-1] != self.in_features:
            raise DistillError(
                f"TTLinear: expected input of shape (..., {self.in_features}), got {tuple(x.shape)}"
            )
        y = tt_lib.tt_matvec(self.core_arrays, x.astype(self.dtype), method=self.method) + self.bias[...]
        return _apply_activation(self.activation, y)


class LowRankLinear(nnx.Module):
    """Low-rank (SVD) factorised dense layer, the seeds' baseline: y = act(A (B x) + b).

    x (..., N_in) → (..., N_out). Parameters (nnx.Param): A (N_out, r), B (r, N_in),
    bias (N_out,); r(N_in + N_out) + N_out scalars. `rank` above min(N_in, N_out) is lowered.

    Init: A, B i.i.d. N(0, σ²), zero bias. Var(W_ji) = Var(Σ_k A_jk B_ki) = r·σ⁴, so
    σ² = sqrt(v / r) with the same v as TTLinear (He 2/N_in for relu/gelu, else LeCun 1/N_in).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rank: int,
        activation: str | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        in_features = _check_width("LowRankLinear", "in_features", in_features)
        out_features = _check_width("LowRankLinear", "out_features", out_features)
        rank = min(_check_width("LowRankLinear", "rank", rank), in_features, out_features)
        activation = _check_activation("LowRankLinear", activation)
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.activation = activation
        self.dtype = dtype
        std = (_init_variance(in_features, activation) / rank) ** 0.25
        flat = std * jax.random.normal(rngs.params(), (rank * (out_features + in_features),), dtype)
        self.A = nnx.Param(jnp.reshape(flat[: out_features * rank], (out_features, rank)))
        self.B = nnx.Param(jnp.reshape(flat[out_features * rank :], (rank, in_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,), dtype))

    @classmethod
    def from_dense(
        cls, W, b=None, *, rank: int, activation: str | None = None, dtype=jnp.float32
    ) -> "LowRankLinear":
        """Best rank-r start (truncated SVD) of y = act(W x + b), W (N_out, N_in).

        For an nnx.Linear pass `W = linear.kernel[...].T`.
        """
        W, b = _dense_operands("LowRankLinear", W, b)
        rank = _check_width("LowRankLinear", "rank", rank)
        A, B = tt_lib.truncated_svd(W, rank, dtype=np.float64)
        layer = cls(
            W.shape[1], W.shape[0], rank=A.shape[1], activation=activation, dtype=dtype,
            rngs=nnx.Rngs(0),
        )
        layer.A[...] = jnp.asarray(A, dtype)
        layer.B[...] = jnp.asarray(B, dtype)
        layer.bias[...] = jnp.asarray(b, dtype)
        return layer

    def to_dense(self) -> Array:
        """W = A·B (N_out, N_in)."""
        return jnp.einsum("jk,ki->ji", self.A[...], self.B[...])

    def __call__(self, x: Array) -> Array:
        """x (..., N_in) → (..., N_out)."""
        if x.shape[-1] != self.in_features:
            raise DistillError(
                f"LowRankLinear: expected input of shape (..., {self.in_features}), got "
                f"{tuple(x.shape)}"
            )
        h = jnp.einsum("...i,ki->...k", x.astype(self.dtype), self.B[...])
        y = jnp.einsum("...k,jk->...j", h, self.A[...]) + self.bias[...]
        return _apply_activation(self.activation, y)


# =======================================================================================
# MPS hidden layer: a wide (hundreds of units) drop-in replacement for act(W x + b)
# =======================================================================================

__all__ += ["InputScale", "MPSHidden"]


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
    """MPS hidden layer x (B, n_in) → (B, n_out): y = act(exp(s)·z + b), z = T·Φ(x̃).

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
        order = _validate_order(site_order, n_in)
        feature_params = dict(feature_params or {})
        choice = _choose_feature_map(
            layer, n_in, order, feature_map, feature_dim, feature_params, pairing, pairing_seed,
            pair_shift,
        )
        feature_dim = choice.d
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
        self.pair_shift = choice.shift
        self.out_factors = out_factors
        self.out_bond = out_bond
        self.readout_rank = readout_rank
        self.activation = activation
        self.output_site = k
        self.contraction = _check_contraction(layer, contraction)
        self.dtype = dtype

        key_chain, key_out, key_read = jax.random.split(rngs.params(), 3)
        self.site_order = SiteOrder(jnp.asarray(order))
        _attach_feature_map(self, choice, n_in, rngs, dtype)
        p = mps_lib.init_mps(
            key_chain, n_in, feature_dim, bond_dim, 1, output_site=k, init_std=init_std,
            identity_weights=_identity_weights(self, n_in, feature_dim, dtype), dtype=dtype,
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
        clip to 1. Features that never vary in the sample (dead units) get scale 1.
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
        x = (x.astype(self.dtype) - self.input_offset[...]) / self.input_scale[...]
        return _site_features(self, jnp.clip(x, 0.0, 1.0))

    def __call__(self, x: Array) -> Array:
        """x (B, n_in) → (B, n_out)."""
        if x.ndim != 2 or x.shape[-1] != self.n_in:
            raise DistillError(
                f"MPSHidden: expected input of shape (batch, {self.n_in}), got {tuple(x.shape)}"
            )
        z, _ = mps_lib.contract(self.params, self.features(x), method=self.contraction)
        if self.readout_rank is not None:
            z = jnp.einsum("bk,ok->bo", z, self.readout[...])
        y = jnp.exp(self.log_scale[...]) * z + self.bias[...]
        return _apply_activation(self.activation, y)
