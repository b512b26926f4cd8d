"""One experiment from config to run folder: data → teacher → student → results.

`run(cfg, out)` is the whole job behind `distill run`; `train_teacher(cfg, out)` the one
behind `distill teacher`. A run folder is built under a hidden staging name and renamed
into place only when complete, so a failed or interrupted run leaves no half-written folder.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flax import nnx

from distill import report, students, teachers, train
from distill.config import Config, dump_yaml
from distill.data import Dataset, downsample, load_dataset
from distill.errors import DistillError
from distill.nn import MPS, param_count

LATENCY_BATCHES = (1, 256)


def default_run_dir(cfg: Config, suffix: str = "") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.name}{suffix}"


@contextlib.contextmanager
def staged_dir(final: Path):
    """Yield a fresh staging folder; on success rename it to `final`, on failure delete it."""
    final = Path(final)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise DistillError(f"output folder {str(final)!r} already exists and is not empty; choose another --out")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        final.rmdir()  # empty, checked above
    os.replace(staging, final)


def load_data(cfg: Config) -> Dataset:
    d = cfg.data
    return load_dataset(d.name, data_dir=d.data_dir, downsample=d.downsample, val_fraction=d.val_fraction,
                        train_fraction=d.train_fraction, seed=cfg.seed)


def _teacher_settings(cfg: Config) -> train.TrainSettings:
    t = cfg.teacher
    return train.TrainSettings(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
                               schedule=t.schedule, seed=cfg.seed)


def _student_settings(cfg: Config) -> train.TrainSettings:
    d = cfg.distill
    return train.TrainSettings(epochs=d.epochs, batch_size=d.batch_size, lr=d.lr, weight_decay=d.weight_decay,
                               schedule=d.schedule, grad_clip=d.grad_clip, seed=cfg.seed + 1)


def _teacher_metadata(cfg: Config, data: Dataset) -> dict:
    """What a saved teacher must agree on with the config that loads it."""
    return {"dataset": data.name, "downsample": cfg.data.downsample, "image_shape": list(data.image_shape)}


def fit_teacher(cfg: Config, data: Dataset, progress: bool = True) -> tuple[teachers.MLP, dict | None]:
    """A freshly trained teacher (and its training history) as the config describes it."""
    model = teachers.MLP(data.n_features, cfg.teacher.hidden, data.num_classes,
                         activation=cfg.teacher.activation, rngs=nnx.Rngs(cfg.seed))
    hist = train.train_classifier(model, data.x_train, data.y_train, data.x_val, data.y_val,
                                  _teacher_settings(cfg), desc="teacher", progress=progress)
    return model, hist.as_dict()


def get_teacher(cfg: Config, data: Dataset, progress: bool = True) -> tuple[teachers.MLP, dict | None, str]:
    """Load the checkpoint named in the config (checked against it), or train a new teacher."""
    if cfg.teacher.checkpoint is None:
        model, hist = fit_teacher(cfg, data, progress)
        return model, hist, "trained"
    expected = {**teachers_spec(cfg, data), **_teacher_metadata(cfg, data)}
    model, _ = teachers.load_teacher(cfg.teacher.checkpoint, expected=expected)
    return model, None, f"loaded from {cfg.teacher.checkpoint}"


def teachers_spec(cfg: Config, data: Dataset) -> dict:
    return {"in_features": data.n_features, "hidden": list(cfg.teacher.hidden), "n_classes": data.num_classes,
            "activation": cfg.teacher.activation}


@dataclass(frozen=True)
class StudentInputs:
    """The student's view of the data: the teacher's pixels, pooled by student.downsample."""

    x_train: np.ndarray  # (N_train, n_sites)
    x_val: np.ndarray
    x_test: np.ndarray
    image_shape: tuple[int, int]

    @property
    def n_sites(self) -> int:
        return self.image_shape[0] * self.image_shape[1]


def student_inputs(cfg: Config, data: Dataset) -> StudentInputs:
    k = cfg.student.downsample
    (x_train, shape), (x_val, _), (x_test, _) = (downsample(x, data.image_shape, k)
                                                 for x in (data.x_train, data.x_val, data.x_test))
    return StudentInputs(x_train, x_val, x_test, shape)


def build_student(cfg: Config, inputs: StudentInputs, num_classes: int) -> MPS:
    """The `mps` family: one MPS over the student's input sites whose output leg gives the logits."""
    return students.build_mps(cfg, inputs.n_sites, inputs.image_shape, num_classes)


def describe_student(cfg: Config, inputs: StudentInputs, teacher_hidden: list[int]) -> str:
    s = cfg.student
    widths = "-".join(str(w) for w in [inputs.n_sites, *teacher_hidden])
    if s.family == "mps":
        n = inputs.n_sites
        k = s.output_site if s.output_site is not None else n // 2
        h, w = inputs.image_shape
        return (f"MPS over {n} sites ({h}×{w} pixels, {cfg.data.ordering} order), {s.feature_map} map "
                f"d={s.feature_dim}, bond dimension χ={s.bond_dim}, output core after site {k}")
    layer = {"mps_layers": f"MPS layers (χ={s.bond_dim}, {s.feature_map} map d={s.feature_dim})",
             "tt": f"TT-matrix layers ({s.tt_factors} cores, rank {s.rank})",
             "lowrank": f"low-rank layers W = A·B (rank {s.rank})",
             "dense": f"dense bottleneck layers (width {s.hidden_width})"}[s.family]
    return f"the teacher's {widths} hidden layers replaced by {layer}, plus a dense head"


def _latencies(model: nnx.Module, n_features: int) -> dict[str, float]:
    return {str(b): train.latency_ms(model, n_features, b) for b in LATENCY_BATCHES}


def _dataset_summary(data: Dataset) -> dict:
    return {"name": data.name, "image_shape": list(data.image_shape), "n_train": int(len(data.y_train)),
            "n_val": int(len(data.y_val)), "n_test": int(len(data.y_test)), "num_classes": data.num_classes}


def _distil_mps(cfg: Config, data: Dataset, xs: StudentInputs, t_train: np.ndarray, progress: bool):
    """The `mps` family: KD on logits (end_to_end) or labels only; returns (student, curves, stages)."""
    mode = cfg.distill.mode
    if mode in ("layerwise", "staged"):
        raise DistillError(f"distill.mode={mode} needs a student with hidden layers; set student.family to one of "
                           f"{', '.join(students.MIRROR_FAMILIES)} (student.family=mps has none)")
    student = build_student(cfg, xs, data.num_classes)
    if mode == "labels_only":
        hist = train.train_classifier(student, xs.x_train, data.y_train, xs.x_val, data.y_val,
                                      _student_settings(cfg), desc="student", progress=progress)
        return student, {"student (labels only)": hist.as_dict()}, {}
    hist = train.end_to_end(student, xs.x_train, t_train, data.y_train, xs.x_val, data.y_val, _student_settings(cfg),
                            temperature=cfg.distill.temperature, alpha=cfg.distill.alpha, desc="student",
                            progress=progress)
    return student, {"student (KD)": hist.as_dict()}, {}


def _layer_io_names(teacher: teachers.MLP, target: str) -> list[tuple[str | None, str]]:
    """Per hidden layer l: (teacher activation feeding it — None for the input —, the one it must match)."""
    hidden = teacher.layer_names[:-1]
    return [(hidden[i - 1] if i else None, f"{name}.pre" if target == "pre" else name)
            for i, name in enumerate(hidden)]


@dataclass(frozen=True)
class TeacherLayers:
    """What layer-wise training reads from the frozen teacher, computed once per teacher.

    io[l] = (teacher activation feeding hidden layer l — None for the input —, the activation
    it must match); acts[split][name] (N, width) for split train / val / test; scales[l] (n_in,)
    maps layer l's inputs into [0, 1] (each unit's largest training value).
    """

    io: list[tuple[str | None, str]]
    acts: dict[str, dict[str, np.ndarray]]
    scales: list[np.ndarray]

    def inputs(self, data: Dataset, split: str, name: str | None) -> np.ndarray:
        return getattr(data, f"x_{split}") if name is None else self.acts[split][name]


def teacher_layers(cfg: Config, data: Dataset, teacher: teachers.MLP) -> TeacherLayers:
    io = _layer_io_names(teacher, cfg.distill.layer_target)
    # Only the activations the layers read or must match (not every pre/post of every layer).
    names = tuple(dict.fromkeys(n for pair in io for n in pair if n is not None))
    acts = {split: teachers.frozen_activations(teacher, getattr(data, f"x_{split}"), names)
            for split in ("train", "val", "test")}
    # A feature map needs inputs in [0, 1]: scale every unit by its largest training value.
    scales = [np.maximum((data.x_train if src is None else acts["train"][src]).max(axis=0), 1e-6)
              .astype(np.float32) for src, _ in io]
    return TeacherLayers(io, acts, scales)


def check_mirror_inputs(cfg: Config) -> None:
    """A mirror student reads the teacher's inputs: student.downsample must stay 1."""
    if cfg.student.downsample != 1:
        raise DistillError(f"student.downsample={cfg.student.downsample} only applies to student.family=mps; "
                           "a mirror student reads the teacher's inputs (set it to 1, or data.downsample to pool "
                           "for both)")


def _distil_mirror(cfg: Config, data: Dataset, teacher: teachers.MLP, t_train: np.ndarray, progress: bool,
                   layers: TeacherLayers | None = None):
    """Mirror families: warm start, layer-wise fits, KD fine-tuning as the mode says.

    `layers`: the teacher's activations (`teacher_layers`), computed here when not given.
    Returns (student, curves, stages, per-layer rows); stages maps a phase to the test
    accuracy after it, so the report shows what each phase added.
    """
    check_mirror_inputs(cfg)
    mode, target = cfg.distill.mode, cfg.distill.layer_target
    tl = teacher_layers(cfg, data, teacher) if layers is None else layers
    io, acts, scales = tl.io, tl.acts, tl.scales

    def inputs(split: str, name: str | None) -> np.ndarray:
        return tl.inputs(data, split, name)

    labels_only = mode == "labels_only"
    student = students.build_mirror(cfg, teacher, scales, warm_start=False if labels_only else None)
    curves: dict[str, dict] = {}
    stages: dict[str, float] = {}
    if labels_only:
        hist = train.train_classifier(student, data.x_train, data.y_train, data.x_val, data.y_val,
                                      _student_settings(cfg), desc="student", progress=progress)
        curves["student (labels only)"] = hist.as_dict()
    else:
        stages["warm start" if cfg.student.warm_start else "initialisation"] = train.losses.accuracy(
            train.predict(student, data.x_test), data.y_test)

    def fidelity() -> list[dict]:
        """Per layer, on held-out (test) teacher activations, each layer fed the teacher's own input."""
        out = []
        for layer, (src, dst) in zip(student.hidden, io):
            fitted = layer if target == "pre" else students.PostActivation(layer, student.activation)
            pred, want = train.predict(fitted, inputs("test", src)), acts["test"][dst]
            out.append({"relative_error": train.relative_error(pred, want), "r2": train.r2_score(pred, want)})
        return out

    layer_hists = {}
    after_layerwise = None
    if mode in ("layerwise", "staged"):
        s = cfg.distill
        settings = train.TrainSettings(epochs=s.layer_epochs, batch_size=s.batch_size, lr=s.layer_lr,
                                       schedule=s.schedule, grad_clip=s.grad_clip, seed=cfg.seed + 2)
        # Each layer learns from the teacher's own activations, independently of the others.
        for layer, (src, dst) in zip(student.hidden, io):
            fitted = layer if target == "pre" else students.PostActivation(layer, student.activation)
            hist = train.fit_layer(fitted, inputs("train", src), acts["train"][dst], inputs("val", src),
                                   acts["val"][dst], settings, desc=f"layer {dst}", progress=progress)
            layer_hists[dst] = hist.as_dict()
        stages["layer-wise"] = train.losses.accuracy(train.predict(student, data.x_test), data.y_test)
        after_layerwise = fidelity()
    if mode in ("end_to_end", "staged"):
        hist = train.end_to_end(student, data.x_train, t_train, data.y_train, data.x_val, data.y_val,
                                _student_settings(cfg), temperature=cfg.distill.temperature,
                                alpha=cfg.distill.alpha, desc="student", progress=progress)
        curves["student (KD)"] = hist.as_dict()
        stages["end to end" if mode == "end_to_end" else "fine-tuned"] = train.losses.accuracy(
            train.predict(student, data.x_test), data.y_test)

    rows = students.layer_params(student, teacher)
    for i, (row, fid, (_, dst)) in enumerate(zip(rows, fidelity(), io)):
        row.update(target=dst, **fid, history=layer_hists.get(dst))
        if after_layerwise is not None:  # before fine-tuning moved the layers away from the teacher's
            row.update({f"{k}_after_layerwise": v for k, v in after_layerwise[i].items()})
    return student, curves, stages, rows


def run(cfg: Config, out: str | Path | None = None, progress: bool = True) -> tuple[Path, dict]:
    """Distil as the config says; returns (run folder, results). Writes config.yaml, results.json,
    report.md, training_curves.png (and per_layer_fidelity.png for mirror students), teacher/
    (when trained here) and student/ checkpoints."""
    t0 = time.perf_counter()
    final = Path(out) if out is not None else default_run_dir(cfg)
    config_yaml = dump_yaml(cfg)
    with staged_dir(final) as work:
        report.write_atomic(work / "config.yaml", config_yaml)
        data = load_data(cfg)
        teacher, teacher_hist, source = get_teacher(cfg, data, progress)
        if teacher_hist is not None:
            teachers.save_teacher(teacher, work / "teacher", _teacher_metadata(cfg, data))
        t_train, t_test = (teachers.frozen_logits(teacher, x) for x in (data.x_train, data.x_test))
        teacher_acc = train.losses.accuracy(t_test, data.y_test)

        xs = student_inputs(cfg, data)
        layers = None
        if cfg.student.family == "mps":
            student, curves, stages = _distil_mps(cfg, data, xs, t_train, progress)
        else:
            student, curves, stages, layers = _distil_mirror(cfg, data, teacher, t_train, progress)
        teachers.save_state(student, work / "student")
        ev = train.evaluate(train.predict(student, xs.x_test), t_test, data.y_test)

        t_params, s_params = param_count(teacher), param_count(student)
        drop = 100.0 * (teacher_acc - ev.accuracy)
        results = {
            "name": cfg.name,
            "dataset": _dataset_summary(data),
            "teacher": {"accuracy": teacher_acc, "params": t_params, "source": source,
                        "hidden": list(cfg.teacher.hidden), "latency_ms": _latencies(teacher, data.n_features),
                        "history": teacher_hist},
            "student": {"accuracy": ev.accuracy, "params": s_params, "agreement": ev.agreement, "kl": ev.kl,
                        "family": cfg.student.family, "mode": cfg.distill.mode,
                        "description": describe_student(cfg, xs, list(cfg.teacher.hidden)),
                        "accuracy_stages": stages, "layers": layers,
                        "latency_ms": _latencies(student, xs.n_sites), "histories": curves},
            "compression_ratio": t_params / s_params,
            "accuracy_drop_pts": drop,
            "lossless": bool(drop <= 1.0),
            "wall_time_s": None,
        }
        if teacher_hist is not None:
            curves = {"teacher": teacher_hist, **curves}
        if curves:
            report.plot_curves(work / "training_curves.png", curves)
        if layers:
            report.plot_layer_fidelity(work / "per_layer_fidelity.png", layers)
        results["wall_time_s"] = time.perf_counter() - t0
        report.write_json(work / "results.json", results)
        report.write_atomic(work / "report.md", report.markdown_report(results, config_yaml))
    return final, results


def train_teacher(cfg: Config, out: str | Path | None = None, progress: bool = True) -> tuple[Path, dict]:
    """Train and save only the teacher: <out>/teacher is the checkpoint for `teacher.checkpoint`."""
    t0 = time.perf_counter()
    final = Path(out) if out is not None else default_run_dir(cfg, "-teacher")
    config_yaml = dump_yaml(cfg)
    with staged_dir(final) as work:
        report.write_atomic(work / "config.yaml", config_yaml)
        data = load_data(cfg)
        model, hist = fit_teacher(cfg, data, progress)
        acc = train.losses.accuracy(teachers.frozen_logits(model, data.x_test), data.y_test)
        meta = {**_teacher_metadata(cfg, data), "test_accuracy": acc}
        teachers.save_teacher(model, work / "teacher", meta)
        results = {"name": cfg.name, "dataset": _dataset_summary(data),
                   "teacher": {"accuracy": acc, "params": param_count(model), "hidden": list(cfg.teacher.hidden),
                               "checkpoint": str(final / "teacher"), "history": hist},
                   "wall_time_s": time.perf_counter() - t0}
        report.plot_curves(work / "training_curves.png", {"teacher": hist})
        report.write_json(work / "results.json", results)
    return final, results

