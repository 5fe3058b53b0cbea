"""Frames and images, the two pixel forms the toolkit uses, and the one conversion between them.

frames  uint8 (N, H, W, 3) RGB, as stored in the HDF5 shards (frame64, frame88, image) and in PNG files
images  float (N, 3, H, W) in [-1, 1], what the generator draws and the critics and evaluation networks read

`scale_to_images` is the only place uint8 pixels become [-1, 1] (x / 127.5 - 1, in that order, in float32),
`to_images` the same with the move to channels first, `to_frames` the way back (as a saved PNG quantises);
`centre_crop` is the centre IMAGE_SIZE square of larger frames (frame88), as training and evaluation show them.
"""

from __future__ import annotations

import numpy as np
import torch

from his.constants import IMAGE_SIZE


def centre_crop(frames: np.ndarray | torch.Tensor, size: int = IMAGE_SIZE) -> np.ndarray | torch.Tensor:
    """The centre size x size of (N, H, W, 3) frames, a view (a frame already that size is returned whole)."""
    h, w = frames.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return frames[:, top : top + size, left : left + size]


def scale_to_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels of any layout -> float32 in [-1, 1], the same layout: x / 127.5 - 1."""
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {x.dtype}")
    return x.float().div_(127.5).sub_(1.0)  # .float() copies a uint8 tensor, so the in-place ops are safe


def to_images(frames: np.ndarray | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Frames, uint8 (N, H, W, 3) -> images, float (N, 3, H, W) in [-1, 1], on `device` (default: where they are)."""
    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    if device is not None:
        x = x.to(device)
    return scale_to_images(x.permute(0, 3, 1, 2))


def to_frames(images: torch.Tensor) -> np.ndarray:
    """Images, float (N, 3, H, W) in [-1, 1] -> frames, uint8 (N, H, W, 3), quantised as a saved image would be."""
    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
