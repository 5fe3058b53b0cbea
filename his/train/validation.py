"""Conditional accuracy on validation sounds while training: the curve that shows a late collapse (Chen et al.
2017 saw accuracy fall from 87% to 10-30% after epoch 35), and the checkpoint chosen on it.

The validation sounds are whole video groups of the train split that the GAN never sees (`val_fraction`); a
frame classifier reads the class off `val_images` images per sound. It is his.eval's own, trained on every
frame of the train split with the same recipe and cached beside the clip set, so a run fits it once for both
(it has seen the validation players' real frames: `val/ceiling` is near 1, and the curve ranks checkpoints
rather than measuring them; the test split, which it has not seen, does that). The test split is never looked at.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from his.frame_classifier import CLASSIFIER_TRAINING, run_net, train_classifier
from his.sampling import generate_samples
from his.train.config import TrainConfig
from his.train.data import TrainingData, Validation


class ValidationAccuracy:
    def __init__(self, validation: Validation, z_dim: int, images_per_sound: int, seed: int,
                 device: torch.device, cache_dir: str | os.PathLike | None, classifier_steps: int) -> None:
        self.validation, self.z_dim, self.k, self.seed, self.device = validation, z_dim, images_per_sound, seed, device
        self.classifier, _ = train_classifier(validation.classifier_frames, validation.classifier_labels,
                                              validation.n_classes,
                                              replace(CLASSIFIER_TRAINING, steps=classifier_steps), cache_dir,
                                              device)
        logits, _ = run_net(self.classifier, validation.frames, device=device)
        self.ceiling = float((logits.argmax(1) == validation.labels).mean())  # the same reading of real frames

    @torch.no_grad()
    def __call__(self, generator: nn.Module) -> float:
        """The fraction of images, over all validation sounds, that the classifier reads as their sound's class."""
        was_training = generator.training
        generator.eval()
        samples = generate_samples(lambda cond, z: generator(z, cond), self.validation.cond, self.k, self.z_dim,
                                   self.seed, device=self.device)
        generator.train(was_training)
        logits, _ = run_net(self.classifier, samples.reshape(-1, *samples.shape[2:]), device=self.device)
        return float((logits.argmax(1) == np.repeat(self.validation.labels, self.k)).mean())


def validation_for(cfg: TrainConfig, data: TrainingData, device: torch.device) -> ValidationAccuracy | None:
    """The run's validation reader, when it holds groups out (val_fraction), its classifier cached beside the clips."""
    if data.validation is None:
        return None
    clips = Path(cfg.clips)
    return ValidationAccuracy(data.validation, cfg.z_dim, cfg.val_images, cfg.seed, device,
                              (clips if clips.is_dir() else clips.parent) / "eval-cache", cfg.val_classifier_steps)


def is_new_best(best: dict, accuracy: float) -> bool:
    """Whether a checkpoint of this validation accuracy replaces the kept one: the best so far, and of equally
    accurate checkpoints the latest (as accurate after more training: a recipe that reads the class from its
    first steps, as the editing retrieval generator does, is otherwise kept at its least trained)."""
    return not best or accuracy >= best["val_accuracy"]
