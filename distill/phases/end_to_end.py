"""Phase `end_to_end`: KD on the frozen teacher's logits (Hinton et al. 2015):
α·τ²·KL(softmax(z_t/τ) ‖ softmax(z_s/τ)) + (1−α)·CE(y, z_s), best epoch by validation accuracy."""

from __future__ import annotations

from distill import train
from distill.phases import PhaseContext, PhaseResult

USES_TEACHER = True
NEEDS_MIRROR = False


def settings(d, seed: int) -> train.TrainSettings:
    """The end-to-end phase's optimisation settings from the distill section."""
    return train.TrainSettings(epochs=d.epochs, batch_size=d.batch_size, lr=d.lr, weight_decay=d.weight_decay,
                               schedule=d.schedule, grad_clip=d.grad_clip, seed=seed + 1)


def run(ctx: PhaseContext, student) -> PhaseResult:
    d = ctx.distill
    hist = train.end_to_end(student, ctx.x["train"], ctx.teacher_logits["train"], ctx.y["train"],
                            train.Validation(ctx.x["val"], ctx.y["val"]), settings(d, ctx.seed),
                            temperature=d.temperature, alpha=d.alpha, ckpt=ctx.checkpoint("end_to_end"),
                            devices=ctx.devices, desc=ctx.label, progress=ctx.progress)
    return PhaseResult("end to end" if ctx.first else "fine-tuned", {f"{ctx.label} (KD)": hist.as_dict()})
