"""Training: losses, the training loop, metrics, batched prediction."""

from distill.train import losses
from distill.train.loop import (
           History,
           TrainSettings,
           end_to_end,
           fit,
           fit_layer,
           make_optimizer,
           train_classifier,
)
from distill.train.metrics import Evaluation, evaluate, r2_score, relative_error
from distill.train.predict import latency_ms, predict

__all__ = ["losses", "History", "TrainSettings", "end_to_end", "fit", "fit_layer", "make_optimizer",
           "train_classifier", "Evaluation", "evaluate", "r2_score", "relative_error", "latency_ms", "predict"]
