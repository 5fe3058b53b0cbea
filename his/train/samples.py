"""The sample grid a run writes to TensorBoard and samples/latest.png, the same for every generator."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from his.constants import SAMPLE_RATE
from his.frames import centre_crop, to_images
from his.grid import make_grid, save_grid
from his.models import Generator, InstanceGenerator
from his.train.data import TrainingData


@torch.no_grad()
def log_samples(writer: SummaryWriter, generator: Generator, data: TrainingData, noise: torch.Tensor,
                 device: torch.device, run_dir: Path, step: int) -> None:
    """16 images for each fixed held-out sound beside its real frame (conditional), 16 drawn from each fixed
    frame's embedding beside it (InstanceGenerator), or 64 (unconditional); the sounds too (the audio dashboard),
    one per row of the grid."""
    generator.eval()
    if data.sample_cond is not None or isinstance(generator, InstanceGenerator):
        truth = to_images(centre_crop(data.sample_frames))
        given = truth if data.sample_cond is None else torch.from_numpy(data.sample_cond)
        n = len(given)
        cond = given.to(device).repeat_interleave(len(noise), dim=0)
        fake = generator(noise.repeat(n, 1).to(device), cond).float().cpu().view(n, len(noise), 3, 64, 64)
        images, nrow = torch.cat([fake, truth[:, None]], dim=1).flatten(0, 1), len(noise) + 1
    else:
        images, nrow = generator(noise.to(device)).float().cpu(), 8
    generator.train()
    writer.add_image("samples", make_grid(images, nrow), step)
    for row, pcm in enumerate(data.sample_audio if data.sample_audio is not None else []):
        writer.add_audio(f"samples/sound_of_row_{row}", torch.from_numpy(pcm / 32768).float()[None], step,
                         sample_rate=SAMPLE_RATE)
    save_grid(images, run_dir / "samples" / "latest.png", nrow)
