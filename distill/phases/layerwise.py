"""Phase `layerwise` (seed 000 §2; seed 003 "sequential"): each replaced layer of a mirror student
learns the teacher's own a^{l-1} → a^l (MSE on post- or pre-activations, `distill.layer_target`),
independently of the others; the epoch with the best validation R² is kept per layer."""

from __future__ import annotations

from distill import train
from distill.phases import PhaseContext, PhaseResult

USES_TEACHER = True
NEEDS_MIRROR = True


def run(ctx: PhaseContext, student) -> PhaseResult:
    d = ctx.distill
    settings = train.TrainSettings(epochs=d.layer_epochs, batch_size=d.batch_size, lr=d.layer_lr,
                                   schedule=d.schedule, grad_clip=d.grad_clip, seed=ctx.seed + 2)
    tl = ctx.teacher_layers()
    hists = {}
    for fit in student.layer_fits(d.layer_target, tl):
        hist = train.fit_layer(fit.module, fit.inputs("train"), fit.target("train"), fit.inputs("val"),
                               fit.target("val"), settings, ckpt=ctx.checkpoint(f"layerwise-{fit.name}"),
                               devices=ctx.devices, desc=f"layer {fit.target_name}", progress=ctx.progress)
        hists[fit.target_name] = hist.as_dict()
    return PhaseResult("layer-wise", {}, hists)
