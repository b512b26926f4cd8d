"""The `distill` command end to end on digits (short runs), and its handling of bad input."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distill import cli, teachers
from distill.config import Config

ROOT = Path(__file__).resolve().parents[1]
# Short but real: the whole pipeline, a couple of epochs each.
FAST = ["--set", "teacher.epochs=4", "--set", "teacher.hidden=[32]", "--set", "teacher.lr=1e-2", "--set", "distill.epochs=3",
        "--set", "distill.lr=1e-2",
        "--set", "student.bond_dim=4", "--quiet"]


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "quick"
    assert cli.main(["run", *FAST, "--out", str(out)]) == 0
    return out


def test_run_writes_a_complete_folder(digits_run):
    names = {p.name for p in digits_run.iterdir()}
    assert {"config.yaml", "results.json", "report.md", "training_curves.png", "teacher", "student"} <= names
    assert not [p for p in digits_run.parent.iterdir() if p.name.startswith(".")]  # no staging left
    r = json.loads((digits_run / "results.json").read_text())
    for key in ("accuracy", "params"):
        assert key in r["teacher"]
    for key in ("accuracy", "params", "agreement", "kl"):
        assert key in r["student"]
    assert r["compression_ratio"] == pytest.approx(r["teacher"]["params"] / r["student"]["params"])
    assert r["lossless"] == (r["teacher"]["accuracy"] - r["student"]["accuracy"] <= 0.01)
    assert r["wall_time_s"] > 0
    # digits: a 64-32-10 teacher has 64·32+32 + 32·10+10 parameters; the test split is 359 images
    assert r["teacher"]["params"] == 64 * 32 + 32 + 32 * 10 + 10
    assert r["dataset"]["n_test"] == 359
    # even four epochs of training put both models far above chance (10 %)
    assert r["teacher"]["accuracy"] > 0.5 and r["student"]["accuracy"] > 0.3
    assert 0 <= r["student"]["agreement"] <= 1 and r["student"]["kl"] >= 0
    assert "| student accuracy (test) |" in (digits_run / "report.md").read_text()
    assert (digits_run / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_resolved_config_is_saved_and_reloads(digits_run):
    from distill.config import load_config

    cfg = load_config(digits_run / "config.yaml")
    assert cfg.teacher.hidden == (32,) and cfg.distill.epochs == 3 and cfg.student.bond_dim == 4


def test_same_config_and_seed_give_same_numbers(digits_run, tmp_path):
    out = tmp_path / "again"
    assert cli.main(["run", *FAST, "--out", str(out)]) == 0
    a = json.loads((digits_run / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    for part, key in [("teacher", "accuracy"), ("student", "accuracy"), ("student", "kl"), ("student", "agreement")]:
        assert a[part][key] == b[part][key]
    assert a["student"]["histories"]["student (KD)"]["train_loss"] == b["student"]["histories"]["student (KD)"]["train_loss"]


def test_saved_teacher_is_reused_frozen(digits_run, tmp_path):
    ckpt = digits_run / "teacher"
    before, _ = teachers.load_teacher(ckpt)
    out = tmp_path / "reuse"
    assert cli.main(["run", *FAST, "--set", f"teacher.checkpoint={ckpt}", "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    first = json.loads((digits_run / "results.json").read_text())
    assert r["teacher"]["source"].startswith("loaded")
    assert r["teacher"]["accuracy"] == first["teacher"]["accuracy"]  # the same frozen teacher
    after, _ = teachers.load_teacher(ckpt)
    x = np.random.default_rng(0).uniform(size=(5, 64)).astype(np.float32)
    np.testing.assert_array_equal(teachers.frozen_logits(before, x), teachers.frozen_logits(after, x))


def test_teacher_command(tmp_path):
    out = tmp_path / "t"
    assert cli.main(["teacher", *FAST, "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    model, meta = teachers.load_teacher(out / "teacher")
    assert meta["test_accuracy"] == r["teacher"]["accuracy"] > 0.5
    assert [layer["out_features"] for layer in model.spec["layers"] if layer["type"] == "dense"] == [32, 10]


def _error_of(capsys, *argv: str) -> str:
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("distill: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_bad_config_values_give_one_line(capsys, tmp_path):
    out = tmp_path / "never"
    assert "did you mean 'student.bond_dim'" in _error_of(capsys, "run", "--set", "student.bnd_dim=3", "--out", str(out))
    assert "student.bond_dim = 0" in _error_of(capsys, "run", "--set", "student.bond_dim=0", "--out", str(out))
    assert "distill.lr = -0.1" in _error_of(capsys, "run", "--set", "distill.lr=-0.1", "--out", str(out))
    assert "not found" in _error_of(capsys, "run", str(tmp_path / "nope.yaml"))
    assert not out.exists()


def test_missing_data_folder(capsys, tmp_path):
    out = tmp_path / "never"
    err = _error_of(capsys, "run", "--set", "data.name=fashion_mnist", "--set", f"data.data_dir={tmp_path / 'no'}",
                    "--out", str(out))
    assert str(tmp_path / "no") in err
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_corrupt_idx_file(capsys, tmp_path):
    src = Path("/usr/share/datasets/fashion-mnist")
    if not src.is_dir():
        pytest.skip("Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)")
    folder = tmp_path / "fm"
    folder.mkdir()
    for f in src.glob("*.gz"):
        shutil.copy(f, folder / f.name)
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one wrong label
    labels.write_bytes(gzip.compress(bytes(raw)))
    out = tmp_path / "never"
    err = _error_of(capsys, "run", "--set", "data.name=fashion_mnist", "--set", f"data.data_dir={folder}",
                    "--out", str(out))
    assert "md5" in err.lower() and "t10k-labels" in err
    assert not out.exists()


def test_the_architecture_comes_from_the_checkpoint(capsys, digits_run, tmp_path):
    """A config naming teacher.checkpoint need not repeat the architecture: keys that differ are
    not used, the run says so in one line and records the checkpoint's architecture."""
    out = tmp_path / "arch"
    assert cli.main(["run", *FAST, "--set", f"teacher.checkpoint={digits_run / 'teacher'}",
                     "--set", "teacher.hidden=[64, 64]", "--set", "teacher.arch=cnn", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "architecture from the checkpoint" in line]
    assert len(notes) == 1 and "teacher.arch, teacher.hidden" in notes[0] and "not used" in notes[0]
    r = json.loads((out / "results.json").read_text())
    assert r["teacher"]["hidden"] == [32] and r["teacher"]["architecture"] == "flatten → dense → dense"


def test_a_checkpoint_that_does_not_fit_the_data_is_refused(capsys, digits_run, tmp_path):
    out = tmp_path / "never"
    err = _error_of(capsys, "run", *FAST, "--set", f"teacher.checkpoint={digits_run / 'teacher'}",
                    "--set", "data.downsample=2", "--out", str(out))
    assert "8x8x1 images" in err and "4x4x1" in err and "data.downsample" in err
    assert not out.exists()


def test_existing_output_folder_is_refused(capsys, digits_run):
    assert "already exists" in _error_of(capsys, "run", *FAST, "--out", str(digits_run))


def test_help_explains_each_command():
    for args in (["--help"], ["run", "--help"], ["teacher", "--help"]):
        res = _run_cli(*args, cwd=ROOT)
        assert res.returncode == 0
        assert "--set" in res.stdout or "distill run" in res.stdout
    res = _run_cli("run", "--set", "student.bond_dim=0", cwd=ROOT)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == "distill: error: config: student.bond_dim = 0 is not allowed: must be an integer ≥ 1"


def test_run_help_lists_every_config_key():
    import dataclasses

    from distill import config as config_mod

    res = _run_cli("run", "--help", cwd=ROOT)
    assert res.returncode == 0
    text = res.stdout.split("config keys")[1]
    sections = {"data": config_mod.DataConfig, "teacher": config_mod.TeacherConfig,
                "distill": config_mod.DistillConfig, "augment": config_mod.AugmentConfig,
                "runtime": config_mod.RuntimeConfig, "sweep": config_mod.SweepConfig}
    flat = " ".join(text.split())  # undo the wrapping
    for name, tp in sections.items():
        listed = flat.split(f" {name}: ")[1].split(":")[0]
        for f in dataclasses.fields(tp):
            assert f.name in listed, (name, f.name)
    for family, module in config_mod.student_families().items():
        listed = flat.split(f" {family} (size: {module.SIZE_KNOB}): ")[1].split(":")[0]
        assert all(f.name in listed for f in dataclasses.fields(module.Options)), family
    assert "mlp (size: width): width, depth, activation\u00a0{relu|tanh|gelu|sigmoid}" in text
    # the help of a command without a config does not pay for importing the families
    assert "config keys" not in _run_cli("check-map", "--help", cwd=ROOT).stdout


def test_builtin_defaults_are_the_digits_quickstart():
    cfg = Config()
    assert cfg.data.name == "digits" and cfg.student.family == "mps"


def test_run_files_are_readable_by_others(digits_run):
    # written through temporary files (mkstemp creates them 0600): they must end up with the usual mode
    mask = os.umask(0)
    os.umask(mask)
    for name in ("config.yaml", "results.json", "report.md"):
        assert (digits_run / name).stat().st_mode & 0o777 == 0o666 & ~mask
    for name in ("teacher", "student"):
        assert (digits_run / name).stat().st_mode & 0o777 == 0o777 & ~mask


def test_notes_for_unused_student_keys_and_a_warmup_longer_than_training(tmp_path, capsys):
    out = tmp_path / "notes"
    assert cli.main(["run", *FAST, "--set", "student.width=32", "--set", "distill.warmup_epochs=3",
                     "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "student.width is not used: it belongs to other families than student.family = mps" in err
    assert "distill.warmup_epochs = 3 ≥ distill.epochs = 3: the learning rate never reaches distill.lr" in err
