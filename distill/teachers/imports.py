"""Bring a trained network in: one entry point for every import format.

`import_teacher(source, image_shape, arch=None)` reads
  * a PyTorch `nn.Sequential` state_dict as `.safetensors` or `.npz` plus an arch YAML
    (`distill.teachers.torch_state_dict`);
  * an `.onnx` graph (`distill.teachers.onnx_import`): a native network when it is a plain
    chain of supported operations, else a black box run by onnxruntime;
  * a Keras 3 `.keras` file (`distill.teachers.keras_import`; needs the `keras` extra);
  * a distill teacher checkpoint folder (`distill.teachers.store`).
Pickle-based formats (`.pt`, `.pth`, `.pkl`, `.ckpt`, `.bin`) are refused: loading them runs
arbitrary code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from distill.errors import DistillError
from distill.teachers.network import Network, load_params

__all__ = ["ImportedTeacher", "import_teacher", "FunctionTeacher", "PICKLE_SUFFIXES"]

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


@dataclass
class ImportedTeacher:
    """An imported teacher: the model (a `Network` or a black box), its format, and notes to
    show the user (a dropped softmax, why a graph runs as a black box)."""

    model: object
    format: str
    notes: list[str] = field(default_factory=list)


def import_teacher(source: str | Path, image_shape: tuple[int, int], arch: str | Path | dict | None = None
                   ) -> ImportedTeacher:
    """The teacher stored at `source`, for images of `image_shape` (H, W) (the dataset's, after
    data.downsample). `arch` (an arch YAML path or its dict) is required for a PyTorch state_dict
    and refused otherwise.
    Raises: DistillError for a pickle file, an unknown suffix, a missing file, or anything the
    format's importer refuses (one line each)."""
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise DistillError(f"{path.name} is a pickle file, which distill never loads (it can run arbitrary code); "
                           "save the state_dict with safetensors (safetensors.torch.save_file(model.state_dict(), "
                           "'model.safetensors')) and pass --arch, or export ONNX (torch.onnx.export)")
    if not path.exists():
        raise DistillError(f"no such file or folder: {path}")
    if suffix in (".safetensors", ".npz"):
        if arch is None:
            raise DistillError(f"{path.name} holds only weights; pass --arch ARCH.yaml listing the nn.Sequential's "
                               "modules (see README, 'Bring your own teacher')")
        from distill.teachers.torch_state_dict import import_torch_state_dict

        spec, params = import_torch_state_dict(path, arch, image_shape=tuple(image_shape))
        return ImportedTeacher(_native(spec, params), "pytorch state_dict", list(spec.get("notes", [])))
    if arch is not None:
        raise DistillError(f"--arch is only for PyTorch state_dicts (.safetensors, .npz); {path.name} carries its "
                           "own architecture")
    if suffix == ".onnx":
        from distill.teachers.onnx_import import import_onnx

        got = import_onnx(path, image_shape=tuple(image_shape))
        if isinstance(got, tuple):
            spec, params = got
            return ImportedTeacher(_native(spec, params), "onnx", list(spec.get("notes", [])))
        return ImportedTeacher(got, "onnx (black box)", [got.notice])
    if suffix == ".keras":
        from distill.teachers.keras_import import import_keras

        spec, params = import_keras(path, image_shape=tuple(image_shape))
        return ImportedTeacher(_native(spec, params), "keras", list(spec.get("notes", [])))
    if path.is_dir():
        from distill.teachers.store import load_teacher

        model, meta = load_teacher(path)
        return ImportedTeacher(model, "distill checkpoint")
    raise DistillError(f"{path.name}: unknown teacher format {suffix or '(no suffix)'!r}; pass a .safetensors or "
                       ".npz state_dict with --arch, an .onnx or .keras file, or a distill teacher folder")


def _native(spec: dict, params: dict) -> Network:
    from flax import nnx

    model = Network(spec, rngs=nnx.Rngs(0))
    load_params(model, params)
    model.eval()
    return model


class FunctionTeacher:
    """A teacher given as a plain Python function x (N, H*W*C) in [0, 1] → logits (N, classes):
    a black box (its logits are computed once per input by the caller, never differentiated).
    `input_shape` is (H, W, C)."""

    def __init__(self, fn: Callable, input_shape: tuple[int, int, int], n_classes: int):
        self._fn = fn
        self.input_shape = tuple(input_shape)
        self.n_classes = int(n_classes)

    @property
    def n_features(self) -> int:
        return int(np.prod(self.input_shape))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.asarray(self._fn(x), dtype=np.float32)
        if out.shape != (x.shape[0], self.n_classes):
            raise DistillError(f"the teacher function returned shape {out.shape} for {x.shape[0]} inputs; it must "
                               f"return logits of shape (N, {self.n_classes})")
        return out
