"""Import a Keras 3 model saved as ``.keras`` into a distill network (spec, params).

The model must be a chain of layers (a ``keras.Sequential``, possibly nested, or a functional
model whose layers each feed the next) from one image input to the logits, of: InputLayer,
Rescaling (-> ``scale_shift``), Conv2D, Dense, BatchNormalization, MaxPooling2D,
AveragePooling2D, GlobalAveragePooling2D, Flatten, Reshape to a flat vector, Dropout,
Activation, ReLU, LeakyReLU, ELU, Softmax. Layer activations are fused; a final softmax
(a Dense's activation, an Activation or a Softmax layer) is dropped with a note.

Conventions (keras.io/api/layers; Keras 3 is NHWC with ``channels_last``, like the spec): Dense
kernels are (in, out) and Conv2D kernels HWIO already; ``padding="same"`` pads
total = max((ceil(n / s) - 1) * s + k - n, 0), the extra row/column at the bottom/right (as
TensorFlow); "same" average pooling excludes the padding from the mean; Flatten is order
"hwc"; BatchNormalization momentum has the flax meaning already. Keras activations keep
Keras's defaults: the ``leaky_relu`` activation's slope is 0.2, the LeakyReLU layer's 0.3.

Keras is an optional dependency, imported lazily (with ``KERAS_BACKEND=jax`` unless set).
The file is read with ``keras.saving.load_model(path, compile=False, safe_mode=True)``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from distill.errors import DistillError
from distill.teachers.network import _raw_output_shape, assemble_spec

__all__ = ["import_keras", "SUPPORTED_LAYERS"]

_ACTIVATIONS: dict[str, Any] = {
    "linear": None, "relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "silu": "silu", "swish": "silu",
    "gelu": "gelu", "elu": {"name": "elu", "alpha": 1.0},
    "leaky_relu": {"name": "leaky_relu", "negative_slope": 0.2},
}
_SOFTMAX = ("softmax", "log_softmax")


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except ImportError:
        raise DistillError("importing a .keras teacher needs Keras 3: pip install keras") from None
    if not hasattr(keras, "saving") or int(keras.__version__.split(".")[0]) < 3:
        raise DistillError(f"importing a .keras teacher needs Keras 3, found {keras.__version__}: pip install -U keras")
    return keras


def _one_line(err: BaseException, limit: int = 200) -> str:
    return (" ".join(str(err).split()) or type(err).__name__)[:limit]


def _load(path: str | Path):
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth", ".pkl", ".ckpt"):
        raise DistillError(f"{path} is a pickle file; save the Keras model with model.save('model.keras')")
    if suffix in (".h5", ".hdf5"):
        raise DistillError(f"{path} is a legacy HDF5 Keras file; load it once in Keras and re-save it with "
                           "model.save('model.keras')")
    if suffix != ".keras":
        raise DistillError(f"{path}: a Keras teacher must be a .keras file (model.save('model.keras'))")
    if not path.is_file():
        raise DistillError(f"Keras model {path} does not exist")
    keras = _keras()
    try:
        return path, keras, keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as err:  # unknown custom objects, unsafe lambdas, corrupt archives
        raise DistillError(f"cannot load {path} with Keras ({_one_line(err)}); save a model built from "
                           "standard Keras layers with model.save('model.keras')") from None


# ----------------------------------------------------------------------------- the chain of layers


def _chain(keras, model, path: Path) -> list:
    """The model's layers in forward order (InputLayers dropped, nested Sequentials expanded)."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise DistillError(f"{path} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                           "distill needs one image input and one logits output")
    layers = [layer for layer in model.layers]
    if not isinstance(model, keras.Sequential):
        for prev, layer in zip(layers[:-1], layers[1:]):
            try:
                ok = len(layer._inbound_nodes) == 1 and layer.input is prev.output
            except (AttributeError, ValueError):
                ok = False
            if not ok:
                raise DistillError(f"layer {layer.name!r} ({type(layer).__name__}) does not simply take the output "
                                   f"of {prev.name!r}: only chains of layers can be imported")
    out = []
    for layer in layers:
        if isinstance(layer, keras.Sequential):
            out += _chain(keras, layer, path)
        elif type(layer).__name__ != "InputLayer":
            out.append(layer)
    return out


def _input(model, image_shape: Sequence[int], path: Path) -> tuple[str, tuple[int, int, int]]:
    shape = tuple(image_shape)
    if len(shape) not in (2, 3):
        raise DistillError(f"image_shape must be (H, W) or (H, W, C), got {image_shape!r}")
    h, w, c = shape[0], shape[1], shape[2] if len(shape) == 3 else None
    dims = tuple(model.inputs[0].shape)[1:]
    if len(dims) == 3 and tuple(dims[:2]) == (h, w) and dims[2] and c in (None, dims[2]):
        return "image", (h, w, int(dims[2]))
    if len(dims) == 2 and tuple(dims) == (h, w) and c in (None, 1):
        return "image", (h, w, 1)
    if len(dims) == 1 and dims[0] and dims[0] % (h * w) == 0 and c in (None, dims[0] // (h * w)):
        return "flat", (h, w, int(dims[0]) // (h * w))
    raise DistillError(f"{path}: the model's input has shape (None, {', '.join(map(str, dims))}) but the data's "
                       f"images are {h}x{w}{'x' + str(c) if c else ''}; fix the dataset/downsample or the model")


# ----------------------------------------------------------------------------- layers


def _np(keras, v) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(v), np.float32)


def _where(layer) -> str:
    return f"Keras layer {layer.name!r} ({type(layer).__name__})"


def _activation(layer, name: Any, last: bool) -> list[dict]:
    """Raw layers for an activation given by name: [], [activation], or [softmax] when last."""
    if isinstance(name, dict):  # a serialised activation object
        name = name.get("config", {}).get("name", name.get("class_name"))
    if name in _SOFTMAX:
        if not last:
            raise DistillError(f"{_where(layer)}: a {name} activation inside the network is not supported; "
                               "only a final softmax (dropped: distillation needs the logits)")
        return [{"type": "softmax", "what": f"{name} activation"}]
    if name not in _ACTIVATIONS:
        raise DistillError(f"{_where(layer)}: activation {name!r} is not supported; use one of "
                           f"{', '.join(_ACTIVATIONS)} (or softmax last)")
    act = _ACTIVATIONS[name]
    return [] if act is None else [{"type": "activation", "activation": act}]


def _only(layer, cfg: dict, key: str, allowed: tuple) -> None:
    v = cfg.get(key, allowed[0])
    v = tuple(v) if isinstance(v, list) else v
    if v not in allowed:
        raise DistillError(f"{_where(layer)}: {key}={v!r} is not supported ({key} {allowed[0]!r} only)")


def _same(shape: tuple, kernel: list[int], stride: list[int]) -> list[list[int]]:
    """TensorFlow/Keras "same": output ceil(n / s), the odd padding row/column at the end."""
    pads = []
    for n, k, s in zip(shape[:2], kernel, stride):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads.append([total // 2, total - total // 2])
    return pads


def _window(layer, cfg: dict, shape: tuple, kernel: list[int], stride: list[int]) -> list[list[int]]:
    _only(layer, cfg, "data_format", ("channels_last",))
    if cfg["padding"] == "same" and shape is not None and len(shape) == 3:
        return _same(shape, kernel, stride)
    if cfg["padding"] in ("same", "valid"):  # (a misfit shape is reported by assemble_spec)
        return [[0, 0], [0, 0]]
    raise DistillError(f"{_where(layer)}: padding {cfg['padding']!r} is not supported (same or valid)")


def _dense(keras, layer, cfg, shape, last) -> list[dict]:
    params = {"kernel": _np(keras, layer.kernel)}
    if cfg["use_bias"]:
        params["bias"] = _np(keras, layer.bias)
    d_in, d_out = params["kernel"].shape
    return [{"type": "dense", "in_features": int(d_in), "out_features": int(d_out), "bias": bool(cfg["use_bias"]),
             "activation": None, "params": params}, *_activation(layer, cfg["activation"], last)]


def _conv(keras, layer, cfg, shape, last) -> list[dict]:
    _only(layer, cfg, "dilation_rate", ((1, 1),))
    _only(layer, cfg, "groups", (1,))
    kernel, stride = [int(k) for k in cfg["kernel_size"]], [int(s) for s in cfg["strides"]]
    params = {"kernel": _np(keras, layer.kernel)}
    if cfg["use_bias"]:
        params["bias"] = _np(keras, layer.bias)
    k = params["kernel"]
    return [{"type": "conv", "in_channels": int(k.shape[2]), "out_channels": int(k.shape[3]), "kernel": kernel,
             "stride": stride, "padding": _window(layer, cfg, shape, kernel, stride), "bias": bool(cfg["use_bias"]),
             "activation": None, "params": params}, *_activation(layer, cfg["activation"], last)]


def _batchnorm(keras, layer, cfg, shape, last) -> list[dict]:
    axis = cfg["axis"]
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if axis != -1 and (shape is None or axis != len(shape)):
        raise DistillError(f"{_where(layer)}: axis={cfg['axis']!r} is not supported (the channel axis, -1, only)")
    _only(layer, cfg, "renorm", (False,))
    mean, var = _np(keras, layer.moving_mean), _np(keras, layer.moving_variance)
    n = int(mean.size)
    scale = _np(keras, layer.gamma) if cfg["scale"] else np.ones(n, np.float32)
    bias = _np(keras, layer.beta) if cfg["center"] else np.zeros(n, np.float32)
    return [{"type": "batchnorm", "features": n, "eps": float(cfg["epsilon"]), "momentum": float(cfg["momentum"]),
             "activation": None, "params": {"scale": scale, "bias": bias, "mean": mean, "var": var}}]


def _pool(keras, layer, cfg, shape, last) -> list[dict]:
    kernel = [int(k) for k in cfg["pool_size"]]
    stride = [int(s) for s in (cfg["strides"] or cfg["pool_size"])]
    pads = _window(layer, cfg, shape, kernel, stride)
    if type(layer).__name__ == "MaxPooling2D":
        return [{"type": "maxpool", "kernel": kernel, "stride": stride, "padding": pads}]
    return [{"type": "avgpool", "kernel": kernel, "stride": stride, "padding": pads, "count_include_pad": False}]


def _global_pool(keras, layer, cfg, shape, last) -> list[dict]:
    _only(layer, cfg, "data_format", ("channels_last",))
    keep = [] if cfg.get("keepdims") else [{"type": "flatten", "order": "hwc"}]
    return [{"type": "global_avgpool"}, *keep]


def _flatten(keras, layer, cfg, shape, last) -> list[dict]:
    _only(layer, cfg, "data_format", ("channels_last", None))
    return [{"type": "flatten", "order": "hwc"}]


def _reshape(keras, layer, cfg, shape, last) -> list[dict]:
    target = tuple(cfg["target_shape"])
    if len(target) != 1 or (shape is not None and target[0] not in (-1, int(np.prod(shape)))):
        raise DistillError(f"{_where(layer)}: Reshape to {target} is not supported (only to a flat vector)")
    return [{"type": "flatten", "order": "hwc"}]


def _rescaling(keras, layer, cfg, shape, last) -> list[dict]:
    def const(v):
        arr = np.asarray(v, np.float64).reshape(-1)
        return float(arr[0]) if arr.size == 1 else [float(a) for a in arr]
    return [{"type": "scale_shift", "scale": const(cfg["scale"]), "shift": const(cfg["offset"])}]


def _relu(keras, layer, cfg, shape, last) -> list[dict]:
    if cfg.get("max_value") is not None or cfg.get("threshold", 0.0) != 0.0:
        raise DistillError(f"{_where(layer)}: max_value / threshold are not supported (plain or leaky ReLU only)")
    slope = float(cfg.get("negative_slope", 0.0))
    act: Any = "relu" if slope == 0.0 else {"name": "leaky_relu", "negative_slope": slope}
    return [{"type": "activation", "activation": act}]


def _simple(kind: str) -> Callable:
    def convert(keras, layer, cfg, shape, last) -> list[dict]:
        if kind == "dropout":
            return [{"type": "dropout", "rate": float(cfg["rate"])}]
        if kind == "leaky_relu":
            slope = cfg.get("negative_slope", cfg.get("alpha", 0.3))
            return [{"type": "activation", "activation": {"name": "leaky_relu", "negative_slope": float(slope)}}]
        if kind == "elu":
            return [{"type": "activation", "activation": {"name": "elu", "alpha": float(cfg.get("alpha", 1.0))}}]
        if kind == "softmax":
            return _activation(layer, "softmax", last)
        return _activation(layer, cfg["activation"], last)  # Activation layer
    return convert


_CONVERT: dict[str, Callable] = {
    "Dense": _dense, "Conv2D": _conv, "BatchNormalization": _batchnorm, "MaxPooling2D": _pool,
    "AveragePooling2D": _pool, "GlobalAveragePooling2D": _global_pool, "Flatten": _flatten,
    "Reshape": _reshape, "Rescaling": _rescaling, "ReLU": _relu, "Dropout": _simple("dropout"),
    "LeakyReLU": _simple("leaky_relu"), "ELU": _simple("elu"), "Softmax": _simple("softmax"),
    "Activation": _simple("activation"),
}
#: The Keras layer classes the importer understands (besides InputLayer and nested Sequentials).
SUPPORTED_LAYERS = tuple(_CONVERT)


def import_keras(path: str | Path, image_shape: Sequence[int]) -> tuple[dict, dict]:
    """Convert the Keras 3 model saved at ``path`` (.keras) into a distill network (spec, params).

    ``image_shape``: the dataset's (H, W) or (H, W, C); the model's input must be
    (None, H, W, C), (None, H, W) or flat (None, H*W*C). Supported layers:
    :data:`SUPPORTED_LAYERS` (see the module docstring). Returns ``(spec, params)`` for
    :class:`distill.teachers.network.Network` and :func:`~distill.teachers.network.load_params`.

    Raises:
        DistillError: one line for a missing, pickle, HDF5 or unloadable file, Keras 3 not
            installed, an input shape that does not fit image_shape, a layer or option outside
            the supported set (named), a model that is not a chain, or shapes that do not chain.
    """
    path, keras, model = _load(path)
    layers = _chain(keras, model, path)
    layout, image = _input(model, image_shape, path)
    raw: list[dict] = []
    shape: tuple | None = image
    if layout == "flat":
        raw.append({"type": "flatten", "order": "hwc", "source": "input"})
        shape = (int(np.prod(image)),)
    for i, layer in enumerate(layers):
        kind = type(layer).__name__
        if kind not in _CONVERT:
            raise DistillError(f"{_where(layer)} is not supported; supported layers: {', '.join(SUPPORTED_LAYERS)}")
        for new in _CONVERT[kind](keras, layer, layer.get_config(), shape, i == len(layers) - 1):
            new["source"] = layer.name
            if new["type"] != "softmax":
                shape = _raw_output_shape(new, shape, len(raw))
            raw.append(new)
    block = {"height": image[0], "width": image[1], "channels": image[2],
             "mean": [0.0] * image[2], "std": [1.0] * image[2]}
    return assemble_spec(block, raw)
