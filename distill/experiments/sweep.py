"""`distill sweep`: student families × sizes × seeds from one teacher, with the baselines, the
Pareto front and corrected statistics.

`sweep(cfg, out)` trains ONE teacher (or loads `teacher.checkpoint`) and computes its logits
once; then, for every point — a mirror family at one size — and every seed of `sweep.seeds`, it
distils the student exactly as the config's distill section says (same phases, epochs, data) and
records test accuracy, agreement and KL with the teacher, parameters (whole student and the
replaced layers), latency and training time.

Points. Each entry of `sweep.families` is {family: NAME, sizes: [...], label: ..., <options of
that family>}: with `sizes`, one point per value of the family's size knob (`SIZE_KNOB`: rank,
bond dimension, width); without, one point per budget level, the size whose whole-student
parameter count is closest to the level (`students.budget.match_budget`, shape-only builds).
Budget levels: `sweep.compression` as teacher parameters / student parameters, else the counts of
the first entry's sizes. The baselines `dense` (a small dense bottleneck per hidden layer) and
`lowrank` (W = A·B) are always added at every level (an entry may set their options, not sizes).
Options not given in an entry come from the config's student section (e.g. `replace`,
`warm_start`).

Statistics (`distill.analysis.statistics`): per point the mean and its 95 % Student t-interval
over seeds (one seed: no spread is given); "lossless" = mean drop ≤ 1 pt from the teacher
(seed 004), with the t-interval of the drop; at each budget level every tensor family is compared
with each baseline by Welch's t-test, the p-values Holm-corrected over all those comparisons; a
point more than 10 % off a level's budget is not compared there.

Run folder: config.yaml, results.json, results.csv (one row per run), report.md, pareto.png
(test accuracy against parameters, log x, 95 % intervals, the front marked), teacher/ when
trained here, and points/ — one JSON per finished run, which `--resume` does not repeat.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from flax import nnx
from matplotlib.figure import Figure

from distill import report, students, teachers, train
from distill.analysis.statistics import (
    CI_METHOD,
    CORRECTION,
    TEST_METHOD,
    comparison_cells,
    format_interval,
    holm,
    t_interval,
    verdict_cell,
    welch,
)
from distill.config import Config, dump_yaml, with_student
from distill.errors import DistillError
from distill.experiments import checks
from distill.experiments.common import (
    check_phases,
    check_teacher_learned,
    dataset_summary,
    distil,
    latencies,
    load_data,
    student_checkpointing,
    student_inputs,
)
from distill.experiments.folder import RunFolder, default_run_dir
from distill.experiments.run import CHECKPOINTS, _drop_checkpoints, get_teacher
from distill.nn import param_count
from distill.options import check_field, plain, suggest
from distill.students.budget import match_budget
from distill.students.mirror import build_mirror, layer_params, replaced_compression
from distill.train.checkpoint import RunInterrupted, stop_on_signals
from distill.train.sharding import use_cpu_devices

__all__ = [
    "BASELINES",
    "BUDGET_TOLERANCE",
    "LOSSLESS_PTS",
    "Entry",
    "Point",
    "console_table",
    "markdown_report",
    "pair_sweeps",
    "pareto_front",
    "parse_entries",
    "plan_points",
    "sweep",
]

#: The baselines every sweep includes at every budget level (DESIGN.md §1 "Baselines").
BASELINES = ("dense", "lowrank")
#: "Lossless": the mean test accuracy is at most this many points below the teacher's (seed 004).
LOSSLESS_PTS = 1.0
#: A point whose parameters are more than this fraction off a level's budget is not compared there.
BUDGET_TOLERANCE = 0.10
_RESERVED = ("family", "sizes", "label")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One family of the sweep: its options (overrides of the student section), its sizes (None:
    matched to the budget levels) and whether it is a baseline."""

    label: str
    family: str
    options: dict
    sizes: tuple[int, ...] | None
    baseline: bool

    @property
    def knob(self) -> str:
        return students.family(self.family).SIZE_KNOB

    def config(self, cfg: Config, size: int | None, seed: int | None = None) -> Config:
        """The config of one run: the student section with this family, its options and size."""
        extra = {} if size is None else {self.knob: size}
        run = with_student(cfg, family=self.family, **self.options, **extra)
        return run if seed is None else dataclasses.replace(run, seed=seed)


@dataclasses.dataclass
class Point:
    """One family at one size: its counts, the budget levels it stands for, its runs."""

    entry: Entry
    size: int
    params: int
    replaced_params: int
    replaced_teacher_params: int
    levels: list[int]
    options: dict  # the family's full options at this size (plain)
    runs: list[dict] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.entry.label} {self.entry.knob}={self.size}"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.entry.label}-{self.entry.knob}{self.size}")


# --------------------------------------------------------------------------------- planning


def parse_entries(cfg: Config) -> list[Entry]:
    """`sweep.families` as Entries, the missing baselines appended; every problem is a one-line
    DistillError naming the key."""
    raw_entries = cfg.sweep.families
    if not raw_entries:
        raise DistillError("config: sweep.families is empty; list the families to sweep, e.g. "
                           "[{family: cp}, {family: tucker}, {family: tr, sizes: [4, 8]}]")
    mirrors = [n for n in students.families() if students.is_mirror(n)]
    entries: list[Entry] = []
    for i, raw in enumerate(raw_entries):
        where = f"sweep.families[{i}]"
        if not isinstance(raw, dict) or "family" not in raw:
            raise DistillError(f"config: {where} must be a mapping with a 'family', e.g. {{family: cp, sizes: [4, 8]}}")
        family = raw["family"]
        if family not in students.families():
            raise DistillError(f"config: {where}.family = {family!r} is not allowed: must be one of {', '.join(mirrors)}")
        if not students.is_mirror(family):
            raise DistillError(f"config: {where}.family = {family!r} maps pixels to logits; a sweep compares the "
                               f"families that replace the teacher's layers: {', '.join(mirrors)}")
        module = students.family(family)
        fields = {f.name for f in dataclasses.fields(module.Options)}
        options = {}
        for key, value in raw.items():
            if key in _RESERVED:
                continue
            if key not in fields:
                raise DistillError(f"config: unknown key '{where}.{key}' for family {family}"
                                   f"{suggest(str(key), [*_RESERVED, *sorted(fields)], f'{where}.')}")
            if key == module.SIZE_KNOB:
                raise DistillError(f"config: {where}.{key}: the size knob of family {family} is set by "
                                   f"{where}.sizes (or by the budget levels, sweep.compression)")
            options[key] = check_field(module.Options, key, value, f"{where}.{key}")
        sizes = raw.get("sizes")
        if sizes is not None:
            if family in BASELINES:
                raise DistillError(f"config: {where}.sizes: the baseline {family} is always matched to the budget "
                                   "levels (sweep.compression); remove its sizes")
            if not isinstance(sizes, (list, tuple)) or not sizes or not all(
                    isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
                raise DistillError(f"config: {where}.sizes = {sizes!r} is not allowed: must be a non-empty list of "
                                   f"integers ≥ 1 (values of {module.SIZE_KNOB})")
            sizes = tuple(dict.fromkeys(int(s) for s in sizes))
        label = raw.get("label", family)
        if not isinstance(label, str) or not label.strip():
            raise DistillError(f"config: {where}.label must be a non-empty string, got {label!r}")
        entries.append(Entry(label, family, options, sizes, family in BASELINES))
    for name in BASELINES:
        if not any(e.family == name for e in entries):
            entries.append(Entry(name, name, {}, None, True))
    seen: dict[str, int] = {}
    for i, e in enumerate(entries):
        if e.label in seen:
            raise DistillError(f"config: sweep.families[{seen[e.label]}] and sweep.families[{i}] are both "
                               f"{e.label!r}; give one of them a distinct 'label'")
        seen[e.label] = i
    if not cfg.sweep.compression and entries[0].sizes is None:
        raise DistillError("config: sweep.compression is empty and sweep.families[0] has no sizes; set the budget "
                           "levels (e.g. sweep.compression: [5, 10, 20]) or give the first family its sizes")
    for e in entries:
        run = e.config(cfg, None)
        check_phases(run)
        checks.check_config(run)
    return entries


def _counts(entry: Entry, cfg: Config, size: int, teacher) -> tuple[int, int, int]:
    """(student params, params of its replacements, teacher params of the replaced layers) of a
    shape-only build."""
    opts = entry.config(cfg, size).student.options
    shape = nnx.eval_shape(lambda: build_mirror(entry.family, opts, teacher, seed=cfg.seed, warm_start=False))
    comp = replaced_compression(layer_params(shape, teacher))
    return param_count(shape), comp["params"], comp["teacher_params"]


def plan_points(cfg: Config, entries: list[Entry], teacher) -> tuple[list[dict], list[Point]]:
    """(budget levels [{name, target_params, compression}], points) from shape-only builds on
    `teacher` (which may itself be shape-only). Every point's student is built, so a bad option
    fails here, before the teacher trains."""
    t_params = param_count(teacher)
    if cfg.sweep.compression:
        levels = [{"name": f"{c:g}×", "target_params": int(round(t_params / c)), "compression": float(c)}
                  for c in cfg.sweep.compression]
    else:
        ref = entries[0]
        levels = []
        for size in ref.sizes:
            n = _counts(ref, cfg, size, teacher)[0]
            levels.append({"name": f"{ref.label} {ref.knob}={size}", "target_params": n,
                           "compression": t_params / n})
    points: list[Point] = []
    for k, entry in enumerate(entries):
        sizes: dict[int, list[int]] = {}
        if entry.sizes is not None:
            for j, size in enumerate(entry.sizes):
                sizes.setdefault(size, [])
                if k == 0 and not cfg.sweep.compression:
                    sizes[size].append(j)
        else:
            base = entry.config(cfg, None).student.options
            for j, level in enumerate(levels):
                opts, _ = match_budget(entry.family, base, teacher, level["target_params"],
                                       max_size=cfg.sweep.max_size, seed=cfg.seed)
                sizes.setdefault(getattr(opts, entry.knob), []).append(j)
        for size, lv in sizes.items():
            points.append(Point(entry, size, *_counts(entry, cfg, size, teacher), levels=lv,
                                options=plain(entry.config(cfg, size).student.options)))
    return levels, points


# --------------------------------------------------------------------------------- running


def sweep(cfg: Config, out: str | Path | None = None, progress: bool = True, *,
          resume: bool = False) -> tuple[Path, dict]:
    """Run cfg.sweep on one teacher; returns (run folder, results). With `resume`, continue the
    interrupted sweep whose folder was `out` (finished runs are read back, not repeated).

    Raises: DistillError for a config, data or teacher problem (the staging folder is removed
    unless some runs finished: `--resume` continues from them); RunInterrupted when stopped by
    SIGTERM / SIGINT (the staging folder is kept for `--resume`)."""
    t0 = time.perf_counter()
    entries = parse_entries(cfg)
    use_cpu_devices(cfg.runtime.cpu_devices)
    final = Path(out) if out is not None else default_run_dir(cfg.name, "-sweep")
    folder = RunFolder.resume(final) if resume else RunFolder.start(final)
    config_yaml = dump_yaml(cfg)
    try:
        with stop_on_signals():
            results = _sweep_in(cfg, entries, folder, config_yaml, progress, t0)
    except RunInterrupted:
        raise
    except BaseException:
        if not resume and not any((folder.work / "points").glob("*.json")):
            folder.abort()  # nothing finished: nothing worth resuming
        raise
    return folder.finish(), results


def _note(progress: bool, message: str) -> None:
    if progress:
        print(f"distill sweep: {message}", file=sys.stderr, flush=True)


def _sweep_in(cfg: Config, entries: list[Entry], folder: RunFolder, config_yaml: str, progress: bool,
              t0: float) -> dict:
    work = folder.work
    report.write_atomic(work / "config.yaml", config_yaml)
    data = load_data(cfg)
    if cfg.teacher.checkpoint is None:  # every point is built (shape-only) before the teacher trains
        checks.check_teacher_size(cfg, data.image_shape, data.num_classes, len(data.y_train))
        teacher_shape = checks.shape_only_teacher(cfg, data.image_shape, data.num_classes)
    else:
        teacher_shape = teachers.load_teacher(cfg.teacher.checkpoint)[0]
        checks.check_teacher_for_student(entries[0].config(cfg, None), teacher_shape)
    levels, points = plan_points(cfg, entries, teacher_shape)
    for point in points:  # sizes against memory
        checks.check_student(point.entry.config(cfg, point.size), data.image_shape, data.num_classes, teacher_shape,
                             len(data.y_train))
    teacher = get_teacher(cfg, data, work, progress=progress)
    checks.check_teacher_for_student(entries[0].config(cfg, None), teacher.model)
    t_logits = {s: teachers.frozen_logits(teacher.model, getattr(data, f"x_{s}")) for s in ("train", "val", "test")}
    teacher_acc = train.losses.accuracy(t_logits["test"], data.y_test)
    check_teacher_learned(teacher_acc, data.y_test, teacher)
    xs = student_inputs(entries[0].config(cfg, None), data)
    ckpt_root = student_checkpointing(work / CHECKPOINTS, cfg)
    (work / "points").mkdir(exist_ok=True)
    total, done = len(points) * len(cfg.sweep.seeds), 0
    for point in points:
        for seed in cfg.sweep.seeds:
            record = work / "points" / f"{point.slug}-seed{seed}.json"
            if record.is_file():
                run = json.loads(record.read_text())
            else:
                key = f"{point.slug}/seed{seed}"
                run = _one_run(point, cfg, seed, data, xs, teacher.model, t_logits,
                               lambda name, key=key: ckpt_root(f"{key}/{name}"), progress)
                report.write_json(record, run)
                shutil.rmtree(work / CHECKPOINTS / point.slug / f"seed{seed}", ignore_errors=True)
            point.runs.append(run)
            done += 1
            acc = "failed" if "failed" in run else f"{100 * run['accuracy']:.2f} %"
            _note(progress, f"{done}/{total} {point.name} seed {seed}: {acc}")

    t_params = param_count(teacher.model)
    rows = [_summarise(p, teacher_acc, t_params, levels) for p in points]
    front = pareto_front(rows)
    for i, row in enumerate(rows):
        row["on_front"] = i in front
    comparisons = _comparisons(rows, levels)
    results = {
        "name": cfg.name,
        "dataset": dataset_summary(data),
        "teacher": {"accuracy": teacher_acc, "params": t_params, "source": teacher.source,
                    "architecture": " → ".join(layer["type"] for layer in teacher.model.spec["layers"]),
                    "latency_ms": latencies(teacher.model, data.n_features)},
        "distill": {"phases": list(cfg.distill.phases), "epochs": cfg.distill.epochs,
                    "layer_epochs": cfg.distill.layer_epochs if "layerwise" in cfg.distill.phases else None},
        "seeds": list(cfg.sweep.seeds),
        "levels": levels,
        "statistics": {"interval": CI_METHOD, "test": TEST_METHOD, "correction": CORRECTION,
                       "lossless": f"mean drop ≤ {LOSSLESS_PTS:g} pt from the teacher's test accuracy",
                       "budget_tolerance": BUDGET_TOLERANCE},
        "points": rows,
        "comparisons": comparisons,
        "wall_time_s": None,
    }
    plot_pareto(work / "pareto.png", results)
    results["wall_time_s"] = time.perf_counter() - t0
    report.write_json(work / "results.json", results)
    report.write_atomic(work / "results.csv", _csv(results))
    report.write_atomic(work / "report.md", markdown_report(results, config_yaml))
    _drop_checkpoints(work)
    return results


def _one_run(point: Point, cfg: Config, seed: int, data, xs, teacher, t_logits, ckpt, progress: bool) -> dict:
    """One (point, seed) run: its test metrics, or the error that stopped it (e.g. a NaN loss)."""
    run_cfg = point.entry.config(cfg, point.size, seed)
    base = {"seed": seed, "params": point.params}
    t1 = time.perf_counter()
    try:
        result = distil(run_cfg, data, xs, teacher, t_logits, ckpt=ckpt, devices=cfg.runtime.devices,
                        progress=progress, label=f"{point.name} seed {seed}")
    except DistillError as err:  # record it, keep sweeping the others
        return {**base, "failed": str(err)}
    train_time = time.perf_counter() - t1
    student = result.student
    ev = train.evaluate(train.predict(student, xs.x["test"]), t_logits["test"], data.y_test)
    layers = [{k: v for k, v in row.items() if k != "history"} for row in result.layers or []]
    return {**base, "accuracy": ev.accuracy, "agreement": ev.agreement, "kl": ev.kl,
            "params": param_count(student), "train_time_s": train_time,
            "latency_ms": latencies(student, data.n_features), "stages": result.stages, "layers": layers,
            "epoch_s": {name: hist.get("epoch_s") for name, hist in result.curves.items()}}


# --------------------------------------------------------------------------------- summaries


def _summarise(point: Point, teacher_acc: float, t_params: int, levels: list[dict]) -> dict:
    ok = [r for r in point.runs if "failed" not in r]
    acc = [r["accuracy"] for r in ok]
    drop = t_interval([100.0 * (teacher_acc - a) for a in acc], bounds=(100.0 * (teacher_acc - 1.0), 100.0 * teacher_acc))
    lat = {b: float(np.median([r["latency_ms"][b] for r in ok])) if ok else None for b in ("1", "256")}
    gaps = {levels[j]["name"]: point.params / levels[j]["target_params"] - 1.0 for j in point.levels}
    return {
        "label": point.entry.label, "family": point.entry.family, "baseline": point.entry.baseline,
        "knob": point.entry.knob, "size": point.size, "options": point.entry.options,
        "params": point.params, "compression": t_params / point.params,
        "replaced_params": point.replaced_params, "replaced_teacher_params": point.replaced_teacher_params,
        "replaced_compression": point.replaced_teacher_params / point.replaced_params,
        "levels": [levels[j]["name"] for j in point.levels], "budget_gap": gaps,
        "n_ok": len(ok), "n_failed": len(point.runs) - len(ok),
        "accuracy": t_interval(acc, bounds=(0.0, 1.0)).as_dict(),
        "agreement": t_interval([r["agreement"] for r in ok], bounds=(0.0, 1.0)).as_dict(),
        "kl": t_interval([r["kl"] for r in ok]).as_dict(),
        "drop_pts": drop.as_dict(),
        "lossless": None if drop.mean is None else bool(drop.mean <= LOSSLESS_PTS),
        "latency_ms": lat,
        "train_time_s": float(np.mean([r["train_time_s"] for r in ok])) if ok else None,
        "student_options": point.options,
        "runs": point.runs,
    }


def pareto_front(rows: list[dict]) -> list[int]:
    """Indices of the points no other point beats on both counts (fewer or equal parameters and a
    higher mean test accuracy), in order of parameters; points without a finished run are left out."""
    order = sorted((i for i, r in enumerate(rows) if r["accuracy"]["mean"] is not None),
                   key=lambda i: (rows[i]["params"], -rows[i]["accuracy"]["mean"]))
    front, best = [], -np.inf
    for i in order:
        if rows[i]["accuracy"]["mean"] > best:
            front.append(i)
            best = rows[i]["accuracy"]["mean"]
    return front


def _comparisons(rows: list[dict], levels: list[dict]) -> list[dict]:
    """At each level, each tensor family's point against each baseline's (Welch), Holm-corrected
    over all of them. Points more than BUDGET_TOLERANCE off the level's budget are left out."""
    out = []
    for level in levels:
        name = level["name"]
        here = [r for r in rows if name in r["levels"] and r["n_ok"]
                and abs(r["budget_gap"][name]) <= BUDGET_TOLERANCE]
        for a in (r for r in here if not r["baseline"]):
            for b in (r for r in here if r["baseline"]):
                acc_a = [x["accuracy"] for x in a["runs"] if "failed" not in x]
                acc_b = [x["accuracy"] for x in b["runs"] if "failed" not in x]
                c = welch(acc_a, acc_b)
                out.append({"level": name, "a": f"{a['label']} {a['knob']}={a['size']}",
                            "b": f"{b['label']} {b['knob']}={b['size']}", "params_a": a["params"],
                            "params_b": b["params"], **c.as_dict()})
    _add_holm(out)
    return out


def _add_holm(comparisons: list[dict]) -> None:
    """Holm-correct the comparisons' p-values together: p_holm and significant (p_holm < 0.05)."""
    for c, p in zip(comparisons, holm([c["p"] for c in comparisons])):
        c["p_holm"] = p
        c["significant"] = None if p is None else bool(p < 0.05)


def pair_sweeps(a: dict, b: dict) -> list[dict]:
    """Two sweeps of the same teacher and points trained two ways (e.g. KD against labels only):
    for every point present in both (same label, knob and size), A − B in mean test accuracy with
    its 95 % Welch t-interval over seeds, Welch's p and the Holm-corrected p over all the pairs.

    a, b: the `results.json` dicts of two `distill sweep` folders. Returns one dict per common point
    {label, knob, size, params, acc_a, acc_b (intervals as dicts), runs_a, runs_b (the per-run
    accuracies), diff, low, high, t, df, p, p_holm, significant} in A's order. Raises: DistillError
    if the two sweeps differ in dataset, teacher (test accuracy and parameters) or seeds, or share
    no point — a comparison of different experiments would be a plausible wrong number.
    """
    for key, what in (("dataset", "dataset"), ("seeds", "seeds")):
        if a[key] != b[key]:
            raise DistillError(f"the two sweeps differ in their {what} ({a[key]!r} against {b[key]!r}); "
                               "compare sweeps of one experiment trained two ways")
    ta, tb = a["teacher"], b["teacher"]
    if (ta["accuracy"], ta["params"]) != (tb["accuracy"], tb["params"]):
        raise DistillError(f"the two sweeps have different teachers ({100 * ta['accuracy']:.2f} % / {ta['params']:,} "
                           f"parameters against {100 * tb['accuracy']:.2f} % / {tb['params']:,}); give both "
                           "the same teacher.checkpoint")
    index = {(p["label"], p["knob"], p["size"]): p for p in b["points"]}
    out = []
    for pa in a["points"]:
        pb = index.get((pa["label"], pa["knob"], pa["size"]))
        if pb is None:
            continue
        acc_a = [r["accuracy"] for r in pa["runs"] if "failed" not in r]
        acc_b = [r["accuracy"] for r in pb["runs"] if "failed" not in r]
        if not acc_a or not acc_b:
            continue
        out.append({"label": pa["label"], "knob": pa["knob"], "size": pa["size"], "params": pa["params"],
                    "acc_a": t_interval(acc_a, bounds=(0.0, 1.0)).as_dict(),
                    "acc_b": t_interval(acc_b, bounds=(0.0, 1.0)).as_dict(),
                    "runs_a": acc_a, "runs_b": acc_b,
                    **welch(acc_a, acc_b).as_dict()})
    if not out:
        raise DistillError("the two sweeps share no finished point (same family label and size); nothing to compare")
    _add_holm(out)
    return out


# --------------------------------------------------------------------------------- outputs


def _csv(results: dict) -> str:
    buf = io.StringIO()
    fields = ["label", "family", "baseline", "knob", "size", "seed", "params", "compression", "replaced_params",
              "replaced_teacher_params", "replaced_compression", "accuracy", "agreement", "kl", "drop_pts",
              "latency_ms_b1", "latency_ms_b256", "train_time_s", "failed"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    t_acc = results["teacher"]["accuracy"]
    for p in results["points"]:
        for r in p["runs"]:
            ok = "failed" not in r
            w.writerow({"label": p["label"], "family": p["family"], "baseline": p["baseline"], "knob": p["knob"],
                        "size": p["size"], "seed": r["seed"], "params": r["params"], "compression": p["compression"],
                        "replaced_params": p["replaced_params"],
                        "replaced_teacher_params": p["replaced_teacher_params"],
                        "replaced_compression": p["replaced_compression"],
                        "accuracy": r["accuracy"] if ok else "", "agreement": r["agreement"] if ok else "",
                        "kl": r["kl"] if ok else "", "drop_pts": 100 * (t_acc - r["accuracy"]) if ok else "",
                        "latency_ms_b1": r["latency_ms"]["1"] if ok else "",
                        "latency_ms_b256": r["latency_ms"]["256"] if ok else "",
                        "train_time_s": r["train_time_s"] if ok else "", "failed": r.get("failed", "")})
    return buf.getvalue()


def _drop_cell(p: dict) -> str:
    d = p["drop_pts"]
    if d["mean"] is None:
        return "–"
    if d["low"] is None:
        return f"{d['mean']:+.2f}"
    return f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def _lossless_cell(p: dict) -> str:
    if p["lossless"] is None:
        return "–"
    return "yes" if p["lossless"] else "no"


def _latency_cell(lat: dict) -> str:
    return "–" if lat["1"] is None else f"{lat['1']:.2f} / {lat['256']:.1f}"


def _interval_cell(iv: dict, one_seed: bool) -> str:
    """A mean with its interval; with one seed for the whole sweep the header says that no spread
    can be given, and the cell is the mean alone."""
    if one_seed and iv["mean"] is not None:
        return f"{100 * iv['mean']:.2f}"
    return format_interval(iv)


def _header(results: dict) -> list[str]:
    if len(results["seeds"]) == 1:
        return [h.replace(" [95 % CI]", " (1 seed: no spread)") for h in HEADER]
    return list(HEADER)


def _table_rows(results: dict) -> list[list[str]]:
    one_seed = len(results["seeds"]) == 1
    t = results["teacher"]
    rows = [["teacher", "–", f"{t['params']:,}", "1.0×", "1.0×", f"{100 * t['accuracy']:.2f}", "–", "100", "0",
             _latency_cell(t["latency_ms"]), "–", ""]]
    for p in sorted(results["points"], key=lambda p: (p["baseline"], p["label"], p["params"])):
        acc = _interval_cell(p["accuracy"], one_seed)
        if p["n_failed"]:
            acc += f" ({p['n_failed']} seed(s) failed)"
        rows.append([p["label"] + (" (baseline)" if p["baseline"] else ""), f"{p['knob']}={p['size']}",
                     f"{p['params']:,}", f"{p['compression']:.1f}×", f"{p['replaced_compression']:.1f}×", acc,
                     _drop_cell(p), _interval_cell(p["agreement"], one_seed),
                     "–" if p["kl"]["mean"] is None else f"{p['kl']['mean']:.3f}", _latency_cell(p["latency_ms"]),
                     _lossless_cell(p), "◆" if p["on_front"] else ""])
    return rows


HEADER = ["family", "size", "params", "CR (network)", "CR (replaced layers)", "test acc. % [95 % CI]",
          "drop (pts) [95 % CI]", "agreement % [95 % CI]", "KL", "latency ms (b 1 / 256)", "lossless", "front"]


def console_table(results: dict) -> str:
    cols = [0, 1, 2, 4, 5, 10]
    rows = [[_header(results)[c] for c in cols]] + [[r[c] for c in cols] for r in _table_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def _standing(results: dict) -> list[str]:
    """Per family: the highest compression of its replaced layers at which it is lossless."""
    lines = []
    labels = list(dict.fromkeys(p["label"] for p in results["points"]))
    for label in labels:
        pts = [p for p in results["points"] if p["label"] == label and p["n_ok"]]
        if not pts:
            lines.append(f"- **{label}**: no finished run.")
            continue
        lossless = [p for p in pts if p["lossless"]]
        if lossless:
            best = max(lossless, key=lambda p: p["replaced_compression"])
            lines.append(f"- **{label}**: lossless up to {best['replaced_compression']:.1f}× on its replaced layers "
                         f"({best['compression']:.1f}× on the network; {best['knob']}={best['size']}, drop "
                         f"{_drop_cell(best)} pts).")
        else:
            best = min(pts, key=lambda p: p["drop_pts"]["mean"])
            lines.append(f"- **{label}**: not lossless at any size tried; smallest drop {_drop_cell(best)} pts at "
                         f"{best['replaced_compression']:.1f}× on its replaced layers ({best['knob']}={best['size']}).")
    return lines


def markdown_report(results: dict, config_yaml: str) -> str:
    d, t, st = results["dataset"], results["teacher"], results["statistics"]
    phases = " → ".join(results["distill"]["phases"])
    one_seed = len(results["seeds"]) == 1
    lines = [
        f"# distill sweep: {results['name']}",
        "",
        f"Dataset **{d['name']}** ({d['n_train']} train / {d['n_val']} validation / {d['n_test']} test). Teacher: "
        f"{100 * t['accuracy']:.2f} % test accuracy, {t['params']:,} parameters ({t['architecture']}; "
        f"{t['source']}). Every student is the teacher with some layers replaced (the family's `replace` option; "
        f"baselines: the hidden dense layers), distilled the same way ({phases}, {results['distill']['epochs']} "
        f"epochs), seeds {results['seeds']}.",
        "",
        f"CR (network) = teacher parameters / student parameters; CR (replaced layers) = the teacher's parameters "
        f"of the replaced layers / the student's parameters of their replacements. Intervals: {st['interval']}"
        + (" — but this sweep has one seed, so no spread can be given." if one_seed else ".")
        + f" Lossless: {st['lossless']}. ◆: on the Pareto front (no point has fewer parameters and a higher "
        "mean accuracy). All metrics on the test split; latency is the median forward time of the jitted "
        "student at batch 1 / 256 on this machine.",
        "",
        "Budget levels: " + ", ".join(f"{lv['name']} ({lv['target_params']:,} parameters)"
                                     for lv in results["levels"]) + ".",
        "",
        *report.markdown_table(_header(results), _table_rows(results)),
        "",
        "![test accuracy against parameters](pareto.png)",
        "",
        "## Where each family stands",
        "",
        *_standing(results),
        "",
        "## Tensor families against the baselines at matched budgets",
        "",
        f"Test: {st['test']}; p-values corrected by {st['correction']} (p_Holm < 0.05: the difference is "
        f"larger than the seed spread). Points more than {100 * st['budget_tolerance']:.0f} % off a level's "
        "budget are not compared there. Δ = mean accuracy of A − B, with its 95 % Welch t-interval.",
        "",
    ]
    comps = results["comparisons"]
    if not comps:
        lines.append("No comparison could be made (no two points at a level within the budget tolerance).")
    elif one_seed:
        lines.append("With one seed no spread can be given and no test can be made; the differences are listed only.")
        lines.append("")
    if comps:
        lines += ["| level | A | B | params A / B | Δ (pts) [95 % CI] | p | p_Holm | beyond the seed spread |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in comps:
            delta, p, ph = comparison_cells(c)
            verdict = verdict_cell(c["significant"])
            lines.append(f"| {c['level']} | {c['a']} | {c['b']} | {c['params_a']:,} / {c['params_b']:,} | "
                         f"{delta} | {p} | {ph} | {verdict} |")
    failed = [(p["label"], p["size"], r["seed"], r["failed"]) for p in results["points"] for r in p["runs"]
              if "failed" in r]
    if failed:
        lines += ["", "## Failed runs (left out of the means)", ""]
        lines += [f"- {label} size {size}, seed {seed}: {msg}" for label, size, seed, msg in failed]
    lines += ["", f"Wall time {results['wall_time_s']:.1f} s.", "", "## Resolved config", "", "```yaml",
              config_yaml.rstrip(), "```", ""]
    return "\n".join(lines)


def plot_pareto(path: Path, results: dict) -> None:
    """Mean test accuracy against parameters (log x) per family, 95 % t-intervals as error bars
    (none for one seed), the Pareto front as a dashed step line, the teacher and the lossless line."""
    pts = [p for p in results["points"] if p["n_ok"]]
    fig = Figure(figsize=(8.0, 5.0))
    ax = fig.subplots()
    labels = list(dict.fromkeys(p["label"] for p in pts))
    for k, label in enumerate(labels):
        mine = sorted((p for p in pts if p["label"] == label), key=lambda p: p["params"])
        x = [p["params"] for p in mine]
        y = [100 * p["accuracy"]["mean"] for p in mine]
        err = np.array([[100 * (p["accuracy"]["mean"] - p["accuracy"]["low"]) if p["accuracy"]["low"] is not None
                         else 0.0 for p in mine],
                        [100 * (p["accuracy"]["high"] - p["accuracy"]["mean"]) if p["accuracy"]["high"] is not None
                         else 0.0 for p in mine]])
        base = mine[0]["baseline"]
        ax.errorbar(x, y, yerr=err, marker="s" if base else "o", ls=":" if base else "-", capsize=3,
                    color=f"C{k % 10}", label=label + (" (baseline)" if base else ""))
    front = sorted((p for p in pts if p["on_front"]), key=lambda p: p["params"])
    if front:
        ax.step([p["params"] for p in front], [100 * p["accuracy"]["mean"] for p in front], where="post",
                color="k", ls="--", lw=1, label="Pareto front")
        ax.scatter([p["params"] for p in front], [100 * p["accuracy"]["mean"] for p in front], s=120,
                   facecolors="none", edgecolors="k", zorder=3)
    t_acc = 100 * results["teacher"]["accuracy"]
    ax.axhline(t_acc, color="k", lw=1, label=f"teacher {t_acc:.2f} % ({results['teacher']['params']:,} params)")
    ax.axhline(t_acc - LOSSLESS_PTS, color="grey", lw=1, ls="-.", label=f"lossless limit (−{LOSSLESS_PTS:g} pt)")
    ax.set_xscale("log")
    n = len(results["seeds"])
    bars = "95 % t-intervals" if n > 1 else "one seed: no error bars"
    ax.set(xlabel="student parameters (log scale)", ylabel="test accuracy (%)",
           title=f"{results['name']}: mean over {n} seed(s), {bars}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)

