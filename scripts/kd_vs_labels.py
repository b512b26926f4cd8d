"""What does distillation add over the labels? Two `distill sweep` folders of one teacher — the
same points trained by KD and by labels only (`--set distill.mode=labels_only`), with the same
augmentation, epochs and seeds — compared point by point.

    distill sweep configs/budgets_fashion_mlp.yaml --set teacher.checkpoint=T --out runs/budgets-kd
    distill sweep configs/budgets_fashion_mlp.yaml --set teacher.checkpoint=T \\
        --set distill.mode=labels_only --set 'sweep.families=[{family: tt}]' --out runs/budgets-labels
    python scripts/kd_vs_labels.py runs/budgets-kd runs/budgets-labels --out runs/kd_vs_labels

Each argument may instead be a folder of `distill run` folders: one student config run at several
sizes and seeds (e.g. a pixel MPS student, which a sweep does not cover), grouped into points by
the family's size knob; their configs must differ in nothing but the seed, that knob and the
runtime section:

    distill run configs/fashion_mps_pooled.yaml --set teacher.checkpoint=T --set student.bond_dim=8 \
        --set seed=0 --out runs/q3-kd/chi8-s0                      (… each χ and seed)
    … the same with --set distill.mode=labels_only --out runs/q3-labels/chi8-s0
    python scripts/kd_vs_labels.py runs/q3-kd runs/q3-labels --out runs/kd_vs_labels_mps

Per point present in both (same family label and size): the mean test accuracy of each with its
95 % t-interval over seeds, Δ = KD − labels with its 95 % Welch t-interval, Welch's p and the
Holm-corrected p over all the points, and whether Δ ≥ --min-gain points with the interval above 0
(issue 12, Q3: ≥ 1.0 pt at each budget). Refuses sweeps of different teachers, datasets or seeds,
and sweeps whose augmentation or number of epochs differ (read from their config.yaml).
Writes OUT/kd_vs_labels.json, OUT/kd_vs_labels.md and OUT/kd_vs_labels.png (mean test accuracy
against parameters for both, 95 % t-intervals, one panel per family) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.analysis.statistics import comparison_cells, format_interval, verdict_cell  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.experiments.sweep import pair_sweeps  # noqa: E402
from distill.io import write_atomic, write_json  # noqa: E402
from distill.report.results import read_finished_runs  # noqa: E402


def _load_yaml(path: Path) -> dict:
    try:
        out = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise DistillError(f"{path}: unreadable ({type(err).__name__})") from None
    return out if isinstance(out, dict) else {}


def _from_runs(folder: Path) -> tuple[dict, dict]:
    """A folder of `distill run` folders → (a sweep-like results dict, the shared config), the runs
    grouped into points by the student family's size knob. Refuses runs whose configs differ in
    anything but the seed, that knob and the runtime section, or whose teachers, datasets or
    training phases differ."""
    from distill import students

    points: dict[tuple, dict] = {}
    shared = first = ref = None
    for run, res, cfg in read_finished_runs(folder):
        st, teacher = res["student"], res["teacher"]
        family = st["family"]
        knob = students.family(family).SIZE_KNOB
        size = cfg["student"].get(knob)
        # runtime: how the run executed (checkpoints, devices), not what it trained
        rest = {k: v for k, v in cfg.items() if k not in ("seed", "name", "runtime")}
        rest["student"] = {k: v for k, v in cfg["student"].items() if k != knob}
        if shared is None:
            shared, first = rest, run
        elif rest != shared:
            keys = sorted(k for k in set(rest) | set(shared) if rest.get(k) != shared.get(k))
            raise DistillError(f"{run} and {first} differ in more than the seed and student.{knob} "
                               f"(sections {', '.join(keys)}); keep one experiment per folder")
        key = (family, knob, size)
        pt = points.setdefault(key, {"label": family, "knob": knob, "size": size, "params": st["params"], "runs": []})
        pt["runs"].append({"seed": cfg.get("seed"), "accuracy": st["accuracy"]})
        head = ((res.get("dataset") or {}).get("name"), st.get("phases"), teacher["accuracy"], teacher["params"])
        if ref is None:
            ref, ref_teacher = head, teacher
        elif head != ref:
            raise DistillError(f"{run} has another dataset, teacher or training phases than {first}")
    seeds = sorted({r["seed"] for p in points.values() for r in p["runs"]})
    results = {"dataset": ref[0], "seeds": seeds, "teacher": ref_teacher,
               "distill": {"phases": ref[1], "epochs": shared.get("distill", {}).get("epochs")},
               "points": sorted(points.values(), key=lambda p: p["size"])}
    return results, shared


def _read(folder: Path) -> tuple[dict, dict]:
    if not folder.is_dir():
        raise DistillError(f"{folder} is not a folder")
    res, cfg = folder / "results.json", folder / "config.yaml"
    if not res.is_file() and not cfg.is_file():
        return _from_runs(folder)
    if not res.is_file() or not cfg.is_file():
        raise DistillError(f"{folder} is not a finished `distill sweep` folder (no results.json / config.yaml)")
    try:
        results = json.loads(res.read_text())
    except ValueError:
        raise DistillError(f"{res}: not valid JSON") from None
    config = _load_yaml(cfg)
    if not isinstance(results, dict) or not {"points", "distill", "teacher"} <= results.keys():
        raise DistillError(f"{folder} is a run folder, not a `distill sweep` folder (its results.json has no points)")
    return results, config


def plot(path: Path, pairs: list[dict], teacher: dict) -> None:
    """Both trainings' mean test accuracy against parameters (log x), per family, with their 95 %
    t-intervals as error bars and the teacher as a line; saved atomically."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    families = list(dict.fromkeys(p["label"] for p in pairs))
    fig = Figure(figsize=(6.0 * len(families), 4.2))
    axes = fig.subplots(1, len(families), squeeze=False)[0]
    for ax, family in zip(axes, families):
        mine = sorted((p for p in pairs if p["label"] == family), key=lambda p: p["params"])
        x = [p["params"] for p in mine]
        for key, name, colour in (("acc_a", "KD", "C0"), ("acc_b", "labels only", "C1")):
            iv = [p[key] for p in mine]
            err = [[100 * (i["mean"] - i["low"]) if i["low"] is not None else 0.0 for i in iv],
                   [100 * (i["high"] - i["mean"]) if i["high"] is not None else 0.0 for i in iv]]
            ax.errorbar(x, [100 * i["mean"] for i in iv], yerr=err, marker="o", capsize=3, color=colour, label=name)
        for p in mine:
            ax.annotate(str(p["size"]), (p["params"], 100 * p["acc_a"]["mean"]),
                        textcoords="offset points", xytext=(4, 6), fontsize=7)
        ax.axhline(100 * teacher["accuracy"], color="k", lw=1, label=f"teacher {100 * teacher['accuracy']:.2f} %")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labels on the powers of ten only: no overlaps
        ax.set(xlabel="student parameters (log scale)", ylabel="test accuracy (%)",
               title=f"{family} (points labelled by {mine[0]['knob']}): KD against labels only, 95 % t-intervals")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kd", type=Path, help="the sweep folder (or folder of run folders) trained by distillation")
    ap.add_argument("labels", type=Path, help="the same sweep (or runs) trained on the labels only")
    ap.add_argument("--min-gain", type=float, default=1.0, help="the gain asked of KD, in points (default 1.0)")
    ap.add_argument("--out", type=Path, help="folder for kd_vs_labels.{json,md,png} (default: print only)")
    a = ap.parse_args(argv)
    try:
        if a.kd.resolve() == a.labels.resolve():
            raise DistillError(f"both arguments are {a.kd}; give the KD sweep and the labels-only sweep")
        (kd, kd_cfg), (lab, lab_cfg) = _read(a.kd), _read(a.labels)
        if "labels" not in lab["distill"]["phases"] or "labels" in kd["distill"]["phases"]:
            raise DistillError(f"expected KD first and labels only second; got phases {kd['distill']['phases']} "
                               f"and {lab['distill']['phases']}")
        for key in ("augment",):
            if kd_cfg.get(key) != lab_cfg.get(key):
                raise DistillError(f"the two sweeps differ in {key} ({kd_cfg.get(key)} against {lab_cfg.get(key)})")
        if kd["distill"]["epochs"] != lab["distill"]["epochs"]:
            raise DistillError(f"the two sweeps train for different epochs ({kd['distill']['epochs']} against "
                               f"{lab['distill']['epochs']})")
        pairs = pair_sweeps(kd, lab)
    except DistillError as err:
        print(f"kd_vs_labels: error: {err}", file=sys.stderr)
        return 2
    for p in pairs:
        p["meets_min_gain"] = None if p["low"] is None else bool(100 * p["diff"] >= a.min_gain and p["low"] > 0)
    t = kd["teacher"]
    lines = [f"Teacher {100 * t['accuracy']:.2f} % ({t['params']:,} parameters). KD: {a.kd} "
             f"({' → '.join(kd['distill']['phases'])}); labels only: {a.labels}; {kd['distill']['epochs']} epochs, "
             f"augmentation {kd_cfg.get('augment')}, seeds {kd['seeds']}.",
             "",
             "| family | size | params | KD acc. % [95 % CI] | labels acc. % [95 % CI] | Δ (pts) [95 % CI] | p | p_Holm "
             f"| Δ ≥ {a.min_gain:g} pt, CI > 0 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        delta, pv, ph = comparison_cells(p)
        meets = verdict_cell(p["meets_min_gain"])
        lines.append(f"| {p['label']} | {p['knob']}={p['size']} | {p['params']:,} | {format_interval(p['acc_a'])} | "
                     f"{format_interval(p['acc_b'])} | {delta} | {pv} | {ph} | {meets} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        write_json(a.out / "kd_vs_labels.json", {"kd": str(a.kd), "labels": str(a.labels), "min_gain_pts": a.min_gain,
                                                "teacher": t, "seeds": kd["seeds"], "pairs": pairs})
        write_atomic(a.out / "kd_vs_labels.md", text)
        plot(a.out / "kd_vs_labels.png", pairs, t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
