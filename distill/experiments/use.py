"""The student after training: evaluate it on a dataset, predict with it, export it; and bring a
teacher in (`import_teacher`). These only read a run folder; what they write goes elsewhere."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from distill import teachers, train
from distill.config import Config, load_config
from distill.data import downsample, load_dataset
from distill.errors import DistillError
from distill.experiments.common import chance_level
from distill.students.store import PixelStudent, load_student, spec_of

__all__ = ["import_teacher", "evaluate", "predict", "export", "run_config"]


def run_config(run_dir: str | Path) -> Config:
    """The resolved config a run folder recorded.
    Raises: DistillError if `run_dir` is not a run folder."""
    path = Path(run_dir).expanduser() / "config.yaml"
    if not path.is_file():
        raise DistillError(f"{run_dir} is not a run folder (config.yaml is missing); pass the folder `distill run` "
                           "printed")
    return load_config(path)


def import_teacher(source: str | Path, data: str, *, arch: str | Path | None = None, data_dir: str | None = None,
                   downsample_by: int = 1, out: str | Path | None = None) -> tuple[Path, dict]:
    """Import a trained network (`distill.teachers.imports`), measure its accuracy on the test split
    of dataset `data`, and write a teacher checkpoint folder that `teacher.checkpoint` accepts.
    Returns (folder, summary {accuracy, format, layer_names, notes, black_box}).
    Raises: DistillError for anything the importer refuses, an input shape that does not fit the
    data, or an existing output folder."""
    source = Path(source).expanduser()
    final = Path(out) if out is not None else Path("runs") / f"{source.stem}-teacher"
    if final.exists():
        raise DistillError(f"output folder {final} already exists; choose another --out")
    ds = load_dataset(data, data_dir=data_dir, downsample=downsample_by, val_fraction=0.0, seed=0)
    imported = teachers.import_teacher(source, ds.image_shape, arch)
    model = imported.model
    logits = teachers.frozen_logits(model, ds.x_test)
    if logits.shape[1] != ds.num_classes:
        raise DistillError(f"the imported network has {logits.shape[1]} outputs but {data} has {ds.num_classes} "
                           "classes; import a classifier of this dataset")
    acc = train.losses.accuracy(logits, ds.y_test)
    chance = chance_level(acc, ds.y_test)
    if chance is not None:
        imported.notes.append(f"{100 * acc:.1f} % on {data}'s test split is chance level ({100 * chance:.1f} %): "
                              "distill run will refuse this teacher; check the dataset and the input "
                              "preprocessing (the arch file's input: mean, std, layout)")
    meta = {"dataset": ds.name, "downsample": downsample_by, "image_shape": list(ds.image_shape),
            "test_accuracy": acc, "source": f"imported from {source.name} ({imported.format})",
            "notes": imported.notes}
    teachers.save_teacher(model, final, meta)
    native = teachers.is_native(model)
    summary = {"accuracy": acc, "format": imported.format, "notes": imported.notes, "black_box": not native,
               "layer_names": list(model.activation_names) if native else [],
               "params": None if not native else _param_count(model)}
    return final, summary


def _param_count(model) -> int:
    from distill.nn import param_count

    return param_count(model)


def _native_pixels(cfg: Config, data: str | None, data_dir: str | None):
    """The dataset at its native resolution (no pooling): name, x_test, y_test, image shape."""
    name = data or cfg.data.name
    ds = load_dataset(name, data_dir=data_dir if data_dir is not None else (cfg.data.data_dir if data is None
                                                                            else None),
                      downsample=1, val_fraction=0.0, seed=0)
    return ds


def evaluate(run_dir: str | Path, data: str | None = None, data_dir: str | None = None) -> dict:
    """Accuracy of the run's student on the test split of `data` (default: the run's dataset), and
    its agreement and KL(teacher ‖ student) with the run's teacher when the teacher is available.
    Returns a dict of numbers (fractions; KL in nats).
    Raises: DistillError for a folder without a student or data of another image size."""
    cfg = run_config(run_dir)
    student = load_student(run_dir)
    ds = _native_pixels(cfg, data, data_dir)
    _check_shape(student, ds.image_shape, ds.name)
    z = train.predict(student, ds.x_test)
    out = {"dataset": ds.name, "n_test": int(len(ds.y_test)), "accuracy": train.losses.accuracy(z, ds.y_test),
           "agreement": None, "kl": None, "teacher_accuracy": None}
    teacher = _run_teacher(run_dir, cfg)
    if teacher is not None:
        k = cfg.data.downsample
        x_t, _ = downsample(ds.x_test, ds.image_shape, k)
        t = teachers.frozen_logits(teacher, x_t)
        ev = train.evaluate(z, t, ds.y_test)
        out.update(agreement=ev.agreement, kl=ev.kl, teacher_accuracy=train.losses.accuracy(t, ds.y_test))
    return out


def _run_teacher(run_dir: str | Path, cfg: Config):
    folder = Path(run_dir) / "teacher"
    if (folder / teachers.TEACHER_JSON).is_file():
        return teachers.load_teacher(folder)[0]
    if cfg.teacher.checkpoint is not None and Path(cfg.teacher.checkpoint).exists():
        return teachers.load_teacher(cfg.teacher.checkpoint)[0]
    return None


def _check_shape(student: PixelStudent, image_shape, name: str) -> None:
    if tuple(student.image_shape) != tuple(image_shape):
        h, w = student.image_shape
        raise DistillError(f"the student reads {h}x{w} images but {name} has {image_shape[0]}x{image_shape[1]}; "
                           "evaluate it on a dataset of its own image size")


def predict(run_dir: str | Path, inputs: str | Path, out: str | Path) -> np.ndarray:
    """Logits (N, classes) of the run's student for the images in the .npy file `inputs` —
    (N, H, W) or (N, H*W), pixels in [0, 1], at the run dataset's native size — written to the
    .npy file `out` (atomically). Returns the logits.
    Raises: DistillError for a missing file, one that is not a plain .npy array (.npz, text, pickled
    objects), an `out` that is the input or does not end in .npy or lies in a missing folder, a wrong
    shape, non-finite pixels (the first named) or values outside [0, 1]."""
    student = load_student(run_dir)
    path = Path(inputs).expanduser()
    out = Path(out).expanduser()
    if not path.is_file():
        raise DistillError(f"no such file: {path}")
    if out.suffix != ".npy":
        raise DistillError(f"--out {out}: the logits are written as a .npy array; give a name ending in .npy")
    if out.exists() and out.resolve() == path.resolve():
        raise DistillError(f"--out {out} is the input file; choose another name so the images are not overwritten")
    with path.open("rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY":
        kind = "an .npz archive" if magic[:2] == b"PK" else "not a .npy file"
        raise DistillError(f"{path} is {kind}; save one array of images with np.save(path, array)")
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise DistillError(f"{path} is not a plain .npy array ({err}); save it with np.save(path, array)") from None
    if x.dtype.kind not in "fiu":
        raise DistillError(f"{path.name} holds {x.dtype} values; pass pixel values as numbers in [0, 1]")
    h, w = student.image_shape
    if x.ndim == 3 and x.shape[1:] == (h, w):
        x = x.reshape(x.shape[0], h * w)
    if x.ndim != 2 or x.shape[1] != h * w:
        raise DistillError(f"{path.name} holds an array of shape {x.shape}; the student reads (N, {h}, {w}) or "
                           f"(N, {h * w}) images")
    if not len(x):
        raise DistillError(f"{path.name} holds no images")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DistillError(f"{path.name}: pixels must be finite; image {row}, pixel {col} is {x[row, col]}")
    if x.min() < 0.0 or x.max() > 1.0:
        raise DistillError(f"{path.name}: pixels must be in [0, 1] (found {x.min():g} to {x.max():g}); divide by the "
                           "format's maximum (255 for 8-bit images, 16 for scikit-learn's digits)")
    logits = train.predict(student, x)
    _write_output(out, _npy_bytes(logits))
    return logits


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _write_output(path: Path, blob: bytes) -> None:
    """Atomically, into an existing folder (predict and export alike)."""
    from distill.io import write_bytes_atomic

    try:
        write_bytes_atomic(path, blob)
    except OSError as err:
        raise DistillError(f"cannot write {path} ({err.strerror or err}); choose a writable --out in an existing "
                           "folder") from None


def export(run_dir: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """Write the run's student as `fmt`:
    * "safetensors": every array of the student's state under its dotted path, with the student
      spec (JSON) in the file's metadata — enough to rebuild it with `distill.load_student`'s recipe;
    * "onnx": the whole inference function (pooling included; raw pixels (N, H*W) in [0, 1] → logits
      (N, classes), dynamic batch) converted by jax2onnx and checked against JAX with onnxruntime.
    Returns the written file. Raises: DistillError for an unknown format or a failed conversion."""
    run_dir = Path(run_dir).expanduser()
    student = load_student(run_dir)
    if fmt not in ("safetensors", "onnx"):
        raise DistillError(f"unknown export format {fmt!r}; use safetensors or onnx")
    path = Path(out).expanduser() if out is not None else run_dir / f"student.{fmt}"
    if path.suffix != f".{fmt}":
        raise DistillError(f"--out {path}: the {fmt} export is written to a name ending in .{fmt}")
    if fmt == "safetensors":
        blob = _safetensors_bytes(student, spec_of(run_dir))
    else:
        blob = _onnx_bytes(student)
    _write_output(path, blob)
    return path


def _safetensors_bytes(student: PixelStudent, spec: dict) -> bytes:
    import jax
    from flax import nnx
    from safetensors.numpy import save

    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(student.inner)))[0]:
        key = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        flat[key] = np.ascontiguousarray(np.asarray(leaf))
    return save(flat, metadata={"distill.student": json.dumps(spec)})


def onnx_names_used(graph) -> set[str]:
    """Every tensor name a node of `graph` or of its subgraphs (Scan / Loop / If bodies, which may
    read the outer graph's initializers) reads, and the graph's outputs."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                used |= onnx_names_used(sub)
    return used


def onnx_subgraphs(graph):
    """`graph` and every graph nested in its nodes' attributes (Scan / Loop / If bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from onnx_subgraphs(sub)


def _drop_unused_initializers(graph) -> None:
    """Remove the initializers no node reads, in the graph and in every body nested in it (jax2onnx
    leaves some behind; onnxruntime then prints a "Removing initializer" warning per tensor on every
    load). A body may read its outer graph's initializers, so each graph keeps what it or any graph
    nested in it reads."""
    for g in onnx_subgraphs(graph):
        used = onnx_names_used(g)
        keep = [t for t in g.initializer if t.name in used]
        if len(keep) < len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(keep)


def _onnx_bytes(student: PixelStudent) -> bytes:
    import jax2onnx
    import onnxruntime as ort
    from flax import nnx

    fixed = nnx.clone(student)
    for _, module in nnx.iter_modules(fixed):  # the batch is symbolic in the export: no choice by batch size
        prepare = getattr(module, "prepare_export", None)
        if prepare is not None:
            prepare()
    graphdef, state = nnx.split(fixed)

    def infer(x):
        return nnx.merge(graphdef, state)(x)

    n = student.n_features
    # onnx_ir logs a WARNING per value whose type it cannot serialise (shape helpers of the
    # symbolic batch); the model is checked against JAX below, so that noise is not the user's.
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    try:
        model = jax2onnx.to_onnx(infer, [("B", n)])
    except Exception as err:  # noqa: BLE001 - jax2onnx lacks a primitive the student uses
        raise DistillError(f"jax2onnx could not convert this student ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}); export safetensors instead") from None
    _drop_unused_initializers(model.graph)
    blob = model.SerializeToString()
    x = np.random.default_rng(0).uniform(size=(3, n)).astype(np.float32)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    except Exception as err:  # noqa: BLE001 - onnxruntime refuses a node of the converted graph
        raise DistillError(f"onnxruntime cannot run the converted student ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:200] if str(err) else ''}); export safetensors instead") from None
    want = np.asarray(infer(x))
    if not np.allclose(got, want, rtol=1e-4, atol=1e-4):
        raise DistillError(f"the ONNX export differs from the student by {np.abs(got - want).max():.3g}; export "
                           "safetensors instead")
    return blob
