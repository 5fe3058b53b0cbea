"""Drawing K images per sound from any generator callable: what validation, evaluation and his.generate share."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from his.frames import to_frames

GenerateFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def generate_samples(
    generate: GenerateFn,
    features: np.ndarray,
    k: int,
    z_dim: int,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """K images per sound: uint8 (n, K, 64, 64, 3) from `generate(features (B, D), z (B, Z)) -> (B, 3, 64, 64)`.

    The noise is drawn on the CPU from `seed`, so the same generator gives the same samples on CPU and CUDA
    (up to the device's arithmetic).
    """
    n = len(features)
    z = torch.randn(n * k, z_dim, generator=torch.Generator().manual_seed(seed))
    repeated = torch.from_numpy(np.asarray(features, np.float32)).repeat_interleave(k, dim=0)
    frames = []
    for start in range(0, n * k, batch_size):
        images = generate(repeated[start : start + batch_size].to(device), z[start : start + batch_size].to(device))
        frames.append(to_frames(images))
    return np.concatenate(frames).reshape(n, k, *frames[0].shape[1:])
