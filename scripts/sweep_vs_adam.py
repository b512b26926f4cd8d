"""DMRG-style sweeps against Adam at equal training wall time: accuracy and parameters.

    python scripts/sweep_vs_adam.py configs/fashion_mps.yaml --teacher runs/fashion-teacher/teacher \
        --budget-s 600 --seeds 0 1 2 --out runs/sweep_vs_adam_fashion

One teacher (`--teacher`, a checkpoint folder; without it one is trained once into OUT/teacher-run)
and the config's MPS student (family mps). Every run is its own `distill run` process (each pays its
own compilation) with checkpoints off (runtime.checkpoint_every large). Two short calibration runs
(seed 0, 3 epochs / 3 sweeps) measure the steady time of one Adam epoch and of one sweep (median of
the 2nd and 3rd) and the one-time overhead of the first (compilation); then, per seed, with
E = (budget − overhead) / epoch time epochs and S = (budget − overhead) / sweep time sweeps:

  adam         distill.mode [end_to_end], E epochs (the config's schedule over E epochs)
  sweep        distill.mode [sweep], S sweeps, from the same initialisation
  adam+sweep   [end_to_end, sweep]: E/2 epochs, then S/2 sweeps
  adam-small   [end_to_end], E epochs, at the bond dimension whose stored parameters come closest to
               the sweep student's effective parameters (seed 0): Adam at the sweep's size (skipped
               when that is the config's own bond dimension)

Training wall time is the sum of the phases' per-epoch / per-sweep times (compilation included,
teacher and evaluation excluded). Parameters: `stored` (the arrays the student holds) and
`effective` (`distill.tn.dmrg.effective_num_params`: the channels in use; a sweep zeroes the
channels it truncates; Adam uses all). Every run is a normal run folder under OUT; a finished one
is not repeated. Writes OUT/sweep_vs_adam.json and OUT/sweep_vs_adam.md, and prints the table.
Sweep settings come from the config (distill.sweep_*) or --set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from distill.config import load_config
from distill.experiments import run as pipeline
from distill.io import write_atomic, write_json
from distill.students.store import load_student
from distill.tn import dmrg
from distill.tn import mps as mps_lib


def _run(cfg_path, overrides, out: Path) -> dict:
    """A run folder's results. Each run is its own process (`distill run`), so that every variant pays
    its own compilation; a folder that already holds results.json is not run again."""
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    cmd = [sys.executable, "-m", "distill.cli", "run", str(cfg_path), "--out", str(out), "--quiet"]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sweep_vs_adam: `{' '.join(cmd)}` failed:\n{done.stderr[-2000:]}")
    results = json.loads((out / "results.json").read_text())
    print(f"  {out.name}: {100 * results['student']['accuracy']:.2f} % ({_train_seconds(results):.0f} s training, "
          f"{time.perf_counter() - t0:.0f} s in all)", flush=True)
    return results


def _unit_time(results: dict, curve: str) -> tuple[float, float]:
    """(steady seconds per epoch / sweep: the median of all but the first, one-time overhead of the first)."""
    times = results["student"]["histories"][curve]["epoch_s"]
    unit = float(np.median(times[1:]))
    return unit, max(0.0, times[0] - unit)


def _train_seconds(results: dict) -> float:
    return float(sum(sum(h.get("epoch_s", [])) for h in results["student"]["histories"].values()))


def _summary(name: str, folder: Path, results: dict) -> dict:
    params = load_student(folder).inner.params
    return {"variant": name, "folder": str(folder), "accuracy": results["student"]["accuracy"],
            "agreement": results["student"]["agreement"], "kl": results["student"]["kl"],
            "stored_params": mps_lib.num_params(params), "effective_params": dmrg.effective_num_params(params),
            "chi": int(params.first.shape[1]), "max_bond_used": max(dmrg.bond_ranks(params)),
            "train_s": _train_seconds(results), "stages": results["student"]["accuracy_stages"]}


def _closest_chi(target_params: int, n: int, d: int, m: int, chi_max: int) -> int:
    def stored(c):
        return 2 * d * c + (n - 2) * d * c * c + c * m * c

    return min(range(1, chi_max + 1), key=lambda c: abs(stored(c) - target_params))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--teacher", help="teacher checkpoint folder (default: train one into OUT/teacher-run)")
    p.add_argument("--budget-s", type=float, required=True, help="training wall time per variant, seconds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = list(args.overrides)
    teacher = pipeline.teacher_once(args.config, base, args.teacher, out)
    base += [f"teacher.checkpoint={teacher}", "runtime.checkpoint_every=1000000"]  # no checkpoint I/O in the timings
    cfg = load_config(args.config, base)
    if cfg.student.family != "mps":
        raise SystemExit("sweep_vs_adam: the config's student.family must be mps")

    print("calibrating (seed 0) ...", flush=True)
    cal_adam = _run(args.config, base + ["seed=0", "distill.mode=[end_to_end]", "distill.epochs=3"],
                    out / "calibrate-adam")
    cal_sweep = _run(args.config, base + ["seed=0", "distill.mode=[sweep]", "distill.sweeps=3"], out / "calibrate-sweep")
    t_epoch, o_epoch = _unit_time(cal_adam, "student (KD)")
    t_sweep, o_sweep = _unit_time(cal_sweep, "student (sweeps)")
    epochs = max(1, int((args.budget_s - o_epoch) // t_epoch))
    sweeps = max(1, int((args.budget_s - o_sweep) // t_sweep))
    print(f"one Adam epoch {t_epoch:.1f} s (+{o_epoch:.0f} s once), one sweep {t_sweep:.1f} s (+{o_sweep:.0f} s once): "
          f"{epochs} epochs, {sweeps} sweeps", flush=True)

    rows = []
    small_chi = None
    for seed in args.seeds:
        s = [f"seed={seed}"]
        variants = [
            ("adam", ["distill.mode=[end_to_end]", f"distill.epochs={epochs}"]),
            ("sweep", ["distill.mode=[sweep]", f"distill.sweeps={sweeps}"]),
            ("adam+sweep", ["distill.mode=[end_to_end, sweep]", f"distill.epochs={max(1, epochs // 2)}",
                            f"distill.sweeps={max(1, sweeps // 2)}"]),
        ]
        for name, extra in variants:
            folder = out / f"{name}-seed{seed}"
            rows.append({"seed": seed, **_summary(name, folder, _run(args.config, base + s + extra, folder))})
        if small_chi is None:
            sw = next(r for r in rows if r["variant"] == "sweep")
            params = load_student(sw["folder"]).inner.params
            n, d, chi, m, _ = mps_lib.mps_dims(params)
            small_chi = _closest_chi(sw["effective_params"], n, d, m, chi)
        if small_chi == cfg.student.options.bond_dim:
            continue  # the sweep's effective size is the stored one: "adam" is already Adam at that size
        folder = out / f"adam-small-seed{seed}"
        rows.append({"seed": seed, **_summary("adam-small", folder, _run(
            args.config, base + s + ["distill.mode=[end_to_end]", f"distill.epochs={epochs}",
                                     f"student.bond_dim={small_chi}"], folder))})

    table = []
    for name in ("adam", "sweep", "adam+sweep", "adam-small"):
        sel = [r for r in rows if r["variant"] == name]
        if not sel:
            continue
        acc = np.array([r["accuracy"] for r in sel])
        table.append({"variant": name, "runs": len(sel), "accuracy_mean": float(acc.mean()),
                      "accuracy_std": float(acc.std(ddof=1)) if len(sel) > 1 else None,
                      "stored_params": sel[0]["stored_params"],
                      "effective_params_mean": float(np.mean([r["effective_params"] for r in sel])),
                      "train_s_mean": float(np.mean([r["train_s"] for r in sel])), "chi": sel[0]["chi"]})
    doc = {"config": args.config, "teacher": str(teacher), "budget_s": args.budget_s, "epoch_s": t_epoch,
           "sweep_s": t_sweep, "epochs": epochs, "sweeps": sweeps, "adam_small_chi": small_chi,
           "overrides": args.overrides, "table": table, "runs": rows}
    write_json(out / "sweep_vs_adam.json", doc)
    lines = [f"# Sweeps vs Adam at equal training time ({args.config})", "",
             f"Budget {args.budget_s:.0f} s per variant: {epochs} Adam epochs ({t_epoch:.1f} s each) or {sweeps} sweeps "
             f"({t_sweep:.1f} s each); seeds {args.seeds}; test accuracy mean ± std.", "",
             "| variant | χ | accuracy | stored params | effective params | training time |", "|---|---|---|---|---|---|"]
    for t in table:
        std = "" if t["accuracy_std"] is None else f" ± {100 * t['accuracy_std']:.2f}"
        lines.append(f"| {t['variant']} | {t['chi']} | {100 * t['accuracy_mean']:.2f}{std} % | {t['stored_params']:,} | "
                     f"{t['effective_params_mean']:,.0f} | {t['train_s_mean']:.0f} s |")
    write_atomic(out / "sweep_vs_adam.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
