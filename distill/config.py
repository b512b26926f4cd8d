"""Typed, frozen experiment configs: YAML files, dotted overrides, one-line validation errors.

A config is a tree of frozen dataclasses. `load_config(path, overrides)` reads a YAML file
(or the defaults when `path` is None), applies `key=value` overrides such as
`student.bond_dim=16`, checks every key, type and value, and returns a `Config`. Every
problem is a `DistillError` whose message names the key and says what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill.errors import DistillError


def _check(rule: str, ok: typing.Callable[[Any], bool], *, choices: tuple[str, ...] = ()) -> dict:
    """Field metadata: `ok(value)` must hold; `rule` tells the user what is allowed."""
    return {"rule": rule, "ok": ok, "choices": choices}


def _positive(kind: str = "number") -> dict:
    return _check(f"a {kind} > 0", lambda v: v > 0)


def _at_least(n: int) -> dict:
    return _check(f"an integer ≥ {n}", lambda v: v >= n)


def _choice(*names: str) -> dict:
    return _check("one of " + ", ".join(names), lambda v: v in names, choices=names)


def _fraction(lo_open: bool, hi_open: bool) -> dict:
    lo, hi = ("(" if lo_open else "["), (")" if hi_open else "]")

    def ok(v: float) -> bool:
        return (v > 0 if lo_open else v >= 0) and (v < 1 if hi_open else v <= 1)

    return _check(f"a number in {lo}0, 1{hi}", ok)


DATASET_NAMES = ("digits", "fashion_mnist", "mnist")


@dataclass(frozen=True)
class DataConfig:
    """Which data, how it is scaled and split. Inputs are always scaled to [0, 1]."""

    name: str = field(default="digits", metadata=_check(
        "digits, fashion_mnist, mnist or tfds:<name>",
        lambda v: v in DATASET_NAMES or (v.startswith("tfds:") and len(v) > 5),
        choices=DATASET_NAMES))
    data_dir: str | None = None  # IDX folder or TFDS data_dir; None = the default place
    downsample: int = field(default=1, metadata=_at_least(1))  # average-pool factor (28→14: 2)
    ordering: str = field(default="row_major", metadata=_choice("row_major", "snake", "column_major"))
    val_fraction: float = field(default=0.1, metadata=_fraction(lo_open=False, hi_open=True))
    train_fraction: float = field(default=1.0, metadata=_fraction(lo_open=True, hi_open=False))


@dataclass(frozen=True)
class TeacherConfig:
    """A dense MLP teacher: trained here, or loaded from `checkpoint` and kept frozen."""

    hidden: tuple[int, ...] = field(default=(256, 256), metadata=_check(
        "a non-empty list of integers ≥ 1", lambda v: len(v) > 0 and all(h >= 1 for h in v)))
    activation: str = field(default="relu", metadata=_choice("relu", "tanh", "gelu", "sigmoid"))
    checkpoint: str | None = None  # a folder written by `distill teacher`; None = train one
    epochs: int = field(default=60, metadata=_at_least(1))
    batch_size: int = field(default=64, metadata=_at_least(1))
    lr: float = field(default=1e-3, metadata=_positive())
    weight_decay: float = field(default=0.0, metadata=_check("a number ≥ 0", lambda v: v >= 0))
    schedule: str = field(default="cosine", metadata=_choice("constant", "cosine"))


FAMILIES = ("mps", "mps_layers", "tt", "lowrank", "dense")
MODES = ("end_to_end", "layerwise", "staged", "labels_only")


@dataclass(frozen=True)
class StudentConfig:
    """The student.

    family: `mps` is one MPS over the input pixels that outputs the logits directly; the
    others mirror the teacher: every hidden layer is replaced by a layer of that family
    (`mps_layers` MPS layers, `tt` TT-matrix layers, `lowrank` W = A·B, `dense` a small
    dense bottleneck) and the teacher's output layer is kept as a trainable dense head.
    """

    family: str = field(default="mps", metadata=_choice(*FAMILIES))
    # Extra k×k average pooling of the student's input on top of data.downsample: the teacher
    # keeps the full-resolution input while the MPS runs over fewer sites (28×28 → 14×14: 2).
    downsample: int = field(default=1, metadata=_at_least(1))
    # MPS families
    feature_map: str = field(default="trig", metadata=_check("a registered feature-map name", lambda v: bool(v)))
    feature_dim: int = field(default=2, metadata=_at_least(2))
    feature_params: dict = field(default_factory=dict)  # extra map parameters, e.g. {scale: 1.0}
    pairing: str | None = field(default=None, metadata=_choice("neighbour", "random"))  # pairwise maps only
    pairing_seed: int | None = field(default=None, metadata=_check("an integer ≥ 0", lambda v: v >= 0))  # None = seed
    # Pairwise maps read inputs shifted by this (None = 1.0): [x_a, x_a·x_b] is the zero vector
    # wherever x_a = 0, which zeroes the whole MPS on images; 0.0 gives the seed's literal map.
    pair_shift: float | None = None
    bond_dim: int = field(default=8, metadata=_at_least(1))
    output_site: int | None = field(default=None, metadata=_at_least(1))  # None = middle
    init_std: float = field(default=0.01, metadata=_check("a number ≥ 0", lambda v: v >= 0))
    # How MPS chains are contracted (all give the same values): None = chosen from shape and
    # backend (CPU: scan); see distill.tn.mps.contract.
    contraction: str | None = field(default=None, metadata=_choice("scan", "tree", "chunked"))
    # Factorised families (tt, lowrank) and the dense bottleneck
    rank: int = field(default=8, metadata=_at_least(1))
    tt_factors: int = field(default=4, metadata=_at_least(2))  # cores per TT layer (modes chosen automatically)
    # How a TT layer multiplies (all give the same values): None = chosen from shape and backend;
    # see distill.tn.tt.tt_matvec.
    tt_method: str | None = field(default=None, metadata=_choice("cores", "split", "dense"))
    hidden_width: int = field(default=32, metadata=_at_least(1))  # dense family: in → width → out
    warm_start: bool = True  # tt: TT-SVD of the teacher's W, lowrank: truncated SVD, head: teacher's


@dataclass(frozen=True)
class DistillConfig:
    """How the student learns: KD on logits (Hinton et al. 2015), layer by layer, or both.

    mode: `end_to_end` KD on the teacher's logits; `layerwise` each student layer fits the
    teacher's a^{l-1} → a^l (MSE); `staged` layerwise then end_to_end fine-tuning;
    `labels_only` the same student trained on labels alone (the control).
    """

    mode: str = field(default="end_to_end", metadata=_choice(*MODES))
    temperature: float = field(default=4.0, metadata=_positive())
    alpha: float = field(default=0.9, metadata=_fraction(lo_open=False, hi_open=False))
    epochs: int = field(default=100, metadata=_at_least(1))
    batch_size: int = field(default=64, metadata=_at_least(1))
    lr: float = field(default=1e-3, metadata=_positive())
    weight_decay: float = field(default=0.0, metadata=_check("a number ≥ 0", lambda v: v >= 0))
    schedule: str = field(default="cosine", metadata=_choice("constant", "cosine"))
    grad_clip: float | None = field(default=1.0, metadata=_positive())  # global norm; None = off
    # layer-by-layer phase (modes layerwise and staged)
    layer_target: str = field(default="post", metadata=_choice("post", "pre"))  # match post- or pre-activations
    layer_epochs: int = field(default=10, metadata=_at_least(1))
    layer_lr: float = field(default=1e-3, metadata=_positive())


@dataclass(frozen=True)
class CompareConfig:
    """`distill compare-maps`: the same MPS student with each feature map, over several seeds,
    distilled end to end.

    Each entry of `maps` is a mapping with `name` plus that map's parameters, and optionally
    `pairing` (neighbour | random) for pairwise maps, e.g. {name: fourier, order: 1}.
    """

    maps: tuple[dict, ...] = ()
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata=_check(
        "a non-empty list of integers ≥ 0", lambda v: len(v) > 0 and all(s >= 0 for s in v)))
    budget: str = field(default="params", metadata=_choice("params", "d_chi2"))  # what is held equal across maps


@dataclass(frozen=True)
class Config:
    """One experiment: data → teacher → student, with one seed for everything."""

    name: str = "quickstart"
    seed: int = field(default=0, metadata=_check("an integer ≥ 0", lambda v: v >= 0))
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    distill: DistillConfig = DistillConfig()
    compare: CompareConfig = CompareConfig()


# --------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('an ').removeprefix('a ')}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false",
            dict: "a mapping"}.get(tp, str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return `value` as type `tp`, or raise a DistillError naming `key`."""
    origin = typing.get_origin(tp)
    if tp is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise DistillError(f"config: {key} = {value!r} is not allowed: expected a mapping of names to values, "
                               "e.g. {order: 2}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is tuple:
        (item,) = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if not isinstance(value, (list, tuple)):
            example = {int: "[64, 64]", dict: "[{name: trig}, {name: poly, degree: 2}]"}.get(item, "[...]")
            raise DistillError(f"config: {key} = {value!r} is not allowed: expected {_type_name(tp)}, e.g. {example}")
        return tuple(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads '2e-3' (no dot) as a string; accept any spelling Python reads as a number.
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        str: lambda v: isinstance(v, str),
    }[tp]
    if not ok(value):
        raise DistillError(f"config: {key} = {value!r} is not allowed: expected {_type_name(tp)}")
    return float(value) if tp is float else value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise DistillError(f"config: {prefix or 'the file'} must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise DistillError(f"config: unknown key {dotted!r}{_suggest(str(key), fields, prefix)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{dotted}.")
            continue
        value = _coerce(dotted, value, tp)
        meta = fields[key].metadata
        if value is not None and meta and not meta["ok"](value):
            hint = ""
            if meta["choices"] and isinstance(value, str):
                close = difflib.get_close_matches(value, meta["choices"], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DistillError(f"config: {dotted} = {value!r} is not allowed: must be {meta['rule']}{hint}")
        kwargs[key] = value
    return cls(**kwargs)


def _suggest(key: str, fields: dict, prefix: str) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {prefix + close[0]!r}?"
    return f"; allowed keys here: {', '.join(prefix + f for f in fields)}"


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise DistillError(f"config: cannot set {key!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'student.bond_dim=16' → ('student.bond_dim', 16); the value is read as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise DistillError(f"--set {text!r}: expected key=value, e.g. --set student.bond_dim=16")
    try:
        return key, yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise DistillError(f"--set {text!r}: the value is not valid YAML") from None


def from_dict(raw: dict, overrides: typing.Iterable[str] = ()) -> Config:
    """Build a validated Config from a plain dict plus 'key=value' overrides."""
    tree = _plain(raw)
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    return _build(Config, tree, "")


def load_config(path: str | Path | None, overrides: typing.Iterable[str] = ()) -> Config:
    """Read a YAML experiment file (None = all defaults) and apply overrides."""
    raw: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DistillError(f"config file {str(path)!r} not found; pass an existing YAML file (see configs/)")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0] if str(err) else "syntax error"
            raise DistillError(f"config file {str(path)!r} is not valid YAML: {first}") from None
    return from_dict(raw, overrides)


def to_dict(cfg: Config) -> dict:
    """Plain, YAML/JSON-able dict (tuples become lists)."""
    return _plain(dataclasses.asdict(cfg))


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _plain(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_plain(v) for v in tree]
    return tree
