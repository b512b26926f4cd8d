"""Pixel students at matched parameter budgets: the best tensor-network student against the best
small-dense baseline, from `distill run` folders (a pixel student is not a sweep family).

    # K = 0 1 2; T = a teacher folder; every run distilled the same way (one config, one teacher)
    distill run configs/fashion_mps_best.yaml --set teacher.checkpoint=T --set student.bond_dim=10 \\
        --set seed=K --out runs/budgets/mps_chi10_sK
    distill run configs/fashion_mps_best.yaml --set teacher.checkpoint=T --set student.family=mlp \\
        --set student.width=201 --set seed=K --out runs/budgets/mlp_w201_sK
    python scripts/budget_compare.py runs/budgets --budgets 160000 --out runs/budget_compare

The runs are grouped into variants by their config without the seed and the runtime section (so
one variant is one student and one recipe, over seeds); all runs must share the teacher and the
dataset. At each budget, the variants whose parameter count is within --tolerance of it compete:
the tensor-network side (--tn families, default mps) and the baseline side (--baseline families,
default mlp), each represented by its variant with the highest mean test accuracy. Reported: every
variant's mean with its 95 % t-interval over seeds, Δ = best TN − best baseline with its 95 % Welch
interval, Welch's p and the Holm-corrected p over the budgets, and whether Δ ≥ --min-gain points
with the interval above 0 (issue 12, Q6: ≥ 0.5 pt; no verdict with one seed). Picking the best of
each side before testing favours neither side but makes the interval a little optimistic for
both; every variant is listed so a reader can check.
Writes OUT/budget_compare.json, OUT/budget_compare.md and OUT/budget_compare.png (per budget, every
variant's accuracy) and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill import students  # noqa: E402
from distill.analysis.statistics import comparison_cells, format_interval, holm, t_interval, verdict_cell, welch  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.io import write_atomic, write_json  # noqa: E402
from distill.report.results import read_finished_runs  # noqa: E402


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True)
    return out


def read_runs(folder: Path) -> tuple[list[dict], dict]:
    """Finished `distill run` folders under `folder` → (variants, the shared teacher/dataset record).
    Each variant: {"config": flat config without seed/runtime, "family", "params", "runs": [{seed, accuracy}]}.
    Raises DistillError for no runs, unreadable files, or runs of another teacher or dataset."""
    variants: dict[tuple, dict] = {}
    ref = first = None
    for run, res, cfg in read_finished_runs(folder):
        st, teacher = res["student"], res["teacher"]
        head = ((res.get("dataset") or {}).get("name"), teacher["accuracy"], teacher["params"])
        if ref is None:
            ref, first = head, run
        elif head != ref:
            raise DistillError(f"{run} has another dataset or teacher than {first}; compare one teacher's students")
        flat = {k: v for k, v in _flat({k: v for k, v in cfg.items() if k not in ("seed", "name", "runtime")}).items()
                if k != "teacher.checkpoint"}  # the same teacher may sit at two paths; `head` checks it is the same
        key = tuple(sorted(flat.items()))
        var = variants.setdefault(key, {"config": flat, "family": st["family"], "params": st["params"], "runs": []})
        if var["params"] != st["params"]:
            raise DistillError(f"{run}: {st['params']} parameters where the same config gave {var['params']}")
        var["runs"].append({"seed": cfg.get("seed"), "accuracy": st["accuracy"], "folder": run.name})
    out = list(variants.values())
    _label(out)
    return out, {"dataset": ref[0], "teacher_accuracy": ref[1], "teacher_params": ref[2]}


def _label(variants: list[dict]) -> None:
    """label: the family, then the keys whose values tell this variant from the others — student
    options that vary among the variants of its family (a config also keeps other families' keys:
    not shown), and any other key that varies among all variants (e.g. distill.lr)."""
    def varies(key: str, among: list[dict]) -> bool:
        return len({v["config"].get(key) for v in among}) > 1

    for v in variants:
        same_family = [w for w in variants if w["family"] == v["family"]]
        own = {"student.downsample"} | {f"student.{f.name}" for f in dataclasses.fields(students.family(v["family"]).Options)}
        shown = []
        knob = f"student.{students.family(v['family']).SIZE_KNOB}"
        for k in sorted(v["config"]):
            if k.startswith("student."):
                if k == knob or (k in own and varies(k, same_family)):
                    shown.append(f"{k.split('.', 1)[1]}={json.loads(v['config'][k])}")
            elif varies(k, variants):
                shown.append(f"{k}={json.loads(v['config'][k])}")
        v["label"] = " ".join([v["family"], *shown])


def compare(variants: list[dict], budgets: list[int], tolerance: float, tn: set[str], baseline: set[str],
            min_gain_pts: float) -> list[dict]:
    """One row per budget: the best variant of each side within tolerance, Welch's test of the two,
    Holm-corrected over the budgets that have both sides."""
    for v in variants:
        v["interval"] = t_interval([r["accuracy"] for r in v["runs"]], bounds=(0.0, 1.0)).as_dict()
    rows = []
    for b in budgets:
        near = [v for v in variants if abs(v["params"] - b) <= tolerance * b]
        sides = {name: [v for v in near if v["family"] in fams] for name, fams in (("tn", tn), ("baseline", baseline))}
        row = {"budget": b, "candidates": {k: [v["label"] for v in vs] for k, vs in sides.items()}}
        if all(sides.values()):
            best = {k: max(vs, key=lambda v: v["interval"]["mean"]) for k, vs in sides.items()}
            c = welch([r["accuracy"] for r in best["tn"]["runs"]], [r["accuracy"] for r in best["baseline"]["runs"]])
            row.update(tn=best["tn"]["label"], baseline=best["baseline"]["label"],
                       params=[best["tn"]["params"], best["baseline"]["params"]], comparison=c.as_dict())
        rows.append(row)
    adjusted = holm([r["comparison"]["p"] if "comparison" in r else None for r in rows])
    for r, p in zip(rows, adjusted):
        if "comparison" in r:
            c = r["comparison"]
            r["p_holm"] = p
            # a win needs the gain and an interval that excludes 0; no interval (1 seed): no verdict
            r["meets_min_gain"] = None if c["low"] is None else bool(c["diff"] * 100 >= min_gain_pts and c["low"] > 0)
    return rows


def table(variants: list[dict], rows: list[dict], head: dict, min_gain_pts: float) -> str:
    lines = [f"Dataset {head['dataset']}; teacher {100 * head['teacher_accuracy']:.2f} % "
             f"({head['teacher_params']:,} parameters). Test accuracy, 95 % t-intervals over seeds.", "",
             "| variant | parameters | seeds | test acc. % [95 % CI] |", "|---|---|---|---|"]
    for v in sorted(variants, key=lambda v: (v["params"], v["label"])):
        lines.append(f"| {v['label']} | {v['params']:,} | {len(v['runs'])} | {format_interval(v['interval'])} |")
    lines += ["", f"| budget | best tensor network | best baseline | Δ (pts) [95 % Welch CI] | p | p_Holm "
              f"| Δ ≥ {min_gain_pts:g} pt, CI > 0 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "comparison" not in r:
            lines.append(f"| {r['budget']:,} | {', '.join(r['candidates']['tn']) or '–'} | "
                         f"{', '.join(r['candidates']['baseline']) or '–'} | – | – | – | no pair in range |")
            continue
        diff, p, p_holm = comparison_cells({**r["comparison"], "p_holm": r["p_holm"]})
        lines.append(f"| {r['budget']:,} | {r['tn']} ({r['params'][0]:,}) | {r['baseline']} ({r['params'][1]:,}) | "
                     f"{diff} | {p} | {p_holm} | {verdict_cell(r['meets_min_gain'])} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, variants: list[dict], head: dict, tn: set[str], budgets: list[int], tolerance: float) -> None:
    """One panel per budget: the mean test accuracy of every variant within the tolerance with its
    95 % t-interval, tensor networks and baselines in two colours, the teacher as a line; saved
    atomically."""
    from matplotlib.figure import Figure

    panels = [(b, sorted((v for v in variants if abs(v["params"] - b) <= tolerance * b
                          and v["interval"]["mean"] is not None), key=lambda v: v["interval"]["mean"]))
              for b in budgets]
    panels = [(b, vs) for b, vs in panels if vs] or [(None, [])]
    heights = [max(len(vs), 1) + 1.5 for _, vs in panels]
    fig = Figure(figsize=(9.0, 0.35 * sum(heights) + 0.8), layout="constrained")
    fig.suptitle("blue: tensor network, orange: baseline, black line: teacher; 95 % t-intervals over seeds",
                 fontsize=8)
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (b, vs) in zip(axes, panels):
        for y, v in enumerate(vs):
            iv = v["interval"]
            err = None if iv["low"] is None else [[100 * (iv["mean"] - iv["low"])], [100 * (iv["high"] - iv["mean"])]]
            side = v["family"] in tn
            ax.errorbar([100 * iv["mean"]], [y], xerr=err, marker="o" if side else "s", capsize=3, ls="none",
                        color="C0" if side else "C1")
        ax.set_yticks(range(len(vs)), [f"{v['label']} ({v['params']:,}, {len(v['runs'])} seeds)" for v in vs],
                      fontsize=7)
        ax.axvline(100 * head["teacher_accuracy"], color="k", lw=1)
        ax.set(xlabel="test accuracy (%)", ylim=(-0.7, len(vs) - 0.3),
               title="no runs" if b is None else f"≈ {b:,} parameters (± {100 * tolerance:g} %)")
        ax.title.set_fontsize(8)
        ax.xaxis.label.set_fontsize(8)
        ax.grid(alpha=0.3, axis="x")
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("runs", type=Path, help="a folder of finished `distill run` folders")
    ap.add_argument("--budgets", required=True, default=argparse.SUPPRESS,
                    help="comma list of parameter budgets, e.g. 10000,40000,160000 (required)")
    ap.add_argument("--tolerance", type=float, default=0.1, help="a variant competes within this fraction of a budget")
    ap.add_argument("--tn", default="mps", help="comma list of the tensor-network families")
    ap.add_argument("--baseline", default="mlp", help="comma list of the baseline families")
    ap.add_argument("--min-gain", type=float, default=0.5, help="points the tensor network must win by")
    ap.add_argument("--out", type=Path, default=argparse.SUPPRESS,
                    help="folder for budget_compare.{json,md,png} (without it: the table is printed only)")
    args = ap.parse_args(argv)
    try:
        budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    except ValueError:
        ap.error(f"--budgets takes integers separated by commas, got {args.budgets!r}")
    if not budgets or min(budgets) < 1 or not 0 < args.tolerance < 1:
        ap.error("--budgets must be positive integers and --tolerance in (0, 1)")
    try:
        if not args.runs.is_dir():
            raise DistillError(f"{args.runs} is not a folder")
        variants, head = read_runs(args.runs)
        rows = compare(variants, budgets, args.tolerance, set(args.tn.split(",")), set(args.baseline.split(",")),
                       args.min_gain)
    except DistillError as err:
        print(f"budget_compare: error: {err}", file=sys.stderr)
        return 2
    md = table(variants, rows, head, args.min_gain)
    print(md)
    if getattr(args, "out", None) is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "budget_compare.json", {**head, "variants": variants, "budgets": rows,
                                                      "tolerance": args.tolerance, "min_gain_pts": args.min_gain})
        write_atomic(args.out / "budget_compare.md", md)
        plot(args.out / "budget_compare.png", variants, head, set(args.tn.split(",")), budgets, args.tolerance)
        print(f"wrote {args.out}/budget_compare.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
