"""`distill compare-maps` and `distill check-map`: feature maps side by side, fairly.

`compare_maps(cfg, out)` trains ONE teacher (or loads `teacher.checkpoint`) and computes its
logits (and, for the layer-wise variant, its activations) once; then, for every entry of
`compare.maps` and every seed of `compare.seeds`, it distils the same student architecture on
the same data split and records test accuracy, agreement and KL with the teacher, parameters
and training time. Two variants, chosen by the student family:

  student.family: mps          one MPS from pixels to logits, distilled end to end
                               (distill.mode must be end_to_end);
  student.family: mps_layers   every hidden layer of the teacher replaced by an MPS layer with
                               the map (`layers.MPSHidden`), trained as distill.mode says:
                               layerwise / staged (each layer on the teacher's activations,
                               then KD for staged) or end_to_end; the per-layer R² on held-out
                               teacher activations is recorded too.

A map entry is a mapping: `name` (a registered feature map), that map's parameters, and the
optional keys

    pairing        neighbour | random               pairwise maps only (required for them)
    pairing_seed   int    random pairing; default student.pairing_seed, else the run's seed
                          (so each seed draws its own pairing and the spread includes it)
    pair_shift     float  pairwise maps are applied to inputs shifted by this (default 1.0;
                          0.0 is the seed's literal map, see `distill.nn.MPS`)
    feature_dim    int    d for maps built from a dimension (default student.feature_dim)
                          and for `learned` (with parameters hidden, per_site)
    label          str    the name in tables (default: built from name, params, pairing)

e.g. `{name: fourier, order: 1}`, `{name: pair_product, pairing: random}`.

Fair comparison (`compare.budget`): the first map, at `student.bond_dim`, is the reference.
  params   each map gets the bond dimension χ ≥ 1 whose parameter count (the whole student)
           is closest to the reference's (ties: the smaller χ);
  d_chi2   each map gets the χ whose d·χ² is closest to d_ref·χ_ref² (the per-site cost).
The χ chosen for every map is in the table.

Run folder: config.yaml, results.json, results.csv (one row per map and seed), report.md,
compare_maps.png and teacher/ when the teacher was trained here.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from matplotlib.figure import Figure

from distill import report, students, teachers, train
from distill.analysis.statistics import welch
from distill.config import Config, dump_yaml, with_student
from distill.errors import DistillError
from distill.experiments import checks
from distill.experiments.common import (
    check_teacher_learned,
    distil,
    load_data,
    student_checkpointing,
    student_inputs,
)
from distill.experiments.folder import RunFolder, default_run_dir
from distill.experiments.run import CHECKPOINTS, _drop_checkpoints, get_teacher
from distill.nn import MPS, MPSHidden, param_count
from distill.nn.features import _unknown_map_error
from distill.students.mirror import mirror_param_count
from distill.students.budget import match_budget
from distill.tn.feature_maps import (
    FeatureMap,
    ValidityReport,
    check_feature_map,
    feature_map_names,
    init_learned,
    make_feature_map,
)
from distill.tn.pairing import PAIRINGS, make_partners
from distill.train.checkpoint import RunInterrupted, stop_on_signals
from distill.train.sharding import use_cpu_devices

__all__ = ["MapSpec", "parse_maps", "choose_bond_dims", "compare_maps", "check_map",
           "format_validity", "console_table", "METRICS", "SIGNIFICANCE_RULE"]

#: Per-seed metrics summarised as mean ± std over seeds. The layer R² (mean over hidden layers
#: of R² on held-out teacher activations) exist for the layer-wise variant only (else None):
#: after the layer-wise phase, and at the end of training.
METRICS = ("accuracy", "agreement", "kl", "train_time_s", "vanishing_fraction", "layer_r2_layerwise",
           "layer_r2_final")

#: distill.mode values each student family can be compared under.
VARIANT_MODES = {"mps": ("end_to_end",), "mps_layers": ("layerwise", "staged", "end_to_end")}

#: How report.md decides whether two maps differ by more than the seed spread.
SIGNIFICANCE_RULE = (
    "Welch's t-test on the per-seed test accuracies (unequal variances), two-sided, "
    "p < 0.05: the difference of the means is larger than the seed spread"
)

_RESERVED = ("name", "pairing", "pairing_seed", "pair_shift", "feature_dim", "label")


@dataclasses.dataclass(frozen=True)
class MapSpec:
    """One entry of `compare.maps`, checked. `params` go to the map (or learned: hidden, per_site)."""

    label: str
    name: str
    params: dict
    pairing: str | None
    pairing_seed: int | None
    pair_shift: float | None
    feature_dim: int

    def config(self, cfg: Config, bond_dim: int, *, seed: int) -> Config:
        """The config of one run: the config's student with this map, χ = bond_dim and `seed`."""
        o = cfg.student.options
        pairing_seed = self.pairing_seed if self.pairing_seed is not None else o.pairing_seed
        run = with_student(cfg, feature_map=self.name, feature_dim=self.feature_dim, feature_params=self.params,
                           pairing=self.pairing, pairing_seed=pairing_seed, pair_shift=self.pair_shift,
                           bond_dim=bond_dim)
        return dataclasses.replace(run, seed=seed)

    def student(self, cfg: Config, image_shape: tuple[int, int], n_out: int, bond_dim: int, *, seed: int) -> MPS:
        """This map's MPS student (family mps) over the image's pixels, as a probe: its parameter count
        and map. The site order is the identity here (data-driven orderings need the training pixels);
        the trained students get theirs from `common.student_site_order`."""
        run = self.config(cfg, bond_dim, seed=seed)
        n_sites = image_shape[0] * image_shape[1]
        return students.family("mps").build(run.student.options, n_sites=n_sites, image_shape=image_shape,
                                            n_classes=n_out, site_order=np.arange(n_sites, dtype=np.int32),
                                            seed=seed)

    def identity(self, cfg: Config) -> tuple:
        """What the map computes, however it was spelled: the resolved map and its parameters
        (defaults filled in), the input shift, the pairing and its seed."""
        probe = self.probe_layer(cfg)
        sf = probe.site_features
        if sf.map_key is None:  # learned: its options
            what = ("learned", self.feature_dim, tuple(sorted(self.params.items())))
        else:
            what = sf.map_key
        seed = self.pairing_seed if self.pairing_seed is not None else cfg.student.options.pairing_seed
        return (what, self.pairing, seed if self.pairing == "random" else None)

    def probe_layer(self, cfg: Config) -> MPSHidden:
        """A tiny MPS layer with this map (family mps_layers): validates it and gives its d."""
        o = self.config(cfg, 1, seed=cfg.seed).student.options
        return MPSHidden(4, 2, bond_dim=1, feature_map=o.feature_map, feature_dim=o.feature_dim,
                         feature_params=o.feature_params or None, pairing=o.pairing,
                         pair_shift=o.pair_shift, out_factors=(2,), rngs=nnx.Rngs(0))


def _label(name: str, params: dict, pairing: str | None, pair_shift: float | None) -> str:
    text = name
    if params:
        text += "(" + ", ".join(f"{k}={v}" for k, v in sorted(params.items())) + ")"
    if pairing is not None:
        text += f" [{pairing}]"
    if pair_shift is not None:
        text += f" shift {pair_shift:g}"
    return text


def parse_maps(cfg: Config) -> list[MapSpec]:
    """`compare.maps` as MapSpecs; every problem is a one-line DistillError naming the entry."""
    entries = cfg.compare.maps
    if not entries:
        raise DistillError("config: compare.maps is empty; list the maps to compare, e.g. "
                           "[{name: trig}, {name: poly, degree: 1}, {name: pair_product, pairing: random}]")
    names = feature_map_names()
    specs: list[MapSpec] = []
    for i, raw in enumerate(entries):
        where = f"config: compare.maps[{i}]"
        if not isinstance(raw, dict) or "name" not in raw:
            raise DistillError(f"{where} must be a mapping with a 'name', e.g. {{name: fourier, order: 1}}")
        name = raw["name"]
        if name not in names:
            raise DistillError(f"{where}: {str(_unknown_map_error(name)).removeprefix('MPS: ')}")
        pairing = raw.get("pairing")
        if pairing is not None and pairing not in PAIRINGS:
            raise DistillError(f"{where}: pairing = {pairing!r} is not allowed: must be one of "
                               f"{', '.join(PAIRINGS)}")
        pairing_seed = raw.get("pairing_seed")
        if pairing_seed is not None and (isinstance(pairing_seed, bool) or not isinstance(pairing_seed, int)
                                         or pairing_seed < 0):
            raise DistillError(f"{where}: pairing_seed must be an integer ≥ 0, got {pairing_seed!r}")
        shift = raw.get("pair_shift")
        if shift is not None and (isinstance(shift, bool) or not isinstance(shift, (int, float))):
            raise DistillError(f"{where}: pair_shift must be a number, got {shift!r}")
        feature_dim = raw.get("feature_dim", cfg.student.feature_dim)
        if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 2:
            raise DistillError(f"{where}: feature_dim must be an integer ≥ 2, got {feature_dim!r}")
        params = {k: v for k, v in raw.items() if k not in _RESERVED}
        label = raw.get("label") or _label(name, params, pairing, None if shift is None else float(shift))
        specs.append(MapSpec(str(label), name, params, pairing, pairing_seed,
                             None if shift is None else float(shift), feature_dim))
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if spec.label in seen:
            raise DistillError(f"config: compare.maps[{seen[spec.label]}] and compare.maps[{i}] are both "
                               f"{spec.label!r}; give one of them a distinct 'label'")
        seen[spec.label] = i
    return specs


def _core_params(n: int, d: int, chi: int, m: int) -> int:
    """Cores of an MPS with n sites (boundary bonds 1) plus log_scale: see tests/test_layers.py."""
    return 2 * d * chi + (n - 2) * d * chi * chi + chi * m * chi + 1


def choose_bond_dims(specs: list[MapSpec], cfg: Config, image_shape: tuple[int, int], n_out: int,
                     max_chi: int = 512, teacher_shape=None) -> list[dict]:
    """Per map: {d, bond_dim, params} under cfg.compare.budget (reference: the first map at
    student.bond_dim). Builds a small student with each map first, which validates the map.

    Family mps_layers needs `teacher_shape` (the teacher MLP, or a shape-only nnx.eval_shape
    of it): the whole mirror student's parameters are counted from shape-only builds."""
    if cfg.student.family == "mps_layers":
        return _choose_bond_dims_mirror(specs, cfg, teacher_shape, max_chi)
    n_sites = image_shape[0] * image_shape[1]
    info = []
    for spec in specs:
        probe = spec.student(cfg, image_shape, n_out, 1, seed=0)
        d = probe.feature_dim
        extra = param_count(probe) - _core_params(n_sites, d, 1, n_out)  # learned map weights
        info.append((d, extra))
    d_ref, extra_ref = info[0]
    chi_ref = cfg.student.options.bond_dim
    target_params = _core_params(n_sites, d_ref, chi_ref, n_out) + extra_ref
    out = []
    for i, (d, extra) in enumerate(info):
        if i == 0:
            chi = chi_ref
        elif cfg.compare.budget == "params":
            chi = min(range(1, max_chi + 1),
                      key=lambda c: (abs(_core_params(n_sites, d, c, n_out) + extra - target_params), c))
        else:  # d_chi2
            chi = _d_chi2_match(d, d_ref, chi_ref, max_chi)
        out.append({"d": d, "bond_dim": chi, "params": _core_params(n_sites, d, chi, n_out) + extra})
    return out


def _d_chi2_match(d: int, d_ref: int, chi_ref: int, max_chi: int) -> int:
    return min(range(1, max_chi + 1), key=lambda c: (abs(d * c * c - d_ref * chi_ref**2), c))


def _choose_bond_dims_mirror(specs: list[MapSpec], cfg: Config, teacher_shape, max_chi: int) -> list[dict]:
    """choose_bond_dims for family mps_layers: counts of the whole mirror student (all MPS
    layers + the rest of the teacher), matched by `students.budget.match_budget`."""
    ds = [spec.probe_layer(cfg).feature_dim for spec in specs]

    def count(spec: MapSpec, chi: int) -> int:
        run = spec.config(cfg, chi, seed=cfg.seed)
        return mirror_param_count("mps_layers", run.student.options, teacher_shape, cfg.seed)

    chi_ref = cfg.student.options.bond_dim
    target = count(specs[0], chi_ref)
    out = []
    for i, (spec, d) in enumerate(zip(specs, ds)):
        if i == 0:
            chi = chi_ref
        elif cfg.compare.budget == "params":
            matched, _ = match_budget("mps_layers", spec.config(cfg, chi_ref, seed=cfg.seed).student.options,
                                      teacher_shape, target, max_size=max_chi, seed=cfg.seed)
            chi = matched.bond_dim
        else:
            chi = _d_chi2_match(d, ds[0], chi_ref, max_chi)
        out.append({"d": d, "bond_dim": chi, "params": count(spec, chi)})
    return out


def _vanishing_fraction(student: MPS | MPSHidden, x: np.ndarray, batch: int = 2048) -> float:
    """Fraction of inputs whose Φ(x) = ⊗ φ is the zero tensor (some site's φ is 0)."""
    hits = 0
    for start in range(0, x.shape[0], batch):
        phi = np.asarray(student.features(jnp.asarray(x[start:start + batch])))
        hits += int(np.sum(np.any(np.all(phi == 0.0, axis=-1), axis=-1)))
    return hits / max(x.shape[0], 1)


def _mean_std(values: list[float | None]) -> dict:
    """{mean, std}: std is the sample std (ddof 1), 0 for a single value; None if no values."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None}
    arr = np.asarray(values, np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0}


def _sort_key(m: dict) -> float:
    mean = m["summary"]["accuracy"]["mean"]
    return -mean if mean is not None else float("inf")


def _check_variant(cfg: Config) -> None:
    family, phases = cfg.student.family, cfg.distill.phases
    if family not in VARIANT_MODES:
        raise DistillError(f"compare-maps compares the feature maps of MPS students (student.family = mps or "
                           f"mps_layers); student.family = {family!r} has no feature map to compare")
    allowed = {"mps": {("end_to_end",)},
               "mps_layers": {("layerwise",), ("layerwise", "end_to_end"), ("end_to_end",)}}[family]
    if tuple(phases) not in allowed:
        hint = ("; for the layer-wise variant set student.family=mps_layers" if family == "mps" else "")
        raise DistillError(f"compare-maps with student.family={family} takes distill.mode "
                           f"{' / '.join(VARIANT_MODES[family])}, got {cfg.distill.mode!r}{hint}")


def _mode_name(cfg: Config) -> str:
    return {("layerwise",): "layerwise", ("layerwise", "end_to_end"): "staged",
            ("end_to_end",): "end_to_end"}[tuple(cfg.distill.phases)]


def _describe_variant(cfg: Config) -> str:
    if cfg.student.family == "mps":
        return "one MPS from pixels to logits, distilled end to end"
    how = {"layerwise": "each layer fitted to the teacher's activations (no fine-tuning)",
           "staged": "each layer fitted to the teacher's activations, then KD fine-tuning end to end",
           "end_to_end": "distilled end to end on the teacher's logits"}[_mode_name(cfg)]
    return f"the teacher's hidden layers replaced by MPS layers, {how}"


def _one_run(spec: MapSpec, b: dict, cfg: Config, seed: int, data, xs, teacher, t_logits, ckpt, progress) -> dict:
    """One (map, seed) run: its test metrics, or the error that stopped it (e.g. a NaN loss)."""
    run_cfg = spec.config(cfg, b["bond_dim"], seed=seed)
    t1 = time.perf_counter()
    try:
        result = distil(run_cfg, data, xs, teacher, t_logits, ckpt=ckpt, devices=cfg.runtime.devices,
                        progress=progress, label=f"{spec.label} seed {seed}")
    except DistillError as err:  # record it, keep comparing the others
        from distill.experiments.common import build_student

        student = build_student(run_cfg, xs, data.num_classes, teacher, None)
        return {"seed": seed, "failed": str(err), "params": param_count(student),
                "vanishing_fraction": _vanishing_fraction(_first_layer(student), xs.x["test"]),
                **{k: None for k in METRICS if k != "vanishing_fraction"}, "best_epoch": None}
    train_time = time.perf_counter() - t1
    student = result.student
    ev = train.evaluate(train.predict(student, xs.x["test"]), t_logits["test"], data.y_test)
    kd = [h for name, h in result.curves.items() if name.endswith("(KD)")]
    rows = result.layers or []
    r2_final = float(np.mean([r["r2"] for r in rows])) if rows else None
    r2_lw = float(np.mean([r["r2_after_layerwise"] for r in rows])) if rows and "r2_after_layerwise" in rows[0] \
        else None
    return {"seed": seed, "accuracy": ev.accuracy, "agreement": ev.agreement, "kl": ev.kl,
            "train_time_s": train_time, "vanishing_fraction": _vanishing_fraction(_first_layer(student), xs.x["test"]),
            "layer_r2_layerwise": r2_lw, "layer_r2_final": r2_final,
            "best_epoch": kd[0]["best_epoch"] if kd else None, "params": param_count(student)}


def _first_layer(student):
    """The module that reads the pixels: the MPS itself, or a mirror student's first MPS layer."""
    return getattr(student, student.replaced[0]) if hasattr(student, "replaced") else student


def refuse_duplicates(specs: list[MapSpec], cfg: Config) -> None:
    """Raises: DistillError when two entries of compare.maps are the same map spelled differently
    (e.g. {name: trig} and {name: trig, d: 2})."""
    seen: dict[tuple, int] = {}
    for i, spec in enumerate(specs):
        key = spec.identity(cfg)
        if key in seen:
            j = seen[key]
            raise DistillError(f"config: compare.maps[{j}] ({specs[j].label}) and compare.maps[{i}] ({spec.label}) are "
                               "the same map with the same parameters and pairing; remove one")
        seen[key] = i


def compare_maps(cfg: Config, out: str | Path | None = None, progress: bool = True, *,
                 resume: bool = False) -> tuple[Path, dict]:
    """Compare cfg.compare.maps × cfg.compare.seeds on one teacher; returns (run folder, results).
    With `resume`, continue the interrupted comparison whose folder was `out` (finished runs are
    not repeated)."""
    t0 = time.perf_counter()
    _check_variant(cfg)
    checks.check_config(cfg)
    use_cpu_devices(cfg.runtime.cpu_devices)
    specs = parse_maps(cfg)
    refuse_duplicates(specs, cfg)
    mirror = cfg.student.family == "mps_layers"
    final = Path(out) if out is not None else default_run_dir(cfg.name, "-compare-maps")
    folder = RunFolder.resume(final) if resume else RunFolder.start(final)
    config_yaml = dump_yaml(cfg)
    try:
        with stop_on_signals():
            results = _compare_in(cfg, specs, mirror, folder, config_yaml, progress, t0)
    except RunInterrupted:
        raise
    except BaseException:
        folder.abort()
        raise
    return folder.finish(), results


def _compare_in(cfg, specs, mirror, folder, config_yaml, progress, t0) -> dict:
    work = folder.work
    report.write_atomic(work / "config.yaml", config_yaml)
    data = load_data(cfg)
    xs = student_inputs(cfg, data)
    # The teacher's shape, without training it: every map is validated before the teacher trains.
    if cfg.teacher.checkpoint is None:
        teacher_shape = checks.shape_only_teacher(cfg, data.image_shape, data.num_classes)
    else:
        teacher_shape = teachers.load_teacher(cfg.teacher.checkpoint)[0]
    budget = choose_bond_dims(specs, cfg, xs.image_shape, data.num_classes, teacher_shape=teacher_shape)

    teacher = get_teacher(cfg, data, work, progress=progress)
    checks.check_teacher_for_student(cfg, teacher.model)
    t_logits = {s: teachers.frozen_logits(teacher.model, getattr(data, f"x_{s}")) for s in ("train", "val", "test")}
    teacher_acc = train.losses.accuracy(t_logits["test"], data.y_test)
    check_teacher_learned(teacher_acc, data.y_test, teacher)
    ckpt_root = student_checkpointing(work / CHECKPOINTS, cfg)

    maps = []
    for spec, b in zip(specs, budget):
        runs = []
        for seed in cfg.compare.seeds:
            ckpt = (lambda name, spec=spec, seed=seed: ckpt_root(f"{spec.label}/seed{seed}/{name}"))
            runs.append(_one_run(spec, b, cfg, seed, data, xs, teacher.model, t_logits, ckpt, progress))
        ok = [r for r in runs if "failed" not in r]
        summary = {"n_ok": len(ok), "n_failed": len(runs) - len(ok)}
        for metric in METRICS:
            summary[metric] = _mean_std([r[metric] for r in ok])
        maps.append({"label": spec.label, "name": spec.name, "params_of_map": spec.params,
                     "pairing": spec.pairing, "pair_shift": spec.pair_shift if spec.pairing else None,
                     "d": b["d"], "bond_dim": b["bond_dim"], "params": b["params"],
                     "summary": summary, "runs": runs})

    hidden = [layer["out_features"] for layer in teacher.model.spec["layers"]
              if layer["type"] == "dense" and layer["name"] != "logits"] if teachers.is_native(teacher.model) else []
    chi_ref = cfg.student.options.bond_dim
    results = {
        "name": cfg.name,
        "dataset": {"name": data.name, "image_shape": list(data.image_shape), "num_classes": data.num_classes,
                    "student_image_shape": list(xs.image_shape), "n_train": int(len(data.y_train)),
                    "n_val": int(len(data.y_val)), "n_test": int(len(data.y_test))},
        "teacher": {"accuracy": teacher_acc,
                    "params": param_count(teacher.model) if teachers.is_native(teacher.model) else None,
                    "source": teacher.source, "hidden": hidden},
        "variant": {"family": cfg.student.family, "mode": _mode_name(cfg),
                    "layer_target": cfg.distill.layer_target if mirror else None,
                    "description": _describe_variant(cfg)},
        "budget": cfg.compare.budget,
        "reference": {"label": specs[0].label, "bond_dim": chi_ref, "params": budget[0]["params"],
                      "d_chi2": budget[0]["d"] * chi_ref ** 2},
        "seeds": list(cfg.compare.seeds),
        "epochs": cfg.distill.epochs,
        "layer_epochs": cfg.distill.layer_epochs if mirror and "layerwise" in cfg.distill.phases else None,
        "significance_rule": SIGNIFICANCE_RULE,
        "pairs": _pairs(maps),
        "maps": maps,
        "wall_time_s": None,
    }
    _plot(work / "compare_maps.png", maps, teacher_acc, cfg)
    results["wall_time_s"] = time.perf_counter() - t0
    report.write_json(work / "results.json", results)
    report.write_atomic(work / "results.csv", _csv(maps))
    report.write_atomic(work / "report.md", markdown_report(results, config_yaml))
    _drop_checkpoints(work)
    return results


def _pairs(maps: list[dict]) -> list[dict]:
    out = []
    for a, b in itertools.combinations(maps, 2):
        acc_a, acc_b = ([r["accuracy"] for r in m["runs"] if "failed" not in r] for m in (a, b))
        if not acc_a or not acc_b:
            continue
        p = welch(acc_a, acc_b).p if len(acc_a) > 1 and len(acc_b) > 1 else None
        out.append({"a": a["label"], "b": b["label"],
                    "delta_accuracy": float(np.mean(acc_a) - np.mean(acc_b)),
                    "p_value": p, "beyond_seed_spread": None if p is None else bool(p < 0.05)})
    return out


def _csv(maps: list[dict]) -> str:
    buf = io.StringIO()
    fields = ["label", "name", "pairing", "d", "bond_dim", "params", "seed", "accuracy", "agreement", "kl",
              "train_time_s", "vanishing_fraction", "layer_r2_layerwise", "layer_r2_final", "best_epoch", "failed"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for m in maps:
        for r in m["runs"]:
            w.writerow({"label": m["label"], "name": m["name"], "pairing": m["pairing"] or "", "d": m["d"],
                        "bond_dim": m["bond_dim"], "params": r["params"], "seed": r["seed"],
                        "accuracy": r["accuracy"], "agreement": r["agreement"], "kl": r["kl"],
                        "train_time_s": r["train_time_s"], "vanishing_fraction": r["vanishing_fraction"],
                        "layer_r2_layerwise": _blank(r["layer_r2_layerwise"]),
                        "layer_r2_final": _blank(r["layer_r2_final"]),
                        "best_epoch": _blank(r["best_epoch"]), "failed": r.get("failed", "")})
    return buf.getvalue()


def _blank(value):
    return "" if value is None else value


def _pm(s: dict, scale: float = 100.0, fmt: str = ".2f") -> str:
    return f"{scale * s['mean']:{fmt}} ± {scale * s['std']:{fmt}}"


def _has_layers(results: dict) -> bool:
    return results["variant"]["family"] == "mps_layers"


def _r2(s: dict) -> str:
    return "–" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"


def _rows(results: dict) -> list[list[str]]:
    rows = []
    for m in sorted(results["maps"], key=_sort_key):
        s = m["summary"]
        vanish = f"{100 * s['vanishing_fraction']['mean']:.1f}" if s["vanishing_fraction"]["mean"] is not None else \
            f"{100 * np.mean([r['vanishing_fraction'] for r in m['runs']]):.1f}"
        if not s["n_ok"]:
            cells = [f"failed on all {s['n_failed']} seeds (see runs)"] + ["–"] * 3
        else:
            cells = [_pm(s["accuracy"]), _pm(s["agreement"]), _pm(s["kl"], 1.0, ".3f"),
                     _pm(s["train_time_s"], 1.0, ".1f")]
            if s["n_failed"]:
                cells[0] += f" ({s['n_failed']} seed(s) failed)"
        if _has_layers(results):
            cells += [_r2(s["layer_r2_layerwise"]), _r2(s["layer_r2_final"])]
        rows.append([m["label"], str(m["d"]), str(m["bond_dim"]), f"{m['params']:,}", *cells, vanish])
    return rows


def _header(results: dict) -> list[str]:
    head = ["map", "d", "χ", "params", "test acc. %", "agreement %", "KL (nats)", "train s"]
    if _has_layers(results):
        head += ["layer R² after layer-wise", "layer R² final"]
    return head + ["Φ=0 %"]


def console_table(results: dict) -> str:
    header = _header(results)
    rows = [header] + _rows(results)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def markdown_report(results: dict, config_yaml: str) -> str:
    d, ref = results["dataset"], results["reference"]
    h, w = d["student_image_shape"]
    budget = (f"parameter count closest to the reference's {ref['params']:,}" if results["budget"] == "params"
              else f"d·χ² closest to the reference's {ref['d_chi2']:,}")
    t = results["teacher"]
    widths = "-".join(str(x) for x in [h * w, *t["hidden"], d.get("num_classes", "?")])
    if _has_layers(results):
        v = results["variant"]
        epochs = []
        if results["layer_epochs"] is not None:
            epochs.append(f"{results['layer_epochs']} epochs per layer, matching {v['layer_target']}-activations")
        if v["mode"] != "layerwise":
            epochs.append(f"{results['epochs']} KD epochs")
        student = (f"student is the teacher ({widths}) with every hidden layer replaced by an MPS layer "
                   f"(one site per input unit) with the map, distill.mode = {v['mode']}: "
                   f"{v['description'].split(', ', 1)[1]} ({'; '.join(epochs)}). `layer R²`: mean over the "
                   "hidden layers of R² on held-out (test) teacher activations, each layer fed the teacher's "
                   "own input, after the layer-wise phase and at the end")
    else:
        student = (f"student is one MPS over {h}×{w} = {h * w} sites distilled end to end on the teacher's "
                   f"logits ({results['epochs']} epochs)")
    lines = [
        f"# compare-maps: {results['name']}",
        "",
        f"Dataset **{d['name']}** ({d['n_train']} train / {d['n_val']} validation / {d['n_test']} test); the "
        f"{student}. Teacher: {100 * t['accuracy']:.2f} % test accuracy, "
        f"{t['params']:,} parameters ({t['source']}).",
        "",
        f"Budget **{results['budget']}**: the reference is {ref['label']!r} at χ = {ref['bond_dim']}; every other "
        f"map gets the χ with the {budget}. Values are mean ± std (sample std, ddof 1) over seeds "
        f"{results['seeds']}; all metrics on the test split. `Φ=0 %`: test inputs whose feature tensor "
        "Φ(x) = ⊗φ is exactly zero (the student can only output a constant for them).",
        "",
        *report.markdown_table(_header(results), _rows(results)),
        "",
        "![mean test accuracy](compare_maps.png)",
        "",
        "## Are the differences larger than the seed spread?",
        "",
        f"Rule: {results['significance_rule']}.",
        "",
        "| map A | map B | Δ mean acc. (pts) | Welch p | beyond seed spread |",
        "|---|---|---|---|---|",
    ]
    for p in results["pairs"]:
        verdict = "n/a (fewer than 2 seeds)" if p["p_value"] is None else ("yes" if p["beyond_seed_spread"] else "no")
        pv = "–" if p["p_value"] is None else f"{p['p_value']:.3g}"
        lines.append(f"| {p['a']} | {p['b']} | {100 * p['delta_accuracy']:+.2f} | {pv} | {verdict} |")
    failed = [(m["label"], r["seed"], r["failed"]) for m in results["maps"] for r in m["runs"] if "failed" in r]
    if failed:
        lines += ["", "## Failed runs (left out of the means)", ""]
        lines += [f"- {label}, seed {seed}: {msg}" for label, seed, msg in failed]
    lines += ["", f"Wall time {results['wall_time_s']:.1f} s.", "", "## Resolved config", "", "```yaml",
              config_yaml.rstrip(), "```", ""]
    return "\n".join(lines)


def _plot(path: Path, maps: list[dict], teacher_acc: float, cfg: Config) -> None:
    ordered = sorted((m for m in maps if m["summary"]["n_ok"]), key=_sort_key)
    means = [100 * m["summary"]["accuracy"]["mean"] for m in ordered]
    stds = [100 * m["summary"]["accuracy"]["std"] for m in ordered]
    fig = Figure(figsize=(max(6.0, 1.1 * len(ordered) + 2), 4.2))
    ax = fig.subplots()
    ax.bar(range(len(ordered)), means, yerr=stds, capsize=5, color="tab:blue", alpha=0.8)
    ax.axhline(100 * teacher_acc, color="k", ls="--", lw=1, label=f"teacher {100 * teacher_acc:.1f} %")
    ax.set_xticks(range(len(ordered)), [f"{m['label']}\nχ={m['bond_dim']}" for m in ordered],
                  rotation=30, ha="right", fontsize=8)
    lo = min((m - s for m, s in zip(means, stds)), default=100 * teacher_acc)
    ax.set_ylim(max(0.0, min(lo, 100 * teacher_acc) - 5), 100)
    variant = "MPS" if cfg.student.family == "mps" else f"MPS layers, {_mode_name(cfg)}"
    ax.set(ylabel="test accuracy (%)",
           title=f"{cfg.name} ({variant}): mean ± std over {len(cfg.compare.seeds)} seeds, "
                 f"budget {cfg.compare.budget}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------
# check-map
# ---------------------------------------------------------------------------------------


def check_map(name: str, params: dict | None = None, pairing=None, samples=None, *,
              pair_shift: float | None = None, seed: int = 0) -> ValidityReport:
    """Validity report (seed 000 §4) of the registered map `name` built with `params`.

    samples: None (the grid of [0, 1], or [0, 1]² for a pairwise map), values (S,), or a
    data matrix (N, n) — for a pairwise map its rows are paired by `pairing` (neighbour by
    default, random with `seed`, or a partner array) into (x_i, x_partner(i)) samples.
    Pairwise maps are checked as the MPS applies them: on inputs shifted by pair_shift
    (default 1.0; 0.0 for the seed's literal map). `learned` takes params d, hidden, seed.
    Never raises for a degenerate map (report.ok is False); unknown names raise DistillError.
    """
    params = dict(params or {})
    if not isinstance(name, str) or name not in feature_map_names():
        raise DistillError(str(_unknown_map_error(name)).removeprefix("MPS: "))
    if name == "learned":
        bad = sorted(set(params) - {"d", "hidden", "seed"})
        if bad:
            raise DistillError(f"check-map learned takes parameters d, hidden, seed; got {bad}")
        import jax

        for key, low in (("d", 2), ("hidden", 1), ("seed", 0)):
            value = params.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise DistillError(f"check-map learned: --param {key}={value!r} must be an integer ≥ {low}")
        lp = init_learned(jax.random.key(int(params.get("seed", seed))), int(params.get("d", 2)),
                          int(params.get("hidden", 8)))
        fm = make_feature_map("learned", check=False, params=lp)
    else:
        fm = make_feature_map(name, check=False, **params)
    arity_two = fm.arity == 2
    if arity_two:
        shift = 1.0 if pair_shift is None else float(pair_shift)
        base = fm.fn
        fm = FeatureMap(fm.name if shift == 0 else f"{fm.name} (shift {shift:g})", fm.d,
                        lambda a, b: base(a + shift, b + shift), fm.params, 2)
    elif pairing is not None or pair_shift is not None:
        raise DistillError(f"check-map: {name!r} is a local map; pairing and pair_shift are for pairwise maps")
    if samples is not None and arity_two:
        x = np.asarray(samples, np.float64)
        is_pairs = x.ndim == 2 and x.shape[1] == 2 and pairing is None  # (S, 2) pairs given as such
        if x.ndim == 2 and not is_pairs:  # a data matrix (N, n): pair its columns
            partners = make_partners(pairing or "neighbour", x.shape[1], seed=seed)
            samples = (x.reshape(-1), x[:, partners].reshape(-1))
    elif samples is not None:
        samples = np.asarray(samples).reshape(-1)
    return check_feature_map(fm, samples)


def format_validity(r: ValidityReport) -> str:
    """Multi-line text for `distill check-map`: singular values and OK / refused."""
    sv = ", ".join(f"{v:.4g}" for v in r.value_sv)
    dsv = ", ".join(f"{v:.4g}" for v in r.derivative_sv)
    lines = [
        f"feature map {r.name!r}: d = {r.d}, checked {r.where} ({r.n_samples} samples)",
        f"  singular values of φ_k(x_s):     {sv}",
        f"  singular values of dφ_k/dx(x_s): {dsv}",
        f"  constant function in span(φ):   {'yes' if r.constant_in_span else 'no'}",
        f"  samples where φ(x) = 0:          {r.n_vanishing} of {r.n_samples}"
        + ("  (an MPS gives Φ(x) = 0 for such inputs)" if r.n_vanishing else ""),
        "OK: valid feature map" if r.ok else f"refused: {r.message}",
    ]
    return "\n".join(lines)
