"""PyTorch state_dict import: PyTorch-layout weights written with NumPy, checked against a float64
NCHW forward written from torch.nn's definitions (torch itself is never imported)."""

from __future__ import annotations

import contextlib
import math

import jax
import numpy as np
import pytest
import yaml
from flax import nnx
from safetensors.numpy import save_file

from distill.errors import DistillError
from distill.teachers.network import Network
from distill.teachers.torch_state_dict import import_torch_state_dict


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



def logits_of(model, x):
    """The Network's logits through one jitted call (faster than compiling op by op)."""
    graphdef, state = nnx.split(model)
    return np.asarray(jax.jit(lambda s, xb: nnx.merge(graphdef, s)(xb))(state, x))


# ----------------------------------------------------------------------------- torch-definition reference


def _pair(v):
    return list(v) if isinstance(v, (list, tuple)) else [v, v]


def _windows(x, k, s, p, fill):
    """x (N, C, H, W) padded symmetrically by p with `fill` -> windows (N, C, Ho, Wo, kh, kw)."""
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])), constant_values=fill)
    ho, wo = (xp.shape[2] - k[0]) // s[0] + 1, (xp.shape[3] - k[1]) // s[1] + 1
    out = np.empty((*x.shape[:2], ho, wo, *k))
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = xp[:, :, i * s[0]:i * s[0] + k[0], j * s[1]:j * s[1] + k[1]]
    return out


def torch_forward(layers, sd, x):
    """Sequential forward in NCHW float64: each (name, kwargs) as torch.nn defines it."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    for i, (name, a) in enumerate(layers):
        if name == "Linear":
            x = x.reshape(x.shape[0], -1) if i == 0 else x  # an MLP is fed x.view(N, -1)
            x = x @ sd[f"{i}.weight"].T + sd.get(f"{i}.bias", 0.0)
        elif name == "Conv2d":
            w = sd[f"{i}.weight"]
            k, s = list(w.shape[2:]), _pair(a.get("stride", 1))
            p = a.get("padding", 0)
            if p == "valid":
                p = 0
            if p == "same":  # total k - 1, the extra one on the right/bottom
                x = np.pad(x, ((0, 0), (0, 0), ((k[0] - 1) // 2, k[0] // 2), ((k[1] - 1) // 2, k[1] // 2)))
                p = 0
            win = _windows(x, k, s, _pair(p), 0.0)
            x = np.einsum("ncijhw,ochw->noij", win, w)
            if f"{i}.bias" in sd:
                x = x + sd[f"{i}.bias"][None, :, None, None]
        elif name.startswith("BatchNorm"):
            shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
            mean, var = sd[f"{i}.running_mean"].reshape(shape), sd[f"{i}.running_var"].reshape(shape)
            x = (x - mean) / np.sqrt(var + a.get("eps", 1e-5))
            if f"{i}.weight" in sd:
                x = x * sd[f"{i}.weight"].reshape(shape) + sd[f"{i}.bias"].reshape(shape)
        elif name in ("MaxPool2d", "AvgPool2d"):
            k = _pair(a["kernel_size"])
            s = _pair(a.get("stride") or a["kernel_size"])
            p = _pair(a.get("padding", 0))
            if name == "MaxPool2d":
                x = _windows(x, k, s, p, -np.inf).max(axis=(4, 5))
            else:
                total = _windows(x, k, s, p, 0.0).sum(axis=(4, 5))
                if a.get("count_include_pad", True):
                    x = total / (k[0] * k[1])
                else:
                    x = total / _windows(np.ones((1, 1, *x.shape[2:])), k, s, p, 0.0).sum(axis=(4, 5))
        elif name == "AdaptiveAvgPool2d":
            x = x.mean(axis=(2, 3), keepdims=True)
        elif name == "Flatten":
            x = x.reshape(x.shape[0], -1)
        elif name == "ReLU":
            x = np.maximum(x, 0)
        elif name == "Tanh":
            x = np.tanh(x)
        elif name == "Sigmoid":
            x = 1 / (1 + np.exp(-x))
        elif name == "SiLU":
            x = x / (1 + np.exp(-x))
        elif name == "GELU":
            if a.get("approximate", "none") == "tanh":
                x = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
            else:
                x = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
        elif name == "LeakyReLU":
            x = np.where(x >= 0, x, a.get("negative_slope", 0.01) * x)
        elif name == "ELU":
            x = np.where(x > 0, x, a.get("alpha", 1.0) * (np.exp(x) - 1))
        elif name in ("Dropout", "Identity", "Softmax", "LogSoftmax"):
            pass  # evaluation mode; softmax is dropped by the importer, compare the logits
        else:
            raise AssertionError(name)
    return x


def weights_for(layers, c_in, seed=0):
    """A PyTorch-layout state_dict for the Sequential `layers` (name, kwargs)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for i, (name, a) in enumerate(layers):
        if name == "Linear":
            sd[f"{i}.weight"] = rng.normal(0, 1 / math.sqrt(a["in_features"]), (a["out_features"], a["in_features"]))
            if a.get("bias", True):
                sd[f"{i}.bias"] = rng.normal(0, 0.1, a["out_features"])
        elif name == "Conv2d":
            k = _pair(a["kernel_size"])
            fan = a["in_channels"] * k[0] * k[1]
            sd[f"{i}.weight"] = rng.normal(0, 1 / math.sqrt(fan), (a["out_channels"], a["in_channels"], *k))
            if a.get("bias", True):
                sd[f"{i}.bias"] = rng.normal(0, 0.1, a["out_channels"])
        elif name.startswith("BatchNorm"):
            n = a["num_features"]
            sd[f"{i}.running_mean"] = rng.normal(0, 0.5, n)
            sd[f"{i}.running_var"] = rng.uniform(0.5, 2, n)
            sd[f"{i}.num_batches_tracked"] = np.array(100, np.int64)
            if a.get("affine", True):
                sd[f"{i}.weight"], sd[f"{i}.bias"] = rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n)
    return {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in sd.items()}


def arch_entries(layers, style):
    """The arch YAML entries for `layers`: as keyword mappings, or positional lists, or bare."""
    out = []
    for name, a in layers:
        if not a:
            out.append(name)
        elif style == "positional" and name == "Linear":
            out.append({name: [a["in_features"], a["out_features"]]})
        elif style == "positional" and name == "BatchNorm2d" and list(a) == ["num_features"]:
            out.append({name: a["num_features"]})
        else:
            out.append({name: dict(a)})
    return out


def save(tmp_path, sd, fmt):
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        save_file(sd, str(path))
    else:
        np.savez(path, **sd)
    return path


def check_import(tmp_path, layers, image, fmt="safetensors", style="keyword", input_block=None, seed=0):
    h, w, c = image
    sd = weights_for(layers, c, seed)
    arch = {"layers": arch_entries(layers, style)}
    if input_block:
        arch["input"] = input_block
    arch_path = tmp_path / "arch.yaml"
    arch_path.write_text(yaml.safe_dump(arch))
    spec, params = import_torch_state_dict(save(tmp_path, sd, fmt), arch_path, image_shape=(h, w))
    model = Network(spec, params=params)
    x = np.random.default_rng(seed + 1).uniform(0, 1, (3, h * w * c)).astype(np.float32)
    xt = x.astype(np.float64).reshape(3, h, w, c).transpose(0, 3, 1, 2)  # distill HWC -> torch NCHW
    if input_block:
        xt = (xt - np.reshape(input_block.get("mean", 0.0), (1, -1, 1, 1))) / np.reshape(
            input_block.get("std", 1.0), (1, -1, 1, 1))
    ref = torch_forward(layers, sd, xt)
    np.testing.assert_allclose(logits_of(model, x), ref, rtol=1e-5, atol=1e-5)
    return spec, params


LENET_300_100 = [("Linear", {"in_features": 784, "out_features": 300}), ("ReLU", {}),
                 ("Linear", {"in_features": 300, "out_features": 100}), ("ReLU", {}),
                 ("Linear", {"in_features": 100, "out_features": 10})]

SMALL_CNN = [
    ("Conv2d", {"in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 1, "bias": False}),
    ("BatchNorm2d", {"num_features": 4}),
    ("ReLU", {}),
    ("MaxPool2d", {"kernel_size": 2}),
    ("Conv2d", {"in_channels": 4, "out_channels": 6, "kernel_size": [3, 2], "stride": 2, "padding": [1, 0]}),
    ("Tanh", {}),
    ("AvgPool2d", {"kernel_size": 2, "stride": 1, "padding": 1, "count_include_pad": False}),
    ("Flatten", {}),
    ("Dropout", {"p": 0.3}),
    ("Linear", {"in_features": 54, "out_features": 8}),
    ("BatchNorm1d", {"num_features": 8, "eps": 1e-3, "momentum": 0.2}),
    ("GELU", {"approximate": "tanh"}),
    ("Linear", {"in_features": 8, "out_features": 5}),
    ("Softmax", {"dim": 1}),
]


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
@pytest.mark.parametrize("style", ["keyword", "positional"])
def test_lenet_300_100(tmp_path, fmt, style):
    spec, params = check_import(tmp_path, LENET_300_100, (28, 28, 1), fmt, style)
    assert [(lay["name"], lay["type"], lay.get("activation")) for lay in spec["layers"]] == [
        ("flatten_0", "flatten", None), ("hidden_0", "dense", "relu"), ("hidden_1", "dense", "relu"),
        ("logits", "dense", None)]
    assert spec["layers"][0]["order"] == "chw" and spec["layers"][1]["source"] == "0"
    assert params["hidden_0"]["kernel"].shape == (784, 300)


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_small_cnn_with_batchnorm(tmp_path, fmt):
    spec, params = check_import(tmp_path, SMALL_CNN, (8, 8, 3), fmt, "positional",
                                input_block={"channels": 3, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]})
    names = [lay["name"] for lay in spec["layers"]]
    assert names == ["conv_0", "bn_0", "pool_0", "conv_1", "pool_1", "flatten_0", "dropout_0", "hidden_0",
                     "bn_1", "logits"]
    layer = {lay["name"]: lay for lay in spec["layers"]}
    assert layer["bn_0"]["activation"] == "relu" and layer["conv_1"]["activation"] == "tanh"
    assert layer["bn_1"]["activation"] == "gelu_tanh" and layer["bn_1"]["momentum"] == pytest.approx(0.8)
    assert layer["conv_1"]["padding"] == [[1, 1], [0, 0]] and layer["conv_1"]["stride"] == [2, 2]
    assert spec["notes"] == ["final Softmax (source 13) dropped: the teacher's logits are its pre-softmax outputs"]
    assert set(params) == {"conv_0", "bn_0", "conv_1", "hidden_0", "bn_1", "logits"}
    assert set(params["conv_0"]) == {"kernel"}


ACT_CNN = [
    ("Conv2d", {"in_channels": 2, "out_channels": 3, "kernel_size": 4, "padding": "same"}),
    ("LeakyReLU", {"negative_slope": 0.2}),
    ("Conv2d", {"in_channels": 3, "out_channels": 4, "kernel_size": 2, "padding": "valid"}),
    ("ELU", {"alpha": 0.5}),
    ("SiLU", {}),
    ("BatchNorm2d", {"num_features": 4, "affine": False}),
    ("Sigmoid", {}),
    ("Identity", {}),
    ("AdaptiveAvgPool2d", {"output_size": 1}),
    ("Flatten", {}),
    ("Linear", {"in_features": 4, "out_features": 6}),
    ("GELU", {}),
    ("Linear", {"in_features": 6, "out_features": 3, "bias": False}),
    ("LogSoftmax", {"dim": -1}),
]


def test_activations_same_padding_global_pool(tmp_path):
    spec, _ = check_import(tmp_path, ACT_CNN, (6, 5, 2), input_block={"channels": 2})
    kinds = [(lay["type"], lay.get("activation")) for lay in spec["layers"]]
    assert kinds == [("conv", {"name": "leaky_relu", "negative_slope": 0.2}),
                     ("conv", {"name": "elu", "alpha": 0.5}), ("activation", "silu"), ("batchnorm", "sigmoid"),
                     ("global_avgpool", None), ("flatten", None),
                     ("dense", "gelu"), ("dense", None)]
    assert spec["layers"][0]["padding"] == [[1, 2], [1, 2]]
    assert "LogSoftmax" in spec["notes"][0]


# ----------------------------------------------------------------------------- refusals


def _write(tmp_path, layers, sd=None, input_block=None):
    sd = weights_for(layers, 1) if sd is None else sd
    path = save(tmp_path, sd, "safetensors")
    arch = {"layers": arch_entries(layers, "keyword")}
    if input_block:
        arch["input"] = input_block
    return path, arch


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl", ".ckpt"])
def test_pickle_files_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04")
    with refused(r"is a pickle file; save the state_dict with safetensors "
                                           r"\(safetensors.torch.save_file\) or export ONNX \(torch.onnx.export\)"):
        import_torch_state_dict(path, {"layers": ["ReLU"]}, (2, 2))


def test_file_refusals(tmp_path):
    with refused("unsupported weights file '.h5'"):
        import_torch_state_dict(tmp_path / "w.h5", {"layers": ["ReLU"]}, (2, 2))
    with refused("does not exist"):
        import_torch_state_dict(tmp_path / "w.npz", {"layers": ["ReLU"]}, (2, 2))
    np.savez(tmp_path / "obj.npz", a=np.array([{"x": 1}], dtype=object))
    with refused("cannot read weights"):
        import_torch_state_dict(tmp_path / "obj.npz", {"layers": ["ReLU"]}, (2, 2))
    (tmp_path / "bad.yaml").write_text("layers: [Linear: {")
    path, _ = _write(tmp_path, LENET_300_100)
    with refused("is not valid YAML"):
        import_torch_state_dict(path, tmp_path / "bad.yaml", (28, 28))


MLP = [("Linear", {"in_features": 4, "out_features": 3}), ("ReLU", {}), ("Linear", {"in_features": 3, "out_features": 2})]


@pytest.mark.parametrize("arch_layers, match", [
    ([{"Linear": [4, 3]}, {"LSTM": [3, 2]}], r"arch layer #1 \(LSTM\): unsupported module 'LSTM'; supported: Linear, Conv2d"),
    ([{"Linear": [4, 3, True, 7]}, "ReLU", {"Linear": [3, 2]}], "Linear takes at most 3 positional arguments"),
    ([{"Linear": {"in_features": 4, "out": 3}}], r"unknown argument 'out'; Linear takes in_features, out_features, bias"),
    ([{"Linear": [4]}], "missing argument 'out_features'"),
    ([{"Linear": [4, 3]}, {"ReLU": None}, {"Linear": [3, 2]}, {"Softmax": 0}], "dim=0 is not supported"),
    ([{"Linear": [4, 3]}, {"Softmax": 1}, {"Linear": [3, 2]}], "Softmax .*is not the last layer"),
    ([{"Linear": [4, 3]}, {"Dropout": 1.5}, {"Linear": [3, 2]}], r"p must be in \[0, 1\)"),
    ([{"Linear": [4, 3]}, {"GELU": "erf"}, {"Linear": [3, 2]}], "approximate='erf' is not supported"),
    ([["Linear", 4, 3]], "write a module as `- Name` or `- Name: arguments`"),
])
def test_arch_refusals(tmp_path, arch_layers, match):
    path, _ = _write(tmp_path, MLP)
    with refused(match):
        import_torch_state_dict(path, {"layers": arch_layers}, (2, 2))


@pytest.mark.parametrize("args, match", [
    ({"dilation": 2}, "dilation=2 is not supported"),
    ({"groups": 2}, "groups=2 is not supported"),
    ({"padding_mode": "reflect"}, "padding_mode='reflect' is not supported"),
    ({"padding": "same", "stride": 2}, "padding='same' needs stride 1"),
])
def test_conv_argument_refusals(tmp_path, args, match):
    layers = [("Conv2d", {"in_channels": 1, "out_channels": 2, "kernel_size": 3}), ("Flatten", {})]
    path, _ = _write(tmp_path, layers)
    arch = {"layers": [{"Conv2d": {"in_channels": 1, "out_channels": 2, "kernel_size": 3, **args}}, "Flatten"]}
    with refused(match):
        import_torch_state_dict(path, arch, (6, 6))


def test_pool_and_batchnorm_argument_refusals(tmp_path):
    layers = [("BatchNorm2d", {"num_features": 1}), ("Flatten", {})]
    path, _ = _write(tmp_path, layers)
    for entry, match in [({"MaxPool2d": {"kernel_size": 2, "ceil_mode": True}}, "ceil_mode=True is not supported"),
                         ({"AvgPool2d": {"kernel_size": 2, "divisor_override": 3}}, "divisor_override=3"),
                         ({"AdaptiveAvgPool2d": 2}, "output_size=2 is not supported"),
                         ({"Flatten": {"start_dim": 0}}, "start_dim=0 is not supported")]:
        with refused(match):
            import_torch_state_dict(path, {"layers": [{"BatchNorm2d": 1}, entry, "Flatten"]}, (4, 4))
    with refused("momentum=None"):
        import_torch_state_dict(path, {"layers": [{"BatchNorm2d": {"num_features": 1, "momentum": None}}, "Flatten"]},
                                (4, 4))


def test_weight_refusals(tmp_path):
    sd = weights_for(MLP, 1)
    arch = {"layers": arch_entries(MLP, "keyword")}
    bad = dict(sd, **{"2.weight": np.zeros((3, 2), np.float32)})
    with refused(r"key '2.weight' has shape \(3, 2\) but arch layer #2 \(Linear\) "
                                           r"Linear\(3, 2\) expects \(2, 3\)"):
        import_torch_state_dict(save(tmp_path, bad, "safetensors"), arch, (2, 2))
    missing = {k: v for k, v in sd.items() if k != "0.bias"}
    with refused(r"lacks key '0.bias' for arch layer #0 \(Linear\)"):
        import_torch_state_dict(save(tmp_path, missing, "npz"), arch, (2, 2))
    extra = dict(sd, **{"3.weight": np.zeros(2, np.float32)})
    with refused(r"holds key\(s\) the arch does not use: '3.weight'; the arch is 0: Linear"):
        import_torch_state_dict(save(tmp_path, extra, "npz"), arch, (2, 2))


def test_shape_chain_and_input_refusals(tmp_path):
    layers = [("Conv2d", {"in_channels": 1, "out_channels": 2, "kernel_size": 3}), ("Flatten", {}),
              ("Linear", {"in_features": 50, "out_features": 2})]
    path, arch = _write(tmp_path, layers)
    with refused(r"layer logits \(dense, source '2'\) expects 50 input features but "
                                           r"receives 32 \(after flatten_0\)"):
        import_torch_state_dict(path, arch, (6, 6))
    with refused("input height is 7 but the data's images have 6"):
        import_torch_state_dict(path, dict(arch, input={"height": 7}), (6, 6))
    with refused("input mean has 2 values for 1 channels"):
        import_torch_state_dict(path, dict(arch, input={"mean": [0.1, 0.2]}), (6, 6))
    with refused("the input height is unknown"):
        import_torch_state_dict(path, arch, None)
