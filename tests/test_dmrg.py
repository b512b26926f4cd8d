"""tn.dmrg: the chain and its environments reproduce the dense contraction (float64); a sweep step
changes no logit before truncation and lowers the loss it optimises; the truncation error equals
the discarded weight; a sweep leaves the chain mixed-canonical with adapted bonds; the `sweep`
phase trains a student that reloads and reproduces its outputs."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill.errors import DistillError
from distill.tn import canonical as can
from distill.tn import dmrg
from distill.tn import mps
from distill.train import losses


def padded_params(seed, n, d, chi_eff, chi, m, k):
    """A random MPS of bond dimension chi_eff stored zero-padded at χ = chi (float64)."""
    rng = np.random.default_rng(seed)
    first = np.zeros((d, chi)); first[:, :chi_eff] = rng.standard_normal((d, chi_eff))
    left = np.zeros((k - 1, d, chi, chi)); left[..., :chi_eff, :chi_eff] = rng.standard_normal((k - 1, d, chi_eff, chi_eff))
    out = np.zeros((chi, m, chi)); out[:chi_eff, :, :chi_eff] = rng.standard_normal((chi_eff, m, chi_eff))
    right = np.zeros((n - k - 1, d, chi, chi))
    right[..., :chi_eff, :chi_eff] = rng.standard_normal((n - k - 1, d, chi_eff, chi_eff))
    last = np.zeros((d, chi)); last[:, :chi_eff] = rng.standard_normal((d, chi_eff))
    return mps.MPSParams(*(jnp.asarray(a) for a in (first, left, out, right, last)))


def features(seed, b, n, d):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (b, n, d)))


def chain_values(chain, k, phi):
    """T·Φ(x) (B, m) of a chain, through the dense reference."""
    return np.asarray(mps.contract_dense(dmrg.chain_to_mps(chain, k), phi))


def surrogate(chain, envs, st, phi, g):
    W = dmrg.merge(chain, st.j, st.o_side)
    return dmrg.local_logits(W, envs.left[st.j], phi[:, st.j], envs.right[st.j + 1],
                             g + envs.left_log[st.j] + envs.right_log[st.j + 1])


def test_chain_round_trip_and_environments_match_dense():
    with jax.enable_x64(True):
        n, d, chi, m, k = 6, 2, 4, 3, 2
        params = padded_params(0, n, d, 4, chi, m, k)
        chain, k2 = dmrg.chain_from_mps(params)
        assert k2 == k
        back = dmrg.chain_to_mps(chain, k)
        for a, b in zip(back, params):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        phi = features(1, 5, n, d)
        envs = dmrg.environments(chain, phi)
        want = np.asarray(mps.contract_dense(params, phi))
        g = jnp.zeros(5)
        # the local model on either side of the output core equals the whole chain's value
        for st in (dmrg.Step(k, "left", "left"), dmrg.Step(k - 1, "right", "right")):
            np.testing.assert_allclose(np.asarray(surrogate(chain, envs, st, phi, g)), want, rtol=1e-10, atol=1e-12)
        assert np.allclose(np.linalg.norm(np.asarray(envs.left), axis=-1), 1.0)
        assert np.allclose(np.linalg.norm(np.asarray(envs.right), axis=-1), 1.0)


@pytest.mark.parametrize("n,k", [(5, 2), (4, 1), (4, 3), (2, 1)])
def test_sweep_without_truncation_changes_no_value_and_is_canonical(n, k):
    with jax.enable_x64(True):
        d, m, chi_eff, chi = 2, 2, 2, 8  # moving the output leg needs ≤ χ_eff·m = 4 ≤ 8 channels: exact
        params = padded_params(n + k, n, d, chi_eff, chi, m, k)
        phi = features(2, 7, n, d)
        want = np.asarray(mps.contract_dense(params, phi))
        chain, _ = dmrg.chain_from_mps(params)
        g = jnp.zeros(7)
        envs = dmrg.environments(chain, phi)
        targets = {"t": jnp.zeros((7, m)), "y": jnp.zeros((7,), jnp.int32)}
        loss = losses.KD(2.0, 0.5)
        for i, st in enumerate(dmrg.sweep_schedule(n, k)):
            # before each step the local model is the whole chain: T·Φ unchanged by the earlier steps
            np.testing.assert_allclose(np.asarray(surrogate(chain, envs, st, phi, g)), want, rtol=1e-9, atol=1e-11)
            chain, envs, info = dmrg.local_update(chain, envs, st.j, phi, g, targets, jax.random.key(i), 0.0, 0.0,
                                                  o_side=st.o_side, site_side=st.site_side, loss=loss, steps=0,
                                                  batch=7, max_bond=chi)
            assert float(info["discarded"]) < 1e-20
            site = np.asarray(chain.sites[st.j])
            r = int(info["rank"])
            if st.site_side == "left":  # Σ_{p,l} A A = 1 on the kept channels, 0 on the padding
                gram = np.einsum("plr,pls->rs", site, site)
            else:
                gram = np.einsum("plr,pmr->lm", site, site)
            np.testing.assert_allclose(gram[:r, :r], np.eye(r), atol=1e-12)
            assert np.all(gram[r:] == 0) and np.all(gram[:, r:] == 0)
        np.testing.assert_allclose(chain_values(chain, k, phi), want, rtol=1e-9, atol=1e-11)
        # after a full sweep: mixed-canonical about the output core (‖T‖ = ‖out‖), bonds ≤ the exact need
        new = dmrg.chain_to_mps(chain, k)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(mps.to_dense(new))), np.linalg.norm(np.asarray(new.out)),
                                   rtol=1e-10)
        assert max(dmrg.bond_ranks(new)) <= chi_eff * m


def test_truncation_error_equals_discarded_weight():
    with jax.enable_x64(True):
        n, d, chi, m, k = 6, 2, 6, 3, 3
        rng_params = padded_params(5, n, d, chi, chi, m, k)
        params, _ = can.mixed_canonical(rng_params)  # canonical about the output core
        T = np.asarray(mps.to_dense(params))
        chain, _ = dmrg.chain_from_mps(params)
        phi = features(3, 4, n, d)
        st = dmrg.Step(k, "left", "left")  # merge the output core with site k, move it right
        W = dmrg.merge(chain, st.j, st.o_side)
        s_full = np.linalg.svd(np.asarray(W).reshape(chi * d, m * chi), compute_uv=False)
        for max_bond in (1, 2, 3, 5):
            c2, _ = dmrg.chain_from_mps(params)
            e2 = dmrg.environments(c2, phi)
            c2, _, info = dmrg.local_update(c2, e2, st.j, phi, jnp.zeros(4), {"t": jnp.zeros((4, m)),
                                            "y": jnp.zeros(4, jnp.int32)}, jax.random.key(0), 0.0, 0.0,
                                            o_side="left", site_side="left", loss=losses.KD(1.0, 1.0), steps=0,
                                            batch=4, max_bond=max_bond)
            new = dmrg.chain_to_mps(c2, k + 1)  # the output core now sits between k and k+1
            T2 = np.asarray(mps.to_dense(new))
            err = np.sum((T - T2) ** 2) / np.sum(T ** 2)
            want = np.sum(s_full[max_bond:] ** 2) / np.sum(s_full ** 2)
            assert int(info["rank"]) == max_bond
            np.testing.assert_allclose(float(info["discarded"]), want, rtol=1e-9, atol=1e-15)
            np.testing.assert_allclose(err, want, rtol=1e-8, atol=1e-14)
        # the cutoff keeps the fewest values whose discarded weight is ≤ cutoff
        w = s_full ** 2 / np.sum(s_full ** 2)
        tails = np.cumsum(w[::-1])[::-1]
        for cutoff in (1e-1, 1e-2, 1e-3, 1e-5):
            r = int(dmrg.truncation_rank(jnp.asarray(s_full), len(w), cutoff))
            assert r == len(w) or tails[r] <= cutoff  # what is dropped weighs ≤ cutoff
            assert r == 1 or tails[r - 1] > cutoff  # dropping one more would exceed it
            assert int(dmrg.truncation_rank(jnp.asarray(s_full), 2, cutoff)) == min(r, 2)
            assert int(dmrg.truncation_rank(jnp.asarray(s_full), len(w), cutoff, min_bond=4)) == max(r, 4)
        # the floor never keeps numerical zeros: a rank-1 spectrum stays rank 1
        assert int(dmrg.truncation_rank(jnp.asarray([1.0, 0.0, 0.0]), 3, 0.0, min_bond=2)) == 1


def test_local_update_lowers_the_loss_it_optimises():
    n, d, chi, m, k, b = 6, 2, 4, 3, 3, 64
    params = mps.init_mps(jax.random.key(0), n, d, chi, m, output_site=k, init_std=0.3)
    params, _ = can.mixed_canonical(params)
    chain, _ = dmrg.chain_from_mps(params)
    rng = np.random.default_rng(0)
    phi = jnp.asarray(rng.uniform(0, 1, (b, n, d)), jnp.float32)
    targets = {"t": jnp.asarray(rng.standard_normal((b, m)) * 3, jnp.float32),
               "y": jnp.asarray(rng.integers(0, m, b), jnp.int32)}
    g = jnp.full((b,), 2.0, jnp.float32)
    loss = losses.KD(2.0, 0.7)
    envs = dmrg.environments(chain, phi)
    for st in dmrg.sweep_schedule(n, k)[:2]:  # two moves to the right (one compilation)
        before = float(loss(surrogate(chain, envs, st, phi, g), targets))
        chain, envs, info = dmrg.local_update(chain, envs, st.j, phi, g, targets, jax.random.key(st.j), 1e-2, 0.0,
                                              o_side=st.o_side, site_side=st.site_side, loss=loss, steps=30,
                                              batch=b, max_bond=chi)
        # the loss of the whole chain after the step (optimised, split, truncated to χ), from fresh environments
        k_now = st.j + 1 if st.site_side == "left" else st.j
        fresh = dmrg.environments(chain, phi)
        z = np.asarray(mps.contract_dense(dmrg.chain_to_mps(chain, k_now), phi)) * np.exp(2.0)
        after = float(loss(jnp.asarray(z, jnp.float32), targets))
        assert after < before - 1e-3
        assert 1 <= int(info["rank"]) <= chi and float(info["loss"]) < before
        # the cached environments the next step reads (left of and right of the output core) are current
        for name in ("left", "left_log"):
            np.testing.assert_allclose(np.asarray(getattr(fresh, name))[: k_now + 1],
                                       np.asarray(getattr(envs, name))[: k_now + 1], rtol=1e-4, atol=1e-5)
        for name in ("right", "right_log"):
            np.testing.assert_allclose(np.asarray(getattr(fresh, name))[k_now:],
                                       np.asarray(getattr(envs, name))[k_now:], rtol=1e-4, atol=1e-5)


def test_sweep_arguments_are_checked_and_effective_sizes_count_padding():
    params = padded_params(1, 5, 2, 2, 6, 3, 2)
    chain, k = dmrg.chain_from_mps(jax.tree.map(lambda a: a.astype(jnp.float32), params))
    phi = jnp.ones((3, 5, 2), jnp.float32)
    with pytest.raises(DistillError, match="max_bond"):
        dmrg.sweep(chain, k, phi, jnp.zeros(3), {}, jax.random.key(0), loss=losses.KD(1.0, 1.0), steps=0, batch=3,
                   lr=0.0, max_bond=7)
    with pytest.raises(DistillError, match="cutoff"):
        dmrg.sweep(chain, k, phi, jnp.zeros(3), {}, jax.random.key(0), loss=losses.KD(1.0, 1.0), steps=0, batch=3,
                   lr=0.0, cutoff=1.5)
    with pytest.raises(DistillError, match="phi"):
        dmrg.sweep(chain, k, jnp.ones((3, 4, 2)), jnp.zeros(3), {}, jax.random.key(0), loss=losses.KD(1.0, 1.0),
                   steps=0, batch=3, lr=0.0)
    # χ_eff = 2 stored at χ = 6: every bond uses 2 channels; chain first, site 1, out, sites 2, 3, last
    assert dmrg.bond_ranks(params) == (2, 2, 2, 2, 2)
    assert dmrg.effective_num_params(params) == 1 * 2 * 2 + 2 * 2 * 2 + 2 * 3 * 2 + 2 * 2 * 2 + 2 * 2 * 2 + 2 * 2 * 1
    assert mps.num_params(params) == 2 * 6 + 1 * 2 * 36 + 6 * 3 * 6 + 2 * 2 * 36 + 2 * 6


def test_log_scale_refit_finds_the_minimum_far_from_the_start():
    from distill.phases.sweep import refit_log_scale

    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.standard_normal((200, 5)) * 0.01, jnp.float32)
    targets = {"t": z * 300.0, "y": jnp.asarray(np.argmax(np.asarray(z), 1), jnp.int32)}
    loss = losses.KD(2.0, 0.9)
    s = refit_log_scale(z, targets, loss, start=0.0)
    grid = np.linspace(-5, 15, 4001)
    values = [float(loss(jnp.exp(v) * z, targets)) for v in grid[::40]]
    best = grid[::40][int(np.argmin(values))]
    assert abs(s - best) < 0.25 and s > 4  # the optimum lies beyond a narrow bracket around the start
    assert float(loss(jnp.exp(s) * z, targets)) <= min(values) + 1e-6
