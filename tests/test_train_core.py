"""The training core: one jitted step (compiles once per shape, measures what it says),
checkpoints that resume exactly, data parallelism over several devices, families and phases
found by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from distill import phases, students, train
from distill.config import from_dict
from distill.errors import DistillError
from distill.teachers import Network, mlp_spec
from distill.train import loop as loop_mod
from distill.train.checkpoint import Checkpointing, RunInterrupted
from distill.train.step import train_step

ROOT = Path(__file__).resolve().parents[1]


def _data(n=96, d=12, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, d)).astype(np.float32)
    y = (x[:, :classes].argmax(1)).astype(np.int32)
    return x, y


def _model(seed=0, d=12, classes=3):
    return Network(mlp_spec(d, [8], classes, "tanh"), rngs=nnx.Rngs(seed))


SETTINGS = train.TrainSettings(epochs=3, batch_size=16, lr=1e-2, grad_clip=1.0, seed=7)


def _arrays(model):
    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(model))]


def test_step_compiles_once_per_shape_across_fits():
    x, y = _data()
    train.train_classifier(_model(0), x, y, None, SETTINGS, progress=False)
    before = train_step._cache_size()
    for seed in (1, 2):  # other weights, same structure, settings and batch shape: no new compile
        train.train_classifier(_model(seed), x, y, train.Validation(x[:20], y[:20]), SETTINGS, progress=False)
    assert train_step._cache_size() == before
    train.train_classifier(_model(3), x, y, None, train.TrainSettings(epochs=1, batch_size=32, lr=1e-2),
                           progress=False)  # another batch shape (and optimiser): one more
    assert train_step._cache_size() == before + 1


def test_step_metrics_are_what_they_say():
    x, y = _data()
    model = _model()
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx, schedule = train.make_optimizer(SETTINGS, 6)
    state = train.TrainState.create(params, rest, tx, 0)
    batch = {"x": jnp.asarray(x[:16]), "y": jnp.asarray(y[:16])}

    def loss_of(p):
        return train.losses.cross_entropy(nnx.merge(graphdef, p, rest)(batch["x"]), batch["y"])

    want_loss, grads = jax.value_and_grad(loss_of)(params)
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam: a float raised to an int32 count
        want_updates, _ = tx.update(grads, tx.init(params), params)
    p_norm = float(optax.tree.norm(params))
    new, m = train_step(state, batch, graphdef=graphdef, loss=train.losses.CrossEntropy(), tx=tx, schedule=schedule)
    assert float(m["loss"]) == pytest.approx(float(want_loss), rel=1e-6)
    assert float(m["grad_norm"]) == pytest.approx(float(optax.tree.norm(grads)), rel=1e-5)
    assert float(m["param_norm"]) == pytest.approx(p_norm, rel=1e-6)
    assert float(m["update_norm"]) == pytest.approx(float(optax.tree.norm(want_updates)), rel=1e-5)
    assert float(m["lr"]) == pytest.approx(1e-2) and int(new.step) == 1


def test_no_validation_keeps_the_last_epoch():
    x, y = _data()
    model = _model()
    hist = train.train_classifier(model, x, y, None, SETTINGS, progress=False)
    assert hist.best_epoch == SETTINGS.epochs and hist.selection.startswith("last epoch")
    assert hist.val_accuracy == [None] * SETTINGS.epochs and hist.best_val_accuracy is None


def test_non_finite_data_is_named_not_blamed_on_the_learning_rate():
    x, y = _data()
    x[5, 3] = np.nan
    with pytest.raises(DistillError, match=r"the inputs holds a non-finite value \(nan\) at row 5, column 3"):
        train.train_classifier(_model(), x, y, None, SETTINGS, desc="student", progress=False)


def test_an_interrupted_fit_resumes_exactly(tmp_path, monkeypatch):
    x, y = _data()
    val = train.Validation(x[:24], y[:24])
    ref = _model()
    ref_hist = train.train_classifier(ref, x, y, val, SETTINGS, progress=False)

    calls = {"n": 0}

    def stop_at_step_8():
        calls["n"] += 1
        return "SIGTERM" if calls["n"] == 8 else None

    ckpt = Checkpointing(tmp_path / "ck")
    monkeypatch.setattr(loop_mod, "stop_requested", stop_at_step_8)
    with pytest.raises(RunInterrupted):  # mid-epoch 2 (6 steps an epoch)
        train.train_classifier(_model(), x, y, val, SETTINGS, ckpt=ckpt, progress=False)
    monkeypatch.undo()
    resumed = _model()
    hist = train.train_classifier(resumed, x, y, val, SETTINGS, ckpt=ckpt, progress=False)
    for key in ("train_loss", "val_accuracy", "grad_norm", "param_norm", "update_norm", "lr", "best_epoch"):
        assert getattr(hist, key) == getattr(ref_hist, key), key
    for a, b in zip(_arrays(resumed), _arrays(ref)):
        np.testing.assert_array_equal(a, b)

    # a finished phase is restored, not retrained
    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(loop_mod, "train_step", no_training)
    again = _model(5)
    assert train.train_classifier(again, x, y, val, SETTINGS, ckpt=ckpt, progress=False).train_loss == hist.train_loss
    for a, b in zip(_arrays(again), _arrays(ref)):
        np.testing.assert_array_equal(a, b)


_PARALLEL = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from distill import train
    from distill.teachers import Network, mlp_spec
    from distill.train.sharding import data_mesh, replicate, shard_batch
    from distill.train.step import train_step
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(64, 12)).astype(np.float32); y = (x[:, :3].argmax(1)).astype(np.int32)
    out = {"devices": len(jax.devices())}
    for n in (1, 4):
        model = Network(mlp_spec(12, [8], 3, "tanh"), rngs=nnx.Rngs(0)); model.train()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        settings = train.TrainSettings(epochs=1, batch_size=16, lr=1e-2)
        tx, schedule = train.make_optimizer(settings, 4)
        mesh = data_mesh(n)
        state = replicate(train.TrainState.create(params, rest, tx, 0), mesh)
        losses = []
        for i in range(4):
            batch = shard_batch({"x": x[16 * i:16 * (i + 1)], "y": y[16 * i:16 * (i + 1)]}, mesh)
            state, m = train_step(state, batch, graphdef=graphdef, loss=train.losses.CrossEntropy(), tx=tx,
                                  schedule=schedule)
            losses.append(float(m["loss"]))
        out[str(n)] = {"losses": losses, "shards": len(batch["x"].sharding.device_set)}
    print(json.dumps(out))
""")


def test_data_parallel_over_four_devices_matches_one():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": str(ROOT),
           "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", _PARALLEL], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4 and out["4"]["shards"] == 4 and out["1"]["shards"] == 1
    np.testing.assert_allclose(out["4"]["losses"], out["1"]["losses"], rtol=1e-5)


def test_more_devices_than_visible_is_one_line():
    x, y = _data()
    with pytest.raises(DistillError, match="runtime.devices = 64 but only 1 device"):
        train.train_classifier(_model(), x, y, None, SETTINGS, devices=64, progress=False)


# ------------------------------------------------------------------ families and phases by name


def test_families_and_phases_are_found_by_name():
    fams = students.families()
    assert {"mps", "mps_layers", "tt", "lowrank", "dense"} <= set(fams)
    assert not students.is_mirror("mps") and all(students.is_mirror(f) for f in ("tt", "lowrank", "dense",
                                                                                  "mps_layers"))
    assert {"end_to_end", "layerwise", "labels"} <= set(phases.phases())
    assert from_dict({"distill": {"mode": "staged"}}).distill.phases == ("layerwise", "end_to_end")
    assert from_dict({"distill": {"mode": ["layerwise", "end_to_end"]}}).distill.phases == ("layerwise",
                                                                                             "end_to_end")
    with pytest.raises(DistillError, match="distill.mode"):
        from_dict({"distill": {"mode": ["layerwise", "sweeep"]}})


def test_a_new_family_is_one_file(tmp_path, monkeypatch):
    """Adding a student family is adding one module: the config, the builders and a run take it."""
    (tmp_path / "scaled_dense.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass, field
        from flax import nnx
        from distill.options import at_least

        @dataclass(frozen=True)
        class Options:
            width_factor: int = field(default=2, metadata=at_least(1))

        SIZE_KNOB = "width_factor"

        def make_layer(opts, n_in, n_out, *, dense, activation, input_range, seed, index, rngs):
            return nnx.Linear(n_in, n_out, rngs=rngs)

        def describe(opts):
            return "plain dense layers"
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(students, "__path__", [*students.__path__, str(tmp_path)])
    students.families.cache_clear()
    try:
        cfg = from_dict({"student": {"family": "scaled_dense", "width_factor": 3}})
        assert cfg.student.options.width_factor == 3
        with pytest.raises(DistillError, match="student.width_factor = 0"):
            from_dict({"student": {"family": "scaled_dense", "width_factor": 0}})
        from distill.students.mirror import build_mirror

        student = build_mirror("scaled_dense", cfg.student.options, _model(), seed=0)
        assert isinstance(student.hidden_0, nnx.Linear) and student.replaced == ("hidden_0",)
    finally:
        students.families.cache_clear()


def test_two_processes_on_localhost_equal_one_process_with_two_devices(tmp_path):
    """jax.distributed.initialize over gloo (CPU collectives): two processes, one device each, write
    one run folder whose numbers equal a single process's with two devices."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["run", "--quiet", "--set", "teacher.epochs=2", "--set", "teacher.hidden=[16]", "--set",
            "distill.epochs=1", "--set", "student.bond_dim=3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "distill.cli", *args, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
           "--out", str(tmp_path / "multi")]
    procs = [subprocess.Popen([*cmd, "--process-id", str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-1500:] + outs[1][1][-1500:]
    single = subprocess.run([sys.executable, "-m", "distill.cli", *args, "--out", str(tmp_path / "single")],
                            env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-1500:]
    multi = json.loads((tmp_path / "multi" / "results.json").read_text())
    one = json.loads((tmp_path / "single" / "results.json").read_text())
    assert multi["devices"] == one["devices"] == 2
    assert multi["teacher"]["history"]["train_loss"] == pytest.approx(one["teacher"]["history"]["train_loss"],
                                                                        rel=1e-6)
    assert multi["student"]["accuracy"] == pytest.approx(one["student"]["accuracy"], abs=1e-9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multi", "single"]  # no staging left


def test_loss_spike_rule():
    assert loop_mod.loss_spike([], 5.0) is None
    assert loop_mod.loss_spike([2.0, 1.0], 3.0) is None  # 3× the lowest: not above the factor
    assert loop_mod.loss_spike([2.0, 1.0], 3.5) == pytest.approx(3.5)
    assert loop_mod.loss_spike([0.0], 1.0) is None  # a zero loss has no ratio


def test_a_loss_spike_is_reported_once_and_recorded(monkeypatch, capsys):
    """An epoch whose mean loss is 10× the earlier ones (made by scaling the step's reported loss
    in epoch 3) is named once on stderr and recorded in History.spikes, also under --quiet."""
    x, y = _data()
    calls = {"n": 0}
    real = loop_mod.train_step

    def spiking(*args, **kwargs):
        state, metrics = real(*args, **kwargs)
        calls["n"] += 1
        if 13 <= calls["n"] <= 24:  # 6 steps per epoch: epochs 3 and 4
            metrics = {**metrics, "loss": metrics["loss"] * 10.0}
        return state, metrics

    monkeypatch.setattr(loop_mod, "train_step", spiking)
    settings = train.TrainSettings(epochs=5, batch_size=16, lr=1e-2, seed=7)
    hist = train.train_classifier(_model(), x, y, train.Validation(x[:20], y[:20]), settings, desc="student",
                                  progress=False)
    assert hist.spikes == [3, 4]
    err = capsys.readouterr().err
    assert err.count("warning: the training loss jumped") == 1 and "in epoch 3" in err and "student" in err
    assert train.History.from_dict({k: v for k, v in hist.as_dict().items() if k != "spikes"}).spikes == []
