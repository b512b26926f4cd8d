"""Does a better teacher give a better student? The same student config distilled from several
teacher checkpoints, over seeds: test accuracy mean with its 95 % t-interval per teacher, and
the Welch test (Holm-corrected over the pairs) between teachers.

    python scripts/compare_teachers.py configs/fashion_mps.yaml \\
        --teacher mlp=runs/fashion-mlp/teacher --teacher cnn=runs/fashion-cnn/teacher \\
        --seeds 0 1 2 --out runs/teacher_comparison

Each run is an ordinary `distill run` folder under OUT/runs/ (a finished one is reused, so the
script can be re-run after an interruption); OUT/summary.json and OUT/summary.md hold the table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.analysis.statistics import format_interval, holm, t_interval, welch  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.experiments import run as pipeline  # noqa: E402
from distill.io import write_atomic, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="the student's experiment YAML")
    ap.add_argument("--teacher", action="append", required=True, metavar="NAME=FOLDER",
                    help="a teacher checkpoint folder and its name in the table; repeatable")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    try:
        teachers = dict(t.split("=", 1) for t in a.teacher)
        out = Path(a.out)
        rows: dict[str, list[dict]] = {name: [] for name in teachers}
        for name, folder in teachers.items():
            for seed in a.seeds:
                run_dir = out / "runs" / f"{name}-seed{seed}"
                if (run_dir / "results.json").is_file():
                    results = json.loads((run_dir / "results.json").read_text())
                else:
                    cfg = load_config(a.config, [*a.overrides, f"teacher.checkpoint={folder}", f"seed={seed}",
                                                 f"name={name}-seed{seed}"])
                    _, results = pipeline.run(cfg, run_dir, progress=True)
                rows[name].append({"seed": seed, "accuracy": results["student"]["accuracy"],
                                   "teacher_accuracy": results["teacher"]["accuracy"],
                                   "agreement": results["student"]["agreement"], "kl": results["student"]["kl"],
                                   "params": results["student"]["params"], "wall_time_s": results["wall_time_s"]})
                print(f"{name} seed {seed}: student {100 * rows[name][-1]['accuracy']:.2f} % "
                      f"(teacher {100 * rows[name][-1]['teacher_accuracy']:.2f} %)", flush=True)
        summary = {name: {"teacher_accuracy": r[0]["teacher_accuracy"],
                          "accuracy": t_interval([x["accuracy"] for x in r]).as_dict(),
                          "agreement": t_interval([x["agreement"] for x in r]).as_dict(), "runs": r}
                   for name, r in rows.items()}
        pairs = []
        for x, y in itertools.combinations(rows, 2):
            c = welch([r["accuracy"] for r in rows[x]], [r["accuracy"] for r in rows[y]])
            pairs.append({"a": x, "b": y, **c.as_dict()})
        for p, q in zip(pairs, holm([p["p"] for p in pairs])):
            p["p_holm"] = q
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "summary.json", {"config": a.config, "seeds": a.seeds, "teachers": teachers,
                                          "summary": summary, "pairs": pairs})
        lines = ["| teacher | teacher acc. | student acc. (95 % CI) | agreement |", "|---|---|---|---|"]
        for name, s in summary.items():
            lines.append(f"| {name} | {100 * s['teacher_accuracy']:.2f} % | {format_interval(s['accuracy'])} | "
                         f"{format_interval(s['agreement'])} |")
        lines += ["", "| A | B | Δ mean (pts) | 95 % CI of Δ | Welch p | Holm p |", "|---|---|---|---|---|---|"]
        for p in pairs:
            ci = "–" if p["low"] is None else f"[{100 * p['low']:+.2f}, {100 * p['high']:+.2f}]"
            pv = "–" if p["p"] is None else f"{p['p']:.3g}"
            ph = "–" if p["p_holm"] is None else f"{p['p_holm']:.3g}"
            lines.append(f"| {p['a']} | {p['b']} | {100 * p['diff']:+.2f} | {ci} | {pv} | {ph} |")
        write_atomic(out / "summary.md", "\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0
    except DistillError as err:
        print(f"compare_teachers: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
