"""Two-site DMRG-style sweeps of an MPS classifier under any loss of its logits: pure functions on
arrays (Stoudenmire & Schwab 2016, "Supervised learning with tensor networks", §3; White 1992).

**Model.** An MPS with n sites and its output core between sites c-1 and c computes, per sample,
the multilinear value f(x) = T·Φ(x) (`distill.tn.mps`). The sweep trains

    logits_b = exp(g_b) · T·Φ(x_b)

with a per-sample log-scale g_b (B,) that the caller fixes for the whole sweep (the phase sets it
so that the logits equal the `distill.nn.MPS` module's outputs at the start of the sweep; see
`distill.phases.sweep`). Because T·Φ(x) does not depend on where the output core sits or on the
gauge, the output core can move along the chain without changing any logit.

**Chain.** During a sweep the cores are held as `Chain(sites (n, d, χ, χ) (s, p, l, r), out
(χ, m, χ) (l, o, r))`: site 0 uses left bond channel 0 only (`first` of `MPSParams`), site n-1
right bond channel 0 only (`last`). Environments (`Envs`) hold, for every j = 0..n, the
contraction of sites 0..j-1 (`left[j]`, left[0] = e_0) and of sites j..n-1 (`right[j]`,
right[n] = e_0) with the samples' features, each as a unit vector (B, χ) and its log-norm (B,):
the same renormalisation as `tn.mps.contract`, so chains of thousands of sites stay finite.

**One step** (`local_update`) at site j, with the output core next to it (on its left when
`o_side` is "left": between sites j-1 and j; on its right when "right"):
1. merge the site core and the output core into W (χ, d, m, χ), index (l, p, o, r);
2. optimise W on the loss of logits_b = exp(g_b + λL_b + λR_b) · Σ L̂_b[l] φ_j(x_b)[p] W[l,p,o,r]
   R̂_b[r], with L̂ = left[j], R̂ = right[j+1] cached (λ their log-norms): these are exactly the
   logits of the whole chain, linear in W, so the loss (KD: cross-entropies of softmaxes of
   linear functions) is convex in W. It takes `steps` Adam steps on random minibatches of the
   cached samples, on V = W / rms(W) (so that `lr` is a relative step: measured on Fashion-MNIST,
   this kept improving the student over sweeps where Adam on W·exp(median log-scale), in the
   output core's own units, took ~10× smaller relative steps and lost to the truncation); a sample
   whose log-scale exceeds the median by more than MAX_SPREAD = 10 (one the chain nearly
   annihilates, which the module's normalisation would blow up) is capped there;
3. split W by SVD, keeping at most `max_bond` singular values and dropping the smallest ones whose
   squared sum (the discarded weight) is at most `cutoff` · Σ s² (ITensor's per-bond cutoff), but
   keeping at least `min_bond` (ITensor's mindim; numerically-zero values are always dropped). `site_side` says where the site core goes:
   "left" — W as (l p) × (o r), site = U (left-isometric), out = S·Vᵀ, the output core now on the
   site's right; "right" — W as (l o) × (p r), out = U·S, site = Vᵀ (right-isometric), the output
   core on its left. The bond between site and output core takes the kept rank: bond dimensions
   adapt per bond, up to min(χ·d, m·χ, max_bond);
4. update the environment the step has just fixed (left[j+1] or right[j]).
Before the optimisation and without truncation a step changes no logit; the truncation error
‖T − T′‖ / ‖T‖ equals sqrt(discarded / Σ s²) when the rest of the chain is in canonical form about
the pair (Eckart–Young: the sweep keeps it so once it starts mixed-canonical; tests check both).

**Sweep** (`sweep_schedule`, `sweep`): starting with the output core between k-1 and k, move it
right to site n-1 (the last pair keeps the output core on the left), left to site 0 (the first
pair keeps it on the right), and right again to k: 2n-2 steps, every core updated at least once,
the chain left mixed-canonical about k and convertible back to `MPSParams` (`chain_to_mps`).

**Why zero-padded stacks rather than ragged cores.** Each bond has an effective dimension ≤ χ
(the storage), kept by zeroing the dropped singular vectors: zero-padding a bond is exact (the
contraction is unchanged), so the arrays keep static shapes and the whole step compiles once
for every j (jit on (B, n, d, χ, m) only); the adapted student is stored in the module's own
`MPSParams` layout and reloads as is. `bond_ranks` / `effective_num_params` count the channels
actually in use (effective parameters), `tn.mps.num_params` the stored ones.

Einsum letters: b batch · s site · p physical · l/r bond · o output · a the bond a split creates.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from distill.errors import DistillError
from distill.tn.mps import MPSParams, _normalise, mps_dims

__all__ = [
    "Chain",
    "Envs",
    "Step",
    "chain_from_mps",
    "chain_to_mps",
    "environments",
    "merge",
    "local_logits",
    "truncation_rank",
    "split",
    "local_update",
    "sweep_schedule",
    "sweep",
    "bond_ranks",
    "effective_num_params",
]

SIDES = ("left", "right")
MAX_SPREAD = 10.0  # cap of a sample's log-scale above the median in a local problem (see `local_update`)


class Chain(NamedTuple):
    """The cores during a sweep (module notes); T = the chain contracted, output core included."""

    sites: Array  # (n, d, χ, χ) index (s, p, l, r); site 0: l = 0 only, site n-1: r = 0 only
    out: Array  # (χ, m, χ) index (l, o, r)


class Envs(NamedTuple):
    """Cached environments of B samples (module notes): raw = exp(log) · unit vector."""

    left: Array  # (n+1, B, χ)  left[j]: sites 0..j-1 contracted, unit norm; left[0] = e_0
    left_log: Array  # (n+1, B)
    right: Array  # (n+1, B, χ)  right[j]: sites j..n-1 contracted, unit norm; right[n] = e_0
    right_log: Array  # (n+1, B)


class Step(NamedTuple):
    """One local update: site j, the output core on the `o_side` of it before, the site core on
    the `site_side` of the output core after (see `local_update`)."""

    j: int
    o_side: str
    site_side: str


# ---------------------------------------------------------------------------------------
# MPSParams <-> chain
# ---------------------------------------------------------------------------------------


def chain_from_mps(params: MPSParams) -> tuple[Chain, int]:
    """MPSParams → (Chain, k) with the output core between sites k-1 and k (new arrays: `params`
    is not consumed by a sweep). first (d, χ) becomes site 0 with left channel 0, last (d, χ)
    site n-1 with right channel 0.
    """
    n, d, chi, m, k = mps_dims(params)
    first = jnp.zeros((d, chi, chi), params.first.dtype).at[:, 0, :].set(params.first)
    last = jnp.zeros((d, chi, chi), params.last.dtype).at[:, :, 0].set(params.last)
    sites = jnp.concatenate([first[None], params.left, params.right, last[None]], axis=0)
    return Chain(sites, jnp.copy(params.out)), k  # own buffers: a sweep donates them


def chain_to_mps(chain: Chain, k: int) -> MPSParams:
    """Chain → MPSParams with the output core between sites k-1 and k.

    The boundary sites give first = sites[0][:, 0, :] and last = sites[n-1][:, :, 0]; the other
    channels of their outer bonds are zero in a chain made by `chain_from_mps` and kept zero by
    every step (the boundary environment e_0 gives them no gradient and the split no weight).
    Raises: DistillError unless 1 ≤ k ≤ n-1.
    """
    n = chain.sites.shape[0]
    if not 1 <= k <= n - 1:
        raise DistillError(f"chain_to_mps: the output site k must be in [1, {n - 1}], got {k}")
    s = chain.sites
    return MPSParams(s[0][:, 0, :], s[1:k], chain.out, s[k : n - 1], s[n - 1][:, :, 0])


# ---------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------


@jax.jit
def environments(chain: Chain, phi: Array) -> Envs:
    """All left and right environments of the samples phi (B, n, d) (module notes).

    left[j] (B, χ) = normalised e_0 · M_0 ⋯ M_{j-1}, right[j] = normalised M_j ⋯ M_{n-1} · e_0 with
    M_s = Σ_p φ_s[p] sites[s][p]; the log-norms accumulate along the chain.
    """
    n, d, chi, _ = chain.sites.shape
    b = phi.shape[0]
    phis = jnp.einsum("bnp->nbp", phi.astype(chain.sites.dtype))
    e0 = jnp.zeros((b, chi), chain.sites.dtype).at[:, 0].set(1.0)
    zero = jnp.zeros((b,), chain.sites.dtype)

    def left_body(carry, xs):
        v, lg = carry
        core, ph = xs
        v, dl = _normalise(jnp.einsum("bl,bp,plr->br", v, ph, core))
        return (v, lg + dl), (v, lg + dl)

    def right_body(carry, xs):
        v, lg = carry
        core, ph = xs
        v, dl = _normalise(jnp.einsum("plr,bp,br->bl", core, ph, v))
        return (v, lg + dl), (v, lg + dl)

    _, (lv, ll) = jax.lax.scan(left_body, (e0, zero), (chain.sites, phis))
    _, (rv, rl) = jax.lax.scan(right_body, (e0, zero), (chain.sites, phis), reverse=True)
    return Envs(
        left=jnp.concatenate([e0[None], lv], axis=0),
        left_log=jnp.concatenate([zero[None], ll], axis=0),
        right=jnp.concatenate([rv, e0[None]], axis=0),
        right_log=jnp.concatenate([rl, zero[None]], axis=0),
    )


# ---------------------------------------------------------------------------------------
# Merge, local model, split
# ---------------------------------------------------------------------------------------


def _check_side(name: str, side: str) -> None:
    if side not in SIDES:
        raise DistillError(f"dmrg: {name} must be 'left' or 'right', got {side!r}")


def merge(chain: Chain, j, o_side: str) -> Array:
    """The merged tensor W (χ, d, m, χ), index (l, p, o, r), of site j and the output core.

    o_side "left": the output core sits between sites j-1 and j, W = Σ_a out[l,o,a] site[p,a,r];
    "right": between sites j and j+1, W = Σ_a site[p,l,a] out[a,o,r].
    Raises: DistillError for another o_side.
    """
    _check_side("o_side", o_side)
    site = chain.sites[j]
    if o_side == "left":
        return jnp.einsum("loa,par->lpor", chain.out, site)
    return jnp.einsum("pla,aor->lpor", site, chain.out)


def local_logits(W: Array, left: Array, ph: Array, right: Array, log_scale: Array) -> Array:
    """exp(log_scale_b) · Σ left[b,l] ph[b,p] W[l,p,o,r] right[b,r] → (B, m).

    W (χ, d, m, χ); left, right (B, χ) environments; ph (B, d) the features of the merged site;
    log_scale (B,). With left = Envs.left[j], right = Envs.right[j+1] and log_scale = g + their
    log-norms these are the logits of the whole chain (module notes).
    """
    t = jnp.einsum("bl,lpor->bpor", left, W)
    z = jnp.einsum("bpor,bp,br->bo", t, ph, right)
    return jnp.exp(log_scale)[:, None] * z


def truncation_rank(s: Array, max_bond: int, cutoff, min_bond: int = 1) -> Array:
    """How many of the descending singular values s (K,) a split keeps (int32 scalar).

    The fewest r with discarded weight Σ_{i≥r} s_i² ≤ cutoff · Σ s², raised to min_bond, at most
    max_bond, and never a value ≤ s_0 · K · eps(dtype) (a numerical zero) — except that at least one
    is kept. cutoff = 0 keeps every nonzero value. The floor min_bond (ITensor's `mindim`) lets a
    sweep that starts near a product state grow its bonds: with only a cutoff every bond can
    collapse to 1 and stay there.
    """
    w = s * s
    total = jnp.sum(w)
    tails = jnp.cumsum(w[::-1])[::-1]  # tails[i] = Σ_{i'≥i} s_i'²
    needed = jnp.maximum(jnp.sum(tails > cutoff * total).astype(jnp.int32), jnp.asarray(min_bond, jnp.int32))
    tol = s[0] * s.shape[0] * jnp.finfo(s.dtype).eps
    nonzero = jnp.sum(s > tol).astype(jnp.int32)
    return jnp.clip(jnp.minimum(needed, nonzero), 1, jnp.asarray(max_bond, jnp.int32))


def split(W: Array, site_side: str, *, max_bond: int, cutoff, min_bond: int = 1) -> tuple[Array, Array, Array, Array]:
    """Split W (χ, d, m, χ) (l, p, o, r) into a site core and an output core by truncated SVD.

    site_side "left": W as (l p) × (o r) = U S Vᵀ → site (p, l, a) = U (left-isometric on its
    kept channels), out (a, o, r) = S Vᵀ; "right": W as (l o) × (p r) → out (l, o, a) = U S,
    site (p, a, r) = Vᵀ (right-isometric). Kept: `truncation_rank(s, max_bond, cutoff, min_bond)` values;
    the bond a is zero-padded to χ. Returns (site (d, χ, χ), out (χ, m, χ), rank (int32),
    discarded Σ_{dropped} s² / Σ s² (the relative squared truncation error of W)).
    Raises: DistillError for another site_side or max_bond above χ.
    """
    _check_side("site_side", site_side)
    chi, d, m, _ = W.shape
    if isinstance(max_bond, (int, np.integer)) and not 1 <= max_bond <= chi:
        raise DistillError(f"dmrg split: max_bond must be in [1, {chi}] (the stored bond dimension), got {max_bond}")
    if site_side == "left":
        mat = W.reshape(chi * d, m * chi)
    else:
        mat = jnp.einsum("lpor->lopr", W).reshape(chi * m, d * chi)
    u, s, vt = jnp.linalg.svd(mat, full_matrices=False)  # K = min(rows, cols) ≥ χ
    rank = truncation_rank(s, max_bond, cutoff, min_bond)
    w = s * s
    discarded = jnp.sum(jnp.where(jnp.arange(s.shape[0], dtype=jnp.int32) >= rank, w, 0.0)) / jnp.sum(w)
    keep = (jnp.arange(chi, dtype=jnp.int32) < rank).astype(W.dtype)
    u, s, vt = u[:, :chi] * keep[None], s[:chi] * keep, vt[:chi] * keep[:, None]
    if site_side == "left":
        site = jnp.einsum("lpa->pla", u.reshape(chi, d, chi))
        out = jnp.einsum("a,aor->aor", s, vt.reshape(chi, m, chi))
    else:
        out = jnp.einsum("loa,a->loa", u.reshape(chi, m, chi), s)
        site = jnp.einsum("apr->par", vt.reshape(chi, d, chi))
    return site, out, rank, discarded


# ---------------------------------------------------------------------------------------
# One local update
# ---------------------------------------------------------------------------------------


def local_update(chain: Chain, envs: Envs, j, phi: Array, g: Array, targets: dict, key: Array, lr, cutoff, *,
                 o_side: str, site_side: str, loss: Callable[[Array, dict], Array], steps: int, batch: int,
                 max_bond: int, min_bond: int = 1) -> tuple[Chain, Envs, dict]:
    """Merge site j with the output core, optimise, split, update the environment (module notes).

    chain, envs (consumed: their buffers are donated and updated in place); j: the site;
    phi (B, n, d) the features of the cached samples; g (B,) their fixed log-scales; targets
    {name: (B, ...)} the loss reads as batch[name] (e.g. KD: "t" teacher logits, "y" labels); key a
    PRNG key for the minibatches; lr the Adam learning rate relative to rms(W); cutoff the per-bond
    discarded-weight cutoff; o_side / site_side "left" or "right" (module notes);
    loss(logits (b, m), batch) → scalar (hashable); steps Adam steps (0 = only move the output
    core); batch the minibatch size; max_bond ≤ χ and min_bond the bounds of the kept rank
    (`truncation_rank`). All four side combinations share one compiled
    program. Returns the new chain and environments and {"rank", "discarded", "loss"} (loss: the
    mean minibatch loss over the steps, NaN when steps = 0).
    Raises: DistillError for a side that is not "left" / "right" or max_bond outside [1, χ].
    """
    _check_side("o_side", o_side)
    _check_side("site_side", site_side)
    chi = chain.sites.shape[-1]
    if not 1 <= max_bond <= chi:
        raise DistillError(f"dmrg split: max_bond must be in [1, {chi}] (the stored bond dimension), got {max_bond}")
    dt = chain.out.dtype
    return _local_update(chain, envs, jnp.asarray(j, jnp.int32), phi, g, targets, key, jnp.asarray(lr, dt),
                         jnp.asarray(cutoff, dt), jnp.asarray(o_side == "left"), jnp.asarray(site_side == "left"),
                         jnp.asarray(max_bond, jnp.int32), jnp.asarray(min_bond, jnp.int32), loss=loss, steps=steps,
                         batch=batch)


@functools.partial(jax.jit, static_argnames=("loss", "steps", "batch"), donate_argnames=("chain", "envs"))
def _local_update(chain, envs, j, phi, g, targets, key, lr, cutoff, o_left, site_left, max_bond, min_bond, *, loss,
                  steps, batch):
    W = jnp.where(o_left, merge(chain, j, "left"), merge(chain, j, "right"))  # both are small: no branch
    left, right = envs.left[j], envs.right[j + 1]
    ph = jnp.take(phi, j, axis=1).astype(W.dtype)
    log_scale = g + envs.left_log[j] + envs.right_log[j + 1]
    # A sample whose scale is far above the median is one the chain nearly annihilates and the module's
    # per-sample normalisation blows up (after a hard truncation): its logits are capped at e^MAX_SPREAD
    # times the median scale, so that it cannot make the local problem diverge.
    log_scale = jnp.minimum(log_scale, jnp.median(log_scale) + MAX_SPREAD)
    # Adam runs on V = W / rms(W) (entries of order 1), so lr is a relative step
    rms = jnp.sqrt(jnp.mean(W * W))
    rms = jnp.where(rms > 0, rms, 1.0)
    n_samples = phi.shape[0]

    def minibatch_loss(V, idx):
        z = local_logits(V, left[idx], ph[idx], right[idx], log_scale[idx] + jnp.log(rms))
        return loss(z, jax.tree.map(lambda a: a[idx], targets))

    mean_loss = jnp.asarray(jnp.nan, W.dtype)
    if steps > 0:
        opt = optax.adam(lr)
        V = W / rms
        idxs = jax.random.randint(key, (steps, min(batch, n_samples)), 0, n_samples)

        def body(i, carry):
            V, state, total = carry
            value, grad = jax.value_and_grad(minibatch_loss)(V, idxs[i])
            with jax.numpy_dtype_promotion("standard"):  # optax's Adam raises a float to an int32 count
                updates, state = opt.update(grad, state, V)
            return optax.apply_updates(V, updates), state, total + value

        V, _, total = jax.lax.fori_loop(0, steps, body, (V, opt.init(V), jnp.zeros((), W.dtype)))
        W = V * rms
        mean_loss = total / steps

    site, out, rank, discarded = jax.lax.cond(
        site_left, lambda w: split(w, "left", max_bond=max_bond, cutoff=cutoff, min_bond=min_bond),
        lambda w: split(w, "right", max_bond=max_bond, cutoff=cutoff, min_bond=min_bond), W)
    sites = jax.lax.dynamic_update_index_in_dim(chain.sites, site, j, axis=0)

    # the environment the step has fixed: left[j+1] when the site now lies left of the output core, else
    # right[j]; both candidates are cheap (B·χ²·d), and selecting slices keeps the big arrays updated in place
    v_l, dl_l = _normalise(jnp.einsum("bl,bp,plr->br", left, ph, site))
    v_r, dl_r = _normalise(jnp.einsum("plr,bp,br->bl", site, ph, right))
    i_l, i_r = j + 1, j
    envs = Envs(
        left=jax.lax.dynamic_update_index_in_dim(envs.left, jnp.where(site_left, v_l, envs.left[i_l]), i_l, axis=0),
        left_log=jax.lax.dynamic_update_index_in_dim(
            envs.left_log, jnp.where(site_left, envs.left_log[j] + dl_l, envs.left_log[i_l]), i_l, axis=0),
        right=jax.lax.dynamic_update_index_in_dim(envs.right, jnp.where(site_left, envs.right[i_r], v_r), i_r,
                                                  axis=0),
        right_log=jax.lax.dynamic_update_index_in_dim(
            envs.right_log, jnp.where(site_left, envs.right_log[i_r], envs.right_log[j + 1] + dl_r), i_r, axis=0),
    )
    return Chain(sites, out), envs, {"rank": rank, "discarded": discarded, "loss": mean_loss}


# ---------------------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------------------


def sweep_schedule(n_sites: int, k: int) -> list[Step]:
    """The 2n-2 steps of one sweep that starts and ends with the output core between k-1 and k.

    Right from site k to n-1 (at n-1 the output core stays on the left), left from n-2 to 0 (at 0
    it stays on the right), right from 1 to k-1. Raises: DistillError unless n ≥ 2, 1 ≤ k ≤ n-1.
    """
    if n_sites < 2 or not 1 <= k <= n_sites - 1:
        raise DistillError(f"sweep_schedule: need n_sites >= 2 and 1 <= k <= n_sites-1, got n={n_sites}, k={k}")
    n = n_sites
    steps = [Step(j, "left", "left" if j < n - 1 else "right") for j in range(k, n)]
    steps += [Step(j, "right", "right" if j > 0 else "left") for j in range(n - 2, -1, -1)]
    steps += [Step(j, "left", "left") for j in range(1, k)]
    return steps


def sweep(chain: Chain, k: int, phi: Array, g: Array, targets: dict, key: Array, *,
          loss: Callable[[Array, dict], Array], steps: int, batch: int, lr: float, max_bond: int | None = None,
          cutoff: float = 0.0, min_bond: int = 1) -> tuple[Chain, dict]:
    """One full sweep (`sweep_schedule`) of `local_update`s over the cached samples phi (B, n, d).

    chain: the cores with the output core between k-1 and k (best in mixed-canonical form about it,
    e.g. from `distill.tn.canonical.mixed_canonical`, so that every truncation is optimal); g (B,)
    the samples' fixed log-scales; targets, loss, steps, batch, lr as in `local_update`; max_bond
    (None = χ) caps every bond, cutoff the discarded weight per bond, min_bond the floor of every kept
    rank (`truncation_rank`). The caller's chain buffers
    are consumed (donated). Returns the new chain (mixed-canonical about k, output core back
    between k-1 and k) and {"ranks" (2n-2,) the bond kept at each step, "discarded" (2n-2,),
    "loss" (2n-2,) the mean minibatch loss of each step}.
    Raises: DistillError for max_bond outside [1, χ], cutoff outside [0, 1), a bad k, or phi of
    the wrong shape.
    """
    n, d, chi, _ = chain.sites.shape
    max_bond = chi if max_bond is None else max_bond
    if isinstance(max_bond, bool) or not isinstance(max_bond, (int, np.integer)) or not 1 <= max_bond <= chi:
        raise DistillError(f"dmrg sweep: max_bond must be an integer in [1, {chi}] (the stored bond dimension), "
                           f"got {max_bond!r}")
    if isinstance(min_bond, bool) or not isinstance(min_bond, (int, np.integer)) or not 1 <= min_bond <= max_bond:
        raise DistillError(f"dmrg sweep: min_bond must be an integer in [1, max_bond = {max_bond}], got {min_bond!r}")
    if not (isinstance(cutoff, (int, float)) and 0 <= cutoff < 1 and math.isfinite(cutoff)):
        raise DistillError(f"dmrg sweep: cutoff (discarded weight per bond) must be in [0, 1), got {cutoff!r}")
    if phi.ndim != 3 or phi.shape[1:] != (n, d):
        raise DistillError(f"dmrg sweep: phi must have shape (batch, {n}, {d}), got {tuple(phi.shape)}")
    envs = environments(chain, phi)
    info = {"ranks": [], "discarded": [], "loss": []}
    for i, st in enumerate(sweep_schedule(n, k)):
        chain, envs, out = local_update(chain, envs, st.j, phi, g, targets, jax.random.fold_in(key, i), lr, cutoff,
                                        o_side=st.o_side, site_side=st.site_side, loss=loss, steps=steps,
                                        batch=batch, max_bond=int(max_bond), min_bond=int(min_bond))
        info["ranks"].append(out["rank"])
        info["discarded"].append(out["discarded"])
        info["loss"].append(out["loss"])
    return chain, {name: np.asarray(jax.device_get(v)) for name, v in info.items()}


# ---------------------------------------------------------------------------------------
# Effective sizes of a zero-padded MPS
# ---------------------------------------------------------------------------------------


def _chain_tensors(params: MPSParams) -> list[np.ndarray]:
    """Chain order T_0..T_n as (l, p, r) numpy arrays (`distill.tn.canonical` numbering)."""
    first, left, out, right, last = (np.asarray(a) for a in params)
    return ([first[None]] + [np.einsum("plr->lpr", a) for a in left] + [out]
            + [np.einsum("plr->lpr", a) for a in right] + [np.einsum("pl->lp", last)[..., None]])


def bond_ranks(params: MPSParams) -> tuple[int, ...]:
    """Channels in use on each of the n bonds of the chain T_0..T_n (bond t joins T_t and T_{t+1}:
    sites 0..k-1, the output core, sites k..n-1): a channel counts when it is nonzero in both
    tensors it joins. Zero-padded channels (a sweep's dropped singular vectors) do not count; this
    is the storage in use, not the Schmidt rank (`distill.tn.canonical.schmidt_values`)."""
    t = _chain_tensors(params)
    ranks = []
    for a, b in zip(t[:-1], t[1:]):
        used_a = np.any(a != 0, axis=(0, 1))
        used_b = np.any(b != 0, axis=(1, 2))
        ranks.append(int(np.sum(used_a & used_b)))
    return tuple(ranks)


def effective_num_params(params: MPSParams) -> int:
    """Σ_t χ_{t-1}·p_t·χ_t over the chain tensors with the `bond_ranks` χ_t (boundary bonds 1, p_t
    = d for a site and m for the output core): the parameters of the same MPS without its
    zero padding. `distill.tn.mps.num_params` counts the stored ones."""
    t = _chain_tensors(params)
    r = [1, *bond_ranks(params), 1]
    return int(sum(r[i] * a.shape[1] * r[i + 1] for i, a in enumerate(t)))
