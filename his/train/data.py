"""What a training step eats: the rows in memory, endless resumable batches, and the 'wrong' sounds.

`load_clips`/`load_images` read a whole clip or image set into memory (uint8 frames are small: 10k 64x64
frames are 120 MB). `Batches` walks DistributedSampler's order and can restart at (epoch, position);
`make_batch` does crops, flips and scaling on the device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler

from his.config import ConfigError
from his.data.dataset import load_features, load_rows, load_split, open_set, validation_mask
from his.constants import IMAGE_SIZE
from his.frames import centre_crop, scale_to_images
from his.train.config import PretrainConfig, TrainConfig


@dataclass
class Validation:
    """Held-out video groups of the train split: never trained on, used to choose the checkpoint."""

    cond: np.ndarray  # float32 (V, D)
    labels: np.ndarray  # int (V,)
    frames: np.ndarray  # uint8 (V, 64, 64, 3): their real frames, for the classifier's ceiling
    classifier_frames: np.ndarray  # uint8 (N, 64, 64, 3): every train-split frame as evaluation reads them ...
    classifier_labels: np.ndarray  # int (N,): ... and their classes: the frame classifier his.eval trains too
    n_classes: int


@dataclass
class TrainingData:
    frames: np.ndarray  # uint8 (N, H, W, 3), training rows
    cond: np.ndarray | None  # float32 (N, D) standardised sound features; None when unconditional
    labels: np.ndarray | None  # int (N,)
    sample_frames: np.ndarray | None = None  # held-out rows shown in the sample grid
    sample_cond: np.ndarray | None = None
    validation: Validation | None = None
    sample_audio: np.ndarray | None = None  # int16 (S, samples): the sample grid's sounds, when test rows
    n_classes: int = 0
    critic_cond: np.ndarray | None = None  # float32 (N, D + n_classes): cond and one-hot class, for a critic with labels
    groups: np.ndarray | None = None  # int (N,): the rows' video groups (players), kept out of a row's own neighbours

    def with_critic_labels(self) -> "TrainingData":
        """The same rows, the critic's condition now the sound followed by the one-hot class."""
        one_hot = np.eye(self.n_classes, dtype=np.float32)[self.labels]
        return dataclasses.replace(self, critic_cond=np.concatenate([self.cond, one_hot], axis=1))


def _h5(path: str, name: str, field_name: str) -> Path:
    p = Path(path)
    p = p / name if p.is_dir() else p
    if not path or not p.is_file():
        raise ConfigError(f"config: {field_name}={path!r}: no {name} there")
    return p


def load_images(cfg: PretrainConfig) -> TrainingData:
    """The image set's images; with `clips` (stage one of the two-stage method) every train-split frame of that
    clip set too, and four fixed frames of it for the sample grid (drawn from their own embedding)."""
    with open_set(_h5(cfg.images, "index.h5", "images"), "images") as f:
        frames = f["image"][()]
    if not cfg.clips:
        return TrainingData(frames=frames, cond=None, labels=None)
    clips = load_split(_h5(cfg.clips, "index.h5", "clips"), "train", ["frame64", "label"])
    clip_frames = clips["frame64"]
    if len(clip_frames) == 0:
        raise ConfigError(f"config: clips={cfg.clips!r} has no train-split frames")
    shown = np.linspace(0, len(clip_frames) - 1, 4).astype(np.int64)
    # the clip frames' classes; each image of the set is a class of its own (it has none)
    labels = np.concatenate([clips["label"].astype(np.int64), -1 - np.arange(len(frames))])
    return TrainingData(frames=np.concatenate([centre_crop(clip_frames), centre_crop(frames)]), cond=None,
                        labels=labels, sample_frames=clip_frames[shown])


def load_clips(cfg: TrainConfig) -> TrainingData:
    """Train rows of the clip set and their features (his.data.dataset), plus fixed test rows for the grid."""
    index = _h5(cfg.clips, "index.h5", "clips")
    features_dir = Path(cfg.features)
    feature_file = features_dir / "index.h5"
    if not cfg.features or not feature_file.is_file():
        raise ConfigError(f"config: features={cfg.features!r}: no index.h5 there")
    with open_set(index, "clips") as f, open_set(feature_file, "features") as g:
        if cfg.frames not in f:
            raise ConfigError(f"config: frames={cfg.frames!r} is not a dataset of {index}")
        n, (n_feat, dim) = len(f["label"]), g["feature"].shape
        has_groups, n_classes = "group" in f, len(f.attrs["classes"])
        has_video_ids = "video_id" in f
    if dim != cfg.cond_dim:
        raise ConfigError(f"config: cond_dim={cfg.cond_dim} but {feature_file} has features of size {dim}")
    if n_feat != n:
        raise ConfigError(f"config: features={cfg.features!r} has {n_feat} rows, the clips have {n}")
    if cfg.val_fraction > 0 and not has_groups:
        raise ConfigError(f"config: val_fraction={cfg.val_fraction} needs the clips' video groups; {index} has no 'group'")
    # the players: validation holds groups out (checked above: val_fraction needs them), retrieval excludes them
    fields = [cfg.frames, "label", *(["group"] if has_groups else ["video_id"] if has_video_ids else [])]
    train = load_split(index, "train", fields)
    test = load_split(index, "test", [cfg.frames, "label"])
    cond = load_features(features_dir, "train")
    validation = None
    if cfg.val_fraction > 0:  # the groups fine-tuning held out too (same function, fraction and seed by default)
        is_val = validation_mask(train["label"], train["group"], cfg.val_fraction, cfg.val_seed)
        seen = centre_crop(train[cfg.frames])  # the frames and classes evaluation's classifier is trained on
        validation = Validation(cond[is_val], train["label"][is_val].astype(np.int64), seen[is_val], seen,
                                train["label"].astype(np.int64), n_classes)
        train, cond = {k: v[~is_val] for k, v in train.items()}, cond[~is_val]
    labels = train["label"].astype(np.int64)
    # a row's player: its video group, else its video, else only itself
    groups = (train["group"].astype(np.int64) if has_groups else
              np.unique(train["video_id"], return_inverse=True)[1] if has_video_ids else np.arange(len(labels)))
    if len(np.unique(labels)) < 2 and (cfg.objective == "gan-cls" or cfg.alpha > 0):
        raise ConfigError(f"config: objective={cfg.objective!r} needs sounds of another class; the train split has one class")
    held_out, held_cond = (test, load_features(features_dir, "test")) if len(test["label"]) else (train, None)
    rows = _one_per_class(held_out["label"].astype(np.int64), cfg.sample_sounds)
    return TrainingData(train[cfg.frames], cond, labels, held_out[cfg.frames][rows],
                        (cond if held_cond is None else held_cond)[rows], validation,
                        sample_audio=load_rows(index, "test", "audio", rows) if held_cond is not None else None,
                        n_classes=n_classes, groups=groups)


def _one_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Up to n rows: the first of each class, then the second of each, ..."""
    per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    order = [rows[i] for i in range(max(map(len, per_class), default=0)) for rows in per_class if i < len(rows)]
    return np.array(order[:n], dtype=np.int64)


class Batches:
    """Endless batches of training rows in DistributedSampler order; resumable at (epoch, position)."""

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int, epoch: int = 0, position: int = 0):
        self.sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.per_epoch = len(self.sampler) // batch_size
        if self.per_epoch == 0:
            raise ConfigError(f"config: batch_size={batch_size} is larger than the {len(self.sampler)} rows per rank")
        self.epoch, self.position = epoch, position
        self._order: list[int] | None = None

    def __next__(self) -> np.ndarray:
        if self.position == self.per_epoch:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self.sampler.set_epoch(self.epoch)
            self._order = list(self.sampler)
        start = self.position * self.batch_size
        self.position += 1
        return np.sort(self._order[start : start + self.batch_size])


class WrongSounds:
    """For each label, a uniformly drawn row of ANOTHER class (the 'wrong' condition of GAN-CLS and eq 10).
    Given every row its own label (np.arange), ANOTHER clip of any class."""

    def __init__(self, labels: np.ndarray):
        self.order = torch.from_numpy(np.argsort(labels, kind="stable"))
        classes, counts = np.unique(labels, return_counts=True)
        self.count = torch.zeros(int(classes.max()) + 1, dtype=torch.long)
        self.start = torch.zeros_like(self.count)
        self.count[classes] = torch.from_numpy(counts)
        self.start[classes] = torch.from_numpy(np.cumsum(counts) - counts)
        self.n = len(labels)
        self.labels = labels

    def for_rows(self, rows: np.ndarray, rng: torch.Generator) -> np.ndarray:
        """A wrong row for each of `rows`: one of another label than the row's own."""
        return self.draw(torch.from_numpy(np.asarray(self.labels[rows])), rng).numpy()

    def draw(self, labels: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        others = self.n - self.count[labels]
        r = (torch.rand(len(labels), generator=rng) * others).long()
        skip_own = r >= self.start[labels]
        return self.order[r + skip_own.long() * self.count[labels]]


def make_batch(data: TrainingData, rows: np.ndarray, wrong: WrongSounds | None, rng: torch.Generator,
               device: torch.device, flip: bool, channels_last: bool) -> tuple[torch.Tensor, ...]:
    """Images in [-1, 1] (random 64x64 crops of larger frames, random flips), their sounds (what G hears), the
    critic's conditions of the rows and of their wrong rows (the sounds, or with labels the sounds and classes)."""
    # uint8 rows go to the device as they are; crops, flips and scaling happen there (the host only gathers rows)
    frames = torch.from_numpy(data.frames[rows]).to(device, non_blocking=True)
    b, h, w, _ = frames.shape
    if (h, w) != (IMAGE_SIZE, IMAGE_SIZE):
        top = (torch.rand(b, generator=rng) * (h - IMAGE_SIZE + 1)).long().to(device)
        left = (torch.rand(b, generator=rng) * (w - IMAGE_SIZE + 1)).long().to(device)
        # a view of every 64x64 window, (B, h-63, w-63, 3, 64, 64); pick one per image -> (B, 3, 64, 64)
        images = frames.unfold(1, IMAGE_SIZE, 1).unfold(2, IMAGE_SIZE, 1)[torch.arange(b, device=device), top, left]
    else:
        images = frames.permute(0, 3, 1, 2)
    if flip:
        flipped = (torch.rand(b, generator=rng) < 0.5).to(device)
        images = torch.where(flipped[:, None, None, None], images.flip(3), images)
    real = scale_to_images(images)
    real = real.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if data.cond is None:
        return real, None, None, None
    cond = torch.from_numpy(data.cond[rows]).to(device, non_blocking=True)
    if data.critic_cond is None:  # the critic reads what G hears
        critic_rows, critic_cond = data.cond, cond
    else:
        critic_rows = data.critic_cond
        critic_cond = torch.from_numpy(critic_rows[rows]).to(device, non_blocking=True)
    wrong_cond = None
    if wrong is not None:
        wrong_cond = torch.from_numpy(critic_rows[wrong.for_rows(rows, rng)]).to(device, non_blocking=True)
    return real, cond, critic_cond, wrong_cond
