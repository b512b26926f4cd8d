"""Layer-by-layer distillation: mirror students, warm starts, layer fits, modes and the per-layer report."""

import numpy as np
import pytest
from flax import nnx

from distill import teachers, train
from distill.config import from_dict
from distill.errors import DistillError
from distill.experiments import common
from distill.experiments import run as pipeline
from distill.nn import DenseBottleneck, param_count
from distill.students.mirror import PostActivation, build_mirror, layer_params


@pytest.fixture(scope="module")
def setup():
    cfg = from_dict({}, ["teacher.hidden=[24, 16]", "teacher.epochs=15", "teacher.lr=5e-3"])
    data = common.load_data(cfg)
    teacher = common.train_new_teacher(cfg, data, ckpt=None, devices=None, progress=False).model
    return cfg, data, teacher


def _mirror(cfg, teacher):
    return build_mirror(cfg.student.family, cfg.student.options, teacher, seed=cfg.seed)


def test_r2_and_relative_error_by_hand():
    y = np.array([[1.0, 2.0], [3.0, 6.0]])
    assert train.r2_score(y, y) == 1.0
    assert train.r2_score(np.broadcast_to(y.mean(0), y.shape), y) == pytest.approx(0.0)
    pred = y + np.array([[1.0, 0.0], [0.0, 0.0]])
    # SS_res = 1, SS_tot = (1+1) + (4+4) = 10
    assert train.r2_score(pred, y) == pytest.approx(0.9)
    assert train.relative_error(pred, y) == pytest.approx(1 / np.sqrt(1 + 4 + 9 + 36))


@pytest.mark.parametrize("family, overrides", [("lowrank", ["student.rank=24"]), ("tt", ["student.rank=64"])])
def test_full_rank_warm_start_reproduces_the_teacher(setup, family, overrides):
    cfg, data, teacher = setup
    cfg = from_dict({}, ["teacher.hidden=[24, 16]", f"student.family={family}", *overrides])
    student = _mirror(cfg, teacher)
    np.testing.assert_allclose(train.predict(student, data.x_test), teachers.frozen_logits(teacher, data.x_test),
                               rtol=1e-4, atol=1e-4)


def test_mirror_student_parameter_count(setup):
    cfg, _, teacher = setup
    cfg = from_dict({}, ["teacher.hidden=[24, 16]", "student.family=lowrank", "student.rank=3"])
    student = _mirror(cfg, teacher)
    # lowrank layer: A (out, r) + B (r, in) + bias (out); head: the teacher's 16 → 10 dense layer
    want = (24 * 3 + 3 * 64 + 24) + (16 * 3 + 3 * 24 + 16) + (16 * 10 + 10)
    assert param_count(student) == want
    rows = layer_params(student, teacher)
    assert [r["teacher_params"] for r in rows] == [64 * 24 + 24, 24 * 16 + 16]
    assert rows[0]["compression_ratio"] == pytest.approx((64 * 24 + 24) / (24 * 3 + 3 * 64 + 24))


def test_a_layerwise_fit_lowers_the_layer_loss(setup):
    cfg, data, teacher = setup
    cfg = from_dict({}, ["teacher.hidden=[24, 16]", "student.family=dense", "student.hidden_width=6"])
    student = _mirror(cfg, teacher)
    acts = {s: teachers.frozen_activations(teacher, getattr(data, f"x_{s}"), ("hidden_0",))["hidden_0"]
            for s in ("train", "val")}
    layer = PostActivation(student.hidden_0, "relu")
    before = train.r2_score(train.predict(layer, data.x_val), acts["val"])
    hist = train.fit_layer(layer, data.x_train, acts["train"], data.x_val, acts["val"],
                           train.TrainSettings(epochs=30, batch_size=64, lr=1e-2), progress=False)
    assert hist.train_loss[-1] < 0.5 * hist.train_loss[0]
    after = train.r2_score(train.predict(layer, data.x_val), acts["val"])
    assert after == pytest.approx(hist.best_val_accuracy)
    assert after > before + 0.3 and after > 0.3


def test_staged_run_reports_every_phase(tmp_path, setup):
    cfg, data, teacher = setup
    ckpt = tmp_path / "teacher"
    teachers.save_teacher(teacher, ckpt, common.teacher_metadata(cfg, data, 0.9, "test"))
    before = teachers.frozen_logits(teacher, data.x_test)
    run_cfg = from_dict({}, ["teacher.hidden=[24, 16]", f"teacher.checkpoint={ckpt}", "student.family=tt",
                             "student.rank=4", "distill.mode=staged", "distill.layer_epochs=3",
                             "distill.layer_lr=1e-2", "distill.epochs=3", "distill.lr=5e-3"])
    folder, r = pipeline.run(run_cfg, tmp_path / "run", progress=False)
    s = r["student"]
    assert list(s["accuracy_stages"]) == ["warm start", "layer-wise", "fine-tuned"]
    assert s["accuracy_stages"]["fine-tuned"] == s["accuracy"]
    assert [row["layer"] for row in s["layers"]] == ["hidden_0", "hidden_1"]
    for row in s["layers"]:
        assert row["r2"] <= 1 and row["relative_error"] >= 0 and row["history"]["best_epoch"] >= 1
    assert (folder / "per_layer_fidelity.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Per-layer fidelity" in (folder / "report.md").read_text()
    # the teacher is frozen: its outputs are bit-identical after the run
    np.testing.assert_array_equal(teachers.frozen_logits(teacher, data.x_test), before)
    reloaded, _ = teachers.load_teacher(ckpt)
    np.testing.assert_array_equal(teachers.frozen_logits(reloaded, data.x_test), before)


def test_modes_that_do_not_fit_the_family_are_refused(tmp_path):
    with pytest.raises(DistillError, match="needs a student with hidden layers"):
        pipeline.run(from_dict({}, ["distill.mode=layerwise", "teacher.epochs=1"]), tmp_path / "a", progress=False)
    with pytest.raises(DistillError, match="student.downsample=2 only applies"):
        pipeline.run(from_dict({}, ["student.family=tt", "student.downsample=2", "teacher.epochs=1"]),
                     tmp_path / "b", progress=False)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_dense_bottleneck_values(setup):
    _, _, teacher = setup
    layer = DenseBottleneck(5, 3, width=2, activation="relu", rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    d, u = layer.down, layer.up
    want = np.maximum(x @ np.asarray(d.kernel[...]) + np.asarray(d.bias[...]), 0) @ np.asarray(u.kernel[...]) \
        + np.asarray(u.bias[...])
    np.testing.assert_allclose(np.asarray(layer(x)), want, rtol=1e-5, atol=1e-6)
