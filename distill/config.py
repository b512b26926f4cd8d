"""Typed, frozen experiment configs: YAML files, dotted overrides, one-line validation errors.

A config is a tree of frozen dataclasses. `load_config(path, overrides)` reads a YAML file
(or the defaults when `path` is None), applies `key=value` overrides such as
`student.bond_dim=16`, checks every key, type and value, and returns a `Config`. Every
problem is a `DistillError` whose message names the key and says what is allowed.

A student is a family name plus that family's options: the keys of the `student` section
other than `family` and `downsample` belong to the student families (`distill.students`, one
module per family, each with its `Options` record). The chosen family's options are
`cfg.student.options`; keys that belong to other families may be present (a sweep config holds
several families' sizes) and are validated by their own family and kept in `cfg.student.others`.
`distill.mode` is a list of training phases (`distill.phases`, one module per phase), or one of
the shorthands `end_to_end`, `layerwise`, `staged` (= [layerwise, end_to_end]), `labels_only`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill.errors import DistillError
from distill.options import (
    at_least,
    build,
    check,
    check_field,
    choice,
    fraction,
    non_negative,
    plain,
    positive,
    suggest,
)

DATASET_NAMES = ("digits", "fashion_mnist", "mnist")
#: pixel → MPS site orders (`distill.data.orderings.site_order`): geometric ones, `random` (seeded by
#: data.ordering_seed) and the data-driven `correlation` (from the training pixels)
ORDERINGS = ("row_major", "snake", "column_major", "hilbert", "random", "correlation")


@dataclass(frozen=True)
class DataConfig:
    """Which data, how it is scaled and split. Inputs are always scaled to [0, 1]."""

    name: str = field(default="digits", metadata=check(
        "digits, fashion_mnist, mnist or tfds:<name>",
        lambda v: v in DATASET_NAMES or (v.startswith("tfds:") and len(v) > 5),
        choices=DATASET_NAMES))
    data_dir: str | None = None  # IDX folder or TFDS data_dir; None = the default place
    downsample: int = field(default=1, metadata=at_least(1))  # average-pool factor (28→14: 2)
    ordering: str = field(default="row_major", metadata=choice(*ORDERINGS))  # pixel → MPS site order
    # seed of the `random` ordering; null = the run's seed (the order is saved with the student)
    ordering_seed: int | None = field(default=None, metadata=check("an integer ≥ 0", lambda v: v >= 0))
    val_fraction: float = field(default=0.1, metadata=fraction(lo_open=False, hi_open=True))
    train_fraction: float = field(default=1.0, metadata=fraction(lo_open=True, hi_open=False))


TEACHER_ARCHS = ("mlp", "cnn", "lenet5")
TEACHER_ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid")
#: Keys of the teacher section that describe a teacher trained here; with `checkpoint` set
#: they are not used (the architecture comes from the checkpoint).
TEACHER_TRAINING_KEYS = ("arch", "hidden", "activation", "conv_channels", "kernel_size", "pool", "batchnorm",
                         "dropout", "translate", "flip", "epochs", "batch_size", "lr", "weight_decay", "schedule")


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher: trained here (arch mlp, cnn or the lenet5 preset), or loaded from `checkpoint`.

    A checkpoint (written by `distill teacher`, `distill run` or `distill import-teacher`)
    carries its own architecture: with `checkpoint` set, the other keys are not used.
    """

    arch: str = field(default="mlp", metadata=choice(*TEACHER_ARCHS))
    # mlp: the hidden widths; cnn: the widths of the dense head between the convolutions and the logits
    hidden: tuple[int, ...] = field(default=(256, 256), metadata=check(
        "a list of integers ≥ 1 (non-empty for arch mlp)", lambda v: all(h >= 1 for h in v)))
    activation: str = field(default="relu", metadata=choice(*TEACHER_ACTIVATIONS))
    conv_channels: tuple[int, ...] = field(default=(32, 64), metadata=check(
        "a non-empty list of integers ≥ 1", lambda v: len(v) > 0 and all(c >= 1 for c in v)))  # cnn
    kernel_size: int = field(default=3, metadata=at_least(1))  # cnn, "same" padding
    pool: str = field(default="max", metadata=choice("max", "avg"))  # cnn: 2×2 after each conv block
    batchnorm: bool = True  # cnn: BatchNorm after each convolution
    dropout: float = field(default=0.0, metadata=fraction(lo_open=False, hi_open=True))  # cnn: after each dense layer
    translate: int = field(default=0, metadata=check("an integer ≥ 0 (pixels)", lambda v: v >= 0))  # augmentation
    flip: bool = False  # augmentation: left-right flips (not for digits)
    checkpoint: str | None = None  # a teacher checkpoint folder; None = train one
    epochs: int = field(default=60, metadata=at_least(1))
    batch_size: int = field(default=64, metadata=at_least(1))
    lr: float = field(default=1e-3, metadata=positive())
    weight_decay: float = field(default=0.0, metadata=non_negative())
    schedule: str = field(default="cosine", metadata=choice("constant", "cosine"))


@dataclass(frozen=True)
class StudentConfig:
    """The student: a family (`distill.students`) and that family's options.

    family: `mps` is one MPS over the input pixels that outputs the logits directly; the
    mirror families replace every hidden dense layer of the teacher (`mps_layers` MPS layers,
    `tt` TT-matrix layers, `lowrank` W = A·B, `dense` a small dense bottleneck, ...) and keep
    the rest of the teacher (its output layer as a trainable head, its convolutions).
    downsample: extra k×k average pooling of the input of a pixel family (`mps`) on top of
    data.downsample: the teacher keeps the full-resolution input while the MPS runs over fewer
    sites (28×28 → 14×14: 2).
    """

    family: str = "mps"
    downsample: int = field(default=1, metadata=at_least(1))
    options: Any = None  # the family's Options record; None = its defaults
    others: tuple[tuple[str, Any], ...] = ()  # keys of other families given in the config, (key, value)

    def __post_init__(self):
        if self.options is None:
            object.__setattr__(self, "options", family_options(self.family)())

    def __getattr__(self, name: str) -> Any:
        # cfg.student.bond_dim reads the chosen family's option (only reached for names that are
        # not fields of StudentConfig itself)
        if name.startswith("__") or name in ("options", "family"):
            raise AttributeError(name)
        try:
            return getattr(self.options, name)
        except AttributeError:
            raise AttributeError(f"student family {self.family!r} has no option {name!r}") from None


def student_families() -> dict[str, Any]:
    """{family name: its module} for every student family (`distill.students`)."""
    from distill import students  # lazy: the families import jax and flax

    return students.families()


def family_options(name: str) -> type:
    families = student_families()
    if name not in families:
        raise DistillError(f"config: student.family = {name!r} is not allowed: must be one of "
                           f"{', '.join(families)}{_close(name, families)}")
    return families[name].Options


def _close(value: str, names) -> str:
    import difflib

    close = difflib.get_close_matches(str(value), list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


MODE_SHORTHANDS = {
    "end_to_end": ("end_to_end",),
    "layerwise": ("layerwise",),
    "staged": ("layerwise", "end_to_end"),
    "labels_only": ("labels",),
}


def phase_names() -> tuple[str, ...]:
    """Every training phase (`distill.phases`, one module per phase)."""
    from distill import phases  # lazy

    return tuple(phases.phases())


def _check_mode(v) -> bool:
    if isinstance(v, str):
        return v in MODE_SHORTHANDS or v in phase_names()
    return len(v) > 0 and all(p in phase_names() for p in v)


@dataclass(frozen=True)
class DistillConfig:
    """How the student learns: a list of phases, run in order (Hinton et al. 2015 for KD).

    mode: `end_to_end` KD on the teacher's logits; `layerwise` each student layer fits the
    teacher's a^{l-1} → a^l (MSE); `staged` = [layerwise, end_to_end]; `labels_only` the same
    student trained on labels alone (the control); or a list of phase names.
    """

    mode: str | tuple[str, ...] = field(default="end_to_end", metadata=check(
        "end_to_end, layerwise, staged, labels_only, or a list of phases (end_to_end, layerwise, labels, sweep)",
        _check_mode, choices=tuple(MODE_SHORTHANDS)))
    temperature: float = field(default=4.0, metadata=positive())
    alpha: float = field(default=0.9, metadata=fraction(lo_open=False, hi_open=False))
    epochs: int = field(default=100, metadata=at_least(1))
    batch_size: int = field(default=64, metadata=at_least(1))
    lr: float = field(default=1e-3, metadata=positive())
    weight_decay: float = field(default=0.0, metadata=non_negative())
    schedule: str = field(default="cosine", metadata=choice("constant", "cosine"))
    grad_clip: float | None = field(default=1.0, metadata=positive())  # global norm; None = off
    warmup_epochs: int = field(default=0, metadata=check("an integer ≥ 0", lambda v: v >= 0))  # linear warm-up
    # exponential moving average of the student's weights (validated and kept instead of the raw
    # weights); null = off, e.g. 0.999
    ema: float | None = field(default=None, metadata=fraction(lo_open=True, hi_open=True))
    # layer-by-layer phase
    layer_target: str = field(default="post", metadata=choice("post", "pre"))  # match post- or pre-activations
    layer_epochs: int = field(default=10, metadata=at_least(1))
    layer_lr: float = field(default=1e-3, metadata=positive())
    # DMRG-style sweep phase (`sweep`, family mps): full sweeps, local Adam steps per merged pair (on
    # minibatches of batch_size), their learning rate (relative to the merged tensor's size), the
    # discarded Schmidt weight allowed per bond, a bond cap (null = student.bond_dim, the storage) and floor,
    # and how many training samples each sweep caches environments for
    sweeps: int = field(default=4, metadata=at_least(1))
    sweep_steps: int = field(default=20, metadata=check("an integer ≥ 0", lambda v: v >= 0))
    sweep_lr: float = field(default=3e-3, metadata=positive())
    sweep_cutoff: float = field(default=1e-4, metadata=fraction(lo_open=False, hi_open=True))
    sweep_max_bond: int | None = field(default=None, metadata=at_least(1))
    sweep_min_bond: int = field(default=2, metadata=at_least(1))  # floor of every kept rank (lets bonds grow)
    sweep_samples: int = field(default=8192, metadata=at_least(1))

    @property
    def phases(self) -> tuple[str, ...]:
        """The phases `mode` names, in order."""
        if isinstance(self.mode, str):
            return MODE_SHORTHANDS.get(self.mode, (self.mode,))
        return tuple(self.mode)


@dataclass(frozen=True)
class AugmentConfig:
    """Function matching (Beyer et al. 2022): the student's training images are augmented and the
    teacher labels the very same augmented images — inside the training step for a native
    teacher, once for `copies` augmented copies of the training set for a black-box teacher.
    Applies to every distillation phase (and to the labels-only control). All off = the fixed
    training set with the teacher's logits computed once."""

    translate: int = field(default=0, metadata=check("an integer ≥ 0 (pixels)", lambda v: v >= 0))
    flip: bool = False  # left-right; refused for digits and MNIST, where it changes the class
    mixup: float = field(default=0.0, metadata=non_negative())  # Beta(α, α); 0 = off
    cutmix: float = field(default=0.0, metadata=non_negative())  # Beta(α, α); 0 = off
    copies: int = field(default=4, metadata=at_least(1))  # black-box teachers: augmented copies labelled once

    @property
    def active(self) -> bool:
        return bool(self.translate or self.flip or self.mixup or self.cutmix)


@dataclass(frozen=True)
class CompareConfig:
    """`distill compare-maps`: the same MPS student with each feature map, over several seeds.

    Each entry of `maps` is a mapping with `name` plus that map's parameters, and optionally
    `pairing` (neighbour | random) for pairwise maps, e.g. {name: fourier, order: 1}.
    """

    maps: tuple[dict, ...] = ()
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata=check(
        "a non-empty list of integers ≥ 0", lambda v: len(v) > 0 and all(s >= 0 for s in v)))
    budget: str = field(default="params", metadata=choice("params", "d_chi2"))  # what is held equal across maps


@dataclass(frozen=True)
class SweepConfig:
    """`distill sweep`: student families × sizes × seeds, all distilled the same way (the distill
    section) from one teacher; the baselines `dense` and `lowrank` are always included, matched to
    the budget levels (`distill.experiments.sweep`).

    families: entries {family: NAME, sizes: [...] (values of the family's size knob; omit them to
    match the budget levels), label: ..., any option of that family}; options not given come from
    the student section. compression: the budget levels as whole-network compression ratios
    (teacher parameters / student parameters); empty: the parameter counts of the first entry's
    sizes. max_size: the largest size budget matching tries.
    """

    families: tuple[dict, ...] = ()
    compression: tuple[float, ...] = field(default=(), metadata=check(
        "a list of numbers > 0", lambda v: all(c > 0 for c in v)))
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata=check(
        "a non-empty list of integers ≥ 0", lambda v: len(v) > 0 and all(s >= 0 for s in v)))
    max_size: int = field(default=1024, metadata=at_least(1))


@dataclass(frozen=True)
class RuntimeConfig:
    """How a run executes: checkpoints for resuming, devices for data parallelism."""

    checkpoint_every: int = field(default=1, metadata=at_least(1))  # epochs between TrainState checkpoints
    keep_checkpoints: int = field(default=2, metadata=at_least(1))  # newest checkpoints kept per training phase
    devices: int | None = field(default=None, metadata=at_least(1))  # None = every visible device
    # CPU devices JAX exposes (None = its default, one): e.g. the core count, so that data
    # parallelism spreads each batch over the cores (set before JAX starts: a fresh process)
    cpu_devices: int | None = field(default=None, metadata=at_least(1))


@dataclass(frozen=True)
class Config:
    """One experiment: data → teacher → student, with one seed for everything."""

    name: str = field(default="quickstart", metadata=check(
        "a name of letters, digits, '-', '_' and '.' (it names the run folder under runs/)",
        lambda v: bool(v) and v not in (".", "..") and all(c.isalnum() or c in "-_." for c in v)))
    seed: int = field(default=0, metadata=check("an integer in [0, 2**32)", lambda v: 0 <= v < 2**32))
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = DistillConfig()
    augment: AugmentConfig = AugmentConfig()
    compare: CompareConfig = CompareConfig()
    sweep: SweepConfig = SweepConfig()
    runtime: RuntimeConfig = RuntimeConfig()


# --------------------------------------------------------------------------- building


def _build_student(raw: Any, prefix: str) -> StudentConfig:
    """The student section: family + downsample + the family's options (+ other families' keys)."""
    if not isinstance(raw, dict):
        raise DistillError(f"config: {prefix.rstrip('.')} must be a mapping of keys to values, got {raw!r}")
    families = student_families()
    name = raw.get("family", "mps")
    name = check_field(StudentConfig, "family", name, f"{prefix}family")
    options_cls = family_options(name)
    # key → the family that declares it (the chosen one first)
    owners: dict[str, type] = {}
    for fam in [name, *families]:
        for f in dataclasses.fields(families[fam].Options):
            owners.setdefault(f.name, families[fam].Options)
    own, others = {}, []
    downsample = 1
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key == "family":
            continue
        if key == "downsample":
            downsample = check_field(StudentConfig, "downsample", value, dotted)
        elif key not in owners:
            raise DistillError(f"config: unknown key {dotted!r}"
                               f"{suggest(str(key), ['family', 'downsample', *owners], prefix)}")
        elif owners[key] is options_cls:
            own[key] = check_field(options_cls, key, value, dotted)
        else:
            others.append((key, check_field(owners[key], key, value, dotted)))
    return StudentConfig(family=name, downsample=downsample, options=options_cls(**own), others=tuple(others))


def _nested(tp: type, value: Any, dotted: str) -> Any:
    if tp is StudentConfig:
        return _build_student(value, dotted)
    return build(tp, value, dotted, _nested)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise DistillError(f"config: cannot set {key!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str, flag: str = "--set", example: str = "student.bond_dim=16") -> tuple[str, Any]:
    """'student.bond_dim=16' → ('student.bond_dim', 16); the value is read as YAML.
    Raises: DistillError naming `flag` for text without '=' or a value that is not YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise DistillError(f"{flag} {text!r}: expected key=value, e.g. {flag} {example}")
    try:
        return key, yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise DistillError(f"{flag} {text!r}: the value is not valid YAML") from None


def from_dict(raw: dict, overrides: typing.Iterable[str] = ()) -> Config:
    """Build a validated Config from a plain dict plus 'key=value' overrides."""
    tree = plain(raw)
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    return build(Config, tree, "", _nested)


def load_config(path: str | Path | None, overrides: typing.Iterable[str] = ()) -> Config:
    """Read a YAML experiment file (None = all defaults) and apply overrides.

    Raises: DistillError for a missing path, a folder, a file that is not UTF-8 text, YAML syntax
    errors (with line and column), an empty file, a file that is not a mapping, and every bad key
    or value (`from_dict`)."""
    raw: Any = {}
    if path is not None:
        path = Path(path)
        where = f"config file {str(path)!r}"
        if path.is_dir():
            raise DistillError(f"{where} is a folder; pass a YAML file (see configs/)")
        if not path.is_file():
            raise DistillError(f"{where} not found; pass an existing YAML file (see configs/)")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DistillError(f"{where} is not UTF-8 text (byte {err.start} cannot be decoded); pass a YAML "
                               "text file") from None
        except OSError as err:
            raise DistillError(f"cannot read {where} ({err.strerror or err})") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise DistillError(f"{where} is not valid YAML{at}: {problem}") from None
        if raw is None:
            raise DistillError(f"{where} is empty; write the keys to change (see configs/quickstart.yaml), or run "
                               "without a config for the quickstart defaults")
        if not isinstance(raw, dict):
            raise DistillError(f"{where} must be a mapping of sections (data:, teacher:, student:, ...), got "
                               f"{type(raw).__name__} {raw!r:.60}")
    return from_dict(raw, overrides)


def to_dict(cfg: Config) -> dict:
    """Plain, YAML/JSON-able dict (tuples become lists); the student section is flat again."""
    out = plain(cfg)
    s = cfg.student
    out["student"] = {"family": s.family, "downsample": s.downsample, **plain(s.options),
                      **{k: plain(v) for k, v in s.others}}
    return out


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def with_student(cfg: Config, family: str | None = None, **options) -> Config:
    """`cfg` with the student's family and/or options replaced (options of the resulting family)."""
    s = cfg.student
    family = s.family if family is None else family
    if family == s.family:
        opts = dataclasses.replace(s.options, **options)
    else:
        carried = {f.name: getattr(s.options, f.name) for f in dataclasses.fields(s.options)}
        carried.update(dict(s.others))
        cls = family_options(family)
        names = {f.name for f in dataclasses.fields(cls)}
        opts = cls(**{k: v for k, v in {**carried, **options}.items() if k in names})
    return dataclasses.replace(cfg, student=dataclasses.replace(s, family=family, options=opts))


def keys_text(width: int = 100) -> str:
    """Every config key, section by section (the student section per family), as wrapped text
    for `distill run --help`. Generated from the dataclasses, so it cannot drift from them."""
    import textwrap

    def fields_of(tp) -> list[str]:
        return [f.name for f in dataclasses.fields(tp)]

    def entry(head: str, names, indent: int = 2) -> str:
        return textwrap.fill(", ".join(names), width=width, initial_indent=" " * indent + head,
                             subsequent_indent=" " * (indent + 4))

    lines = ["config keys (YAML sections; any of them on the command line as --set SECTION.KEY=VALUE):",
             entry("", ["name", "seed"])]
    lines += [entry("data: ", fields_of(DataConfig)), entry("teacher: ", fields_of(TeacherConfig))]
    families = student_families()
    lines.append(entry("student: ", ["family (" + " | ".join(families) + ")", "downsample",
                                     "and the family's options:"]))
    def options_of(module) -> list[str]:  # "name {a|b}" where the values are a fixed set
        return [f.name + ("\u00a0{" + "|".join(f.metadata["choices"]) + "}" if f.metadata.get("choices") else "")
                for f in dataclasses.fields(module.Options)]

    lines += [entry(f"{fam} (size: {module.SIZE_KNOB}): ", options_of(module), indent=4)
              for fam, module in families.items()]
    lines += [entry("distill: ", fields_of(DistillConfig)), entry("augment: ", fields_of(AugmentConfig)),
              entry("runtime: ", fields_of(RuntimeConfig)),
              entry("compare: ", fields_of(CompareConfig)) + "   (distill compare-maps)",
              entry("sweep: ", fields_of(SweepConfig)) + "   (distill sweep)"]
    lines.append(textwrap.fill(
        "What each key means and allows: the comments of distill/config.py and of each family's Options "
        "(distill/students/<family>.py); the files in configs/ are commented examples. A wrong key or value "
        "is refused with one line that names it and what is allowed.", width=width))
    return "\n".join(lines)
