"""Image augmentation for function matching (Beyer et al. 2022, "Knowledge distillation: a good
teacher is patient and consistent"): random translations, horizontal flips, mixup and cutmix,
drawn from a JAX key inside the jitted training step, so teacher and student see the identical
augmented image.

`Augment` is a hashable record (a static argument of the step); `apply(x, key)` maps a batch of
flattened images x (B, H*W) in [0, 1] to (x′ (B, H*W), partner (B,) int32, lam (B,) float32):
each output image is lam·(its own augmented image) + (1 − lam)·(the augmented image of sample
`partner`) — mixup — or, for cutmix, a box of the partner's pasted in with lam the area kept.
Without mixing, partner = arange(B) and lam = 1. Labels mix the same way (`losses`).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

__all__ = ["Augment", "augment_copies"]


@dataclass(frozen=True)
class Augment:
    """translate: shift each image by up to ± this many pixels in each direction (zero padding);
    flip: mirror left-right with probability 1/2; mixup / cutmix: the Beta(α, α) parameter α
    (0 = off; with both on, each batch picks one of the two at random); image_shape: (H, W)."""

    image_shape: tuple[int, int]
    translate: int = 0
    flip: bool = False
    mixup: float = 0.0
    cutmix: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.translate or self.flip or self.mixup or self.cutmix)

    def apply(self, x: Array, key: Array) -> tuple[Array, Array, Array]:
        b = x.shape[0]
        h, w = self.image_shape
        img = x.reshape(b, h, w)
        k_shift, k_flip, k_perm, k_lam, k_box, k_which = jax.random.split(key, 6)
        if self.translate:
            img = _translate(img, k_shift, self.translate)
        if self.flip:
            flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1))
            img = jnp.where(flip, img[:, :, ::-1], img)
        partner = jnp.arange(b, dtype=jnp.int32)
        lam = jnp.ones((b,), img.dtype)
        if self.mixup or self.cutmix:
            partner = jax.random.permutation(k_perm, b).astype(jnp.int32)
            other = img[partner]
            mixed_m, lam_m = img, lam
            mixed_c, lam_c = img, lam
            if self.mixup:
                lam_m = jax.random.beta(k_lam, self.mixup, self.mixup, (b,)).astype(img.dtype)
                mixed_m = lam_m[:, None, None] * img + (1 - lam_m[:, None, None]) * other
            if self.cutmix:
                mixed_c, lam_c = _cutmix(img, other, k_box, self.cutmix)
            if self.mixup and self.cutmix:
                use_mix = jax.random.bernoulli(k_which, 0.5)
                img = jnp.where(use_mix, mixed_m, mixed_c)
                lam = jnp.where(use_mix, lam_m, lam_c)
            else:
                img, lam = (mixed_m, lam_m) if self.mixup else (mixed_c, lam_c)
        return img.reshape(b, h * w), partner, lam


def _translate(img: Array, key: Array, k: int) -> Array:
    """Shift every image by its own (dy, dx) ∈ [−k, k]²: pad by k, crop back at the offset."""
    b, h, w = img.shape
    offsets = jax.random.randint(key, (b, 2), 0, 2 * k + 1)
    padded = jnp.pad(img, ((0, 0), (k, k), (k, k)))

    def crop(im, off):
        return jax.lax.dynamic_slice(im, (off[0], off[1]), (h, w))

    return jax.vmap(crop)(padded, offsets)


def _cutmix(img: Array, other: Array, key: Array, alpha: float) -> tuple[Array, Array]:
    """Paste a box of `other` into each image (Yun et al. 2019); lam = fraction of pixels kept."""
    b, h, w = img.shape
    k_lam, k_y, k_x = jax.random.split(key, 3)
    lam = jax.random.beta(k_lam, alpha, alpha, (b,))
    cut = jnp.sqrt(1.0 - lam)
    bh, bw = jnp.floor(cut * h).astype(jnp.int32), jnp.floor(cut * w).astype(jnp.int32)
    cy = jax.random.randint(k_y, (b,), 0, h)
    cx = jax.random.randint(k_x, (b,), 0, w)
    y0, y1 = jnp.clip(cy - bh // 2, 0, h), jnp.clip(cy + (bh + 1) // 2, 0, h)
    x0, x1 = jnp.clip(cx - bw // 2, 0, w), jnp.clip(cx + (bw + 1) // 2, 0, w)
    rows = jnp.arange(h)[None, :, None]
    cols = jnp.arange(w)[None, None, :]
    box = ((rows >= y0[:, None, None]) & (rows < y1[:, None, None])
           & (cols >= x0[:, None, None]) & (cols < x1[:, None, None]))
    mixed = jnp.where(box, other, img)
    kept = 1.0 - jnp.sum(box, axis=(1, 2)).astype(img.dtype) / (h * w)
    return mixed, kept


def augment_copies(aug: Augment, x: np.ndarray, y: np.ndarray, copies: int, seed: int,
                   batch: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`copies` augmented copies of the whole set, for a black-box teacher that labels each copy
    once: returns (x′ (copies·N, H*W), y (copies·N,), y_partner, lam) with the mixing partners'
    labels and weights. Deterministic in `seed`."""
    fn = jax.jit(aug.apply)
    xs, ys, y2s, lams = [], [], [], []
    for c in range(copies):
        for start in range(0, len(x), batch):
            key = jax.random.fold_in(jax.random.key(seed), c * 1_000_003 + start)
            xb, yb = x[start:start + batch], y[start:start + batch]
            xa, partner, lam = fn(jnp.asarray(xb), key)
            xs.append(np.asarray(xa))
            ys.append(yb)
            y2s.append(yb[np.asarray(partner)])
            lams.append(np.asarray(lam))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(y2s), np.concatenate(lams)
