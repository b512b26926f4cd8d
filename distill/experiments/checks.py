"""Everything about a config that can be checked before the teacher trains, so a typo never
throws away a trained teacher: phases against the family, the student's input pipeline, the
student itself (built shape-only: feature map, output site, sizes), and the teacher it needs."""

from __future__ import annotations

from flax import nnx

from distill import students, teachers
from distill.config import Config
from distill.errors import DistillError
from distill.experiments.common import StudentInputs, build_student, check_phases, teacher_spec
from distill.teachers.network import Network

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


def check_student(cfg: Config, image_shape: tuple[int, int], n_classes: int, teacher) -> None:
    """Build the student shape-only (no arrays drawn): validates its feature map, output site,
    sizes and pairing on the real input shape. `teacher` may itself be shape-only."""
    check_teacher_for_student(cfg, teacher)
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
    nnx.eval_shape(lambda: build_student(cfg, xs, n_classes, teacher, None, warm_start=False))
