"""Site orderings: the order in which pixels become tensor-network sites."""

from __future__ import annotations

from numbers import Integral

import numpy as np

from distill.errors import DistillError

ORDERINGS = ("row_major", "snake", "column_major")

__all__ = ["ORDERINGS", "site_order"]


def site_order(image_shape: tuple[int, int], ordering: str) -> np.ndarray:
    """Order in which pixels become tensor-network sites.

    Returns an ``(H*W,)`` int32 permutation ``p``: site ``s`` holds row-major pixel ``p[s]``,
    so ``x[:, p]`` reorders row-major features. ``row_major``: ``arange``; ``column_major``:
    column by column; ``snake``: boustrophedon rows (row 0 left to right, row 1 right to
    left, ...).
    """
    if (
        not isinstance(image_shape, (tuple, list))
        or len(image_shape) != 2
        or not all(isinstance(s, Integral) and not isinstance(s, bool) and s > 0
                   for s in image_shape)
    ):
        raise DistillError(
            f"image_shape must be two positive integers (H, W), got {image_shape!r}"
        )
    h, w = int(image_shape[0]), int(image_shape[1])
    grid = np.arange(h * w, dtype=np.int32).reshape(h, w)
    if ordering == "row_major":
        order = grid.ravel()
    elif ordering == "column_major":
        order = grid.T.ravel()
    elif ordering == "snake":
        snake = grid.copy()
        snake[1::2] = snake[1::2, ::-1]
        order = snake.ravel()
    else:
        raise DistillError(
            f"unknown site ordering {ordering!r}; allowed: {', '.join(ORDERINGS)}"
        )
    return np.ascontiguousarray(order, dtype=np.int32)
