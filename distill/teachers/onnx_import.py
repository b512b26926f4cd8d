"""Import an ONNX model: natively (a network spec + params) when it is a plain chain of known
operations, otherwise as a black box run by onnxruntime.

Native conversion covers graphs that are one chain from the single input to the single output
of: Gemm (alpha, beta, transA 0, transB), MatMul (+ a following Add of a bias), Conv (pads,
strides, auto_pad NOTSET/VALID/SAME_UPPER/SAME_LOWER; dilations 1, group 1), BatchNormalization
(inference), Relu, Tanh, Sigmoid, LeakyRelu, Elu, Gelu (opset 20), MaxPool, AveragePool
(count_include_pad; ceil_mode 0, dilations 1), GlobalAveragePool, Flatten (axis 1), Reshape to
(N, -1), Dropout, Identity, Transpose (NHWC <-> NCHW, as tf2onnx emits), Add/Sub/Mul/Div by a
scalar or per-channel constant (-> ``scale_shift``), and a final Softmax/LogSoftmax (dropped with
a note). Constants are initializers or Constant nodes. ONNX tensors are NCHW; the spec runs NHWC,
so weights are transposed (Conv W (O, I, kh, kw) -> HWIO) and a Flatten of an NCHW tensor
becomes ``flatten`` order "chw" (of an NHWC one, "hwc"). Conventions: the ONNX operator
specification (onnx.ai/onnx/operators), opset <= 20.

The input layout is read from the input's shape: (N, C, H, W), (N, H, W, C), (N, H, W) or flat
(N, H*W*C); distill's flat pixel vector (row-major H, W, C) is reshaped to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from distill.errors import DistillError
from distill.teachers.network import (
    SOFTMAX_NOTE,
    _raw_output_shape,
    assemble_spec,
)

__all__ = ["import_onnx", "NativeImport", "BlackBox", "NATIVE_OPS"]

_ACTIVATION_OPS = ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "Elu", "Gelu")
_ARITH_OPS = ("Add", "Sub", "Mul", "Div")


class NativeImport(NamedTuple):
    """A natively converted ONNX model: ``spec`` and ``params`` for
    :class:`distill.teachers.network.Network` and :func:`~distill.teachers.network.load_params`."""

    spec: dict
    params: dict


class _NotNative(Exception):
    """The graph cannot be converted natively; the message says why (one line)."""


def _one_line(err: BaseException, limit: int = 200) -> str:
    return (" ".join(str(err).split()) or type(err).__name__)[:limit]


# ----------------------------------------------------------------------------- loading


def _load(path: str | Path):
    import onnx

    path = Path(path).expanduser()
    if path.suffix.lower() in (".pt", ".pth", ".pkl", ".ckpt"):
        raise DistillError(f"{path} is a pickle file; export ONNX (torch.onnx.export) or save the "
                           "state_dict with safetensors (safetensors.torch.save_file)")
    if not path.is_file():
        raise DistillError(f"ONNX model {path} does not exist")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # protobuf decode errors, checker failures
        raise DistillError(f"{path} is not a valid ONNX model ({_one_line(err)}); re-export it") from None
    return path, model


def _graph_io(model, path: Path):
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in inits]
    if len(inputs) != 1:
        raise DistillError(f"{path} has {len(inputs)} inputs ({', '.join(v.name for v in inputs)}); "
                           "distill feeds one image tensor: export a model with a single input")
    if len(graph.output) != 1:
        raise DistillError(f"{path} has {len(graph.output)} outputs; export a model whose only output "
                           "is the logits")
    return inputs[0], graph.output[0]


def _dims(value_info) -> list[int | None]:
    """Static dims of a tensor (None where symbolic or unknown)."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape.dim]


def _image(image_shape: Sequence[int]) -> tuple[int, int, int | None]:
    shape = tuple(image_shape)
    if len(shape) not in (2, 3) or not all(isinstance(a, int) and a >= 1 for a in shape):
        raise DistillError(f"image_shape must be (H, W) or (H, W, C) with integers >= 1, got {image_shape!r}")
    return (shape[0], shape[1], shape[2] if len(shape) == 3 else None)


def _fits(dims: Sequence[int | None], want: Sequence[int]) -> bool:
    return len(dims) == len(want) and all(d is None or d == w for d, w in zip(dims, want))


def _input_layout(dims: list[int | None], image_shape, path: Path, name: str) -> tuple[str, tuple[int, int, int]]:
    """("nchw" | "nhwc" | "nhw" | "flat", (H, W, C)) of the model input, checked against the data."""
    h, w, c = _image(image_shape)
    per = dims[1:]
    if len(dims) == 4:
        if _fits(per[1:], (h, w)) and per[0] is not None and (c is None or per[0] == c):
            return "nchw", (h, w, per[0])
        if _fits(per[:2], (h, w)) and per[2] is not None and (c is None or per[2] == c):
            return "nhwc", (h, w, per[2])
    elif len(dims) == 3 and _fits(per, (h, w)) and c in (None, 1):
        return "nhw", (h, w, 1)
    elif len(dims) == 2 and per[0] is not None:
        if per[0] == h * w * (c or 1):
            return "flat", (h, w, c or 1)
        if c is None and per[0] % (h * w) == 0:
            return "flat", (h, w, per[0] // (h * w))
    shown = "(" + ", ".join("N" if i == 0 else str(d) if d else "?" for i, d in enumerate(dims)) + ")"
    raise DistillError(f"{path}: the model's input {name!r} has shape {shown} but the data's images are "
                       f"{h}x{w}{'x' + str(c) if c else ''}; expected (N, C, {h}, {w}), (N, {h}, {w}, C) "
                       f"or (N, {h * w * (c or 1)}): fix the dataset/downsample or the model")


def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import helper, numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            attr = node.attribute[0]
            value = helper.get_attribute_value(attr)
            out[node.output[0]] = numpy_helper.to_array(value) if attr.name == "value" else np.asarray(value)
    return out


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


# ----------------------------------------------------------------------------- native conversion


def _window_pads(node, at: dict, shape: tuple, kernel: list[int], stride: list[int]) -> list[list[int]]:
    """[[top, bottom], [left, right]] from ONNX pads [t, l, b, r] or auto_pad."""
    auto = at.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return [[0, 0], [0, 0]]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        if shape is None or len(shape) != 3:
            raise _NotNative(f"{node.op_type} node {node.name!r} does not fit its input")
        for n, k, s in zip(shape[:2], kernel, stride):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            small = total // 2
            pads.append([small, total - small] if auto == "SAME_UPPER" else [total - small, small])
        return pads
    if auto != "NOTSET":
        raise _NotNative(f"{node.op_type} node {node.name!r} has auto_pad {auto!r}")
    p = list(at.get("pads", [0, 0, 0, 0]))
    if len(p) != 4:
        raise _NotNative(f"{node.op_type} node {node.name!r} is not 2-D (pads {p})")
    return [[int(p[0]), int(p[2])], [int(p[1]), int(p[3])]]


class _Chain:
    """Walks the graph from its input to its output, one node at a time, building raw layers."""

    def __init__(self, graph, input_name: str, output_name: str, layout: str, shape: tuple):
        self.graph, self.output = graph, output_name
        self.consts = _constants(graph)
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.cur, self.tag, self.shape = input_name, layout, shape
        self.raw: list[dict] = []
        self.done: set[int] = set()
        if layout == "flat":
            self._emit({"type": "flatten", "order": "hwc", "source": "input"})
        elif layout == "nhw":
            self.tag = "nhwc"  # (N, H, W) holds the same numbers as (N, H, W, 1)

    # -- bookkeeping

    def _emit(self, layer: dict) -> None:
        self.shape = _raw_output_shape(layer, self.shape, len(self.raw))
        self.raw.append(layer)

    def _const(self, node, i: int, what: str) -> np.ndarray:
        if len(node.input) <= i or node.input[i] not in self.consts:
            raise _NotNative(f"{node.op_type} node {node.name!r} has a computed {what} (not a constant)")
        return np.asarray(self.consts[node.input[i]])

    def _only_consumer(self, tensor: str) -> Any:
        users = self.consumers.get(tensor, [])
        if len(users) != 1:
            names = ", ".join(f"{u.op_type} {u.name!r}" for u in users) or "nothing"
            raise _NotNative(f"tensor {tensor!r} feeds {names}: the graph is not a single chain")
        return users[0]

    # -- the walk

    def run(self) -> list[dict]:
        while self.cur != self.output:
            node = self._only_consumer(self.cur)
            computed = [i for i in node.input if i and i not in self.consts]
            if computed != [self.cur]:
                raise _NotNative(f"{node.op_type} node {node.name!r} combines {len(computed)} computed tensors "
                                 f"({', '.join(computed)}): the graph branches")
            handler = _HANDLERS.get(node.op_type)
            if handler is None:
                raise _NotNative(f"op {node.op_type} (node {node.name!r}) has no native equivalent")
            for extra in node.output[1:]:
                if extra and self.consumers.get(extra) or extra == self.output:
                    raise _NotNative(f"{node.op_type} node {node.name!r} uses its extra output {extra!r}")
            self.done.add(id(node))
            self.cur = handler(self, node, _attrs(node)) or node.output[0]
        left = [n for n in self.graph.node if id(n) not in self.done and n.op_type != "Constant"]
        if left:
            raise _NotNative(f"node {left[0].op_type} {left[0].name!r} is off the chain from input to output")
        return self.raw

    # -- ops

    def _need(self, node, *tags: str) -> None:
        if self.tag not in tags:
            raise _NotNative(f"{node.op_type} node {node.name!r} sees a {self.tag.upper()} tensor")

    def dense(self, node, at: dict) -> str | None:
        self._need(node, "flat")
        if node.op_type == "Gemm":
            if at.get("transA", 0):
                raise _NotNative(f"Gemm node {node.name!r} has transA=1")
            b = self._const(node, 1, "B")
            kernel = (b.T if at.get("transB", 0) else b) * at.get("alpha", 1.0)
            bias = self._gemm_bias(node, kernel.shape[1], at.get("beta", 1.0))
            out = None
        else:  # MatMul, with a following Add of a constant bias folded in
            kernel = self._const(node, 1, "weight")
            bias, out = self._matmul_bias(node, kernel.shape[-1])
        if kernel.ndim != 2:
            raise _NotNative(f"{node.op_type} node {node.name!r} has a {kernel.ndim}-D weight")
        params = {"kernel": kernel}
        if bias is not None:
            params["bias"] = bias
        self._emit({"type": "dense", "in_features": int(kernel.shape[0]), "out_features": int(kernel.shape[1]),
                    "bias": bias is not None, "activation": None, "source": node.name, "params": params})
        return out

    def _gemm_bias(self, node, n: int, beta: float) -> np.ndarray | None:
        if len(node.input) < 3 or not node.input[2]:
            return None
        c = self._const(node, 2, "C")
        if c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1) or c.ndim > 2:
            raise _NotNative(f"Gemm node {node.name!r} has a bias C of shape {c.shape}")
        return np.broadcast_to(c.reshape(-1), (n,)) * beta

    def _matmul_bias(self, node, n: int) -> tuple[np.ndarray | None, str | None]:
        out = node.output[0]
        users = self.consumers.get(out, [])
        if out == self.output or len(users) != 1 or users[0].op_type != "Add":
            return None, None
        add = users[0]
        other = [i for i in add.input if i != out]
        if len(other) != 1 or other[0] not in self.consts:
            return None, None
        c = np.asarray(self.consts[other[0]])
        if c.size != n or c.shape[-1:] != (n,) or c.ndim > 2:
            return None, None
        self.done.add(id(add))
        return c.reshape(n), add.output[0]

    def conv(self, node, at: dict) -> None:
        self._need(node, "nchw")
        w = self._const(node, 1, "weight")
        if w.ndim != 4 or at.get("group", 1) != 1 or any(d != 1 for d in at.get("dilations", [1, 1])):
            raise _NotNative(f"Conv node {node.name!r} is not a 2-D conv with group 1 and dilation 1")
        kernel, stride = [int(w.shape[2]), int(w.shape[3])], [int(s) for s in at.get("strides", [1, 1])]
        params = {"kernel": w.transpose(2, 3, 1, 0)}
        if len(node.input) > 2 and node.input[2]:
            params["bias"] = self._const(node, 2, "bias")
        self._emit({"type": "conv", "in_channels": int(w.shape[1]), "out_channels": int(w.shape[0]),
                    "kernel": kernel, "stride": stride, "padding": _window_pads(node, at, self.shape, kernel, stride),
                    "bias": "bias" in params, "activation": None, "source": node.name, "params": params})

    def batchnorm(self, node, at: dict) -> None:
        self._need(node, "nchw", "flat")
        if at.get("training_mode", 0):
            raise _NotNative(f"BatchNormalization node {node.name!r} is in training mode")
        scale, bias, mean, var = (self._const(node, i, what) for i, what in
                                  enumerate(("scale", "B", "mean", "var"), start=1))
        self._emit({"type": "batchnorm", "features": int(scale.size), "eps": float(at.get("epsilon", 1e-5)),
                    "momentum": float(at.get("momentum", 0.9)), "activation": None, "source": node.name,
                    "params": {"scale": scale, "bias": bias, "mean": mean, "var": var}})

    def activation(self, node, at: dict) -> None:
        op = node.op_type
        if op == "LeakyRelu":
            act: Any = {"name": "leaky_relu", "negative_slope": float(at.get("alpha", 0.01))}
        elif op == "Elu":
            act = {"name": "elu", "alpha": float(at.get("alpha", 1.0))}
        elif op == "Gelu":
            approx = at.get("approximate", b"none")
            act = "gelu_tanh" if (approx.decode() if isinstance(approx, bytes) else approx) == "tanh" else "gelu"
        else:
            act = op.lower()
        self._emit({"type": "activation", "activation": act, "source": node.name})

    def pool(self, node, at: dict) -> None:
        self._need(node, "nchw")
        if node.op_type == "GlobalAveragePool":
            self._emit({"type": "global_avgpool", "source": node.name})
            return
        kernel = [int(k) for k in at["kernel_shape"]]
        if len(kernel) != 2 or at.get("ceil_mode", 0) or any(d != 1 for d in at.get("dilations", [1, 1])):
            raise _NotNative(f"{node.op_type} node {node.name!r} is not a 2-D pool with ceil_mode 0 and dilation 1")
        stride = [int(s) for s in at.get("strides", [1, 1])]
        layer = {"type": "maxpool" if node.op_type == "MaxPool" else "avgpool", "kernel": kernel, "stride": stride,
                 "padding": _window_pads(node, at, self.shape, kernel, stride), "source": node.name}
        if node.op_type == "AveragePool":
            layer["count_include_pad"] = bool(at.get("count_include_pad", 0))
        self._emit(layer)

    def flatten(self, node, at: dict) -> None:
        rank = 2 if self.tag == "flat" else 4
        if node.op_type == "Flatten":
            axis = int(at.get("axis", 1))
            if axis % rank != 1:
                raise _NotNative(f"Flatten node {node.name!r} has axis {axis}")
        else:
            if at.get("allowzero", 0):
                raise _NotNative(f"Reshape node {node.name!r} has allowzero=1")
            target = [int(t) for t in self._const(node, 1, "shape")]
            n = int(np.prod(self.shape)) if self.shape is not None else -1
            if len(target) != 2 or target[0] not in (0, -1) or target[1] not in (-1, n) or target == [-1, -1]:
                raise _NotNative(f"Reshape node {node.name!r} to {target} is not a flatten to (N, -1)")
        if self.tag != "flat":
            self._emit({"type": "flatten", "order": "chw" if self.tag == "nchw" else "hwc", "source": node.name})
            self.tag = "flat"

    def transpose(self, node, at: dict) -> None:
        perm = [int(p) for p in at.get("perm", [])]
        if self.tag == "nhwc" and perm == [0, 3, 1, 2]:
            self.tag = "nchw"
        elif self.tag == "nchw" and perm == [0, 2, 3, 1]:
            self.tag = "nhwc"
        else:
            raise _NotNative(f"Transpose node {node.name!r} with perm {perm} on a {self.tag.upper()} tensor "
                             "is not an NHWC<->NCHW layout change")

    def dropout(self, node, at: dict) -> None:
        rate = float(self._const(node, 1, "ratio")) if len(node.input) > 1 and node.input[1] else float(
            at.get("ratio", 0.5))
        if len(node.input) > 2 and node.input[2] and bool(self._const(node, 2, "training_mode")):
            raise _NotNative(f"Dropout node {node.name!r} is in training mode")
        self._emit({"type": "dropout", "rate": rate, "source": node.name})

    def identity(self, node, at: dict) -> None:
        return None

    def softmax(self, node, at: dict) -> None:
        if node.output[0] != self.output or self.tag != "flat":
            raise _NotNative(f"{node.op_type} node {node.name!r} is not the final op on the logits")
        self.raw.append({"type": "softmax", "what": node.op_type, "source": node.name})

    def arith(self, node, at: dict) -> None:
        first = node.input[0] == self.cur
        c = self._const(node, 1 if first else 0, "operand")
        vec = self._per_channel(node, c)
        op = node.op_type
        if op == "Div" and not first:
            raise _NotNative(f"Div node {node.name!r} divides a constant by the tensor")
        if op == "Div" and np.any(vec == 0):
            raise _NotNative(f"Div node {node.name!r} divides by zero")
        if op == "Add":
            scale, shift = 1.0, vec
        elif op == "Sub":
            scale, shift = (1.0, -vec) if first else (-1.0, vec)
        else:
            scale, shift = (vec if op == "Mul" else 1.0 / vec), 0.0
        self._emit({"type": "scale_shift", "scale": _const_field(scale), "shift": _const_field(shift),
                    "source": node.name})

    def _per_channel(self, node, c: np.ndarray) -> np.ndarray:
        """The constant as a vector over the spec's last axis (size 1 for a scalar)."""
        rank = 2 if self.tag == "flat" else 4
        axis = {"flat": 1, "nhwc": 3, "nchw": 1}[self.tag]
        if c.ndim > rank:
            raise _NotNative(f"{node.op_type} node {node.name!r} has a constant of rank {c.ndim}")
        full = c.reshape((1,) * (rank - c.ndim) + c.shape)
        width = self.shape[-1] if self.shape is not None else -1
        if any(d != 1 for i, d in enumerate(full.shape) if i != axis) or full.shape[axis] not in (1, width):
            raise _NotNative(f"{node.op_type} node {node.name!r} has a constant of shape {tuple(c.shape)}: "
                             "neither a scalar nor per-channel")
        return full.reshape(-1).astype(np.float64)


def _const_field(v: Any) -> Any:
    arr = np.asarray(v, np.float64).reshape(-1)
    return float(arr[0]) if arr.size == 1 else [float(a) for a in arr]


_HANDLERS: dict[str, Callable] = {
    "Gemm": _Chain.dense, "MatMul": _Chain.dense, "Conv": _Chain.conv,
    "BatchNormalization": _Chain.batchnorm, **{op: _Chain.activation for op in _ACTIVATION_OPS},
    "MaxPool": _Chain.pool, "AveragePool": _Chain.pool, "GlobalAveragePool": _Chain.pool,
    "Flatten": _Chain.flatten, "Reshape": _Chain.flatten, "Transpose": _Chain.transpose,
    "Dropout": _Chain.dropout, "Identity": _Chain.identity, "Softmax": _Chain.softmax,
    "LogSoftmax": _Chain.softmax, **{op: _Chain.arith for op in _ARITH_OPS},
}
#: The ONNX ops a native conversion understands.
NATIVE_OPS = tuple(_HANDLERS)


# ----------------------------------------------------------------------------- black box


class BlackBox:
    """An ONNX teacher run by onnxruntime (CPU) on distill's flat pixel input.

    ``model(x)``: x (B, H*W*C) float, row-major H, W, C -> logits (B, n_classes) float32 NumPy,
    reshaped to the model's input layout first. ``outputs(x, names)``: the named tensors of the
    graph (``node_outputs`` lists them), computed by adding them as extra graph outputs. A final
    Softmax/LogSoftmax is cut off so the logits are its input (noted in ``notes``).
    ``reason`` says why the model was not converted natively; ``notice`` is the one line to show
    the user.

    Raises:
        DistillError: from the constructor when onnxruntime cannot run the model; from
            ``outputs`` for an unknown tensor name; from both calls for a wrong input shape.
    """

    def __init__(self, model, path: Path, layout: str, image: tuple[int, int, int], reason: str):
        import onnx

        self.path, self.layout, self.reason = path, layout, reason
        self.input_shape = image
        self.n_features = int(np.prod(image))
        self.notes: list[str] = []
        graph = model.graph
        inp, out = _graph_io(model, path)
        self._input_name = inp.name
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        self._dtype = np.dtype(dtype)
        batch = _dims(inp)[0]
        self._batch = batch  # a fixed batch size (often 1) or None
        self.logits_name = self._cut_softmax(model, out.name)
        self.node_outputs = tuple(o for n in graph.node if n.op_type != "Constant" for o in n.output if o)
        self._model = model
        self._types = self._tensor_types(model)
        self._sessions: dict[tuple[str, ...], Any] = {}
        self.n_classes = int(self(np.zeros((1, self.n_features), np.float32)).shape[1])
        self.notice = ("black-box teacher: only students trained end to end on its logits (student.family mps) "
                       f"can learn from it; layer-wise modes need a native teacher (not native: {reason})")

    def _cut_softmax(self, model, out_name: str) -> str:
        for node in model.graph.node:
            if node.output and node.output[0] == out_name and node.op_type in ("Softmax", "LogSoftmax"):
                self.notes.append(SOFTMAX_NOTE.format(what=node.op_type, source=node.name))
                return node.input[0]
        return out_name

    @staticmethod
    def _tensor_types(model) -> dict[str, int]:
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # shape inference is best effort; unknown types default to float
            inferred = model
        g = inferred.graph
        return {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.output, *g.input]}

    def _session(self, names: tuple[str, ...]):
        if names not in self._sessions:
            import onnx
            import onnxruntime as ort

            model = onnx.ModelProto()
            model.CopyFrom(self._model)
            del model.graph.output[:]
            for name in names:
                elem = self._types.get(name) or onnx.TensorProto.FLOAT
                model.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            try:
                self._sessions[names] = ort.InferenceSession(model.SerializeToString(), opts,
                                                             providers=["CPUExecutionProvider"])
            except Exception as err:
                raise DistillError(f"onnxruntime cannot run {self.path} ({_one_line(err)})") from None
        return self._sessions[names]

    def _feed(self, x: np.ndarray) -> np.ndarray:
        h, w, c = self.input_shape
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise DistillError(f"the teacher expects inputs (B, {self.n_features}) (images {h}x{w}x{c}), "
                               f"got {tuple(x.shape)}")
        img = x.reshape(x.shape[0], h, w, c)
        shaped = {"nchw": lambda: img.transpose(0, 3, 1, 2), "nhwc": lambda: img,
                  "nhw": lambda: img[..., 0], "flat": lambda: x}[self.layout]()
        return np.ascontiguousarray(shaped, self._dtype)

    def _run(self, x, names: tuple[str, ...]) -> list[np.ndarray]:
        feed = self._feed(np.asarray(x))
        session = self._session(names)
        step = self._batch or max(len(feed), 1)
        parts = []
        for start in range(0, len(feed), step):
            chunk = feed[start:start + step]
            m = len(chunk)
            if m < step:  # a fixed batch size: pad the last chunk
                chunk = np.concatenate([chunk, np.zeros((step - m, *chunk.shape[1:]), chunk.dtype)])
            try:
                outs = session.run(list(names), {self._input_name: chunk})
            except Exception as err:
                raise DistillError(f"onnxruntime failed on {self.path} ({_one_line(err)})") from None
            parts.append([np.asarray(o)[:m] for o in outs])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(names))]

    @property
    def onnx_bytes(self) -> bytes:
        """The serialised ONNX model (what a teacher checkpoint stores)."""
        return self._model.SerializeToString()

    def __call__(self, x) -> np.ndarray:
        """Logits (B, n_classes) float32 of x (B, H*W*C)."""
        logits = self._run(x, (self.logits_name,))[0]
        return logits.reshape(logits.shape[0], -1).astype(np.float32)

    def outputs(self, x, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The graph tensors ``names`` (from ``node_outputs``) for x (B, H*W*C), in the model's
        own layouts (ONNX: NCHW for images)."""
        names = (names,) if isinstance(names, str) else tuple(names)
        unknown = [n for n in names if n not in self.node_outputs]
        if unknown:
            shown = ", ".join(self.node_outputs[:8]) + (", ..." if len(self.node_outputs) > 8 else "")
            raise DistillError(f"{self.path} has no tensor {unknown[0]!r}; its node outputs are {shown}")
        return dict(zip(names, self._run(x, names)))


# ----------------------------------------------------------------------------- entry point


def import_onnx(path: str | Path, image_shape: Sequence[int]) -> NativeImport | BlackBox:
    """Import the ONNX model at ``path`` for images of ``image_shape`` (H, W) or (H, W, C).

    Returns a :class:`NativeImport` (spec, params) when the graph is a plain chain of
    :data:`NATIVE_OPS` (see the module docstring), otherwise a :class:`BlackBox` whose
    ``notice`` says what a black-box teacher allows and ``reason`` why it is one.

    Raises:
        DistillError: a missing, pickle or invalid file, not exactly one input and one output,
            an input shape that does not fit image_shape (both named), or a model onnxruntime
            cannot run.
    """
    path, model = _load(path)
    inp, out = _graph_io(model, path)
    layout, image = _input_layout(_dims(inp), image_shape, path, inp.name)
    try:
        raw = _Chain(model.graph, inp.name, out.name, layout, image).run()
        block = {"height": image[0], "width": image[1], "channels": image[2],
                 "mean": [0.0] * image[2], "std": [1.0] * image[2]}
        return NativeImport(*assemble_spec(block, raw))
    except (_NotNative, DistillError) as err:
        return BlackBox(model, path, layout, image, _one_line(err))


def load_black_box(path: str | Path, image_shape: Sequence[int]) -> BlackBox:
    """The black-box teacher of a checkpoint's model.onnx (as `import_onnx` made it).
    Raises: DistillError as `import_onnx`."""
    path, model = _load(path)
    inp, _ = _graph_io(model, path)
    layout, image = _input_layout(_dims(inp), image_shape, path, inp.name)
    try:
        raw = _Chain(model.graph, inp.name, _graph_io(model, path)[1].name, layout, image).run()
        assemble_spec({"height": image[0], "width": image[1], "channels": image[2],
                       "mean": [0.0] * image[2], "std": [1.0] * image[2]}, raw)
        reason = "stored as a black box"
    except (_NotNative, DistillError) as err:
        reason = _one_line(err)
    return BlackBox(model, path, layout, image, reason)
