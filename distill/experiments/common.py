"""The pieces every experiment shares: data, the teacher, the student's inputs, building and
training the student through its phases, and measuring it against the teacher."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from flax import nnx

from distill import phases as phases_lib
from distill import students, teachers, train
from distill.config import TEACHER_TRAINING_KEYS, Config, TeacherConfig
from distill.data import Dataset, downsample, load_dataset, site_order
from distill.data.augment import Augment
from distill.data.orderings import DATA_ORDERINGS
from distill.errors import DistillError
from distill.nn import param_count
from distill.students.mirror import build_mirror, conv_fits, conv_layers, layer_params, replaced_layers, \
    teacher_layers
from distill.teachers.network import Network, cnn_spec, lenet5_spec, mlp_spec
from distill.train.checkpoint import Checkpointing
from distill.train.step import Feed

LATENCY_BATCHES = (1, 256)


def load_data(cfg: Config) -> Dataset:
    d = cfg.data
    return load_dataset(d.name, data_dir=d.data_dir, downsample=d.downsample, val_fraction=d.val_fraction,
                        train_fraction=d.train_fraction, seed=cfg.seed)


def teacher_spec(t: TeacherConfig, image_shape: tuple[int, int], n_classes: int) -> dict:
    """The network spec of a teacher trained here, from the config's teacher section."""
    if t.arch == "mlp":
        if not t.hidden:
            raise DistillError("config: teacher.hidden is empty; an MLP teacher needs at least one hidden layer")
        return mlp_spec(image_shape[0] * image_shape[1], list(t.hidden), n_classes, t.activation, image_shape)
    if t.arch == "lenet5":
        return lenet5_spec(n_classes, activation=t.activation, image_shape=image_shape)
    return cnn_spec(image_shape, n_classes, blocks=list(t.conv_channels), dense=list(t.hidden), activation=t.activation,
                    kernel=t.kernel_size, batchnorm=t.batchnorm, pool=t.pool, dropout=t.dropout)


def teacher_settings(cfg: Config) -> train.TrainSettings:
    t = cfg.teacher
    return train.TrainSettings(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
                               schedule=t.schedule, seed=cfg.seed)


def teacher_metadata(cfg: Config, data: Dataset, accuracy: float, source: str) -> dict:
    """What a saved teacher records: the data it fits, its test accuracy, where it came from."""
    return {"dataset": data.name, "downsample": cfg.data.downsample, "image_shape": list(data.image_shape),
            "test_accuracy": accuracy, "source": source}


@dataclass
class Teacher:
    """The run's teacher: the model, its training history (None when loaded), a one-line
    description of where it came from, and its checkpoint metadata."""

    model: object
    history: dict | None
    source: str
    metadata: dict


def train_new_teacher(cfg: Config, data: Dataset, *, ckpt: Checkpointing | None, devices: int | None,
                      progress: bool) -> Teacher:
    model = Network(teacher_spec(cfg.teacher, data.image_shape, data.num_classes), rngs=nnx.Rngs(cfg.seed))
    val = train.Validation(data.x_val, data.y_val)
    t = cfg.teacher
    feed = None
    if t.translate or t.flip:
        feed = Feed(tuple(data.image_shape), Augment(tuple(data.image_shape), translate=t.translate, flip=t.flip))
    hist = train.train_classifier(model, data.x_train, data.y_train, val, teacher_settings(cfg), ckpt=ckpt,
                                  devices=devices, desc="teacher", progress=progress, feed=feed)
    acc = train.losses.accuracy(teachers.frozen_logits(model, data.x_test), data.y_test)
    source = f"trained by distill ({cfg.teacher.arch}, {cfg.teacher.epochs} epochs, seed {cfg.seed})"
    return Teacher(model, hist.as_dict(), source, teacher_metadata(cfg, data, acc, source))


def load_checkpoint_teacher(cfg: Config, data: Dataset) -> Teacher:
    """The teacher of `teacher.checkpoint`, checked against the data (input shape, dataset)."""
    path = cfg.teacher.checkpoint
    model, meta = teachers.load_teacher(path)
    check_teacher_fits(model, meta, data, where=f"teacher checkpoint {path}")
    return Teacher(model, None, f"loaded from {path}", meta)


def check_teacher_fits(model, meta: dict, data: Dataset, where: str) -> None:
    """Raises: DistillError if the teacher's input shape or recorded dataset does not fit `data`."""
    h, w, c = model.input_shape
    if (h, w) != tuple(data.image_shape) or c != 1:
        raise DistillError(f"{where} reads {h}x{w}x{c} images but the data are {data.image_shape[0]}x"
                           f"{data.image_shape[1]}x1 ({data.name}, data.downsample applied); set data.name / "
                           "data.downsample to what the teacher was trained on")
    recorded = meta.get("dataset")
    if recorded is not None and recorded != data.name:
        raise DistillError(f"{where} was trained on {recorded!r} but data.name is {data.name!r}; set "
                           f"data.name={recorded} or use a teacher of {data.name}")
    n = getattr(model, "n_classes", data.num_classes)
    if n != data.num_classes:
        raise DistillError(f"{where} has {n} outputs but {data.name} has {data.num_classes} classes")


def chance_level(accuracy: float, labels: np.ndarray) -> float | None:
    """The chance accuracy (always the most frequent class of `labels`) when `accuracy` is within
    max(5 pt, 3 binomial standard errors) of it, else None."""
    n = max(len(labels), 1)
    chance = float(np.bincount(labels).max()) / n
    margin = max(0.05, 3.0 * (chance * (1.0 - chance) / n) ** 0.5)
    return chance if accuracy < chance + margin else None


def check_teacher_learned(accuracy: float, labels: np.ndarray, teacher: Teacher) -> None:
    """Raises: DistillError when the teacher's test accuracy is at chance level (`chance_level`): a
    diverged or mismatched teacher has nothing to teach, and its student would look lossless."""
    chance = chance_level(accuracy, labels)
    if chance is not None:
        fix = ("lower teacher.lr or train it longer" if teacher.history is not None else
               "check it was trained on this dataset with the same preprocessing")
        raise DistillError(f"the teacher ({teacher.source}) scores {100 * accuracy:.1f} % on the test split, no better "
                           f"than chance ({100 * chance:.1f} %, always the most frequent class): it has nothing to "
                           f"teach; {fix}")


def unused_teacher_keys(cfg: Config) -> list[str]:
    """Teacher keys the config sets away from their defaults although a checkpoint is loaded."""
    default = TeacherConfig()
    return [k for k in TEACHER_TRAINING_KEYS if getattr(cfg.teacher, k) != getattr(default, k)]


def unused_student_keys(cfg: Config) -> list[str]:
    """Keys of the student section that belong to other families than student.family and are set
    away from every such family's default: the config keeps them (a family can be switched with
    --set) but this run does not use them."""
    out = []
    for key, value in cfg.student.others:
        defaults = [f.default if f.default is not dataclasses.MISSING else f.default_factory()
                    for module in students.families().values()
                    for f in dataclasses.fields(module.Options) if f.name == key]
        if value not in defaults:
            out.append(key)
    return out


@dataclass(frozen=True)
class StudentInputs:
    """The student's view of the data, x[split] (N, n_in): for a pixel family the pixels pooled
    by student.downsample (image_shape is then the pooled shape), for a mirror family the
    teacher's own inputs."""

    x: dict[str, np.ndarray]
    image_shape: tuple[int, int]

    @property
    def n_sites(self) -> int:
        return self.image_shape[0] * self.image_shape[1]


def student_inputs(cfg: Config, data: Dataset) -> StudentInputs:
    k = cfg.student.downsample
    if students.is_mirror(cfg.student.family):
        if k != 1:
            raise DistillError(f"student.downsample={k} only applies to pixel families (student.family=mps); a "
                               "mirror student reads the teacher's inputs (set it to 1, or data.downsample to pool "
                               "for both)")
        return StudentInputs({s: getattr(data, f"x_{s}") for s in ("train", "val", "test")}, data.image_shape)
    shape = data.image_shape
    out = {}
    for s in ("train", "val", "test"):
        out[s], shape = downsample(getattr(data, f"x_{s}"), data.image_shape, k)
    return StudentInputs(out, shape)


def uses_teacher(cfg: Config) -> bool:
    return any(phases_lib.phase(p).USES_TEACHER for p in cfg.distill.phases)


def build_student(cfg: Config, xs: StudentInputs, n_classes: int, teacher=None, layers=None, *,
                  warm_start: bool | None = None) -> nnx.Module:
    """The student the config describes; a mirror student is warm-started from `teacher` when a
    phase learns from the teacher (or as `warm_start` says), and its MPS layers read `layers.ranges`."""
    s = cfg.student
    family = students.family(s.family)
    if students.is_mirror(s.family):
        ranges = None if layers is None else layers.ranges
        warm = uses_teacher(cfg) if warm_start is None else warm_start
        return build_mirror(s.family, s.options, teacher, ranges, seed=cfg.seed, warm_start=warm)
    return family.build(s.options, n_sites=xs.n_sites, image_shape=xs.image_shape, n_classes=n_classes,
                        site_order=student_site_order(cfg, xs), seed=cfg.seed)


def student_site_order(cfg: Config, xs: StudentInputs) -> np.ndarray:
    """The pixel → site permutation (H*W,) of a pixel student: `data.ordering` on the student's image shape;
    `random` drawn from data.ordering_seed (default: the run's seed); a data-driven ordering (`correlation`)
    computed from the student's training pixels xs.x["train"]. A shape-only build (no data in `xs`, as in
    `checks.check_student`) gets the identity for a data-driven ordering: only the shapes matter there, and
    the real build has the data. The order is saved with the student (its SiteOrder variable)."""
    d = cfg.data
    if d.ordering in DATA_ORDERINGS:
        if "train" not in xs.x:
            return np.arange(xs.n_sites, dtype=np.int32)
        return site_order(xs.image_shape, d.ordering, x=xs.x["train"])
    return site_order(xs.image_shape, d.ordering, seed=cfg.seed if d.ordering_seed is None else d.ordering_seed)


def describe_student(cfg: Config, xs: StudentInputs, teacher) -> str:
    s = cfg.student
    what = students.family(s.family).describe(s.options)
    if students.is_mirror(s.family):
        dense, convs = replaced_layers(s.family, s.options, teacher.spec)
        parts = []
        if dense:
            parts.append(f"hidden dense layers ({'-'.join(str(h.n_out) for h in dense)})")
        if convs:
            parts.append(f"convolutions ({', '.join(c.name for c in convs)})")
        kept = [c.name for c in conv_layers(teacher.spec) if c not in convs]
        note = f"; {', '.join(kept)} kept from the teacher" if kept and convs else ""
        return f"the teacher with its {' and '.join(parts)} replaced by {what}{note}"
    h, w = xs.image_shape
    if not getattr(students.family(s.family), "ORDERED", True):  # reads the pixels as a vector
        return f"{what}, {xs.n_sites} inputs ({h}×{w} pixels)"
    return f"{what} over {xs.n_sites} sites ({h}×{w} pixels, {cfg.data.ordering} order)"


def check_phases(cfg: Config) -> None:
    """Raises: DistillError for a phase the student's family cannot run (a phase module may add its own
    `check_config(cfg)`)."""
    for name in cfg.distill.phases:
        check = getattr(phases_lib.phase(name), "check_config", None)
        if check is not None:
            check(cfg)
        if phases_lib.phase(name).NEEDS_MIRROR and not students.is_mirror(cfg.student.family):
            mirrors = [n for n in students.families() if students.is_mirror(n)]
            raise DistillError(f"distill.mode: phase {name!r} needs a student with hidden layers; set student.family "
                               f"to one of {', '.join(mirrors)} (student.family={cfg.student.family} has none)")


@dataclass
class Distilled:
    """A trained student and what its phases reported: curves (training histories), stages
    (test accuracy after each phase), per-layer rows (mirror students), layer histories."""

    student: nnx.Module
    curves: dict
    stages: dict
    layers: list[dict] | None


def distil(cfg: Config, data: Dataset, xs: StudentInputs, teacher, t_logits: dict | None, *,
           ckpt: Callable[[str], Checkpointing | None], devices: int | None, progress: bool,
           label: str = "student") -> Distilled:
    """Build the student and run the config's phases in order (see `distill.phases`)."""
    check_phases(cfg)
    mirror = students.is_mirror(cfg.student.family)
    cache: dict = {}

    def tl():
        if "tl" not in cache:
            cache["tl"] = teacher_layers(teacher, xs.x, cfg.distill.layer_target)
        return cache["tl"]

    needs_ranges = mirror and getattr(students.family(cfg.student.family), "NEEDS_INPUT_SCALE", False)
    student = build_student(cfg, xs, data.num_classes, teacher, tl() if needs_ranges else None)
    ys = {s: getattr(data, f"y_{s}") for s in ("train", "val", "test")}
    stages: dict[str, float] = {}
    curves: dict[str, dict] = {}
    layer_hists: dict[str, dict] = {}
    after_layerwise = None
    teacher_phases = uses_teacher(cfg)
    if teacher_phases and mirror:
        stages["warm start" if getattr(cfg.student.options, "warm_start", True) else "initialisation"] = \
            train.losses.accuracy(train.predict(student, xs.x["test"]), ys["test"])
    aug = augmentation(cfg, data)
    for i, name in enumerate(cfg.distill.phases):
        ctx = phases_lib.PhaseContext(cfg.distill, cfg.seed, xs.x, ys, t_logits, tl,
                                      lambda sub, i=i, name=name: ckpt(f"{i}-{name}/{sub}"), devices, progress,
                                      label, first=i == 0, images=data.x_train, image_shape=data.image_shape,
                                      augment=aug, teacher=teacher, pool=1 if mirror else cfg.student.downsample,
                                      copies=cfg.augment.copies)
        result = phases_lib.phase(name).run(ctx, student)
        curves.update(result.curves)
        if result.layers:
            layer_hists.update(result.layers)
            after_layerwise = layer_fidelity(student, tl(), cfg.distill.layer_target)
        stages[result.stage] = train.losses.accuracy(train.predict(student, xs.x["test"]), ys["test"])
    rows = None
    if mirror:
        rows = layer_params(student, teacher)
        dense_rows = [r for r in rows if r["kind"] == "dense"]
        fids = dict(zip((r["layer"] for r in dense_rows),
                        layer_fidelity(student, tl(), cfg.distill.layer_target) if dense_rows else []))
        fids.update(conv_fidelity(student, teacher, xs.x["test"], cfg.distill.layer_target))
        after = dict(zip((r["layer"] for r in dense_rows), after_layerwise or []))
        for row in rows:
            fid = dict(fids[row["layer"]])
            target = fid.pop("target")
            row.update(target=target, **fid, history=layer_hists.get(target))
            if row["layer"] in after:  # before fine-tuning moved the layers away from the teacher's
                row.update({f"{k}_after_layerwise": v for k, v in after[row["layer"]].items() if k != "target"})
    return Distilled(student, curves, stages, rows)


def augmentation(cfg: Config, data: Dataset) -> Augment | None:
    """The run's augmentation on the data's images, or None when it is off."""
    a = cfg.augment
    if not a.active:
        return None
    return Augment(tuple(data.image_shape), translate=a.translate, flip=a.flip, mixup=a.mixup, cutmix=a.cutmix)


#: Test images on which a replaced convolution's fidelity is measured (its activation maps are
#: large: 14·14·64 floats per image for the Fashion CNN's second conv).
CONV_FIDELITY_IMAGES = 512


def conv_fidelity(student, teacher, x_test: np.ndarray, target: str) -> dict[str, dict]:
    """{layer: {target, relative_error, r2}} per replaced conv layer of a mirror student, on the
    first CONV_FIDELITY_IMAGES test images, each layer fed the teacher's own input to it."""
    x = x_test[:CONV_FIDELITY_IMAGES]
    fits = conv_fits(student, teacher, target)
    if not fits:
        return {}
    names = tuple(dict.fromkeys(n for f in fits for n in (f.source, f.target_name) if n is not None))
    acts = teachers.frozen_activations(teacher, x, names)
    out = {}
    for fit in fits:
        pred = train.predict(fit.module, x if fit.source is None else acts[fit.source], batch_size=128)
        want = acts[fit.target_name]
        out[fit.name] = {"target": fit.target_name, "relative_error": train.relative_error(pred, want),
                         "r2": train.r2_score(pred, want)}
    return out


def layer_fidelity(student, tl, target: str) -> list[dict]:
    """Per replaced layer, on held-out (test) teacher activations, each layer fed the teacher's own input."""
    out = []
    for fit in student.layer_fits(target, tl):
        pred, want = train.predict(fit.module, fit.inputs("test")), fit.target("test")
        out.append({"target": fit.target_name, "relative_error": train.relative_error(pred, want),
                    "r2": train.r2_score(pred, want)})
    return out


def latencies(model: nnx.Module, n_features: int) -> dict[str, float]:
    return {str(b): train.latency_ms(model, n_features, b) for b in LATENCY_BATCHES}


def dataset_summary(data: Dataset) -> dict:
    return {"name": data.name, "image_shape": list(data.image_shape), "n_train": int(len(data.y_train)),
            "n_val": int(len(data.y_val)), "n_test": int(len(data.y_test)), "num_classes": data.num_classes}


def student_checkpointing(root: Path | None, cfg: Config) -> Callable[[str], Checkpointing | None]:
    if root is None:
        return lambda name: None
    base = Checkpointing(root, cfg.runtime.checkpoint_every, cfg.runtime.keep_checkpoints)
    return base.child


def teacher_params(teacher) -> int | None:
    return param_count(teacher) if teachers.is_native(teacher) else None

