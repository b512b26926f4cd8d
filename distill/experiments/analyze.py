"""`distill analyze RUN_DIR`: look inside a trained student and its teacher (seed 001).

Reads a run folder (never changes it) and writes a folder (default RUN_DIR/analysis, built under
a temporary name and renamed when complete) with

* analysis.json —
  - `bonds`: the student's Schmidt spectrum and entanglement entropy (nats) per bond
    (`distill.tn.canonical.bond_report`: {bond, chi (Schmidt rank), entropy, schmidt, chi_stored,
    max_entropy, sites_left, output_side}); MPS students (family mps). Mirror students with TT or
    MPS layers get the same per replaced layer under `student.layers`;
  - `truncation`: post-training compression of an MPS student: for each χ′, the student SVD-truncated
    to bond dimension χ′ (`canonical.truncate`), its parameters, test accuracy, the discarded weight,
    and the test accuracy after a short KD fine-tune (`--finetune-epochs` epochs on the teacher's
    logits, the run's τ, α, learning rate and batch size; the best validation epoch is kept, and the
    truncated student itself when no epoch beats its validation accuracy: `finetune_kept`);
  - `teacher`: every dense weight matrix of a native teacher read as a TT-matrix (4 cores by
    default), its entanglement entropy across each cut for several input-neuron orderings (for a
    first layer on image pixels: row_major, snake, hilbert, random, correlation; always: norm,
    similarity; `distill.analysis.weight_entanglement`), the TT ranks each relative error ε needs,
    and the teacher's test accuracy with its hidden layers replaced by rank-r TT-SVD approximations;
  - `suggested`: the smallest χ′ (student) and TT rank (teacher) that reach a target accuracy
    (default: 1 point below the student's / the teacher's own accuracy, the "lossless" rule).
* analysis.md — the same as tables, with the figures;
* bond_entropy.png, schmidt_spectra.png, truncation.png, teacher_entanglement.png,
  teacher_tt_ranks.png (those that apply).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distill import students, teachers, train
from distill.analysis import plots
from distill.analysis.weight_entanglement import DEFAULT_EPS, ordering_study
from distill.config import Config
from distill.errors import DistillError
from distill.experiments.common import load_data, student_inputs
from distill.experiments.use import _run_teacher, run_config
from distill.io import write_atomic, write_json
from distill.nn import MPS, MPSHidden, TTLinear, param_count
from distill.report import markdown_table
from distill.students.store import load_student, spec_of
from distill.tn import canonical
from distill.tn import mps as mps_lib
from distill.tn import tt as tt_lib

__all__ = ["analyze", "default_chis", "TT_RANKS"]

TT_RANKS = (1, 2, 4, 8, 16, 32, 64)
IMAGE_ORDERINGS = ("row_major", "snake", "hilbert", "random", "correlation")
NEURON_ORDERINGS = ("identity", "random", "norm", "similarity")
CORRELATION_SAMPLE = 10000  # training images the correlation ordering is computed from


def default_chis(chi: int) -> list[int]:
    """χ′ values of the truncation curve for a student of bond dimension χ: about χ·(1, ¾, ½, ⅓, ¼, ⅛), 2, 1."""
    vals = {chi, 1, 2} | {max(1, round(chi * f)) for f in (0.75, 0.5, 1 / 3, 0.25, 0.125)}
    return sorted(v for v in vals if v <= chi)


# ---------------------------------------------------------------------------------------
# Student: bonds and truncation
# ---------------------------------------------------------------------------------------


def _exact_params(bonds: list[dict], d: int, m: int, k: int) -> int:
    """Parameters of the MPS at its Schmidt ranks (the exact compression): chain T_0..T_n, p = m at k."""
    r = [1, *(b["chi"] for b in bonds), 1]
    return int(sum(r[t] * (m if t == k else d) * r[t + 1] for t in range(len(r) - 1)))


def _truncated_student(student: MPS, cfg: Config, chi: int, params: mps_lib.MPSParams) -> MPS:
    """A copy of the MPS student at bond dimension χ′ with the given cores (same map, order, scale)."""
    opts = dataclasses.replace(cfg.student.options, bond_dim=chi)
    h_w = student.n_sites
    # built shape-only (no random init to compile), then every array is set
    abstract = nnx.eval_shape(lambda: students.family("mps").build(
        opts, n_sites=h_w, image_shape=(1, h_w), n_classes=student.n_out,
        site_order=np.asarray(student.site_order[...]), seed=cfg.seed))
    graphdef, state = nnx.split(abstract)
    values = nnx.to_pure_dict(state)
    values["site_features"] = nnx.to_pure_dict(nnx.state(student.site_features))
    for name in mps_lib.MPSParams._fields:
        values[name] = jnp.asarray(getattr(params, name), student.dtype)
    values["log_scale"] = jnp.copy(student.log_scale[...])
    nnx.replace_by_pure_dict(state, values)
    new = nnx.merge(graphdef, state)
    new.eval()
    return new


def _refit_scale(module: MPS, x: np.ndarray, t: np.ndarray, y: np.ndarray, loss) -> None:
    """Refit the module's one scalar log_scale on (x, t, y) (truncation changes the per-sample
    normaliser, not the prediction): `distill.phases.sweep.refit_log_scale`."""
    from distill.phases.sweep import refit_log_scale

    z, _ = mps_lib.contract(module.params, module.features(jnp.asarray(x)), method=module.contraction)
    s = refit_log_scale(z, {"t": jnp.asarray(t), "y": jnp.asarray(y)}, loss, float(module.log_scale[...]))
    module.log_scale[...] = jnp.asarray(s, module.dtype)


def truncation_curve(student: MPS, cfg: Config, xs, ys: dict, t_logits: dict | None, chis: list[int], *,
                     finetune_epochs: int, progress: bool) -> list[dict]:
    """One row per χ′: {chi, params, discarded, accuracy, accuracy_finetuned (None without a teacher or
    with finetune_epochs = 0)}; accuracies on the test split."""
    from distill.phases.end_to_end import settings as kd_settings

    d = cfg.distill
    loss = train.losses.KD(d.temperature, d.alpha)
    rows = []
    sample = slice(0, min(4096, len(ys["train"])))
    for chi in chis:
        tr = canonical.truncate(student.params, max_bond=chi)
        module = _truncated_student(student, cfg, chi, tr.params)
        if t_logits is not None:
            _refit_scale(module, xs.x["train"][sample], t_logits["train"][sample], ys["train"][sample], loss)
        row = {"chi": chi, "params": param_count(module), "discarded": float(np.sum(tr.discarded)),
               "ranks_kept": list(tr.ranks),
               "accuracy": train.losses.accuracy(train.predict(module, xs.x["test"]), ys["test"]),
               "accuracy_finetuned": None}
        if t_logits is not None and finetune_epochs > 0:
            has_val = len(ys["val"]) > 0
            before = nnx.to_pure_dict(jax.tree.map(jnp.copy, nnx.state(module)))
            val_before = train.losses.accuracy(train.predict(module, xs.x["val"]), ys["val"]) if has_val else None
            settings = dataclasses.replace(kd_settings(d, cfg.seed), epochs=finetune_epochs, warmup_epochs=0)
            hist = train.end_to_end(module, xs.x["train"], t_logits["train"], ys["train"],
                                    train.Validation(xs.x["val"], ys["val"]), settings, temperature=d.temperature,
                                    alpha=d.alpha, desc=f"fine-tune χ′={chi}", progress=progress)
            row["finetune_kept"] = "fine-tuned"
            if has_val and hist.best_val_accuracy is not None and hist.best_val_accuracy < val_before:
                state = nnx.state(module)  # the fine-tune lowered validation accuracy: keep the truncated student
                nnx.replace_by_pure_dict(state, before)
                nnx.update(module, state)
                row["finetune_kept"] = "truncated (the fine-tune lowered validation accuracy)"
            row["accuracy_finetuned"] = train.losses.accuracy(train.predict(module, xs.x["test"]), ys["test"])
        rows.append(row)
    return rows


def _suggest(rows: list[dict], key: str, target: float, size: str) -> dict | None:
    """The smallest `key` whose accuracy (fine-tuned if measured) reaches `target`, or None."""
    ok = []
    for r in rows:
        acc = r.get("accuracy_finetuned") if r.get("accuracy_finetuned") is not None else r["accuracy"]
        if acc is not None and acc >= target:
            ok.append((r[key], r[size], acc, "fine-tuned" if r.get("accuracy_finetuned") is not None else "truncated"))
    if not ok:
        return None
    value, params, acc, how = min(ok)
    return {key: value, size: params, "accuracy": acc, "measured": how}


def _mirror_layers(student) -> list[dict]:
    """Per replaced layer of a mirror student: its bonds (TT layers: cuts of W; MPS layers: the chain)."""
    out = []
    for name in getattr(student, "replaced", ()):
        layer = getattr(student, name)
        if isinstance(layer, TTLinear):
            spectra = canonical.tt_schmidt_values(layer.core_arrays)
            bonds = [{"bond": i + 1, "chi": int(s.size), "chi_stored": int(layer.core_arrays[i].shape[3]),
                      "entropy": canonical.entropy(s), "schmidt": [float(v) for v in s]} for i, s in enumerate(spectra)]
            out.append({"layer": name, "kind": "tt", "params": param_count(layer), "bonds": bonds})
        elif isinstance(layer, MPSHidden):
            out.append({"layer": name, "kind": "mps", "params": param_count(layer),
                        "bonds": canonical.bond_report(layer.params)})
        else:
            out.append({"layer": name, "kind": type(layer).__name__, "params": param_count(layer), "bonds": [],
                        "note": "not a tensor train: no bonds"})
    return out


# ---------------------------------------------------------------------------------------
# Teacher: weight entanglement (seed 001) and TT ranks
# ---------------------------------------------------------------------------------------


def _dense_layers(teacher) -> list[tuple[str, np.ndarray, bool]]:
    """(name, W (N_out, N_in), reads image pixels) for every dense layer of a native teacher."""
    spec = teacher.spec
    h, w, c = teacher.input_shape
    out = []
    for j, layer in enumerate(spec["layers"]):
        if layer["type"] != "dense":
            continue
        W = np.asarray(getattr(teacher, layer["name"]).kernel[...], np.float64).T
        pixels = c == 1 and layer["in_features"] == h * w and all(
            q["type"] in ("flatten",) for q in spec["layers"][:j])
        out.append((layer["name"], W, pixels))
    return out


def _permuted_tt(W: np.ndarray, order: np.ndarray, rank: int, n_cores: int) -> tuple[np.ndarray, int]:
    """Rank-r TT-SVD of W with its inputs in `order`, mapped back: (W_r (N_out, N_in), TT parameters)."""
    n_out, n_in = W.shape
    in_modes, out_modes = tt_lib.factorize(n_in, n_cores), tt_lib.factorize(n_out, n_cores)
    cores = tt_lib.tt_svd(W[:, order], in_modes, out_modes, max_rank=rank, dtype=np.float64)
    approx = np.empty_like(W)
    approx[:, order] = np.asarray(tt_lib.tt_to_dense(cores))
    return approx, tt_lib.tt_num_params(cores)


def teacher_analysis(teacher, data, *, ranks, n_cores: int, eps, seed: int) -> dict:
    """Entanglement of every dense weight matrix per input ordering, and teacher accuracy against the
    TT rank of its hidden layers (module notes)."""
    from distill.data.orderings import site_order

    h, w, _ = teacher.input_shape
    x_sample = data.x_train[:CORRELATION_SAMPLE]
    layers, first_orders = [], {"identity": None}
    dense = _dense_layers(teacher)
    for name, W, pixels in dense:
        orderings = (IMAGE_ORDERINGS + ("norm", "similarity")) if pixels else NEURON_ORDERINGS
        rows = ordering_study(W, in_orderings=orderings, image_shape=(h, w) if pixels else None,
                              x=x_sample if pixels else None, seed=seed, n_cores=n_cores, eps=eps)
        layers.append({"name": name, "shape": list(W.shape), "reads_pixels": pixels,
                       "orderings": [{k: v for k, v in r.items() if k not in ("shape",)} for r in rows]})
        if pixels and len(first_orders) == 1:
            first_orders = {o: site_order((h, w), o, seed=seed, x=x_sample) for o in IMAGE_ORDERINGS}
    hidden = [(name, W) for name, W, _ in dense if name != "logits"]
    first = dense[0][0] if dense and dense[0][2] else None
    y = data.y_test
    originals = {name: getattr(teacher, name).kernel[...] for name, _ in hidden}
    curve = []
    try:
        for ordering, order in first_orders.items():
            for r in ranks:
                params = 0
                for name, W in hidden:
                    p = order if (name == first and order is not None) else np.arange(W.shape[1])
                    approx, n = _permuted_tt(W, p, r, n_cores)
                    getattr(teacher, name).kernel[...] = jnp.asarray(approx.T, originals[name].dtype)
                    params += n
                acc = train.losses.accuracy(teachers.frozen_logits(teacher, data.x_test), y)
                curve.append({"ordering": ordering, "rank": int(r), "params": int(params), "accuracy": acc})
    finally:
        for name, kernel in originals.items():
            getattr(teacher, name).kernel[...] = kernel
    dense_params = int(sum(W.size for _, W in hidden))
    return {"layers": layers, "tt_rank_accuracy": curve, "hidden_dense_params": dense_params, "n_cores": n_cores}


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------


def _staged_write(final: Path, write) -> Path:
    """Build the output folder under a temporary sibling with `write(tmp)`, then rename it into place
    (an existing analysis folder is replaced only once the new one is complete)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        write(tmp)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def analyze(run_dir: str | Path, *, out: str | Path | None = None, chis: list[int] | None = None,
            finetune_epochs: int = 1, target_accuracy: float | None = None, tt_ranks=TT_RANKS, tt_cores: int = 4,
            eps=DEFAULT_EPS, teacher_part: bool = True, progress: bool = True) -> tuple[Path, dict]:
    """Analyse the run folder `run_dir` (module notes); returns (output folder, the analysis.json dict).

    chis: the χ′ of the truncation curve (default `default_chis(χ)`); finetune_epochs: KD epochs after
    each truncation (0: none); target_accuracy: the accuracy (fraction) the suggestions must reach
    (default: 1 point below the student's / teacher's accuracy); tt_ranks, tt_cores, eps: the teacher's
    TT analysis; teacher_part: False skips the teacher's weights.
    Raises: DistillError for a folder that is not a run folder, χ′ outside [1, χ], a bad target or
    option, or a missing dataset.
    """
    run_dir = Path(run_dir).expanduser()
    cfg = run_config(run_dir)
    spec = spec_of(run_dir)
    if target_accuracy is not None and not 0 < target_accuracy <= 1:
        raise DistillError(f"--target-accuracy must be a fraction in (0, 1], got {target_accuracy!r}")
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise DistillError(f"--finetune-epochs must be an integer >= 0, got {finetune_epochs!r}")
    if isinstance(tt_cores, bool) or not isinstance(tt_cores, int) or tt_cores < 2:
        raise DistillError(f"--tt-cores must be an integer >= 2, got {tt_cores!r}")
    final = Path(out).expanduser() if out is not None else run_dir / "analysis"
    pixel = not students.is_mirror(spec["family"])
    student = load_student(run_dir).inner
    data = load_data(cfg)
    xs = student_inputs(cfg, data)
    ys = {s: getattr(data, f"y_{s}") for s in ("train", "val", "test")}
    teacher = _run_teacher(run_dir, cfg)
    t_logits = None
    if teacher is not None:
        t_logits = {s: teachers.frozen_logits(teacher, getattr(data, f"x_{s}")) for s in ("train", "val", "test")}
    s_acc = train.losses.accuracy(train.predict(student, xs.x["test"]), ys["test"])
    t_acc = None if t_logits is None else train.losses.accuracy(t_logits["test"], ys["test"])
    notes: list[str] = []
    result: dict = {"run": str(run_dir), "dataset": {"name": data.name, "image_shape": list(data.image_shape)},
                    "student": {"family": spec["family"], "params": param_count(student), "accuracy": s_acc,
                                "ordering": spec.get("ordering")},
                    "bonds": [], "truncation": [], "teacher": None, "suggested": {}, "notes": notes,
                    "settings": {"finetune_epochs": finetune_epochs, "tt_cores": tt_cores, "tt_ranks": list(tt_ranks),
                                 "eps": list(eps)}}

    if pixel and isinstance(student, MPS):
        params = student.params
        n, d, chi, m, k = mps_lib.mps_dims(params)
        bonds = canonical.bond_report(params)
        result["bonds"] = bonds
        result["student"].update(chi_stored=chi, mean_entropy=float(np.mean([b["entropy"] for b in bonds])),
                                 exact_params=_exact_params(bonds, d, m, k))
        chis = default_chis(chi) if chis is None else sorted(set(chis))
        bad = [c for c in chis if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= chi]
        if bad:
            raise DistillError(f"--chi values must be integers in [1, {chi}] (the student's bond dimension), got {bad}")
        if t_logits is None:
            notes.append("no teacher in the run folder: the truncation curve has no KD fine-tune")
        result["truncation"] = truncation_curve(student, cfg, xs, ys, t_logits, chis, finetune_epochs=finetune_epochs,
                                                progress=progress)
        target = s_acc - 0.01 if target_accuracy is None else target_accuracy
        result["suggested"]["student"] = {"target_accuracy": target,
                                          **(_suggest(result["truncation"], "chi", target, "params") or
                                             {"chi": None, "note": "no truncated χ′ reaches the target"})}
    else:
        result["student"]["layers"] = _mirror_layers(student)
        notes.append("the truncation curve is computed for MPS students (family mps) only")

    if teacher_part:
        if teacher is None or not teachers.is_native(teacher):
            notes.append("the teacher's weights are not available (black box or missing): no weight analysis")
        else:
            ta = teacher_analysis(teacher, data, ranks=tt_ranks, n_cores=tt_cores, eps=eps, seed=cfg.seed)
            ta["accuracy"] = t_acc
            result["teacher"] = ta
            target = t_acc - 0.01 if target_accuracy is None else target_accuracy
            best = None
            for ordering in dict.fromkeys(r["ordering"] for r in ta["tt_rank_accuracy"]):
                got = _suggest([r for r in ta["tt_rank_accuracy"] if r["ordering"] == ordering], "rank", target,
                               "params")
                if got is not None and (best is None or got["params"] < best["params"]):
                    best = {**got, "ordering": ordering}
            result["suggested"]["teacher_tt"] = {"target_accuracy": target,
                                                 **(best or {"rank": None, "note": "no TT rank tried reaches the target"})}

    def write(folder: Path) -> None:
        figures = []
        if result["bonds"]:
            plots.plot_bond_entropy(folder / "bond_entropy.png", result["bonds"],
                                    f"student: entanglement per bond (χ = {result['student']['chi_stored']})")
            plots.plot_schmidt_spectra(folder / "schmidt_spectra.png", result["bonds"])
            figures += ["bond_entropy.png", "schmidt_spectra.png"]
        if result["truncation"]:
            plots.plot_truncation(folder / "truncation.png", result["truncation"], student_accuracy=s_acc,
                                  target=result["suggested"]["student"]["target_accuracy"])
            figures.append("truncation.png")
        if result["teacher"] is not None:
            plots.plot_teacher_entanglement(folder / "teacher_entanglement.png", result["teacher"]["layers"])
            plots.plot_teacher_tt_ranks(folder / "teacher_tt_ranks.png", result["teacher"]["tt_rank_accuracy"],
                                        teacher_accuracy=t_acc,
                                        target=result["suggested"]["teacher_tt"]["target_accuracy"])
            figures += ["teacher_entanglement.png", "teacher_tt_ranks.png"]
        result["figures"] = figures
        write_json(folder / "analysis.json", result)
        write_atomic(folder / "analysis.md", markdown(result))

    return _staged_write(final, write), result


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f} %"


def markdown(r: dict) -> str:
    """analysis.md from the analysis.json dict."""
    s = r["student"]
    lines = [f"# distill analyze: {r['run']}", "",
             f"Dataset **{r['dataset']['name']}**. Student: family `{s['family']}`, {s['params']:,} parameters, test "
             f"accuracy {_pct(s['accuracy'])}" + (f", site ordering `{s['ordering']}`." if s.get("ordering") else "."),
             ""]
    if r["bonds"]:
        b = r["bonds"]
        top = max(b, key=lambda x: x["entropy"])
        lines += ["## Entanglement of the student", "",
                  f"Entropy in nats of the bipartition at each bond (output leg on the side of the output core), "
                  f"Schmidt rank = number of nonzero Schmidt values. Mean entropy {s['mean_entropy']:.3f} nats; largest "
                  f"{top['entropy']:.3f} at bond {top['bond']} (ln χ = {math.log(s['chi_stored']):.3f}). The student "
                  f"is exactly representable with {s['exact_params']:,} parameters at its Schmidt ranks "
                  f"(stored: {s['params']:,} parameters).", "",
                  "![entropy per bond](bond_entropy.png)", "", "![Schmidt spectra](schmidt_spectra.png)", ""]
    if r["truncation"]:
        rows = [(str(t["chi"]), f"{t['params']:,}", f"{t['discarded']:.2e}", _pct(t["accuracy"]),
                 _pct(t["accuracy_finetuned"])) for t in r["truncation"]]
        lines += ["## Post-training compression (SVD truncation of every bond)", "",
                  f"KD fine-tune: {r['settings']['finetune_epochs']} epoch(s). Accuracies on the test split; the "
                  "discarded weight is the relative squared error ‖T − T′‖² / ‖T‖².", "",
                  *markdown_table(("χ′", "parameters", "discarded", "accuracy", "after fine-tune"), rows), "",
                  "![truncation](truncation.png)", ""]
        sug = r["suggested"].get("student", {})
        if sug.get("chi") is not None:
            lines += [f"Suggested χ′ for a target accuracy of {_pct(sug['target_accuracy'])}: **{sug['chi']}** "
                      f"({sug['params']:,} parameters, {_pct(sug['accuracy'])} {sug['measured']}).", ""]
        elif sug:
            lines += [f"No χ′ tried reaches the target accuracy {_pct(sug['target_accuracy'])}.", ""]
    if s.get("layers"):
        rows = [(x["layer"], x["kind"], f"{x['params']:,}", ", ".join(f"{b['entropy']:.2f}" for b in x["bonds"]) or "–",
                 ", ".join(str(b["chi"]) for b in x["bonds"]) or "–") for x in s["layers"]]
        lines += ["## Bonds of the replaced layers", "",
                  *markdown_table(("layer", "kind", "parameters", "entropy per bond (nats)", "Schmidt ranks"), rows), ""]
    t = r["teacher"]
    if t is not None:
        lines += ["## The teacher's weights as TT-matrices (seed 001)", "",
                  f"Each dense W (N_out × N_in) read as a TT-matrix with {t['n_cores']} cores; entanglement entropy "
                  "(nats) across each cut for each ordering of the input neurons; TT ranks sufficient for a relative "
                  "error ε (TT-SVD bound).", ""]
        for layer in t["layers"]:
            rows = []
            for o in layer["orderings"]:
                eps_txt = "; ".join(f"ε={e['eps']}: {e['ranks']} ({e['compression']:.1f}×)" for e in o["ranks_for_eps"]
                                    if e["eps"] in (0.1, 0.2, 0.5))
                rows.append((o["in_ordering"], ", ".join(f"{c['entropy']:.2f}" for c in o["cuts"]),
                             f"{o['mean_entropy']:.3f}", eps_txt))
            lines += [f"**{layer['name']}** ({layer['shape'][0]}×{layer['shape'][1]}):", "",
                      *markdown_table(("input ordering", "entropy per cut", "mean", "TT ranks for ε (compression)"),
                                      rows), ""]
        rows = [(x["ordering"], str(x["rank"]), f"{x['params']:,}", _pct(x["accuracy"])) for x in t["tt_rank_accuracy"]]
        lines += [f"Teacher accuracy {_pct(t['accuracy'])} with its hidden dense layers ({t['hidden_dense_params']:,} "
                  "parameters) replaced by rank-r TT-SVD approximations (no training):", "",
                  *markdown_table(("first-layer ordering", "rank", "TT parameters", "accuracy"), rows), "",
                  "![teacher entanglement](teacher_entanglement.png)", "", "![TT ranks](teacher_tt_ranks.png)", ""]
        sug = r["suggested"].get("teacher_tt", {})
        if sug.get("rank") is not None:
            lines += [f"Suggested TT rank for {_pct(sug['target_accuracy'])}: **{sug['rank']}** ({sug['ordering']} "
                      f"order, {sug['params']:,} parameters, {_pct(sug['accuracy'])}).", ""]
        elif sug:
            lines += [f"No TT rank tried reaches {_pct(sug['target_accuracy'])} without training.", ""]
    if r["notes"]:
        lines += ["## Notes", "", *(f"- {n}" for n in r["notes"]), ""]
    return "\n".join(lines)
