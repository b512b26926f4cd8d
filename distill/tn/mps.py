"""Matrix product state (MPS) classifier / regressor: pure functions on arrays.

A chain of n sites with physical dimension d and bond dimension χ, plus one output core with
an open leg of size m placed between site k-1 and site k (1 ≤ k ≤ n-1). Boundary bonds are 1
(squeezed away), so the parameter count is honest. For an input with local feature vectors
φ (B, n, d) the layer computes, per sample,

    a[o] = Σ first[p0, l1] φ0[p0] · A_1 · … · A_{k-1} · out[l, o, r] · A_k · … · last[p, l] φ_{n-1}[p]

The contraction (`contract`) sweeps a left vector L (B, χ) from site 0 to the output core and a
right vector R (B, χ) from site n-1 back to it with `jax.lax.scan`, renormalising to unit
norm at every step and accumulating the log-norms, so it stays finite and accurate in float32
for chains of thousands of sites. It returns the pair (z, log_norm) with
a = z · exp(log_norm)[:, None].

Each half-chain can also be contracted as a log-depth tree ("tree": materialise the site
matrices (B, S, χ, χ) and multiply them pairwise, Frobenius-normalising every product and
accumulating its log-norm) or as a hybrid ("chunked": scan over chunks, tree inside a chunk).
`contract(params, phi, method=None)` picks one with `choose_method` (CPU: "scan").

Einsum letters: b batch · n/s site · p physical · l/r bond · o output.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from distill.errors import DistillError
from distill.tn import mps_sweep

__all__ = [
    "MPSParams",
    "init_mps",
    "contract",
    "ContractionPlan",
    "plan_contraction",
    "contract_planned",
    "contract_planned_inputs",
    "choose_method",
    "choose_planned",
    "METHODS",
    "contract_dense",
    "to_dense",
    "num_params",
    "mps_dims",
]


class MPSParams(NamedTuple):
    """Cores of an MPS with n sites and the output core between sites k-1 and k.

    Layout: the bulk cores are stored (site, physical, left, right) — the physical index comes
    before the bonds, unlike the (left, d, right) of DESIGN.md §1 — so that a core's d slices
    A[p] (χ, χ) are contiguous for the site-matrix sum Σ_p φ_p A[p]; the output core is
    (left, output, right).
    """

    first: Array  # (d, χ)            site 0, index (p, r); left bond of size 1 squeezed
    left: Array  # (k-1, d, χ, χ)     sites 1..k-1, index (s, p, l, r)
    out: Array  # (χ, m, χ)           output core, index (l, o, r)
    right: Array  # (n-k-1, d, χ, χ)  sites k..n-2, index (s, p, l, r)
    last: Array  # (d, χ)             site n-1, index (p, l); right bond squeezed


class MPSDims(NamedTuple):
    n_sites: int
    d: int
    chi: int
    n_out: int
    output_site: int  # k: the output core sits between site k-1 and site k


def mps_dims(params: MPSParams) -> MPSDims:
    """Static sizes (n, d, χ, m, k) read off the core shapes."""
    d, chi = params.first.shape
    n_left = params.left.shape[0]
    n_right = params.right.shape[0]
    return MPSDims(n_left + n_right + 2, d, chi, params.out.shape[1], n_left + 1)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DistillError(f"MPS: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def resolve_output_site(n_sites: int, output_site: int | None) -> int:
    """Default k = n // 2; raise DistillError unless 1 ≤ k ≤ n-1."""
    if output_site is None:
        return n_sites // 2
    if (
        isinstance(output_site, bool)
        or not isinstance(output_site, (int, np.integer))
        or not 1 <= output_site <= n_sites - 1
    ):
        raise DistillError(
            f"MPS: output_site must be an integer in [1, {n_sites - 1}] (the output core sits "
            f"between site k-1 and site k), got {output_site!r}; leave it None for the middle"
        )
    return int(output_site)


def init_mps(
    key: Array,
    n_sites: int,
    d: int,
    chi: int,
    n_out: int,
    *,
    output_site: int | None = None,
    init_std: float = 0.01,
    identity_weights=None,
    dtype=jnp.float32,
) -> MPSParams:
    """Near-identity initialisation, with weights w (d,) (default: all ones) on the identity.

    - bulk cores: A[p] = w_p I + N(0, init_std²) for every physical component p, so each site
      matrix Σ_p φ_p A[p] ≈ (Σ_p w_p φ_p) I is well conditioned and the chain neither vanishes
      nor explodes (the running vectors are renormalised anyway). Choose w so that
      Σ_p w_p φ_p(x) stays away from 0 on the data (`identity_weights_for`): with w = 1 a map
      such as Fourier [1, cos 2πx, sin 2πx] gives 1 + cos + sin, which is 0 at x = 1/2;
    - first / last: w_p e_0 + N(0, init_std²) for every p (the boundary vector starts on bond
      channel 0; the noise in the bulk cores mixes the other channels in);
    - out: N(0, 1), so that z = L̂ · out · R̂ with unit vectors L̂, R̂ has unit variance per
      output at initialisation (O(1) logits, O(1) gradients flowing back into the chain).
    """
    n_sites = _check_int("n_sites", n_sites, 2)
    d = _check_int("feature_dim", d, 2)
    chi = _check_int("bond_dim", chi, 1)
    n_out = _check_int("n_out", n_out, 1)
    k = resolve_output_site(n_sites, output_site)
    if not init_std >= 0:
        raise DistillError(f"MPS: init_std must be >= 0, got {init_std!r}")
    w = jnp.ones((d,), dtype) if identity_weights is None else jnp.asarray(identity_weights, dtype)
    if w.shape != (d,):
        raise DistillError(f"MPS: identity_weights must have shape ({d},), got {w.shape}")
    return _init_arrays(key, jnp.asarray(init_std, dtype), w, n_sites, d, chi, n_out, k, dtype)


def identity_weights_for(phi: Array) -> np.ndarray:
    """w (d,) with Σ_p w_p φ_p(x) ≈ 1 on the samples phi (S, d) (least squares), scaled to max |w| = 1.

    Used by `init_mps` so that every site matrix starts near a positive multiple of the
    identity whatever the feature map: trig gives w ∝ (1, 1), poly [1, x] gives (1, 0),
    Fourier (1, 0, 0), trig d = 3 (1, 0, 1) (cos² + sin² = 1).
    """
    phi = np.asarray(phi, np.float64)
    w, *_ = np.linalg.lstsq(phi, np.ones(phi.shape[0]), rcond=None)
    top = np.max(np.abs(w))
    if not top > 0:
        return np.ones(phi.shape[1])
    w = w / top
    return np.where(np.abs(w) < 1e-6, 0.0, w)  # exact zeros for components the constant does not need


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7, 8))
def _init_arrays(key, init_std, w, n_sites, d, chi, n_out, k, dtype) -> MPSParams:
    k_first, k_left, k_out, k_right, k_last = jax.random.split(key, 5)
    eye = jnp.eye(chi, dtype=dtype)
    e0 = eye[0]

    def bulk(k_, n_cores):
        noise = jax.random.normal(k_, (n_cores, d, chi, chi), dtype)
        return jnp.einsum("p,lr->plr", w, eye)[None] + init_std * noise

    def boundary(k_):
        return jnp.einsum("p,r->pr", w, e0) + init_std * jax.random.normal(k_, (d, chi), dtype)

    return MPSParams(
        first=boundary(k_first),
        left=bulk(k_left, k - 1),
        out=jax.random.normal(k_out, (chi, n_out, chi), dtype),
        right=bulk(k_right, n_sites - k - 1),
        last=boundary(k_last),
    )


def num_params(params: MPSParams) -> int:
    """Total number of scalar parameters in the cores."""
    return int(sum(int(np.prod(a.shape)) for a in params))


# ---------------------------------------------------------------------------------------
# Stable contraction
# ---------------------------------------------------------------------------------------


def _normalise(v: Array) -> tuple[Array, Array]:
    """v (..., χ) → (v / |v|, log |v|); a zero vector stays 0 with a zero gradient (no NaN).

    A zero vector arises when some φ(x_s) is exactly 0 (e.g. the seed's pairwise map at
    x_a = 0). Flooring |v|² at a tiny number instead would scale the zero vector's gradient
    by 1/sqrt(tiny) ≈ 1e19, which overflows further along the chain; the double `where`
    keeps both the value and the gradient of that sample at exactly 0.
    """
    nrm2 = jnp.sum(v * v, axis=-1)
    tiny = jnp.finfo(v.dtype).tiny
    ok = nrm2 > tiny
    safe = jnp.where(ok, nrm2, 1.0)
    inv = jnp.where(ok, jax.lax.rsqrt(safe), 0.0)
    return v * inv[..., None], jnp.where(ok, 0.5 * jnp.log(safe), 0.0)


# Per-step transfer of a running vector through one core, in two GEMM arrangements.
# A "core" here is already arranged for the sweep direction: index (p, i, j) where i is the
# bond the running vector comes in on and j the bond it leaves on.
#   "vec_core":   T = V @ C(i, p·j) → (B, d, χ); V' = Σ_p T φ_p
#   "outer_core": X = φ ⊗ V (B, d·χ); V' = X @ C(p·i, j)


def _step(v: Array, core: Array, ph: Array, arrangement: str) -> Array:
    """v (..., B, χ), core arranged (..., χ, d, χ) or (..., d, χ, χ), ph (..., B, d) → (..., B, χ)."""
    if arrangement == "vec_core":
        t = jnp.einsum("...bi,...ipj->...bpj", v, core)
        return jnp.einsum("...bpj,...bp->...bj", t, ph)
    x = jnp.einsum("...bp,...bi->...bpi", ph, v)
    return jnp.einsum("...bpi,...pij->...bj", x, core)


def _sweep(v0: Array, cores: Array, phis: Array, arrangement: str, unroll: int, reverse=False):
    """Scan v (B, χ) through the (already arranged) cores (S, ...) with phis (S, B, d).

    Returns the final unit vector and the per-step log-norms (S, B); these are summed
    outside the scan (a tree reduction, more accurate in float32 than a running sum).
    """

    def body(v, xs):
        core, ph = xs
        v, log_n = _normalise(_step(v, core, ph, arrangement))
        return v, log_n

    return jax.lax.scan(body, v0, (cores, phis), unroll=unroll, reverse=reverse)


def _choose_arrangement(d: int, chi: int) -> str:
    """GEMM arrangement measured faster for forward+backward on a 2-core CPU (jax 0.10.2).

    value_and_grad of a cross-entropy, median ms (vec_core / outer_core):
      n 784 d 2 χ 10 B 500: 48.5 / 52.4      n 784 d 3 χ 10 B 500: 48.1 / 57.5
      n 196 d 2 χ 16 B 256:  5.7 /  4.1      n 196 d 2 χ 32 B 256: 12.6 / 10.0
      n 784 d 2 χ 20 B 256: 43.2 / 44.5      n 196 d 3 χ 32 B 256: 17.2 / 27.7
    Re-measure with `scripts/bench_mps.py --compare` on other hardware.
    """
    return "outer_core" if d == 2 and chi >= 16 else "vec_core"


def _site_matrices(cores: Array, phis: Array) -> Array:
    """Arranged cores (S, p, i, j) ("outer_core" layout), phis (S, B, p) → M (S, B, i, j)."""
    return jnp.einsum("sbp,spij->sbij", phis, cores)


def _normalise_mats(m: Array) -> tuple[Array, Array]:
    """m (..., χ, χ) → (m / ‖m‖_F, log ‖m‖_F) per matrix.

    A zero matrix (a zero feature vector at some site) stays 0 with log-norm 0 and a zero
    gradient: the double `where` as in `_normalise` (flooring ‖m‖² at `tiny` instead gives
    the zero matrix a 1/sqrt(tiny) ≈ 1e19 gradient and NaN further along).
    """
    nrm2 = jnp.sum(m * m, axis=(-2, -1))
    ok = nrm2 > jnp.finfo(m.dtype).tiny
    safe = jnp.where(ok, nrm2, 1.0)
    inv = jnp.where(ok, jax.lax.rsqrt(safe), 0.0)
    return m * inv[..., None, None], jnp.where(ok, 0.5 * jnp.log(safe), 0.0)


def _tree_product(mats: Array, logs: Array) -> tuple[Array, Array]:
    """Ordered product M_0 @ M_1 @ … of unit-norm matrices by pairwise (log-depth) reduction.

    mats (S, B, χ, χ) with Frobenius norm 1, logs (S, B) their log-scales → (P (B, χ, χ) of
    unit norm, log-scale (B,)). Every pairwise product is renormalised and its log-norm
    accumulated, so nothing over- or underflows whatever S is. An odd element at a level is
    paired with the identity (log-scale 0).
    """
    while mats.shape[0] > 1:
        if mats.shape[0] % 2:
            eye = jnp.broadcast_to(jnp.eye(mats.shape[-1], dtype=mats.dtype), mats.shape[1:])
            mats = jnp.concatenate([mats, eye[None]], axis=0)
            logs = jnp.concatenate([logs, jnp.zeros_like(logs[:1])], axis=0)
        prod, log_p = _normalise_mats(jnp.einsum("sbij,sbjk->sbik", mats[0::2], mats[1::2]))
        mats, logs = prod, logs[0::2] + logs[1::2] + log_p
    return mats[0], logs[0]


def _segment_tree(v0: Array, cores: Array, phis: Array) -> tuple[Array, Array]:
    """"tree": materialise all site matrices of a segment and multiply them pairwise.

    v0 (B, χ) unit vector, cores arranged (S, p, i, j), phis (S, B, p) in sweep order →
    (v (B, χ) unit vector, log-norm (B,)).
    """
    mats, logs = _normalise_mats(_site_matrices(cores, phis))
    prod, log_p = _tree_product(mats, logs)
    v, log_v = _normalise(jnp.einsum("bi,bij->bj", v0, prod))
    return v, log_p + log_v


def _bit_reversal(size: int) -> np.ndarray:
    """Permutation p of range(size) (a power of two) with p[j] = j's bits reversed."""
    bits = max(0, size.bit_length() - 1)
    return np.array([int(format(j, f"0{bits}b")[::-1], 2) if bits else 0 for j in range(size)])


def _tree_size(n: int, k: int, leaf: int) -> int:
    """Leaves per lane of the "tree": the longer half in leaves of `leaf` sites, rounded up
    to a power of two."""
    sites = max(k - 1, n - k - 1)
    return 1 << max(0, (-(-sites // leaf) - 1).bit_length())


def _static_batch(b) -> int:
    """The batch size as an int for the size-based choices; a symbolic batch (an ONNX export with
    a dynamic batch axis) counts as large: the training-size choices, valid for any batch."""
    try:
        return int(b)
    except Exception:  # noqa: BLE001 - jax.export's symbolic dimensions refuse int()
        return 1 << 30


def _tree_leaf_sites(d: int, chi: int, batch: int) -> int:
    """Sites merged into one leaf of the tree (`mps_sweep.merge_sites`): 2 for d = 2 (the
    same work per leaf pair, one level and half the leaves fewer), else 1."""
    return 2 if d == 2 else 1


def _tree_cores(params: MPSParams, leaf: int) -> Array:
    """The cores in the layout of `_tree_run` (depends on the parameters only).

    Left half in natural order with identity sites after it, right half in natural order
    with identity sites before it, both padded to `_tree_size`·leaf sites, `leaf`
    consecutive sites merged into one leaf (d^leaf components), stored bit-reversed →
    (size, 2, d^leaf, χ, χ).
    """
    n, d, chi, m, k = mps_dims(params)
    size = _tree_size(n, k, leaf)
    order = _bit_reversal(size)
    c_l = _pad_cores(params.left, size * leaf)
    c_r = _pad_cores(params.right[::-1], size * leaf)[::-1]
    if leaf > 1:
        c_l, c_r = mps_sweep.merge_sites(c_l, leaf), mps_sweep.merge_sites(c_r, leaf)
    return jnp.stack([c_l[order], c_r[order]], axis=1)


def _tree_run(cores: Array, L, R, phi, k: int, leaf: int):
    """"tree" for both half-chains at once, as two lanes of one pairwise reduction.

    cores from `_tree_cores` (same `leaf`); L, R (B, χ) unit boundary vectors; phi (B, n, d)
    prenormalised → (L', R', log_l, log_r) with L' ∝ L·M_1⋯M_{k-1} and R' ∝ M_k⋯M_{n-2}·R
    unit vectors. With the leaves stored bit-reversed, the factors to multiply at every level
    are the first and the second half of the array (contiguous, no gather or strided copy),
    so each of the log₂ levels is one batched product and one normalisation: few operations,
    which is what a small batch needs. The leaf matrices themselves are not normalised (φ
    has max-abs 1 and the cores are O(1): one product cannot overflow); every product is.
    """
    n = phi.shape[1]
    size = cores.shape[0]
    order = _bit_reversal(size)
    p_l = _pad_features(phi[:, 1:k], size * leaf)
    p_r = _pad_features(phi[:, k : n - 1][:, ::-1], size * leaf)[:, ::-1]
    if leaf > 1:
        p_l, p_r = mps_sweep.merge_features(p_l, leaf), mps_sweep.merge_features(p_r, leaf)
    feats = jnp.einsum("bgsp->sgbp", jnp.stack([p_l[:, order], p_r[:, order]], axis=1))
    chi = cores.shape[-1]
    m = jnp.einsum("sgbp,sgpx->sgbx", feats, jnp.reshape(cores, cores.shape[:3] + (chi * chi,)))
    m = jnp.reshape(m, m.shape[:3] + (chi, chi))  # Σ_p φ_p A_p: (size, 2, B, χ, χ)
    logs = jnp.zeros(m.shape[1:3], m.dtype)
    level = 0
    while m.shape[0] > 1:
        h = m.shape[0] // 2
        m = jnp.einsum("sgbij,sgbjk->sgbik", m[:h], m[h:])
        level += 1
        if level % 2 == 0 or m.shape[0] == 1:
            # every second level (and the last): a product of factors of Frobenius norm ≤ 1
            # has norm ≤ 1, so skipping one normalisation cannot overflow, and four unit
            # factors do not come near float32's underflow
            m, lp = _normalise_mats(m)
            logs = logs + jnp.sum(lp, axis=0)
    m = m[0]
    Lp, log_lv = _normalise(jnp.einsum("bi,bij->bj", L, m[0]))
    Rp, log_rv = _normalise(jnp.einsum("bij,bj->bi", m[1], R))
    return Lp, Rp, logs[0] + log_lv, logs[1] + log_rv


def _segment_chunked(v0: Array, cores: Array, phis: Array, chunk: int) -> tuple[Array, Array]:
    """"chunked": scan over chunks of `chunk` sites; inside a chunk, a tree product.

    Sites that do not fill a whole chunk (the first S mod chunk) go through one extra tree
    product before the scan. Memory of the live site matrices is B·chunk·χ² instead of B·S·χ².
    """
    s = cores.shape[0]
    n_chunks, rem = divmod(s, chunk)
    v, log_norm = v0, jnp.zeros(v0.shape[:1], v0.dtype)
    if rem:
        v, log_norm = _segment_tree(v, cores[:rem], phis[:rem])
    if n_chunks:
        c = cores[rem:].reshape((n_chunks, chunk) + cores.shape[1:])
        p = phis[rem:].reshape((n_chunks, chunk) + phis.shape[1:])

        def body(v, xs):
            return _segment_tree(v, *xs)

        v, logs = jax.lax.scan(body, v, (c, p))
        log_norm = log_norm + jnp.sum(logs, axis=0)
    return v, log_norm


def _segment_scan(v0, cores, phis, arrangement, unroll):
    """"scan": one vector–matrix step per site (`_step`), renormalised every step."""
    v, logs = _sweep(v0, cores, phis, arrangement, unroll)
    return v, jnp.sum(logs, axis=0)


METHODS = ("scan", "tree", "chunked")
_PRIVATE_METHODS = ("scan_autodiff",)  # the previous scan (autodiff of lax.scan): test reference


def choose_method(n_sites: int, d: int, chi: int, batch: int, backend: str | None = None,
                  device_bytes: int | None = None) -> str:
    """The contraction method `contract(..., method=None)` uses for these sizes.

    CPU: "tree" for small batches, "scan" otherwise. The tree does χ³ work per site instead
    of d·χ², but in log₂ n dependent steps, so it wins while the batch is too small for the
    scan's n sequential steps to do much work each: at batch 1 (n 196, d 2, χ 20) it takes
    a fraction of the scan's per-step overhead. The crossover batch is `_tree_max_batch`.
    At training batches the fused scan is much faster; on two cores (jax 0.10.2,
    forward+backward+Adam, samples/s scan / chunked / tree, machine shared, load 6-9):
      n 784 d 3 χ 10 B 500: 8,989 / 606 / 536
      n 196 d 2 χ 32 B 256: 25,736 / 285 / 351
      n 784 d 2 χ 64 B 128: 1,596 / 6 / 2
    (the previous scan; see docs/bench for the fused one). Re-measure with
    `scripts/bench_contraction.py` and `scripts/bench_inference.py` on other hardware.

    GPU/TPU: "tree" while its extra B·n·χ³ work stays small next to the scan's n/k kernel
    launches — batch ≤ `_ACCEL_TREE_BATCH_CHI` / χ — and its site matrices fit in a quarter of
    the device's memory (`device_bytes`; None: asked of the first device, 4 GiB if it does not
    say), else "scan". "chunked" is never picked: it was never the fastest. Measured on one
    H200 (jax 0.11.2, `scripts/gpu_check.sh`, docs/bench/speed_ii.md), training step
    samples/s scan / tree, the crossover batch near 2,070 at χ 10, 700 at χ 20, 840 at χ 32
    and 250 at χ 64:
      n 196 d 2 χ 20 B 128: 84,927 / 155,473      B 1024: 580,853 / 506,317
      n 196 d 2 χ 20 B 4096: 1,804,600 / 659,887  n 784 d 3 χ 10 B 500: 55,516 / 167,686
      n 784 d 2 χ 64 B 128: 12,100 / 20,694       B 512: 41,470 / 23,026
    and at inference (n 196, d 2, χ 20, planned, ms per call scan / tree): batch 1
    0.91 / 0.14, 256 0.51 / 0.31, 512 0.54 / 0.48, 1024 0.68 / 0.83, 4096 0.70 / 2.44.
    """
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return "tree" if batch <= _tree_max_batch(n_sites, d, chi) else "scan"
    if batch * chi > _ACCEL_TREE_BATCH_CHI:
        return "scan"
    if device_bytes is None:
        device_bytes = _device_bytes()
    tree_bytes = 4 * batch * n_sites * chi * chi * 3  # site matrices + tree levels + gradients
    return "tree" if tree_bytes <= device_bytes // 4 else "scan"


# On accelerators the tree beats the scan up to batch ≈ this / χ (H200 crossovers: B·χ ≈ 21k at
# χ 10, 14k at χ 20, 27k at χ 32, 16k at χ 64; see choose_method).
_ACCEL_TREE_BATCH_CHI = 15_000


def _device_bytes() -> int:
    """Memory of the first device in bytes (its allocator's limit), 4 GiB if it does not say."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except (RuntimeError, NotImplementedError, AttributeError):  # a backend without memory statistics
        stats = {}
    return int(stats.get("bytes_limit", 4 << 30))


def _tree_max_batch(n_sites: int, d: int, chi: int) -> int:
    """Largest batch for which "tree" beats "scan" on CPU (measured, 2 cores, jax 0.10.2).

    Per call the scan costs about n/2 sequential steps of fixed overhead (two lanes) plus
    B·n·d·χ² MACs; the tree about 2·log₂ n steps plus B·n·χ³ MACs. At n 196, d 2, χ 20
    the two meet near B = 4; the crossover falls as χ grows (the tree's χ³).
    """
    return 4 if chi <= 32 else 1


def _auto_chunk(n_seg: int) -> int:
    """Chunk length for "chunked": about sqrt of the segment, at least 8, at most 64."""
    return int(min(64, max(8, round(n_seg**0.5))))


def _sites_per_step(d: int, chi: int, batch: int) -> int:
    """Sites merged into one step of the fused scan (`mps_sweep.merge_sites`).

    Merging k sites costs d^k / (k·d) times the arithmetic (free for d = 2, k = 2; 1.5× for
    d = 3) plus forming the merged cores, (n/k)·d^k·χ³ per call whatever the batch, for k
    times fewer sequential steps. Forward+backward, CPU time per call (2 cores, jax 0.10.2,
    load ~4.7, k = 1 / 2):
      n 196 d 2 χ 20 B 128:  5.5 / 4.7 ms      n 196 d 2 χ 32 B 256: 13.6 / 13.8 ms
      n 784 d 3 χ 10 B 500: 29.1 / 32.4 ms
    so two sites per step for d = 2, small χ and batches large enough to amortise the merge.
    """
    return 2 if d == 2 and chi <= 24 and batch >= 64 else 1


def _prenormalise(phi: Array) -> tuple[Array, Array]:
    """phi (B, n, d) → (φ / max_p |φ_p|, Σ_sites log max_p |φ_p|) per sample.

    Makes the contraction scale-free in the features: a site with φ = 1e-20·φ̂ would make
    |u|² underflow (flush to 0) in float32 and turn a non-zero sample into a zero one.
    A zero φ stays 0 (log-norm 0, gradient 0).
    """
    phi, logs = _scale_features(phi, -1)
    return phi, jnp.sum(logs, axis=-1)


def _scale_features(phi: Array, axis: int) -> tuple[Array, Array]:
    """φ / max_p |φ_p| over the physical `axis`, and log max_p |φ_p| (0 for a zero φ) per vector."""
    inv, logs = _component_scales([jnp.take(phi, p, axis=axis) for p in range(phi.shape[axis])])
    return phi * jnp.expand_dims(inv, axis), logs


def _component_scales(parts: list) -> tuple[Array, Array]:
    """The components φ_p of feature vectors, as separate arrays of one shape → (1 / max_p |φ_p|,
    log max_p |φ_p|), both 0 where φ = 0. Elementwise, not a reduce: fuses with its consumers."""
    top = functools.reduce(jnp.maximum, [jnp.abs(part) for part in parts])
    ok = top > 0
    safe = jnp.where(ok, top, 1.0)
    return jnp.where(ok, 1.0 / safe, 0.0), jnp.where(ok, jnp.log(safe), 0.0)


def _pad_cores(cores: Array, length: int) -> Array:
    """Append identity sites (A[0] = I, A[p>0] = 0) up to `length`: (S, d, χ, χ) → (length, …)."""
    extra = length - cores.shape[0]
    if extra == 0:
        return cores
    _, d, ci, co = cores.shape
    eye = jnp.zeros((extra, d, ci, co), cores.dtype).at[:, 0].set(jnp.eye(ci, co, dtype=cores.dtype))
    return jnp.concatenate([cores, eye])


def _pad_features(phi: Array, length: int) -> Array:
    """Append e_0 feature vectors (the partners of `_pad_cores`' identity sites) up to
    `length`: (B, S, d) → (B, length, d). An identity site leaves the vector and its norm
    unchanged."""
    extra = length - phi.shape[1]
    if extra == 0:
        return phi
    e0 = jnp.zeros((phi.shape[0], extra, phi.shape[2]), phi.dtype).at[:, :, 0].set(1.0)
    return jnp.concatenate([phi, e0], axis=1)


def _scan_segments(s_l: int, s_r: int, k: int):
    """Static plan of the fused scan over half-chains of s_l and s_r sites (sweep order).

    Returns (common, lanes_len, excess_half, excess_len): both halves' first `common` sites
    are swept together as two lanes, padded with identity sites to `lanes_len` (a multiple
    of k); if one half is much longer (an output core far from the middle), its remaining
    sites are swept alone afterwards, padded to `excess_len`. Small differences are padded
    instead, so one sweep covers everything.
    """
    common, longest = min(s_l, s_r), max(s_l, s_r)
    up = lambda s: -(-s // k) * k  # noqa: E731
    if longest - common <= max(k, common // 8):
        common = longest
    excess_half = 0 if s_l > s_r else 1
    return common, up(common), excess_half, up(longest - common)


def _scan_matrices(cores: Array, k: int) -> Array:
    """Sweep-order cores (S, d, χi, χo), S divisible by k → step matrices (S/k, χo, d^k·χi)."""
    merged = mps_sweep.merge_sites(cores, k) if k > 1 else cores  # (S', D, i, o)
    s_, dd, ci, co = merged.shape
    return jnp.reshape(jnp.einsum("spio->sopi", merged), (s_, co, dd * ci))


def _scan_features(phi: Array, k: int) -> Array:
    """Sweep-order features (B, S, d), S divisible by k → (S/k, d^k, B)."""
    pm = mps_sweep.merge_features(phi, k) if k > 1 else phi
    return jnp.einsum("bsp->spb", pm)


def _halves_in_sweep_order(params: MPSParams):
    """(left cores (k-1, d, l, r), right cores reversed (n-k-1, d, r, l)): the vector enters
    on the first bond index and leaves on the second."""
    return params.left, jnp.einsum("splr->sprl", params.right)[::-1]


def _scan_weights(params: MPSParams, k: int) -> tuple:
    """The step matrices of the fused scan (depend on the parameters only): (W lanes
    (S', 2, χ, D·χ), W of the excess (S'', 1, χ, D·χ) or None)."""
    return _lane_weights(_halves_in_sweep_order(params), k)


def _lane_weights(halves: tuple, k: int) -> tuple:
    """Two half-chains in sweep order → their step matrices in `_scan_segments`' layout."""
    common, lanes_len, half, excess_len = _scan_segments(halves[0].shape[0], halves[1].shape[0], k)
    w_lanes = None
    if lanes_len:
        w_lanes = jnp.stack([_scan_matrices(_pad_cores(c[:common], lanes_len), k) for c in halves], 1)
    w_excess = None
    if excess_len:
        w_excess = _scan_matrices(_pad_cores(halves[half][common:], excess_len), k)[:, None]
    return w_lanes, w_excess


def _boundary_as_core(vec: Array) -> Array:
    """A boundary vector (d, χ) as a sweep-order core (1, d, χ, χ) that reads only bond channel
    0: A[p, 0, :] = vec[p], other rows 0. Swept from the unit start vector e₀ it gives
    Σ_p φ_p vec[p], the boundary's own contraction, as one more step of the sweep."""
    d, chi = vec.shape
    return jnp.zeros((1, d, chi, chi), vec.dtype).at[0, :, 0, :].set(vec)


def _folded_halves(params: MPSParams):
    """Both half-chains in sweep order with their boundary site first, as `_halves_in_sweep_order`:
    (sites 0..k-1 (k, d, χ, χ), sites n-1..k (n-k, d, χ, χ)); a sweep of them starts from e₀."""
    left, right = _halves_in_sweep_order(params)
    return (jnp.concatenate([_boundary_as_core(params.first), left]),
            jnp.concatenate([_boundary_as_core(params.last), right]))


def _planned_scan_weights(params: MPSParams, k: int) -> tuple:
    """`_scan_weights` of the half-chains with their boundary sites folded in (`_folded_halves`):
    the layout a scan `ContractionPlan` keeps. With the weights fixed, each boundary costs one
    (merged) step of the sweep instead of its own contraction and normalisation outside the
    loop: at batch 1 the time goes to XLA operations, not to their arithmetic."""
    return _lane_weights(_folded_halves(params), k)


_MATVEC_MAX_BATCH = 5
_MATVEC_MAX_ELEMENTS = 4096  # 2·χ²·batch site-matrix elements a step's fusion forms


def _matvec_steps(batch: int, chi: int, backend: str | None = None) -> bool:
    """Whether a planned scan (fixed cores, inference) steps by site matrix times vector
    (`mps_sweep._step_matvec`) rather than by a GEMM: on CPU, for at most 5 samples and while a
    step's site matrices for both lanes (2·χ²·batch elements) stay under 4096.

    Why the element bound: below it XLA:CPU (jax 0.10) keeps the step one fusion (6 operations a
    loop body); from it on XLA hands the multiply-and-sum to YNNPACK as 10-16 operations, and a
    body of more than 8 runs through the slower dataflow executor (χ 20, batch 6: 1371 µs against
    the GEMM steps' 204). Checked for χ 8-64, batches 1-32 (`scripts/sweep_anatomy.py` counts a
    body's operations). Sweep alone, `python scripts/sweep_anatomy.py --batch B --functions
    sweep_matvec,sweep_gemm`, median µs, quiet machine, against the GEMM steps:
      χ 20 (the fashion_mps student; docs/bench/sweep_anatomy_steps_b*.json): batch 1: 59–67 vs
        60–76 (p10 44–46 vs 51–56); 2: 86 vs 135–139; 4: 118–147 vs 142–167; 5: 135 vs 181;
      χ 10: batch 1 / 2 / 4: 91 / 70 / 86 vs 93 / 104 / 107; batch 8: 120 vs 113 (not taken);
      χ 16: batch 1 / 2 / 4: 73 / 94 / 162 vs 82 / 130 / 164;
      χ 24: batch 1: 98 vs 115; batch 2: 183 vs 163 (taken: 12 % slower there).
    Not measured on accelerators, where the plan takes the tree at small batches anyway."""
    return ((backend or jax.default_backend()) == "cpu" and batch <= _MATVEC_MAX_BATCH
            and 2 * chi * chi * batch < _MATVEC_MAX_ELEMENTS)


def _unit_starts(chi: int, like: Array) -> Array:
    """The start vector e₀ of a folded sweep for every sample: (χ, B), B and dtype of like (B,)."""
    return jnp.broadcast_to(jnp.zeros((chi, 1), like.dtype).at[0].set(1.0), (chi, like.shape[0]))


def _scan_run(weights: tuple, L, R, phi_left, phi_right, k: int, unroll: int, matvec: bool = False):
    """Sweep both half-chains with `mps_sweep.sweep` (matvec: `mps_sweep.sweep_forward`'s
    site-matrix steps), as two lanes of one sweep.

    weights from `_scan_weights` (or a plan's `_planned_scan_weights`, from L = R = e₀ and φ
    with the boundary sites); L, R (χ, B) unit start vectors; phi_* (B, S_*, d) in sweep
    order (the right half reversed). Returns (L, R, log_l, log_r), L and R (χ, B).
    """
    common, lanes_len, half, excess_len = _scan_segments(phi_left.shape[1], phi_right.shape[1], k)
    p_lanes = p_excess = None
    if lanes_len:
        p_lanes = jnp.stack([_scan_features(_pad_features(ph[:, :common], lanes_len), k)
                             for ph in (phi_left, phi_right)], axis=1)
    if excess_len:  # the longer half's remaining sites, one lane
        ph = (phi_left, phi_right)[half]
        p_excess = _scan_features(_pad_features(ph[:, common:], excess_len), k)
    return _sweep_lanes(weights, L, R, p_lanes, p_excess, half, unroll, matvec)


def _sweep_lanes(weights: tuple, L, R, p_lanes, p_excess, half: int, unroll: int, matvec: bool = False):
    """The fused sweep of both halves given their step features: p_lanes (S', 2, D, B) or None,
    p_excess (S'', D, B) of half `half` or None (layouts of `_scan_segments`); L, R (χ, B).
    matvec: the forward-only sweep with site-matrix steps (`mps_sweep.sweep_forward`; inference
    at a few samples, `_matvec_steps`), else `mps_sweep.sweep` (GEMM steps, hand-written gradient).
    Returns (L, R, log_l, log_r), L and R (χ, B)."""
    w_lanes, w_excess = weights
    if matvec:
        sweep = lambda v, w, p, u: mps_sweep.sweep_forward(v, w, p, u, matvec=True)  # noqa: E731
    else:
        sweep = mps_sweep.sweep
    v = jnp.stack([L, R])
    logs = jnp.zeros((2,) + L.shape[1:], L.dtype)
    if p_lanes is not None:
        v, logs = sweep(v, w_lanes, p_lanes, unroll)
    vs, lg = [v[0], v[1]], [logs[0], logs[1]]
    if p_excess is not None:
        v1, l1 = sweep(vs[half][None], w_excess, p_excess[:, None], unroll)
        vs[half], lg[half] = v1[0], lg[half] + l1[0]
    return vs[0], vs[1], lg[0], lg[1]


@functools.partial(jax.jit, static_argnames=("arrangement", "unroll", "method", "chunk", "sites_per_step"))
def _contract_impl(
    params: MPSParams,
    phi: Array,
    arrangement: str | None = None,
    unroll: int = 1,
    method: str | None = None,
    chunk: int | None = None,
    sites_per_step: int | None = None,
):
    return _contract_core(params, phi, arrangement, unroll, method, chunk, sites_per_step, None)


def _contract_core(params, phi, arrangement, unroll, method, chunk, sites_per_step, prepared):
    """`contract`'s body; `prepared` is the method's parameter layout from a
    `ContractionPlan` (None: formed here, inside the differentiated function)."""
    n, d, chi, m, k = mps_dims(params)
    if phi.ndim != 3 or phi.shape[1] != n or phi.shape[2] != d:
        raise DistillError(
            f"MPS contract: phi must have shape (batch, {n}, {d}), got {tuple(phi.shape)}"
        )
    batch = _static_batch(phi.shape[0])
    if method is None:
        method = choose_method(n, d, chi, batch)
    if method not in METHODS + _PRIVATE_METHODS:
        raise DistillError(f"MPS contract: method must be one of {METHODS} or None, got {method!r}")

    phi, log_phi = _prenormalise(phi.astype(params.out.dtype))
    if method == "scan" and prepared is not None:  # a plan's layout: boundaries folded in
        e0 = _unit_starts(chi, phi[:, 0, 0])
        Lt, Rt, log_l, log_r = _scan_run(prepared, e0, e0, phi[:, :k], phi[:, k:][:, ::-1],
                                         sites_per_step, unroll, _matvec_steps(batch, chi))
        return _close(params, Lt.T, Rt.T, log_phi, log_l, log_r)
    L, log_l = _normalise(jnp.einsum("bp,pr->br", phi[:, 0], params.first))
    R, log_r = _normalise(jnp.einsum("bp,pl->bl", phi[:, n - 1], params.last))
    phi_left = phi[:, 1:k]  # (B, k-1, d), sites 1..k-1 left to right
    phi_right = phi[:, k : n - 1][:, ::-1]  # sites n-2..k, right to left
    c_left, c_right = _halves_in_sweep_order(params)

    if method == "tree":
        leaf = sites_per_step or _tree_leaf_sites(d, chi, batch)
        cores = _tree_cores(params, leaf) if prepared is None else prepared
        L, R, ls, rs = _tree_run(cores, L, R, phi, k, leaf)
        log_l, log_r = log_l + ls, log_r + rs
    elif method == "scan":
        kk = sites_per_step or _sites_per_step(d, chi, batch)
        weights = _scan_weights(params, kk)
        Lt, Rt, ls, rs = _scan_run(weights, L.T, R.T, phi_left, phi_right, kk, unroll)
        L, R = Lt.T, Rt.T
        log_l, log_r = log_l + ls, log_r + rs
    else:
        if method == "scan_autodiff":
            arrangement = arrangement or _choose_arrangement(d, chi)
        else:
            arrangement = "outer_core"  # (p, i, j) layout: site matrices are one einsum away

        def segment(v0, cores, phis):  # cores (S, p, i, j) sweep order, phis (B, S, p)
            cores = _arrange_sweep(cores, arrangement)
            phis = jnp.einsum("bnp->nbp", phis)
            if method == "scan_autodiff":
                return _segment_scan(v0, cores, phis, arrangement, unroll)
            c = chunk or _auto_chunk(cores.shape[0])
            return _segment_chunked(v0, cores, phis, min(c, cores.shape[0]))

        if k > 1:
            L, log_s = segment(L, c_left, phi_left)
            log_l = log_l + log_s
        if n - k - 1 > 0:
            R, log_s = segment(R, c_right, phi_right)
            log_r = log_r + log_s
    return _close(params, L, R, log_phi, log_l, log_r)


def _close(params, L, R, log_phi, log_l, log_r):
    """(z, log_norm) from the final environments L, R (B, χ) and the log-norms (B,)."""
    # A half whose environment vector is exactly 0 (a zero feature vector in it) contributes
    # log-norm 0 whatever happened before the zero: the same for every method.
    log_l = jnp.where(jnp.any(L != 0, axis=-1), log_l, 0.0)
    log_r = jnp.where(jnp.any(R != 0, axis=-1), log_r, 0.0)
    # z[b, o] = Σ L[b, l] out[l, o, r] R[b, r], the output core read as the (χ·m, χ) matrix it is in
    # memory (an einsum copied it into another layout on every call: one op more at batch 1)
    chi, m = params.out.shape[:2]
    t = jnp.reshape(jnp.reshape(params.out, (chi * m, chi)) @ R.T, (chi, m, -1))
    z = jnp.transpose(jnp.sum(L.T[:, None, :] * t, axis=0))
    return z, log_phi + log_l + log_r


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=("params", "prepared"), meta_fields=("method", "sites_per_step"),
)
@dataclasses.dataclass(frozen=True)
class ContractionPlan:
    """An MPS with its cores already laid out for one contraction method (inference).

    `contract` forms these layouts (reversed halves, identity padding, merged sites, the
    bit-reversed stack of the tree) from the parameters on every call, inside the function
    it differentiates. With fixed parameters they can be formed once: `plan_contraction`
    does that, `contract_planned` uses them. A pytree (method and sites per step static).
    """

    params: MPSParams
    prepared: object  # scan: `_planned_scan_weights`; tree: (size, 2, d, χ, χ); else None
    method: str
    sites_per_step: int


def choose_planned(n_sites: int, d: int, chi: int, batch: int, backend: str | None = None) -> tuple[str, int]:
    """(method, sites per step) `plan_contraction` uses for fixed cores at this batch.

    CPU: the scan at every batch; GPU / TPU: `choose_method` (measured on an H200, see there). Sites per step:
    `_planned_sites`. Measured (n 196, d 2, χ 20, jitted, interleaved, load ~5, median / p10 ms at
    batch 1): tree 2 sites 0.221 / 0.150, scan 1 site 0.151 / 0.103, scan 2 sites 0.137 / 0.086,
    scan 4 sites 0.167 / 0.111, tree 4 sites 0.194 / 0.130 (the MLP teacher 784-512-512-10:
    0.156 / 0.095); at batch 256 the 2-site scan was already the choice.
    """
    backend = backend or jax.default_backend()
    method = "scan" if backend == "cpu" else choose_method(n_sites, d, chi, batch, backend)
    return method, _planned_sites(method, d, chi, batch)


def _planned_sites(method: str, d: int, chi: int, batch: int) -> int:
    """Sites per step (scan) or per leaf (tree) of a plan. With the cores fixed the merged cores
    are formed once in the plan, not on every call, so the trade-off of `_sites_per_step` (the
    merge's cost against k times fewer sequential steps) no longer depends on the batch: the
    scan merges two sites for d = 2 and χ ≤ 24 at every batch."""
    if method == "tree":
        return _tree_leaf_sites(d, chi, batch)
    return 2 if d == 2 and chi <= 24 else 1


def plan_contraction(params: MPSParams, batch: int, *, method: str | None = None) -> ContractionPlan:
    """Choose the method for `batch` (None: `choose_planned`) and precompute its core layout.

    Raises:
      DistillError: an unknown method.
    """
    n, d, chi, m, k = mps_dims(params)
    if method is None:
        method = choose_planned(n, d, chi, int(batch))[0]
    elif method not in METHODS:
        raise DistillError(f"MPS plan_contraction: method must be one of {METHODS} or None, got {method!r}")
    kk = _planned_sites(method, d, chi, int(batch))
    prepared = _prepare(params, method, kk)
    return ContractionPlan(params, prepared, method, kk)


@functools.partial(jax.jit, static_argnames=("method", "k"))
def _prepare(params, method, k):
    if method == "tree":
        return _tree_cores(params, k)
    if method == "scan":
        return _planned_scan_weights(params, k)
    return None


@jax.jit
def contract_planned(plan: ContractionPlan, phi: Array) -> tuple[Array, Array]:
    """`contract(plan.params, phi, method=plan.method)` with the precomputed core layout:
    the same (z (B, m), log_norm (B,)) for phi (B, n, d), less per-call work (what a
    batch-1 prediction needs; for the scan, the boundaries folded into the sweep and, on CPU up
    to 5 samples, site-matrix steps: `_matvec_steps`). Differentiable in phi; gradients do not reach the plan's
    prepared layouts' source parameters (it is for inference).

    Raises:
      DistillError: phi not (batch, n, d).
    """
    return _contract_core(plan.params, phi, None, 1, plan.method, None, plan.sites_per_step,
                          plan.prepared)


@functools.partial(jax.jit, static_argnames=("feature_map",))
def contract_planned_inputs(plan: ContractionPlan, feature_map, x: Array, site_inputs: Array) -> tuple[Array, Array]:
    """`contract_planned(plan, φ)` for the features of a local map read straight off the inputs:
    φ[b, s] = feature_map(x[b, site_inputs[s]]). The same (z (B, m), log_norm (B,)).

    x (B, n_in) the inputs; site_inputs (n,) int, the input read at each site (a site order);
    feature_map an elementwise map x (...,) → (..., d) (a registered local map's function;
    hashable: it is a static argument). For the scan, the inputs are first gathered into the
    sweep's step layout, batch minor, and the map is applied there: forming φ (B, n, d) and
    moving it into that layout (transposes with d = 2 minor) took about a third of a batch-256
    prediction (`docs/bench/speed_ii.md`). The boundary sites are steps of the sweep (the plan's
    folded layout), and on CPU for a few samples each step is a site matrix times a vector
    (`_matvec_steps`). Other methods form φ and call `contract_planned`.
    For inference: not meant to be differentiated.

    Raises:
      DistillError: x not (batch, n_in), site_inputs not (n,), or φ not of dimension d.
    """
    n, d, chi, m, k = mps_dims(plan.params)
    if x.ndim != 2 or site_inputs.shape != (n,):
        raise DistillError(
            f"MPS contract_planned_inputs: x must be (batch, n_in) and site_inputs ({n},), got "
            f"{tuple(x.shape)} and {tuple(site_inputs.shape)}"
        )
    if plan.method != "scan":
        return contract_planned(plan, feature_map(jnp.take(x, site_inputs, axis=1)))
    params = plan.params
    dtype = params.out.dtype
    xt = jnp.transpose(x.astype(dtype))  # (n_in, B): the batch minor from here on

    def features(slots: np.ndarray) -> tuple[Array, Array]:
        """Sites `slots` (..., K) (-1: an identity site) → the K-fold products of their scaled
        features (..., d^K, B) and the scales' log-sum over the slots (B,)."""
        # not vmapped over the batch: the map sees the whole array (`feature_maps.cos_sin` branches
        # once). Each component is kept as its own (..., K, B) array and the products are formed
        # elementwise, batch minor: moving d next to the batch took two layout copies more.
        raw = feature_map(xt[site_inputs[np.maximum(slots, 0)]])  # (..., K, B, d)
        if raw.shape[-1] != d:
            raise DistillError(f"MPS contract_planned_inputs: the feature map gives d = {raw.shape[-1]}, "
                               f"the cores d = {d}")
        comps = [raw[..., p] for p in range(d)]
        if np.any(slots < 0):  # identity sites read e_0 (`_pad_cores`)
            pad = jnp.asarray(slots < 0)[..., None]
            comps = [jnp.where(pad, 1.0 if p == 0 else 0.0, c) for p, c in enumerate(comps)]
        inv, logs = _component_scales(comps)  # (..., K, B), as `_scale_features`
        comps = [c * inv for c in comps]
        rows = []
        for idx in np.ndindex(*(d,) * slots.shape[-1]):  # φ_{s1} ⊗ … ⊗ φ_{sK}, s1 slowest (`merge_features`)
            term = comps[idx[0]][..., 0, :]
            for j in range(1, len(idx)):
                term = term * comps[idx[j]][..., j, :]
            rows.append(term)
        merged = jnp.stack(rows, axis=-2)
        return merged, jnp.sum(jnp.reshape(logs, (-1, logs.shape[-1])), axis=0)

    # the boundaries are steps of the sweep (the plan's folded layout), from e₀; for a few samples
    # the steps are site matrix times vector (`_matvec_steps`, docs/bench/speed_ii.md)
    lanes, excess, half = _step_sites(n, k, plan.sites_per_step)
    log_phi = p_lanes = p_excess = None
    if lanes is not None:
        p_lanes, log_phi = features(lanes)
    if excess is not None:
        p_excess, logs = features(excess)
        log_phi = logs if log_phi is None else log_phi + logs
    e0 = _unit_starts(chi, xt[0])
    Lt, Rt, ls, rs = _sweep_lanes(plan.prepared, e0, e0, p_lanes, p_excess, half, 1,
                                  _matvec_steps(_static_batch(x.shape[0]), chi))
    return _close(params, Lt.T, Rt.T, log_phi, ls, rs)


def _step_sites(n: int, k: int, kk: int) -> tuple:
    """The sites each step of a planned scan reads (`_scan_run`'s layout of `_folded_halves`,
    static): (lanes (S', 2, kk) or None, excess (S'', kk) or None, the excess's half); -1 marks
    identity sites."""
    left, right = np.arange(0, k), np.arange(k, n)[::-1]  # sweep order, boundaries first
    common, lanes_len, half, excess_len = _scan_segments(len(left), len(right), kk)

    def table(sites, length):
        t = np.full(length, -1)
        t[: len(sites)] = sites
        return t.reshape(length // kk, kk)

    lanes = np.stack([table(h[:common], lanes_len) for h in (left, right)], 1) if lanes_len else None
    excess = table((left, right)[half][common:], excess_len) if excess_len else None
    return lanes, excess, half


def _arrange_sweep(cores: Array, arrangement: str) -> Array:
    """Sweep-order cores (S, p, i, j) → the per-step layout of `_step` ((S, i, p, j) for
    "vec_core", unchanged for "outer_core")."""
    if arrangement == "vec_core":
        return jnp.einsum("spij->sipj", cores)
    return cores


def contract(
    params: MPSParams, phi: Array, *, method: str | None = None, chunk: int | None = None
) -> tuple[Array, Array]:
    """Stable contraction of the MPS with local feature vectors.

    params: MPSParams; phi (B, n, d) → (z (B, m), log_norm (B,)) with
    T·Φ(x_b) = z[b] · exp(log_norm[b]). z is L̂ · out · R̂ for the unit-normalised left and
    right environment vectors, so |z| ≤ ‖out‖ whatever the chain length.

    method: how each half-chain (sites left / right of the output core) is contracted —
      "scan"    sequential renormalised vector–matrix steps, cost n·d·χ² per sample: both
                halves swept together, two sites merged per step where that is cheap, one
                GEMM per step with a hand-written backward pass (`tn.mps_sweep`);
      "tree"    build all site matrices (B, n, χ, χ), multiply pairwise, cost n·χ³, depth log₂ n;
      "chunked" scan over chunks of `chunk` sites (default ≈ √n, 8..64), tree inside a chunk;
      None      `choose_method(n, d, χ, B)` (CPU: "tree" for tiny batches, else "scan";
                GPU/TPU: "tree" up to B ≈ 15,000 / χ, else "scan").
    All renormalise every product and accumulate the log-norm, so all are stable in float32,
    and all give the same values, log-norms and gradients. The feature vectors are first
    scaled to max-abs 1 per site (the scales go into log_norm), so tiny features do not
    underflow. A sample with an exactly zero feature vector has z = 0, zero gradients, and
    log_norm without the contribution of the half-chain that vanished.

    Raises:
      DistillError: phi not (batch, n, d), or an unknown method.
    """
    return _contract_impl(params, phi, method=method, chunk=chunk)


# ---------------------------------------------------------------------------------------
# Dense references (small n only; used by tests)
# ---------------------------------------------------------------------------------------

_LETTERS = "acefghijkmqtuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"  # free site letters for to_dense


def to_dense(params: MPSParams) -> Array:
    """The full tensor T with shape (d,)*n + (m,). Memory d^n·m: only for small n."""
    n, d, chi, m, k = mps_dims(params)
    if n > 16:
        raise DistillError(f"to_dense: n_sites = {n} is too large for a dense tensor (max 16)")
    # left block (d^k, χ): sites 0..k-1
    tl = params.first  # (p, r)
    for s in range(k - 1):
        tl = jnp.einsum("al,plr->apr", tl, params.left[s]).reshape(-1, chi)
    # right block (χ, d^(n-k)): sites k..n-1
    tr = params.last  # (p, l) -> (l, c)
    tr = jnp.einsum("pl->lp", tr)
    for s in reversed(range(n - k - 1)):
        tr = jnp.einsum("plr,rc->lpc", params.right[s], tr).reshape(chi, -1)
    full = jnp.einsum("al,lor,rc->aco", tl, params.out, tr)
    return full.reshape((d,) * n + (m,))


def contract_dense(params: MPSParams, phi: Array) -> Array:
    """Reference T·Φ(x): dense tensor contracted with each φ_s in turn. phi (B, n, d) → (B, m).

    Returns the full value a = z · exp(log_norm); only for n ≤ 10 (use float64).
    """
    n, d, chi, m, k = mps_dims(params)
    if n > 10:
        raise DistillError(f"contract_dense: n_sites = {n} is too large (max 10)")
    t = to_dense(params)
    acc = jnp.einsum("bp,p...->b...", phi[:, 0], t)
    for s in range(1, n):
        acc = jnp.einsum("bp,bp...->b...", phi[:, s], acc)
    return acc
