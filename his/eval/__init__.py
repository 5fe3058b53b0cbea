"""Evaluation of a sound-to-image generator: numbers, not only pictures (see his/eval/evaluate.py)."""

from his.eval.data import EvalData, EvalSettings
from his.eval.evaluate import compute_metrics, evaluate
from his.frame_classifier import FrameNet, NetTraining, train_classifier, train_regressor
from his.sampling import generate_samples
from his.eval.metrics import frechet_distance, kernel_distance
from his.eval.stage import EvalConfig, run

__all__ = [
    "EvalConfig",
    "EvalData",
    "EvalSettings",
    "FrameNet",
    "NetTraining",
    "compute_metrics",
    "evaluate",
    "frechet_distance",
    "generate_samples",
    "kernel_distance",
    "run",
    "train_classifier",
    "train_regressor",
]
