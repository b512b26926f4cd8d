"""The teacher checkpoint format: one folder that `teacher.checkpoint` accepts in any config.

    path/
      teacher.json   {"format": "distill.teacher", "version": 2, "kind": "network" | "onnx",
                      "spec": <network spec> (kind network), "metadata": {...}}
      params/        kind network: orbax checkpoint of the Param and BatchStat arrays
      model.onnx     kind onnx: the graph run as a black box by onnxruntime

`metadata` records what a run needs to check the teacher fits its data: `dataset`,
`image_shape` [H, W] (after data.downsample), `downsample`, and `test_accuracy`, `source`
(how it was made); `layer_names` lists the activations a layer-wise run can read. Version 1 folders (the MLP teachers of earlier distill
versions: spec {"kind": "mlp", ...}) are read too. Saving is atomic (`distill.io`); loading
reads JSON only (never pickle/eval) and checks every array's path, shape and dtype.
"""

from __future__ import annotations

import json
from pathlib import Path

from flax import nnx

from distill.errors import DistillError
from distill.io import _json_text, _one_line, _restore_params_into, _write_checkpoint_dir
from distill.teachers.frozen import is_native
from distill.teachers.network import Network, mlp_spec

__all__ = ["TEACHER_JSON", "ONNX_FILE", "save_teacher", "load_teacher", "describe_checkpoint"]

TEACHER_JSON = "teacher.json"
ONNX_FILE = "model.onnx"
_FORMAT = "distill.teacher"
_VERSION = 2


def _arrays(model: Network) -> nnx.State:
    return nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))


def save_teacher(teacher, path: str | Path, metadata: dict) -> None:
    """Atomically write `teacher` (a native `Network`, or a black-box ONNX teacher: anything with
    an `onnx_bytes` property) and `metadata` (JSON values) as a teacher checkpoint folder `path`;
    an existing teacher checkpoint there is replaced.
    Raises: DistillError for a teacher of another kind or metadata that is not JSON."""
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise DistillError(f"teacher metadata must be a dict of JSON values, got {type(metadata).__name__}")
    path = Path(path).expanduser().absolute()
    if is_native(teacher):
        if not isinstance(teacher, Network):
            raise DistillError(f"save_teacher expects a distill Network teacher, got {type(teacher).__name__}")
        doc = {"format": _FORMAT, "version": _VERSION, "kind": "network", "spec": teacher.spec,
               "layer_names": list(teacher.activation_names), "metadata": metadata}
        _write_checkpoint_dir(path, nnx.to_pure_dict(_arrays(teacher)), TEACHER_JSON,
                              _json_text(doc, "teacher metadata"), "teacher checkpoint")
        return
    blob = getattr(teacher, "onnx_bytes", None)
    if blob is None:
        raise DistillError(f"save_teacher cannot store a {type(teacher).__name__}: only distill networks and "
                           "ONNX black boxes have a checkpoint format")
    doc = {"format": _FORMAT, "version": _VERSION, "kind": "onnx", "spec": None, "metadata": metadata}
    _write_checkpoint_dir(path, None, TEACHER_JSON, _json_text(doc, "teacher metadata"), "teacher checkpoint",
                          files={ONNX_FILE: blob})


_RETRAIN = "re-create it with `distill teacher CONFIG` or `distill import-teacher`"


def _read_doc(path: Path) -> dict:
    jpath = path / TEACHER_JSON
    if not path.exists():
        raise DistillError(f"no teacher checkpoint at {path}; train one with `distill teacher CONFIG` or import "
                           "one with `distill import-teacher`")
    if not path.is_dir():
        raise DistillError(f"{path} is a file, not a teacher checkpoint folder; bring a trained network in with "
                           f"`distill import-teacher {path.name} --data NAME` first, then point teacher.checkpoint "
                           "at the folder it writes")
    if not jpath.is_file():
        raise DistillError(f"{path} is not a teacher checkpoint ({TEACHER_JSON} is missing); {_RETRAIN}")
    try:
        doc = json.loads(jpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DistillError(f"{jpath} is not valid JSON ({_one_line(err)}); the checkpoint is corrupt, {_RETRAIN}") \
            from None
    if not isinstance(doc, dict) or not isinstance(doc.get("metadata", {}), dict):
        raise DistillError(f"{jpath} lacks a 'metadata' object; the checkpoint is corrupt, {_RETRAIN}")
    version = doc.get("version", 1)
    if version == 1:  # an MLP teacher of an earlier distill version
        spec = doc.get("spec")
        meta = doc.get("metadata", {})
        if not isinstance(spec, dict) or spec.get("kind") != "mlp":
            raise DistillError(f"{jpath} lacks an 'mlp' spec; the checkpoint is corrupt, {_RETRAIN}")
        try:
            shape = meta.get("image_shape") or (1, spec["in_features"])
            new = mlp_spec(spec["in_features"], spec["hidden"], spec["n_classes"], spec["activation"], shape)
        except (KeyError, TypeError) as err:
            raise DistillError(f"{jpath} has an incomplete mlp spec ({_one_line(err)}); {_RETRAIN}") from None
        return {"kind": "network", "spec": new, "metadata": meta}
    if version != _VERSION or doc.get("kind") not in ("network", "onnx"):
        raise DistillError(f"{jpath} is a teacher checkpoint of an unknown version or kind ({version}, "
                           f"{doc.get('kind')!r}); upgrade distill or {_RETRAIN}")
    return doc


def load_teacher(path: str | Path) -> tuple[object, dict]:
    """Load a teacher checkpoint folder; returns (teacher, metadata).

    The teacher is a `Network` (kind network, or a version-1 MLP) with its trained arrays, or a
    black-box ONNX teacher (kind onnx). Raises: DistillError for a missing, corrupt or
    mismatched folder (one line naming the file and what to do)."""
    path = Path(path).expanduser().absolute()
    doc = _read_doc(path)
    metadata = dict(doc.get("metadata", {}))
    if doc["kind"] == "onnx":
        from distill.teachers.onnx_import import load_black_box

        onnx_path = path / ONNX_FILE
        if not onnx_path.is_file():
            raise DistillError(f"teacher checkpoint {path} lacks {ONNX_FILE}; it is incomplete, {_RETRAIN}")
        shape = metadata.get("image_shape")
        if not shape:
            raise DistillError(f"teacher checkpoint {path} records no image_shape; {_RETRAIN}")
        return load_black_box(onnx_path, tuple(shape)), metadata
    try:
        model = Network(doc["spec"], rngs=nnx.Rngs(0))
    except DistillError as err:
        raise DistillError(f"invalid spec in {path / TEACHER_JSON}: {err}") from None
    except Exception as err:  # noqa: BLE001 - wrong JSON types in the spec
        raise DistillError(f"invalid spec in {path / TEACHER_JSON} ({_one_line(err)}); {_RETRAIN}") from None
    arrays = _arrays(model)
    _restore_params_into(path, arrays, f"the spec in {TEACHER_JSON}", _RETRAIN)
    nnx.update(model, arrays)
    model.eval()
    return model, metadata


def describe_checkpoint(teacher, metadata: dict) -> str:
    """One line: what the teacher is (its layers, or a black box) and where it came from."""
    if is_native(teacher):
        kinds = [layer["type"] for layer in teacher.spec["layers"]]
        arch = "CNN" if "conv" in kinds else "MLP"
        widths = [str(layer["out_features"]) for layer in teacher.spec["layers"] if layer["type"] == "dense"]
        what = f"{arch} ({len(kinds)} layers, dense widths {'-'.join(widths)})"
    else:
        what = "black-box ONNX graph"
    source = metadata.get("source")
    return what + (f", {source}" if source else "")
