"""Typed option records for configs: field rules and the one-line errors that enforce them.

A config section (and each student family's options) is a frozen dataclass. A field may carry
a rule in its metadata (`check`, `positive`, `at_least`, `choice`, `fraction`); `build` turns a
plain mapping into the dataclass, coercing YAML values to the field types and refusing anything
else with a `DistillError` that names the dotted key and what is allowed. This module is below
`distill.config` and the student families, which both describe their options with it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Callable

from distill.errors import DistillError

__all__ = ["check", "positive", "at_least", "choice", "fraction", "non_negative", "build", "coerce",
           "suggest", "plain"]


def check(rule: str, ok: Callable[[Any], bool], *, choices: tuple[str, ...] = ()) -> dict:
    """Field metadata: `ok(value)` must hold; `rule` tells the user what is allowed."""
    return {"rule": rule, "ok": ok, "choices": choices}


def positive(kind: str = "number") -> dict:
    return check(f"a {kind} > 0", lambda v: v > 0)


def non_negative() -> dict:
    return check("a number ≥ 0", lambda v: v >= 0)


def at_least(n: int) -> dict:
    return check(f"an integer ≥ {n}", lambda v: v >= n)


def choice(*names: str) -> dict:
    return check("one of " + ", ".join(names), lambda v: v in names, choices=names)


def fraction(lo_open: bool, hi_open: bool) -> dict:
    lo, hi = ("(" if lo_open else "["), (")" if hi_open else "]")

    def ok(v: float) -> bool:
        return (v > 0 if lo_open else v >= 0) and (v < 1 if hi_open else v <= 1)

    return check(f"a number in {lo}0, 1{hi}", ok)


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


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Return `value` as type `tp`, or raise a DistillError naming `key`."""
    origin = typing.get_origin(tp)
    if tp is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise DistillError(f"config: {key} = {value!r} is not allowed: expected a mapping of names to values, "
                               "e.g. {order: 2}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1:  # e.g. str | tuple[str, ...]: the first type that accepts the value
            for a in inner:
                try:
                    return coerce(key, value, a)
                except DistillError:
                    continue
            raise DistillError(f"config: {key} = {value!r} is not allowed: expected {_type_name(tp)}")
        return coerce(key, value, inner[0])
    if origin is tuple:
        (item,) = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if not isinstance(value, (list, tuple)):
            example = {int: "[64, 64]", dict: "[{name: trig}, {name: poly, degree: 2}]",
                       str: "[a, b]"}.get(item, "[...]")
            raise DistillError(f"config: {key} = {value!r} is not allowed: expected {_type_name(tp)}, e.g. {example}")
        return tuple(coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
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


def check_field(cls: type, name: str, value: Any, dotted: str) -> Any:
    """`value` coerced to field `name` of dataclass `cls` and checked against its rule."""
    tp = typing.get_type_hints(cls)[name]
    value = coerce(dotted, value, tp)
    meta = {f.name: f for f in dataclasses.fields(cls)}[name].metadata
    if value is not None and meta and "ok" in meta and not meta["ok"](value):
        hint = ""
        if meta["choices"] and isinstance(value, str):
            close = difflib.get_close_matches(value, meta["choices"], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DistillError(f"config: {dotted} = {value!r} is not allowed: must be {meta['rule']}{hint}")
    return value


def suggest(key: str, allowed: typing.Iterable[str], prefix: str) -> str:
    """'; did you mean …?' or the list of allowed keys, for an unknown key."""
    allowed = list(allowed)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {prefix + close[0]!r}?"
    return f"; allowed keys here: {', '.join(prefix + f for f in allowed)}"


def build(cls: type, raw: Any, prefix: str, nested: Callable[[type, Any, str], Any] | None = None) -> Any:
    """The dataclass `cls` from the mapping `raw`; every key and value is checked.

    `prefix` is the dotted path of `raw` ('student.'); `nested(tp, value, dotted)` builds fields
    whose type is itself a dataclass (default: `build` recursively)."""
    if not isinstance(raw, dict):
        raise DistillError(f"config: {prefix.rstrip('.') or 'the file'} must be a mapping of keys to values, "
                           f"got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise DistillError(f"config: unknown key {dotted!r}{suggest(str(key), fields, prefix)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = (nested or build)(tp, value, f"{dotted}.")
            continue
        kwargs[key] = check_field(cls, key, value, dotted)
    return cls(**kwargs)


def plain(tree: Any) -> Any:
    """Plain, YAML/JSON-able nested dicts and lists (tuples become lists)."""
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return {f.name: plain(getattr(tree, f.name)) for f in dataclasses.fields(tree)}
    if isinstance(tree, dict):
        return {k: plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [plain(v) for v in tree]
    return tree
