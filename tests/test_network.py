"""The spec-driven teacher Network against a float64 NumPy forward written from the definitions."""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from distill.errors import DistillError
from distill.teachers.network import (
    Network,
    check_spec,
    cnn_spec,
    lenet5_spec,
    load_params,
    mlp_spec,
    param_shapes,
)


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



# ----------------------------------------------------------------------------- numpy reference

_erf = np.vectorize(math.erf)


def np_act(act, x):
    if act is None:
        return x
    name = act if isinstance(act, str) else act["name"]
    sig = 1.0 / (1.0 + np.exp(-x))
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "tanh":
        return np.tanh(x)
    if name == "sigmoid":
        return sig
    if name == "gelu":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    if name == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if name == "silu":
        return x * sig
    if name == "leaky_relu":
        return np.where(x >= 0, x, act["negative_slope"] * x)
    if name == "elu":
        return np.where(x > 0, x, act["alpha"] * (np.exp(x) - 1.0))
    raise AssertionError(name)


def np_window(x, kernel, stride, padding, fill):
    """All windows of x (B, H, W, C) padded with `fill`: (B, Ho, Wo, kh, kw, C)."""
    (pt, pb), (pl, pr) = padding
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=fill)
    kh, kw = kernel
    sh, sw = stride
    ho = (xp.shape[1] - kh) // sh + 1
    wo = (xp.shape[2] - kw) // sw + 1
    out = np.empty((x.shape[0], ho, wo, kh, kw, x.shape[3]))
    for i in range(ho):
        for j in range(wo):
            out[:, i, j] = xp[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :]
    return out


def np_layer(layer, p, y):
    t = layer["type"]
    if t == "dense":
        y = y @ p["kernel"] + (p["bias"] if layer["bias"] else 0.0)
    elif t == "conv":  # im2col: every window times the HWIO kernel
        win = np_window(y, layer["kernel"], layer["stride"], layer["padding"], 0.0)
        y = np.einsum("bijhwc,hwco->bijo", win, p["kernel"]) + (p["bias"] if layer["bias"] else 0.0)
    elif t == "batchnorm":
        y = (y - p["mean"]) / np.sqrt(p["var"] + layer["eps"]) * p["scale"] + p["bias"]
    elif t == "maxpool":
        y = np_window(y, layer["kernel"], layer["stride"], layer["padding"], -np.inf).max(axis=(3, 4))
    elif t == "avgpool":
        s = np_window(y, layer["kernel"], layer["stride"], layer["padding"], 0.0).sum(axis=(3, 4))
        if layer["count_include_pad"]:
            y = s / np.prod(layer["kernel"])
        else:
            ones = np.ones((1, *y.shape[1:3], 1))
            y = s / np_window(ones, layer["kernel"], layer["stride"], layer["padding"], 0.0).sum(axis=(3, 4))
    elif t == "global_avgpool":
        y = y.mean(axis=(1, 2), keepdims=True)
    elif t == "flatten":
        if y.ndim == 4:
            y = (y.transpose(0, 3, 1, 2) if layer["order"] == "chw" else y).reshape(y.shape[0], -1)
    elif t == "scale_shift":
        y = y * np.asarray(layer["scale"]) + np.asarray(layer["shift"])
    return y


def np_forward(spec, params, x):
    """Float64 reference: {name: output, name.pre: before fused activation, logits}."""
    inp = spec["input"]
    y = np.asarray(x, np.float64).reshape(-1, inp["height"], inp["width"], inp["channels"])
    y = (y - np.asarray(inp["mean"])) / np.asarray(inp["std"])
    out = {}
    for layer in spec["layers"]:
        p = {k: np.asarray(v, np.float64) for k, v in params.get(layer["name"], {}).items()}
        y = np_layer(layer, p, y)
        act = layer.get("activation")
        if layer["type"] in ("dense", "conv", "batchnorm") and act is not None:
            out[layer["name"] + ".pre"] = y
        y = np_act(act, y)
        out[layer["name"]] = y
    out["logits"] = y
    return out


def random_params(spec, seed=0):
    rng = np.random.default_rng(seed)
    params = {}
    for name, shapes in param_shapes(spec).items():
        params[name] = {}
        for key, shape in shapes.items():
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            if key == "var":
                arr = rng.uniform(0.5, 2.0, shape)
            elif key == "scale":
                arr = rng.uniform(0.5, 1.5, shape)
            else:
                arr = rng.normal(0.0, 1.0 / math.sqrt(fan_in), shape)
            params[name][key] = arr.astype(np.float32)
    return params


def built(spec, seed=0):
    params = random_params(check_spec(spec)[0], seed)
    return Network(spec, rngs=nnx.Rngs(seed), params=params), params


def forward(model, x):
    """(activations, logits) through one jitted function (compiling op by op is slower)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, x):
        m = nnx.merge(graphdef, state)
        return m.activations(x), m(x)

    return run(state, jnp.asarray(x, jnp.float32))


def assert_matches(spec, x, seed=0):
    model, params = built(spec, seed)
    ref = np_forward(model.spec, params, x)
    got, logits = forward(model, x)  # (jit returns the dict sorted: the order is checked eagerly below)
    assert set(got) == set(ref) == set(model.activation_names)
    for k, v in got.items():
        np.testing.assert_allclose(np.asarray(v), ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], rtol=1e-5, atol=1e-5)
    return model


def inp(h, w, c, mean=None, std=None):
    return {"height": h, "width": w, "channels": c, "mean": mean or [0.0] * c, "std": std or [1.0] * c}


def pads(t, b, left, r):
    return [[t, b], [left, r]]


def cnn_layers(count_include_pad=True, order="chw"):
    return [
        {"type": "scale_shift", "name": "scale_shift_0", "scale": [2.0, 0.5, -1.0], "shift": 0.25},
        {"type": "conv", "name": "conv_0", "in_channels": 3, "out_channels": 4, "kernel": [3, 2],
         "stride": [2, 1], "padding": pads(1, 2, 0, 1), "bias": True, "activation": None},
        {"type": "batchnorm", "name": "bn_0", "features": 4, "eps": 1e-3, "momentum": 0.9, "activation": "relu"},
        {"type": "maxpool", "name": "pool_0", "kernel": [2, 3], "stride": [1, 2], "padding": pads(1, 0, 1, 1)},
        {"type": "conv", "name": "conv_1", "in_channels": 4, "out_channels": 5, "kernel": [2, 2],
         "stride": [1, 1], "padding": pads(1, 1, 1, 1), "bias": False, "activation": "tanh"},
        {"type": "avgpool", "name": "pool_1", "kernel": [3, 3], "stride": [2, 2],
         "padding": pads(1, 1, 1, 1), "count_include_pad": count_include_pad},
        {"type": "dropout", "name": "dropout_0", "rate": 0.5},
        {"type": "flatten", "name": "flatten_0", "order": order},
        {"type": "dense", "name": "hidden_0", "in_features": 3 * 2 * 5, "out_features": 7, "bias": True,
         "activation": {"name": "elu", "alpha": 0.7}},
        {"type": "batchnorm", "name": "bn_1", "features": 7, "eps": 1e-5, "momentum": 0.99, "activation": None},
        {"type": "dense", "name": "logits", "in_features": 7, "out_features": 3, "bias": True, "activation": None},
    ]


def cnn_test_spec(**kw):
    return {"kind": "network", "input": inp(7, 6, 3, [0.1, 0.2, 0.3], [0.5, 1.5, 2.0]), "layers": cnn_layers(**kw)}


X_CNN = np.random.default_rng(1).uniform(0, 1, (4, 7 * 6 * 3)).astype(np.float32)


# ----------------------------------------------------------------------------- forward values


def test_mlp_spec_matches_numpy():
    spec = mlp_spec(12, [8, 6], 4, "gelu", image_shape=(3, 4))
    assert [layer["name"] for layer in spec["layers"]] == ["flatten_0", "hidden_0", "hidden_1", "logits"]
    x = np.random.default_rng(0).uniform(0, 1, (5, 12))
    model = assert_matches(spec, x)
    assert model.activation_names == ("flatten_0", "hidden_0.pre", "hidden_0", "hidden_1.pre", "hidden_1", "logits")
    assert set(nnx.to_pure_dict(nnx.state(model, nnx.Param))) == {"hidden_0", "hidden_1", "logits"}


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("order", ["chw", "hwc"])
def test_cnn_matches_numpy(count_include_pad, order):
    model = assert_matches(cnn_test_spec(count_include_pad=count_include_pad, order=order), X_CNN)
    assert model.input_shape == (7, 6, 3) and model.n_features == 126 and model.n_classes == 3
    assert forward(model, X_CNN)[0]["pool_1"].shape == (4, 3, 2, 5)


def test_count_include_pad_and_flatten_order_change_the_output():
    a = forward(built(cnn_test_spec(count_include_pad=True))[0], X_CNN)[1]
    b = forward(built(cnn_test_spec(count_include_pad=False))[0], X_CNN)[1]
    c = forward(built(cnn_test_spec(order="hwc"))[0], X_CNN)[1]
    assert np.abs(np.asarray(a - b)).max() > 1e-3
    assert np.abs(np.asarray(a - c)).max() > 1e-3


def test_global_avgpool_and_standalone_activation():
    layers = [
        {"type": "conv", "name": "conv_0", "in_channels": 2, "out_channels": 3, "kernel": [3, 3],
         "stride": [1, 1], "padding": pads(1, 1, 1, 1), "bias": True, "activation": "silu"},
        {"type": "activation", "name": "act_0", "activation": {"name": "leaky_relu", "negative_slope": 0.2}},
        {"type": "global_avgpool", "name": "pool_0"},
        {"type": "flatten", "name": "flatten_0", "order": "chw"},
    ]
    spec = {"kind": "network", "input": inp(5, 4, 2), "layers": layers}
    x = np.random.default_rng(2).uniform(0, 1, (3, 40))
    model = assert_matches(spec, x)
    assert model.activation_names[-2:] == ("flatten_0", "logits") and model.n_classes == 3


ACTS = ["relu", "tanh", "sigmoid", "gelu", "gelu_tanh", "silu", "leaky_relu", "elu",
        {"name": "leaky_relu", "negative_slope": 0.3}, {"name": "elu", "alpha": 0.5}]


@pytest.mark.parametrize("act", ACTS, ids=str)
def test_every_activation(act):
    spec = mlp_spec(6, [9], 2, act, image_shape=(2, 3))
    x = np.random.default_rng(3).normal(0, 2, (8, 6))  # both signs, beyond [0, 1]
    assert_matches(spec, x)


def test_default_activation_parameters_are_written_out():
    spec = check_spec(mlp_spec(4, [3], 2, "leaky_relu"))[0]
    assert spec["layers"][1]["activation"] == {"name": "leaky_relu", "negative_slope": 0.01}
    assert check_spec(mlp_spec(4, [3], 2, "elu"))[0]["layers"][1]["activation"] == {"name": "elu", "alpha": 1.0}


def test_jit_through_split_merge_matches_eager():
    model, _ = built(cnn_test_spec())
    graphdef, state = nnx.split(model)
    assert list(model.activations(X_CNN)) == list(model.activation_names)  # forward order
    fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    np.testing.assert_allclose(np.asarray(fwd(state, X_CNN)), np.asarray(model(X_CNN)), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- train / eval modes


def test_train_mode_updates_batchnorm_and_drops_out():
    model, params = built(cnn_test_spec())
    x = jnp.asarray(X_CNN)
    first = np.asarray(model(x))
    np.testing.assert_array_equal(first, np.asarray(model(x)))  # eval: deterministic
    np.testing.assert_array_equal(np.asarray(model.bn_0.mean[...]), params["bn_0"]["mean"])
    model.train()
    acts = model.activations(x)
    d_in, d_out = np.asarray(acts["pool_1"]), np.asarray(acts["dropout_0"])
    kept = d_out != 0
    assert 0 < kept.mean() < 1  # some units dropped, the rest scaled by 1 / (1 - rate)
    np.testing.assert_allclose(d_out[kept], 2.0 * d_in[kept], rtol=1e-6)
    # running = momentum * running + (1 - momentum) * batch statistic (flax convention)
    pre = np.asarray(acts["conv_0"], np.float64)  # conv_0 feeds bn_0
    model2, _ = built(cnn_test_spec())
    model2.train()
    model2.activations(x)
    batch_mean = pre.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(np.asarray(model2.bn_0.mean[...]),
                               0.9 * params["bn_0"]["mean"] + 0.1 * batch_mean, rtol=1e-5, atol=1e-6)
    model.eval()
    frozen_stats = np.asarray(model.bn_0.mean[...])
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(model(x)))
    np.testing.assert_array_equal(np.asarray(model.bn_0.mean[...]), frozen_stats)


# ----------------------------------------------------------------------------- builders


def test_lenet5_shapes_and_forward():
    spec = lenet5_spec(10, "tanh")
    x = np.random.default_rng(4).uniform(0, 1, (2, 784))
    model = assert_matches(spec, x)
    shapes = {k: v.shape[1:] for k, v in forward(model, x)[0].items()}
    assert shapes["conv_0"] == (28, 28, 6) and shapes["pool_0"] == (14, 14, 6)
    assert shapes["conv_1"] == (10, 10, 16) and shapes["pool_1"] == (5, 5, 16)
    assert shapes["flatten_0"] == (400,) and shapes["hidden_0"] == (120,) and shapes["hidden_1"] == (84,)
    assert shapes["logits"] == (10,)
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == 156 + 2416 + 48120 + 10164 + 850  # the classic LeNet-5 parameter count


def test_cnn_spec_with_batchnorm_and_dropout():
    spec = cnn_spec((8, 8, 3), 5, blocks=[4, {"channels": 6, "pool": "avg", "kernel": 2}], dense=(7,),
                    batchnorm=True, dropout=0.25, mean=[0.5, 0.4, 0.3], std=0.2)
    names = [(layer["name"], layer["type"]) for layer in spec["layers"]]
    assert names == [("conv_0", "conv"), ("bn_0", "batchnorm"), ("pool_0", "maxpool"), ("conv_1", "conv"),
                     ("bn_1", "batchnorm"), ("pool_1", "avgpool"), ("flatten_0", "flatten"),
                     ("hidden_0", "dense"), ("dropout_0", "dropout"), ("logits", "dense")]
    assert spec["layers"][3]["padding"] == [[0, 1], [0, 1]]  # even kernel "same": extra at the end
    assert spec["layers"][0]["bias"] is False and spec["input"]["std"] == [0.2, 0.2, 0.2]
    assert_matches(spec, np.random.default_rng(5).uniform(0, 1, (3, 192)))


@pytest.mark.parametrize("kwargs, match", [
    ({"blocks": [{"channels": 4, "stride": 2}]}, "block #0 has unknown option 'stride'"),
    ({"blocks": [0]}, "block #0 needs channels"),
    ({"pool": "min"}, "pool must be 'max', 'avg' or null"),
    ({"padding": "full"}, "padding must be 'same', 'valid'"),
    ({"blocks": [4, 4, 4, 4]}, "does not fit its padded input"),
])
def test_cnn_spec_refusals(kwargs, match):
    with refused(match):
        cnn_spec((8, 8, 1), 3, **kwargs)


def test_mlp_spec_refusals():
    with refused(r"holds 784 values, not in_features=700"):
        mlp_spec(700, [10], 10, "relu", image_shape=(28, 28))
    with refused("unknown activation 'swish'"):
        mlp_spec(4, [3], 2, "swish")


# ----------------------------------------------------------------------------- spec validation


def _mlp_cnn_spec():
    layers = [
        {"type": "conv", "name": "conv_0", "in_channels": 1, "out_channels": 8, "kernel": [3, 3],
         "stride": [1, 1], "padding": pads(0, 0, 0, 0), "bias": True, "activation": "relu"},
        {"type": "maxpool", "name": "pool_0", "kernel": [2, 2], "stride": [2, 2], "padding": pads(0, 0, 0, 0)},
        {"type": "flatten", "name": "flatten_0", "order": "chw"},
        {"type": "dense", "name": "hidden_0", "in_features": 1568, "out_features": 10, "bias": True, "activation": None},
    ]
    return {"kind": "network", "input": inp(26, 26, 1), "layers": layers}


def _mutate(path, value):
    spec = _mlp_cnn_spec()
    target = spec
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return spec


@pytest.mark.parametrize("path, value, match", [
    (("layers", 3, "name"), "hidden_0", r"layer hidden_0 \(dense\) expects 1568 input features but receives 1152 \(after flatten_0\)"),
    (("layers", 1, "type"), "minpool", "unknown layer type 'minpool'"),
    (("layers", 0, "stride"), KeyError, r"layer conv_0 \(conv\) is missing the field 'stride'"),
    (("layers", 0, "strides"), [1, 1], "has unknown field 'strides'"),
    (("layers", 0, "in_channels"), 3, r"expects 3 input channels but receives 1 \(after the input\)"),
    (("layers", 0, "activation"), "swish", "unknown activation 'swish'"),
    (("layers", 0, "activation"), {"name": "elu", "beta": 1}, "takes no parameter 'beta'"),
    (("layers", 0, "kernel"), [3], r"kernel must be \[h, w\]"),
    (("layers", 1, "padding"), pads(2, 0, 0, 0), "must be smaller than the kernel"),
    (("layers", 2, "type"), "dropout", "unknown field 'order'"),
    (("layers", 1, "name"), "conv_0", "two layers named 'conv_0'"),
    (("layers", 1, "name"), "logits", "only the last layer may be named 'logits'"),
    (("layers", 1, "name"), "spec", "needs a name that is a Python identifier"),
    (("layers", 3, "in_features"), True, "in_features must be an integer >= 1"),
    (("input", "mean"), [0.0, 0.0], "mean must be a list of 1 numbers"),
    (("input", "std"), [0.0], "std must be > 0"),
    (("kind",), "mlp", "needs kind 'network'"),
])
def test_spec_refusals(path, value, match):
    if path == ("layers", 3, "name"):  # a shape-chain error: 26 -> conv 24 -> pool 12 -> 1152 != 1568
        spec = _mlp_cnn_spec()
    else:
        spec = _mutate(path, value)
        spec["layers"][3]["in_features"] = 1152 if path[-1] != "in_features" else value
    with refused(match):
        Network(spec)


def test_dense_on_an_image_and_image_output_refused():
    spec = _mlp_cnn_spec()
    del spec["layers"][2]
    with refused(r"needs a flat input but receives \(12, 12, 8\) \(after pool_0\); insert a flatten"):
        Network(spec)
    spec = _mlp_cnn_spec()
    spec["layers"] = spec["layers"][:2]
    with refused(r"output per sample is \(12, 12, 8\), not a vector of logits"):
        Network(spec)


def test_load_params_refusals():
    spec = mlp_spec(4, [3], 2)
    model = Network(spec)
    good = random_params(check_spec(spec)[0])
    bad = {**good, "hidden_0": {**good["hidden_0"], "kernel": np.zeros((3, 4), np.float32)}}
    with refused(r"param hidden_0.kernel has shape \(3, 4\) but the network expects \(4, 3\)"):
        load_params(model, bad)
    with refused("params lack logits.bias"):
        load_params(model, {**good, "logits": {"kernel": good["logits"]["kernel"]}})
    with refused("unexpected 'hidden_9.kernel'"):
        load_params(model, {**good, "hidden_9": {"kernel": np.zeros(1)}})
    with refused("hidden_0.bias holds NaN"):
        load_params(model, {**good, "hidden_0": {**good["hidden_0"], "bias": np.full(3, np.nan)}})
    with refused(r"expects inputs \(B, 4\)"):
        model(jnp.zeros((2, 5)))
    with refused(r"param logits.kernel has shape \(3, 3\) but the network expects \(3, 2\)"):
        Network(spec, params={**good, "logits": {**good["logits"], "kernel": np.zeros((3, 3))}})


def test_spec_is_a_fresh_canonical_dict():
    model = nnx.eval_shape(lambda: Network(_mutate(("layers", 3, "in_features"), 1152)))
    spec = model.spec
    spec["layers"].clear()
    assert len(model.spec["layers"]) == 4
    assert model.spec["layers"][1]["type"] == "maxpool"


def test_gradients_flow_through_every_layer_in_train_mode():
    model, _ = built(cnn_test_spec())
    model.train()
    x = jnp.asarray(X_CNN)

    @nnx.jit
    def grads_of(m):  # train mode: BatchNorm uses (and updates) batch statistics
        return nnx.grad(lambda m: jnp.mean(m(x) ** 2))(m)

    grads = nnx.to_pure_dict(grads_of(model))
    assert set(grads) == {"conv_0", "bn_0", "conv_1", "hidden_0", "bn_1", "logits"}
    for name, leaves in grads.items():
        for key, g in leaves.items():
            g = np.asarray(g)
            assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, f"{name}.{key}"
