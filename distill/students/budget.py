"""Budget matching: the size of a student that has (closest to) a given parameter count."""

from __future__ import annotations

from distill import students
from distill.students.mirror import mirror_param_count

__all__ = ["match_budget"]


def match_budget(family: str, opts, teacher, target_params: int, *, max_size: int = 256, seed: int = 0):
    """(options with the family's size knob set so the mirror student's parameter count is
    closest to `target_params`, that count). Counts come from abstract (shape-only) builds;
    ties go to the smaller size."""
    import dataclasses

    knob = students.family(family).SIZE_KNOB

    def count(size: int) -> int:
        return mirror_param_count(family, dataclasses.replace(opts, **{knob: size}), teacher, seed)

    # Parameter counts grow monotonically with the knob: bisect for the crossing, then take the closer side.
    lo, hi = 1, max_size
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) < target_params:
            lo = mid + 1
        else:
            hi = mid
    best = min(sorted({max(lo - 1, 1), lo}), key=lambda s: abs(count(s) - target_params))
    return dataclasses.replace(opts, **{knob: best}), count(best)
