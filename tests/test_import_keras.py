"""Keras 3 import: small models saved as .keras, imported, and compared with Keras's own predict."""

from __future__ import annotations

import contextlib
import os

import jax
import numpy as np
import pytest
from flax import nnx

os.environ.setdefault("KERAS_BACKEND", "jax")
keras = pytest.importorskip("keras")

from distill.errors import DistillError  # noqa: E402
from distill.teachers.keras_import import import_keras  # noqa: E402
from distill.teachers.network import Network  # noqa: E402

L = keras.layers
RNG = np.random.default_rng(0)


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


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def randomise(model):
    """Non-trivial weights everywhere, BatchNorm moving statistics included."""
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        new = []
        for v, wt in zip(layer.weights, weights):
            if "variance" in v.path:
                new.append(RNG.uniform(0.5, 2.0, wt.shape))
            elif "gamma" in v.path:
                new.append(RNG.uniform(0.5, 1.5, wt.shape))
            else:
                fan = int(np.prod(wt.shape[:-1])) if wt.ndim > 1 else 4
                new.append(RNG.normal(0, 1 / np.sqrt(fan), wt.shape))
        layer.set_weights([n.astype(np.float32) for n in new])
    return model


def check(tmp_path, model, image, input_shape, final_softmax=False):
    """Save, import, and compare our logits (softmaxed when Keras ends in a softmax) with predict."""
    path = tmp_path / "model.keras"
    model.save(path)
    spec, params = import_keras(path, image)
    net = Network(spec, params=params)
    n_features = int(np.prod(input_shape))
    x = RNG.uniform(0, 1, (4, n_features)).astype(np.float32)
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):  # Keras's own code
        ref = np.asarray(keras.ops.convert_to_numpy(model(x.reshape(4, *input_shape), training=False)), np.float64)
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        got = logits_of(net, x).astype(np.float64)
    np.testing.assert_allclose(softmax(got) if final_softmax else got, ref, rtol=1e-5, atol=1e-5)
    return spec


def kinds(spec):
    return [(layer["name"], layer["type"], layer.get("activation")) for layer in spec["layers"]]


def test_dense_mlp(tmp_path):
    model = randomise(keras.Sequential([
        keras.Input((6, 5)), L.Flatten(), L.Dense(12, activation="relu"), L.Dropout(0.2),
        L.Dense(8, activation="gelu"), L.Dense(7, activation="leaky_relu"), L.Dense(4)]))
    spec = check(tmp_path, model, (6, 5), (6, 5))
    assert kinds(spec) == [("flatten_0", "flatten", None), ("hidden_0", "dense", "relu"),
                           ("dropout_0", "dropout", None), ("hidden_1", "dense", "gelu"),
                           ("hidden_2", "dense", {"name": "leaky_relu", "negative_slope": 0.2}),
                           ("logits", "dense", None)]
    assert spec["layers"][1]["source"] == model.layers[1].name


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_cnn_with_batchnorm_pools_and_softmax(tmp_path, padding):
    model = randomise(keras.Sequential([
        keras.Input((9, 8, 2)), L.Rescaling(2.0, offset=-0.5),
        L.Conv2D(4, 3, strides=2, padding=padding), L.BatchNormalization(epsilon=1e-3), L.ReLU(),
        L.MaxPooling2D(2, padding="same"),
        L.Conv2D(5, (2, 1), padding=padding, activation="tanh"),
        L.AveragePooling2D((2, 2), strides=1, padding="same"),
        L.Flatten(), L.Dense(6), L.LeakyReLU(negative_slope=0.1), L.Dense(3, activation="softmax")]))
    spec = check(tmp_path, model, (9, 8, 2), (9, 8, 2), final_softmax=True)
    assert [t for _, t, _ in kinds(spec)] == ["scale_shift", "conv", "batchnorm", "maxpool", "conv", "avgpool",
                                              "flatten", "dense", "dense"]
    layer = {lay["type"] + str(i): lay for i, lay in enumerate(spec["layers"])}
    assert layer["batchnorm2"]["activation"] == "relu" and layer["batchnorm2"]["momentum"] == pytest.approx(0.99)
    if padding == "same":  # 9x8, k 3, stride 2: totals 2 and 1, the odd one at the bottom/right
        assert layer["conv1"]["padding"] == [[1, 1], [0, 1]]
    assert layer["avgpool5"]["count_include_pad"] is False
    assert spec["notes"] == [f"final softmax activation (source {model.layers[-1].name}) dropped: the teacher's "
                             "logits are its pre-softmax outputs"]


def test_functional_global_pool_activation_layers_reshape(tmp_path):
    inp = keras.Input((6, 6, 3))
    h = L.Conv2D(4, 3, padding="same", use_bias=False)(inp)
    h = L.BatchNormalization(center=False, scale=False)(h)
    h = L.Activation("elu")(h)
    h = L.ELU(alpha=0.5)(h)
    h = L.GlobalAveragePooling2D(keepdims=True)(h)
    h = L.Reshape((4,))(h)
    h = L.Dense(5, activation="silu")(h)
    h = L.Activation("sigmoid")(h)
    out = L.Softmax()(L.Dense(3)(h))
    model = randomise(keras.Model(inp, out))
    spec = check(tmp_path, model, (6, 6, 3), (6, 6, 3), final_softmax=True)
    assert kinds(spec) == [("conv_0", "conv", None), ("bn_0", "batchnorm", {"name": "elu", "alpha": 1.0}),
                           ("act_0", "activation", {"name": "elu", "alpha": 0.5}), ("pool_0", "global_avgpool", None),
                           ("flatten_0", "flatten", None), ("hidden_0", "dense", "silu"),
                           ("act_1", "activation", "sigmoid"), ("logits", "dense", None)]


def test_flat_input_model(tmp_path):
    model = randomise(keras.Sequential([keras.Input((12,)), L.Dense(5, activation="tanh"), L.Dense(2)]))
    spec = check(tmp_path, model, (3, 4), (12,))
    assert kinds(spec)[0] == ("flatten_0", "flatten", None)


# ----------------------------------------------------------------------------- refusals


def test_file_refusals(tmp_path):
    with refused("is a legacy HDF5 Keras file"):
        import_keras(tmp_path / "m.h5", (4, 4))
    with refused("is a pickle file"):
        import_keras(tmp_path / "m.pt", (4, 4))
    with refused("does not exist"):
        import_keras(tmp_path / "m.keras", (4, 4))
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with refused("cannot load .* with Keras"):
        import_keras(tmp_path / "bad.keras", (4, 4))


def _saved(tmp_path, model):
    path = tmp_path / "m.keras"
    model.save(path)
    return path


@pytest.mark.parametrize("layers, match", [
    ([keras.Input((4, 4, 1)), L.Conv2D(2, 3, dilation_rate=2, padding="same"), L.Flatten(), L.Dense(2)],
     r"dilation_rate=\(2, 2\) is not supported"),
    ([keras.Input((4, 4, 1)), L.GlobalMaxPooling2D(), L.Dense(2)],
     r"\(GlobalMaxPooling2D\) is not supported; supported layers: Dense, Conv2D"),
    ([keras.Input((4, 4, 1)), L.Flatten(), L.Dense(3, activation="softmax"), L.Dense(2)],
     "a softmax activation inside the network is not supported"),
    ([keras.Input((4, 4, 1)), L.Flatten(), L.Dense(3, activation="selu"), L.Dense(2)],
     "activation 'selu' is not supported"),
    ([keras.Input((4, 4, 1)), L.Conv2D(2, 3), L.Dense(2)],
     r"layer logits \(dense, source '.*'\) needs a flat input but receives \(2, 2, 2\)"),
    ([keras.Input((4, 4, 1)), L.ReLU(max_value=6.0), L.Flatten(), L.Dense(2)], "max_value / threshold"),
])
def test_layer_refusals(tmp_path, layers, match):
    with refused(match):
        import_keras(_saved(tmp_path, keras.Sequential(layers)), (4, 4))


def test_branch_and_input_refusals(tmp_path):
    inp = keras.Input((4,))
    a = L.Dense(4)(inp)
    model = keras.Model(inp, L.Dense(2)(L.Add()([a, inp])))
    with refused("does not simply take the output of"):
        import_keras(_saved(tmp_path, model), (2, 2))
    flat = keras.Sequential([keras.Input((4, 4, 1)), L.Flatten(), L.Dense(2)])
    with refused(r"the model's input has shape \(None, 4, 4, 1\) but the data's images are 5x5"):
        import_keras(_saved(tmp_path, flat), (5, 5))
