"""Training: the train state, the jitted step, the resumable loop, losses, metrics, prediction,
checkpoints and data-parallel sharding."""

from distill.train import losses
from distill.train.checkpoint import Checkpointing, RunInterrupted, request_stop, stop_on_signals
from distill.train.loop import History, Validation, end_to_end, fit, fit_layer, train_classifier
from distill.train.metrics import Evaluation, evaluate, r2_score, relative_error
from distill.train.predict import latency_ms, predict
from distill.train.state import TrainSettings, TrainState, make_optimizer
from distill.train.step import train_step

__all__ = ["losses", "Checkpointing", "RunInterrupted", "request_stop", "stop_on_signals", "History", "Validation",
           "end_to_end", "fit", "fit_layer", "train_classifier", "Evaluation", "evaluate", "r2_score",
           "relative_error", "latency_ms", "predict", "TrainSettings", "TrainState", "make_optimizer", "train_step"]
