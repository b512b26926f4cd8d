"""The teacher checkpoint format (a DIRECTORY at ``path``)::

    path/
      teacher.json   {"format": "distill.teacher", "version": 1,
                      "spec": MLP.spec, "metadata": {...caller's metadata...}}
      params/        orbax StandardCheckpointer checkpoint of the nnx.Param state

Saving is atomic (`distill.io`); loading reads JSON only (never pickle/eval) and restores the
arrays against the abstract state of the network rebuilt from ``spec``, so shapes and dtypes
are checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from distill.errors import DistillError
from distill.io import (
    _json_text,
    _one_line,
    _restore_params_into,
    _write_checkpoint_dir,
)
from distill.teachers.mlp import MLP, mlp_from_spec

TEACHER_JSON = "teacher.json"
_FORMAT = "distill.teacher"
_VERSION = 1


def _param_pure_dict(model: MLP) -> dict:
    """{"hidden_0": {"kernel": Array, "bias": Array}, ...} of the nnx.Param state."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def save_teacher(model: MLP, path: str | Path, metadata: dict) -> None:
    """Atomically write ``model`` (params via orbax) and ``spec`` + ``metadata`` (JSON) to
    the checkpoint directory ``path``; an existing teacher checkpoint there is replaced."""
    if not isinstance(model, MLP):
        raise DistillError(f"save_teacher expects a distill MLP teacher, got {type(model).__name__}")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise DistillError(
            f"teacher metadata must be a dict, got {type(metadata).__name__}; pass a dict of "
            "JSON values"
        )
    doc = {"format": _FORMAT, "version": _VERSION, "spec": model.spec, "metadata": metadata}
    text = _json_text(doc, "teacher metadata")
    path = Path(path).expanduser().absolute()
    _write_checkpoint_dir(path, _param_pure_dict(model), TEACHER_JSON, text, "teacher checkpoint")


def _read_teacher_json(path: Path) -> dict:
    jpath = path / TEACHER_JSON
    if not jpath.is_file():
        raise DistillError(
            f"{path} is not a teacher checkpoint ({TEACHER_JSON} is missing); "
            "train one with `distill teacher CONFIG`"
        )
    try:
        doc = json.loads(jpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DistillError(
            f"{jpath} is not valid JSON ({_one_line(err)}); the checkpoint is corrupt, "
            "retrain with `distill teacher CONFIG`"
        ) from None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("spec"), dict)
        or not isinstance(doc.get("metadata", {}), dict)
    ):
        raise DistillError(
            f"{jpath} lacks a 'spec' object (or 'metadata' is not an object); the checkpoint "
            "is corrupt, retrain with `distill teacher CONFIG`"
        )
    return doc


def _json_norm(value: Any) -> Any:
    """Normalise through JSON so tuples compare equal to lists, etc."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return value


def _fmt(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


_MISSING = object()


def _check_expected(path: Path, spec: dict, metadata: dict, expected: dict) -> None:
    if not isinstance(expected, dict):
        raise DistillError(f"expected must be a dict of spec/metadata values, got {expected!r}")
    clauses = []
    for key, want in expected.items():
        have = spec[key] if key in spec else metadata.get(key, _MISSING)
        if have is _MISSING:
            clauses.append(f"records no {key} but the config says {_fmt(want)}")
        elif _json_norm(have) != _json_norm(want):
            clauses.append(f"was trained with {key}={_fmt(have)} but the config says {_fmt(want)}")
    if clauses:
        raise DistillError(
            f"teacher checkpoint at {path} {'; and '.join(clauses)}; retrain the teacher "
            "with `distill teacher CONFIG` or fix the config to match"
        )


def load_teacher(path: str | Path, expected: dict | None = None) -> tuple[MLP, dict]:
    """Load a checkpoint written by :func:`save_teacher`; returns ``(model, metadata)``.

    ``expected`` maps spec keys (in_features, hidden, n_classes, activation) and/or metadata
    keys (dataset, downsample, ...) to the values the caller's config requires; any that
    differ from what the checkpoint recorded raise DistillError naming both values.
    """
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise DistillError(
            f"no teacher checkpoint at {path}; train one with `distill teacher CONFIG`"
        )
    if not path.is_dir():
        raise DistillError(
            f"{path} is a file, not a teacher checkpoint directory; point to the directory "
            "written by `distill teacher CONFIG`"
        )
    doc = _read_teacher_json(path)
    spec, metadata = doc["spec"], dict(doc.get("metadata", {}))
    if expected:
        _check_expected(path, spec, metadata, expected)

    try:
        abstract = nnx.eval_shape(lambda: mlp_from_spec(spec))
    except DistillError as err:
        raise DistillError(f"invalid spec in {path / TEACHER_JSON}: {err}") from None
    except Exception as err:  # wrong JSON types in the spec, e.g. a string width
        raise DistillError(
            f"invalid spec in {path / TEACHER_JSON} ({_one_line(err)}); retrain with "
            "`distill teacher CONFIG`"
        ) from None
    graphdef, abs_params, rest = nnx.split(abstract, nnx.Param, ...)
    if len(jax.tree.leaves(rest)):  # an MLP only holds Params
        raise DistillError("internal: teacher MLP holds non-Param state")  # pragma: no cover

    _restore_params_into(
        path, abs_params, f"the spec in {TEACHER_JSON}", "retrain with `distill teacher CONFIG`"
    )
    model = nnx.merge(graphdef, abs_params, rest)
    return model, metadata
