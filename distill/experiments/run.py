"""One experiment from config to run folder: data → teacher → student → results.

`run(cfg, out)` is the whole job behind `distill run`; `resume(out)` continues one that was
stopped or killed; `train_teacher(cfg, out)` is `distill teacher`. The folder is built under a
hidden staging name (`experiments.folder`): complete, or absent, or resumable.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import jax

from distill import report, students, teachers, train
from distill.config import Config, dump_yaml, load_config
from distill.errors import DistillError
from distill.experiments import checks
from distill.experiments.common import (
    check_teacher_learned,
    dataset_summary,
    describe_student,
    distil,
    latencies,
    load_checkpoint_teacher,
    load_data,
    student_checkpointing,
    student_inputs,
    teacher_params,
    train_new_teacher,
    Teacher,
    unused_student_keys,
    unused_teacher_keys,
)
from distill.experiments.folder import RunFolder, default_run_dir, leftovers
from distill.nn import param_count
from distill.students.store import save_student, student_spec
from distill.train.checkpoint import Checkpointing, RunInterrupted, stop_on_signals
from distill.train.sharding import use_cpu_devices

__all__ = ["run", "resume", "train_teacher", "say"]

CHECKPOINTS = "checkpoints"


def say(message: str) -> None:
    """A one-line note to the user on stderr (also in quiet mode: notes are not progress)."""
    print(f"distill: {message}", file=sys.stderr, flush=True)


def _note_unused_student_keys(cfg: Config) -> None:
    if unused := unused_student_keys(cfg):
        say(f"student.{', student.'.join(unused)} {'is' if len(unused) == 1 else 'are'} not used: "
            f"{'it belongs' if len(unused) == 1 else 'they belong'} to other families than student.family = "
            f"{cfg.student.family}")


def _notice_leftovers(final: Path) -> None:
    for path in leftovers(final.parent):
        say(f"an interrupted run was left in {path}; continue it with `distill run --resume "
            f"{path.parent / path.name.split('.partial-')[0].lstrip('.')}` or remove it")


def given_teacher(teacher, data) -> Teacher:
    """A teacher passed in from Python: a Network, a black box, or a plain function x → logits."""
    from distill.experiments.common import check_teacher_fits

    if not teachers.is_native(teacher) and not hasattr(teacher, "n_features"):
        if not callable(teacher):
            raise DistillError(f"teacher must be a distill Network, a black-box teacher or a function x → logits, "
                               f"got {type(teacher).__name__}")
        teacher = teachers.FunctionTeacher(teacher, (*data.image_shape, 1), data.num_classes)
    check_teacher_fits(teacher, {}, data, where="the given teacher")
    acc = train.losses.accuracy(teachers.frozen_logits(teacher, data.x_test), data.y_test)
    return Teacher(teacher, None, "given from Python", {"test_accuracy": acc, "source": "given from Python"})


def get_teacher(cfg: Config, data, work: Path | None, *, progress: bool, given=None) -> Teacher:
    """The run's teacher: `given` (from Python), loaded from teacher.checkpoint, reused from an
    interrupted run's folder, or trained (resumably) and saved to work/teacher."""
    if given is not None:
        return given_teacher(given, data)
    if cfg.teacher.checkpoint is not None:
        return load_checkpoint_teacher(cfg, data)
    saved = None if work is None else work / "teacher"
    if saved is not None and (saved / teachers.TEACHER_JSON).is_file():
        model, meta = teachers.load_teacher(saved)
        say("teacher reused from the interrupted run")
        return Teacher(model, meta.get("history"), meta["source"], meta)
    ckpt = None if work is None else Checkpointing(work / CHECKPOINTS / "teacher", cfg.runtime.checkpoint_every,
                                                   cfg.runtime.keep_checkpoints)
    teacher = train_new_teacher(cfg, data, ckpt=ckpt, devices=cfg.runtime.devices, progress=progress)
    if saved is not None:
        teachers.save_teacher(teacher.model, saved, {**teacher.metadata, "history": teacher.history})
    return teacher


def run(cfg: Config, out: str | Path | None = None, progress: bool = True, *, teacher=None,
        _folder: RunFolder | None = None) -> tuple[Path, dict]:
    """Distil as the config says; returns (run folder, results). Writes config.yaml,
    results.json, report.md, training_curves.png (and per_layer_fidelity.png for mirror
    students), teacher/ (when trained here) and student/ (with what `load_student` needs).
    `teacher` (Python API): use this teacher instead of the config's — a `Network`, a black box,
    or a function x (N, H*W) in [0, 1] → logits (N, classes).

    Raises: DistillError for a config, data or teacher problem (the staging folder is
    removed); RunInterrupted when stopped by SIGTERM / SIGINT (the staging folder is kept:
    `resume(out)` continues it)."""
    t0 = time.perf_counter()
    checks.check_config(cfg)
    use_cpu_devices(cfg.runtime.cpu_devices)
    final = Path(out) if out is not None else default_run_dir(cfg.name)
    folder = _folder or RunFolder.start(final)
    if _folder is None:
        _notice_leftovers(folder.final)
    t0 -= _earlier_wall_time(folder.work)  # a resumed run's wall time counts its earlier parts
    config_yaml = dump_yaml(cfg)
    try:
        with stop_on_signals():
            results = _run_in(cfg, folder, config_yaml, progress, t0, teacher)
    except RunInterrupted:
        _record_wall_time(folder.work, time.perf_counter() - t0)
        raise
    except BaseException:
        folder.abort()
        raise
    return folder.finish(), results


def _run_in(cfg: Config, folder: RunFolder, config_yaml: str, progress: bool, t0: float, given=None) -> dict:
    work = folder.work
    report.write_atomic(work / "config.yaml", config_yaml)
    data = load_data(cfg)
    if cfg.distill.warmup_epochs >= cfg.distill.epochs > 0:
        say(f"distill.warmup_epochs = {cfg.distill.warmup_epochs} ≥ distill.epochs = {cfg.distill.epochs}: the "
            "learning rate never reaches distill.lr (lower the warm-up for short runs)")
    trains_teacher = cfg.teacher.checkpoint is None and given is None
    if trains_teacher:  # everything checked before the teacher trains
        checks.check_teacher_size(cfg, data.image_shape, data.num_classes, len(data.y_train))
        checks.check_student(cfg, data.image_shape, data.num_classes,
                             checks.shape_only_teacher(cfg, data.image_shape, data.num_classes), len(data.y_train))
        _note_unused_student_keys(cfg)
    teacher = get_teacher(cfg, data, work, progress=progress, given=given)
    checks.check_student(cfg, data.image_shape, data.num_classes, teacher.model, len(data.y_train))
    if not trains_teacher:  # notes after the checks: a refused config gets its one-line error alone
        _note_unused_student_keys(cfg)
    if cfg.teacher.checkpoint is not None and given is None:
        keys = unused_teacher_keys(cfg)
        note = f"; the config's teacher.{', teacher.'.join(keys)} are not used" if keys else ""
        arch = "architecture from the checkpoint" if teachers.is_native(teacher.model) else "run by onnxruntime"
        say(f"teacher loaded from {cfg.teacher.checkpoint}: {teachers.describe_checkpoint(teacher.model, teacher.metadata)} "
            f"({arch}){note}")
    is_native = teachers.is_native(teacher.model)
    t_logits = {s: teachers.frozen_logits(teacher.model, getattr(data, f"x_{s}")) for s in ("train", "val", "test")}
    teacher_acc = train.losses.accuracy(t_logits["test"], data.y_test)
    check_teacher_learned(teacher_acc, data.y_test, teacher)

    xs = student_inputs(cfg, data)
    result = distil(cfg, data, xs, teacher.model, t_logits, ckpt=student_checkpointing(work / CHECKPOINTS, cfg),
                    devices=cfg.runtime.devices, progress=progress)
    student = result.student
    native = tuple(a * cfg.data.downsample for a in data.image_shape)  # what new inputs look like
    spec = student_spec(cfg, image_shape=native, data_downsample=cfg.data.downsample, n_classes=data.num_classes,
                        teacher_spec=teacher.model.spec if students.is_mirror(cfg.student.family) else None)
    save_student(student, work / "student", spec)
    ev = train.evaluate(train.predict(student, xs.x["test"]), t_logits["test"], data.y_test)

    t_params, s_params = teacher_params(teacher.model), param_count(student)
    t_lat = latencies(teacher.model, data.n_features) if is_native else None
    s_lat = latencies(student, xs.n_sites)
    drop = 100.0 * (teacher_acc - ev.accuracy)
    hidden = [layer["out_features"] for layer in teacher.model.spec["layers"]
              if layer["type"] == "dense" and layer["name"] != "logits"] if is_native else []
    arch = " → ".join(layer["type"] for layer in teacher.model.spec["layers"]) if is_native else "black box"
    results = report.RunResults(
        name=cfg.name,
        dataset=dataset_summary(data),
        teacher=report.TeacherResult(
            accuracy=teacher_acc, params=t_params, source=teacher.source, hidden=hidden, architecture=arch,
            latency_ms=t_lat, latency_us_per_sample=per_sample(t_lat), history=teacher.history),
        student=report.StudentResult(
            accuracy=ev.accuracy, params=s_params, agreement=ev.agreement, kl=ev.kl, family=cfg.student.family,
            mode=cfg.distill.mode if isinstance(cfg.distill.mode, str) else list(cfg.distill.mode),
            phases=list(cfg.distill.phases), description=describe_student(cfg, xs, teacher.model),
            accuracy_stages=result.stages, layers=result.layers, latency_ms=s_lat, latency_us_per_sample=per_sample(s_lat),
            histories=result.curves),
        compression_ratio=None if t_params is None else t_params / s_params,
        accuracy_drop_pts=drop,
        lossless=bool(drop <= 1.0),
        wall_time_s=0.0,
        devices=int(len(jax.devices()) if cfg.runtime.devices is None else cfg.runtime.devices),
        platform=jax.default_backend(),
        resumed=folder.resumed,
    ).to_json()
    curves = dict(result.curves)
    if teacher.history is not None:
        curves = {"teacher": teacher.history, **curves}
    for row in result.layers or []:
        if row.get("history"):
            curves[f"layer {row['target']}"] = row["history"]
    if curves:
        report.plot_curves(work / "training_curves.png", curves)
    if result.layers:
        report.plot_layer_fidelity(work / "per_layer_fidelity.png", result.layers)
    results["wall_time_s"] = time.perf_counter() - t0
    report.write_json(work / "results.json", results)
    report.write_atomic(work / "report.md", report.markdown_report(results, config_yaml))
    _drop_checkpoints(work)
    return results


_WALL_TIME = "wall_time.json"  # under CHECKPOINTS (removed with them when the run finishes)


def _record_wall_time(work: Path, seconds: float) -> None:
    """Keep the wall time a run spent before it stopped on SIGTERM / SIGINT, for `resume`.
    Best effort: a run that cannot write it is still resumable (its wall time then counts the
    resumed part only)."""
    try:
        (work / CHECKPOINTS).mkdir(exist_ok=True)
        report.write_json(work / CHECKPOINTS / _WALL_TIME, {"wall_time_s": seconds})
    except OSError:
        pass


def _earlier_wall_time(work: Path) -> float:
    """Seconds spent by the earlier parts of a resumed run (`_record_wall_time`); 0 for a new run
    and for parts killed outright (SIGKILL, power loss), which leave no record."""
    try:
        value = json.loads((work / CHECKPOINTS / _WALL_TIME).read_text())["wall_time_s"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0 else 0.0


def per_sample(lat: dict[str, float] | None) -> dict[str, float] | None:
    """{batch: ms per batch} → {batch: µs per sample}."""
    return None if lat is None else {b: 1e3 * ms / int(b) for b, ms in lat.items()}


def _drop_checkpoints(work: Path) -> None:
    import shutil

    shutil.rmtree(work / CHECKPOINTS, ignore_errors=True)


def resume(out: str | Path, progress: bool = True) -> tuple[Config, Path, dict]:
    """Continue the interrupted run whose --out was `out` with the config it recorded; returns
    (config, run folder, results). Finished phases are not repeated; the results equal those of
    an uninterrupted run (same config, seed and machine).
    Raises: DistillError when there is nothing to resume."""
    cfg = load_config(RunFolder.staged_config(out))
    folder = RunFolder.resume(out)
    say(f"resuming {cfg.name} in {folder.work}")
    final, results = run(cfg, folder.final, progress, _folder=folder)
    return cfg, final, results


def teacher_once(config: str | Path, overrides: list[str], teacher: str | Path | None, out: str | Path) -> Path:
    """The teacher checkpoint folder a study of many runs shares: `teacher` when given, else one
    trained from `config` (with `overrides`) into <out>/teacher-run the first time and reused after."""
    if teacher is not None:
        return Path(teacher)
    folder = Path(out) / "teacher-run" / "teacher"
    if not folder.is_dir():
        train_teacher(load_config(config, overrides), Path(out) / "teacher-run", progress=False)
    return folder


def train_teacher(cfg: Config, out: str | Path | None = None, progress: bool = True) -> tuple[Path, dict]:
    """Train and save only the teacher: <out>/teacher is the checkpoint for `teacher.checkpoint`."""
    t0 = time.perf_counter()
    if cfg.teacher.checkpoint is not None:
        raise DistillError("`distill teacher` trains a new teacher; remove teacher.checkpoint from the config")
    use_cpu_devices(cfg.runtime.cpu_devices)
    final = Path(out) if out is not None else default_run_dir(cfg.name, "-teacher")
    folder = RunFolder.start(final)
    config_yaml = dump_yaml(cfg)
    try:
        with stop_on_signals():
            work = folder.work
            report.write_atomic(work / "config.yaml", config_yaml)
            data = load_data(cfg)
            teacher = get_teacher(cfg, data, work, progress=progress)
            acc = teacher.metadata["test_accuracy"]
            results = {"name": cfg.name, "dataset": dataset_summary(data),
                       "teacher": {"accuracy": acc, "params": param_count(teacher.model),
                                   "hidden": list(cfg.teacher.hidden), "arch": cfg.teacher.arch,
                                   "checkpoint": str(final / "teacher"), "history": teacher.history},
                       "wall_time_s": time.perf_counter() - t0}
            report.plot_curves(work / "training_curves.png", {"teacher": teacher.history})
            report.write_json(work / "results.json", results)
            _drop_checkpoints(work)
    except RunInterrupted as err:
        folder.abort()
        raise DistillError(f"teacher training stopped by {err.signal_name}; nothing was written (`distill teacher` "
                           "does not resume: `distill run` does)") from None
    except BaseException:
        folder.abort()
        raise
    return folder.finish(), results

