"""Frozen teacher networks: the models, their checkpoint format and frozen forward passes."""

from distill.io import load_state, save_state
from distill.nn.common import ACTIVATIONS
from distill.teachers.frozen import frozen_activations, frozen_logits
from distill.teachers.mlp import MLP, mlp_from_spec
from distill.teachers.store import TEACHER_JSON, load_teacher, save_teacher

__all__ = ["ACTIVATIONS", "MLP", "mlp_from_spec", "save_teacher", "load_teacher", "save_state", "load_state",
           "frozen_logits", "frozen_activations", "TEACHER_JSON"]
