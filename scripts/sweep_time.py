"""How long will `distill sweep CONFIG` take on this machine? Measure, then extrapolate.

For one point per family (the middle budget level, or the middle size) the student is distilled
for 4 epochs on a fraction of the training set (and a small validation split), from an untrained
teacher of the config's architecture (a step's time does not depend on the teacher's weights).
The quickest of epochs 2-4 is the steady time of an epoch (the first one compiles; the others
may carry one-time costs or another program's load): its training part is scaled up to the whole
training set, its validation part replaced by the time of predicting the whole validation split.
The rest of the run is the per-run setup (compiling — the training step is compiled again for
every run —, warm start, evaluation, latency). The total is Σ over points and seeds of setup +
distill.epochs × epoch, plus the teacher's training when the config trains one (timed the same
way, without augmentation). Points of one family are taken to cost what its measured point costs.
On a machine shared with other work the figures move with its load: run it when it is quiet.

    python scripts/sweep_time.py configs/sweep_fashion.yaml [--fraction 0.05] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flax import nnx  # noqa: E402

from distill import teachers, train  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.experiments import checks  # noqa: E402
from distill.experiments import sweep as sw  # noqa: E402
from distill.experiments.common import (  # noqa: E402
    distil,
    latencies,
    load_data,
    student_inputs,
    teacher_settings,
    teacher_spec,
)
from distill.teachers.network import Network  # noqa: E402


def _timed(fn) -> float:
    """Seconds `fn()` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--fraction", type=float, default=0.05, help="share of the training set timed (default 0.05)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    full = load_data(cfg)
    small_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_fraction=args.fraction,
                                                                   val_fraction=0.02))
    data = load_data(small_cfg)
    scale = len(full.y_train) / len(data.y_train)
    entries = sw.parse_entries(cfg)
    shape = checks.shape_only_teacher(cfg, data.image_shape, data.num_classes)
    _, points = sw.plan_points(cfg, entries, shape)
    teacher = Network(teacher_spec(cfg.teacher, data.image_shape, data.num_classes), rngs=nnx.Rngs(0))
    t_logits = {s: teachers.frozen_logits(teacher, getattr(data, f"x_{s}")) for s in ("train", "val", "test")}
    xs = student_inputs(entries[0].config(cfg, None), data)
    seeds, epochs = len(cfg.sweep.seeds), cfg.distill.epochs
    total = 0.0
    print(f"{'point':28s} {'params':>9s} {'setup s':>8s} {'s/epoch':>8s}  (training set {len(full.y_train)}, "
          f"validation {len(full.y_val)})", flush=True)
    for entry in entries:
        mine = [p for p in points if p.entry is entry]
        point = mine[len(mine) // 2]
        run = point.entry.config(dataclasses.replace(small_cfg, distill=dataclasses.replace(
            cfg.distill, epochs=4, layer_epochs=4)), point.size, seed=0)
        t0 = time.perf_counter()
        result = distil(run, data, xs, teacher, t_logits, ckpt=lambda name: None, devices=None, progress=False)
        train.evaluate(train.predict(result.student, xs.x["test"]), t_logits["test"], data.y_test)
        latencies(result.student, data.n_features)
        wall = time.perf_counter() - t0
        # the quickest of epochs 2-4 of the last phase (KD): the first one also compiles, and the
        # others can carry one-time costs or the load of other work
        epoch_s = list(result.curves.values())[-1]["epoch_s"]
        steady = float(min(epoch_s[1:]))
        student = result.student
        small_val = _timed(lambda s=student: train.predict(s, data.x_val))
        full_val = _timed(lambda s=student: train.predict(s, full.x_val))
        epoch = max(steady - small_val, 0.0) * scale + full_val
        setup = max(wall - sum(epoch_s), 0.0) + max(epoch_s[0] - steady, 0.0)
        total += seeds * (setup + epochs * epoch) * len(mine)
        print(f"{point.name:28s} {point.params:9,d} {setup:8.1f} {epoch:8.1f}", flush=True)
    if cfg.teacher.checkpoint is None:
        hist = train.train_classifier(
            Network(teacher_spec(cfg.teacher, data.image_shape, data.num_classes), rngs=nnx.Rngs(0)),
            data.x_train, data.y_train, train.Validation(data.x_val, data.y_val),
            dataclasses.replace(teacher_settings(cfg), epochs=4), ckpt=None, devices=None, desc="teacher",
            progress=False)
        t_epoch = float(min(hist.epoch_s[1:])) * scale
        print(f"teacher: {t_epoch:.1f} s/epoch × {cfg.teacher.epochs} epochs (without augmentation)")
        total += cfg.teacher.epochs * t_epoch
    print(f"estimated total: {total / 60:.0f} min ({len(points)} points × {seeds} seeds × {epochs} epochs)")


if __name__ == "__main__":
    main()
