"""The fused MPS sweep behind `tn.mps.contract(method="scan")`: pure functions on arrays.

One sweep carries G independent running vectors ("lanes": the left and the right half-chain
of an MPS, swept together so that each step does both halves' work in one GEMM) through S
steps. Each step applies one site matrix per lane and sample, M(φ) = Σ_D φ_D A_D, and
renormalises the vector to unit norm:

    u = W · (φ ⊗ v)          W (χ_out, D·χ_in), φ ⊗ v (D·χ_in, B): one GEMM per lane
    v' = u / |u|,            log-norm += log |u|

A "site" here may be K physical sites merged (`merge_sites`): D = d^K components and the
product of K cores, so one step covers K sites (fewer sequential steps for d^K/(K·d) times
the arithmetic: free for d = 2, K = 2).

Layout: the vectors are carried as (G, χ, B) — batch in the minor dimension — so that the
elementwise work (the outer product φ ⊗ v, the norms over χ, the rescaling) vectorises over
the batch, and W·(φ ⊗ v) is one (χ, D·χ) × (D·χ, B) GEMM into which XLA:CPU fuses the outer
product.

Gradients (`jax.custom_vjp`): the forward pass keeps only the step inputs v_s (S, G, χ, B)
and the inverse norms (S, G, B); the backward pass is one reverse sweep that carries the
cotangent g of the running vector and, per step,

    ū = (g − v'·(v'·g − ℓ̄)) / |u|        through the normalisation (ℓ̄: cotangent of Σ log |u|)
    g ← Wᵀ · (φ ⊗ ū)                      (χ_in, D·χ_out) × (D·χ_out, B), one GEMM
    ∂W = ū · (φ ⊗ v)ᵀ                     (χ_out, B) × (B, D·χ_in), one GEMM (φ ⊗ v formed
                                          batch-major, so both operands are in GEMM order)

and the gradient of φ (only when φ is differentiated, e.g. a learned feature map) once after
the sweep. A step whose |u| is exactly 0 (a zero feature vector) has 1/|u| := 0: the vector
stays 0 and every gradient of that sample is 0, never NaN.

Devices: under a device mesh (`jax.set_mesh`, as distill's training loop sets it) the sweep
splits the batch over the mesh (`jax.shard_map`): every device sweeps its own samples forward
and back and ∂W is summed over devices once, after the reverse sweep.

Einsum letters: s step · g lane · b batch · o / i bond out / in of a step · p / D physical
(merged) · k the flattened (D, χ_in) GEMM dimension.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array

__all__ = ["sweep", "sweep_forward", "merge_sites", "merge_features", "inv_norm"]


def inv_norm(u: Array, axis: int) -> Array:
    """1 / |u| along `axis`, and exactly 0 (with a zero gradient) where |u|² ≤ tiny."""
    n2 = jnp.sum(u * u, axis=axis)
    ok = n2 > jnp.finfo(u.dtype).tiny
    return jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, n2, 1.0)), 0.0)


def log_from_inv(inv: Array) -> Array:
    """log |u| from 1/|u|; 0 where the vector was zero (inv = 0)."""
    ok = inv > 0
    return jnp.where(ok, -jnp.log(jnp.where(ok, inv, 1.0)), 0.0)


def _outer(phi: Array, v: Array) -> Array:
    """phi (G, D, B), v (G, χ, B) → φ ⊗ v (G, D·χ, B), row index (D, χ) with D slowest."""
    g, d, b = phi.shape
    return jnp.reshape(phi[:, :, None, :] * v[:, None, :, :], (g, d * v.shape[1], b))


def _outer_batch_major(phi: Array, v: Array) -> Array:
    """phi (G, D, B), v (G, χ, B) → φ ⊗ v laid out (G, B, D·χ), column index (D, χ) with D slowest."""
    g, d, b = phi.shape
    return jnp.reshape(jnp.einsum("gpb,gib->gbpi", phi, v), (g, b, d * v.shape[1]))


def _step(v: Array, w: Array, phi: Array) -> tuple[Array, Array]:
    """v (G, χi, B), w (G, χo, D·χi), phi (G, D, B) → (unit v' (G, χo, B), 1/|u| (G, B))."""
    u = jnp.einsum("gok,gkb->gob", w, _outer(phi, v))
    inv = inv_norm(u, axis=1)
    return u * inv[:, None, :], inv


def _step_matvec(v: Array, w: Array, phi: Array) -> tuple[Array, Array]:
    """`_step` for a few samples: the site matrix M = Σ_D φ_D A_D (G, χo, χi, B) is formed and
    applied to v by multiplies and one sum, with no GEMM. Same arguments and results.

    Why: at batch 1 on XLA:CPU a step costs its operations' fixed overhead, not its arithmetic.
    `_step` is a slice copy of the step's (χ, D·χ) matrices, the outer product φ ⊗ v and a batched
    dot; here the slice, the weighting by φ and the product with v are one fusion, which reads the
    matrices in place (docs/bench/speed_ii.md, "Inference at batch 1"). Its work grows as B·D·χ²
    in code slower than a GEMM, so only for batches of a few samples (`tn.mps._matvec_steps`).
    """
    g, co, k = w.shape
    dd = phi.shape[1]
    w4 = jnp.reshape(w, (g, co, dd, k // dd))  # [g, o, D, i]: D slowest in the (D, χi) columns
    m = phi[:, 0, None, None, :] * w4[:, :, 0, :, None]  # (G, o, i, B)
    for p in range(1, dd):  # a sum of D terms, not a reduce: fuses with the slice and the product
        m = m + phi[:, p, None, None, :] * w4[:, :, p, :, None]
    u = jnp.sum(m * v[:, None, :, :], axis=2)
    inv = inv_norm(u, axis=1)
    return u * inv[:, None, :], inv


def sweep_forward(v0: Array, w: Array, phi: Array, unroll: int = 1, matvec: bool = False) -> tuple[Array, Array]:
    """Forward-only sweep (no residuals): see `sweep`. Returns (v (G, χ, B), logs (G, B)).
    matvec: each step as `_step_matvec` (for batches of a few samples), else `_step` (a GEMM)."""
    step = _step_matvec if matvec else _step

    def body(carry, xs):
        v, log_acc = carry
        v, inv = step(v, *xs)
        return (v, log_acc + log_from_inv(inv)), None

    init = (v0, jnp.zeros((v0.shape[0], v0.shape[2]), v0.dtype))
    (v, logs), _ = jax.lax.scan(body, init, (w, phi), unroll=unroll)
    return v, logs


def _forward_with_residuals(v0, w, phi, unroll):
    def body(v, xs):
        v_next, inv = _step(v, *xs)
        return v_next, (v, inv)  # keep the step's input vector and 1/|u|

    v, (v_in, inv) = jax.lax.scan(body, v0, (w, phi), unroll=unroll)
    return v, v_in, inv


def _batch_axes(batch: int) -> tuple[str, ...] | None:
    """The axes of the mesh in context (`jax.set_mesh`) to split the batch over, or None.

    A sweep is independent per sample except for ∂W (a sum over the batch): under a device
    mesh each device sweeps its own slice of the batch and ∂W is summed once after the reverse
    sweep. Left to XLA's automatic partitioning, the per-step ∂W contraction over the sharded
    batch becomes one all-reduce per step (1.6× slower on two CPU devices than one device).
    None without a mesh, on a single device, or when the batch does not split evenly.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or batch % mesh.size:
        return None
    return tuple(mesh.axis_names)


def _sharded(fn, axes, in_kinds, out_kinds):
    """`fn` on each device's block of the batch (the mesh in context). Each argument and result
    is named by its layout: "whole" (replicated: W, ∂W), "vec" (G, χ, B) / "lane" (G, B) /
    "steps" (S, G, ·, B), the last split over `axes`. check_vma off: the scans' carries start
    replicated and become per-device."""
    P = jax.sharding.PartitionSpec
    spec = {"whole": P(), "lane": P(None, axes), "vec": P(None, None, axes), "steps": P(None, None, None, axes)}
    return jax.shard_map(fn, in_specs=tuple(spec[k] for k in in_kinds),
                         out_specs=tuple(spec[k] for k in out_kinds), check_vma=False)


def _fwd_local(v0, w, phi, unroll):
    v, v_in, inv = _forward_with_residuals(v0, w, phi, unroll)
    return v, jnp.sum(log_from_inv(inv), axis=0), v_in, inv


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def sweep(v0: Array, w: Array, phi: Array, unroll: int = 1) -> tuple[Array, Array]:
    """Renormalised sweep of G lanes through S steps, with a hand-written backward pass.

    v0 (G, χ, B) start vectors (unit norm or 0); w (S, G, χ, D·χ) the steps' matrices,
    w[s, g, o, (D, i)] = A[D, i, o]; phi (S, G, D, B) the steps' (merged) feature vectors →
    (v (G, χ, B) the final unit vectors, logs (G, B) = Σ_s log |u_s|, 0 for zero steps).
    Under a device mesh (`jax.set_mesh`) the batch is split over its devices (`_batch_axes`).
    """
    axes = _batch_axes(v0.shape[-1])
    if axes is None:
        return sweep_forward(v0, w, phi, unroll)
    return _sharded(lambda a, b, c: sweep_forward(a, b, c, unroll), axes,
                    ("vec", "whole", "steps"), ("vec", "lane"))(v0, w, phi)


def _sweep_fwd(v0, w, phi, unroll):
    need_phi = phi.perturbed
    v0, w, phi = v0.value, w.value, phi.value
    axes = _batch_axes(v0.shape[-1])
    if axes is None:
        v, logs, v_in, inv = _fwd_local(v0, w, phi, unroll)
    else:
        v, logs, v_in, inv = _sharded(lambda a, b, c: _fwd_local(a, b, c, unroll), axes,
                                      ("vec", "whole", "steps"), ("vec", "lane", "steps", "vec"))(v0, w, phi)
    # the last field is a static marker (None = φ not differentiated: skip its gradient)
    return (v, logs), (w, phi, v_in, inv, v, () if need_phi else None)


def _sweep_bwd(unroll, res, cts):
    w, phi, v_in, inv, v_last, need_phi = res
    g_v, g_log = cts
    if isinstance(g_v, jax.custom_derivatives.SymbolicZero):
        g_v = jnp.zeros_like(v_last)
    if isinstance(g_log, jax.custom_derivatives.SymbolicZero):
        g_log = jnp.zeros(inv.shape[1:], inv.dtype)
    axes = _batch_axes(v_last.shape[-1])
    if axes is None:
        return _bwd_local(w, phi, v_in, inv, v_last, g_v, g_log, need_phi is not None, unroll, None)
    return _sharded(lambda *a: _bwd_local(*a, need_phi is not None, unroll, axes), axes,
                    ("whole", "steps", "steps", "vec", "vec", "vec", "lane"), ("vec", "whole", "steps"),
                    )(w, phi, v_in, inv, v_last, g_v, g_log)


def _bwd_local(w, phi, v_in, inv, v_last, g_v, g_log, need_phi, unroll, axes):
    """The reverse sweep on this device's samples; ∂W summed over `axes` (None: one device)."""
    s, g, co, k = w.shape
    d = phi.shape[2]
    ci = k // d
    # Wᵀ arranged for the reverse step: wt[s, g, i, (D, o)] = A[D, i, o]
    wt = jnp.reshape(
        jnp.einsum("sgopi->sgipo", jnp.reshape(w, (s, g, co, d, ci))), (s, g, ci, d * co)
    )

    def body(carry, xs):
        gv, v_out = carry  # cotangent of this step's output, and the output itself
        wt_s, phi_s, v_s, inv_s = xs
        a = jnp.sum(v_out * gv, axis=1)
        u_bar = (gv - v_out * (a - g_log)[:, None, :]) * inv_s[:, None, :]
        g_in = jnp.einsum("gik,gkb->gib", wt_s, _outer(phi_s, u_bar))
        # ū · (φ ⊗ v)ᵀ with the outer product laid out batch-major: an ordinary (NN) GEMM,
        # 2.7× faster on XLA:CPU than contracting two batch-minor operands (NT)
        g_w = jnp.einsum("gob,gbk->gok", u_bar, _outer_batch_major(phi_s, v_s))
        out = (g_w, u_bar) if need_phi else g_w
        return (g_in, v_s), out

    (g_v0, _), out = jax.lax.scan(
        body, (g_v, v_last), (wt, phi, v_in, inv), reverse=True, unroll=unroll
    )
    if need_phi:
        g_w, u_bar = out
        # ∂φ[s, g, D, b] = Σ_{o,i} ū[o, b] A[D, i, o] v[i, b]
        g_phi = jnp.einsum(
            "sgopi,sgib,sgob->sgpb", jnp.reshape(w, (s, g, co, d, ci)), v_in, u_bar
        )
    else:
        g_w, g_phi = out, jnp.zeros_like(phi)
    if axes is not None:
        g_w = jax.lax.psum(g_w, axes)
    return g_v0, g_w, g_phi


sweep.defvjp(_sweep_fwd, _sweep_bwd, symbolic_zeros=True)


def merge_sites(cores: Array, k: int) -> Array:
    """Products of k consecutive cores: (S, d, χi, χo) in sweep order, S divisible by k →
    (S/k, d^k, χi, χo), merged physical index (p_1, …, p_k) with p_1 slowest."""
    s, d, ci, co = cores.shape
    c = jnp.reshape(cores, (s // k, k, d, ci, co))
    acc = c[:, 0]
    for j in range(1, k):
        acc = jnp.einsum("sPim,spmo->sPpio", acc, c[:, j])
        acc = jnp.reshape(acc, (s // k, -1, ci, c.shape[-1]))
    return acc


def merge_features(phi: Array, k: int) -> Array:
    """phi (B, S, d), S divisible by k → (B, S/k, d^k): φ_{s1} ⊗ … ⊗ φ_{sk}, p_1 slowest."""
    b, s, d = phi.shape
    p = jnp.reshape(phi, (b, s // k, k, d))
    acc = p[:, :, 0]
    for j in range(1, k):
        acc = jnp.reshape(acc[..., :, None] * p[:, :, j, None, :], (b, s // k, -1))
    return acc
