"""Tests for distill.teachers: MLP forward values, checkpoint round-trip/validation/atomicity,
and the frozen batched forward helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from distill import io as distill_io
from distill import teachers
from distill.errors import DistillError
from distill.teachers import (
    ACTIVATIONS,
    MLP,
    frozen_activations,
    frozen_logits,
    load_teacher,
    save_state,
    save_teacher,
    load_state,
)

NP_ACTS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
}


def _params_np(model: MLP) -> dict:
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _randomize_biases(model: MLP, seed: int = 0) -> None:
    """Linear biases start at zero; make them non-zero so the tests see them."""
    rng = np.random.default_rng(seed)
    for name in model.layer_names:
        layer = getattr(model, name)
        layer.bias[...] = jax.numpy.asarray(rng.normal(size=layer.bias.shape), np.float32)


def _make(hidden=(7, 5), activation="relu", in_features=6, n_classes=3, seed=0) -> MLP:
    m = MLP(in_features, list(hidden), n_classes, activation=activation, rngs=nnx.Rngs(seed))
    _randomize_biases(m, seed)
    return m


def _x(n=11, d=6, seed=1):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _listdir(p: Path) -> list[str]:
    return sorted(os.listdir(p))


# ------------------------------------------------------------------------------- model


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_forward_matches_numpy(activation):
    m = _make(activation=activation)
    x = _x()
    p = _params_np(m)
    h = x.astype(np.float64)
    for name in ("hidden_0", "hidden_1"):
        h = NP_ACTS[activation](h @ p[name]["kernel"] + p[name]["bias"])
    want = h @ p["logits"]["kernel"] + p["logits"]["bias"]
    got = np.asarray(m(x))
    assert got.shape == (11, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_layer_names_spec_and_param_paths():
    m = _make(hidden=(7, 5), activation="tanh")
    assert m.layer_names == ("hidden_0", "hidden_1", "logits")
    assert m.spec == {
        "kind": "mlp",
        "in_features": 6,
        "hidden": [7, 5],
        "n_classes": 3,
        "activation": "tanh",
    }
    json.dumps(m.spec)  # JSON-able
    p = _params_np(m)
    assert set(p) == {"hidden_0", "hidden_1", "logits"}
    assert p["hidden_0"]["kernel"].shape == (6, 7)
    assert p["hidden_1"]["kernel"].shape == (7, 5)
    assert p["logits"]["kernel"].shape == (5, 3)
    assert p["logits"]["bias"].shape == (3,)


def test_no_hidden_layers_is_linear():
    m = _make(hidden=())
    assert m.layer_names == ("logits",)
    x = _x()
    p = _params_np(m)
    np.testing.assert_allclose(
        np.asarray(m(x)), x @ p["logits"]["kernel"] + p["logits"]["bias"], rtol=1e-5, atol=1e-5
    )
    assert list(m.activations(x)) == ["logits"]


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_activations_dict(activation):
    m = _make(hidden=(7, 5), activation=activation)
    x = _x()
    acts = m.activations(x)
    assert list(acts) == ["hidden_0.pre", "hidden_0", "hidden_1.pre", "hidden_1", "logits"]
    assert tuple(acts) == m.activation_names
    act = ACTIVATIONS[activation]
    np.testing.assert_allclose(acts["hidden_0"], act(acts["hidden_0.pre"]), rtol=1e-6)
    np.testing.assert_allclose(acts["hidden_1"], act(acts["hidden_1.pre"]), rtol=1e-6)
    p = _params_np(m)
    np.testing.assert_allclose(
        acts["hidden_0.pre"], x @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(acts["logits"], m(x), rtol=1e-6, atol=1e-6)
    assert acts["hidden_0"].shape == (11, 7) and acts["hidden_1.pre"].shape == (11, 5)


def test_relu_activation_zeroes_negatives():
    m = _make(activation="relu")
    acts = m.activations(_x(n=50))
    pre, post = np.asarray(acts["hidden_0.pre"]), np.asarray(acts["hidden_0"])
    assert (pre < 0).any() and (pre > 0).any()
    np.testing.assert_array_equal(post, np.where(pre > 0, pre, 0.0))


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(activation="swish"), "swish"),
        (dict(hidden=[8, 0]), "hidden"),
        (dict(hidden=[-3]), "hidden"),
        (dict(in_features=0), "in_features"),
        (dict(n_classes=-1), "n_classes"),
        (dict(hidden=[2.5]), "hidden"),
        (dict(hidden="64"), "hidden"),
    ],
)
def test_bad_constructor_args(kwargs, needle):
    args = dict(in_features=4, hidden=[8], n_classes=2, activation="relu") | kwargs
    with pytest.raises(DistillError) as ei:
        MLP(args.pop("in_features"), args.pop("hidden"), args.pop("n_classes"), rngs=nnx.Rngs(0), **args)
    msg = str(ei.value)
    assert needle in msg and "\n" not in msg


# ------------------------------------------------------------------------- checkpoints


def test_save_load_roundtrip(tmp_path):
    m = _make(hidden=(7, 5), activation="tanh")
    meta = {
        "dataset": "mnist",
        "image_shape": [28, 28],
        "downsample": 2,
        "test_accuracy": 0.9731,
        "notes": None,
    }
    ck = tmp_path / "runs" / "teacher"  # parent does not exist yet
    save_teacher(m, ck, meta)
    assert (ck / "teacher.json").is_file() and (ck / "params").is_dir()
    doc = json.loads((ck / "teacher.json").read_text())
    assert doc["spec"] == m.spec and doc["metadata"] == meta

    m2, meta2 = load_teacher(ck)
    assert isinstance(m2, MLP)
    assert meta2 == meta
    assert m2.spec == m.spec and m2.layer_names == m.layer_names
    p1, p2 = _params_np(m), _params_np(m2)
    assert jax.tree.structure(p1) == jax.tree.structure(p2)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    x = _x()
    np.testing.assert_array_equal(np.asarray(m2(x)), np.asarray(m(x)))
    # loaded arrays are real jax arrays, usable under jit
    assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(nnx.state(m2)))
    # no temp dirs left next to the checkpoint
    assert _listdir(ck.parent) == ["teacher"]


def test_second_save_overwrites(tmp_path):
    ck = tmp_path / "t"
    m1 = _make(seed=0)
    save_teacher(m1, ck, {"dataset": "mnist", "run": 1})
    m2 = _make(hidden=(9,), seed=5)
    save_teacher(m2, ck, {"dataset": "fashion", "run": 2})
    assert _listdir(tmp_path) == ["t"]
    m3, meta = load_teacher(ck)
    assert meta == {"dataset": "fashion", "run": 2}
    assert m3.spec["hidden"] == [9]
    x = _x()
    np.testing.assert_array_equal(np.asarray(m3(x)), np.asarray(m2(x)))


def test_str_path_and_expected_ok(tmp_path):
    m = _make(hidden=(7, 5))
    save_teacher(m, str(tmp_path / "t"), {"dataset": "mnist", "downsample": 2})
    # tuples vs lists compare equal; spec and metadata keys both accepted
    _, meta = load_teacher(
        str(tmp_path / "t"),
        expected={"hidden": (7, 5), "in_features": 6, "n_classes": 3, "activation": "relu",
                  "dataset": "mnist", "downsample": 2},
    )
    assert meta["downsample"] == 2


def test_expected_mismatch_names_key_and_values(tmp_path):
    ck = tmp_path / "t"
    save_teacher(_make(hidden=(7, 5)), ck, {"dataset": "mnist", "downsample": 2})
    with pytest.raises(DistillError) as ei:
        load_teacher(ck, expected={"hidden": [64], "dataset": "mnist"})
    msg = str(ei.value)
    assert "\n" not in msg
    assert "hidden=[7, 5]" in msg and "[64]" in msg and str(ck) in msg
    assert "dataset" not in msg  # matching keys are not reported

    with pytest.raises(DistillError) as ei:
        load_teacher(ck, expected={"downsample": 4, "activation": "tanh"})
    msg = str(ei.value)
    assert "downsample=2" in msg and "4" in msg
    assert 'activation="relu"' in msg and '"tanh"' in msg

    with pytest.raises(DistillError, match="records no image_shape"):
        load_teacher(ck, expected={"image_shape": [28, 28]})


def test_missing_path(tmp_path):
    with pytest.raises(DistillError) as ei:
        load_teacher(tmp_path / "nope")
    msg = str(ei.value)
    assert msg.startswith("no teacher checkpoint at") and "distill teacher" in msg
    assert "\n" not in msg


def test_path_is_a_file_or_dir_without_json(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(DistillError, match="is a file"):
        load_teacher(f)
    d = tmp_path / "d"
    d.mkdir()
    with pytest.raises(DistillError, match="teacher.json is missing"):
        load_teacher(d)


def test_corrupt_teacher_json(tmp_path):
    ck = tmp_path / "t"
    save_teacher(_make(), ck, {"dataset": "mnist"})
    (ck / "teacher.json").write_text('{"spec": {"kind": "mlp", ')
    with pytest.raises(DistillError) as ei:
        load_teacher(ck)
    assert "not valid JSON" in str(ei.value) and "\n" not in str(ei.value)
    (ck / "teacher.json").write_text("[1, 2]")
    with pytest.raises(DistillError, match="spec"):
        load_teacher(ck)
    (ck / "teacher.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DistillError, match="not valid JSON"):
        load_teacher(ck)


def test_bad_spec_in_json(tmp_path):
    ck = tmp_path / "t"
    save_teacher(_make(), ck, {})
    doc = json.loads((ck / "teacher.json").read_text())
    for spec_patch, needle in [
        ({"activation": "swish"}, "swish"),
        ({"kind": "cnn"}, "cnn"),
        ({"hidden": ["a"]}, "hidden"),
    ]:
        d = json.loads(json.dumps(doc))
        d["spec"].update(spec_patch)
        (ck / "teacher.json").write_text(json.dumps(d))
        with pytest.raises(DistillError) as ei:
            load_teacher(ck)
        assert needle in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize(
    "patch, needle",
    [
        ({"hidden": [7, 6]}, "hidden_1.kernel is float32[7, 5] on disk but expected float32[7, 6]"),
        ({"in_features": 8}, "hidden_0.kernel is float32[6, 7] on disk but expected float32[8, 7]"),
        ({"hidden": [7]}, "unexpected array hidden_1"),
        ({"hidden": [7, 5, 4]}, "hidden_2.bias is missing on disk"),
    ],
)
def test_arrays_do_not_match_spec(tmp_path, patch, needle):
    ck = tmp_path / "t"
    save_teacher(_make(hidden=(7, 5)), ck, {"dataset": "mnist"})
    doc = json.loads((ck / "teacher.json").read_text())
    doc["spec"].update(patch)
    (ck / "teacher.json").write_text(json.dumps(doc))
    with pytest.raises(DistillError) as ei:
        load_teacher(ck)
    msg = str(ei.value)
    assert "could not restore weights" in msg and "\n" not in msg
    assert needle in msg


def test_corrupt_or_missing_params(tmp_path):
    ck = tmp_path / "t"
    save_teacher(_make(), ck, {})
    # truncate every data file orbax wrote
    for root, _, files in os.walk(ck / "params"):
        for name in files:
            p = Path(root, name)
            if p.stat().st_size > 0:
                p.write_bytes(b"\x00garbage")
    with pytest.raises(DistillError, match="could not restore weights"):
        load_teacher(ck)
    import shutil

    shutil.rmtree(ck / "params")
    with pytest.raises(DistillError, match="no params/ weights"):
        load_teacher(ck)


def test_bad_metadata(tmp_path):
    with pytest.raises(DistillError, match="JSON"):
        save_teacher(_make(), tmp_path / "t", {"x": object()})
    with pytest.raises(DistillError, match="dict"):
        save_teacher(_make(), tmp_path / "t", ["not", "a", "dict"])
    assert _listdir(tmp_path) == []


def test_refuses_to_overwrite_non_checkpoint(tmp_path):
    d = tmp_path / "precious"
    d.mkdir()
    (d / "data.txt").write_text("keep me")
    with pytest.raises(DistillError, match="refusing to overwrite"):
        save_teacher(_make(), d, {})
    assert (d / "data.txt").read_text() == "keep me"
    assert _listdir(tmp_path) == ["precious"]


# -------------------------------------------------------------------------- atomicity


def _boom(*args, **kwargs):
    raise RuntimeError("simulated crash during orbax save")


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(ocp.StandardCheckpointer, "save", _boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_teacher(_make(), tmp_path / "t", {"dataset": "mnist"})
    assert _listdir(tmp_path) == []


def test_failed_overwrite_keeps_old_checkpoint(tmp_path, monkeypatch):
    ck = tmp_path / "t"
    m_old = _make(seed=0)
    save_teacher(m_old, ck, {"run": "old"})
    monkeypatch.setattr(ocp.StandardCheckpointer, "save", _boom)
    with pytest.raises(RuntimeError):
        save_teacher(_make(seed=3), ck, {"run": "new"})
    monkeypatch.undo()
    assert _listdir(tmp_path) == ["t"]
    m, meta = load_teacher(ck)
    assert meta == {"run": "old"}
    x = _x()
    np.testing.assert_array_equal(np.asarray(m(x)), np.asarray(m_old(x)))


def test_failure_after_weights_written_leaves_nothing(tmp_path, monkeypatch):
    """A crash after orbax finished but before the final rename (here: in the JSON
    fsync) must also not leave the target or a temp dir behind."""

    def bad_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(distill_io.os, "fsync", bad_fsync)
    with pytest.raises(KeyboardInterrupt):
        save_teacher(_make(), tmp_path / "t", {})
    assert _listdir(tmp_path) == []


def test_failed_swap_restores_old_checkpoint(tmp_path, monkeypatch):
    ck = tmp_path / "t"
    save_teacher(_make(seed=0), ck, {"run": "old"})
    real_replace = os.replace

    def flaky_replace(src, dst):
        if ".tmp-" in Path(src).name:  # the final "new checkpoint into place" rename
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(distill_io.os, "replace", flaky_replace)
    with pytest.raises(DistillError) as ei:
        save_teacher(_make(seed=3), ck, {"run": "new"})
    assert "could not write teacher checkpoint" in str(ei.value)
    monkeypatch.undo()
    assert _listdir(tmp_path) == ["t"]
    _, meta = load_teacher(ck)
    assert meta == {"run": "old"}


def test_save_and_load_are_quiet(tmp_path, capfd):
    from absl import logging as absl_logging

    before = absl_logging.get_verbosity()
    save_teacher(_make(), tmp_path / "t", {})
    load_teacher(tmp_path / "t")
    assert absl_logging.get_verbosity() == before
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# --------------------------------------------------------------------- frozen forward


def test_frozen_logits_equals_model_and_is_numpy():
    m = _make(hidden=(7, 5))
    x = _x(n=37)
    got = frozen_logits(m, x)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (37, 3)
    np.testing.assert_allclose(got, np.asarray(m(x)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bs", [1, 5, 10, 37, 1000])
def test_frozen_logits_batching_invariant(bs):
    m = _make(hidden=(7, 5))
    x = _x(n=37)
    np.testing.assert_allclose(
        frozen_logits(m, x, batch_size=bs), frozen_logits(m, x, batch_size=37), rtol=1e-6, atol=1e-6
    )


def test_frozen_activations():
    m = _make(hidden=(7, 5), activation="tanh")
    x = _x(n=23)
    names = ["hidden_1", "hidden_0.pre", "logits"]
    got = frozen_activations(m, x, names, batch_size=4)
    assert list(got) == names
    ref = m.activations(x)
    for n in names:
        assert isinstance(got[n], np.ndarray)
        np.testing.assert_allclose(got[n], np.asarray(ref[n]), rtol=1e-6, atol=1e-6)
    with pytest.raises(DistillError, match="hidden_9"):
        frozen_activations(m, x, ["hidden_9"])


def test_frozen_has_no_gradient_path():
    """The numpy outputs are constants: a loss built on them has zero grad wrt the input."""
    m = _make()
    x = _x(n=4)
    t = frozen_logits(m, x)
    g = jax.grad(lambda z: jax.numpy.sum((z @ np.ones((6, 3), np.float32)) * t))(x)
    assert np.isfinite(np.asarray(g)).all()
    # inside jit under grad the stop_gradient'd forward gives zero gradient wrt params
    graphdef, params = nnx.split(m)
    grads = jax.grad(
        lambda p: jax.numpy.sum(teachers.frozen._forward(graphdef, p, x, ("logits",))["logits"])
    )(params)
    assert all(float(np.abs(np.asarray(v)).max()) == 0.0 for v in jax.tree.leaves(grads))


def test_frozen_bad_inputs():
    m = _make()
    with pytest.raises(DistillError, match=r"\(N, 6\)"):
        frozen_logits(m, np.zeros((3, 5), np.float32))
    with pytest.raises(DistillError, match="batch_size"):
        frozen_logits(m, _x(), batch_size=0)
    empty = frozen_logits(m, np.zeros((0, 6), np.float32))
    assert empty.shape == (0, 3)


# ------------------------------------------------------------- generic save/load_state


class _Student(nnx.Module):
    """A non-MLP module with nested containers, as a stand-in for a student."""

    def __init__(self, d: int, rngs: nnx.Rngs):
        self.blocks = nnx.List([nnx.Linear(d, d, rngs=rngs) for _ in range(2)])
        self.scale = nnx.Param(jax.numpy.full((d,), 1.5))

    def __call__(self, x):
        for b in self.blocks:
            x = b(x)
        return x * self.scale[...]


def test_save_load_state_roundtrip(tmp_path):
    s1 = _Student(6, nnx.Rngs(0))
    save_state(s1, tmp_path / "student", {"bond_dim": 4})
    save_state(s1, tmp_path / "student", {"bond_dim": 5})  # overwrite works
    assert _listdir(tmp_path) == ["student"]
    s2 = _Student(6, nnx.Rngs(1))
    x = _x()
    assert not np.allclose(np.asarray(s1(x)), np.asarray(s2(x)))
    meta = load_state(s2, tmp_path / "student")
    assert meta == {"bond_dim": 5}
    np.testing.assert_array_equal(np.asarray(s2(x)), np.asarray(s1(x)))


def test_load_state_errors(tmp_path):
    with pytest.raises(DistillError, match="no model checkpoint"):
        load_state(_Student(6, nnx.Rngs(0)), tmp_path / "none")
    save_state(_Student(6, nnx.Rngs(0)), tmp_path / "s")
    with pytest.raises(DistillError) as ei:
        load_state(_Student(4, nnx.Rngs(0)), tmp_path / "s")
    msg = str(ei.value)
    assert "blocks.0.kernel is float32[6, 6] on disk but expected float32[4, 4]" in msg
    assert "_Student" in msg and "\n" not in msg
    # a teacher checkpoint is not a state checkpoint and vice versa
    save_teacher(_make(), tmp_path / "t", {})
    with pytest.raises(DistillError, match="state.json"):
        load_state(_Student(6, nnx.Rngs(0)), tmp_path / "t")
    with pytest.raises(DistillError, match="refusing to overwrite"):
        save_state(_Student(6, nnx.Rngs(0)), tmp_path / "t")
