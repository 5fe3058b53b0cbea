"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

The same kind of random, differentiable augmentation is applied to real *and* generated images before every
critic call, in the critic's steps and the generator's, so the critic never sees un-augmented images and the
generator is trained through the augmentation (which therefore does not leak into its samples).

All randomness comes from one CPU `torch.Generator`: numbers are drawn on the CPU and then moved to the
images' device, so the draws are the same on CPU and CUDA, and saving and restoring `generator.get_state()`
makes a resumed training step repeat exactly.

Images are (B, C, H, W) in [-1, 1]; 0 (what translation pads with and cutout writes) is mid-grey.
"""

from __future__ import annotations

from typing import Callable

import torch

POLICIES = ("color", "translation", "cutout")
TRANSLATION_RATIO = 1 / 8  # the largest shift, as a fraction of the side
CUTOUT_RATIO = 1 / 2  # the side of the cut square, as a fraction of the side

Critic = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def parse_policy(policy: str) -> list[str]:
    """"color,translation,cutout" -> its parts, in order; "" -> []. ValueError names any unknown part."""
    parts = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [p for p in parts if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy part(s) {unknown} in {policy!r}; known: {list(POLICIES)}")
    return parts


def _uniform(x: torch.Tensor, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    """One U(low, high) draw per sample, shaped (B, 1, 1, 1) to broadcast over an image."""
    u = torch.rand(x.shape[0], generator=generator)
    return (low + (high - low) * u).to(x.device, x.dtype).view(-1, 1, 1, 1)


def _randint(n: int, low: int, high: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """n integers uniform in [low, high] (both inclusive)."""
    return torch.randint(low, high + 1, (n,), generator=generator).to(device)


def color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per sample: brightness + U(-0.5, 0.5), then saturation x U(0, 2), then contrast x U(0.5, 1.5)."""
    x = x + _uniform(x, -0.5, 0.5, generator)
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * _uniform(x, 0.0, 2.0, generator) + grey
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _uniform(x, 0.5, 1.5, generator) + mean


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Move sample b by dy[b] rows down and dx[b] columns right (negative: up, left), filling with zeros.

    out[b, :, i, j] = x[b, :, i - dy[b], j - dx[b]] where that lies inside the image, else 0.
    """
    b, _, h, w = x.shape
    rows = torch.arange(h, device=x.device)[None, :] - dy.to(x.device)[:, None]  # (B, H): source row
    cols = torch.arange(w, device=x.device)[None, :] - dx.to(x.device)[:, None]  # (B, W): source column
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # (B, H, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # the slice between the advanced indices puts the channel dimension last: (B, H, W, C)
    out = x[batch, :, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
    return out.permute(0, 3, 1, 2) * inside[:, None].to(x.dtype)


def cutout(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size_h: int, size_w: int) -> torch.Tensor:
    """Zero the size_h x size_w rectangle at (top[b], left[b]) of each sample b."""
    h, w = x.shape[2:]
    rows = torch.arange(h, device=x.device)[None, :] - top.to(x.device)[:, None]
    cols = torch.arange(w, device=x.device)[None, :] - left.to(x.device)[:, None]
    cut = ((rows >= 0) & (rows < size_h))[:, :, None] & ((cols >= 0) & (cols < size_w))[:, None, :]
    return x * (~cut)[:, None].to(x.dtype)


def random_translation(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per sample, an integer shift uniform in [-s, s] on each axis, s = 1/8 of the side (rounded)."""
    b, _, h, w = x.shape
    sy, sx = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy = _randint(b, -sy, sy, generator, x.device)
    dx = _randint(b, -sx, sx, generator, x.device)
    return translate(x, dy, dx)


def random_cutout(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per sample, zero a square of half the side at a uniform position.

    Unlike the reference code, whose square may hang over the border (cutting less), the square lies wholly
    inside the image, so every sample loses exactly a quarter of its pixels.
    """
    b, _, h, w = x.shape
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    top = _randint(b, 0, h - ch, generator, x.device)
    left = _randint(b, 0, w - cw, generator, x.device)
    return cutout(x, top, left, ch, cw)


_AUGMENTS = {"color": color, "translation": random_translation, "cutout": random_cutout}


def diff_augment(
    x: torch.Tensor, policy: str = "color,translation,cutout", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply the policy's augmentations in order to the (B, C, H, W) batch x, each with its own draws per sample.

    Differentiable in x. `generator` must be a CPU generator; None draws from torch's global CPU generator.
    """
    parts = parse_policy(policy)
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"diff_augment draws on the CPU: pass a CPU torch.Generator, got one on {generator.device}")
    for part in parts:
        x = _AUGMENTS[part](x, generator)
    return x


def augmented(critic: Critic, policy: str, generator: torch.Generator | None = None) -> Critic:
    """The critic seeing diff_augment(image) instead of image: wrap the critic handed to the his.losses
    functions (critic and generator steps alike); each call draws afresh, so real and fake are augmented
    independently, as in the paper. An empty policy returns `critic` itself."""
    if not parse_policy(policy):
        return critic

    def critic_on_augmented(image: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return critic(diff_augment(image, policy, generator), cond)

    return critic_on_augmented
