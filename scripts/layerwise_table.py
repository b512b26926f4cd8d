"""Family × mode × data-fraction table for layer-by-layer vs end-to-end distillation (issue 3).

One teacher is trained (or loaded), then for every data fraction, student family and mode a
student is distilled from it at a matched parameter budget, and one table is written:

    python scripts/layerwise_table.py configs/layerwise_fashion.yaml --out runs/layerwise_table

Rows: family (tt, lowrank, dense, mps_layers) × mode (layerwise, end_to_end, staged,
labels_only); columns: test accuracy, agreement with the teacher, parameters, compression.
The budget is that of the config's own student (its family at its size); every other family's
size knob (rank, bottleneck width, bond dimension) is chosen to match it as closely as possible.
With a fraction f < 1 of the training data the epoch counts are multiplied by min(1/f, 10), so
small-data runs get more (but not unboundedly more) optimisation steps; the teacher always
saw the full training split. Outputs (rewritten after every run, so an interrupted experiment
keeps its finished rows): table.md, table.csv, table.json and one run folder per
cell under runs/ (plus runs/teacher when the config names no teacher.checkpoint).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from distill import report, students, teachers
from distill.config import with_student
from distill.students.budget import match_budget
from distill.students.mirror import mirror_param_count
from distill.experiments import run as pipeline
from distill.config import MODE_SHORTHANDS, load_config
from distill.errors import DistillError
from distill.nn import param_count

COLUMNS = ("fraction", "family", "size", "mode", "accuracy", "agreement", "params", "compression",
           "accuracy_stages", "n_train", "wall_time_s")


def scaled(cfg, fraction: float):
    factor = min(1.0 / fraction, 10.0)
    d = cfg.distill
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, train_fraction=fraction),
        distill=dataclasses.replace(d, epochs=max(1, round(d.epochs * factor)),
                                    layer_epochs=max(1, round(d.layer_epochs * factor))))


def markdown(rows: list[dict], teacher_acc: float, teacher_params: int) -> str:
    out = [f"Teacher: test accuracy {100 * teacher_acc:.2f} %, {teacher_params:,} parameters.", ""]
    for fraction in sorted({r["fraction"] for r in rows}, reverse=True):
        out += [f"### {100 * fraction:g} % of the training data", "",
                "| family | size | mode | test accuracy | agreement | params | compression | accuracy by phase |",
                "|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["fraction"] == fraction):
            stages = ", ".join(f"{k} {100 * v:.1f}" for k, v in r["accuracy_stages"].items())
            out.append(f"| {r['family']} | {r['size']} | {r['mode']} | {100 * r['accuracy']:.2f} % | "
                       f"{100 * r['agreement']:.2f} % | {r['params']:,} | {r['compression']:.1f}× | {stages} |")
        out.append("")
    return "\n".join(out)


def write_tables(out: Path, rows: list[dict], teacher_acc: float, t_params: int, budget: int) -> str:
    """table.md / .csv / .json with the rows so far (atomic writes); returns the Markdown."""
    table = markdown(rows, teacher_acc, t_params)
    report.write_atomic(out / "table.md", table + "\n")
    report.write_json(out / "table.json", {"teacher": {"accuracy": teacher_acc, "params": t_params},
                                           "budget_params": budget, "rows": rows})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows({**row, "accuracy_stages": json.dumps(row["accuracy_stages"])} for row in rows)
    report.write_atomic(out / "table.csv", buf.getvalue())
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="experiment YAML (its student sets the reference family and size)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, repeatable (as for `distill run`)")
    mirrors = [f for f in students.families() if students.is_mirror(f)]
    ap.add_argument("--families", nargs="+", default=["tt", "lowrank", "dense", "mps_layers"], choices=mirrors)
    ap.add_argument("--modes", nargs="+", default=list(MODE_SHORTHANDS), choices=list(MODE_SHORTHANDS))
    ap.add_argument("--fractions", nargs="+", type=float, default=[1.0, 0.1, 0.01],
                    help="fractions of the training split (default: 1 0.1 0.01)")
    ap.add_argument("--out", required=True, help="folder for the table and the runs (must not exist)")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if not students.is_mirror(cfg.student.family):
            raise DistillError(f"the reference student must mirror the teacher; student.family is {cfg.student.family!r}")
        out = Path(args.out)
        if out.exists():
            raise DistillError(f"--out {str(out)!r} already exists; choose a new folder")
        # Every run folder (and the teacher's) is written atomically by the pipeline, and the
        # table files after each run: an interrupted experiment leaves only complete runs behind.
        (out / "runs").mkdir(parents=True)
        if cfg.teacher.checkpoint is None:
            folder, _ = pipeline.train_teacher(cfg, out / "runs" / "teacher", progress=True)
            cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, checkpoint=str(folder / "teacher")))
        teacher, _ = teachers.load_teacher(cfg.teacher.checkpoint)
        t_params = param_count(teacher)
        target = mirror_param_count(cfg.student.family, cfg.student.options, teacher, cfg.seed)
        sized = {}
        for fam in args.families:
            fam_cfg = with_student(cfg, family=fam)
            opts, _ = match_budget(fam, fam_cfg.student.options, teacher, target, seed=cfg.seed)
            sized[fam] = dataclasses.replace(fam_cfg, student=dataclasses.replace(fam_cfg.student, options=opts))
        cells = [(f, fam, mode) for f in args.fractions for fam in args.families for mode in args.modes]
        rows = []
        for fraction, fam, mode in tqdm(cells, desc="runs", unit="run"):
            c = scaled(dataclasses.replace(sized[fam], distill=dataclasses.replace(sized[fam].distill, mode=mode),
                                           name=f"{fam}-{mode}-{fraction:g}"), fraction)
            t0 = time.perf_counter()
            _, r = pipeline.run(c, out / "runs" / c.name, progress=False)
            knob = students.family(fam).SIZE_KNOB
            rows.append({"fraction": fraction, "family": fam, "size": f"{knob}={getattr(c.student.options, knob)}",
                         "mode": mode, "accuracy": r["student"]["accuracy"],
                         "agreement": r["student"]["agreement"], "params": r["student"]["params"],
                         "compression": r["compression_ratio"], "accuracy_stages": r["student"]["accuracy_stages"],
                         "n_train": r["dataset"]["n_train"], "wall_time_s": time.perf_counter() - t0})
            tqdm.write(f"{c.name}: {100 * rows[-1]['accuracy']:.2f} % ({rows[-1]['params']:,} params)")
            table = write_tables(out, rows, r["teacher"]["accuracy"], t_params, target)  # after every run
        print(table)
        print(f"\nwritten: {out}/table.md, table.csv, table.json")
        return 0
    except DistillError as err:
        print(f"layerwise_table: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
