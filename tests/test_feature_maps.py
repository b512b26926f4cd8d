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
