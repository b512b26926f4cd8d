"""Phase `end_to_end`: KD on the frozen teacher's logits (Hinton et al. 2015):
α·τ²·KL(softmax(z_t/τ) ‖ softmax(z_s/τ)) + (1−α)·CE(y, z_s), best epoch by validation accuracy.

With augmentation on (function matching, Beyer et al. 2022) the teacher labels the student's own
augmented images: in the training step for a native teacher, or once for `copies` augmented
copies of the training set for a black-box teacher."""

from __future__ import annotations

import numpy as np

from distill import teachers, train
from distill.data.augment import augment_copies
from distill.phases import PhaseContext, PhaseResult

USES_TEACHER = True
NEEDS_MIRROR = False


def settings(d, seed: int) -> train.TrainSettings:
    """The distillation phases' optimisation settings from the distill section."""
    return train.TrainSettings(epochs=d.epochs, batch_size=d.batch_size, lr=d.lr, weight_decay=d.weight_decay,
                               schedule=d.schedule, grad_clip=d.grad_clip, seed=seed + 1,
                               warmup_epochs=d.warmup_epochs, ema=d.ema)


def pool(x: np.ndarray, image_shape: tuple[int, int], k: int) -> np.ndarray:
    from distill.data import downsample

    return downsample(x, image_shape, k)[0]


def run(ctx: PhaseContext, student) -> PhaseResult:
    d = ctx.distill
    common = dict(temperature=d.temperature, alpha=d.alpha, ckpt=ctx.checkpoint("end_to_end"), devices=ctx.devices,
                  desc=ctx.label, progress=ctx.progress)
    val = train.Validation(ctx.x["val"], ctx.y["val"])
    if ctx.augment is None:
        hist = train.end_to_end(student, ctx.x["train"], ctx.teacher_logits["train"], ctx.y["train"], val,
                                settings(d, ctx.seed), **common)
    elif teachers.is_native(ctx.teacher):
        hist = train.end_to_end(student, ctx.images, None, ctx.y["train"], val, settings(d, ctx.seed),
                                feed=ctx.feed(with_teacher=True), teacher=ctx.teacher, **common)
    else:  # a black box labels K augmented copies once
        xa, y, y2, lam = augment_copies(ctx.augment, ctx.images, ctx.y["train"], ctx.copies, ctx.seed)
        t = teachers.frozen_logits(ctx.teacher, xa)
        hist = train.fit(student, train.losses.KD(d.temperature, d.alpha), pool(xa, ctx.image_shape, ctx.pool),
                         {"t": t, "y": y, "y2": y2, "lam": lam}, settings(d, ctx.seed), val=val,
                         **{k: v for k, v in common.items() if k not in ("temperature", "alpha")})
    return PhaseResult("end to end" if ctx.first else "fine-tuned", {f"{ctx.label} (KD)": hist.as_dict()})
