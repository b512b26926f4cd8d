"""Training phases, one module per phase, found by name; a run applies them in order.

A phase module (`distill/phases/<name>.py`) defines:

* `USES_TEACHER` — whether the phase learns from the teacher (if any phase of a run does, the
  student is warm-started from the teacher where its family allows);
* `NEEDS_MIRROR` — whether it needs a mirror student (one whose hidden layers replace the
  teacher's: layer-wise fits do);
* `run(ctx: PhaseContext, student, settings) -> PhaseResult` — trains `student` in place.

`distill.mode` lists the phases (`[layerwise, end_to_end]`) or names a shorthand
(`distill.config.MODE_SHORTHANDS`). Adding a phase is adding one such module.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import numpy as np

from distill.errors import DistillError

__all__ = ["phases", "phase", "PhaseContext", "PhaseResult"]


@functools.cache
def phases() -> dict[str, ModuleType]:
    """{name: module} of every phase in this package."""
    out = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "run") and hasattr(module, "USES_TEACHER"):
            out[info.name] = module
    return out


def phase(name: str) -> ModuleType:
    found = phases()
    if name not in found:
        raise DistillError(f"unknown training phase {name!r}; phases: {', '.join(found)}")
    return found[name]


@dataclass
class PhaseContext:
    """What a phase may read. x[split] are the student's inputs (N, n_in) for split train / val /
    test, y[split] the labels, teacher_logits[split] the frozen teacher's logits (None for a run
    without teacher phases); `teacher_layers()` returns the teacher's activations that layer-wise
    fits read (computed once, on first use); `checkpoint(name)` the Checkpointing of a training
    run inside the phase (None: no checkpoints); `first` whether this is the run's first phase.
    With `augment` set, phases train on `images` augmented in the step (`feed`)."""

    distill: Any  # distill.config.DistillConfig
    seed: int
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    teacher_logits: dict[str, np.ndarray] | None
    teacher_layers: Callable[[], Any]
    checkpoint: Callable[[str], Any]
    devices: int | None = None
    progress: bool = True
    label: str = "student"
    first: bool = True
    # function matching: raw training images (teacher resolution), the augmentation (None: off),
    # the teacher itself, the student's pooling of the raw images, copies for a black-box teacher
    images: np.ndarray | None = None
    image_shape: tuple[int, int] | None = None
    augment: Any = None
    teacher: Any = None
    pool: int = 1
    copies: int = 4

    def feed(self, *, with_teacher: bool, source: str | None = None, target: str = "logits"):
        """The step's Feed for a phase that trains on augmented images (None without augmentation)."""
        if self.augment is None:
            return None
        from flax import nnx

        from distill.train.step import Feed

        graphdef = None
        if with_teacher:
            self.teacher.eval()
            graphdef = nnx.split(self.teacher)[0]
        return Feed(self.image_shape, self.augment, 1 if source else self.pool, graphdef, source, target)


@dataclass
class PhaseResult:
    """stage: the name under which the test accuracy after this phase is reported; curves:
    {curve name: History.as_dict()} for the training-curve plot; layers: per replaced layer
    {target name: History.as_dict()} (layer-wise phases)."""

    stage: str
    curves: dict[str, dict] = field(default_factory=dict)
    layers: dict[str, dict] | None = None
