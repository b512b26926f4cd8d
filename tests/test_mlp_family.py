"""Family `mlp`: the pixel-level small-dense baseline. Values against a float64 numpy forward
written from the definition, parameter counts by the formula, option checks, and a short run
whose saved student is rebuilt, evaluated and predicts the logits the run reported."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from distill import cli, students
from distill.config import from_dict
from distill.errors import DistillError
from distill.nn import PixelMLP, param_count
from distill.students.store import load_student, spec_of

FAST = ["--set", "teacher.epochs=4", "--set", "teacher.hidden=[32]", "--set", "teacher.lr=1e-2",
        "--set", "distill.epochs=3", "--set", "distill.lr=1e-2", "--set", "student.family=mlp",
        "--set", "student.width=12", "--set", "student.depth=2", "--quiet"]


@pytest.mark.parametrize("activation,depth", [("relu", 1), ("tanh", 2), ("gelu", 3)])
def test_forward_matches_numpy_float64(activation, depth):
    mlp = PixelMLP(7, 3, width=5, depth=depth, activation=activation, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    for layer in [*mlp.hidden, mlp.head]:  # non-zero biases, so a dropped bias would show
        layer.bias[...] = jnp.asarray(rng.normal(size=layer.bias.shape), jnp.float32)
    x = rng.uniform(size=(4, 7))
    from scipy.special import erf

    act = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh,
           "gelu": lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2)))}[activation]
    h = x
    for layer in mlp.hidden:
        h = act(h @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...], np.float64))
    want = h @ np.asarray(mlp.head.kernel[...], np.float64) + np.asarray(mlp.head.bias[...], np.float64)
    got = np.asarray(mlp(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_in,width,depth,n_out", [(784, 201, 1, 10), (64, 12, 2, 10), (196, 3, 4, 5)])
def test_parameter_count_formula(n_in, width, depth, n_out):
    mlp = PixelMLP(n_in, n_out, width=width, depth=depth, activation="relu", rngs=nnx.Rngs(0))
    assert param_count(mlp) == (n_in + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * n_out


def test_family_build_options_and_errors():
    fam = students.family("mlp")
    assert not students.is_mirror("mlp") and fam.SIZE_KNOB == "width"
    cfg = from_dict({"student": {"family": "mlp", "width": 9, "depth": 2, "activation": "tanh"}})
    net = fam.build(cfg.student.options, n_sites=64, image_shape=(8, 8), n_classes=10,
                    site_order=np.arange(64), seed=3)
    assert [layer.kernel.shape for layer in net.hidden] == [(64, 9), (9, 9)] and net.activation == "tanh"
    assert "2 hidden layers of width 9 (tanh)" in fam.describe(cfg.student.options)
    with pytest.raises(DistillError, match="width"):
        from_dict({"student": {"family": "mlp", "width": 0}})
    with pytest.raises(DistillError, match="activation"):
        from_dict({"student": {"family": "mlp", "activation": "swish"}})
    # another family's key is checked and kept aside (a config can switch family with --set), not used
    cfg = from_dict({"student": {"family": "mlp", "bond_dim": 8}})
    assert cfg.student.others == (("bond_dim", 8),) and not hasattr(cfg.student.options, "bond_dim")
    with pytest.raises(DistillError, match="bond_dim"):
        from_dict({"student": {"family": "mlp", "bond_dim": 0}})


def test_run_save_rebuild_predict(tmp_path, capsys):
    out = tmp_path / "mlp"
    assert cli.main(["run", *FAST, "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["student"]["params"] == (64 + 1) * 12 + (12 + 1) * 12 + (12 + 1) * 10
    assert r["student"]["accuracy"] > 0.5  # far above chance (10 %) after three epochs
    student = load_student(out)
    assert isinstance(student.inner, PixelMLP) and spec_of(out)["family"] == "mlp"
    from sklearn.datasets import load_digits

    x = (load_digits().images.reshape(-1, 64)[:20] / 16.0).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert cli.main(["predict", str(out), str(tmp_path / "x.npy"), "--out", str(tmp_path / "logits.npy")]) == 0
    logits = np.load(tmp_path / "logits.npy", allow_pickle=False)
    np.testing.assert_allclose(logits, np.asarray(student(jnp.asarray(x))), rtol=1e-5, atol=1e-5)


def test_another_familys_key_set_away_from_its_default_is_named():
    from distill.experiments.common import unused_student_keys

    cfg = from_dict({"student": {"family": "mps", "width": 32, "bond_dim": 4}})
    assert unused_student_keys(cfg) == ["width"]
    # kept at a default (here the mlp family's width 128): nothing to say
    assert unused_student_keys(from_dict({"student": {"family": "mps", "width": 128}})) == []
    assert unused_student_keys(from_dict({"student": {"family": "tt", "feature_params": {}}})) == []  # a factory default
    cfg = from_dict({"student": {"family": "mlp", "bond_dim": 20, "feature_map": "trig", "width": 8}})
    assert unused_student_keys(cfg) == ["bond_dim"]
    with pytest.raises(DistillError, match="depth"):
        from_dict({"student": {"family": "mlp", "depth": 17}})
