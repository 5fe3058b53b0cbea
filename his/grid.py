"""Image grids with torch and Pillow (no torchvision): a (3, H, W) tensor for TensorBoard, or a PNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from his.io import atomic_path


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """(N, 3, h, w) images in [-1, 1] -> one float (3, H, W) image in [0, 1], `nrow` images per row."""
    images = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)
    n, c, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for i, image in enumerate(images):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[:, top : top + h, left : left + w] = image
    return grid


def grid_to_pil(grid: torch.Tensor) -> Image.Image:
    return Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8, padding: int = 2) -> Path:
    """Write the grid of `images` (N, 3, h, w) in [-1, 1] as a PNG, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        grid_to_pil(make_grid(images, nrow, padding)).save(tmp, format="PNG")
    return path
