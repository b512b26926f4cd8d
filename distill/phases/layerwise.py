"""Phase `layerwise` (seed 000 §2; seed 003 "sequential"): each replaced layer of a mirror student
learns the teacher's own a^{l-1} → a^l (MSE on post- or pre-activations, `distill.layer_target`),
independently of the others; the epoch with the best validation R² is kept per layer. With
augmentation on, both sides are the teacher's activations on the augmented images, computed in
the training step."""

from __future__ import annotations

from distill import train
from distill.phases import PhaseContext, PhaseResult

USES_TEACHER = True
NEEDS_MIRROR = True


def run(ctx: PhaseContext, student) -> PhaseResult:
    d = ctx.distill
    settings = train.TrainSettings(epochs=d.layer_epochs, batch_size=d.batch_size, lr=d.layer_lr,
                                   schedule=d.schedule, grad_clip=d.grad_clip, seed=ctx.seed + 2,
                                   warmup_epochs=min(d.warmup_epochs, d.layer_epochs - 1))
    tl = ctx.teacher_layers()
    hists = {}
    for fit in student.layer_fits(d.layer_target, tl):
        feed = ctx.feed(with_teacher=True, source=fit.source, target=fit.target_name)
        x, y = (fit.inputs("train"), fit.target("train")) if feed is None else (ctx.images, None)
        hist = train.fit_layer(fit.module, x, y, fit.inputs("val"), fit.target("val"), settings,
                               ckpt=ctx.checkpoint(f"layerwise-{fit.name}"), devices=ctx.devices,
                               desc=f"layer {fit.target_name}", progress=ctx.progress, feed=feed, teacher=ctx.teacher)
        hists[fit.target_name] = hist.as_dict()
    return PhaseResult("layer-wise", {}, hists)
