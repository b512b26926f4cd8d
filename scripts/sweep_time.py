"""How long will `distill sweep CONFIG` take on this machine? Measure, then extrapolate.

For one point per family (the middle budget level, or the middle size) the student is distilled
for 1 and for 3 epochs on a fraction of the training set (and a small validation split), from an
untrained teacher of the config's architecture (a step's time does not depend on the teacher's
weights). Half the difference is one epoch: its training part is scaled up to the whole training
set, its validation part replaced by the time of predicting the whole validation split. The rest
of the 1-epoch run is the per-run setup (compiling — the training step is compiled again for
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
    levels, points = sw.plan_points(cfg, entries, shape)
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
        times, student = [], None
        for n in (1, 3):
            run = point.entry.config(dataclasses.replace(small_cfg, distill=dataclasses.replace(
                cfg.distill, epochs=n, layer_epochs=n)), point.size, seed=0)
            t0 = time.perf_counter()
            result = distil(run, data, xs, teacher, t_logits, ckpt=lambda name: None, devices=None, progress=False)
            train.evaluate(train.predict(result.student, xs.x["test"]), t_logits["test"], data.y_test)
            latencies(result.student, data.n_features)
            times.append(time.perf_counter() - t0)
            student = result.student
        small_epoch = max(times[1] - times[0], 0.0) / 2
        small_val = _timed(lambda: train.predict(student, data.x_val))
        full_val = _timed(lambda: train.predict(student, full.x_val))
        epoch = max(small_epoch - small_val, 0.0) * scale + full_val
        setup = max(times[0] - small_epoch, 0.0)
        total += seeds * (setup + epochs * epoch) * len(mine)
        print(f"{point.name:28s} {point.params:9,d} {setup:8.1f} {epoch:8.1f}", flush=True)
    if cfg.teacher.checkpoint is None:
        settings = [dataclasses.replace(teacher_settings(cfg), epochs=n) for n in (1, 3)]
        ts = [_timed(lambda s=s: train.train_classifier(
            Network(teacher_spec(cfg.teacher, data.image_shape, data.num_classes), rngs=nnx.Rngs(0)),
            data.x_train, data.y_train, train.Validation(data.x_val, data.y_val), s, ckpt=None, devices=None,
            desc="teacher", progress=False)) for s in settings]
        t_epoch = max(ts[1] - ts[0], 0.0) / 2 * scale
        print(f"teacher: {t_epoch:.1f} s/epoch × {cfg.teacher.epochs} epochs (without augmentation)")
        total += cfg.teacher.epochs * t_epoch
    print(f"estimated total: {total / 60:.0f} min ({len(points)} points × {seeds} seeds × {epochs} epochs)")

if __name__ == "__main__":
    main()
