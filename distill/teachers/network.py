"""A teacher network described by a JSON-able ``spec`` and run as an nnx module.

The spec is the contract between the importers (PyTorch state_dict, ONNX, Keras), the
executor (:class:`Network`) and the rest of distill::

    spec = {"kind": "network",
            "input": {"height": H, "width": W, "channels": C, "mean": [C], "std": [C]},
            "layers": [{"type": ..., "name": ..., "source": ..., <fields>}, ...],
            "notes": [...]}                                             # optional

The network's input is distill's flat pixel vector x (B, H*W*C) in row-major H, W, C order.
It is reshaped to NHWC (the layout used inside), normalised per channel as (x - mean) / std,
and passed through the layers in order; the output is the logits (B, n_classes).

Layer types and their fields (geometry always explicit; the importers resolve "same"/"valid"):

* ``dense``: in_features, out_features, bias, activation. params kernel (in, out), bias (out,).
* ``conv``: in_channels, out_channels, kernel [kh, kw], stride [sh, sw],
  padding [[top, bottom], [left, right]], bias, activation. params kernel (kh, kw, C_in, C_out)
  (HWIO), bias (C_out,). Cross-correlation, as in PyTorch and ``lax.conv_general_dilated``.
* ``batchnorm``: features, eps, momentum (flax convention: running = momentum * running +
  (1 - momentum) * batch, so PyTorch's 0.1 is 0.9 here), activation. params scale, bias
  (nnx.Param) and mean, var (nnx.BatchStat), over the last axis.
* ``activation``: activation (a standalone one that does not follow dense/conv/batchnorm).
* ``maxpool``: kernel, stride, padding (padded with -inf). ``avgpool``: kernel, stride,
  padding, count_include_pad. ``global_avgpool``: mean over H, W keeping (1, 1, C).
* ``flatten``: order "chw" (PyTorch: NCHW flattened as C, H, W) or "hwc" (Keras). Identity on
  a flat input.
* ``dropout``: rate (identity in evaluation mode).
* ``scale_shift``: scale, shift (a number or a per-channel list over the last axis):
  y = x * scale + shift, constants kept in the spec.

``activation`` is null, a name or {"name": ..., <params>}: relu, tanh, sigmoid, gelu (exact,
erf), gelu_tanh, leaky_relu {negative_slope: 0.01}, elu {alpha: 1.0}, silu.
"""

from __future__ import annotations

import json
import keyword
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from distill.errors import DistillError

__all__ = [
    "Network",
    "load_params",
    "check_spec",
    "layer_output_shape",
    "param_shapes",
    "assemble_spec",
    "mlp_spec",
    "cnn_spec",
    "lenet5_spec",
    "ACTIVATION_DEFAULTS",
    "SOFTMAX_NOTE",
]

#: Activation name -> its parameters with their defaults (PyTorch's defaults).
ACTIVATION_DEFAULTS: dict[str, dict[str, float]] = {
    "relu": {},
    "tanh": {},
    "sigmoid": {},
    "gelu": {},
    "gelu_tanh": {},
    "silu": {},
    "leaky_relu": {"negative_slope": 0.01},
    "elu": {"alpha": 1.0},
}

#: The note added to spec["notes"] when an importer drops a final softmax ({what}, {source}).
SOFTMAX_NOTE = "final {what} (source {source}) dropped: the teacher's logits are its pre-softmax outputs"

_FIELDS: dict[str, tuple[str, ...]] = {
    "dense": ("in_features", "out_features", "bias", "activation"),
    "conv": ("in_channels", "out_channels", "kernel", "stride", "padding", "bias", "activation"),
    "batchnorm": ("features", "eps", "momentum", "activation"),
    "activation": ("activation",),
    "maxpool": ("kernel", "stride", "padding"),
    "avgpool": ("kernel", "stride", "padding", "count_include_pad"),
    "global_avgpool": (),
    "flatten": ("order",),
    "dropout": ("rate",),
    "scale_shift": ("scale", "shift"),
}
_FUSES = ("dense", "conv", "batchnorm")  # layers with an `activation` field (optional, null)
_PREFIX = {"conv": "conv", "batchnorm": "bn", "maxpool": "pool", "avgpool": "pool",
           "global_avgpool": "pool", "flatten": "flatten", "dropout": "dropout",
           "activation": "act", "scale_shift": "scale_shift", "dense": "hidden"}
_RESERVED = frozenset(dir(nnx.Module)) | {"spec", "input_shape", "n_features", "n_classes",
                                          "activation_names", "activations"}


# ----------------------------------------------------------------------------- activations


def _label(layer: dict) -> str:
    name = layer.get("name", "?")
    src = layer.get("source")
    src = f", source {src!r}" if src not in (None, "") else ""
    return f"layer {name} ({layer.get('type', '?')}{src})"


def _parse_activation(act: Any, where: str) -> Any:
    """Canonical form of an activation field: None, a name, or {"name": ..., params}."""
    if act is None:
        return None
    if isinstance(act, str):
        name, given = act, {}
    elif isinstance(act, dict) and isinstance(act.get("name"), str):
        name, given = act["name"], {k: v for k, v in act.items() if k != "name"}
    else:
        raise DistillError(f"{where}: activation must be null, a name or {{name: ..., ...}}, got {act!r}")
    if name not in ACTIVATION_DEFAULTS:
        raise DistillError(
            f"{where}: unknown activation {name!r}; use one of {', '.join(ACTIVATION_DEFAULTS)}"
        )
    defaults = ACTIVATION_DEFAULTS[name]
    extra = sorted(set(given) - set(defaults))
    if extra:
        raise DistillError(f"{where}: activation {name} takes no parameter {extra[0]!r}"
                           f" (its parameters: {', '.join(defaults) or 'none'})")
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DistillError(f"{where}: activation {name} {key} must be a number, got {value!r}")
    if not defaults:
        return name
    return {"name": name, **{k: float(given.get(k, v)) for k, v in defaults.items()}}


def _activation_fn(act: Any) -> Callable[[Array], Array]:
    """The elementwise function of a canonical activation field (identity for None)."""
    if act is None:
        return lambda x: x
    name = act if isinstance(act, str) else act["name"]
    if name == "leaky_relu":
        return lambda x: jax.nn.leaky_relu(x, act["negative_slope"])
    if name == "elu":
        return lambda x: jax.nn.elu(x, act["alpha"])
    return {
        "relu": jax.nn.relu,
        "tanh": jnp.tanh,
        "sigmoid": jax.nn.sigmoid,
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "silu": jax.nn.silu,
    }[name]


# ----------------------------------------------------------------------------- field checks


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def _is_num(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) \
        and math.isfinite(v)


def _check_field(layer: dict, field: str) -> Any:
    """Validate one field of a layer; returns its canonical (JSON) value."""
    v, where = layer[field], _label(layer)
    bad = f"{where}: {field} must be "
    if field in ("in_features", "out_features", "in_channels", "out_channels", "features"):
        if not _is_int(v) or v < 1:
            raise DistillError(f"{bad}an integer >= 1, got {v!r}")
        return int(v)
    if field in ("kernel", "stride"):
        if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(_is_int(a) and a >= 1 for a in v):
            raise DistillError(f"{bad}[h, w] with integers >= 1, got {v!r}")
        return [int(a) for a in v]
    if field == "padding":
        ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_int(a) and a >= 0 for a in p)
            for p in v)
        if not ok:
            raise DistillError(f"{bad}[[top, bottom], [left, right]] with integers >= 0, got {v!r}")
        return [[int(a) for a in p] for p in v]
    if field in ("bias", "count_include_pad"):
        if not isinstance(v, bool):
            raise DistillError(f"{bad}true or false, got {v!r}")
        return v
    if field == "eps":
        if not _is_num(v) or v <= 0:
            raise DistillError(f"{bad}a number > 0, got {v!r}")
        return float(v)
    if field in ("momentum", "rate"):
        if not _is_num(v) or not 0 <= v < 1:
            raise DistillError(f"{bad}a number in [0, 1), got {v!r}")
        return float(v)
    if field == "order":
        if v not in ("chw", "hwc"):
            raise DistillError(f"{bad}'chw' (PyTorch) or 'hwc' (Keras), got {v!r}")
        return v
    if field in ("scale", "shift"):
        if _is_num(v):
            return float(v)
        if isinstance(v, (list, tuple)) and v and all(_is_num(a) for a in v):
            return [float(a) for a in v]
        raise DistillError(f"{bad}a number or a non-empty list of numbers (per channel), got {v!r}")
    return _parse_activation(v, where)  # "activation"


def _check_layer(layer: Any, index: int) -> dict:
    if not isinstance(layer, dict):
        raise DistillError(f"spec layer #{index} must be a mapping, got {layer!r}")
    kind = layer.get("type")
    if kind not in _FIELDS:
        raise DistillError(f"{_label(layer)}: unknown layer type {kind!r}; use one of {', '.join(_FIELDS)}")
    name = layer.get("name")
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) \
            or name in _RESERVED or name.startswith("_"):
        raise DistillError(f"spec layer #{index} ({kind}) needs a name that is a Python identifier "
                           f"not starting with '_' nor a Network attribute, got {name!r}")
    fields = _FIELDS[kind]
    known = {"type", "name", "source", *fields}
    extra = sorted(set(layer) - known)
    if extra:
        raise DistillError(f"{_label(layer)} has unknown field {extra[0]!r}; its fields are {', '.join(fields)}")
    out = {"type": kind, "name": name}
    if layer.get("source") is not None:
        out["source"] = str(layer["source"])
    for field in fields:
        if field not in layer:
            if field == "activation" and kind in _FUSES:
                out[field] = None
                continue
            raise DistillError(f"{_label(layer)} is missing the field {field!r}")
        out[field] = _check_field(layer, field)
    if kind == "activation" and out["activation"] is None:
        raise DistillError(f"{_label(layer)}: a standalone activation layer needs a non-null activation")
    return out


def _check_input(block: Any) -> dict:
    if not isinstance(block, dict):
        raise DistillError(f"spec input must be a mapping with height, width, channels, mean, std; got {block!r}")
    for key in ("height", "width", "channels"):
        if not _is_int(block.get(key)) or block[key] < 1:
            raise DistillError(f"spec input {key} must be an integer >= 1, got {block.get(key)!r}")
    c = int(block["channels"])
    out = {k: int(block[k]) for k in ("height", "width", "channels")}
    for key in ("mean", "std"):
        v = block.get(key)
        if not isinstance(v, (list, tuple)) or len(v) != c or not all(_is_num(a) for a in v):
            raise DistillError(f"spec input {key} must be a list of {c} numbers (one per channel), got {v!r}")
        out[key] = [float(a) for a in v]
    if any(s <= 0 for s in out["std"]):
        raise DistillError(f"spec input std must be > 0 for every channel, got {out['std']}")
    extra = sorted(set(block) - {"height", "width", "channels", "mean", "std"})
    if extra:
        raise DistillError(f"spec input has unknown field {extra[0]!r}; its fields are height, width, channels, mean, std")
    return out


# ----------------------------------------------------------------------------- shapes


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _window_out(layer: dict, shape: tuple, after: str) -> tuple[int, int]:
    """Spatial output size of a conv/pool window: floor((n + pads - k) / s) + 1 per axis."""
    out = []
    for n, k, s, (p0, p1) in zip(shape[:2], layer["kernel"], layer["stride"], layer["padding"]):
        size = (n + p0 + p1 - k) // s + 1
        if size < 1:
            raise DistillError(f"{_label(layer)}: kernel {layer['kernel'][0]}x{layer['kernel'][1]} "
                               f"does not fit its padded input {_fmt(shape)} (after {after})")
        out.append(size)
    return out[0], out[1]


def _need_image(layer: dict, shape: tuple, after: str) -> None:
    if len(shape) != 3:
        raise DistillError(f"{_label(layer)} needs an image (H, W, C) but receives {_fmt(shape)} "
                           f"(after {after})")


def layer_output_shape(layer: dict, shape: tuple, after: str = "the input") -> tuple:
    """Per-sample output shape of one checked spec layer given its input shape.

    Shapes exclude the batch axis: (H, W, C) for images (NHWC) or (F,) when flat.
    ``after`` names the previous layer in the messages.

    Raises:
        DistillError: one line naming the layer, what it expects and what it receives.
    """
    kind = layer["type"]
    if kind == "dense":
        if len(shape) != 1:
            raise DistillError(f"{_label(layer)} needs a flat input but receives {_fmt(shape)} "
                               f"(after {after}); insert a flatten layer before it")
        if shape[0] != layer["in_features"]:
            raise DistillError(f"{_label(layer)} expects {layer['in_features']} input features but "
                               f"receives {shape[0]} (after {after})")
        return (layer["out_features"],)
    if kind in ("conv", "maxpool", "avgpool", "global_avgpool"):
        _need_image(layer, shape, after)
        if kind == "global_avgpool":
            return (1, 1, shape[2])
        if kind != "conv" and any(p >= k for pads, k in zip(layer["padding"], layer["kernel"]) for p in pads):
            raise DistillError(f"{_label(layer)}: padding {layer['padding']} must be smaller than the "
                               f"kernel {layer['kernel']} on every side")
        if kind == "conv" and shape[2] != layer["in_channels"]:
            raise DistillError(f"{_label(layer)} expects {layer['in_channels']} input channels but "
                               f"receives {shape[2]} (after {after})")
        return (*_window_out(layer, shape, after), layer["out_channels"] if kind == "conv" else shape[2])
    if kind == "batchnorm" and shape[-1] != layer["features"]:
        raise DistillError(f"{_label(layer)} expects {layer['features']} features on the last axis "
                           f"but receives {_fmt(shape)} (after {after})")
    if kind == "flatten":
        return (int(np.prod(shape)),)
    if kind == "scale_shift":
        for field in ("scale", "shift"):
            v = layer[field]
            if isinstance(v, list) and len(v) not in (1, shape[-1]):
                raise DistillError(f"{_label(layer)}: {field} has {len(v)} values but its input "
                                   f"{_fmt(shape)} (after {after}) has {shape[-1]} channels")
    return tuple(shape)


def _raw_output_shape(raw: dict, shape: tuple | None, index: int = 0) -> tuple | None:
    """Output shape of an unnamed importer layer (its "params" ignored), for importers that
    need the running shape (e.g. to resolve "same" padding); None when it does not fit, so that
    :func:`assemble_spec` reports the problem with the final layer names."""
    if shape is None:
        return None
    try:
        layer = _check_layer({k: v for k, v in raw.items() if k != "params"} | {"name": f"layer_{index}"}, index)
        return layer_output_shape(layer, shape)
    except DistillError:
        return None


def check_spec(spec: Any) -> tuple[dict, list[tuple]]:
    """Validate a network spec; returns (canonical spec, per-layer output shapes).

    The canonical spec is a fresh JSON-able dict (activations in canonical form, missing
    ``activation`` fields filled with null). Shapes exclude the batch axis.

    Raises:
        DistillError: one line naming the first problem: unknown layer type, missing or bad
            field, duplicate name, or the first layer whose input shape does not fit.
    """
    if not isinstance(spec, dict) or spec.get("kind") != "network":
        kind = spec.get("kind") if isinstance(spec, dict) else type(spec).__name__
        raise DistillError(f"a network spec needs kind 'network', got {kind!r}")
    extra = sorted(set(spec) - {"kind", "input", "layers", "notes"})
    if extra:
        raise DistillError(f"network spec has unknown key {extra[0]!r}; its keys are kind, input, layers, notes")
    inp = _check_input(spec.get("input"))
    raw = spec.get("layers")
    if not isinstance(raw, (list, tuple)) or not raw:
        raise DistillError("network spec layers must be a non-empty list of layer mappings")
    layers = [_check_layer(layer, i) for i, layer in enumerate(raw)]
    seen: set[str] = set()
    for layer in layers:
        if layer["name"] in seen:
            raise DistillError(f"network spec has two layers named {layer['name']!r}; names must be unique")
        seen.add(layer["name"])
    if "logits" in seen and layers[-1]["name"] != "logits":
        raise DistillError("only the last layer may be named 'logits' (it names the network's output)")
    shape: tuple = (inp["height"], inp["width"], inp["channels"])
    after, shapes = "the input", []
    for layer in layers:
        shape = layer_output_shape(layer, shape, after)
        shapes.append(shape)
        after = layer["name"]
    if len(shape) != 1:
        raise DistillError(f"the network's output per sample is {_fmt(shape)}, not a vector of logits; "
                           "end it with a flatten or dense layer")
    notes = spec.get("notes", [])
    if not isinstance(notes, (list, tuple)) or not all(isinstance(n, str) for n in notes):
        raise DistillError(f"network spec notes must be a list of strings, got {notes!r}")
    out = {"kind": "network", "input": inp, "layers": layers}
    if notes:
        out["notes"] = list(notes)
    return out, shapes


def param_shapes(spec: dict) -> dict[str, dict[str, tuple[int, ...]]]:
    """{layer name: {param: shape}} of the arrays a checked spec's layers hold.

    dense: kernel (in, out), bias (out,); conv: kernel (kh, kw, C_in, C_out), bias (C_out,);
    batchnorm: scale, bias, mean, var (features,). ``bias`` only when the layer's bias is true.
    """
    out: dict[str, dict[str, tuple[int, ...]]] = {}
    for layer in spec["layers"]:
        kind = layer["type"]
        if kind == "dense":
            shapes = {"kernel": (layer["in_features"], layer["out_features"])}
            n_out = layer["out_features"]
        elif kind == "conv":
            shapes = {"kernel": (*layer["kernel"], layer["in_channels"], layer["out_channels"])}
            n_out = layer["out_channels"]
        elif kind == "batchnorm":
            n = layer["features"]
            out[layer["name"]] = {k: (n,) for k in ("scale", "bias", "mean", "var")}
            continue
        else:
            continue
        if layer["bias"]:
            shapes["bias"] = (n_out,)
        out[layer["name"]] = shapes
    return out


# ----------------------------------------------------------------------------- ops


def _const(value: Any, ndim: int) -> Array:
    """A spec constant (number or per-channel list) shaped to broadcast over the last axis
    without rank promotion."""
    arr = np.asarray(value, np.float32).reshape(-1)
    return jnp.asarray(arr.reshape((1,) * (ndim - 1) + (arr.size,)))


def _pool(layer: dict, x: Array) -> Array:
    """Max or average pooling of x (B, H, W, C) with explicit padding."""
    (kh, kw), (sh, sw) = layer["kernel"], layer["stride"]
    _, height, width, channels = x.shape
    tiles = ((kh, kw) == (sh, sw) and not any(p for pad in layer["padding"] for p in pad)
             and height % kh == 0 and width % kw == 0)
    if tiles:  # non-overlapping tiles: a reshape and a reduction (the same values; exports to ONNX
        # with a symbolic batch, which reduce_window's NHWC MaxPool does not run in onnxruntime)
        t = jnp.reshape(x, (x.shape[0], height // kh, kh, width // kw, kw, channels))
        return jnp.max(t, axis=(2, 4)) if layer["type"] == "maxpool" else jnp.mean(t, axis=(2, 4))
    window = (1, *layer["kernel"], 1)
    strides = (1, *layer["stride"], 1)
    pads = ((0, 0), *map(tuple, layer["padding"]), (0, 0))
    if layer["type"] == "maxpool":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pads)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pads)
    if layer["count_include_pad"]:
        return total / float(np.prod(layer["kernel"]))
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pads)
    return total / count


def _flatten(layer: dict, x: Array) -> Array:
    if x.ndim == 2:
        return x
    if layer["order"] == "chw":
        x = jnp.transpose(x, (0, 3, 1, 2))
    return x.reshape(x.shape[0], -1)


def _stateless(layer: dict, x: Array) -> Array:
    kind = layer["type"]
    if kind in ("maxpool", "avgpool"):
        return _pool(layer, x)
    if kind == "global_avgpool":
        return jnp.mean(x, axis=(1, 2), keepdims=True)
    if kind == "flatten":
        return _flatten(layer, x)
    if kind == "scale_shift":
        return x * _const(layer["scale"], x.ndim) + _const(layer["shift"], x.ndim)
    return x  # "activation": the function is applied by the caller


# ----------------------------------------------------------------------------- the module


class Network(nnx.Module):
    """A teacher network run from its spec: x (B, H*W*C) -> logits (B, n_classes).

    Param-holding layers are attributes named by layer name: ``nnx.Linear`` (dense),
    ``nnx.Conv`` (conv, explicit padding pairs), ``nnx.BatchNorm`` (scale, bias: nnx.Param;
    mean, var: nnx.BatchStat) and ``nnx.Dropout``, so ``nnx.state`` paths read
    ``("hidden_0", "kernel")``. The module starts in evaluation mode (BatchNorm uses its
    running statistics, Dropout is the identity); ``model.train()`` switches BatchNorm to batch
    statistics (updating the running ones) and turns Dropout on, ``model.eval()`` back.
    Weights start from ``params`` ({layer: {param: array}}, see :func:`load_params`) when
    given (e.g. an importer's output), else from flax's default initialisers (``rngs``,
    default ``nnx.Rngs(0)``). Data layout inside is NHWC; see the module docstring for the spec.

    Raises:
        DistillError: when ``spec`` is invalid (see :func:`check_spec`) or ``params`` do not
            fit it (see :func:`load_params`).
    """

    def __init__(self, spec: dict, *, rngs: nnx.Rngs | None = None, params: dict | None = None):
        spec, shapes = check_spec(spec)
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self._spec_json = json.dumps(spec)  # static (hashable) attribute of the graphdef
        inp = spec["input"]
        self._input_shape = (inp["height"], inp["width"], inp["channels"])
        self._n_classes = int(shapes[-1][0])
        for layer in spec["layers"]:
            module = _make_module(layer, rngs, random_init=params is None)
            if module is not None:
                setattr(self, layer["name"], module)
        if params is not None:
            load_params(self, params)

    @property
    def spec(self) -> dict:
        """The canonical spec (a fresh dict on every access)."""
        return json.loads(self._spec_json)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the image the flat input vector is reshaped to."""
        return self._input_shape

    @property
    def n_features(self) -> int:
        """H * W * C, the length of the flat input vector."""
        return int(np.prod(self._input_shape))

    @property
    def n_classes(self) -> int:
        """Width of the logits."""
        return self._n_classes

    @property
    def activation_names(self) -> tuple[str, ...]:
        """The keys :meth:`activations` returns, in forward order."""
        names: list[str] = []
        for layer in self.spec["layers"]:
            if layer["type"] in _FUSES and layer["activation"] is not None:
                names.append(f"{layer['name']}.pre")
            names.append(layer["name"])
        return tuple(names) if names[-1] == "logits" else (*names, "logits")

    def __call__(self, x: Array) -> Array:
        """Logits (B, n_classes) of x (B, H*W*C).

        Raises:
            DistillError: x is not (B, H*W*C).
        """
        return self._forward(x, None)

    def activations(self, x: Array) -> dict[str, Array]:
        """Every layer's output by name in forward order (images NHWC (B, H, W, C), flat ones
        (B, F)), ``<name>.pre`` before a fused activation, and ``logits`` (B, n_classes).

        Raises:
            DistillError: x is not (B, H*W*C).
        """
        out: dict[str, Array] = {}
        out["logits"] = self._forward(x, out)
        return {k: out[k] for k in self.activation_names}

    def _forward(self, x: Array, record: dict | None) -> Array:
        spec = self.spec
        h, w, c = self._input_shape
        if x.ndim != 2 or x.shape[1] != h * w * c:
            raise DistillError(f"the teacher expects inputs (B, {h * w * c}) (images {h}x{w}x{c}), got {tuple(x.shape)}")
        inp = spec["input"]
        y = x.reshape(x.shape[0], h, w, c)
        y = (y - _const(inp["mean"], 4)) / _const(inp["std"], 4)
        for layer in spec["layers"]:
            name = layer["name"]
            y = getattr(self, name)(y) if hasattr(self, name) else _stateless(layer, y)
            act = layer.get("activation")
            if layer["type"] in _FUSES and act is not None and record is not None:
                record[f"{name}.pre"] = y
            y = _activation_fn(act)(y)
            if record is not None:
                record[name] = y
        return y


def _make_module(layer: dict, rngs: nnx.Rngs, random_init: bool) -> nnx.Module | None:
    """The flax module of a param-holding layer (None for the others). Without random_init the
    weights start at zero (cheap: no random kernels to compile) for params to overwrite."""
    kind = layer["type"]
    init = {} if random_init else {"kernel_init": nnx.initializers.zeros_init()}
    if kind == "dense":
        return nnx.Linear(layer["in_features"], layer["out_features"], use_bias=layer["bias"], rngs=rngs, **init)
    if kind == "conv":
        return nnx.Conv(layer["in_channels"], layer["out_channels"], tuple(layer["kernel"]),
                        tuple(layer["stride"]), padding=tuple(tuple(p) for p in layer["padding"]),
                        use_bias=layer["bias"], rngs=rngs, **init)
    if kind == "batchnorm":
        return nnx.BatchNorm(layer["features"], use_running_average=True, momentum=layer["momentum"],
                             epsilon=layer["eps"], rngs=rngs)
    if kind == "dropout":
        return nnx.Dropout(layer["rate"], deterministic=True, rngs=rngs)
    return None


def _state(model: Network) -> nnx.State:
    return nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))


def load_params(model: Network, params: dict) -> None:
    """Copy ``params`` {layer name: {param: array}} into ``model`` (in place), as float32.

    Names and shapes follow :func:`param_shapes` (batchnorm mean/var go to its BatchStats).

    Raises:
        DistillError: a missing or unexpected layer/param key (named), a shape mismatch (the
            key and both shapes), or a non-finite value.
    """
    if not isinstance(model, Network):
        raise DistillError(f"load_params expects a distill Network, got {type(model).__name__}")
    state = _state(model)
    want = nnx.to_pure_dict(state)
    if not isinstance(params, dict):
        raise DistillError(f"params must be a dict {{layer: {{param: array}}}}, got {type(params).__name__}")
    missing = [f"{k}.{p}" for k, v in want.items() for p in v if p not in params.get(k, {})]
    if missing:
        raise DistillError(f"params lack {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                           + "; give every array the network's layers hold")
    bad = [k for k, v in params.items() if not isinstance(v, dict)]
    if bad:
        raise DistillError(f"params[{bad[0]!r}] must be a dict {{param: array}}, got {type(params[bad[0]]).__name__}")
    extra = [f"{k}.{p}" for k, v in params.items() for p in v if p not in want.get(k, {})]
    if extra:
        raise DistillError(f"params hold unexpected {extra[0]!r}; the network's arrays are "
                           f"{', '.join(f'{k}.{p}' for k, v in want.items() for p in v)}")
    new = {}
    for k, v in want.items():
        new[k] = {}
        for p, ref in v.items():
            arr = np.asarray(params[k][p])
            if arr.shape != tuple(ref.shape):
                raise DistillError(f"param {k}.{p} has shape {_fmt(arr.shape)} but the network "
                                   f"expects {_fmt(tuple(ref.shape))}")
            if not np.all(np.isfinite(arr)):
                raise DistillError(f"param {k}.{p} holds NaN or infinite values")
            new[k][p] = jnp.asarray(arr, jnp.float32)
    nnx.replace_by_pure_dict(state, new)
    nnx.update(model, state)


# ----------------------------------------------------------------------------- building specs


def _fuse_and_drop(raw: list[dict], notes: list[str]) -> list[dict]:
    """Fuse activation layers into a preceding dense/conv/batchnorm with none; drop a final
    raw {"type": "softmax", "what", "source"} with a note."""
    out: list[dict] = []
    for i, layer in enumerate(raw):
        if layer["type"] == "softmax":
            if i != len(raw) - 1:
                raise DistillError(f"{layer.get('what', 'softmax')} (source {layer.get('source')}) is not "
                                   "the last layer; only a final softmax can be dropped")
            notes.append(SOFTMAX_NOTE.format(what=layer.get("what", "softmax"), source=layer.get("source")))
            continue
        prev = out[-1] if out else None
        if layer["type"] == "activation" and prev is not None and prev["type"] in _FUSES \
                and prev.get("activation") is None:
            prev["activation"] = layer["activation"]
            continue
        out.append(dict(layer))
    return out


def _name_layers(layers: list[dict]) -> None:
    counts: dict[str, int] = {}
    for i, layer in enumerate(layers):
        kind = layer["type"]
        if kind == "dense" and i == len(layers) - 1:
            layer["name"] = "logits"
            continue
        prefix = _PREFIX[kind]
        layer["name"] = f"{prefix}_{counts.get(prefix, 0)}"
        counts[prefix] = counts.get(prefix, 0) + 1


def assemble_spec(input_block: dict, raw_layers: Sequence[dict],
                  notes: Sequence[str] = ()) -> tuple[dict, dict]:
    """Build (spec, params) from importer output: fuse, drop a final softmax, name, check.

    ``raw_layers`` are spec layers without names, each optionally holding ``"params"``
    ({param: array}, see :func:`param_shapes`); a ``{"type": "activation"}`` right after a
    dense/conv/batchnorm without activation is fused into it; a final
    ``{"type": "softmax", "what": ..., "source": ...}`` is dropped with a note. Names follow
    hidden_i / logits (the last layer when it is dense) / conv_i / bn_i / pool_i / flatten_i /
    dropout_i / act_i / scale_shift_i.

    Raises:
        DistillError: the spec check fails (see :func:`check_spec`) or an array's shape does
            not fit its layer (key and both shapes named).
    """
    notes = list(notes)
    layers = _fuse_and_drop([dict(layer) for layer in raw_layers], notes)
    _name_layers(layers)
    arrays = {}
    for layer in layers:
        held = layer.pop("params", None)
        if held:
            arrays[layer["name"]] = {k: np.asarray(v, np.float32) for k, v in held.items()}
    spec, _ = check_spec({"kind": "network", "input": input_block, "layers": layers,
                          **({"notes": notes} if notes else {})})
    for name, shapes in param_shapes(spec).items():
        for key, shape in shapes.items():
            have = arrays.get(name, {}).get(key)
            if have is not None and have.shape != shape:
                layer = next(lay for lay in spec["layers"] if lay["name"] == name)
                raise DistillError(f"{_label(layer)}: {key} has shape {_fmt(have.shape)} but the layer "
                                   f"needs {_fmt(shape)}")
    return spec, arrays


def _image(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(image_shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or not all(_is_int(a) and a >= 1 for a in shape):
        raise DistillError(f"image_shape must be (H, W) or (H, W, C) with integers >= 1, got {image_shape!r}")
    return tuple(int(a) for a in shape)


def _input_block(shape: tuple[int, int, int], mean=None, std=None) -> dict:
    c = shape[2]
    mean = [0.0] * c if mean is None else list(np.broadcast_to(np.asarray(mean, float), (c,)))
    std = [1.0] * c if std is None else list(np.broadcast_to(np.asarray(std, float), (c,)))
    return {"height": shape[0], "width": shape[1], "channels": c,
            "mean": [float(a) for a in mean], "std": [float(a) for a in std]}


def mlp_spec(in_features: int, hidden: Sequence[int], n_classes: int, activation: Any = "relu",
             image_shape: Sequence[int] | None = None) -> dict:
    """Spec of an MLP: flatten_0 (hwc), hidden_i (dense + activation), logits (dense).

    ``image_shape`` is (H, W) or (H, W, C) with H*W*C == in_features; None means (1,
    in_features, 1). The layer names match distill's former MLP teacher (hidden_0, ...,
    logits), so its params load unchanged.

    Raises:
        DistillError: a width is not a positive integer, the activation is unknown, or
            image_shape does not hold in_features pixels.
    """
    if not _is_int(in_features) or in_features < 1:
        raise DistillError(f"mlp_spec in_features must be an integer >= 1, got {in_features!r}")
    shape = _image(image_shape if image_shape is not None else (1, int(in_features)))
    if int(np.prod(shape)) != in_features:
        raise DistillError(f"mlp_spec image_shape {shape} holds {int(np.prod(shape))} values, not "
                           f"in_features={in_features}")
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise DistillError(f"mlp_spec hidden must be a list of layer widths, got {hidden!r}")
    widths = [int(in_features), *hidden, n_classes]
    layers: list[dict] = [{"type": "flatten", "order": "hwc"}]
    for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
        last = i == len(widths) - 2
        layers.append({"type": "dense", "in_features": d_in, "out_features": d_out, "bias": True,
                       "activation": None if last else activation})
    return assemble_spec(_input_block(shape), layers)[0]


def _same_pads(k: int) -> list[int]:
    """Stride-1 "same" padding of a k-wide kernel; the extra one (even k) at the end (TF, PyTorch)."""
    return [(k - 1) // 2, k - 1 - (k - 1) // 2]


def _conv_block(block: Any, c_in: int, defaults: dict, index: int) -> list[dict]:
    """The raw layers of one cnn_spec block (conv [+ batchnorm] + activation [+ pool])."""
    opts = dict(defaults)
    if isinstance(block, dict):
        extra = sorted(set(block) - {"channels", *defaults})
        if extra:
            raise DistillError(f"cnn_spec block #{index} has unknown option {extra[0]!r}; options are "
                               f"channels, {', '.join(defaults)}")
        opts.update(block)
        block = block.get("channels")
    if not _is_int(block) or block < 1:
        raise DistillError(f"cnn_spec block #{index} needs channels (an integer >= 1), got {block!r}")
    k, pad, bn = opts["kernel"], opts["padding"], opts["batchnorm"]
    if not _is_int(k) or k < 1:
        raise DistillError(f"cnn_spec block #{index} kernel must be an integer >= 1, got {k!r}")
    if pad not in ("same", "valid") and not (_is_int(pad) and pad >= 0):
        raise DistillError(f"cnn_spec block #{index} padding must be 'same', 'valid' or an integer >= 0, got {pad!r}")
    pads = _same_pads(k) if pad == "same" else [0, 0] if pad == "valid" else [pad, pad]
    layers = [{"type": "conv", "in_channels": c_in, "out_channels": block, "kernel": [k, k],
               "stride": [1, 1], "padding": [pads, pads], "bias": not bn,
               "activation": None if bn else opts["activation"]}]
    if bn:
        layers.append({"type": "batchnorm", "features": block, "eps": 1e-5, "momentum": 0.9,
                       "activation": opts["activation"]})
    if opts["pool"] not in (None, "max", "avg"):
        raise DistillError(f"cnn_spec block #{index} pool must be 'max', 'avg' or null, got {opts['pool']!r}")
    if opts["pool"] is not None:
        s = opts["pool_size"]
        if not _is_int(s) or s < 1:
            raise DistillError(f"cnn_spec block #{index} pool_size must be an integer >= 1, got {s!r}")
        pool = {"type": f"{opts['pool']}pool", "kernel": [s, s], "stride": [s, s], "padding": [[0, 0], [0, 0]]}
        if opts["pool"] == "avg":
            pool["count_include_pad"] = True
        layers.append(pool)
    return layers


def _out_width(input_block: dict, layers: list[dict]) -> int:
    """Features after the (unnamed, flat-ending) raw layers: traced with provisional names."""
    named = [dict(layer, name=f"layer_{i}") for i, layer in enumerate(layers)]
    return int(check_spec({"kind": "network", "input": input_block, "layers": named})[1][-1][0])


def cnn_spec(image_shape: Sequence[int], n_classes: int, *, blocks: Sequence[Any] = (32, 64),
             dense: Sequence[int] = (128,), activation: Any = "relu", kernel: int = 3,
             padding: Any = "same", batchnorm: bool = False, pool: str | None = "max",
             pool_size: int = 2, dropout: float = 0.0, mean=None, std=None) -> dict:
    """Spec of a plain CNN: conv blocks, flatten_0 (hwc), a dense head, logits.

    Each block is conv (stride 1) [+ batchnorm] + activation [+ pool (kernel = stride =
    pool_size)]; a block is its channel count or a mapping overriding any of kernel, padding
    ("same" | "valid" | int), batchnorm, pool ("max" | "avg" | null), pool_size, activation.
    ``dropout`` > 0 adds a dropout layer after each hidden dense layer. With batchnorm the conv
    has no bias. ``mean``/``std`` normalise the input (a number or one per channel).

    Raises:
        DistillError: a bad option (named) or a shape that does not fit (e.g. pooling a 1x1 map).
    """
    shape = _image(image_shape)
    defaults = {"kernel": kernel, "padding": padding, "batchnorm": batchnorm, "pool": pool,
                "pool_size": pool_size, "activation": activation}
    layers: list[dict] = []
    c = shape[2]
    for i, block in enumerate(blocks):
        block_layers = _conv_block(block, c, defaults, i)
        layers += block_layers
        c = block_layers[0]["out_channels"]
    layers.append({"type": "flatten", "order": "hwc"})
    width = _out_width(_input_block(shape, mean, std), layers)
    for d_out in [*dense, n_classes][:-1]:
        layers.append({"type": "dense", "in_features": width, "out_features": d_out, "bias": True,
                       "activation": activation})
        if dropout:
            layers.append({"type": "dropout", "rate": dropout})
        width = d_out
    layers.append({"type": "dense", "in_features": width, "out_features": n_classes, "bias": True,
                   "activation": None})
    return assemble_spec(_input_block(shape, mean, std), layers)[0]


def lenet5_spec(n_classes: int = 10, activation: Any = "tanh",
                image_shape: Sequence[int] = (28, 28, 1), pool: str = "avg") -> dict:
    """LeNet-5 (LeCun et al. 1998) adapted to 28x28 inputs: conv 6@5x5 padding 2 -> act ->
    pool 2 -> conv 16@5x5 -> act -> pool 2 -> dense 120 -> 84 -> n_classes.

    The padding of the first conv turns 28x28 into the paper's 32x32 geometry, so the second
    conv sees 14x14 and the head 16*5*5 = 400 features.

    Raises:
        DistillError: a bad activation, pool or image_shape (see :func:`cnn_spec`).
    """
    blocks = [{"channels": 6, "kernel": 5, "padding": 2}, {"channels": 16, "kernel": 5, "padding": "valid"}]
    return cnn_spec(image_shape, n_classes, blocks=blocks, dense=(120, 84), activation=activation,
                    pool=pool, pool_size=2)
