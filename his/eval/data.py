"""What evaluation reads: the real data of one clip set, and how its measuring networks are trained."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from his.constants import SAMPLE_RATE
from his.frame_classifier import CLASSIFIER_TRAINING, NetTraining


@dataclass
class EvalData:
    """Real data of one clip set. Frames uint8 (n, 64, 64, 3); labels int (n,) into `classes`.

    test_features: the test clips' sound features (n_test, D), as the generator was trained on them.
    train_features: the train clips' (n_train, D), for the linear probe of what the sound tells of its class.
    test_video_ids: lets Figure 8 take its two sounds from two different videos.
    test_audio: the test clips' int16 audio windows (n_test, S) at `sample_rate`, for the report's players.
    train_attributes / test_attributes: per-clip numeric sound attributes, name -> (n,), for attribute following.
    """

    classes: list[str]
    train_frames: np.ndarray
    train_labels: np.ndarray
    test_frames: np.ndarray
    test_labels: np.ndarray
    test_features: np.ndarray | None = None
    train_features: np.ndarray | None = None
    test_video_ids: np.ndarray | None = None
    train_attributes: dict[str, np.ndarray] | None = None
    test_attributes: dict[str, np.ndarray] | None = None
    test_audio: np.ndarray | None = None
    sample_rate: int = SAMPLE_RATE


@dataclass
class EvalSettings:
    classifier: NetTraining = CLASSIFIER_TRAINING
    regressor: NetTraining = field(default_factory=NetTraining)
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    seed: int = 0
    batch_size: int = 256
    figure8_class: str | None = None  # default: the first class
