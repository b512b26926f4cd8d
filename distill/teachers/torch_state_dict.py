"""Import a PyTorch ``nn.Sequential`` from its state_dict (.safetensors or .npz) and an arch YAML.

The arch mirrors the Sequential, one entry per module, written as PyTorch names the class,
with its constructor arguments positional (a list, or one bare value), by keyword (a mapping,
PyTorch's argument names) or absent::

    input: {channels: 1, mean: 0.1307, std: 0.3081}      # optional; height/width default
    layers:                                               # to the dataset's image shape
      - Conv2d: {in_channels: 1, out_channels: 32, kernel_size: 3, padding: 1}
      - BatchNorm2d: 32
      - ReLU
      - MaxPool2d: 2
      - Flatten
      - Dropout: 0.3
      - Linear: [6272, 10]

State-dict keys are ``<index>.<param>`` as PyTorch writes them for a Sequential. Layouts are
converted to distill's network spec (:mod:`distill.teachers.network`): Linear weight
(out, in) -> kernel (in, out); Conv2d weight (O, I, kh, kw) -> HWIO (kh, kw, I, O);
BatchNorm weight/bias/running_mean/running_var -> scale/bias/mean/var with momentum
1 - PyTorch's momentum (flax convention); num_batches_tracked is ignored. PyTorch flattens
NCHW tensors as C, H, W, so Flatten becomes ``flatten`` with order "chw".

Pickle-based checkpoints (.pt, .pth, .pkl, .ckpt, .bin) are refused: they can run code when
loaded. Arrays are read with ``safetensors.numpy.load_file`` or ``np.load(allow_pickle=False)``;
the YAML with ``yaml.safe_load``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from distill.errors import DistillError
from distill.teachers.network import _same_pads, assemble_spec

__all__ = ["import_torch_state_dict", "read_state_dict", "SUPPORTED_MODULES"]

_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt", ".bin")
_REQ = object()  # marks a required constructor argument

# PyTorch constructor signatures (argument order and defaults), torch.nn 2.x.
_SIGNATURES: dict[str, tuple[tuple[str, Any], ...]] = {
    "Linear": (("in_features", _REQ), ("out_features", _REQ), ("bias", True)),
    "Conv2d": (("in_channels", _REQ), ("out_channels", _REQ), ("kernel_size", _REQ), ("stride", 1),
               ("padding", 0), ("dilation", 1), ("groups", 1), ("bias", True), ("padding_mode", "zeros")),
    "BatchNorm1d": (("num_features", _REQ), ("eps", 1e-5), ("momentum", 0.1), ("affine", True),
                    ("track_running_stats", True)),
    "BatchNorm2d": (("num_features", _REQ), ("eps", 1e-5), ("momentum", 0.1), ("affine", True),
                    ("track_running_stats", True)),
    "ReLU": (("inplace", False),),
    "Tanh": (),
    "Sigmoid": (),
    "GELU": (("approximate", "none"),),
    "LeakyReLU": (("negative_slope", 0.01), ("inplace", False)),
    "ELU": (("alpha", 1.0), ("inplace", False)),
    "SiLU": (("inplace", False),),
    "MaxPool2d": (("kernel_size", _REQ), ("stride", None), ("padding", 0), ("dilation", 1),
                  ("return_indices", False), ("ceil_mode", False)),
    "AvgPool2d": (("kernel_size", _REQ), ("stride", None), ("padding", 0), ("ceil_mode", False),
                  ("count_include_pad", True), ("divisor_override", None)),
    "AdaptiveAvgPool2d": (("output_size", _REQ),),
    "Flatten": (("start_dim", 1), ("end_dim", -1)),
    "Dropout": (("p", 0.5), ("inplace", False)),
    "Identity": (),
    "Softmax": (("dim", None),),
    "LogSoftmax": (("dim", None),),
}
#: The torch.nn module names the importer understands.
SUPPORTED_MODULES = tuple(_SIGNATURES)


# ----------------------------------------------------------------------------- reading files


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a state_dict saved as .safetensors or .npz, by key.

    Raises:
        DistillError: a pickle file (.pt/.pth/.pkl/.ckpt/.bin), another suffix, a missing or
            unreadable file, or an .npz holding pickled objects.
    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        raise DistillError(f"{path} is a pickle file; save the state_dict with safetensors "
                           "(safetensors.torch.save_file) or export ONNX (torch.onnx.export)")
    if suffix not in (".safetensors", ".npz"):
        raise DistillError(f"{path}: unsupported weights file {suffix or '(no suffix)'!r}; save the "
                           "state_dict as .safetensors (safetensors.torch.save_file) or .npz")
    if not path.is_file():
        raise DistillError(f"weights file {path} does not exist")
    try:
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            return dict(load_file(str(path)))
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as err:  # corrupt file, pickled objects in an npz, an unknown dtype
        text = " ".join(str(err).split())[:200]
        raise DistillError(f"cannot read weights {path} ({type(err).__name__}: {text}); save float32 "
                           "tensors with safetensors.torch.save_file or numpy.savez") from None


def _read_arch(arch: Any) -> dict:
    if isinstance(arch, (str, Path)):
        path = Path(arch).expanduser()
        if not path.is_file():
            raise DistillError(f"arch file {path} does not exist")
        try:
            arch = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise DistillError(f"arch file {path} is not valid YAML ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(arch, dict) or not isinstance(arch.get("layers"), list) or not arch["layers"]:
        raise DistillError("the arch needs a non-empty `layers:` list mirroring the nn.Sequential "
                           "(e.g. `- Linear: [784, 300]`)")
    extra = sorted(set(arch) - {"layers", "input"})
    if extra:
        raise DistillError(f"the arch has unknown key {extra[0]!r}; its keys are layers and input")
    return arch


# ----------------------------------------------------------------------------- arguments


def _entry(entry: Any, index: int) -> tuple[str, Any]:
    if isinstance(entry, str):
        return entry, None
    if isinstance(entry, dict) and len(entry) == 1:
        return next(iter(entry.items()))
    raise DistillError(f"arch layer #{index}: write a module as `- Name` or `- Name: arguments`, got {entry!r}")


def _bind(module: str, args: Any, where: str) -> dict:
    """Constructor arguments by name, PyTorch's defaults filled in."""
    sig = _SIGNATURES[module]
    names = [n for n, _ in sig]
    if args is None:
        args = []
    if isinstance(args, dict):
        unknown = [k for k in args if k not in names]
        if unknown:
            raise DistillError(f"{where}: unknown argument {unknown[0]!r}; {module} takes "
                               f"{', '.join(names) or 'no arguments'}")
        given = dict(args)
    else:
        pos = list(args) if isinstance(args, list) else [args]
        if len(pos) > len(names):
            raise DistillError(f"{where}: {module} takes at most {len(names)} positional arguments "
                               f"({', '.join(names) or 'none'}), got {len(pos)}")
        given = dict(zip(names, pos))
    out = {}
    for name, default in sig:
        if name not in given and default is _REQ:
            raise DistillError(f"{where}: missing argument {name!r} ({module} takes {', '.join(names)})")
        out[name] = given.get(name, default)
    return out


def _int(where: str, name: str, v: Any, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise DistillError(f"{where}: {name} must be an integer >= {low}, got {v!r}")
    return v


def _pair(where: str, name: str, v: Any, low: int = 1) -> list[int]:
    """An int or a 2-sequence, as PyTorch's _pair."""
    vals = list(v) if isinstance(v, (list, tuple)) else [v, v]
    if len(vals) != 2:
        raise DistillError(f"{where}: {name} must be an integer or a pair, got {v!r}")
    return [_int(where, name, a, low) for a in vals]


def _only(where: str, args: dict, name: str, allowed: tuple, hint: str) -> None:
    v = args[name]
    norm = tuple(v) if isinstance(v, list) else v
    if not any(norm == a and type(norm) is type(a) for a in allowed):
        raise DistillError(f"{where}: {name}={v!r} is not supported ({hint})")


def _num(where: str, name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DistillError(f"{where}: {name} must be a number, got {v!r}")
    return float(v)


# ----------------------------------------------------------------------------- weights


class _Weights:
    """The state_dict being consumed: shape-checked takes, leftovers reported at the end."""

    def __init__(self, arrays: dict[str, np.ndarray], path: Path):
        self.arrays, self.path, self.used = arrays, path, set()

    def take(self, key: str, shape: tuple, what: str) -> np.ndarray:
        if key not in self.arrays:
            keys = ", ".join(list(self.arrays)[:6]) + (", ..." if len(self.arrays) > 6 else "")
            raise DistillError(f"{self.path} lacks key {key!r} for {what}; its keys are {keys or 'none'} "
                               "(the arch must mirror the nn.Sequential whose state_dict was saved)")
        arr = np.asarray(self.arrays[key])
        if arr.shape != shape:
            raise DistillError(f"key {key!r} has shape {tuple(arr.shape)} but {what} expects {shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise DistillError(f"key {key!r} holds {arr.dtype} values; {what} needs floating-point weights")
        self.used.add(key)
        return arr.astype(np.float32)

    def check_all_used(self, arch_desc: str) -> None:
        extra = [k for k in self.arrays if k not in self.used and not k.endswith(".num_batches_tracked")]
        if extra:
            raise DistillError(f"{self.path} holds key(s) the arch does not use: {', '.join(map(repr, extra[:5]))}"
                               f"{' ...' if len(extra) > 5 else ''}; the arch is {arch_desc}")


# ----------------------------------------------------------------------------- modules


def _linear(a: dict, i: str, w: _Weights, where: str) -> list[dict]:
    d_in, d_out = _int(where, "in_features", a["in_features"]), _int(where, "out_features", a["out_features"])
    what = f"{where} Linear({d_in}, {d_out})"
    params = {"kernel": w.take(f"{i}.weight", (d_out, d_in), what).T}
    if a["bias"]:
        params["bias"] = w.take(f"{i}.bias", (d_out,), what)
    return [{"type": "dense", "in_features": d_in, "out_features": d_out, "bias": bool(a["bias"]),
             "activation": None, "params": params}]


def _conv_padding(a: dict, kernel: list[int], stride: list[int], where: str) -> list[list[int]]:
    pad = a["padding"]
    if pad == "valid":
        return [[0, 0], [0, 0]]
    if pad == "same":
        if stride != [1, 1]:
            raise DistillError(f"{where}: padding='same' needs stride 1 (as in PyTorch), got stride {stride}")
        return [_same_pads(kernel[0]), _same_pads(kernel[1])]
    ph, pw = _pair(where, "padding", pad, low=0)
    return [[ph, ph], [pw, pw]]


def _conv2d(a: dict, i: str, w: _Weights, where: str) -> list[dict]:
    _only(where, a, "dilation", (1, (1, 1)), "dilation 1 only")
    _only(where, a, "groups", (1,), "groups 1 only")
    _only(where, a, "padding_mode", ("zeros",), "padding_mode 'zeros' only")
    c_in, c_out = _int(where, "in_channels", a["in_channels"]), _int(where, "out_channels", a["out_channels"])
    kernel, stride = _pair(where, "kernel_size", a["kernel_size"]), _pair(where, "stride", a["stride"])
    padding = _conv_padding(a, kernel, stride, where)
    what = f"{where} Conv2d({c_in}, {c_out}, kernel_size={tuple(kernel)})"
    params = {"kernel": w.take(f"{i}.weight", (c_out, c_in, *kernel), what).transpose(2, 3, 1, 0)}
    if a["bias"]:
        params["bias"] = w.take(f"{i}.bias", (c_out,), what)
    return [{"type": "conv", "in_channels": c_in, "out_channels": c_out, "kernel": kernel, "stride": stride,
             "padding": padding, "bias": bool(a["bias"]), "activation": None, "params": params}]


def _batchnorm(a: dict, i: str, w: _Weights, where: str) -> list[dict]:
    _only(where, a, "track_running_stats", (True,), "evaluation needs the running statistics")
    n = _int(where, "num_features", a["num_features"])
    if a["momentum"] is None:
        raise DistillError(f"{where}: momentum=None (a cumulative average) has no flax equivalent; give a number")
    momentum, eps = _num(where, "momentum", a["momentum"]), _num(where, "eps", a["eps"])
    what = f"{where} BatchNorm({n})"
    params = {"mean": w.take(f"{i}.running_mean", (n,), what), "var": w.take(f"{i}.running_var", (n,), what)}
    if a["affine"]:
        params["scale"], params["bias"] = w.take(f"{i}.weight", (n,), what), w.take(f"{i}.bias", (n,), what)
    else:
        params["scale"], params["bias"] = np.ones(n, np.float32), np.zeros(n, np.float32)
    return [{"type": "batchnorm", "features": n, "eps": eps, "momentum": 1.0 - momentum, "activation": None,
             "params": params}]


def _pool(a: dict, where: str, kind: str) -> dict:
    _only(where, a, "ceil_mode", (False,), "ceil_mode False only")
    kernel = _pair(where, "kernel_size", a["kernel_size"])
    stride = kernel if a["stride"] is None else _pair(where, "stride", a["stride"])
    ph, pw = _pair(where, "padding", a["padding"], low=0)
    return {"type": kind, "kernel": kernel, "stride": stride, "padding": [[ph, ph], [pw, pw]]}


def _maxpool(a: dict, i: str, w: _Weights, where: str) -> list[dict]:
    _only(where, a, "dilation", (1, (1, 1)), "dilation 1 only")
    _only(where, a, "return_indices", (False,), "return_indices False only")
    return [_pool(a, where, "maxpool")]


def _avgpool(a: dict, i: str, w: _Weights, where: str) -> list[dict]:
    _only(where, a, "divisor_override", (None,), "divisor_override None only")
    if not isinstance(a["count_include_pad"], bool):
        raise DistillError(f"{where}: count_include_pad must be true or false, got {a['count_include_pad']!r}")
    return [dict(_pool(a, where, "avgpool"), count_include_pad=a["count_include_pad"])]


def _adaptive(a: dict, i: str, w: _Weights, where: str) -> list[dict]:
    _only(where, a, "output_size", (1, (1, 1)), "output_size 1 only (global average pooling)")
    return [{"type": "global_avgpool"}]


def _flatten(a: dict, i: str, w: _Weights, where: str) -> list[dict]:
    _only(where, a, "start_dim", (1,), "start_dim 1 only")
    _only(where, a, "end_dim", (-1,), "end_dim -1 only")
    return [{"type": "flatten", "order": "chw"}]


def _dropout(a: dict, i: str, w: _Weights, where: str) -> list[dict]:
    p = _num(where, "p", a["p"])
    if not 0 <= p < 1:
        raise DistillError(f"{where}: p must be in [0, 1), got {p}")
    return [{"type": "dropout", "rate": p}]


def _activation(module: str) -> Callable:
    def convert(a: dict, i: str, w: _Weights, where: str) -> list[dict]:
        if module == "GELU":
            _only(where, a, "approximate", ("none", "tanh"), "approximate 'none' or 'tanh'")
            act: Any = "gelu" if a["approximate"] == "none" else "gelu_tanh"
        elif module == "LeakyReLU":
            act = {"name": "leaky_relu", "negative_slope": _num(where, "negative_slope", a["negative_slope"])}
        elif module == "ELU":
            act = {"name": "elu", "alpha": _num(where, "alpha", a["alpha"])}
        else:
            act = {"ReLU": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "SiLU": "silu"}[module]
        return [{"type": "activation", "activation": act}]
    return convert


def _softmax(module: str) -> Callable:
    def convert(a: dict, i: str, w: _Weights, where: str) -> list[dict]:
        _only(where, a, "dim", (None, 1, -1), "dim 1 / -1 over the class axis only")
        return [{"type": "softmax", "what": module}]
    return convert


_CONVERT: dict[str, Callable] = {
    "Linear": _linear, "Conv2d": _conv2d, "BatchNorm1d": _batchnorm, "BatchNorm2d": _batchnorm,
    "MaxPool2d": _maxpool, "AvgPool2d": _avgpool, "AdaptiveAvgPool2d": _adaptive, "Flatten": _flatten,
    "Dropout": _dropout, "Identity": lambda a, i, w, where: [],
    **{m: _activation(m) for m in ("ReLU", "Tanh", "Sigmoid", "GELU", "LeakyReLU", "ELU", "SiLU")},
    "Softmax": _softmax("Softmax"), "LogSoftmax": _softmax("LogSoftmax"),
}


# ----------------------------------------------------------------------------- input block


def _input_block(arch: dict, image_shape: Any) -> dict:
    block = arch.get("input") or {}
    if not isinstance(block, dict):
        raise DistillError(f"the arch's input must be a mapping (channels, height, width, mean, std), got {block!r}")
    extra = sorted(set(block) - {"channels", "height", "width", "mean", "std"})
    if extra:
        raise DistillError(f"the arch's input has unknown key {extra[0]!r}; use channels, height, width, mean, std")
    shape = tuple(image_shape) if image_shape is not None else ()
    if shape and len(shape) not in (2, 3):
        raise DistillError(f"image_shape must be (H, W) or (H, W, C), got {image_shape!r}")
    out = {}
    for key, pos, default in (("height", 0, None), ("width", 1, None), ("channels", 2, 1)):
        given, known = block.get(key), shape[pos] if len(shape) > pos else None
        if given is not None and known is not None and given != known:
            raise DistillError(f"the arch's input {key} is {given} but the data's images have {known}; "
                               "fix the arch or the dataset/downsample")
        value = given if given is not None else known if known is not None else default
        if value is None:
            raise DistillError(f"the input {key} is unknown: pass image_shape or set input.{key} in the arch")
        out[key] = _int("the arch's input", key, value)
    for key, default in (("mean", 0.0), ("std", 1.0)):
        v = block.get(key, default)
        vals = list(v) if isinstance(v, (list, tuple)) else [v] * out["channels"]
        if len(vals) != out["channels"]:
            raise DistillError(f"the arch's input {key} has {len(vals)} values for {out['channels']} channels")
        out[key] = [_num("the arch's input", key, a) for a in vals]
    return out


# ----------------------------------------------------------------------------- entry point


def import_torch_state_dict(weights_path: str | Path, arch_path_or_dict: Any,
                            image_shape: tuple[int, ...] | None = None) -> tuple[dict, dict]:
    """Convert a PyTorch nn.Sequential state_dict into a distill network (spec, params).

    ``weights_path``: .safetensors or .npz with keys ``<index>.<param>``; ``arch_path_or_dict``:
    the arch YAML (path) or its parsed dict (see the module docstring); ``image_shape``: the
    dataset's (H, W) or (H, W, C). A Linear first module on an image gets a flatten_0 (order
    chw) in front; a final Softmax/LogSoftmax is dropped with a note in spec["notes"].
    Supported modules: :data:`SUPPORTED_MODULES`. Returns ``(spec, params)`` for
    :class:`distill.teachers.network.Network` and :func:`~distill.teachers.network.load_params`.

    Raises:
        DistillError: one line for a pickle or unreadable weights file, a module outside the
            supported list, a bad or unsupported constructor argument, a missing, unexpected or
            wrongly shaped key (both shapes named), or layers whose shapes do not chain.
    """
    arch = _read_arch(arch_path_or_dict)
    weights = _Weights(read_state_dict(weights_path), Path(weights_path))
    input_block = _input_block(arch, image_shape)
    raw: list[dict] = []
    modules = []
    for index, entry in enumerate(arch["layers"]):
        module, args = _entry(entry, index)
        where = f"arch layer #{index} ({module})"
        if module not in _CONVERT:
            raise DistillError(f"{where}: unsupported module {module!r}; supported: {', '.join(SUPPORTED_MODULES)}")
        modules.append(f"{index}: {module}")
        if index == 0 and module == "Linear":
            raw.append({"type": "flatten", "order": "chw", "source": "inserted before 0"})
        for layer in _CONVERT[module](_bind(module, args, where), str(index), weights, where):
            raw.append(dict(layer, source=str(index)))
    weights.check_all_used(", ".join(modules))
    return assemble_spec(input_block, raw)
