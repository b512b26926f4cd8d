"""Values of the local feature maps at known points, normalisation, dtype, and the lookup."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill.errors import DistillError
from distill.tn.feature_maps import FEATURE_MAPS, get_feature_map, poly, trig

R2 = math.sqrt(0.5)


@pytest.mark.parametrize(
    "x, expected",
    [(0.0, [1.0, 0.0]), (1.0, [0.0, 1.0]), (0.5, [R2, R2]), (1 / 3, [math.sqrt(3) / 2, 0.5])],
)
def test_trig_d2_values(x, expected):
    np.testing.assert_allclose(trig(jnp.float32(x), 2), expected, atol=1e-6)


@pytest.mark.parametrize(
    "x, expected",
    [
        (0.0, [1.0, 0.0, 0.0]),
        (1.0, [0.0, 0.0, 1.0]),
        # cos = sin = 1/√2: [cos², √2 cos sin, sin²]
        (0.5, [0.5, math.sqrt(2) * 0.5, 0.5]),
    ],
)
def test_trig_d3_values(x, expected):
    np.testing.assert_allclose(trig(jnp.float32(x), 3), expected, atol=1e-6)


def test_trig_d4_binomial_weights():
    c, s = math.cos(math.pi * 0.3 / 2), math.sin(math.pi * 0.3 / 2)
    expected = [c**3, math.sqrt(3) * c**2 * s, math.sqrt(3) * c * s**2, s**3]
    np.testing.assert_allclose(trig(jnp.float32(0.3), 4), expected, rtol=1e-6)


@pytest.mark.parametrize("d", [2, 3, 4, 6])
def test_trig_components_unit_norm(d):
    x = jax.random.uniform(jax.random.key(d), (5, 7))
    phi = trig(x, d)
    assert phi.shape == (5, 7, d)
    np.testing.assert_allclose(jnp.sum(phi**2, axis=-1), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    "x, d, expected",
    [
        (0.0, 3, [1.0, 0.0, 0.0]),
        (1.0, 3, [1.0, 1.0, 1.0]),
        (0.5, 3, [1.0, 0.5, 0.25]),
        (0.5, 2, [1.0, 0.5]),
        (2.0, 4, [1.0, 2.0, 4.0, 8.0]),
    ],
)
def test_poly_values(x, d, expected):
    np.testing.assert_allclose(poly(jnp.float32(x), d), expected, rtol=1e-7)


def test_poly_default_is_three_components():
    np.testing.assert_allclose(poly(jnp.array([0.5, -1.0])), [[1, 0.5, 0.25], [1, -1, 1]])


@pytest.mark.parametrize("fmap", [trig, poly])
def test_dtype_preserved(fmap):
    assert fmap(jnp.zeros(3, jnp.float32), 3).dtype == jnp.float32
    assert fmap(jnp.zeros(3, jnp.bfloat16), 3).dtype == jnp.bfloat16
    with jax.enable_x64(True):
        out = fmap(jnp.full(3, 0.25, jnp.float64), 3)
        assert out.dtype == jnp.float64
        assert out.shape == (3, 3)


def test_integer_input_becomes_float():
    phi = trig(jnp.array([0, 1]), 2)
    assert jnp.issubdtype(phi.dtype, jnp.floating)
    np.testing.assert_allclose(phi, [[1, 0], [0, 1]], atol=1e-6)


def test_get_feature_map_binds_dimension():
    x = jnp.linspace(0, 1, 9)
    assert set(FEATURE_MAPS) == {"trig", "poly"}
    np.testing.assert_array_equal(get_feature_map("trig", 3)(x), trig(x, 3))
    np.testing.assert_array_equal(get_feature_map("poly", 4)(x), poly(x, 4))


def test_get_feature_map_unknown_name_lists_choices():
    with pytest.raises(DistillError, match="poly.*trig"):
        get_feature_map("fourier-ish", 2)


@pytest.mark.parametrize("d", [1, 0, -3, 2.0, True])
def test_get_feature_map_rejects_bad_dimension(d):
    with pytest.raises(DistillError, match="feature_dim"):
        get_feature_map("trig", d)


# ---------------------------------------------------------------------------------------
# Registry, more maps, and the validity check (seed 000 §4)
# ---------------------------------------------------------------------------------------

from distill.tn.feature_maps import (  # noqa: E402
    FeatureMap,
    LearnedParams,
    check_feature_map,
    derivative_matrix,
    feature_map_from_dim,
    feature_map_names,
    fourier,
    init_learned,
    learned,
    legendre,
    make_feature_map,
    pair_product,
    register_feature_map,
    unregister_feature_map,
    validate_feature_map,
    value_matrix,
)


def test_registry_lists_built_ins():
    assert feature_map_names(1) == ["fourier", "learned", "legendre", "poly", "trig"]
    assert feature_map_names(2) == ["pair_affine", "pair_product"]


def test_trig_scale_default_reproduces_legacy_and_scale_changes_angle():
    x = jnp.linspace(0, 1, 11)
    fm = make_feature_map("trig", d=3)
    assert (fm.name, fm.d, fm.arity, dict(fm.params)) == ("trig", 3, 1, {"d": 3})
    np.testing.assert_array_equal(fm(x), trig(x, 3))
    # scale = π: x = 0.5 is the angle π/2 → [cos, sin] = [0, 1]; x = 1/3 → [1/2, √3/2]
    fm_pi = make_feature_map("trig", d=2, scale=math.pi)
    np.testing.assert_allclose(fm_pi(jnp.array([0.5, 1 / 3])),
                               [[0, 1], [0.5, math.sqrt(3) / 2]], atol=1e-6)


def test_poly_degree_param():
    fm = make_feature_map("poly", degree=3)
    assert fm.d == 4
    np.testing.assert_allclose(fm(jnp.float32(0.5)), [1, 0.5, 0.25, 0.125])


def test_fourier_values():
    # [1, cos 2πx, sin 2πx, cos 4πx, sin 4πx]
    np.testing.assert_allclose(fourier(jnp.float32(0.0), 2), [1, 1, 0, 1, 0], atol=1e-6)
    np.testing.assert_allclose(fourier(jnp.float32(0.25), 2), [1, 0, 1, -1, 0], atol=1e-6)
    np.testing.assert_allclose(fourier(jnp.float32(0.125), 1), [1, R2, R2], atol=1e-6)
    fm = make_feature_map("fourier", order=3)
    assert fm.d == 7 and fourier(jnp.zeros((4, 5)), 3).shape == (4, 5, 7)


def test_legendre_values_at_known_points():
    # shifted P0..P3 at x = 0, 0.5, 1 (t = -1, 0, 1)
    expected = [[1, -1, 1, -1], [1, 0, -0.5, 0], [1, 1, 1, 1]]
    np.testing.assert_allclose(legendre(jnp.array([0.0, 0.5, 1.0]), 3), expected, atol=1e-6)
    # P̃3(x) = 20x³ - 30x² + 12x - 1 at x = 0.25: 0.3125 - 1.875 + 3 - 1 = 0.4375
    np.testing.assert_allclose(legendre(jnp.float32(0.25), 3)[3], 0.4375, atol=1e-6)


def test_legendre_orthogonal_on_unit_interval():
    with jax.enable_x64(True):
        # Gauss–Legendre quadrature on [0, 1] integrates degree ≤ 2·20-1 exactly
        t, w = np.polynomial.legendre.leggauss(20)
        x, w = (t + 1) / 2, w / 2
        p = np.asarray(legendre(jnp.asarray(x), 4))
        gram = p.T @ (w[:, None] * p)
        np.testing.assert_allclose(gram, np.diag(1 / (2 * np.arange(5) + 1)), atol=1e-12)


def test_feature_map_from_dim_builds_every_dimension_indexed_map():
    x = jnp.linspace(0, 1, 5)
    np.testing.assert_array_equal(feature_map_from_dim("fourier", 5)(x), fourier(x, 2))
    np.testing.assert_array_equal(feature_map_from_dim("legendre", 4)(x), legendre(x, 3))
    np.testing.assert_array_equal(feature_map_from_dim("poly", 4)(x), poly(x, 4))
    np.testing.assert_array_equal(feature_map_from_dim("trig", 3, check=True)(x), trig(x, 3))
    with pytest.raises(DistillError, match="odd.*feature_dim=4"):
        feature_map_from_dim("fourier", 4)
    with pytest.raises(DistillError, match="feature_dim must be an integer"):
        feature_map_from_dim("legendre", 1)
    # the original lookup stays limited to FEATURE_MAPS and points at the registry
    with pytest.raises(DistillError, match="choose one of.*poly.*trig.*make_feature_map"):
        get_feature_map("legendre", 4)


def test_make_feature_map_errors():
    with pytest.raises(DistillError, match="unknown feature map 'nope'"):
        make_feature_map("nope")
    with pytest.raises(DistillError, match="bad parameters.*order"):
        make_feature_map("fourier", ordre=2)
    with pytest.raises(DistillError, match="degree must be an integer >= 1"):
        make_feature_map("legendre", degree=0)


def test_learned_shared_and_per_site():
    p = init_learned(jax.random.key(0), d=3, hidden=4)
    assert [a.shape for a in p] == [(4,), (4,), (4, 3), (3,)]
    x = jnp.array([[0.1, 0.7], [0.4, 0.9]])
    w1, b1, w2, b2 = (np.asarray(a, np.float64) for a in p)
    ref = np.tanh(np.asarray(x)[..., None] * w1 + b1) @ w2 + b2
    np.testing.assert_allclose(learned(x, p), ref, rtol=1e-5, atol=1e-6)
    # per-site: site i uses its own MLP
    ps = init_learned(jax.random.key(1), d=2, hidden=5, n_sites=2)
    out = learned(x, ps)
    assert out.shape == (2, 2, 2)
    for i in range(2):
        pi = LearnedParams(*(a[i] for a in ps))
        np.testing.assert_allclose(out[:, i], learned(x[:, i], pi), rtol=1e-6)
    # same key → same params; a built per-site map passes the check at init
    np.testing.assert_array_equal(init_learned(jax.random.key(1), 2, 5, 2).w2, ps.w2)
    fm = make_feature_map("learned", params=ps, site=1)
    assert fm.d == 2
    np.testing.assert_allclose(fm(x[:, 1]), out[:, 1], rtol=1e-6)
    with pytest.raises(DistillError, match="site=i"):
        make_feature_map("learned", params=ps)
    with pytest.raises(DistillError, match=r"shape \(\.\.\., 2\)"):
        learned(jnp.zeros((4, 3)), ps)


def _fd(fm, xs, eps=1e-6):
    """Central finite differences in the layout of derivative_matrix."""
    rows = []
    for j in range(fm.arity):
        plus = [x + eps if i == j else x for i, x in enumerate(xs)]
        minus = [x - eps if i == j else x for i, x in enumerate(xs)]
        rows.append((np.asarray(fm.fn(*plus)) - np.asarray(fm.fn(*minus))) / (2 * eps))
    return np.concatenate(rows, axis=0)


@pytest.mark.parametrize(
    "name, params",
    [("trig", {"d": 3}), ("trig", {"d": 2, "scale": 1.3}), ("poly", {"degree": 4}),
     ("fourier", {"order": 2}), ("legendre", {"degree": 4}), ("pair_product", {}),
     ("learned", None)],
)
def test_derivative_matrix_matches_central_differences(name, params):
    with jax.enable_x64(True):
        if params is None:
            params = {"params": init_learned(jax.random.key(3), 3, 6, dtype=jnp.float64)}
        fm = make_feature_map(name, check=False, **params)
        rng = np.random.default_rng(0)
        xs = [jnp.asarray(rng.uniform(0.05, 0.95, 13)) for _ in range(fm.arity)]
        dm = derivative_matrix(fm, xs[0] if fm.arity == 1 else tuple(xs))
        assert dm.dtype == jnp.float64 and dm.shape == (13 * fm.arity, fm.d)
        np.testing.assert_allclose(dm, _fd(fm, xs), rtol=1e-7, atol=1e-7)
        assert value_matrix(fm, xs[0] if fm.arity == 1 else tuple(xs)).shape == (13, fm.d)


@pytest.mark.parametrize(
    "name, params",
    [("trig", {}), ("trig", {"d": 3}), ("trig", {"d": 4}), ("trig", {"d": 2, "scale": 1.0}),
     ("poly", {"degree": 1}), ("poly", {"degree": 2}), ("poly", {"degree": 5}),
     ("fourier", {"order": 1}), ("fourier", {"order": 4}), ("legendre", {"degree": 3}),
     ("legendre", {"degree": 8}), ("pair_product", {})],
)
def test_built_ins_are_valid(name, params):
    fm = make_feature_map(name, **params)  # check=True: raises if degenerate
    report = check_feature_map(fm)
    assert report.ok and report.message is None
    assert report.value_sv.shape == (fm.d,) and report.derivative_sv.shape == (fm.d,)
    assert report.value_sv[-1] / report.value_sv[0] > 1e-6


def test_constant_component_is_the_allowed_derivative_null_direction():
    # poly: the derivative of 1 is 0; trig d=3: φ0 + φ2 = cos² + sin² = 1
    for fm in (make_feature_map("poly"), make_feature_map("trig", d=3)):
        r = check_feature_map(fm)
        assert r.ok and r.constant_in_span
        assert r.derivative_sv[-1] / r.derivative_sv[0] < 1e-6
    r = check_feature_map(make_feature_map("trig", d=2))
    assert r.ok and not r.constant_in_span and r.n_vanishing == 0


def _stack(*fs):
    return lambda x: jnp.stack([f(x) for f in fs], axis=-1)


@pytest.mark.parametrize(
    "name, fn, d, kind",
    [
        ("twice", _stack(lambda x: x, lambda x: 2 * x), 2, "components"),
        ("affine", _stack(jnp.ones_like, lambda x: x, lambda x: 1 + x), 3, "components"),
        # values independent, derivatives 0 everywhere but for the constant: refused
        ("step", _stack(jnp.ones_like, lambda x: jnp.where(x > 0.5, 1.0, 0.0)), 2,
         "derivatives"),
        ("xstep", _stack(lambda x: x, lambda x: jnp.where(x > 0.5, 1.0, 0.0)), 2,
         "derivatives"),
    ],
)
def test_degenerate_local_maps_refused(name, fn, d, kind):
    fm = FeatureMap(name, d, fn)
    report = check_feature_map(fm)
    assert not report.ok
    with pytest.raises(DistillError) as err:
        validate_feature_map(fm)
    msg = str(err.value)
    assert "\n" not in msg and msg == report.message
    assert msg.startswith(f"feature map {name!r} is degenerate: its {kind} are linearly dependent")
    assert "on [0, 1]" in msg and "seed 000 §4" in msg
    assert "singular values" in msg


def test_affine_shifted_linear_map_is_fine():
    # [x, x + 0.5] spans {1, x}: its derivative null direction is the constant function
    assert check_feature_map(FeatureMap("shift", 2, _stack(lambda x: x, lambda x: x + 0.5))).ok


def test_degenerate_pairwise_maps_refused():
    fm = FeatureMap("pdup", 2, lambda a, b: jnp.stack([a, 2 * a], -1), arity=2)
    with pytest.raises(DistillError, match=r"^feature map 'pdup' is degenerate: its components "
                       r"are linearly dependent on \[0, 1\]² \(singular values [^)]*\); φ must"):
        validate_feature_map(fm)
    # pair_product: valid on the grid, degenerate on data whose partner is constant 1
    pp = make_feature_map("pair_product")
    xa = jax.random.uniform(jax.random.key(0), (300,))
    assert check_feature_map(pp, (xa, jax.random.uniform(jax.random.key(1), (300,)))).ok
    with pytest.raises(DistillError, match=r"'pair_product' is degenerate: its components are "
                       r"linearly dependent on 300 sample pairs"):
        validate_feature_map(pp, (xa, jnp.ones_like(xa)))
    # (S, 2) array form gives the same report
    r = check_feature_map(pp, jnp.stack([xa, jnp.ones_like(xa)], -1))
    assert not r.ok and r.n_samples == 300


def test_pair_product_values_and_vanishing_count():
    np.testing.assert_allclose(pair_product(jnp.array([0.5, 0.0]), jnp.array([0.4, 0.9])),
                               [[0.5, 0.2], [0.0, 0.0]])
    # the 17×17 grid has 17 pairs with x_a = 0 where φ = 0
    assert check_feature_map(make_feature_map("pair_product")).n_vanishing == 17


def test_check_on_real_samples_and_too_few_samples():
    data = jax.random.uniform(jax.random.key(2), (40, 8), minval=0.2, maxval=0.6)
    r = validate_feature_map(make_feature_map("legendre", degree=3), data)
    assert r.n_samples == 320 and r.where.startswith("on 320 samples in [0.2")
    with pytest.raises(DistillError, match="2 samples cannot show 3"):
        check_feature_map(make_feature_map("poly"), jnp.array([0.1, 0.2]))
    # on data with only two distinct values, [1, x, x²] is degenerate
    with pytest.raises(DistillError, match="components are linearly dependent on 6 samples"):
        validate_feature_map(make_feature_map("poly"), jnp.array([0, 1, 0, 1, 0, 1.0]))


def test_user_registered_map_end_to_end():
    def tanh_map(slope=3.0):
        return lambda x: jnp.stack([jnp.ones_like(x), jnp.tanh(slope * (x - 0.5))], axis=-1)

    def dup_map():
        return lambda x: jnp.stack([x, 2 * x], axis=-1)

    register_feature_map("user_tanh", tanh_map)
    register_feature_map("user_dup", dup_map)
    register_feature_map("user_trig", lambda d=2: lambda x: trig(x, d))
    register_feature_map("user_pair", lambda: lambda a, b: jnp.stack([a, a - b, b * b], -1),
                         arity=2)
    try:
        assert {"user_tanh", "user_dup"} <= set(feature_map_names(1))
        fm = make_feature_map("user_tanh", slope=2.0)
        assert (fm.name, fm.d, dict(fm.params)) == ("user_tanh", 2, {"slope": 2.0})
        np.testing.assert_allclose(fm(jnp.array([0.5, 1.0])),
                                   [[1, 0], [1, math.tanh(1.0)]], rtol=1e-6)
        assert validate_feature_map(fm).ok
        with pytest.raises(DistillError, match="'user_dup' is degenerate: its components"):
            make_feature_map("user_dup")
        assert make_feature_map("user_dup", check=False).d == 2
        pfm = make_feature_map("user_pair")
        assert (pfm.arity, pfm.d) == (2, 3)
        with pytest.raises(DistillError, match="already registered"):
            register_feature_map("user_tanh", tanh_map)
        with pytest.raises(DistillError, match="cannot be built from feature_dim"):
            feature_map_from_dim("user_tanh", 2)
        assert feature_map_from_dim("user_trig", 4).d == 4  # factory with a `d` parameter
    finally:
        for name in ("user_tanh", "user_dup", "user_pair", "user_trig"):
            unregister_feature_map(name)
    assert "user_tanh" not in feature_map_names()


def test_user_map_with_wrong_output_shape_refused():
    register_feature_map("user_flat", lambda: lambda x: x * 2)
    try:
        with pytest.raises(DistillError, match=r"'user_flat' must map an input of shape \(\)"):
            make_feature_map("user_flat")
    finally:
        unregister_feature_map("user_flat")


def test_cos_sin_float32_is_accurate_against_float64():
    """feature_maps.cos_sin (range reduction + polynomials in float32) against numpy's float64
    cos / sin: ≤ 1.5e-7 absolute on a fine grid over [−20, 20] (every quadrant boundary), random
    points up to the reduction's limit ±8192, the trig map's [0, π/2], and exact multiples of π/4."""
    from distill.tn.feature_maps import cos_sin

    rng = np.random.default_rng(0)
    a = np.concatenate([np.linspace(-20, 20, 400_001), rng.uniform(-8192, 8192, 200_000),
                        np.linspace(0, math.pi / 2, 10_001), np.arange(-64, 65) * (math.pi / 4)]).astype(np.float32)
    c, s = jax.jit(cos_sin)(jnp.asarray(a))
    assert c.dtype == s.dtype == jnp.float32
    a64 = a.astype(np.float64)
    assert np.max(np.abs(np.asarray(c, np.float64) - np.cos(a64))) < 1.5e-7
    assert np.max(np.abs(np.asarray(s, np.float64) - np.sin(a64))) < 1.5e-7
    # exact values where the features of [0, 1] inputs start and end
    np.testing.assert_array_equal(np.asarray(cos_sin(jnp.zeros(3, jnp.float32))), [[1, 1, 1], [0, 0, 0]])


def test_cos_sin_outside_the_reduction_range_and_other_dtypes_use_jax_cos_sin():
    """Beyond |a| = 8192 (or with NaN / inf) the whole array takes jnp.cos / jnp.sin; float64 always
    does. Gradients are cos' = −sin, sin' = cos."""
    from distill.tn.feature_maps import cos_sin

    from distill.tn import feature_maps as fm_lib

    base = np.linspace(-3.0, 3.0, 4 * fm_lib._COS_SIN_MIN_SIZE, dtype=np.float32)
    fast = cos_sin(jnp.asarray(base))
    assert not np.array_equal(np.asarray(fast[0]), np.asarray(jnp.cos(base)))  # the polynomial path
    big = jnp.asarray(base).at[7].set(1e6).at[9].set(-3e4)
    for got, ref in zip(cos_sin(big), (jnp.cos(big), jnp.sin(big))):
        np.testing.assert_array_equal(got, ref)
    small = jnp.asarray(base[:100])  # below the size where the branch pays: jnp.cos / jnp.sin
    np.testing.assert_array_equal(cos_sin(small)[1], jnp.sin(small))
    odd = jnp.asarray(base).at[1].set(jnp.nan).at[2].set(jnp.inf)
    c, s = cos_sin(odd)
    assert np.isnan(np.asarray(c)[1:3]).all() and np.isnan(np.asarray(s)[1:3]).all()
    np.testing.assert_allclose([c[0], s[0]], [math.cos(-3.0), math.sin(-3.0)], rtol=2e-7)
    with jax.enable_x64(True):
        a64 = jnp.linspace(-30.0, 30.0, 1001, dtype=jnp.float64)
        c64, s64 = cos_sin(a64)
        np.testing.assert_array_equal(c64, jnp.cos(a64))
    a = jnp.linspace(-7.0, 7.0, 301, dtype=jnp.float32)
    gc = jax.vmap(jax.grad(lambda v: cos_sin(v)[0]))(a)
    gs = jax.vmap(jax.grad(lambda v: cos_sin(v)[1]))(a)
    np.testing.assert_allclose(gc, -np.sin(np.asarray(a, np.float64)), atol=1e-6)
    np.testing.assert_allclose(gs, np.cos(np.asarray(a, np.float64)), atol=1e-6)
