"""Our own frame networks for evaluation: a small CNN classifier and, on the same trunk, an attribute regressor.

Both are trained on real train frames (uint8 NHWC 64x64), deterministically from a seed, and cached to a file
whose name is a hash of the data and the training settings, so evaluating a second run on the same data set
reuses them. Their penultimate features are the feature space of FID, KID, retrieval and diversity.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from his.augment import diff_augment
from his.frames import to_images
from his.io import save_torch

# Bump when FrameNet or the training recipe changes, so old cache files are not reused. 2: trained in
# channels-last memory format (a quarter less time per step on 2 CPUs, benchmarks.classifier; other rounding).
NET_VERSION = 2
MEMORY_FORMAT = torch.channels_last  # of the training batches and weights (benchmarks.classifier compares NCHW)


@dataclass(frozen=True)
class NetTraining:
    """How an evaluation network is trained; every field is part of the cache key."""

    steps: int = 400  # enough for a few thousand frames; raise it for a large real data set
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    width: int = 16
    feature_dim: int = 64
    seed: int = 0
    augment: str = ""  # a his.augment (DiffAugment) policy drawn on top of the flip and shift, e.g. "color"


# The frame classifier's recipe. A held-out player brings a room and clothes the training players never wore
# together, so the classifier must read the instrument's shape, not colours: with colour jitter, width 32 and
# 3000 steps it reads 0.84-1.0 of the held-out frames of three generated sets where 400 steps at width 16
# without jitter read 0.63-0.69 (README, "The measuring classifier"). The regressor keeps the plain recipe:
# the attributes it reads include brightness, which colour jitter would teach it to ignore.
CLASSIFIER_TRAINING = NetTraining(steps=3000, width=32, augment="color")


class FrameNet(nn.Module):
    """Four stride-2 conv blocks (64 -> 4 px), pooling, a `feature_dim` layer, then a head.

    The classifier pools globally (where a thing is matters little to what it is); with `keep_position` the
    4x4 map is kept, so a regressor can read attributes such as the height of an object in the frame.
    """

    def __init__(self, n_outputs: int, width: int = 32, feature_dim: int = 64, keep_position: bool = False):
        super().__init__()
        channels = [3, width, 2 * width, 4 * width, 4 * width]
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            blocks += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        pooled = 4 if keep_position else 1
        self.trunk = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(pooled), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(channels[-1] * pooled**2, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, n_outputs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: float (B, 3, 64, 64) in [-1, 1] -> (head output (B, n_outputs), penultimate features (B, feature_dim))."""
        features = self.embed(self.trunk(x))
        return self.head(features), features


def _augment(x: torch.Tensor, generator: torch.Generator, policy: str = "") -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 4 px (reflect padding), one draw per image, then the
    DiffAugment `policy` (Zhao et al. 2020)."""
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dx = torch.randint(0, 9, (n,), generator=generator).to(x.device)
    dy = torch.randint(0, 9, (n,), generator=generator).to(x.device)
    h, w = x.shape[2:]
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1): each image's window
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    # the slice between the advanced indices puts the channels last: (N, H, W, C)
    x = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2).contiguous()
    return diff_augment(x, policy, generator)


def _fit(
    frames: np.ndarray,
    targets: torch.Tensor,
    n_outputs: int,
    loss_fn,
    training: NetTraining,
    keep_position: bool,
    device: torch.device | str,
) -> FrameNet:
    # fork_rng keeps the caller's global RNG untouched while the seed fixes the initial weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(training.seed)
        net = FrameNet(n_outputs, training.width, training.feature_dim, keep_position).to(device)
    net = net.to(memory_format=MEMORY_FORMAT)  # oneDNN's convolutions run faster in NHWC
    generator = torch.Generator().manual_seed(training.seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=training.lr, total_steps=training.steps)
    x_all = to_images(frames, device)
    targets = targets.to(device)
    n = len(frames)
    order = torch.randperm(n, generator=generator)
    position = 0
    net.train()
    for _ in range(training.steps):
        if position + training.batch_size > n:
            order, position = torch.randperm(n, generator=generator), 0
        batch = order[position : position + training.batch_size].to(device)
        position += training.batch_size
        x = _augment(x_all[batch], generator, training.augment).contiguous(memory_format=MEMORY_FORMAT)
        output, _ = net(x)
        loss = loss_fn(output, targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return net.to(memory_format=torch.contiguous_format).eval()  # as a net loaded from the cache is


def _cache_key(kind: str, frames: np.ndarray, targets: np.ndarray, training: NetTraining) -> str:
    digest = hashlib.sha256()
    digest.update(f"{kind} v{NET_VERSION} {sorted(asdict(training).items())}".encode())
    for array in (frames, targets):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype} {array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def _load_or_fit(
    kind: str,
    frames: np.ndarray,
    targets: torch.Tensor,
    n_outputs: int,
    loss_fn,
    training: NetTraining,
    keep_position: bool,
    cache_dir: str | os.PathLike | None,
    device: torch.device | str,
) -> tuple[FrameNet, Path | None]:
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{kind}-{_cache_key(kind, frames, targets.numpy(), training)}.pt"
        if path.exists():
            net = FrameNet(n_outputs, training.width, training.feature_dim, keep_position)
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return net.to(device).eval(), path
    net = _fit(frames, targets, n_outputs, loss_fn, training, keep_position, device)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_torch(net.state_dict(), path)
    return net, path


def train_classifier(
    frames: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    training: NetTraining = CLASSIFIER_TRAINING,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> tuple[FrameNet, Path | None]:
    """A frame classifier on real train frames (uint8 NHWC); loaded from `cache_dir` when already trained there.

    Returns the network (eval mode, on `device`) and its cache file (None without a cache dir).
    """
    labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    return _load_or_fit("classifier", frames, labels, n_classes, F.cross_entropy, training, False, cache_dir, device)


def train_regressor(
    frames: np.ndarray,
    targets: np.ndarray,
    training: NetTraining = NetTraining(),
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> tuple[FrameNet, np.ndarray, np.ndarray, Path | None]:
    """A regressor from real frames to per-frame attributes (float (N, A)), trained on standardised targets.

    Returns the network, the targets' mean and std (to undo the standardisation) and its cache file.
    """
    targets = np.asarray(targets, dtype=np.float64)
    mean, std = targets.mean(0), targets.std(0) + 1e-12
    standardised = torch.from_numpy(((targets - mean) / std).astype(np.float32))
    net, path = _load_or_fit(
        "regressor", frames, standardised, targets.shape[1], F.mse_loss, training, True, cache_dir, device
    )
    return net, mean, std, path


@torch.no_grad()
def run_net(
    net: FrameNet, frames: np.ndarray, batch_size: int = 256, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Head outputs (N, n_outputs) and penultimate features (N, feature_dim) as float64 for uint8 NHWC frames."""
    outputs, features = [], []
    for start in range(0, len(frames), batch_size):
        output, feature = net(to_images(frames[start : start + batch_size], device))
        outputs.append(output.double().cpu().numpy())
        features.append(feature.double().cpu().numpy())
    if not outputs:
        return np.zeros((0, net.head.out_features)), np.zeros((0, net.head.in_features))
    return np.concatenate(outputs), np.concatenate(features)
