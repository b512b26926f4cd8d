"""A trained student on disk, and back as a ready nnx module that reads raw pixels.

    <run>/student/
      state.json    {"format": "distill.state", ..., "metadata": {"student": <student spec>}}
      params/       orbax checkpoint of the whole module state (cores, site order, pairing
                    partners, input ranges, BatchNorm statistics)

The student spec says how to rebuild the module before its arrays are restored: the family and
its options, the seed, and its input pipeline — the dataset's image shape, the average pooling
applied before the student (data.downsample × student.downsample) — plus, for a mirror student,
the teacher's network spec. `load_student(run_dir)` returns `PixelStudent`: raw images in
[0, 1] in, logits out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax import Array

from distill import students
from distill.data.orderings import DATA_ORDERINGS, site_order
from distill.errors import DistillError
from distill.io import load_state, save_state
from distill.students.mirror import build_mirror
from distill.teachers.network import Network

__all__ = ["PixelStudent", "student_spec", "save_student", "load_student", "build_from_spec"]

SPEC_VERSION = 1


class PixelStudent(nnx.Module):
    """A student behind its input pipeline: x (B, H*W) raw pixels in [0, 1] of the dataset's
    native (H, W) → average-pooled k×k (k = `pool`) → the student → logits (B, classes)."""

    def __init__(self, inner: nnx.Module, image_shape: tuple[int, int], pool: int):
        self.inner = inner
        self.image_shape = tuple(int(a) for a in image_shape)
        self.pool = int(pool)

    @property
    def n_features(self) -> int:
        return self.image_shape[0] * self.image_shape[1]

    def __call__(self, x: Array) -> Array:
        h, w = self.image_shape
        if x.ndim != 2 or x.shape[1] != h * w:
            raise DistillError(f"the student expects inputs of shape (N, {h * w}) ({h}x{w} images, pixels in [0, 1]), "
                               f"got {tuple(x.shape)}")
        k = self.pool
        if k > 1:
            x = x.reshape(x.shape[0], h // k, k, w // k, k).mean(axis=(2, 4)).reshape(x.shape[0], -1)
        return self.inner(x)


def student_spec(cfg, *, image_shape: tuple[int, int], data_downsample: int, n_classes: int,
                 teacher_spec: dict | None) -> dict:
    """The JSON record `build_from_spec` rebuilds the student from. image_shape: the dataset's
    native (H, W) before any pooling; the student reads it pooled by data_downsample ×
    student.downsample."""
    import flax
    import optax

    from distill import __version__
    from distill.options import plain

    s = cfg.student
    return {
        "version": SPEC_VERSION,
        "family": s.family,
        "options": plain(s.options),
        "seed": cfg.seed,
        "ordering": cfg.data.ordering,
        "ordering_seed": cfg.seed if cfg.data.ordering_seed is None else cfg.data.ordering_seed,
        "image_shape": [int(a) for a in image_shape],
        "data_downsample": int(data_downsample),
        "student_downsample": int(s.downsample),
        "n_classes": int(n_classes),
        "teacher_spec": teacher_spec,
        "versions": {"distill": __version__, "jax": jax.__version__, "flax": flax.__version__,
                     "optax": optax.__version__, "numpy": np.__version__},
        "command": " ".join(sys.argv),
    }


def build_from_spec(spec: dict) -> nnx.Module:
    """The student module (without its pooling) the spec describes, with fresh arrays."""
    try:
        family = students.family(spec["family"])
        opts = family.Options(**spec["options"])
        seed = int(spec["seed"])
        h, w = spec["image_shape"]
        k = int(spec["data_downsample"]) * int(spec["student_downsample"])
    except (KeyError, TypeError, ValueError) as err:
        raise DistillError(f"the student spec is incomplete or from another version ({type(err).__name__}: {err}); "
                           "re-run the training that wrote it") from None
    if students.is_mirror(spec["family"]):
        teacher = Network(spec["teacher_spec"], rngs=nnx.Rngs(0))
        return build_mirror(spec["family"], opts, teacher, None, seed=seed, warm_start=False)
    shape = (h // k, w // k)
    return family.build(opts, n_sites=shape[0] * shape[1], image_shape=shape, n_classes=int(spec["n_classes"]),
                        site_order=_spec_order(spec, shape, seed), seed=seed)


def _spec_order(spec: dict, shape: tuple[int, int], seed: int) -> np.ndarray:
    """The site order to build the module with before its state is restored. The saved state holds the
    order actually used (its SiteOrder variable), so any permutation would do: a geometric or seeded
    random order is rebuilt as recorded; a data-driven one (`correlation`) needs the training data,
    so it starts as the identity and comes back with the state."""
    ordering = spec.get("ordering", "row_major")
    if ordering in DATA_ORDERINGS:
        return np.arange(shape[0] * shape[1], dtype=np.int32)
    return site_order(shape, ordering, seed=int(spec.get("ordering_seed", seed)))


def save_student(student: nnx.Module, path: Path, spec: dict) -> None:
    """Atomically write the student's whole state and its spec to the folder `path`."""
    save_state(student, path, {"student": spec})


def _read_spec(folder: Path) -> dict:
    state_json = folder / "state.json"
    if not state_json.is_file():
        raise DistillError(f"{folder} holds no student (state.json is missing); pass a run folder written by "
                           "`distill run`")
    try:
        spec = json.loads(state_json.read_text(encoding="utf-8"))["metadata"]["student"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DistillError(f"{state_json} does not describe a student (written by an older distill?); re-run the "
                           "training that wrote it") from None
    return spec


def load_student(run_dir: str | Path) -> PixelStudent:
    """The trained student of a run folder, ready to call on raw pixels (B, H*W) in [0, 1].

    Raises: DistillError for a folder without a student or one that does not match its spec."""
    run_dir = Path(run_dir).expanduser()
    folder = run_dir / "student" if (run_dir / "student").is_dir() else run_dir
    if not folder.is_dir():
        raise DistillError(f"no run folder at {run_dir}; pass the folder `distill run` printed")
    spec = _read_spec(folder)
    inner = build_from_spec(spec)
    load_state(inner, folder)
    inner.eval()
    k = int(spec["data_downsample"]) * int(spec["student_downsample"])
    return PixelStudent(inner, tuple(spec["image_shape"]), k)


def spec_of(run_dir: str | Path) -> dict:
    """The student spec recorded in a run folder."""
    run_dir = Path(run_dir).expanduser()
    folder = run_dir / "student" if (run_dir / "student").is_dir() else run_dir
    return _read_spec(folder)
