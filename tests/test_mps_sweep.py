"""tn.mps fused scan (tn.mps_sweep) and every method on hard inputs: zero and near-zero
feature vectors at every site position (values, log-norms, gradients, never NaN), halves of
unequal length, merged sites, gradients with respect to φ, and the previous autodiff scan."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distill.errors import DistillError
from distill.tn import mps, mps_sweep
from distill.tn.feature_maps import trig

from test_mps import random_params, to_f64, uniform

ALL = ["scan", "tree", "chunked", "scan_autodiff"]


@functools.cache
def _loss_grad(method, per_step):
    def loss(p, phi, y):
        z, log_norm = mps._contract_impl(p, phi, method=method, sites_per_step=per_step)
        return optax.softmax_cross_entropy_with_integer_labels(z, y).mean() + 0.01 * jnp.mean(log_norm)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def loss_fn(method, y, sites_per_step=None):
    """value_and_grad wrt (cores, φ) of a cross-entropy + log-norm loss; compiled once."""
    f = _loss_grad(method, sites_per_step)
    return lambda p, phi: f(p, phi, y)


def assert_tree_close(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_known_nan_case_tree_and_chunked_give_finite_equal_gradients():
    """The reported bug: a zero φ at an inner site made tree/chunked gradients NaN."""
    p = mps.init_mps(jax.random.key(0), 3, 2, 1, 1, output_site=1, init_std=0.5)
    phi = jnp.array([[[0.5, 0.5], [0.0, 0.0], [0.5, 0.5]], [[0.5, 0.5], [0.3, 0.7], [0.5, 0.5]]])

    def grads(method):
        def f(p):
            z, log_norm = mps.contract(p, phi, method=method)
            return jnp.sum(z) + jnp.sum(log_norm)

        return jax.grad(f)(p)

    ref = grads("scan")
    for method in ("tree", "chunked", "scan_autodiff"):
        g = grads(method) if method != "scan_autodiff" else jax.grad(
            lambda p: jnp.sum(sum(mps._contract_impl(p, phi, method=method)[i].sum() for i in (0, 1)))
        )(p)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g)), method
        assert_tree_close(g, ref, 1e-5, 1e-6)
    # the zero sample contributes nothing to the gradient of `right`; the other sample does
    assert float(jnp.abs(ref.right).sum()) > 0


@pytest.mark.parametrize("scale", [0.0, 1e-20])
def test_zero_and_tiny_features_at_every_site_agree_across_methods(scale):
    """φ = scale·φ at one site of sample 0, for each site position in turn (both edges, both
    halves, next to the output core): all methods give the same z, log-norm and gradients,
    finite; a zero sample has z = 0, a tiny one the value of the unscaled sample times scale."""
    n, d, chi, m, k = 7, 2, 3, 2, 3
    with jax.enable_x64(True):
        params = random_params(1, n, d, chi, m, k, dtype=jnp.float64)
        base = trig(uniform(2, (3, n), jnp.float64), d)
        y = jnp.array([0, 1, 1])
        for site in range(n):
            phi = base.at[0, site].multiply(scale)
            ref_z, ref_log = mps._contract_impl(params, phi, method="scan_autodiff")
            ref_g = loss_fn("scan_autodiff", y)(params, phi)
            for method in ALL:
                z, log_norm = mps._contract_impl(params, phi, method=method)
                np.testing.assert_allclose(z, ref_z, rtol=1e-9, atol=1e-12)
                np.testing.assert_allclose(log_norm, ref_log, rtol=1e-9, atol=1e-9)
                val, g = loss_fn(method, y)(params, phi)
                assert np.isfinite(float(val))
                assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g)), (method, site)
                assert_tree_close(g, ref_g[1], 1e-7, 1e-9)
            a = np.asarray(ref_z * jnp.exp(ref_log)[:, None])
            dense = np.asarray(mps.contract_dense(params, phi))
            np.testing.assert_allclose(a, dense, rtol=1e-9, atol=1e-300)
            if scale == 0:
                assert np.all(np.asarray(ref_z[0]) == 0)


def test_tiny_features_float32_keep_the_value():
    """float32: φ = 1e-20·φ̂ at one site (|u|² would underflow) keeps z and shifts log_norm
    by log 1e-20, for every method."""
    n, d, chi, m = 12, 2, 4, 3
    params = random_params(3, n, d, chi, m)
    phi = trig(uniform(4, (2, n)), d)
    tiny = phi.at[:, 5].multiply(1e-20)
    for method in ALL:
        z0, l0 = mps._contract_impl(params, phi, method=method)
        z1, l1 = mps._contract_impl(params, tiny, method=method)
        np.testing.assert_allclose(z1, z0, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(l1 - l0, np.log(1e-20), rtol=1e-5)


# (n, d, chi, m, k): equal halves, odd/even remainders for two sites per step, unequal
# halves padded with identity sites, a far-off output core (the excess swept alone), and an
# empty half.
CASES = [(12, 2, 3, 2, 6, 2), (11, 3, 2, 3, 5, 1), (11, 3, 2, 3, 5, 2), (13, 2, 4, 2, 6, 3),
         (20, 2, 3, 2, 3, 2), (9, 2, 3, 2, 8, 2), (9, 2, 3, 2, 1, 1)]


@pytest.mark.parametrize("n, d, chi, m, k, per_step", CASES)
def test_fused_scan_matches_autodiff_scan_float64(n, d, chi, m, k, per_step):
    with jax.enable_x64(True):
        params = random_params(n + 7 * per_step, n, d, chi, m, k, dtype=jnp.float64)
        phi = trig(uniform(5, (4, n), jnp.float64), d)
        y = jnp.array([0, 1, 1, 0]) % m
        ref = loss_fn("scan_autodiff", y)(params, phi)
        got = loss_fn("scan", y, sites_per_step=per_step)(params, phi)
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-12)
        assert_tree_close(got[1], ref[1], 1e-9, 1e-12)  # cores and φ
        if n <= 10:
            z, log_norm = mps._contract_impl(params, phi, method="scan", sites_per_step=per_step)
            dense = np.asarray(mps.contract_dense(params, phi))
            np.testing.assert_allclose(z * jnp.exp(log_norm)[:, None], dense, rtol=1e-10,
                                       atol=1e-12 * np.abs(dense).max())


def test_sweep_gradients_match_finite_differences_and_autodiff():
    """mps_sweep.sweep's hand-written backward pass against autodiff of the same forward
    (sweep_forward) for all three inputs, including a zero step and a non-zero log cotangent."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        g, s, chi, dd, b = 2, 5, 3, 2, 4
        v0 = rng.standard_normal((g, chi, b))
        v0 = jnp.asarray(v0 / np.linalg.norm(v0, axis=1, keepdims=True))
        w = jnp.asarray(rng.standard_normal((s, g, chi, dd * chi)))
        phi = jnp.asarray(rng.uniform(size=(s, g, dd, b))).at[2, 1, :, 3].set(0.0)
        cv = jnp.asarray(rng.standard_normal((g, chi, b)))
        cl = jnp.asarray(rng.standard_normal((g, b)))

        def f(fn):
            return lambda v0, w, phi: jnp.sum(fn(v0, w, phi)[0] * cv) + jnp.sum(fn(v0, w, phi)[1] * cl)

        ours = jax.grad(f(lambda *a: mps_sweep.sweep(*a, 1)), argnums=(0, 1, 2))(v0, w, phi)
        ref = jax.grad(f(lambda *a: mps_sweep.sweep_forward(*a, 1)), argnums=(0, 1, 2))(v0, w, phi)
        assert_tree_close(ours, ref, 1e-10, 1e-12)
        np.testing.assert_allclose(ours[2][2, 1, :, 3], 0.0)  # the zero step: zero gradient


def test_merge_sites_and_features_are_the_two_site_products():
    rng = np.random.default_rng(1)
    cores = jnp.asarray(rng.standard_normal((4, 3, 2, 2)))
    phi = jnp.asarray(rng.standard_normal((5, 4, 3)))
    mc, mf = mps_sweep.merge_sites(cores, 2), mps_sweep.merge_features(phi, 2)
    assert mc.shape == (2, 9, 2, 2) and mf.shape == (5, 2, 9)
    m_site = jnp.einsum("bsp,spio->bsio", phi, cores)
    two = jnp.einsum("bio,boj->bij", m_site[:, 2], m_site[:, 3])
    np.testing.assert_allclose(jnp.einsum("bp,pio->bio", mf[:, 1], mc[1]), two, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["scan", "tree"])
def test_long_chain_float32_is_stable_and_accurate(method):
    """4096 sites at χ 128 (scan) and χ 32 (tree): finite, and equal to float64."""
    n, d = 4096, 2
    chi, batch = (128, 2) if method == "scan" else (32, 2)
    params = mps.init_mps(jax.random.key(5), n, d, chi, 4, init_std=0.05)
    x = uniform(6, (batch, n))
    z32, log32 = mps.contract(params, trig(x, d), method=method)
    assert bool(jnp.all(jnp.isfinite(z32))) and bool(jnp.all(jnp.isfinite(log32)))
    with jax.enable_x64(True):
        z64, log64 = mps.contract(to_f64(params), trig(to_f64(x), d), method="scan")
    rel = np.linalg.norm(np.asarray(z32) - np.asarray(z64)) / np.linalg.norm(np.asarray(z64))
    assert rel < 1e-3, rel
    np.testing.assert_allclose(np.asarray(log32), np.asarray(log64), rtol=1e-4)


def test_auto_rule_picks_tree_for_tiny_batches_on_cpu():
    # planned (fixed cores, inference): the 2-site scan at every batch on CPU
    assert mps.choose_planned(196, 2, 20, 1, backend="cpu") == ("scan", 2)
    assert mps.choose_planned(196, 2, 32, 1, backend="cpu") == ("scan", 1)
    assert mps.choose_method(196, 2, 20, 1, backend="cpu") == "tree"
    assert mps.choose_method(196, 2, 20, 256, backend="cpu") == "scan"
    assert mps.choose_method(784, 3, 10, 500, backend="cpu") == "scan"


@pytest.mark.parametrize("batch, method", [(1, None), (256, None), (3, "scan"), (3, "chunked")])
def test_planned_contraction_equals_contract(batch, method):
    """A precomputed ContractionPlan gives contract's values, for the methods it picks."""
    n, d, chi, m = 23, 2, 5, 3
    params = random_params(8, n, d, chi, m)
    phi = trig(uniform(9, (batch, n)), d)
    plan = mps.plan_contraction(params, batch, method=method)
    assert (plan.method, plan.sites_per_step) == ((method, plan.sites_per_step) if method
                                                  else mps.choose_planned(n, d, chi, batch))
    z, log_norm = mps.contract_planned(plan, phi)
    with jax.enable_x64(True):  # the reference: float64 (a plan sums in another order than contract)
        z64, log64 = mps.contract(to_f64(params), to_f64(phi), method="scan")
    for got, log_got in ((z, log_norm), mps.contract(params, phi, method="scan")):
        np.testing.assert_allclose(got, z64, rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(log_got, log64, rtol=2e-5, atol=2e-5)


def _pair_zero_at_0(x):
    """A local map that vanishes at x = 0: φ(x) = [x, x²] (a zero feature vector at a site)."""
    return jnp.stack([x, x * x], axis=-1)


@pytest.mark.parametrize("n, d, chi, k, batch, method", [
    (9, 2, 3, 4, 3, None),     # odd halves: identity-padded steps, two sites per step
    (9, 2, 3, 4, 6, None),     # above _MATVEC_MAX_BATCH: GEMM steps (below: site-matrix steps)
    (10, 2, 3, 1, 1, None),    # no left half: the right half alone (the excess lane)
    (10, 2, 3, 9, 2, None),    # no right half
    (10, 3, 2, 2, 2, None),    # d 3: one site per step, a long excess
    (9, 2, 3, 4, 3, "tree"),   # other methods form φ and call contract_planned
])
def test_planned_inputs_equal_the_dense_contraction(n, d, chi, k, batch, method):
    """contract_planned_inputs (features formed in the sweep's layout, sites reading a permuted
    subset of the inputs) against the dense tensor contracted site by site, float64; log_norm
    included."""
    with jax.enable_x64(True):
        params = random_params(n + k, n, d, chi, 3, k, dtype=jnp.float64)
        x = uniform(n, (batch, n + 3), jnp.float64)
        site_inputs = jnp.asarray(np.random.default_rng(k).permutation(n + 3)[:n])
        fmap = functools.partial(trig, d=d)
        plan = mps.plan_contraction(params, batch, method=method)
        z, log_norm = mps.contract_planned_inputs(plan, fmap, x, site_inputs)
        dense = mps.contract_dense(params, fmap(x[:, site_inputs]))
        np.testing.assert_allclose(z * jnp.exp(log_norm)[:, None], dense, rtol=1e-10, atol=1e-14)
        assert not np.allclose(z, mps.contract_planned(plan, fmap(x[:, :n]))[0], atol=1e-3)  # order used


@pytest.mark.parametrize("batch", [3, 6])  # site-matrix steps, GEMM steps
def test_planned_inputs_handle_zero_features_like_contract(batch):
    """A site whose feature vector is exactly 0 (x = 0 under [x, x²]): z = 0 and the same
    log-norm as `contract`, no NaN; the other samples unaffected."""
    n, d, chi = 9, 2, 3
    params = random_params(3, n, d, chi, 2, 4)
    x = np.asarray(uniform(4, (batch, n))) + 0.1
    x[1, 2] = 0.0  # left half
    x[2, 7] = 0.0  # right half
    plan = mps.plan_contraction(params, batch)
    got = mps.contract_planned_inputs(plan, _pair_zero_at_0, jnp.asarray(x), jnp.arange(n))
    ref = mps.contract(params, _pair_zero_at_0(jnp.asarray(x)), method="scan")
    for a, b in zip(got, ref):
        assert bool(jnp.all(jnp.isfinite(a)))
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(got[0][1:3], 0.0)
    assert np.all(np.abs(np.asarray(got[0][0])) > 0) and np.all(np.abs(np.asarray(got[0][3:])) > 0)


def test_matvec_steps_equal_gemm_steps_float64_and_keep_zero_vectors():
    """mps_sweep.sweep_forward with site-matrix steps (`_step_matvec`) against the GEMM steps,
    float64, and a reference written from the definition: same unit vectors and log-norms; a
    zero feature vector leaves a zero vector (its step adds 0 to the log-norm), no NaN."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(11)
        s_, g, chi, dd, b = 7, 2, 5, 4, 3
        w = jnp.asarray(rng.normal(size=(s_, g, chi, dd * chi)))
        phi = rng.uniform(-1.0, 1.0, size=(s_, g, dd, b))
        phi[3, 1, :, 2] = 0.0  # lane 1 of sample 2 meets a zero feature vector at step 3
        v0 = jnp.asarray(rng.normal(size=(g, chi, b)))
        v0 = v0 / jnp.linalg.norm(v0, axis=1, keepdims=True)
        v_mv, log_mv = mps_sweep.sweep_forward(v0, w, jnp.asarray(phi), matvec=True)
        v_gemm, log_gemm = mps_sweep.sweep_forward(v0, w, jnp.asarray(phi))
        # reference from the definition: u = Σ_D φ_D W[:, D-block] v, normalised, per lane and sample
        for gi in range(g):
            for bi in range(b):
                v, log = np.asarray(v0[gi, :, bi]), 0.0
                for si in range(s_):
                    m = sum(phi[si, gi, p, bi] * np.asarray(w[si, gi])[:, p * chi:(p + 1) * chi] for p in range(dd))
                    u = m @ v
                    nrm = np.linalg.norm(u)
                    v, log = (u / nrm, log + np.log(nrm)) if nrm > 0 else (u * 0.0, log)
                np.testing.assert_allclose(v_mv[gi, :, bi], v, atol=1e-12)
                np.testing.assert_allclose(log_mv[gi, bi], log, atol=1e-12)
        np.testing.assert_allclose(v_mv, v_gemm, atol=1e-12)
        np.testing.assert_allclose(log_mv, log_gemm, atol=1e-12)
        assert np.all(np.asarray(v_mv[1, :, 2]) == 0.0) and np.all(np.isfinite(np.asarray(log_mv)))


@pytest.mark.parametrize("batch", [2, 6])  # site-matrix steps, GEMM steps
def test_planned_contraction_is_differentiable_in_phi(batch):
    """contract_planned's documented gradient in φ equals contract's (float64)."""
    with jax.enable_x64(True):
        params = random_params(12, 9, 2, 3, 2, 4, dtype=jnp.float64)
        phi = trig(uniform(13, (batch, 9), jnp.float64), 2)
        plan = mps.plan_contraction(params, batch, method="scan")
        loss = lambda f: lambda p: jnp.sum(jnp.sin(f(p)[0])) + jnp.sum(f(p)[1])  # noqa: E731
        got = jax.grad(loss(lambda p: mps.contract_planned(plan, p)))(phi)
        want = jax.grad(loss(lambda p: mps.contract(params, p, method="scan")))(phi)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
        assert float(jnp.abs(got).max()) > 1e-3


def test_matvec_steps_rule():
    """CPU only, at most 5 samples, and under 4096 site-matrix elements a step (2·χ²·batch)."""
    assert [mps._matvec_steps(b, 20, backend="cpu") for b in (1, 5, 6, 256)] == [True, True, False, False]
    assert [mps._matvec_steps(b, 24, backend="cpu") for b in (1, 3, 4)] == [True, True, False]
    assert [mps._matvec_steps(b, 10, backend="cpu") for b in (5, 6)] == [True, False]
    assert not mps._matvec_steps(1, 48, backend="cpu")
    assert not mps._matvec_steps(1, 20, backend="gpu")


def test_planned_inputs_refuse_mismatched_shapes():
    params = random_params(3, 9, 2, 3, 2, 4)
    plan = mps.plan_contraction(params, 2)
    with pytest.raises(DistillError, match="site_inputs"):
        mps.contract_planned_inputs(plan, trig, jnp.zeros((2, 9)), jnp.arange(8))
    with pytest.raises(DistillError, match="d = 3"):
        mps.contract_planned_inputs(plan, functools.partial(trig, d=3), jnp.zeros((2, 9)), jnp.arange(9))


_SHARDED = """
import json, sys
sys.path.insert(0, {tests!r})
from distill.train.sharding import use_cpu_devices
use_cpu_devices(2)  # before any JAX work: this process sees two CPU devices
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from distill.tn import mps, mps_sweep
from distill.tn.feature_maps import trig
from test_mps import random_params, uniform
from test_mps_sweep import loss_fn
jax.config.update("jax_enable_x64", True)
mesh = Mesh(np.asarray(jax.devices()), ("data",))
out = {{"devices": len(jax.devices())}}
# balanced halves, a far-off output core (the excess lane), merged sites; an odd batch stays whole
for n, d, chi, m, k, per_step, batch in [(12, 2, 3, 2, 6, 1, 6), (11, 3, 2, 3, 2, 1, 4), (12, 2, 3, 2, 6, 2, 4),
                                         (9, 2, 3, 2, 4, 1, 5)]:
    params = random_params(n, n, d, chi, m, k, dtype=jnp.float64)
    phi = trig(uniform(5, (batch, n), jnp.float64), d)
    y = jnp.arange(batch) % m
    ref = loss_fn("scan", y, sites_per_step=per_step)(params, phi)
    with jax.set_mesh(mesh):
        split = mps_sweep._batch_axes(batch)
        f = jax.jit(lambda p, x, t: loss_fn("scan", t, sites_per_step=per_step)(p, x))
        rows = NamedSharding(mesh, P("data") if batch % 2 == 0 else P())
        got = f(jax.device_put(params, NamedSharding(mesh, P())), jax.device_put(phi, rows), jax.device_put(y, rows))
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)))
    scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(ref))
    out[f"{{n}},{{k}},{{per_step}},{{batch}}"] = {{"split": split, "rel": diff / scale}}
print(json.dumps(out))
"""


def test_sweep_splits_the_batch_over_a_device_mesh_with_equal_values_and_gradients():
    """Under a two-device mesh (`jax.set_mesh`) the fused sweep runs on each device's slice of the
    batch and sums ∂W once: loss and gradients (cores and φ) equal the one-device sweep in float64;
    a batch that does not split evenly is swept whole."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).resolve().parent)
    env = {**__import__("os").environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(Path(tests).parent) + ":" + tests}
    res = subprocess.run([sys.executable, "-c", _SHARDED.format(tests=tests)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out.pop("devices") == 2
    assert [v["split"] for v in out.values()] == [["data"], ["data"], ["data"], None]
    for case, v in out.items():
        assert v["rel"] < 1e-12, case


def test_cpu_devices_after_jax_started_is_one_line():
    from distill.errors import DistillError
    from distill.train.sharding import use_cpu_devices

    jax.devices()
    use_cpu_devices(None)
    use_cpu_devices(len(jax.devices("cpu")))  # what it already has: nothing to do
    with pytest.raises(DistillError, match=r"runtime.cpu_devices = 7 cannot take effect: JAX already started "
                                           r"with 1 CPU device"):
        use_cpu_devices(7)


def test_runtime_cpu_devices_is_applied_before_the_run_starts(tmp_path):
    """`runtime.cpu_devices` reaches the pipeline: in this process JAX already runs with one CPU
    device, so asking for two is refused in one line before anything trains or is written."""
    from distill.config import from_dict
    from distill.errors import DistillError
    from distill.experiments import run as pipeline

    assert len(jax.devices("cpu")) == 1  # starts JAX here with its default, whatever ran before
    cfg = from_dict({"runtime": {"cpu_devices": 2}, "teacher": {"epochs": 1}, "distill": {"epochs": 1}})
    with pytest.raises(DistillError, match="runtime.cpu_devices = 2 cannot take effect"):
        pipeline.run(cfg, tmp_path / "run", progress=False)
    with pytest.raises(DistillError, match="runtime.cpu_devices = 2 cannot take effect"):
        pipeline.train_teacher(cfg, tmp_path / "teacher", progress=False)
    assert list(tmp_path.iterdir()) == []
