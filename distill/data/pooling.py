"""Average pooling of flattened images (a student over fewer sites than its teacher sees pixels)."""

from __future__ import annotations

import numpy as np

from distill.data.datasets import _check_int
from distill.errors import DistillError

__all__ = ["downsample"]


def downsample(x: np.ndarray, image_shape: tuple[int, int], k: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Average-pool flattened images k×k: x (N, H*W) → ((N, H/k * W/k), (H/k, W/k)).

    Used for a student that runs over fewer sites than its teacher sees pixels.
    """
    h, w = image_shape
    k = _check_int(k, "downsample factor", minimum=1)
    if h % k or w % k:
        raise DistillError(f"cannot downsample {h}x{w} images by {k}: both sides must be divisible by it")
    if k == 1:
        return x, (h, w)
    pooled = x.reshape(x.shape[0], h // k, k, w // k, k).mean(axis=(2, 4), dtype=np.float32)
    return np.ascontiguousarray(pooled.reshape(x.shape[0], -1)), (h // k, w // k)
