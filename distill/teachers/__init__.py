"""Frozen teacher networks: the spec-driven `Network` (MLPs, CNNs, imported chains), import
formats, the checkpoint format and frozen forward passes."""

from distill.teachers.frozen import frozen_activations, frozen_logits, is_native
from distill.teachers.imports import FunctionTeacher, ImportedTeacher, import_teacher
from distill.teachers.network import Network, cnn_spec, lenet5_spec, load_params, mlp_spec
from distill.teachers.store import TEACHER_JSON, describe_checkpoint, load_teacher, save_teacher

__all__ = ["Network", "load_params", "mlp_spec", "cnn_spec", "lenet5_spec", "save_teacher", "load_teacher",
           "describe_checkpoint", "TEACHER_JSON", "frozen_logits", "frozen_activations", "is_native",
           "import_teacher", "ImportedTeacher", "FunctionTeacher"]
