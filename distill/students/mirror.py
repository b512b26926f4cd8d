"""Mirror students: the teacher network with every hidden dense layer replaced.

A mirror student is the teacher's own `Network` (same spec: convolutions, pooling, BatchNorm,
the output layer) in which each hidden dense layer `act(W x + b)` — every dense layer but the
last, named `hidden_<i>` — is swapped for a layer of a mirror family (TT-matrix, low-rank, MPS,
a small dense bottleneck, ...) computing the pre-activation; the teacher's activation is still
applied after it. Everything that is not replaced starts as a copy of the teacher's weights
(warm start) and is trained with the rest. Each replaced layer maps the teacher's a^{l-1} →
a^l, so it can also be fitted to the teacher's own activations, layer by layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from distill import students
from distill.errors import DistillError
from distill.nn import param_count
from distill.teachers.frozen import frozen_activations
from distill.teachers.network import Network
from distill.teachers.network import _activation_fn as activation_fn  # the spec activation table

__all__ = ["MirrorStudent", "PostActivation", "HiddenLayer", "hidden_layers", "TeacherLayers", "teacher_layers",
           "build_mirror", "layer_params", "mirror_param_count", "LayerFit"]


@dataclass(frozen=True)
class HiddenLayer:
    """A hidden dense layer of the teacher: its name, widths, its activation (a spec activation
    field) and `source`, the name of the teacher activation that feeds it."""

    name: str
    n_in: int
    n_out: int
    activation: Any
    source: str


def hidden_layers(spec: dict) -> list[HiddenLayer]:
    """The teacher's hidden dense layers (every dense layer but `logits`), in forward order.

    Raises: DistillError if the teacher has none."""
    layers = spec["layers"]
    out = []
    for j, layer in enumerate(layers):
        if layer["type"] == "dense" and layer["name"] != "logits":
            if j == 0:
                raise DistillError(f"teacher layer {layer['name']} reads the image directly; a flatten layer must "
                                   "come first")
            out.append(HiddenLayer(layer["name"], layer["in_features"], layer["out_features"],
                                   layer.get("activation"), layers[j - 1]["name"]))
    if not out:
        raise DistillError("the teacher has no hidden dense layer to replace; a mirror family (student.family) needs "
                           "one — use student.family=mps for a student over the pixels")
    return out


class PostActivation(nnx.Module):
    """One student layer seen through the teacher's activation: act(layer(x)) (layer-wise targets `post`)."""

    def __init__(self, layer: nnx.Module, activation: Any):
        self.layer = layer
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        return activation_fn(self.activation)(self.layer(x))


class MirrorStudent(Network):
    """The teacher's network with its hidden dense layers replaced: x (B, H*W*C) → logits.

    `family`: the mirror family of the replaced layers; `replaced`: their names (attributes of
    this module, e.g. `student.hidden_0`)."""

    def __init__(self, spec: dict, layers: dict[str, nnx.Module], family: str, *, rngs: nnx.Rngs):
        super().__init__(spec, rngs=rngs)
        for name, layer in layers.items():
            setattr(self, name, layer)
        self.family = family
        self.replaced = tuple(layers)

    def layer_fits(self, target: str, tl: "TeacherLayers") -> list["LayerFit"]:
        """One layer-wise fit per replaced layer: the layer (through the teacher's activation
        for target `post`) with the teacher's inputs and targets of every split."""
        out = []
        for hidden in tl.hidden:
            layer = getattr(self, hidden.name)
            module = layer if target == "pre" or hidden.activation is None else PostActivation(layer, hidden.activation)
            out.append(LayerFit(hidden.name, module, tl.target_name(hidden), hidden.source, tl))
        return out


@dataclass(frozen=True)
class LayerFit:
    """A replaced layer and where its layer-wise data come from (`inputs(split)`, `target(split)`)."""

    name: str
    module: nnx.Module
    target_name: str
    source: str
    tl: "TeacherLayers"

    def inputs(self, split: str) -> np.ndarray:
        return self.tl.acts[split][self.source]

    def target(self, split: str) -> np.ndarray:
        return self.tl.acts[split][self.target_name]


@dataclass(frozen=True)
class TeacherLayers:
    """What layer-wise training and the MPS layers' input ranges read from the frozen teacher,
    computed once per teacher: acts[split][name] (N, width) for split train / val / test;
    ranges[name] = (offset (n_in,), scale (n_in,)) mapping each replaced layer's inputs onto
    [0, 1] — each unit's observed training [min, max] (a signed teacher's negative activations
    are kept, issue: tanh teachers)."""

    hidden: list[HiddenLayer]
    target: str
    acts: dict[str, dict[str, np.ndarray]]
    ranges: dict[str, tuple[np.ndarray, np.ndarray]]

    def target_name(self, hidden: HiddenLayer) -> str:
        return f"{hidden.name}.pre" if self.target == "pre" and hidden.activation is not None else hidden.name


def teacher_layers(teacher: Network, x: dict[str, np.ndarray], target: str) -> TeacherLayers:
    """The teacher activations feeding and produced by each hidden dense layer, for x[split]."""
    hidden = hidden_layers(teacher.spec)
    proto = TeacherLayers(hidden, target, {}, {})
    names = tuple(dict.fromkeys(n for h in hidden for n in (h.source, proto.target_name(h))))
    acts = {split: frozen_activations(teacher, xs, names) for split, xs in x.items()}
    ranges = {}
    for h in hidden:
        src = acts["train"][h.source]
        lo, hi = src.min(axis=0), src.max(axis=0)
        ranges[h.name] = (lo.astype(np.float32), np.maximum(hi - lo, 1e-6).astype(np.float32))
    return TeacherLayers(hidden, target, acts, ranges)


def _dense_w_b(linear: nnx.Linear) -> tuple[np.ndarray, np.ndarray]:
    """(W (N_out, N_in) for y = W x, b (N_out,)) of a flax Linear (whose kernel is (N_in, N_out))."""
    bias = linear.bias[...] if linear.bias is not None else jnp.zeros(linear.kernel.shape[1])
    return np.asarray(linear.kernel[...]).T, np.asarray(bias)


def build_mirror(family: str, opts, teacher: Network, input_ranges: dict | None = None, *, seed: int,
                 warm_start: bool = True) -> MirrorStudent:
    """The teacher with each hidden dense layer made by family `family`
    (`distill.students.<family>.make_layer`) from its options `opts`.

    warm_start: everything kept from the teacher starts as a copy of its weights, and the
    family's layers start from the teacher's (W, b) (TT-SVD, truncated SVD, ...) where the
    family's option `warm_start` allows it; False: all weights random (the labels-only control).
    `input_ranges[name]` = (offset, scale) maps a layer's inputs onto [0, 1] for families that
    need it (`NEEDS_INPUT_SCALE`; see `teacher_layers`).
    Raises: DistillError if `family` is not a mirror family or the teacher has no hidden dense layer.
    """
    if not students.is_mirror(family):
        mirrors = [n for n in students.families() if students.is_mirror(n)]
        raise DistillError(f"student.family={family!r} does not mirror the teacher; use one of {', '.join(mirrors)}")
    module = students.family(family)
    warm_layers = warm_start and getattr(opts, "warm_start", True)
    rngs = nnx.Rngs(seed + 1)
    spec = teacher.spec
    layers = {}
    for i, h in enumerate(hidden_layers(spec)):
        dense = _dense_w_b(getattr(teacher, h.name)) if warm_layers else None
        rng = None if input_ranges is None else input_ranges[h.name]
        act = h.activation if h.activation is not None else "relu"
        layers[h.name] = module.make_layer(opts, h.n_in, h.n_out, dense=dense,
                                           activation=act if isinstance(act, str) else act["name"],
                                           input_range=rng, seed=seed, index=i, rngs=rngs)
    student = MirrorStudent(spec, {}, family, rngs=rngs)
    if warm_start:
        # Copies, never the teacher's own buffers: training donates the student's arrays.
        kept = nnx.state(teacher, nnx.Any(nnx.Param, nnx.BatchStat))
        nnx.update(student, jax.tree.map(jnp.copy, kept))
    for name, layer in layers.items():
        setattr(student, name, layer)
    student.replaced = tuple(layers)
    return student


def layer_params(student: MirrorStudent, teacher: Network) -> list[dict]:
    """Per replaced layer: student and teacher parameter counts and their ratio."""
    rows = []
    for name in student.replaced:
        t = param_count(getattr(teacher, name))
        p = param_count(getattr(student, name))
        rows.append({"layer": name, "params": p, "teacher_params": t, "compression_ratio": t / p})
    return rows


def mirror_param_count(family: str, opts, teacher: Network, seed: int = 0) -> int:
    """Parameters of `build_mirror(family, opts, teacher)`, from a shape-only build (no arrays drawn).
    Only the teacher's spec is read, so `teacher` may itself be shape-only (nnx.eval_shape)."""
    return param_count(nnx.eval_shape(lambda: build_mirror(family, opts, teacher, seed=seed, warm_start=False)))
