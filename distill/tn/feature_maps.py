"""Local feature maps φ: ℝ → ℝ^d, pairwise maps φ: ℝ² → ℝ^d, and their validity check.

Every local map takes an array x of shape (...,) and returns φ(x) of shape (..., d), with the
physical index `p` last; a pairwise (codependent, seed 000 §3) map takes two arrays x_a, x_b
of the same shape (...,) and returns (..., d). Floating dtypes are preserved; integer inputs
are promoted to the default float dtype. Inputs are meant to be scaled to [0, 1] first.

Two ways in:

* the original, dimension-indexed API used by the MPS layer, unchanged: ``trig(x, d)``,
  ``poly(x, d)``, ``FEATURE_MAPS`` (those two functions) and ``get_feature_map(name, d)``;
* the registry: ``make_feature_map(name, **params) -> FeatureMap`` with a name, the dimension
  d, the function ``fn`` and the parameters it was built from, and
  ``feature_map_from_dim(name, d)`` for any map that a feature dimension alone determines
  (trig, poly, fourier with odd d, legendre).

Built-in local maps (``feature_map_names(arity=1)``)::

    trig(d=2, scale=π/2)    φ_s = sqrt(C(d-1, s)) cos(scale·x)^(d-1-s) sin(scale·x)^s
    poly(degree=2)          [1, x, …, x^degree]                               d = degree+1
    fourier(order=1)        [1, cos 2πx, sin 2πx, …, cos 2πkx, sin 2πkx]      d = 2·order+1
    legendre(degree=2)      shifted Legendre [P̃_0, …, P̃_degree], P̃_n(x) = P_n(2x-1)
    learned(params, site=None)  a tiny MLP 1→h→d, see `learned` and `init_learned`

Built-in pairwise maps (``feature_map_names(arity=2)``)::

    pair_product()          φ(x_a, x_b) = [x_a, x_a·x_b]                       (seed 000 §3)
    pair_affine()           φ(x_a, x_b) = [1, x_a, x_a·x_b]     (never 0; genuinely couples the pair)

A map of your own, in a few lines — the factory returns a function and d is read off it::

    import jax.numpy as jnp
    from distill.tn.feature_maps import register_feature_map, make_feature_map, \\
        validate_feature_map

    def tanh_map(slope=3.0):
        return lambda x: jnp.stack([jnp.ones_like(x), jnp.tanh(slope * (x - 0.5))], axis=-1)

    register_feature_map("tanh", tanh_map)
    fm = make_feature_map("tanh", slope=2.0)      # FeatureMap(name='tanh', d=2, ...)
    validate_feature_map(fm)                      # raises DistillError if degenerate
    phi = fm(x)                                   # (..., 2)

    # a pairwise one: arity=2, the function takes (x_a, x_b)
    register_feature_map("pair_diff", lambda: lambda a, b: jnp.stack([a, a - b], -1), arity=2)

`make_feature_map` checks every map it builds (built-in or yours) on a grid of [0, 1]
(``check=False`` to skip, e.g. for a pairwise map you will check on real data pairs).

**Validity rule** (seed 000 §4, `check_feature_map`). On samples x_s of the data range
(default: 257 points of [0, 1]; pairwise: a 17×17 grid of [0, 1]²; or real data) form

* V[s, k] = φ_k(x_s)                    (S, d)
* D[s, k] = ∂φ_k/∂x (x_s)               (S, d); pairwise: rows ∂/∂x_a then ∂/∂x_b, (2S, d)

and take singular values in float64. The map is *valid* iff

1. values: σ_min(V) / σ_max(V) ≥ tol — the d components are linearly independent functions
   on the data ([x, 2x] and [1, x, 1+x] fail here);
2. derivatives, modulo the constant function: the derivatives may not cancel, except in the
   one direction that the constant function occupies when it lies in span(φ). Precisely:
   σ_{d-1}(D) / σ_max(D) ≥ tol (at most one vanishing direction), and if σ_min(D) / σ_max(D)
   < tol, the combination g = V·c along that null direction c must be a constant function on
   the samples (max|g - mean g| ≤ const_tol · max|g|).

Why "modulo constants": seed 000 §4 derives that composed maps T·φ(λ(x)) keep their
expressiveness only if the derivatives of the components are "not cancellable", i.e. no
non-trivial combination Σ c_k φ_k' vanishes. Taken literally this refuses every map that
contains a constant — poly's 1, Fourier's 1, P̃_0 — and even trig with d ≥ 3, where
Σ_s C(d-1, s)-weighted squares give cos² + sin² = 1 (for d = 3, φ_0 + φ_2 = 1). A constant
component is harmless: it is the bias k of the seed's formula, whose derivative is 0 by
construction. So the derivative matrix is allowed exactly one null direction, and only if
that direction is the constant function. For smooth maps on an interval this rule follows
from 1; it adds bite on data (discrete samples) and for maps whose derivatives vanish where
the data lives — a step, round(x), or a saturated learned unit: [1, step(x - 0.5)] has
independent values but zero derivatives, so it passes 1 and fails 2.

The report also counts samples where φ(x_s) is (numerically) the zero vector: harmless for
a linear model, fatal for an MPS, whose Φ(x) = ⊗_i φ(x_i) is then 0 for the whole input.
This is informational (`ValidityReport.n_vanishing`), not a refusal: pair_product vanishes
at x_a = 0 by design.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from distill.errors import DistillError

__all__ = [
    # original API
    "trig", "poly", "FEATURE_MAPS", "get_feature_map",
    # more local maps
    "fourier", "legendre", "learned", "init_learned", "LearnedParams", "pair_product",
    # registry
    "FeatureMap", "make_feature_map", "feature_map_from_dim", "register_feature_map", "unregister_feature_map",
    "feature_map_names",
    # validity
    "ValidityReport", "check_feature_map", "validate_feature_map",
    "value_matrix", "derivative_matrix", "default_samples",
]


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


def _check_int_param(name: str, param: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DistillError(
            f"feature map {name!r}: {param} must be an integer >= {minimum}, got {value!r}"
        )
    return int(value)


# ---------------------------------------------------------------------------------------
# Local maps x (...,) → (..., d)
# ---------------------------------------------------------------------------------------


# π/2 in three float32 parts (Cody–Waite; Cephes' sinf/cosf): k·part 1 is exact for |k| < 2^16,
# and the three parts together reduce |a| ≤ 8192 to [−π/4, π/4] to within float32 rounding.
_PIO2 = (1.5703125, 4.837512969970703125e-4, 7.54978995489188216e-8)
_COS_SIN_LIMIT = 8192.0
_COS_SIN_MIN_SIZE = 2048


def cos_sin(a) -> tuple[Array, Array]:
    """(cos a, sin a), elementwise, same shape and dtype as a.

    float32: a reduced to r ∈ [−π/4, π/4] by the nearest multiple k of π/2 and Cephes' cosf / sinf
    minimax polynomials in r, swapped and negated by k mod 4 — at most 1e-7 absolute error
    (measured against float64 on 3·10⁶ points in [−8192, 8192]; XLA's own: 3e-8), and about 6×
    faster on CPU, where XLA:CPU calls the scalar libm cosf / sinf (4 ns per value against 0.5 ns
    for exp): the trig map's cosines and sines were a third of a batch-256 MPS prediction. An
    array with any |a| > 8192 (or NaN / inf), and every other dtype, uses jnp.cos / jnp.sin
    (one branch per call, `lax.cond`; under vmap both are computed); so does an array of fewer
    than 2048 values (a batch-1 prediction), where the branch costs more than the libm calls, or
    of a symbolic size (an ONNX export with a dynamic batch: plain Cos / Sin nodes).
    """
    a = jnp.asarray(a)
    if a.dtype != jnp.float32 or not isinstance(a.size, int) or a.size < _COS_SIN_MIN_SIZE:
        return jnp.cos(a), jnp.sin(a)
    return jax.lax.cond(jnp.max(jnp.abs(a)) <= _COS_SIN_LIMIT, _cos_sin_reduced,
                        lambda v: (jnp.cos(v), jnp.sin(v)), a)


def _cos_sin_reduced(a: Array) -> tuple[Array, Array]:
    k = jnp.round(a * (2.0 / math.pi))
    r = ((a - k * _PIO2[0]) - k * _PIO2[1]) - k * _PIO2[2]
    z = r * r
    s = r + r * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * -1.9515295891e-4))
    c = 1.0 - 0.5 * z + z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5))
    q = k.astype(jnp.int32) & 3  # the quadrant: (cos, sin) of a = (c, s), (−s, c), (−c, −s), (s, −c)
    cos = jnp.where(q == 0, c, jnp.where(q == 1, -s, jnp.where(q == 2, -c, s)))
    sin = jnp.where(q == 0, s, jnp.where(q == 1, c, jnp.where(q == 2, -s, -c)))
    return cos, sin


def trig(x, d: int = 2, scale: float = math.pi / 2) -> Array:
    """Stoudenmire–Schwab map: φ_s(x) = sqrt(C(d-1, s)) cos(scale·x)^(d-1-s) sin(scale·x)^s.

    x (...,) → (..., d), s = 0..d-1. With the default scale π/2 and d = 2 this is
    [cos(πx/2), sin(πx/2)], which turns [0, 1] into a quarter circle.
    The components satisfy Σ_s φ_s(x)² = (cos² + sin²)^(d-1) = 1 for every x.
    """
    d = _check_d("trig", d)
    x = _as_float(x)
    c, s = cos_sin(scale * x)
    comps = [
        math.sqrt(math.comb(d - 1, k)) * c ** (d - 1 - k) * s ** k for k in range(d)
    ]
    return jnp.stack(comps, axis=-1).astype(x.dtype)


def poly(x, d: int = 3) -> Array:
    """Polynomial map [1, x, x², …, x^(d-1)]: x (...,) → (..., d).

    The monomials grow numerically dependent on [0, 1] as the degree rises: above degree 8 the
    validity check (`validate_feature_map`, tolerance 1e-6 on the relative singular values)
    refuses the map; `legendre` spans the same polynomials with orthogonal components.
    """
    d = _check_d("poly", d)
    x = _as_float(x)
    comps = [jnp.ones_like(x)]
    for _ in range(1, d):
        comps.append(comps[-1] * x)
    return jnp.stack(comps, axis=-1)


def fourier(x, order: int = 1) -> Array:
    """Fourier map [1, cos 2πx, sin 2πx, …, cos 2π·order·x, sin 2π·order·x].

    x (...,) → (..., 2·order + 1); cosine and sine of each frequency k = 1..order alternate.
    """
    order = _check_int_param("fourier", "order", order, 1)
    x = _as_float(x)
    comps = [jnp.ones_like(x)]
    for k in range(1, order + 1):
        arg = (2.0 * math.pi * k) * x
        comps += list(cos_sin(arg))
    return jnp.stack(comps, axis=-1)


def legendre(x, degree: int = 2) -> Array:
    """Shifted Legendre polynomials on [0, 1]: [P̃_0, …, P̃_degree], P̃_n(x) = P_n(2x - 1).

    x (...,) → (..., degree + 1). Bonnet's recurrence on t = 2x - 1:
    (n+1) P_{n+1} = (2n+1) t P_n - n P_{n-1}. P̃_n(0) = (-1)^n, P̃_n(1) = 1, and the
    P̃_n are orthogonal on [0, 1] (far better conditioned than the monomials of `poly`).
    """
    degree = _check_int_param("legendre", "degree", degree, 1)
    x = _as_float(x)
    t = 2.0 * x - 1.0
    comps = [jnp.ones_like(x), t]
    for n in range(1, degree):
        comps.append(((2 * n + 1) * t * comps[n] - n * comps[n - 1]) / (n + 1))
    return jnp.stack(comps, axis=-1)


class LearnedParams(NamedTuple):
    """Parameters of the tiny MLP 1 → h → d used by `learned`.

    Shared across sites:  w1 (h,)    b1 (h,)    w2 (h, d)    b2 (d,)
    One per site:         w1 (n, h)  b1 (n, h)  w2 (n, h, d) b2 (n, d)
    """

    w1: Array
    b1: Array
    w2: Array
    b2: Array


def init_learned(
    key: Array, d: int, hidden: int = 8, n_sites: int | None = None, dtype=jnp.float32
) -> LearnedParams:
    """Initial parameters for `learned`: shared (n_sites=None) or one MLP per site.

    Unit j computes tanh(w1_j·(x - c_j)) with w1 ~ N(0, 3²) and its bend c_j ~ U(0, 1)
    (b1 = -w1·c), so the units bend at different places of [0, 1] — small slopes would leave
    every unit nearly linear, i.e. a near-degenerate map; w2 ~ N(0, 1/h), b2 = 0.
    The same key gives the same parameters.
    """
    d = _check_d("learned", d)
    hidden = _check_int_param("learned", "hidden", hidden, 1)
    lead = () if n_sites is None else (_check_int_param("learned", "n_sites", n_sites, 1),)
    k1, k2, k3 = jax.random.split(key, 3)
    w1 = 3.0 * jax.random.normal(k1, lead + (hidden,), dtype)
    # centre each unit's bend somewhere in [0, 1]: tanh(w1·(x - c)) with c ~ U(0, 1)
    centres = jax.random.uniform(k2, lead + (hidden,), dtype)
    b1 = -w1 * centres
    w2 = jax.random.normal(k3, lead + (hidden, d), dtype) / math.sqrt(hidden)
    b2 = jnp.zeros(lead + (d,), dtype)
    return LearnedParams(w1, b1, w2, b2)


def learned(x, params: LearnedParams) -> Array:
    """Learned map φ(x) = w2ᵀ tanh(w1·x + b1) + b2.

    Shared params: x (...,) → (..., d), the same MLP at every position.
    Per-site params (w2 of shape (n, h, d)): x (..., n) → (..., n, d), site i uses MLP i.
    """
    x = _as_float(x)
    w1, b1, w2, b2 = params
    if w2.ndim == 2:
        shape = x.shape + w1.shape
        h = jnp.tanh(jnp.broadcast_to(x[..., None], shape) * jnp.broadcast_to(w1, shape)
                     + jnp.broadcast_to(b1, shape))  # (..., h)
        y = jnp.einsum("...h,hp->...p", h, w2)
        return (y + jnp.broadcast_to(b2, y.shape)).astype(x.dtype)
    if w2.ndim == 3:
        n = w2.shape[0]
        if x.ndim < 1 or x.shape[-1] != n:
            raise DistillError(
                f"feature map 'learned': per-site parameters for {n} sites need inputs of "
                f"shape (..., {n}), got {tuple(x.shape)}"
            )
        shape = x.shape + w1.shape[-1:]
        h = jnp.tanh(jnp.broadcast_to(x[..., None], shape) * jnp.broadcast_to(w1, shape)
                     + jnp.broadcast_to(b1, shape))  # (..., n, h)
        y = jnp.einsum("...nh,nhp->...np", h, w2)
        return (y + jnp.broadcast_to(b2, y.shape)).astype(x.dtype)
    raise DistillError(
        f"feature map 'learned': w2 must have shape (h, d) or (n, h, d), got {w2.shape}"
    )


# ---------------------------------------------------------------------------------------
# Pairwise maps (x_a, x_b) (...,) × (...,) → (..., d)
# ---------------------------------------------------------------------------------------


def pair_product(xa, xb) -> Array:
    """Codependent map of seed 000 §3: φ(x_a, x_b) = [x_a, x_a·x_b], (...,)² → (..., 2).

    Note: φ(0, x_b) = 0, so in an MPS (Φ = ⊗ φ) any input with x_a = 0 at some site maps to
    the zero tensor; see `ValidityReport.n_vanishing`.
    """
    xa = _as_float(xa)
    xb = _as_float(xb).astype(xa.dtype)
    return jnp.stack([xa, xa * xb], axis=-1)


def pair_affine(xa, xb) -> Array:
    """Codependent map with a constant: φ(x_a, x_b) = [1, x_a, x_a·x_b], (...,)² → (..., 3).

    Unlike `pair_product` it never vanishes, and it is not a scalar times a local map of one
    input (which an MPS would reduce to a local map, since it drops per-site scale factors):
    the product term genuinely couples the pair.
    """
    xa = _as_float(xa)
    xb = _as_float(xb).astype(xa.dtype)
    return jnp.stack([jnp.ones_like(xa), xa, xa * xb], axis=-1)


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FeatureMap:
    """A built feature map. `fn`: x (...,) → (..., d) (arity 1) or (x_a, x_b) → (..., d)
    (arity 2). `params`: the keyword arguments it was built from (read-only)."""

    name: str
    d: int
    fn: Callable[..., Array]
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    arity: int = 1

    def __call__(self, *xs) -> Array:
        return self.fn(*xs)


class _Entry(NamedTuple):
    factory: Callable[..., Any]  # (**params) -> fn or FeatureMap
    arity: int  # 1 local, 2 pairwise
    from_dim: Callable[[int], dict] | None  # feature_dim d -> params, for get_feature_map


_REGISTRY: dict[str, _Entry] = {}


def register_feature_map(
    name: str,
    factory: Callable[..., Any],
    *,
    arity: int = 1,
    from_dim: Callable[[int], dict] | None = None,
    overwrite: bool = False,
) -> None:
    """Add a map to the registry under `name`.

    factory(**params) returns the map's function (x (...,) → (..., d), or (x_a, x_b) → (..., d)
    for arity 2) or a FeatureMap. from_dim(d) → params lets `get_feature_map(name, d)` build
    it from a feature dimension alone; without it, a factory with a `d` parameter is called
    with d=d. Re-registering a name needs overwrite=True.
    """
    if not isinstance(name, str) or not name:
        raise DistillError(f"register_feature_map: name must be a non-empty string, got {name!r}")
    if arity not in (1, 2):
        raise DistillError(f"register_feature_map({name!r}): arity must be 1 or 2, got {arity!r}")
    if not callable(factory):
        raise DistillError(f"register_feature_map({name!r}): factory must be callable")
    if name in _REGISTRY and not overwrite:
        raise DistillError(
            f"feature map {name!r} is already registered; pick another name or pass "
            "overwrite=True"
        )
    _REGISTRY[name] = _Entry(factory, arity, from_dim)


def unregister_feature_map(name: str) -> None:
    """Remove a user map (tests, notebooks). Unknown names raise DistillError."""
    if name not in _REGISTRY:
        raise DistillError(f"unknown feature map {name!r}; choose one of {sorted(_REGISTRY)}")
    del _REGISTRY[name]


def feature_map_names(arity: int | None = None) -> list[str]:
    """Sorted registered names (arity 1: local maps, 2: pairwise, None: all)."""
    return sorted(k for k, e in _REGISTRY.items() if arity is None or e.arity == arity)


def _infer_d(name: str, fn: Callable, arity: int) -> int:
    probe = jax.ShapeDtypeStruct((), jnp.result_type(float))
    try:
        out = jax.eval_shape(fn, *([probe] * arity))
    except DistillError:
        raise
    except Exception as err:  # a user function that cannot take a scalar
        raise DistillError(
            f"feature map {name!r}: calling it on a scalar input failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); the function must map (...,) "
            "to (..., d)"
        ) from None
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) != 1:
        raise DistillError(
            f"feature map {name!r} must map an input of shape () to shape (d,), got "
            f"{shape if shape is not None else type(out).__name__}"
        )
    return int(shape[0])


def make_feature_map(name: str, *, check: bool = True, **params) -> FeatureMap:
    """Build the registered map `name` with its parameters: FeatureMap(name, d, fn, params).

    With check=True (default) the map is validated on the default grid of [0, 1] (or
    [0, 1]² for pairwise maps) and a degenerate map raises DistillError
    (see `validate_feature_map`; pass check=False and validate on real data instead).
    """
    if name not in _REGISTRY:
        raise DistillError(f"unknown feature map {name!r}; choose one of {sorted(_REGISTRY)}")
    entry = _REGISTRY[name]
    for key, value in params.items():
        if key != "params" and (isinstance(value, (str, bytes, list, dict, type(None)))):
            raise DistillError(f"feature map {name!r}: parameter {key} = {value!r} must be a number; it takes "
                               f"{_signature(entry.factory)}")
    try:
        built = entry.factory(**params)
    except TypeError as err:
        sig = _signature(entry.factory)
        raise DistillError(
            f"feature map {name!r}: bad parameters {sorted(params)} ({err}); it takes {sig}"
        ) from None
    if isinstance(built, FeatureMap):
        fm = dataclasses.replace(
            built, name=name, params=MappingProxyType(dict(params)), arity=entry.arity
        )
    else:
        if not callable(built):
            raise DistillError(
                f"feature map {name!r}: the factory must return a function or a FeatureMap, "
                f"got {type(built).__name__}"
            )
        d = _infer_d(name, built, entry.arity)
        fm = FeatureMap(name, d, built, MappingProxyType(dict(params)), entry.arity)
    if fm.d < 2:
        raise DistillError(
            f"feature map {name!r} has d = {fm.d} components; a feature map needs d >= 2"
        )
    if check:
        validate_feature_map(fm)
    return fm


def _signature(fn) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(…)"


def _trig_factory(d: int = 2, scale: float = math.pi / 2):
    d = _check_d("trig", d)
    return lambda x: trig(x, d, scale)


def _poly_factory(degree: int = 2):
    d = _check_int_param("poly", "degree", degree, 1) + 1
    return lambda x: poly(x, d)


def _fourier_factory(order: int = 1):
    order = _check_int_param("fourier", "order", order, 1)
    return lambda x: fourier(x, order)


def _fourier_from_dim(d: int) -> dict:
    if d % 2 != 1:
        raise DistillError(
            f"feature map 'fourier' has d = 2·order + 1 components (odd); got "
            f"feature_dim={d}, use {d - 1} or {d + 1}"
        )
    return {"order": (d - 1) // 2}


def _legendre_factory(degree: int = 2):
    degree = _check_int_param("legendre", "degree", degree, 1)
    return lambda x: legendre(x, degree)


def _learned_factory(params: LearnedParams, site: int | None = None):
    params = LearnedParams(*params)
    if params.w2.ndim == 3:
        if site is None:
            raise DistillError(
                "feature map 'learned': per-site parameters need site=i to build the map of "
                "one site (or call learned(x, params) on inputs of shape (..., n))"
            )
        params = LearnedParams(*(p[site] for p in params))
    elif site is not None:
        raise DistillError("feature map 'learned': site= is only for per-site parameters")
    return lambda x: learned(x, params)


def _pair_product_factory():
    return pair_product


register_feature_map("trig", _trig_factory, from_dim=lambda d: {"d": d})
register_feature_map("poly", _poly_factory, from_dim=lambda d: {"degree": d - 1})
register_feature_map("fourier", _fourier_factory, from_dim=_fourier_from_dim)
register_feature_map("legendre", _legendre_factory, from_dim=lambda d: {"degree": d - 1})
register_feature_map("learned", _learned_factory)
register_feature_map("pair_product", _pair_product_factory, arity=2)
register_feature_map("pair_affine", lambda: pair_affine, arity=2)

# The original dimension-indexed table: name -> fn(x, d). The full list is feature_map_names().
FEATURE_MAPS: dict[str, Callable[..., Array]] = {"trig": trig, "poly": poly}


def get_feature_map(name: str, d: int) -> Callable[[Array], Array]:
    """The original map `name` ∈ FEATURE_MAPS (trig, poly) with `d` bound: x (...,) → (..., d).

    Kept as it was for the MPS layer; every registered map is reachable through
    `feature_map_from_dim(name, d)` or `make_feature_map(name, **params)`.
    """
    if name not in FEATURE_MAPS:
        raise DistillError(
            f"unknown feature map {name!r}; choose one of {sorted(FEATURE_MAPS)} "
            f"(the registry also has {feature_map_names()}: use make_feature_map)"
        )
    d = _check_d(name, d)
    fmap = FEATURE_MAPS[name]

    def feature_map(x) -> Array:
        return fmap(x, d)

    feature_map.__name__ = f"{name}_d{d}"
    feature_map.__doc__ = f"{name} feature map with d={d}: x (...,) → (..., {d})."
    return feature_map


def _takes_d(factory) -> bool:
    try:
        return "d" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def feature_map_from_dim(name: str, d: int, *, check: bool = False) -> FeatureMap:
    """The registered map `name` built from a feature dimension alone (config: feature_dim).

    trig → d=d, poly → degree=d-1, fourier → order=(d-1)/2 (d odd), legendre → degree=d-1;
    a user map needs from_dim= at registration or a factory parameter named `d`.
    check=True also validates it on the default grid.
    """
    if name not in _REGISTRY:
        raise DistillError(f"unknown feature map {name!r}; choose one of {sorted(_REGISTRY)}")
    d = _check_d(name, d)
    entry = _REGISTRY[name]
    if entry.from_dim is not None:
        params = entry.from_dim(d)
    elif _takes_d(entry.factory):
        params = {"d": d}
    else:
        raise DistillError(
            f"feature map {name!r} cannot be built from feature_dim alone; use "
            f"make_feature_map({name!r}, ...) (it takes {_signature(entry.factory)})"
        )
    fm = make_feature_map(name, check=check, **params)
    if fm.d != d:
        raise DistillError(f"feature map {name!r} built for feature_dim={d} has {fm.d} components")
    return fm


# ---------------------------------------------------------------------------------------
# Validity (seed 000 §4)
# ---------------------------------------------------------------------------------------


class ValidityReport(NamedTuple):
    """Result of `check_feature_map`. Singular values are float64, descending."""

    name: str
    d: int
    ok: bool
    value_sv: np.ndarray  # (d,) singular values of V = [φ_k(x_s)]
    derivative_sv: np.ndarray  # (d,) singular values of D = [∂φ_k(x_s)]
    constant_in_span: bool  # the derivative null direction (if any) is the constant function
    n_vanishing: int  # samples where φ(x_s) is numerically the zero vector
    n_samples: int
    where: str  # "on [0, 1]", "on 300 samples in [0.0, 1.0]", …
    message: str | None  # the one-line refusal, None when ok


def default_samples(arity: int = 1, dtype=None, d: int = 2):
    """Points of [0, 1] (arity 1: max(257, 8·d) of them), or a grid of [0, 1]² as (x_a, x_b)
    (at least 17×17, and at least 8·d points) — enough to show d independent components."""
    dtype = dtype or jnp.result_type(float)
    if arity == 1:
        return jnp.linspace(0.0, 1.0, max(257, 8 * d), dtype=dtype)
    g = jnp.linspace(0.0, 1.0, max(17, math.ceil(math.sqrt(8 * d))), dtype=dtype)
    xa, xb = jnp.meshgrid(g, g, indexing="ij")
    return xa.reshape(-1), xb.reshape(-1)


def _as_fm(fm) -> FeatureMap:
    if isinstance(fm, FeatureMap):
        return fm
    if callable(fm):
        name = getattr(fm, "__name__", "user")
        return FeatureMap(name, _infer_d(name, fm, 1), fm, {}, 1)
    raise DistillError(f"expected a FeatureMap or a function, got {type(fm).__name__}")


def _samples(fm: FeatureMap, samples) -> tuple[tuple[Array, ...], bool]:
    """Samples as a tuple of `arity` flat float arrays (S,), and whether they were defaulted."""
    if samples is None:
        s = default_samples(fm.arity, d=fm.d)
        return (s,) if fm.arity == 1 else s, True
    if fm.arity == 1:
        x = _as_float(samples).reshape(-1)
        return (x,), False
    if isinstance(samples, (tuple, list)) and len(samples) == 2:
        xa, xb = (_as_float(s).reshape(-1) for s in samples)
    else:
        arr = _as_float(samples)
        if arr.ndim != 2 or arr.shape[-1] != 2:
            raise DistillError(
                f"feature map {fm.name!r} is pairwise: pass samples as (x_a, x_b) or an array "
                f"of shape (S, 2), got shape {tuple(arr.shape)}"
            )
        xa, xb = arr[:, 0], arr[:, 1]
    if xa.shape != xb.shape:
        raise DistillError(
            f"feature map {fm.name!r}: x_a and x_b samples differ in size "
            f"({xa.shape[0]} vs {xb.shape[0]})"
        )
    return (xa, xb), False


def value_matrix(fm, samples=None) -> Array:
    """V[s, k] = φ_k(x_s): (S, d). samples: (S,) or, pairwise, (x_a, x_b) / (S, 2)."""
    fm = _as_fm(fm)
    xs, _ = _samples(fm, samples)
    return fm.fn(*xs)


def derivative_matrix(fm, samples=None) -> Array:
    """D[s, k] = dφ_k/dx(x_s): (S, d) by forward-mode autodiff (vmap of jacfwd).

    Pairwise maps: rows ∂φ/∂x_a for every sample, then ∂φ/∂x_b: (2S, d).
    """
    fm = _as_fm(fm)
    xs, _ = _samples(fm, samples)
    argnums = tuple(range(fm.arity))
    jac = jax.vmap(jax.jacfwd(fm.fn, argnums=argnums))(*xs)  # tuple of (S, d)
    return jnp.concatenate(jac, axis=0)


def _fmt(sv) -> str:
    return ", ".join(f"{v:.2g}" for v in sv)


def check_feature_map(
    fm, samples=None, *, tol: float = 1e-6, const_tol: float = 1e-4
) -> ValidityReport:
    """Check the validity rule of the module docstring; never raises for a degenerate map.

    fm: a FeatureMap (or a plain local function x (...,) → (..., d)).
    samples: None (grid of [0, 1] / [0, 1]²), real inputs (S,) for a local map, or
    (x_a, x_b) / (S, 2) data pairs for a pairwise map. Use real data where it matters: a
    pairwise map can be valid on the grid and degenerate on the data (constant partner).
    """
    fm = _as_fm(fm)
    xs, defaulted = _samples(fm, samples)
    n = int(xs[0].shape[0])
    if defaulted:
        where = "on [0, 1]" if fm.arity == 1 else "on [0, 1]²"
    else:
        lo = min(float(jnp.min(x)) for x in xs) if n else float("nan")
        hi = max(float(jnp.max(x)) for x in xs) if n else float("nan")
        what = "samples" if fm.arity == 1 else "sample pairs"
        where = f"on {n} {what} in [{lo:.3g}, {hi:.3g}]"
    if n < fm.d:
        raise DistillError(
            f"feature map {fm.name!r}: {n} samples cannot show {fm.d} independent components; "
            f"pass at least {fm.d} (a few hundred spread over the data range)"
        )
    v = np.asarray(fm.fn(*xs), dtype=np.float64)
    if v.shape != (n, fm.d):
        raise DistillError(
            f"feature map {fm.name!r} returned shape {v.shape} for {n} samples; expected "
            f"({n}, {fm.d})"
        )
    dm = np.asarray(derivative_matrix(fm, xs if fm.arity == 2 else xs[0]), dtype=np.float64)
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(dm))):
        msg = (
            f"feature map {fm.name!r} is not finite {where} (values or derivatives contain "
            "NaN/inf); φ must be finite and differentiable on the data range (seed 000 §4)"
        )
        return ValidityReport(fm.name, fm.d, False, np.full(fm.d, np.nan), np.full(fm.d, np.nan),
                              False, 0, n, where, msg)

    value_sv = np.linalg.svd(v, compute_uv=False)
    _, dsv, dvt = np.linalg.svd(dm, full_matrices=False)
    derivative_sv = dsv
    row_norm = np.linalg.norm(v, axis=1)
    n_vanishing = int(np.sum(row_norm <= tol * max(float(row_norm.max()), np.finfo(float).tiny)))

    message = None
    constant_in_span = False
    vmax = value_sv[0]
    if not vmax > 0 or value_sv[-1] / vmax < tol:
        message = (
            f"feature map {fm.name!r} is degenerate: its components are linearly dependent "
            f"{where} (singular values {_fmt(value_sv)}); φ must have d = {fm.d} linearly "
            "independent components (seed 000 §4)"
        )
    else:
        dmax = derivative_sv[0]
        ratios = derivative_sv / dmax if dmax > 0 else np.zeros_like(derivative_sv)
        n_null = int(np.sum(ratios < tol))
        if n_null == 1:
            g = v @ dvt[-1]  # the combination of components whose derivative vanishes
            spread = float(np.max(np.abs(g - g.mean())))
            constant_in_span = spread <= const_tol * float(np.max(np.abs(g)))
        if n_null > 1 or (n_null == 1 and not constant_in_span):
            message = (
                f"feature map {fm.name!r} is degenerate: its derivatives are linearly "
                f"dependent {where} beyond a constant component (singular values "
                f"{_fmt(derivative_sv)}); the derivatives dφ_k/dx must not cancel except for "
                "the constant function (seed 000 §4)"
            )
    return ValidityReport(
        fm.name, fm.d, message is None, value_sv, derivative_sv, constant_in_span,
        n_vanishing, n, where, message,
    )


def validate_feature_map(fm, samples=None, *, tol: float = 1e-6, const_tol: float = 1e-4):
    """`check_feature_map`, raising DistillError (one line) if the map is degenerate.

    Returns the ValidityReport of a valid map.
    """
    report = check_feature_map(fm, samples, tol=tol, const_tol=const_tol)
    if not report.ok:
        raise DistillError(report.message)
    return report
