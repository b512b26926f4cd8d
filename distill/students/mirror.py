"""Mirror students: the teacher network with its hidden dense layers (and convolutions) replaced.

A mirror student is the teacher's own `Network` (same spec: convolutions, pooling, BatchNorm,
the output layer) in which each hidden dense layer `act(W x + b)` — every dense layer but the
last, named `hidden_<i>` — is swapped for a layer of a mirror family (TT-matrix, low-rank, MPS,
a small dense bottleneck, CP, Tucker-2, tensor ring, ...) computing the pre-activation; the
teacher's activation is still applied after it. Everything that is not replaced starts as a copy
of the teacher's weights (warm start) and is trained with the rest. Each replaced dense layer
maps the teacher's a^{l-1} → a^l, so it can also be fitted to the teacher's own activations,
layer by layer.

Convolutions. A family that also defines `make_conv_layer(options, layer, *, conv, activation,
seed, index, rngs)` (CP, Tucker-2, TR) can replace the teacher's conv layers too: `layer` is the
teacher's conv layer spec (channels, kernel, stride, explicit padding), `conv` its (kernel HWIO
(kh, kw, C_in, C_out), bias (C_out,) or None) for a warm start, or None; the replacement maps NHWC
images to the conv's pre-activation (BatchNorm and the activation that follow stay the
teacher's). Which layers are replaced is the family's options `replace` (`dense`: the hidden
dense layers; `conv`: the convolutions; `all`: both — `REPLACE`) and `keep_first_conv` (true:
the convolution that reads the image stays the teacher's). Why keep the first one by default:
it reads the image's few channels (1 for Fashion-MNIST), so Tucker-2 cannot shrink its input
side (r_in ≤ C_in = 1), and CP / TR of a (3, 3, 1, 32) kernel save at most a few hundred
parameters (0.04 % of the Fashion CNN teacher), while every error made there reaches every
later layer. Families without `make_conv_layer` replace the hidden dense layers only.

Parameter counts (`layer_params`) cover every replaced layer, dense or conv; "compression of the
replaced layers" = the teacher's parameters of those layers / the student's parameters of their
replacements (`replaced_compression`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from distill import students
from distill.errors import DistillError
from distill.nn import ACTIVATIONS, param_count
from distill.options import at_least, choice
from distill.teachers.frozen import frozen_activations
from distill.teachers.network import Network
from distill.teachers.network import _activation_fn as activation_fn  # the spec activation table

__all__ = ["MirrorStudent", "PostActivation", "HiddenLayer", "hidden_layers", "ConvLayer", "conv_layers",
           "TeacherLayers", "teacher_layers", "build_mirror", "replaced_layers", "layer_params", "replaced_compression",
           "mirror_param_count", "LayerFit", "ConvFit", "conv_fits", "ImageInput", "REPLACE", "replace_option",
           "keep_first_conv_option", "conv_rank_option", "init_activation", "pre_activation"]

#: Values of the `replace` option of the families that can replace convolutions.
REPLACE = ("dense", "conv", "all")


def replace_option():
    """The `replace` option field, shared (same type, default and rule) by every family that
    defines `make_conv_layer`: which teacher layers the family replaces."""
    return field(default="all", metadata=choice(*REPLACE))


def keep_first_conv_option():
    """The `keep_first_conv` option field, shared like `replace_option`: true keeps the teacher's
    convolution that reads the image (see the module docstring)."""
    return field(default=True)


def conv_rank_option():
    """The `conv_rank` option field, shared like `replace_option`: the rank of the replaced
    convolutions, None = `rank`. Convolutions usually want a much smaller rank than dense layers
    (a CNN's dense layers hold most of its parameters, and one rank for both makes the
    convolutions larger than the teacher's at the budgets that suit the dense layers); budget
    matching moves `rank` and keeps `conv_rank`."""
    return field(default=None, metadata=at_least(1))


def init_activation(activation: str | None) -> str | None:
    """The activation whose init scale a randomly initialised family layer takes (the `nn`
    layers scale for relu/gelu by He, else LeCun); None when the layers do not know it."""
    return activation if activation in ACTIVATIONS else None


def pre_activation(layer: nnx.Module) -> nnx.Module:
    """`layer` (an `nn` layer built with an `activation` for its init scale) made to return
    pre-activations: in a mirror student the teacher's activation follows it."""
    layer.activation = None
    return layer


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
    out = _hidden_layers(spec)
    if not out:
        raise DistillError("the teacher has no hidden dense layer to replace; a mirror family (student.family) needs "
                           "one — use student.family=mps for a student over the pixels")
    return out


def _hidden_layers(spec: dict) -> list[HiddenLayer]:
    layers = spec["layers"]
    out = []
    for j, layer in enumerate(layers):
        if layer["type"] == "dense" and layer["name"] != "logits":
            if j == 0:
                raise DistillError(f"teacher layer {layer['name']} reads the image directly; a flatten layer must "
                                   "come first")
            out.append(HiddenLayer(layer["name"], layer["in_features"], layer["out_features"],
                                   layer.get("activation"), layers[j - 1]["name"]))
    return out


@dataclass(frozen=True)
class ConvLayer:
    """A conv layer of the teacher: its checked spec layer (`layer`: in/out channels, kernel,
    stride, explicit padding, bias, activation), `source` — the name of the teacher activation
    that feeds it, None for the normalised input image — and `follow`, the activation applied
    after it (its own, else that of a BatchNorm right after it; None if neither)."""

    name: str
    layer: dict
    source: str | None
    follow: Any

    @property
    def first(self) -> bool:
        """Whether it reads the input image (no layer before it)."""
        return self.source is None


def conv_layers(spec: dict) -> list[ConvLayer]:
    """The teacher's conv layers, in forward order (empty for an MLP)."""
    layers = spec["layers"]
    out = []
    for j, layer in enumerate(layers):
        if layer["type"] != "conv":
            continue
        follow = layer.get("activation")
        if follow is None and j + 1 < len(layers) and layers[j + 1]["type"] == "batchnorm":
            follow = layers[j + 1].get("activation")
        out.append(ConvLayer(layer["name"], dict(layer), layers[j - 1]["name"] if j else None, follow))
    return out


def _act_name(act: Any) -> str | None:
    return act if act is None or isinstance(act, str) else act["name"]


def replaced_layers(family: str, opts, spec: dict) -> tuple[tuple[HiddenLayer, ...], tuple[ConvLayer, ...]]:
    """(hidden dense layers, conv layers) of the teacher that family `family` with options `opts`
    replaces (options `replace` and `keep_first_conv`; families without `make_conv_layer`: the
    hidden dense layers).

    Raises: DistillError naming the option to change when that leaves nothing to replace."""
    module = students.family(family)
    which = getattr(opts, "replace", "dense") if hasattr(module, "make_conv_layer") else "dense"
    if which == "dense":
        return tuple(hidden_layers(spec)), ()
    convs = [c for c in conv_layers(spec) if not (c.first and getattr(opts, "keep_first_conv", True))]
    dense = _hidden_layers(spec) if which == "all" else []
    if not convs and not dense:
        kept = " (the first one, which reads the image, is kept by student.keep_first_conv=true)" \
            if conv_layers(spec) else ""
        raise DistillError(f"student.replace={which}: the teacher has no convolution to replace{kept} and "
                           f"{'no hidden dense layer' if which == 'all' else 'its dense layers are not replaced'}; "
                           "set student.replace=dense (or all), or student.keep_first_conv=false")
    return tuple(dense), tuple(convs)


class PostActivation(nnx.Module):
    """One student layer seen through the teacher's activation: act(layer(x)) (layer-wise targets `post`)."""

    def __init__(self, layer: nnx.Module, activation: Any):
        self.layer = layer
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        return activation_fn(self.activation)(self.layer(x))


class MirrorStudent(Network):
    """The teacher's network with its hidden dense layers replaced: x (B, H*W*C) → logits.

    `family`: the mirror family of the replaced layers; `replaced`: their names in forward order
    (attributes of this module, e.g. `student.hidden_0`, `student.conv_1`)."""

    def __init__(self, spec: dict, layers: dict[str, nnx.Module], family: str, *, rngs: nnx.Rngs):
        super().__init__(spec, rngs=rngs)
        for name, layer in layers.items():
            setattr(self, name, layer)
        self.family = family
        self.replaced = tuple(layers)

    def layer_fits(self, target: str, tl: TeacherLayers) -> list[LayerFit]:
        """One layer-wise fit per replaced hidden dense layer: the layer (through the teacher's
        activation for target `post`) with the teacher's inputs and targets of every split.
        Replaced convolutions have none (their activation maps over a whole split are too large
        to hold): they learn in the end-to-end phases only; see `conv_fits` for their fidelity."""
        out = []
        for hidden in tl.hidden:
            if hidden.name not in self.replaced:  # e.g. student.replace=conv: the teacher's copy stays
                continue
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
    tl: TeacherLayers

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


def _conv_k_b(conv: nnx.Conv) -> tuple[np.ndarray, np.ndarray | None]:
    """(kernel HWIO (kh, kw, C_in, C_out), bias (C_out,) or None) of a flax Conv."""
    return np.asarray(conv.kernel[...]), None if conv.bias is None else np.asarray(conv.bias[...])


def build_mirror(family: str, opts, teacher: Network, input_ranges: dict | None = None, *, seed: int,
                 warm_start: bool = True) -> MirrorStudent:
    """The teacher with each hidden dense layer made by family `family`
    (`distill.students.<family>.make_layer`) from its options `opts`, and — for a family with
    `make_conv_layer`, as its options `replace` / `keep_first_conv` say — each conv layer made by
    `make_conv_layer` (see the module docstring).

    warm_start: everything kept from the teacher starts as a copy of its weights, and the
    family's layers start from the teacher's (W, b) or (kernel, bias) (TT-SVD, truncated SVD,
    CP-ALS, HOOI, TR-SVD, ...) where the family's option `warm_start` allows it; False: all
    weights random (the labels-only control).
    `input_ranges[name]` = (offset, scale) maps a layer's inputs onto [0, 1] for families that
    need it (`NEEDS_INPUT_SCALE`; see `teacher_layers`).
    Raises: DistillError if `family` is not a mirror family or the teacher has nothing to replace.
    """
    if not students.is_mirror(family):
        mirrors = [n for n in students.families() if students.is_mirror(n)]
        raise DistillError(f"student.family={family!r} does not mirror the teacher; use one of {', '.join(mirrors)}")
    module = students.family(family)
    warm_layers = warm_start and getattr(opts, "warm_start", True)
    rngs = nnx.Rngs(seed + 1)
    spec = teacher.spec
    dense_layers, convs = replaced_layers(family, opts, spec)
    index = {h.name: i for i, h in enumerate(_hidden_layers(spec))}
    layers = {}
    for h in dense_layers:
        dense = _dense_w_b(getattr(teacher, h.name)) if warm_layers else None
        rng = None if input_ranges is None else input_ranges[h.name]
        act = h.activation if h.activation is not None else "relu"
        layers[h.name] = module.make_layer(opts, h.n_in, h.n_out, dense=dense,
                                           activation=act if isinstance(act, str) else act["name"],
                                           input_range=rng, seed=seed, index=index[h.name], rngs=rngs)
    conv_index = {c.name: i for i, c in enumerate(conv_layers(spec))}
    for c in convs:
        conv = _conv_k_b(getattr(teacher, c.name)) if warm_layers else None
        layers[c.name] = module.make_conv_layer(opts, c.layer, conv=conv, activation=_act_name(c.follow), seed=seed,
                                                index=conv_index[c.name], rngs=rngs)
    student = MirrorStudent(spec, {}, family, rngs=rngs)
    if warm_start:
        # Copies, never the teacher's own buffers: training donates the student's arrays.
        kept = nnx.state(teacher, nnx.Any(nnx.Param, nnx.BatchStat))
        nnx.update(student, jax.tree.map(jnp.copy, kept))
    for name, layer in layers.items():
        setattr(student, name, layer)
    order = [layer["name"] for layer in spec["layers"]]
    student.replaced = tuple(sorted(layers, key=order.index))
    return student


def layer_params(student: MirrorStudent, teacher: Network) -> list[dict]:
    """Per replaced layer (forward order): its kind (dense or conv), student and teacher
    parameter counts and their ratio."""
    kinds = {layer["name"]: layer["type"] for layer in teacher.spec["layers"]}
    rows = []
    for name in student.replaced:
        t = param_count(getattr(teacher, name))
        p = param_count(getattr(student, name))
        rows.append({"layer": name, "kind": kinds[name], "params": p, "teacher_params": t,
                     "compression_ratio": t / p})
    return rows


def replaced_compression(rows: list[dict]) -> dict:
    """Over all replaced layers (`layer_params` rows): the teacher's parameters of those layers,
    the student's parameters of their replacements, and the ratio (the "compression of the
    teacher's compressed layers")."""
    t = sum(r["teacher_params"] for r in rows)
    p = sum(r["params"] for r in rows)
    return {"teacher_params": t, "params": p, "compression_ratio": t / p if p else None}


def mirror_param_count(family: str, opts, teacher: Network, seed: int = 0) -> int:
    """Parameters of `build_mirror(family, opts, teacher)`, from a shape-only build (no arrays drawn).
    Only the teacher's spec is read, so `teacher` may itself be shape-only (nnx.eval_shape)."""
    return param_count(nnx.eval_shape(lambda: build_mirror(family, opts, teacher, seed=seed, warm_start=False)))


class ImageInput(nnx.Module):
    """A layer that reads the network's input image, seen from the flat pixels: x (B, H*W*C) →
    reshape NHWC → (x − mean) / std per channel (the spec's `input` block) → layer."""

    def __init__(self, layer: nnx.Module, input_block: dict):
        self.layer = layer
        self.shape = (input_block["height"], input_block["width"], input_block["channels"])
        self.mean = tuple(float(v) for v in input_block["mean"])
        self.std = tuple(float(v) for v in input_block["std"])

    def __call__(self, x: Array) -> Array:
        y = x.reshape(x.shape[0], *self.shape)
        mean = jnp.asarray(self.mean, y.dtype).reshape(1, 1, 1, -1)
        std = jnp.asarray(self.std, y.dtype).reshape(1, 1, 1, -1)
        return self.layer((y - mean) / std)


@dataclass(frozen=True)
class ConvFit:
    """A replaced conv layer seen like a `LayerFit`: `module` maps the teacher's activation
    `source` (None: the raw flat pixels, `module` then normalises them) to the teacher's
    activation `target_name`."""

    name: str
    module: nnx.Module
    target_name: str
    source: str | None


def conv_fits(student: MirrorStudent, teacher: Network, target: str) -> list[ConvFit]:
    """One ConvFit per replaced conv layer: the layer (through its own activation for target
    `post`, when it has one) and where its teacher inputs and targets come from."""
    spec = teacher.spec
    out = []
    for c in conv_layers(spec):
        if c.name not in student.replaced:
            continue
        act = c.layer.get("activation")
        layer = getattr(student, c.name)
        module = layer if target == "pre" or act is None else PostActivation(layer, act)
        if c.source is None:
            module = ImageInput(module, spec["input"])
        name = f"{c.name}.pre" if target == "pre" and act is not None else c.name
        out.append(ConvFit(c.name, module, name, c.source))
    return out
