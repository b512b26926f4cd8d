"""ONNX import: graphs built with onnx.helper, converted natively or run as a black box, and
compared with onnxruntime's own outputs."""

from __future__ import annotations

import contextlib
import re

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from flax import nnx
from onnx import TensorProto, helper, numpy_helper

from distill.errors import DistillError
from distill.teachers.network import Network
from distill.teachers.onnx_import import BlackBox, NativeImport, import_onnx


@pytest.fixture(autouse=True)
def _strict_jax():
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        yield


@contextlib.contextmanager
def refused(match):
    """A DistillError whose message matches `match` and is one line."""
    with pytest.raises(DistillError, match=match) as info:
        yield
    assert "\n" not in str(info.value)


RNG = np.random.default_rng(0)


def w(*shape, scale=None):
    fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return RNG.normal(0, scale or 1 / np.sqrt(fan), shape).astype(np.float32)


def node(op, inputs, outputs, name=None, **attrs):
    return helper.make_node(op, inputs, outputs, name=name or f"{op}_{outputs[0]}", **attrs)


def save_model(tmp_path, nodes, in_shape, inits, opset=17, out_shape=("N", None), extra_inputs=(), extra_outputs=()):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape), *extra_inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape), *extra_outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


def ort_run(path, feed, outputs=None):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(outputs, {"x": feed})


def to_layout(x, image, layout):
    h, wd, c = image
    img = x.reshape(len(x), h, wd, c)
    return {"nchw": img.transpose(0, 3, 1, 2), "nhwc": img, "flat": x}[layout].astype(np.float32).copy()


def logits_of(model, x):
    """The Network's logits through one jitted call (faster than compiling op by op)."""
    graphdef, state = nnx.split(model)
    return np.asarray(jax.jit(lambda s, xb: nnx.merge(graphdef, s)(xb))(state, x))


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def check_native(path, image, layout, n=3, final_softmax=False):
    """Import natively; compare the Network's logits (softmaxed when the graph ends in a Softmax
    the importer dropped) with onnxruntime's output."""
    result = import_onnx(path, image)
    assert isinstance(result, NativeImport), getattr(result, "reason", None)
    image = (*image[:2], result.spec["input"]["channels"])
    model = Network(result.spec, params=result.params)
    x = RNG.uniform(0, 1, (n, int(np.prod(image)))).astype(np.float32)
    ref = ort_run(path, to_layout(x, image, layout))[0]
    got = logits_of(model, x).astype(np.float64)
    np.testing.assert_allclose(softmax(got) if final_softmax else got, ref.reshape(n, -1), rtol=1e-5, atol=1e-5)
    return result.spec


def kinds(spec):
    return [(layer["name"], layer["type"], layer.get("activation")) for layer in spec["layers"]]


# ----------------------------------------------------------------------------- native conversions


def test_gemm_mlp_with_final_softmax(tmp_path):
    nodes = [node("Gemm", ["x", "w0", "b0"], ["h"], alpha=0.5, beta=2.0, transB=1),
             node("Relu", ["h"], ["r"]),
             node("Gemm", ["r", "w1", "b1"], ["z"]),
             node("Softmax", ["z"], ["y"], name="prob")]
    inits = {"w0": w(8, 16), "b0": w(1, 8, scale=0.1), "w1": w(8, 5), "b1": w(5, scale=0.1)}
    path = save_model(tmp_path, nodes, ["N", 16], inits)
    spec = check_native(path, (4, 4), "flat", final_softmax=True)
    assert kinds(spec) == [("flatten_0", "flatten", None), ("hidden_0", "dense", "relu"), ("logits", "dense", None)]
    assert spec["notes"] == ["final Softmax (source prob) dropped: the teacher's logits are its pre-softmax outputs"]


def test_matmul_add_mlp(tmp_path):
    nodes = [node("MatMul", ["x", "w0"], ["m0"]), node("Add", ["m0", "b0"], ["h"]), node("Tanh", ["h"], ["t"]),
             node("MatMul", ["t", "w1"], ["m1"]), node("Add", ["b1", "m1"], ["y"])]
    inits = {"w0": w(12, 7), "b0": w(7, scale=0.1), "w1": w(7, 3), "b1": w(1, 3, scale=0.1)}
    path = save_model(tmp_path, nodes, ["N", 12], inits)
    spec = check_native(path, (3, 4, 1), "flat")
    assert kinds(spec) == [("flatten_0", "flatten", None), ("hidden_0", "dense", "tanh"), ("logits", "dense", None)]
    assert spec["layers"][1]["source"] == "MatMul_m0"


def test_conv_batchnorm_relu_maxpool_flatten_gemm_with_input_normalisation(tmp_path):
    nodes = [node("Sub", ["x", "mean"], ["s"]), node("Div", ["s", "std"], ["n"]),
             node("Conv", ["n", "cw", "cb"], ["c"], pads=[1, 0, 2, 1], strides=[2, 1], kernel_shape=[3, 3]),
             node("BatchNormalization", ["c", "g", "beta", "rm", "rv"], ["bn"], epsilon=1e-3),
             node("Relu", ["bn"], ["r"]),
             node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 0, 0]),
             node("Flatten", ["p"], ["f"]),
             node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    inits = {"mean": np.array([0.5, 0.4, 0.3], np.float32).reshape(1, 3, 1, 1),
             "std": np.array([0.2, 0.3, 0.25], np.float32).reshape(3, 1, 1),
             "cw": w(4, 3, 3, 3), "cb": w(4, scale=0.1), "g": RNG.uniform(0.5, 1.5, 4).astype(np.float32),
             "beta": w(4, scale=0.2), "rm": w(4, scale=0.3), "rv": RNG.uniform(0.5, 2, 4).astype(np.float32),
             "fw": w(5, 4 * 2 * 3), "fb": w(5, scale=0.1)}
    path = save_model(tmp_path, nodes, ["N", 3, 7, 6], inits)
    spec = check_native(path, (7, 6), "nchw")
    assert kinds(spec) == [("scale_shift_0", "scale_shift", None), ("scale_shift_1", "scale_shift", None),
                           ("conv_0", "conv", None), ("bn_0", "batchnorm", "relu"), ("pool_0", "maxpool", None),
                           ("flatten_0", "flatten", None), ("logits", "dense", None)]
    layer = {lay["name"]: lay for lay in spec["layers"]}
    assert layer["conv_0"]["padding"] == [[1, 2], [0, 1]] and layer["flatten_0"]["order"] == "chw"
    assert layer["scale_shift_0"]["shift"] == pytest.approx([-0.5, -0.4, -0.3])
    assert spec["input"]["channels"] == 3


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_auto_pad_tanh_averagepool_globalpool_reshape(tmp_path, auto_pad, count_include_pad):
    nodes = [node("Conv", ["x", "cw"], ["c"], auto_pad=auto_pad, strides=[2, 2]),
             node("Tanh", ["c"], ["t"]),
             node("AveragePool", ["t"], ["a"], kernel_shape=[3, 2], strides=[1, 1], pads=[1, 1, 1, 0],
                  count_include_pad=count_include_pad),
             node("Mul", ["a", "k"], ["m"]), node("Add", ["m", "off"], ["o"]),
             node("GlobalAveragePool", ["o"], ["g"]),
             node("Reshape", ["g", "shape"], ["r"]),
             node("Gemm", ["r", "fw"], ["y"])]
    inits = {"cw": w(5, 2, 4, 3), "k": np.float32(1.5), "off": w(1, 5, 1, 1, scale=0.5),
             "shape": np.array([0, -1], np.int64), "fw": w(5, 3)}
    path = save_model(tmp_path, nodes, ["N", 2, 9, 8], inits)
    spec = check_native(path, (9, 8, 2), "nchw")
    assert [lay["type"] for lay in spec["layers"]] == ["conv", "avgpool", "scale_shift", "scale_shift",
                                                      "global_avgpool", "flatten", "dense"]
    pads = spec["layers"][0]["padding"]  # 9x8, k 4x3, stride 2: totals 3 and 1
    assert pads == {"SAME_UPPER": [[1, 2], [0, 1]], "SAME_LOWER": [[2, 1], [1, 0]], "VALID": [[0, 0], [0, 0]]}[auto_pad]
    assert spec["layers"][1]["count_include_pad"] is bool(count_include_pad)


def test_nhwc_input_with_transposes(tmp_path):
    """The tf2onnx pattern: NHWC input, Transpose to NCHW, conv, Transpose back, Keras flatten."""
    nodes = [node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             node("Conv", ["t", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
             node("Relu", ["c"], ["r"]),
             node("Transpose", ["r"], ["back"], perm=[0, 2, 3, 1]),
             node("Reshape", ["back", "shape"], ["f"]),
             node("MatMul", ["f", "fw"], ["m"]), node("Add", ["m", "fb"], ["y"])]
    inits = {"cw": w(3, 2, 3, 3), "cb": w(3, scale=0.1), "shape": np.array([-1, 5 * 4 * 3], np.int64),
             "fw": w(60, 4), "fb": w(4, scale=0.1)}
    path = save_model(tmp_path, nodes, ["N", 5, 4, 2], inits)
    spec = check_native(path, (5, 4, 2), "nhwc")
    assert kinds(spec) == [("conv_0", "conv", "relu"), ("flatten_0", "flatten", None), ("logits", "dense", None)]
    assert spec["layers"][1]["order"] == "hwc"


def test_opset20_activations_dropout_identity(tmp_path):
    nodes = [node("Gemm", ["x", "w0"], ["h0"]), node("Gelu", ["h0"], ["a0"], approximate="tanh"),
             node("Dropout", ["a0", "ratio"], ["d0"]), node("Identity", ["d0"], ["i0"]),
             node("Gemm", ["i0", "w1"], ["h1"]), node("Gelu", ["h1"], ["a1"]),
             node("Gemm", ["a1", "w2"], ["h2"]), node("LeakyRelu", ["h2"], ["a2"], alpha=0.2),
             node("Gemm", ["a2", "w3"], ["h3"]), node("Elu", ["h3"], ["a3"], alpha=0.7),
             node("Sigmoid", ["a3"], ["a4"]), node("Sub", ["one", "a4"], ["s"]),
             node("Gemm", ["s", "w4"], ["y"])]
    inits = {"w0": w(9, 6), "ratio": np.float32(0.25), "w1": w(6, 6), "w2": w(6, 6), "w3": w(6, 6),
             "one": np.float32(1.0), "w4": w(6, 2)}
    path = save_model(tmp_path, nodes, ["N", 9], inits, opset=20)
    spec = check_native(path, (3, 3), "flat")
    assert [lay.get("activation") for lay in spec["layers"]][1:5] == [
        "gelu_tanh", None, "gelu", {"name": "leaky_relu", "negative_slope": pytest.approx(0.2)}]
    assert spec["layers"][2] == {"type": "dropout", "name": "dropout_0", "source": "Dropout_d0", "rate": 0.25}
    assert spec["layers"][-2]["scale"] == -1.0 and spec["layers"][-2]["shift"] == 1.0


# ----------------------------------------------------------------------------- black boxes


def test_residual_add_runs_as_black_box(tmp_path):
    nodes = [node("Flatten", ["x"], ["f"]), node("Gemm", ["f", "w0"], ["h"]), node("Relu", ["h"], ["r"]),
             node("Gemm", ["r", "w1"], ["g"]), node("Add", ["r", "g"], ["res"], name="skip"),
             node("Gemm", ["res", "w2"], ["z"]), node("LogSoftmax", ["z"], ["y"])]
    inits = {"w0": w(16, 6), "w1": w(6, 6), "w2": w(6, 3)}
    path = save_model(tmp_path, nodes, ["N", 1, 4, 4], inits)
    box = import_onnx(path, (4, 4))
    assert isinstance(box, BlackBox) and box.layout == "nchw"
    assert "tensor 'r' feeds Gemm" in box.reason and "not a single chain" in box.reason
    assert box.notice.startswith("black-box teacher: only students trained end to end on its logits "
                                 "(student.family mps) can learn from it; layer-wise modes need a native teacher")
    assert box.reason in box.notice and "\n" not in box.notice
    x = RNG.uniform(0, 1, (5, 16)).astype(np.float32)
    feed = x.reshape(5, 1, 4, 4)
    log_probs = ort_run(path, feed)[0]
    logits = box(x)  # the LogSoftmax is cut: its input z
    np.testing.assert_allclose(np.log(softmax(logits.astype(np.float64))), log_probs, rtol=1e-5, atol=1e-5)
    assert box.n_classes == 3 and "LogSoftmax" in box.notes[0]
    r = np.maximum(x.astype(np.float64) @ inits["w0"], 0)  # the tensors by their definitions
    res = r + r @ inits["w1"]
    got = box.outputs(x, ["r", "res"])
    np.testing.assert_allclose(got["r"], r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["res"], res, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, res @ inits["w2"], rtol=1e-5, atol=1e-5)
    with refused("has no tensor 'nope'; its node outputs are f, h, r, g"):
        box.outputs(x, ["nope"])
    with refused(r"expects inputs \(B, 16\)"):
        box(np.zeros((2, 15), np.float32))


def test_unsupported_op_runs_as_black_box_with_fixed_batch(tmp_path):
    nodes = [node("Flatten", ["x"], ["f"]), node("Sin", ["f"], ["s"], name="wave"), node("MatMul", ["s", "w0"], ["y"])]
    path = save_model(tmp_path, nodes, [1, 3, 3, 2], {"w0": w(18, 4)})
    box = import_onnx(path, (3, 3, 2))
    assert isinstance(box, BlackBox) and box.layout == "nhwc"
    assert "op Sin (node 'wave') has no native equivalent" in box.reason
    x = RNG.uniform(0, 1, (3, 18)).astype(np.float32)
    ref = np.concatenate([ort_run(path, x[i:i + 1].reshape(1, 3, 3, 2))[0] for i in range(3)])
    np.testing.assert_allclose(box(x), ref, rtol=1e-6, atol=1e-6)  # fed one sample at a time


def test_non_flatten_reshape_is_black_box(tmp_path):
    nodes = [node("Reshape", ["x", "shape"], ["r"]), node("Flatten", ["r"], ["y"])]
    path = save_model(tmp_path, nodes, ["N", 2, 4, 4], {"shape": np.array([0, 4, 2, 4], np.int64)})
    box = import_onnx(path, (4, 4, 2))
    assert isinstance(box, BlackBox) and "is not a flatten to (N, -1)" in box.reason


# ----------------------------------------------------------------------------- refusals


def test_file_refusals(tmp_path):
    with refused("is a pickle file; export ONNX"):
        import_onnx(tmp_path / "m.pt", (4, 4))
    with refused("does not exist"):
        import_onnx(tmp_path / "m.onnx", (4, 4))
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf at all")
    with refused("is not a valid ONNX model"):
        import_onnx(tmp_path / "bad.onnx", (4, 4))


def test_input_shape_refused(tmp_path):
    path = save_model(tmp_path, [node("Flatten", ["x"], ["y"])], ["N", 1, 28, 28], {})
    with refused(r"the model's input 'x' has shape \(N, 1, 28, 28\) but the data's images are 14x14; "
                 r"expected \(N, C, 14, 14\)"):
        import_onnx(path, (14, 14))
    with refused(r"images are 28x28x3"):
        import_onnx(path, (28, 28, 3))


def test_inputs_and_outputs_refused(tmp_path):
    two_in = save_model(tmp_path, [node("Add", ["x", "x2"], ["y"])], ["N", 4], {},
                        extra_inputs=[helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 4])])
    with refused("has 2 inputs"):
        import_onnx(two_in, (2, 2))
    two_out = save_model(tmp_path, [node("Relu", ["x"], ["y"]), node("Tanh", ["x"], ["y2"])], ["N", 4], {},
                         extra_outputs=[helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 4])])
    with refused("has 2 outputs"):
        import_onnx(two_out, (2, 2))


@pytest.mark.parametrize("nodes, inits, reason", [
    ([node("Div", ["c", "x"], ["d"]), node("Flatten", ["d"], ["y"])], {"c": np.float32(2.0)},
     "divides a constant by the tensor"),
    ([node("Add", ["x", "img"], ["d"]), node("Flatten", ["d"], ["y"])], {"img": w(1, 2, 4, 4)},
     r"constant of shape \(1, 2, 4, 4\): neither a scalar nor per-channel"),
    ([node("Flatten", ["x"], ["f"]), node("Softmax", ["f"], ["s"]), node("Relu", ["s"], ["y"])], {},
     "Softmax node 'Softmax_s' is not the final op"),
    ([node("Conv", ["x", "cw"], ["c"], group=2), node("Flatten", ["c"], ["y"])], {"cw": w(2, 1, 3, 3)},
     "not a 2-D conv with group 1"),
    ([node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], ceil_mode=1), node("Flatten", ["p"], ["y"])], {},
     "ceil_mode 0"),
])
def test_black_box_reasons(tmp_path, nodes, inits, reason):
    path = save_model(tmp_path, nodes, ["N", 2, 4, 4], inits)
    box = import_onnx(path, (4, 4, 2))
    assert isinstance(box, BlackBox)
    assert re.search(reason, box.reason), box.reason
    x = RNG.uniform(0, 1, (2, 32)).astype(np.float32)
    np.testing.assert_allclose(box(x), ort_run(path, to_layout(x, (4, 4, 2), "nchw"))[0].reshape(2, -1), rtol=1e-6)
