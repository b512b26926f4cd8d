"""distill.teachers: the checkpoint format (round trip, version-1 MLP folders, validation,
atomicity), frozen forward passes of native and black-box teachers, generic state files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from distill import io as distill_io
from distill import teachers
from distill.errors import DistillError
from distill.io import load_state, save_state
from distill.teachers import (
    FunctionTeacher,
    Network,
    cnn_spec,
    frozen_activations,
    frozen_logits,
    load_teacher,
    mlp_spec,
    save_teacher,
)


def _randomize(model: Network, seed: int = 0) -> Network:
    """Biases and BatchNorm statistics start at 0 / 1: make every array non-trivial."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    new = jax.tree.map(lambda a: np.asarray(rng.normal(size=a.shape) * 0.3 + (1.0 if a.ndim == 1 else 0.0),
                                            np.float32), nnx.to_pure_dict(state))
    for layer in new.values():
        if "var" in layer:
            layer["var"] = np.abs(layer["var"]) + 0.5
    nnx.replace_by_pure_dict(state, new)
    nnx.update(model, state)
    model.eval()
    return model


def _mlp(hidden=(7, 5), activation="relu", seed=0) -> Network:
    return _randomize(Network(mlp_spec(6, list(hidden), 3, activation, (2, 3)), rngs=nnx.Rngs(seed)), seed)


def _cnn(seed=0) -> Network:
    spec = cnn_spec((6, 6), 3, blocks=(4,), dense=(5,), batchnorm=True)
    return _randomize(Network(spec, rngs=nnx.Rngs(seed)), seed)


def _x(n=11, d=6, seed=1):
    return np.random.default_rng(seed).uniform(size=(n, d)).astype(np.float32)


def _listdir(p: Path) -> list[str]:
    return sorted(os.listdir(p))


def _arrays(m):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(m, nnx.Any(nnx.Param, nnx.BatchStat))))


# ------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("make, d", [(_mlp, 6), (_cnn, 36)])
def test_save_load_roundtrip(tmp_path, make, d):
    m = make()
    meta = {"dataset": "mnist", "image_shape": [28, 28], "downsample": 2, "test_accuracy": 0.9731, "notes": None}
    ck = tmp_path / "runs" / "teacher"  # parent does not exist yet
    save_teacher(m, ck, meta)
    assert (ck / "teacher.json").is_file() and (ck / "params").is_dir()
    doc = json.loads((ck / "teacher.json").read_text())
    assert doc["spec"] == m.spec and doc["metadata"] == meta and doc["version"] == 2
    assert doc["layer_names"] == list(m.activation_names)

    m2, meta2 = load_teacher(ck)
    assert isinstance(m2, Network) and meta2 == meta and m2.spec == m.spec
    a1, a2 = _arrays(m), _arrays(m2)
    assert jax.tree.structure(a1) == jax.tree.structure(a2)
    for a, b in zip(jax.tree.leaves(a1), jax.tree.leaves(a2)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)  # BatchNorm statistics included
    x = _x(d=d)
    np.testing.assert_array_equal(np.asarray(m2(x)), np.asarray(m(x)))
    assert _listdir(ck.parent) == ["teacher"]  # no temp folders left


def test_version_1_mlp_checkpoints_still_load(tmp_path):
    """A folder written by distill's former MLP teacher (spec kind mlp, params hidden_i/logits)."""
    rng = np.random.default_rng(0)
    widths = [6, 7, 5, 3]
    params = {name: {"kernel": rng.normal(size=(a, b)).astype(np.float32), "bias": rng.normal(size=b).astype(np.float32)}
              for name, a, b in zip(["hidden_0", "hidden_1", "logits"], widths[:-1], widths[1:])}
    ck = tmp_path / "old"
    ck.mkdir()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(ck / "params", params)
        ckptr.wait_until_finished()
    spec = {"kind": "mlp", "in_features": 6, "hidden": [7, 5], "n_classes": 3, "activation": "tanh"}
    (ck / "teacher.json").write_text(json.dumps({"format": "distill.teacher", "version": 1, "spec": spec,
                                                 "metadata": {"dataset": "digits", "image_shape": [2, 3]}}))
    model, meta = load_teacher(ck)
    assert meta["dataset"] == "digits" and model.input_shape == (2, 3, 1)
    x = _x()
    h = np.tanh(x @ params["hidden_0"]["kernel"] + params["hidden_0"]["bias"])
    h = np.tanh(h @ params["hidden_1"]["kernel"] + params["hidden_1"]["bias"])
    want = h @ params["logits"]["kernel"] + params["logits"]["bias"]
    np.testing.assert_allclose(np.asarray(model(x)), want, rtol=1e-5, atol=1e-5)


def test_second_save_overwrites(tmp_path):
    ck = tmp_path / "t"
    save_teacher(_mlp(seed=0), ck, {"run": 1})
    m2 = _mlp(hidden=(9,), seed=5)
    save_teacher(m2, ck, {"run": 2})
    assert _listdir(tmp_path) == ["t"]
    m3, meta = load_teacher(ck)
    assert meta == {"run": 2}
    x = _x()
    np.testing.assert_array_equal(np.asarray(m3(x)), np.asarray(m2(x)))


def test_missing_path_file_or_folder_without_json(tmp_path):
    with pytest.raises(DistillError) as ei:
        load_teacher(tmp_path / "nope")
    assert str(ei.value).startswith("no teacher checkpoint at") and "\n" not in str(ei.value)
    f = tmp_path / "model.onnx"
    f.write_text("x")
    with pytest.raises(DistillError, match="is a file.*distill import-teacher"):
        load_teacher(f)
    d = tmp_path / "d"
    d.mkdir()
    with pytest.raises(DistillError, match="teacher.json is missing"):
        load_teacher(d)


def test_corrupt_teacher_json(tmp_path):
    ck = tmp_path / "t"
    save_teacher(_mlp(), ck, {})
    for text, needle in [('{"spec": {"kind": ', "not valid JSON"), ("[1, 2]", "metadata"),
                         ('{"version": 7, "kind": "network"}', "unknown version")]:
        (ck / "teacher.json").write_text(text)
        with pytest.raises(DistillError, match=needle) as ei:
            load_teacher(ck)
        assert "\n" not in str(ei.value)
    (ck / "teacher.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DistillError, match="not valid JSON"):
        load_teacher(ck)


@pytest.mark.parametrize("patch, needle", [
    (lambda l: l[1].update(activation="swish"), "swish"),
    (lambda l: l[1].update(type="lstm"), "lstm"),
    (lambda l: l[1].update(out_features="a"), "out_features"),
])
def test_bad_spec_in_json(tmp_path, patch, needle):
    ck = tmp_path / "t"
    save_teacher(_mlp(), ck, {})
    doc = json.loads((ck / "teacher.json").read_text())
    patch(doc["spec"]["layers"])
    (ck / "teacher.json").write_text(json.dumps(doc))
    with pytest.raises(DistillError) as ei:
        load_teacher(ck)
    assert needle in str(ei.value) and "\n" not in str(ei.value)


def test_arrays_do_not_match_spec(tmp_path):
    ck = tmp_path / "t"
    save_teacher(_mlp(hidden=(7, 5)), ck, {})
    doc = json.loads((ck / "teacher.json").read_text())
    layers = doc["spec"]["layers"]
    layers[2]["out_features"], layers[3]["in_features"] = 6, 6  # hidden_1 7→6 instead of 7→5
    (ck / "teacher.json").write_text(json.dumps(doc))
    with pytest.raises(DistillError) as ei:
        load_teacher(ck)
    msg = str(ei.value)
    assert "could not restore weights" in msg and "\n" not in msg
    assert "hidden_1.kernel is float32[7, 5] on disk but expected float32[7, 6]" in msg


def test_corrupt_or_missing_params(tmp_path):
    ck = tmp_path / "t"
    save_teacher(_mlp(), ck, {})
    for root, _, files in os.walk(ck / "params"):
        for name in files:
            p = Path(root, name)
            if p.stat().st_size > 0:
                p.write_bytes(b"\x00garbage")
    with pytest.raises(DistillError, match="could not restore weights"):
        load_teacher(ck)
    shutil.rmtree(ck / "params")
    with pytest.raises(DistillError, match="no params/ weights"):
        load_teacher(ck)


def test_bad_metadata_and_refusal_to_overwrite(tmp_path):
    with pytest.raises(DistillError, match="JSON"):
        save_teacher(_mlp(), tmp_path / "t", {"x": object()})
    with pytest.raises(DistillError, match="dict"):
        save_teacher(_mlp(), tmp_path / "t", ["not", "a", "dict"])
    assert _listdir(tmp_path) == []
    d = tmp_path / "precious"
    d.mkdir()
    (d / "data.txt").write_text("keep me")
    with pytest.raises(DistillError, match="refusing to overwrite"):
        save_teacher(_mlp(), d, {})
    assert (d / "data.txt").read_text() == "keep me"


def test_black_box_without_a_format_is_refused(tmp_path):
    bb = FunctionTeacher(lambda x: np.zeros((len(x), 3), np.float32), (2, 3, 1), 3)
    with pytest.raises(DistillError, match="cannot store a FunctionTeacher"):
        save_teacher(bb, tmp_path / "t", {})


# -------------------------------------------------------------------------- atomicity


def _boom(*args, **kwargs):
    raise RuntimeError("simulated crash during orbax save")


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(ocp.StandardCheckpointer, "save", _boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_teacher(_mlp(), tmp_path / "t", {"dataset": "mnist"})
    assert _listdir(tmp_path) == []


def test_failed_overwrite_keeps_old_checkpoint(tmp_path, monkeypatch):
    ck = tmp_path / "t"
    m_old = _mlp(seed=0)
    save_teacher(m_old, ck, {"run": "old"})
    monkeypatch.setattr(ocp.StandardCheckpointer, "save", _boom)
    with pytest.raises(RuntimeError):
        save_teacher(_mlp(seed=3), ck, {"run": "new"})
    monkeypatch.undo()
    assert _listdir(tmp_path) == ["t"]
    m, meta = load_teacher(ck)
    assert meta == {"run": "old"}
    np.testing.assert_array_equal(np.asarray(m(_x())), np.asarray(m_old(_x())))


def test_failure_after_weights_written_leaves_nothing(tmp_path, monkeypatch):
    def bad_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(distill_io.os, "fsync", bad_fsync)
    with pytest.raises(KeyboardInterrupt):
        save_teacher(_mlp(), tmp_path / "t", {})
    assert _listdir(tmp_path) == []


def test_failed_swap_restores_old_checkpoint(tmp_path, monkeypatch):
    ck = tmp_path / "t"
    save_teacher(_mlp(seed=0), ck, {"run": "old"})
    real_replace = os.replace

    def flaky_replace(src, dst):
        if ".tmp-" in Path(src).name:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(distill_io.os, "replace", flaky_replace)
    with pytest.raises(DistillError, match="could not write teacher checkpoint"):
        save_teacher(_mlp(seed=3), ck, {"run": "new"})
    monkeypatch.undo()
    assert _listdir(tmp_path) == ["t"]
    assert load_teacher(ck)[1] == {"run": "old"}


def test_save_and_load_are_quiet(tmp_path, capfd):
    from absl import logging as absl_logging

    before = absl_logging.get_verbosity()
    save_teacher(_mlp(), tmp_path / "t", {})
    load_teacher(tmp_path / "t")
    assert absl_logging.get_verbosity() == before
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# --------------------------------------------------------------------- frozen forward


def test_frozen_logits_equals_model_and_is_numpy():
    m = _cnn()
    x = _x(n=37, d=36)
    got = frozen_logits(m, x)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (37, 3)
    np.testing.assert_allclose(got, np.asarray(m(x)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bs", [1, 5, 37, 1000])
def test_frozen_logits_batching_invariant(bs):
    m = _mlp()
    x = _x(n=37)
    np.testing.assert_allclose(frozen_logits(m, x, batch_size=bs), frozen_logits(m, x, batch_size=37),
                               rtol=1e-6, atol=1e-6)


def test_frozen_activations():
    m = _mlp(activation="tanh")
    x = _x(n=23)
    names = ["hidden_1", "hidden_0.pre", "logits"]
    got = frozen_activations(m, x, names, batch_size=4)
    assert list(got) == names
    ref = m.activations(x)
    for n in names:
        np.testing.assert_allclose(got[n], np.asarray(ref[n]), rtol=1e-6, atol=1e-6)
    with pytest.raises(DistillError, match="hidden_9"):
        frozen_activations(m, x, ["hidden_9"])


def test_frozen_has_no_gradient_path():
    m = _mlp()
    x = _x(n=4)
    graphdef, state = nnx.split(m)
    grads = jax.grad(lambda p: jax.numpy.sum(teachers.frozen._forward(graphdef, p, x, ("logits",))["logits"]))(state)
    assert all(float(np.abs(np.asarray(v)).max()) == 0.0 for v in jax.tree.leaves(grads))


def test_frozen_black_box_and_bad_inputs():
    w = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    bb = FunctionTeacher(lambda x: x @ w, (2, 3, 1), 3)
    x = _x(n=9)
    np.testing.assert_allclose(frozen_logits(bb, x, batch_size=4), x @ w, rtol=1e-6)
    with pytest.raises(DistillError, match="only its logits"):
        frozen_activations(bb, x, ["hidden_0"])
    with pytest.raises(DistillError, match=r"\(N, 6\)"):
        frozen_logits(_mlp(), np.zeros((3, 5), np.float32))
    with pytest.raises(DistillError, match="batch_size"):
        frozen_logits(_mlp(), _x(), batch_size=0)
    assert frozen_logits(_mlp(), np.zeros((0, 6), np.float32)).shape == (0, 3)
    wrong = FunctionTeacher(lambda x: x[:, :2], (2, 3, 1), 3)
    with pytest.raises(DistillError, match=r"shape \(9, 2\)"):
        frozen_logits(wrong, x)


# ------------------------------------------------------------- generic save/load_state


class _Student(nnx.Module):
    def __init__(self, d: int, rngs: nnx.Rngs):
        self.blocks = nnx.List([nnx.Linear(d, d, rngs=rngs) for _ in range(2)])
        self.scale = nnx.Param(jax.numpy.full((d,), 1.5))

    def __call__(self, x):
        for b in self.blocks:
            x = b(x)
        return x * self.scale[...][None]


def test_save_load_state_roundtrip(tmp_path):
    s1 = _Student(6, nnx.Rngs(0))
    save_state(s1, tmp_path / "student", {"bond_dim": 4})
    save_state(s1, tmp_path / "student", {"bond_dim": 5})  # overwrite works
    assert _listdir(tmp_path) == ["student"]
    s2 = _Student(6, nnx.Rngs(1))
    x = _x()
    assert not np.allclose(np.asarray(s1(x)), np.asarray(s2(x)))
    assert load_state(s2, tmp_path / "student") == {"bond_dim": 5}
    np.testing.assert_array_equal(np.asarray(s2(x)), np.asarray(s1(x)))


def test_load_state_errors(tmp_path):
    with pytest.raises(DistillError, match="no model checkpoint"):
        load_state(_Student(6, nnx.Rngs(0)), tmp_path / "none")
    save_state(_Student(6, nnx.Rngs(0)), tmp_path / "s")
    with pytest.raises(DistillError) as ei:
        load_state(_Student(4, nnx.Rngs(0)), tmp_path / "s")
    msg = str(ei.value)
    assert "blocks.0.kernel is float32[6, 6] on disk but expected float32[4, 4]" in msg and "\n" not in msg
    save_teacher(_mlp(), tmp_path / "t", {})
    with pytest.raises(DistillError, match="state.json"):
        load_state(_Student(6, nnx.Rngs(0)), tmp_path / "t")
