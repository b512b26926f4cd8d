"""The Python entry points, in one place: load or import a teacher, distil it, load a student.

    import distill
    teacher = distill.import_teacher("lenet.onnx", data="fashion_mnist")     # or distill.load_teacher(folder)
    folder, results = distill.distil(teacher, "configs/fashion_mps.yaml")  # any teacher, even a function
    student = distill.load_student(folder)                                 # raw pixels (N, H*W) in [0, 1] → logits
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

__all__ = ["load_teacher", "import_teacher", "distil", "load_student", "load_config"]


def load_teacher(path: str | Path):
    """The teacher of a teacher checkpoint folder (`distill teacher`, `distill run`, `distill
    import-teacher`): a `distill.teachers.Network`, or a black box for a non-native ONNX graph."""
    from distill.teachers import load_teacher as _load

    return _load(path)[0]


def import_teacher(source: str | Path, data: str | None = None, *, image_shape: tuple[int, int] | None = None,
                   arch: str | Path | dict | None = None, data_dir: str | None = None):
    """A network trained elsewhere as a teacher, in memory (nothing written): a PyTorch
    state_dict (.safetensors / .npz, with `arch`), an .onnx or a .keras file. The image size
    comes from `image_shape` (H, W) or from dataset `data`."""
    from distill.errors import DistillError
    from distill.teachers import import_teacher as _import

    if image_shape is None:
        if data is None:
            raise DistillError("import_teacher needs data= (a dataset name) or image_shape=(H, W)")
        from distill.data import load_dataset

        image_shape = load_dataset(data, data_dir=data_dir, val_fraction=0.0).image_shape
    return _import(source, tuple(image_shape), arch).model


def load_config(config: str | Path | None = None, overrides: Iterable[str] = ()):
    """A validated Config from a YAML file (None: the digits quickstart defaults) and overrides."""
    from distill.config import load_config as _load

    return _load(config, list(overrides))


def distil(teacher=None, config=None, overrides: Iterable[str] = (), *, out: str | Path | None = None,
           progress: bool = True) -> tuple[Path, dict]:
    """Distil `teacher` as the config says and write a run folder; returns (folder, results).

    teacher: a `Network`, a black box, a plain function x (N, H*W) in [0, 1] → logits (N, classes),
    or None (the config's teacher: trained, or teacher.checkpoint). config: a YAML path, a Config,
    or None (quickstart defaults). A black box or a function teaches pixel families only
    (student.family mps, trained end to end on its logits)."""
    from distill.config import Config
    from distill.experiments import run as pipeline

    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    return pipeline.run(cfg, out, progress, teacher=teacher)


def load_student(run_dir: str | Path):
    """The trained student of a run folder as an nnx module: raw pixels (N, H*W) in [0, 1] of the
    run dataset's size → logits (N, classes). For repeated predictions use
    `distill.nn.inference_copy(student, batch)` (what `distill predict` runs): the same outputs with
    the weights' layouts formed once — the Fashion MPS student is 5.6× faster that way at batch 1
    (`docs/bench/bench_inference.json`)."""
    from distill.students.store import load_student as _load

    return _load(run_dir)
