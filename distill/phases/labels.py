"""Phase `labels`: the student trained on the labels alone (cross-entropy), no teacher: the
control every distillation result is compared with — on the same augmented images (mixed labels
for mixup / cutmix) when augmentation is on."""

from __future__ import annotations

from distill import train
from distill.phases import PhaseContext, PhaseResult
from distill.phases.end_to_end import settings

USES_TEACHER = False
NEEDS_MIRROR = False


def run(ctx: PhaseContext, student) -> PhaseResult:
    feed = ctx.feed(with_teacher=False)
    x = ctx.x["train"] if feed is None else ctx.images
    hist = train.train_classifier(student, x, ctx.y["train"], train.Validation(ctx.x["val"], ctx.y["val"]),
                                  settings(ctx.distill, ctx.seed), ckpt=ctx.checkpoint("labels"), devices=ctx.devices,
                                  desc=ctx.label, progress=ctx.progress, feed=feed)
    return PhaseResult("labels only", {f"{ctx.label} (labels only)": hist.as_dict()})
