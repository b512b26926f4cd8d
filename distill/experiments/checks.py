"""Everything about a config that can be checked before the teacher trains, so a typo never
throws away a trained teacher: phases against the family, the student's input pipeline, the
student itself (built shape-only: feature map, output site, sizes), and the teacher it needs."""

from __future__ import annotations

import numpy as np
from flax import nnx

from distill import students, teachers
from distill.config import Config
from distill.errors import DistillError
from distill.experiments.common import StudentInputs, build_student, check_phases, teacher_spec
from distill.teachers.network import Network
from distill.tn.feature_maps import feature_map_names

__all__ = ["check_config", "check_student", "check_teacher_for_student", "shape_only_teacher"]


def check_config(cfg: Config) -> None:
    """Static checks (no data needed). Raises: DistillError naming the key to change."""
    check_phases(cfg)
    if students.is_mirror(cfg.student.family) and cfg.student.downsample != 1:
        raise DistillError(f"student.downsample={cfg.student.downsample} only applies to pixel families "
                           "(student.family=mps); a mirror student reads the teacher's inputs (set it to 1, or "
                           "data.downsample to pool for both)")
    digits = cfg.data.name in ("digits", "mnist", "tfds:mnist")
    for key, on in (("augment.flip", cfg.augment.flip), ("teacher.flip", cfg.teacher.flip)):
        if on and digits:
            raise DistillError(f"config: {key} = true would change the class of {cfg.data.name} digits (a "
                               "mirrored 2 is not a 2); set it to false")
    if cfg.teacher.checkpoint is None and cfg.teacher.arch == "mlp" and not cfg.teacher.hidden:
        raise DistillError("config: teacher.hidden is empty; an MLP teacher needs at least one hidden layer")


def shape_only_teacher(cfg: Config, image_shape: tuple[int, int], n_classes: int) -> Network:
    """The teacher the config would train, without arrays (nnx.eval_shape)."""
    spec = teacher_spec(cfg.teacher, image_shape, n_classes)
    return nnx.eval_shape(lambda: Network(spec, rngs=nnx.Rngs(0)))


def check_teacher_for_student(cfg: Config, teacher) -> None:
    """Raises: DistillError if the student's family cannot be built on this teacher."""
    if students.is_mirror(cfg.student.family) and not teachers.is_native(teacher):
        raise DistillError(f"student.family={cfg.student.family} replaces the teacher's layers, but this teacher is a "
                           "black box (only its logits are known); use student.family=mps (one MPS trained end to "
                           "end on the teacher's logits)")


#: Parameters, gradients and two Adam moments, float32: bytes per trainable parameter in training.
_TRAIN_BYTES_PER_PARAM = 16


def machine_memory() -> int:
    """Bytes of physical memory of this machine."""
    import os

    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_memory(what: str, size_key: str, batch_key: str, params: int, activations: int) -> None:
    """Raises: DistillError naming the key of the larger term when training `params` parameters
    with `activations` bytes of activations per step would not fit in this machine's memory."""
    weights = params * _TRAIN_BYTES_PER_PARAM
    need = weights + activations
    have = machine_memory()
    if need > 0.8 * have:
        key = size_key if weights >= activations else batch_key
        raise DistillError(f"{what} would need about {_gib(need)} to train ({params:,} parameters, "
                           f"{_gib(activations)} of activations per step) but this machine has {_gib(have)}; "
                           f"lower {key}")


def _built(what: str, keys: str, build):
    """Run a shape-only build; sizes so large that shapes overflow become a one-line error."""
    try:
        return nnx.eval_shape(build)
    except DistillError:
        raise
    except (OverflowError, ValueError, TypeError, MemoryError) as err:
        raise DistillError(f"{what} cannot be built with these sizes ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:120] if str(err) else ''}); lower {keys}") from None


def check_teacher_size(cfg: Config, image_shape: tuple[int, int], n_classes: int, n_train: int) -> None:
    """The teacher the config would train fits in memory (checked before anything trains)."""
    from distill.nn import param_count

    keys = "teacher.hidden" if cfg.teacher.arch == "mlp" else "teacher.conv_channels / teacher.hidden"
    spec = teacher_spec(cfg.teacher, image_shape, n_classes)
    model = _built("the teacher", keys, lambda: Network(spec, rngs=nnx.Rngs(0)))
    widths = _layer_widths(spec)
    check_memory("the teacher", keys, "teacher.batch_size", param_count(model),
                 4 * 4 * min(cfg.teacher.batch_size, n_train) * sum(widths))


def _layer_widths(spec: dict) -> list[int]:
    from distill.teachers.network import check_spec

    return [int(np.prod(shape)) for shape in check_spec(spec)[1]]


def check_student(cfg: Config, image_shape: tuple[int, int], n_classes: int, teacher, n_train: int | None = None
                  ) -> None:
    """Build the student shape-only (no arrays drawn): validates its feature map, output site,
    sizes and pairing on the real input shape, and that it fits in memory. `teacher` may itself
    be shape-only."""
    check_teacher_for_student(cfg, teacher)
    name = getattr(cfg.student.options, "feature_map", None)
    if name is not None and name not in feature_map_names():
        from distill.nn.features import _unknown_map_error

        raise DistillError(f"student.feature_map: {str(_unknown_map_error(name)).removeprefix('MPS: ')}")
    k = cfg.student.downsample
    h, w = image_shape
    if not students.is_mirror(cfg.student.family):
        if h % k or w % k:
            raise DistillError(f"student.downsample={k} does not divide the {h}x{w} images; choose a factor of both")
        if (h // k) * (w // k) < 2:
            raise DistillError(f"student.downsample={k} leaves {(h // k) * (w // k)} pixel(s) of the {h}x{w} images: "
                               "an MPS needs at least 2 sites; lower student.downsample")
        shape = (h // k, w // k)
    else:
        shape = image_shape
    xs = StudentInputs({}, shape)
    knob = f"student.{students.family(cfg.student.family).SIZE_KNOB}"
    built = _built("the student", knob, lambda: build_student(cfg, xs, n_classes, teacher, None, warm_start=False))
    from distill.nn import param_count

    # activations: the MPS keeps (batch, sites, χ) vectors per step; mirror students the teacher's widths
    chi = getattr(cfg.student.options, "bond_dim", 1)
    batch = cfg.distill.batch_size if n_train is None else min(cfg.distill.batch_size, n_train)
    acts = batch * shape[0] * shape[1] * chi * 4 * 8
    check_memory("the student", knob, "distill.batch_size", param_count(built), acts)
