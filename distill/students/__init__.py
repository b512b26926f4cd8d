"""Students, one module per family, found by name.

A family module (`distill/students/<name>.py`) defines:

* `Options` — a frozen dataclass of the family's options (the keys of the config's `student`
  section it reads), with rules from `distill.options`;
* `SIZE_KNOB` — the name of the option that sets the student's size (searched by
  `distill.students.budget.match_budget`);
* `describe(options) -> str` — one phrase for reports;
* either `build(options, *, n_sites, image_shape, n_classes, site_order, seed) -> nnx.Module`
  (a *pixel* family: one model from the student's input sites to the logits), or
  `make_layer(options, n_in, n_out, *, dense, activation, input_range, seed, index, rngs)
  -> nnx.Module` (a *mirror* family: the replacement of one hidden dense layer of the teacher,
  returning pre-activations; `dense` is the teacher's (W (n_out, n_in), b) for a warm start, or
  None; `activation` the name of the teacher's activation of that layer). A mirror family may
  set `NEEDS_INPUT_SCALE = True`: its layer maps inputs onto [0, 1] with `input_range` =
  (offset (n_in,), scale (n_in,)), the teacher activations' observed range.

Adding a family is adding one such module (and its tests); nothing else changes.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from types import ModuleType

from distill.errors import DistillError

__all__ = ["families", "family", "is_mirror"]


@functools.cache
def families() -> dict[str, ModuleType]:
    """{name: module} of every student family in this package, sorted by name."""
    out = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "Options") and (hasattr(module, "build") or hasattr(module, "make_layer")):
            out[info.name] = module
    return out


def family(name: str) -> ModuleType:
    """The family module `name`; DistillError naming the families if it does not exist."""
    found = families()
    if name not in found:
        raise DistillError(f"unknown student family {name!r}; families: {', '.join(found)}")
    return found[name]


def is_mirror(name: str) -> bool:
    """Whether family `name` replaces the teacher's hidden layers (else it maps pixels to logits)."""
    return hasattr(family(name), "make_layer")
