"""Phase `sweep`: DMRG-style two-site sweeps of an MPS student under the KD loss (Stoudenmire &
Schwab 2016, §3), with bond dimensions that adapt per bond (`distill.tn.dmrg`).

What each sweep optimises. The `distill.nn.MPS` module outputs exp(s)·L̂·out·R̂ with unit
left/right vectors: the multilinear T·Φ(x) divided by a per-sample norm n(x) = exp(log_norm(x))
(`tn.mps.contract`). n(x) depends on the gauge and on where the output core sits, so the
module's logits are not linear in a merged pair of cores. A sweep therefore holds the module's
normaliser fixed at its value when the sweep starts: it trains

    logits_b = exp(s − log n(x_b)) · T·Φ(x_b),

which equals the module's logits at the start of the sweep, is linear in every merged tensor
(each local KD problem is convex) and does not change when the output core moves or the gauge
changes. When the sweep is done the module renormalises with the new cores; its logits differ
from the sweep's by a positive per-sample factor (the same argmax), and the scalar s is refitted
(a 1-D search on the module's own KD loss over the sweep's samples). The next sweep starts from
the module again. Every number this phase reports (loss, validation accuracy) is the module's.

Each sweep draws `distill.sweep_samples` training images (seeded by the run's seed and the
sweep), caches their environments (memory (n+1)·samples·χ·8 bytes), brings the cores to
mixed-canonical form about the output core (so that each truncation is optimal) and runs
`tn.dmrg.sweep`: `sweep_steps` Adam steps (lr `sweep_lr`, minibatches of `distill.batch_size`)
per merged pair, SVD split keeping at most `sweep_max_bond` (default: student.bond_dim, the
stored χ) and at least `sweep_min_bond` values and dropping a discarded weight ≤ `sweep_cutoff`
per bond. The sweep with the
best validation accuracy is kept. The feature map (learned weights included) is not changed.

Parameters: the cores keep their stored shapes (χ = student.bond_dim, zero-padded where a bond
is smaller), so the saved student reloads as it is; the history reports both the stored count
and the effective one (`tn.dmrg.effective_num_params`: the channels in use).

Resume: the student's state (and the best one so far) is checkpointed every runtime.checkpoint_every
sweeps and after the last; a stop request (SIGTERM, Ctrl-C) is honoured at the end of the current
sweep, after a checkpoint.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distill import train
from distill.errors import DistillError
from distill.phases import PhaseContext, PhaseResult
from distill.tn import canonical, dmrg
from distill.tn import mps as mps_lib
from distill.train.checkpoint import RunInterrupted, stop_requested

USES_TEACHER = True
NEEDS_MIRROR = False

__all__ = ["USES_TEACHER", "NEEDS_MIRROR", "check_config", "run", "refit_log_scale"]


def check_config(cfg) -> None:
    """Raises: DistillError for a config this phase cannot run (checked before the teacher trains)."""
    if cfg.student.family != "mps":
        raise DistillError(f"distill.mode: phase 'sweep' trains one MPS over the pixels; set student.family=mps "
                           f"(student.family={cfg.student.family} is not an MPS chain)")
    if cfg.augment.active:
        raise DistillError("distill.mode: phase 'sweep' caches environments of fixed training images; turn "
                           "augmentation off (augment.translate=0, flip=false, mixup=0, cutmix=0) or use end_to_end")
    mb = cfg.distill.sweep_max_bond
    if mb is not None and mb > cfg.student.options.bond_dim:
        raise DistillError(f"config: distill.sweep_max_bond = {mb} is above student.bond_dim = "
                           f"{cfg.student.options.bond_dim}, the stored bond dimension a sweep grows bonds into; "
                           "raise student.bond_dim or lower distill.sweep_max_bond")


def _set_cores(student, params: mps_lib.MPSParams) -> None:
    for name in mps_lib.MPSParams._fields:
        getattr(student, name)[...] = getattr(params, name).astype(student.dtype)


@functools.partial(jax.jit, static_argnames=("loss",))
def _scaled_loss(s, z, targets, *, loss):
    return loss(jnp.exp(s) * z, targets)


def refit_log_scale(z: jax.Array, targets: dict, loss, start: float, width: float = 30.0, iters: int = 80) -> float:
    """argmin over s in [start − width, start + width] of loss(exp(s)·z, targets) by golden-section
    search (80 steps: the bracket shrinks to ~1e-15). z (B, m) the module's unit-scale logits. The KD
    loss is convex in u = exp(s) (the logits are linear in u), hence unimodal in s. The bracket is
    wide because a sweep leaves the cores in canonical form (‖out‖ = 1): the scale the trained
    output core carried moves into s."""
    def f(s: float) -> float:
        return float(_scaled_loss(jnp.asarray(s, z.dtype), z, targets, loss=loss))

    a, b = start - width, start + width
    inv = (math.sqrt(5) - 1) / 2
    c, d = b - inv * (b - a), a + inv * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - inv * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv * (b - a)
            fd = f(d)
    best = (a + b) / 2
    return best if f(best) <= f(start) else start


def _snapshot(student) -> dict:
    return nnx.to_pure_dict(jax.tree.map(jnp.copy, nnx.state(student, nnx.Param)))


def _restore(student, snap: dict) -> None:
    state = nnx.state(student, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.copy, snap))
    nnx.update(student, state)


def _module_loss(student, phi: jax.Array, targets: dict, loss) -> tuple[float, jax.Array]:
    z, _ = mps_lib.contract(student.params, phi, method=student.contraction)
    return float(loss(jnp.exp(student.log_scale[...]) * z, targets)), z


def run(ctx: PhaseContext, student) -> PhaseResult:
    from distill.nn import MPS

    d = ctx.distill
    if not isinstance(student, MPS):
        raise DistillError(f"phase 'sweep' trains a distill.nn.MPS student, got {type(student).__name__}; set "
                           "student.family=mps")
    if ctx.augment is not None:
        raise DistillError("phase 'sweep' needs augmentation off (augment.*): it caches environments of fixed images")
    max_bond = student.bond_dim if d.sweep_max_bond is None else d.sweep_max_bond
    if max_bond > student.bond_dim:
        raise DistillError(f"distill.sweep_max_bond = {max_bond} is above student.bond_dim = {student.bond_dim}")
    loss = train.losses.KD(d.temperature, d.alpha)
    x, t, y = ctx.x["train"], ctx.teacher_logits["train"], ctx.y["train"]
    n_samples = min(len(y), d.sweep_samples)
    has_val = len(ctx.y["val"]) > 0
    k = student.output_site
    stored = mps_lib.num_params(student.params)

    def val_accuracy() -> float | None:
        if not has_val:
            return None
        return train.losses.accuracy(train.predict(student, ctx.x["val"]), ctx.y["val"])

    hist = train.History(selection="best validation epoch" if has_val else "last epoch (no validation set)")
    extra = {"stored_params": stored, "max_bond": int(max_bond), "min_bond": min(d.sweep_min_bond, int(max_bond)),
             "cutoff": d.sweep_cutoff, "samples": n_samples,
             "steps": d.sweep_steps, "bond_ranks": [], "effective_params": [], "max_discarded": [],
             "loss_before": None, "val_accuracy_before": val_accuracy()}
    best, best_score, start = None, -math.inf, 0
    ckpt = ctx.checkpoint("sweep")
    if ckpt is not None:
        got = ckpt.latest({"current": _snapshot(student), "best": _snapshot(student)})
        if got is not None:
            saved, loop = got
            _restore(student, saved["current"])
            best, start = saved["best"], loop["sweep"]
            hist = train.History.from_dict(loop["history"])
            extra = loop["extra"]
            best_score = -math.inf if hist.best_val_accuracy is None else hist.best_val_accuracy

    for i in range(start, d.sweeps):
        t0 = time.perf_counter()
        idx = np.sort(np.random.default_rng([ctx.seed, 3, i]).choice(len(y), n_samples, replace=False))
        phi = student.features(jnp.asarray(x[idx]))
        targets = {"t": jnp.asarray(t[idx]), "y": jnp.asarray(y[idx])}
        loss_now, _ = _module_loss(student, phi, targets, loss)
        if i == 0:
            extra["loss_before"] = loss_now
        _, log_norm = mps_lib.contract(student.params, phi, method=student.contraction)
        canon, lam = canonical.mixed_canonical(student.params)
        g = (student.log_scale[...] + lam - log_norm).astype(student.dtype)
        chain, k0 = dmrg.chain_from_mps(canon)
        chain, info = dmrg.sweep(chain, k0, phi, g, targets, jax.random.fold_in(jax.random.key(ctx.seed + 3), i),
                                 loss=loss, steps=d.sweep_steps, batch=d.batch_size, lr=d.sweep_lr,
                                 max_bond=int(max_bond), cutoff=d.sweep_cutoff,
                                 min_bond=min(d.sweep_min_bond, int(max_bond)))
        new = dmrg.chain_to_mps(chain, k)
        if not all(bool(jnp.all(jnp.isfinite(a))) for a in new):
            raise DistillError(f"phase 'sweep': the cores became non-finite in sweep {i + 1}; lower "
                               "distill.sweep_lr (e.g. halve it)")
        _set_cores(student, new)
        z, _ = mps_lib.contract(student.params, phi, method=student.contraction)
        s = refit_log_scale(z, targets, loss, float(student.log_scale[...]))
        student.log_scale[...] = jnp.asarray(s, student.dtype)
        train_loss, _ = _module_loss(student, phi, targets, loss)
        score = val_accuracy()
        hist.train_loss.append(train_loss)
        hist.val_accuracy.append(score)
        hist.epoch_s.append(time.perf_counter() - t0)
        extra["bond_ranks"].append(list(dmrg.bond_ranks(new)))
        extra["effective_params"].append(dmrg.effective_num_params(new))
        extra["max_discarded"].append(float(np.max(info["discarded"])))
        if score is None or score > best_score or best is None:
            best, best_score = _snapshot(student), (score if score is not None else best_score)
            hist.best_epoch, hist.best_val_accuracy = i + 1, score
        reason = stop_requested()
        if ckpt is not None and (reason is not None or i + 1 == d.sweeps or (i + 1) % ckpt.every == 0):
            ckpt.save(i + 1, {"current": _snapshot(student), "best": best},
                      {"sweep": i + 1, "history": hist.as_dict(), "extra": extra})
            if reason is not None and i + 1 < d.sweeps:
                raise RunInterrupted(reason)
    if best is not None:
        _restore(student, best)
    student.eval()
    curve = {**hist.as_dict(), "sweep": extra}
    return PhaseResult("sweep" if ctx.first else "after sweeps", {f"{ctx.label} (sweeps)": curve})
