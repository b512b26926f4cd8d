"""Students built from a config and (optionally) warm-started from the frozen teacher.

Two shapes of student:
* `mps` — one MPS over the input pixels whose output leg gives the logits (`layers.MPS`);
* a *mirror* of the teacher MLP — every hidden layer `act(W x + b)` replaced by a layer of
  the chosen family, then the teacher's activation, then a dense head like the teacher's
  output layer (`MirrorStudent`). Each replaced layer maps a^{l-1} → a^l, so it can be
  trained on the teacher's own activations, layer by layer (`train.fit_layer`).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from distill.config import Config
from distill.data import site_order
from distill.errors import DistillError
from distill.nn import MPS, LowRankLinear, MPSHidden, TTLinear, param_count
from distill.teachers import ACTIVATIONS, MLP

MIRROR_FAMILIES = ("mps_layers", "tt", "lowrank", "dense")


class DenseBottleneck(nnx.Module):
    """The small-dense baseline for one layer: x (B, n_in) → Linear(n_in, h) → act → Linear(h, n_out)."""

    def __init__(self, n_in: int, n_out: int, *, width: int, activation: str, rngs: nnx.Rngs):
        self.down = nnx.Linear(n_in, width, rngs=rngs)
        self.up = nnx.Linear(width, n_out, rngs=rngs)
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        return self.up(ACTIVATIONS[self.activation](self.down(x)))


class MirrorStudent(nnx.Module):
    """x (B, n_in) → logits: hidden layers (pre-activations) + the teacher's activation + dense head."""

    def __init__(self, hidden: list[nnx.Module], head: nnx.Linear, activation: str):
        self.hidden = nnx.List(hidden)
        self.head = head
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        act = ACTIVATIONS[self.activation]
        h = x
        for layer in self.hidden:
            h = act(layer(h))
        return self.head(h)


class PostActivation(nnx.Module):
    """One student layer seen through the teacher's activation: act(layer(x)) (layer-wise targets `post`)."""

    def __init__(self, layer: nnx.Module, activation: str):
        self.layer = layer
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        return ACTIVATIONS[self.activation](self.layer(x))


def _dense_w_b(linear: nnx.Linear) -> tuple[np.ndarray, np.ndarray]:
    """(W (N_out, N_in) for y = W x, b (N_out,)) of a flax Linear (whose kernel is (N_in, N_out))."""
    return np.asarray(linear.kernel[...]).T, np.asarray(linear.bias[...])


def build_mps(cfg: Config, n_sites: int, image_shape: tuple[int, int], num_classes: int) -> MPS:
    s = cfg.student
    return MPS(n_sites, num_classes, bond_dim=s.bond_dim, feature_map=s.feature_map, feature_dim=s.feature_dim,
               feature_params=s.feature_params or None, pairing=s.pairing,
               pairing_seed=cfg.seed if s.pairing_seed is None else s.pairing_seed, pair_shift=s.pair_shift,
               output_site=s.output_site, init_std=s.init_std, site_order=site_order(image_shape, cfg.data.ordering),
               contraction=s.contraction, rngs=nnx.Rngs(cfg.seed + 1))


def build_mirror(cfg: Config, teacher: MLP, input_scales: list[np.ndarray] | None = None, *,
                 warm_start: bool | None = None) -> MirrorStudent:
    """A student with the teacher's layer widths; each hidden layer of family `cfg.student.family`.

    warm_start (default: cfg.student.warm_start): tt layers from TT-SVD of the teacher's W,
    lowrank from its truncated SVD, and the head copied from the teacher's output layer.
    `input_scales[l]` (n_in,) maps layer l's inputs into [0, 1] for `mps_layers` (a feature
    map needs inputs there); typically the teacher activations' per-unit maxima. A random
    pairing of a pairwise map is drawn per layer, from pairing_seed + l (pairing_seed
    defaults to the run's seed).
    """
    s = cfg.student
    warm = s.warm_start if warm_start is None else warm_start
    if s.family not in MIRROR_FAMILIES:
        raise DistillError(f"student.family={s.family!r} does not mirror the teacher; use one of {MIRROR_FAMILIES}")
    rngs = nnx.Rngs(cfg.seed + 1)
    spec = teacher.spec
    widths = [spec["in_features"], *spec["hidden"]]
    layers: list[nnx.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        if s.family == "tt":
            if warm:
                layer = TTLinear.from_dense(*_dense_w_b(getattr(teacher, f"hidden_{i}")), n_factors=s.tt_factors,
                                            rank=s.rank, method=s.tt_method)
            else:
                layer = TTLinear(n_in, n_out, n_factors=s.tt_factors, rank=s.rank, method=s.tt_method, rngs=rngs)
        elif s.family == "lowrank":
            layer = (LowRankLinear.from_dense(*_dense_w_b(getattr(teacher, f"hidden_{i}")), rank=s.rank) if warm
                     else LowRankLinear(n_in, n_out, rank=s.rank, rngs=rngs))
        elif s.family == "dense":
            layer = DenseBottleneck(n_in, n_out, width=s.hidden_width, activation=spec["activation"], rngs=rngs)
        else:  # mps_layers
            scale = None if input_scales is None else input_scales[i]
            pairing_seed = (cfg.seed if s.pairing_seed is None else s.pairing_seed) + i
            layer = MPSHidden(n_in, n_out, bond_dim=s.bond_dim, feature_map=s.feature_map,
                              feature_dim=s.feature_dim, feature_params=s.feature_params or None,
                              pairing=s.pairing, pairing_seed=pairing_seed, pair_shift=s.pair_shift,
                              input_scale=scale, contraction=s.contraction, rngs=rngs)
        layers.append(layer)
    head = nnx.Linear(widths[-1], spec["n_classes"], rngs=rngs)
    if warm:
        # Copies, never the teacher's own buffers: training donates the student's arrays.
        head.kernel[...] = jnp.array(np.asarray(teacher.logits.kernel[...]))
        head.bias[...] = jnp.array(np.asarray(teacher.logits.bias[...]))
    return MirrorStudent(layers, head, spec["activation"])


def layer_params(student: MirrorStudent, teacher: MLP) -> list[dict]:
    """Per hidden layer: student and teacher parameter counts and their ratio."""
    rows = []
    for i, layer in enumerate(student.hidden):
        t = param_count(getattr(teacher, f"hidden_{i}"))
        p = param_count(layer)
        rows.append({"layer": f"hidden_{i}", "params": p, "teacher_params": t, "compression_ratio": t / p})
    return rows


def mirror_param_count(cfg: Config, teacher: MLP) -> int:
    """Parameters of `build_mirror(cfg, teacher)`, from a shape-only build (no arrays drawn).
    Only the teacher's widths are read, so `teacher` may itself be shape-only (nnx.eval_shape)."""
    return param_count(nnx.eval_shape(lambda: build_mirror(cfg, teacher, warm_start=False)))


#: The one size knob of each mirror family, searched by `match_budget`.
SIZE_KNOBS = {"tt": "rank", "lowrank": "rank", "dense": "hidden_width", "mps_layers": "bond_dim"}


def match_budget(cfg: Config, teacher: MLP, target_params: int, max_size: int = 256) -> tuple[Config, int]:
    """cfg with its family's size knob set so the mirror student's parameter count is closest to
    `target_params`; returns (cfg, that count). Counts come from abstract (shape-only) builds."""
    knob = SIZE_KNOBS[cfg.student.family]

    def count(size: int) -> int:
        return mirror_param_count(dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, **{knob: size})),
                                  teacher)

    # Parameter counts grow monotonically with the knob: bisect for the crossing, then take the closer side.
    lo, hi = 1, max_size
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) < target_params:
            lo = mid + 1
        else:
            hi = mid
    best = min(sorted({max(lo - 1, 1), lo}), key=lambda s: abs(count(s) - target_params))  # ties: the smaller
    out = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, **{knob: best}))
    return out, count(best)
