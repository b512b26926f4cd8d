"""tn.tt.tt_plan / tt_matvec_planned: the precomputed inference layouts give tt_matvec's
values for every method and batch size, and the automatic choice is one of the methods."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from distill.errors import DistillError
from distill.tn import tt


@functools.cache
def cores_784_512(rank=8, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((512, 784)).astype(np.float32)
    return [jnp.asarray(c) for c in tt.tt_svd(w, (4, 7, 7, 4), (8, 4, 4, 4), max_rank=rank)]


@pytest.mark.parametrize("batch", [1, 256])
@pytest.mark.parametrize("method", [None, "dense", "split", "cores"])
def test_planned_matvec_equals_tt_matvec(batch, method):
    cores = cores_784_512()
    x = jnp.asarray(np.random.default_rng(1).standard_normal((batch, 784)), jnp.float32)
    plan = tt.tt_plan(cores, batch, method=method)
    assert plan.method in tt.TT_METHODS and (method is None or plan.method == method)
    ref = np.asarray(tt.tt_matvec(cores, x, method="cores"))
    got = np.asarray(tt.tt_matvec_planned(plan, x))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_plan_keeps_leading_dims_and_rejects_unknown_method():
    cores = cores_784_512(rank=4)
    x = jnp.ones((2, 3, 784))
    assert tt.tt_matvec_planned(tt.tt_plan(cores, 6), x).shape == (2, 3, 512)
    with pytest.raises(DistillError, match="method must be one of"):
        tt.tt_plan(cores, 1, method="fast")
