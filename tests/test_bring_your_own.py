"""Bring your own teacher, take your student home — end to end on digits: a network trained
"elsewhere" (here: weights written in PyTorch's layout and as an ONNX graph) → `distill
import-teacher` → `distill run` → `distill evaluate` / `predict` / `export`, and the Python API."""

from __future__ import annotations

import json

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from flax import nnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file, save_file

import distill
from distill import cli, teachers
from distill.config import from_dict
from distill.errors import DistillError
from distill.experiments import common
from distill.experiments.use import onnx_names_used, onnx_subgraphs

FAST = ["--set", "distill.epochs=3", "--set", "distill.lr=1e-2", "--set", "student.bond_dim=4", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits MLP 64-32-10 trained by distill, and its weights in PyTorch's and ONNX's form."""
    cfg = from_dict({}, ["teacher.hidden=[32]", "teacher.epochs=8", "teacher.lr=1e-2"])
    data = common.load_data(cfg)
    model = common.train_new_teacher(cfg, data, ckpt=None, devices=None, progress=False).model
    acc = float(np.mean(np.argmax(teachers.frozen_logits(model, data.x_test), 1) == data.y_test))
    p = {k: {n: np.asarray(a) for n, a in v.items()} for k, v in nnx.to_pure_dict(nnx.state(model, nnx.Param)).items()}
    root = tmp_path_factory.mktemp("byo")
    # PyTorch nn.Sequential(Linear(64, 32), ReLU(), Linear(32, 10)): weight (out, in), keys "<index>.<param>"
    sd = {"0.weight": p["hidden_0"]["kernel"].T.copy(), "0.bias": p["hidden_0"]["bias"],
          "2.weight": p["logits"]["kernel"].T.copy(), "2.bias": p["logits"]["bias"]}
    save_file(sd, str(root / "mlp.safetensors"))
    np.savez(root / "mlp.npz", **sd)
    (root / "arch.yaml").write_text(yaml.safe_dump({"layers": [{"Linear": [64, 32]}, "ReLU", {"Linear": [32, 10]}]}))
    # the same network as an ONNX graph: input normalisation by constants, Gemm, Relu, Gemm
    inits = [numpy_helper.from_array(sd["0.weight"], "w0"), numpy_helper.from_array(sd["0.bias"], "b0"),
             numpy_helper.from_array(sd["2.weight"], "w1"), numpy_helper.from_array(sd["2.bias"], "b1")]
    nodes = [helper.make_node("Gemm", ["x", "w0", "b0"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "w1", "b1"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), root / "mlp.onnx")
    # and a graph that is not a chain (a residual Add of two activations): runs as a black box
    nodes_bb = [*nodes[:2], helper.make_node("Add", ["a", "a"], ["a2"]),
                helper.make_node("Gemm", ["a2", "w1", "b1"], ["logits"], transB=1)]
    graph_bb = helper.make_graph(nodes_bb, "bb", graph.input, graph.output, inits)
    onnx.save(helper.make_model(graph_bb, opset_imports=[helper.make_opsetid("", 17)]), root / "branchy.onnx")
    return root, model, acc, data


@pytest.mark.parametrize("source, arch", [("mlp.safetensors", "arch.yaml"), ("mlp.npz", "arch.yaml"),
                                          ("mlp.onnx", None)])
def test_import_reproduces_the_source_accuracy(trained, capsys, source, arch):
    root, model, acc, data = trained
    out = root / f"imported-{source}"
    args = ["import-teacher", str(root / source), "--data", "digits", "--out", str(out)]
    assert cli.main(args + (["--arch", str(root / arch)] if arch else [])) == 0
    printed = capsys.readouterr().out
    assert f"{100 * acc:.2f} %" in printed and "layers: flatten_0, hidden_0.pre, hidden_0, logits" in printed
    imported, meta = teachers.load_teacher(out)
    assert meta["test_accuracy"] == pytest.approx(acc, abs=1e-4)  # to 0.01 pt
    np.testing.assert_allclose(teachers.frozen_logits(imported, data.x_test), teachers.frozen_logits(model, data.x_test),
                               rtol=1e-5, atol=1e-5)


def test_import_run_evaluate_predict_export(trained, capsys, tmp_path):
    root, model, acc, data = trained
    ckpt = root / "imported-mlp.onnx"
    if not ckpt.exists():
        assert cli.main(["import-teacher", str(root / "mlp.onnx"), "--data", "digits", "--out", str(ckpt)]) == 0
    run = tmp_path / "run"
    # the config names only the checkpoint: the architecture comes from it
    assert cli.main(["run", *FAST, "--set", f"teacher.checkpoint={ckpt}", "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["teacher"]["accuracy"] == pytest.approx(acc, abs=1e-6)
    capsys.readouterr()

    assert cli.main(["evaluate", str(run), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["accuracy"] == pytest.approx(results["student"]["accuracy"], abs=1e-9)
    assert ev["agreement"] == pytest.approx(results["student"]["agreement"], abs=1e-9)
    assert ev["kl"] == pytest.approx(results["student"]["kl"], rel=1e-4)

    x = data.x_test[:7].reshape(7, 8, 8)
    np.save(tmp_path / "x.npy", x)
    assert cli.main(["predict", str(run), str(tmp_path / "x.npy"), "--out", str(tmp_path / "z.npy")]) == 0
    z = np.load(tmp_path / "z.npy")
    student = distill.load_student(run)
    np.testing.assert_allclose(z, np.asarray(student(data.x_test[:7])), rtol=1e-6, atol=1e-6)
    assert np.array_equal(np.argmax(z, 1), np.argmax(np.asarray(student(data.x_test[:7])), 1))

    assert cli.main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "s.onnx")]) == 0
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: data.x_test[:7]})[0]
    np.testing.assert_allclose(got, z, rtol=1e-4, atol=1e-4)
    graph = onnx.load(str(tmp_path / "s.onnx")).graph
    for g in onnx_subgraphs(graph):  # no unused weights left behind, in the graph or its scan bodies
        assert {t.name for t in g.initializer} <= onnx_names_used(g)

    assert cli.main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "s.safetensors")]) == 0
    arrays = load_file(str(tmp_path / "s.safetensors"))
    assert {"first", "left", "out", "right", "last", "log_scale", "site_features.site_order"} <= set(arrays)
    np.testing.assert_array_equal(arrays["out"], np.asarray(student.inner.out[...]))


def test_a_black_box_teacher_teaches_an_mps_student_only(trained, capsys, tmp_path):
    root, model, acc, data = trained
    ckpt = tmp_path / "bb"
    assert cli.main(["import-teacher", str(root / "branchy.onnx"), "--data", "digits", "--out", str(ckpt)]) == 0
    assert "black-box teacher: only students trained end to end" in capsys.readouterr().out
    bb, _ = teachers.load_teacher(ckpt)
    assert not teachers.is_native(bb)
    sess = ort.InferenceSession(str(root / "branchy.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(teachers.frozen_logits(bb, data.x_test),
                               sess.run(None, {"x": data.x_test})[0], rtol=1e-6, atol=1e-6)
    assert cli.main(["run", *FAST, "--set", f"teacher.checkpoint={ckpt}", "--out", str(tmp_path / "ok")]) == 0
    r = json.loads((tmp_path / "ok" / "results.json").read_text())
    assert r["teacher"]["params"] is None and r["compression_ratio"] is None
    capsys.readouterr()
    code = cli.main(["run", *FAST, "--set", f"teacher.checkpoint={ckpt}", "--set", "student.family=tt",
                     "--out", str(tmp_path / "no")])
    err = capsys.readouterr().err
    assert code == 2 and "black box" in err and "student.family=mps" in err and err.count("\n") == 1
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("name, extra, needle", [
    ("model.pt", [], "pickle file"),
    ("model.pth", [], "safetensors"),
    ("mlp.onnx", ["--arch", "arch.yaml"], "--arch is only for PyTorch"),
    ("mlp.safetensors", [], "pass --arch"),
])
def test_import_refusals_are_one_line(trained, capsys, tmp_path, name, extra, needle):
    root, *_ = trained
    src = root / name
    if not src.exists():
        src = tmp_path / name
        src.write_bytes(b"\x80\x04pickle")
    extra = [str(root / e) if e.endswith(".yaml") else e for e in extra]
    code = cli.main(["import-teacher", str(src), "--data", "digits", "--out", str(tmp_path / "t"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "t").exists()


def test_predict_refuses_bad_inputs(trained, capsys, tmp_path):
    root, model, acc, data = trained
    run = tmp_path / "r"
    assert cli.main(["run", *FAST, "--set", "teacher.epochs=2", "--set", "teacher.hidden=[16]", "--out", str(run)]) == 0
    capsys.readouterr()
    for array, needle in [(np.full((2, 64), 255.0), "255 for 8-bit images"), (np.zeros((2, 7)), "(N, 8, 8)"),
                          (np.array(["a"]), "pixel values")]:
        np.save(tmp_path / "bad.npy", array)
        assert cli.main(["predict", str(run), str(tmp_path / "bad.npy"), "--out", str(tmp_path / "o.npy")]) == 2
        assert needle in capsys.readouterr().err
    nan = np.zeros((3, 64))
    nan[1, 5] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 64)))
    (tmp_path / "x.csv").write_text("0,0\n")
    np.save(tmp_path / "ok.npy", np.zeros((2, 64)))
    for args, needle in [(["nan.npy", "o.npy"], "image 1, pixel 5 is nan"), (["x.npz", "o.npy"], "an .npz archive"),
                         (["x.csv", "o.npy"], "not a .npy file"), (["ok.npy", "o.csv"], "ending in .npy"),
                         (["ok.npy", "ok.npy"], "is the input file"), (["ok.npy", "missing/o.npy"], "existing folder")]:
        assert cli.main(["predict", str(run), str(tmp_path / args[0]), "--out", str(tmp_path / args[1])]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.npy").exists() and not (tmp_path / "missing").exists()
    assert np.load(tmp_path / "ok.npy").shape == (2, 64)  # the input was not overwritten
    assert cli.main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "s.safetensors")]) == 2
    assert "ending in .onnx" in capsys.readouterr().err and not (tmp_path / "s.safetensors").exists()
    assert cli.main(["predict", str(run), str(tmp_path / "ok.npy"), "--out", str(tmp_path / "o.npy")]) == 0
    import os
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "o.npy").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_python_api_distils_a_plain_function(trained, tmp_path):
    """A teacher given as a plain Python function x → logits, distilled end to end from Python."""
    root, model, acc, data = trained
    graphdef, state = nnx.split(model)

    def teacher_fn(x):  # e.g. a network of another framework behind a function
        return np.asarray(nnx.merge(graphdef, state)(x))

    folder, results = distill.distil(teacher_fn, None, ["distill.epochs=3", "distill.lr=1e-2", "student.bond_dim=4"],
                                     out=tmp_path / "fn", progress=False)
    assert results["teacher"]["accuracy"] == pytest.approx(acc, abs=1e-6)
    assert results["teacher"]["source"] == "given from Python" and results["student"]["accuracy"] > 0.3
    student = distill.load_student(folder)
    reloaded_acc = float(np.mean(np.asarray(student(data.x_test)).argmax(1) == data.y_test))
    assert reloaded_acc == pytest.approx(results["student"]["accuracy"], abs=1e-9)
    with pytest.raises(DistillError, match="black box"):
        distill.distil(teacher_fn, None, ["student.family=lowrank"], out=tmp_path / "no", progress=False)
    imported = distill.import_teacher(root / "mlp.onnx", data="digits")
    np.testing.assert_allclose(teachers.frozen_logits(imported, data.x_test), teachers.frozen_logits(model, data.x_test),
                               rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def cnn_teacher():
    """A tiny digits CNN (conv 2 → 4, max-pooling, dense 16), one epoch: export needs shapes, not accuracy."""
    cfg = from_dict({"teacher": {"arch": "cnn", "conv_channels": [2, 4], "hidden": [16], "epochs": 1, "batch_size": 64}})
    return common.train_new_teacher(cfg, common.load_data(cfg), ckpt=None, devices=None, progress=False).model


_FAMILIES = [("tt", {"rank": 2}), ("cp", {"rank": 3}), ("tucker", {"rank": 3}), ("tr", {"rank": 2}),
             ("lowrank", {"rank": 3}), ("dense", {"hidden_width": 3}), ("mps_layers", {"bond_dim": 2})]


@pytest.mark.parametrize("teacher_kind, family, knob",
                         [("mlp", f, k) for f, k in _FAMILIES]
                         + [("cnn", f, k) for f, k in _FAMILIES if f != "mps_layers"])  # it replaces dense layers only
def test_every_mirror_family_exports_to_onnx(trained, cnn_teacher, teacher_kind, family, knob):
    """The ONNX export has a symbolic batch: every family must convert (no choice by batch size, no
    batch merged into a reshape), stay compressed (no dense W stored) and give the student's outputs —
    of an MLP teacher, and of a CNN teacher with its convolutions replaced too where the family can."""
    from distill.config import with_student
    from distill.experiments import use
    from distill.students.mirror import build_mirror
    from distill.students.store import PixelStudent

    _, mlp, _, data = trained
    model = mlp if teacher_kind == "mlp" else cnn_teacher
    extra = {"replace": "all", "keep_first_conv": True} if teacher_kind == "cnn" and family in ("cp", "tucker", "tr") else {}
    opts = with_student(from_dict({}), family=family, **knob, **extra).student.options
    student = PixelStudent(build_mirror(family, opts, model, seed=0, warm_start=True), (8, 8), 1)
    blob = use._onnx_bytes(student)
    graph = onnx.load_from_string(blob).graph
    n_stored = sum(int(np.prod(t.dims)) for t in graph.initializer)
    assert n_stored <= 2 * sum(int(np.prod(np.shape(a))) for a in jax.tree.leaves(nnx.state(student, nnx.Param)))
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = data.x_test[:n]
        got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        np.testing.assert_allclose(got, np.asarray(student(x)), rtol=1e-4, atol=1e-4)
