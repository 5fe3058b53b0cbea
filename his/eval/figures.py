"""The report's sample figures as uint8 RGB arrays: Figure 7 and Figure 8.

Figure 7: for each class, 16 samples from one test sound in a 4x4 grid, its real frame on the right.
Figure 8: two sounds of one class, 16 samples each (two rows of 8 per sound), their real frames on the right.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from his.frames import to_images
from his.grid import grid_to_pil, make_grid
from his.io import atomic_path

PAD = 2
GAP = 12
LABEL_WIDTH = 110
BACKGROUND = 255


def image_grid(images: np.ndarray, n_columns: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> one uint8 image, `n_columns` per row, white padding (his.grid.make_grid)."""
    return np.asarray(grid_to_pil(make_grid(to_images(images), nrow=n_columns, padding=PAD)))


def _scale_to_height(image: np.ndarray, height: int) -> np.ndarray:
    """Nearest-neighbour resize so the frame keeps its pixels visible beside a grid of the same height."""
    width = round(image.shape[1] * height / image.shape[0])
    return np.asarray(Image.fromarray(image).resize((width, height), Image.NEAREST))


def _side_by_side(parts: list[np.ndarray], gap: int) -> np.ndarray:
    height = max(p.shape[0] for p in parts)
    columns = []
    for i, part in enumerate(parts):
        if i:
            columns.append(np.full((height, gap, 3), BACKGROUND, np.uint8))
        padded = np.full((height, part.shape[1], 3), BACKGROUND, np.uint8)
        padded[: part.shape[0]] = part
        columns.append(padded)
    return np.concatenate(columns, axis=1)


def _stack(rows: list[np.ndarray], gap: int) -> np.ndarray:
    width = max(r.shape[1] for r in rows)
    padded_rows = []
    for i, row in enumerate(rows):
        if i:
            padded_rows.append(np.full((gap, width, 3), BACKGROUND, np.uint8))
        padded = np.full((row.shape[0], width, 3), BACKGROUND, np.uint8)
        padded[:, : row.shape[1]] = row
        padded_rows.append(padded)
    return np.concatenate(padded_rows, axis=0)


def _label(text: str, height: int) -> np.ndarray:
    canvas = Image.new("RGB", (LABEL_WIDTH, height), (BACKGROUND,) * 3)
    ImageDraw.Draw(canvas).text((4, height // 2), text, fill=(0, 0, 0), anchor="lm")
    return np.asarray(canvas)


def figure7(samples_by_class: list[np.ndarray], real_frames: list[np.ndarray], class_names: list[str]) -> np.ndarray:
    """One row per class: its name, up to 16 samples (S, H, W, 3) of one sound as a 4x4 grid, the real frame."""
    rows = []
    for samples, real, name in zip(samples_by_class, real_frames, class_names):
        grid = image_grid(samples[:16], n_columns=4)
        rows.append(_side_by_side([_label(name, grid.shape[0]), grid, _scale_to_height(real, grid.shape[0])], GAP))
    return _stack(rows, GAP)


def figure8(samples_a: np.ndarray, real_a: np.ndarray, samples_b: np.ndarray, real_b: np.ndarray) -> np.ndarray:
    """Two sounds of one class: for each, two rows of 8 samples, then its real frame at the rows' height."""
    rows = []
    for samples, real in ((samples_a, real_a), (samples_b, real_b)):
        grid = image_grid(samples[:16], n_columns=8)
        rows.append(_side_by_side([grid, _scale_to_height(real, grid.shape[0])], GAP))
    return _stack(rows, GAP)


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 HWC RGB image as PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
