"""Reliability, one test per kind of bad or unusual input: no silent wrong result, one clear
line (non-zero exit, no traceback, nothing written) for every user mistake."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill import cli
from distill.config import from_dict
from distill.errors import DistillError
from distill.experiments import common, compare_maps
from distill.students.mirror import teacher_layers
from distill.teachers import Network, mlp_spec

TINY = ["--set", "teacher.epochs=3", "--set", "teacher.hidden=[16]", "--set", "teacher.lr=1e-2",
        "--set", "distill.epochs=2", "--set", "student.bond_dim=3", "--quiet"]


def _one_line(capsys, *argv, code=2) -> str:
    got = cli.main(list(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("distill: error:")]
    assert got == code and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------- silent wrong results


def test_no_validation_set_keeps_the_last_epoch_and_writes_strict_json(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["run", *TINY, "--set", "data.val_fraction=0", "--out", str(out)]) == 0
    text = (out / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    r = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    for hist in (r["teacher"]["history"], r["student"]["histories"]["student (KD)"]):
        assert hist["selection"] == "last epoch (no validation set)"
        assert hist["best_epoch"] == len(hist["train_loss"]) and hist["best_val_accuracy"] is None


def test_a_teacher_at_chance_level_is_not_distilled(capsys, tmp_path):
    line = _one_line(capsys, "run", *TINY, "--set", "teacher.lr=1e6", "--out", str(tmp_path / "no"))
    assert "no better than chance" in line and "teacher.lr" in line
    assert not (tmp_path / "no").exists()


def test_signed_teacher_activations_keep_their_negative_range():
    """A tanh teacher's hidden units are negative half the time: an MPS layer must map each unit's
    observed [min, max] onto [0, 1], not clip the negative part to 0."""
    cfg = from_dict({}, ["teacher.hidden=[12, 8]", "teacher.activation=tanh", "teacher.epochs=3"])
    data = common.load_data(cfg)
    teacher = common.train_new_teacher(cfg, data, ckpt=None, devices=None, progress=False).model
    tl = teacher_layers(teacher, {"train": data.x_train, "val": data.x_val, "test": data.x_test}, "post")
    offset, scale = tl.ranges["hidden_1"]
    src = tl.acts["train"]["hidden_0"]
    np.testing.assert_allclose(offset, src.min(0), rtol=1e-6)
    np.testing.assert_allclose(offset + scale, src.max(0), rtol=1e-5)
    assert (offset < 0).any()
    cfg = from_dict({}, ["teacher.hidden=[12, 8]", "teacher.activation=tanh", "student.family=mps_layers",
                         "student.bond_dim=2"])
    student = common.build_student(cfg, common.student_inputs(cfg, data), 10, teacher, tl)
    np.testing.assert_allclose(np.asarray(student.hidden_1.input_offset[...]), offset, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(student.hidden_1.input_scale[...]), scale, rtol=1e-6)


def test_non_finite_data_names_the_row_and_column(capsys, tmp_path):
    from distill import train

    x = np.random.default_rng(0).uniform(size=(40, 6)).astype(np.float32)
    x[7, 2] = np.inf
    with pytest.raises(DistillError, match=r"student: the inputs holds a non-finite value \(inf\) at row 7, column 2"):
        train.train_classifier(Network(mlp_spec(6, [4], 2, "relu"), rngs=None), x, np.zeros(40, np.int32), None,
                               train.TrainSettings(epochs=1, batch_size=8, lr=1e-3), desc="student", progress=False)


# ------------------------------------------------------------- one line for bad input


@pytest.mark.parametrize("content, needle", [
    ("[1, 2]\n", "must be a mapping of sections"),
    ("hello\n", "must be a mapping of sections"),
    (b"\xff\xfe\x00", "is not UTF-8 text"),
    ("", "is empty"),
    ("student:\n  bond_dim: [1\n", "not valid YAML at line 3, column 1"),
])
def test_config_files_that_are_not_configs(capsys, tmp_path, content, needle):
    path = tmp_path / "c.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert needle in _one_line(capsys, "run", str(path), "--set", "seed=1", "--out", str(tmp_path / "no"))
    assert "is a folder" in _one_line(capsys, "run", str(tmp_path), "--out", str(tmp_path / "no"))
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("override, needle", [
    ("student.bond_dim=100000", "lower student.bond_dim"),
    ("teacher.hidden=[1000000000]", "lower teacher.hidden"),
    ("student.bond_dim=1e9", "expected an integer"),
    ("seed=4294967296", "seed = 4294967296 is not allowed"),
    ("name=../../evil", "name = '../../evil' is not allowed"),
    ("student.feature_params={scale: abc}", "must be a mapping of map parameters to numbers"),
    ("student.downsample=8", "an MPS needs at least 2 sites; lower student.downsample"),
])
def test_sizes_and_values_that_cannot_work(capsys, tmp_path, override, needle):
    assert needle in _one_line(capsys, "run", *TINY, "--set", override, "--out", str(tmp_path / "no"))
    assert not list(tmp_path.iterdir())


def test_an_out_folder_that_cannot_be_created_leaves_nothing(capsys, tmp_path):
    assert "choose an --out in a writable place" in _one_line(capsys, "run", *TINY, "--out", "/proc/no/run")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert "writable" in _one_line(capsys, "run", *TINY, "--out", str(blocker / "deep" / "run"))
    assert blocker.read_text() == "not a folder"


def test_a_failed_run_removes_the_parent_folders_it_created(capsys, tmp_path):
    _one_line(capsys, "run", *TINY, "--set", "teacher.lr=1e6", "--out", str(tmp_path / "a" / "b" / "run"))
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("argv, needle", [
    (["check-map", "learned", "--param", "d=abc"], "--param d='abc' must be an integer"),
    (["check-map", "poly", "--param", "order"], "--param 'order': expected key=value, e.g. --param order=2"),
    (["check-map", "trig", "--param", "scale=abc"], "parameter scale = 'abc' must be a number"),
])
def test_check_map_parameters(capsys, argv, needle):
    assert needle in _one_line(capsys, *argv)


def test_the_same_map_spelled_twice_is_refused(tmp_path):
    cfg = from_dict({"compare": {"maps": [{"name": "trig"}, {"name": "trig", "d": 2}], "seeds": [0]}})
    with pytest.raises(DistillError, match=r"compare.maps\[0\] \(trig\) and compare.maps\[1\] \(trig\(d=2\)\) are "
                                           r"the same map"):
        compare_maps.compare_maps(cfg, tmp_path / "no", progress=False)
    assert not (tmp_path / "no").exists()


def test_unexpected_failures_are_one_line_not_a_traceback(capsys, monkeypatch, tmp_path):
    from distill.experiments import run

    def boom(*a, **k):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(run, "run", boom)
    line = cli.main(["run", *TINY, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert line == 1 and "internal error: ZeroDivisionError: simulated bug" in err and "Traceback" not in err


# --------------------------------------------------------------------- honest reports


def test_latencies_say_per_batch_and_per_sample_with_units(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["run", *TINY, "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    for part in ("teacher", "student"):
        lat, per = r[part]["latency_ms"], r[part]["latency_us_per_sample"]
        assert set(lat) == set(per) == {"1", "256"}
        assert per["256"] == pytest.approx(1e3 * lat["256"] / 256)
    report = (out / "report.md").read_text()
    assert "ms per batch" in report and "µs per sample" in report
    hist = r["student"]["histories"]["student (KD)"]
    assert hist["best_epoch"] >= 1  # epochs count from 1 everywhere


def test_report_states_the_latency_ratio_and_a_resumed_wall_time():
    from distill.report.markdown import _latency_ratio, results_table

    assert _latency_ratio({"1": 0.1, "256": 2.0}, {"1": 0.08, "256": 2.5}) == \
        "0.80× (faster) / 1.25× (slower) at batch 1 / 256"
    assert _latency_ratio({"1": 0.1, "256": 2.0}, {"1": 0.1004, "256": 2.0}).startswith("1.00× (as fast)")
    assert _latency_ratio(None, {"1": 0.1, "256": 2.0}) == "–"
    results = {"teacher": {"accuracy": 0.9, "params": 10, "latency_ms": {"1": 0.1, "256": 2.0}},
               "student": {"accuracy": 0.8, "params": 5, "agreement": 0.9, "kl": 0.1,
                           "latency_ms": {"1": 0.05, "256": 1.0}},
               "compression_ratio": 2.0, "accuracy_drop_pts": 10.0, "lossless": False, "wall_time_s": 42.5,
               "resumed": True}
    rows = dict(results_table(results))
    assert rows["student / teacher latency"] == "0.50× (faster) / 0.50× (faster) at batch 1 / 256"
    assert rows["wall time"] == "42.5 s (resumed: with the earlier parts)"
    assert dict(results_table({**results, "resumed": False}))["wall time"] == "42.5 s"
