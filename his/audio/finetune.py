"""Fine-tune SoundNet-8 to classify the clip data set's classes (report §3.3).

A linear head on one layer's time-averaged activations (conv7 by default), trained on the train split's audio
windows with random time-shift and gain; a validation part of the train split, held out by video group (clips
of one group come from one recording), picks the best epoch and stops early; the test split is only scored.
`train_layers="all"` fine-tunes the whole network, `"head"` only the head. One process, or DDP when launched
with the torch.distributed environment variables (torchrun, or hpc.launch).

    python -m his.audio.finetune [CONFIG.toml] data=demo/clips out=demo/soundnet epochs=10
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from his.audio.soundnet import LAYERS, SoundNet8, layer_channels, load_pretrained, parse_layers
from his.data.dataset import load_split, read_classes, validation_mask
from his.config import ConfigError, config_to_dict, save_config, stage_main
from his.distributed import is_main_rank, setup_distributed
from his.io import exclusive_dir, save_torch, write_json

log = logging.getLogger("his.audio.finetune")  # not __name__, which is "__main__" under python -m


@dataclasses.dataclass
class FinetuneConfig:
    data: str = "demo/clips"  # clip data set directory (holds index.h5)
    out: str = "demo/soundnet"  # checkpoint, resolved config, TensorBoard log, summary
    layer: str = "conv7"
    train_layers: str = "all"  # "all": whole network; "head": the head only
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3  # head learning rate
    trunk_lr: float = 1e-4  # SoundNet layers, when train_layers="all"
    weight_decay: float = 1e-4
    val_fraction: float = 0.2  # of the train split's video groups
    patience: int = 4  # epochs without a better validation accuracy before stopping
    max_shift: float = 0.5  # time shift: circular, up to this fraction of the window
    gain_db: float = 6.0  # random gain in [-gain_db, +gain_db]
    seed: int = 0
    device: str = "auto"  # "auto": cuda when available


class SoundNetClassifier(nn.Module):
    """SoundNet-8 with a linear head on one layer's time-averaged activations, standardised first.

    The pretrained activations share a large common part across sounds; without the standardisation (fixed
    from the training clips before training) a linear head learns slowly and unreliably."""

    def __init__(self, soundnet: SoundNet8, layer: str, n_classes: int):
        super().__init__()
        self.soundnet = soundnet
        self.layer = layer
        channels = layer_channels(layer)
        self.register_buffer("feature_mean", torch.zeros(channels))
        self.register_buffer("feature_std", torch.ones(channels))
        self.head = nn.Linear(channels, n_classes)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        features = self.soundnet.embed(waveform, self.layer)
        return self.head((features - self.feature_mean) / self.feature_std)

    @torch.no_grad()
    def fit_standardisation(self, audio: torch.Tensor, batch_size: int = 64) -> None:
        device = self.feature_mean.device
        features = torch.cat([self.soundnet.embed(audio[i : i + batch_size].to(device), self.layer)
                              for i in range(0, len(audio), batch_size)])
        self.feature_mean.copy_(features.mean(0))
        if len(features) > 1:
            # A floor, so that channels nearly constant on the training clips do not blow up under augmentation.
            std = features.std(0)
            self.feature_std.copy_(std.clamp_min(0.1 * float(std.mean()) + 1e-6))


def augment(waveform: torch.Tensor, max_shift: float, gain_db: float, generator: torch.Generator) -> torch.Tensor:
    """Per clip: a circular time shift of up to `max_shift` of the window and a gain of up to +-`gain_db`."""
    n, length = waveform.shape
    limit = int(max_shift * length)
    shifts = torch.randint(-limit, limit + 1, (n,), generator=generator)
    positions = (torch.arange(length)[None, :] - shifts[:, None]) % length
    shifted = torch.gather(waveform, 1, positions.to(waveform.device))
    gains = 10 ** ((torch.rand(n, 1, generator=generator) * 2 - 1) * gain_db / 20)
    return (shifted * gains.to(waveform.device)).clamp(-1, 1)


def pcm_to_float(audio: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(audio.astype(np.float32) / 32768.0)


@torch.no_grad()
def accuracy(model: nn.Module, audio: torch.Tensor, labels: torch.Tensor, device: torch.device,
             batch_size: int = 64) -> float:
    if len(labels) == 0:
        return float("nan")
    correct = 0
    for i in range(0, len(labels), batch_size):
        logits = model(audio[i : i + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == labels[i : i + batch_size]).sum())
    return correct / len(labels)


def save_checkpoint(path: Path, model: SoundNetClassifier, cfg: FinetuneConfig, classes: list[str],
                    metrics: dict) -> None:
    """Atomic; loads with torch.load(weights_only=True)."""
    state = {"soundnet": model.soundnet.state_dict(), "head": model.head.state_dict(),
             "feature_mean": model.feature_mean, "feature_std": model.feature_std, "layer": model.layer,
             "classes": list(classes), "config": config_to_dict(cfg), "metrics": metrics}
    save_torch(state, path)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SoundNetClassifier, dict]:
    """The fine-tuned classifier (eval mode) and the checkpoint's other entries (layer, classes, config ...)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    soundnet = SoundNet8()
    soundnet.load_state_dict(state["soundnet"])
    model = SoundNetClassifier(soundnet, state["layer"], len(state["classes"]))
    model.head.load_state_dict(state["head"])
    model.feature_mean.copy_(state["feature_mean"])
    model.feature_std.copy_(state["feature_std"])
    tensors = ("soundnet", "head", "feature_mean", "feature_std")
    return model.to(device).eval(), {k: v for k, v in state.items() if k not in tensors}


def run(cfg: FinetuneConfig) -> dict:
    """Fine-tune, keep the best validation epoch, score train/val/test; returns the summary (also summary.json).

    Rank 0 holds `out` as its one writer (his.io.exclusive_dir) from before any work to the end."""
    if cfg.train_layers not in ("all", "head"):
        raise ConfigError(f"config: train_layers={cfg.train_layers!r} must be all | head")
    if not cfg.data or not (Path(cfg.data) / "index.h5").is_file():
        raise ConfigError(f"config: data={cfg.data!r}: no index.h5 there")
    with exclusive_dir(cfg.out, "his.audio.finetune") if is_main_rank() else contextlib.nullcontext():
        return _finetune(cfg)


def _finetune(cfg: FinetuneConfig) -> dict:
    dd = setup_distributed(cfg.device)
    rank, world, device = dd.rank, dd.world, dd.device
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    index_path = Path(cfg.data) / "index.h5"
    classes = read_classes(index_path)
    train = load_split(index_path, "train", ["audio", "label", "group"])
    test = load_split(index_path, "test", ["audio", "label"])
    is_val = validation_mask(train["label"], train["group"], cfg.val_fraction, cfg.seed)
    parts = {
        "train": (pcm_to_float(train["audio"][~is_val]), torch.from_numpy(train["label"][~is_val].astype(np.int64))),
        "val": (pcm_to_float(train["audio"][is_val]), torch.from_numpy(train["label"][is_val].astype(np.int64))),
        "test": (pcm_to_float(test["audio"]), torch.from_numpy(test["label"].astype(np.int64))),
    }

    model = SoundNetClassifier(load_pretrained(), cfg.layer, len(classes)).to(device)
    # Eval mode throughout: small fine-tuning batches would spoil the batch-norm statistics learnt on two
    # million videos; the layers' weights still learn when train_layers="all" (the head has no such layers).
    model.eval()
    model.fit_standardisation(parts["train"][0])
    model.soundnet.requires_grad_(cfg.train_layers == "all")
    above = list(LAYERS)[max(list(LAYERS).index(name) for name in parse_layers(cfg.layer)) + 1 :]
    for unused in [model.soundnet.objects, model.soundnet.places, *(model.soundnet.blocks[n] for n in above)]:
        unused.requires_grad_(False)  # DDP requires every trained parameter to get a gradient
    param_groups = [{"params": model.head.parameters(), "lr": cfg.lr}]
    if cfg.train_layers == "all":
        trunk = [p for p in model.soundnet.parameters() if p.requires_grad]
        param_groups.append({"params": trunk, "lr": cfg.trunk_lr})
    optimizer = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay)
    trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model

    train_set = TensorDataset(*parts["train"])
    sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.seed) if world > 1 else None
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                        drop_last=False)
    generator = torch.Generator().manual_seed(cfg.seed + rank)

    checkpoint = out / "soundnet_finetuned.pt"
    writer = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.toml")
        writer = SummaryWriter(str(out / "tb"))
    best_val, best_epoch = -1.0, -1
    for epoch in range(cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        for audio, labels in tqdm(loader, desc=f"epoch {epoch}", disable=rank != 0, leave=False):
            audio = augment(audio, cfg.max_shift, cfg.gain_db, generator).to(device)
            loss = F.cross_entropy(trained(audio), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen, loss_sum = seen + len(labels), loss_sum + loss.item() * len(labels)
        # Every rank scores the same validation set with the same weights; rank 0's decision is broadcast so
        # all ranks stop together.
        val_acc = torch.tensor([accuracy(model, *parts["val"], device)], device=device)
        if world > 1:
            dist.broadcast(val_acc, 0)
        val = float(val_acc)
        improved = math.isnan(val) or val > best_val  # no validation clips: keep the latest epoch
        if rank == 0:
            writer.add_scalar("finetune/loss", loss_sum / max(seen, 1), epoch)
            writer.add_scalar("finetune/val_accuracy", val, epoch)
            writer.add_scalar("finetune/clips_per_s", seen * world / (time.perf_counter() - started), epoch)
            log.info(f"epoch {epoch}: loss {loss_sum / max(seen, 1):.4f} val {val:.3f}")
            if improved:
                save_checkpoint(checkpoint, model, cfg, classes, {"epoch": epoch, "val_accuracy": val})
        if improved:
            best_val, best_epoch = val, epoch
        elif epoch - best_epoch >= cfg.patience:
            break

    if world > 1:
        dist.barrier()
    best, _ = load_checkpoint(checkpoint, device)
    summary = {"checkpoint": str(checkpoint), "best_epoch": best_epoch, "layer": cfg.layer,
               "train_layers": cfg.train_layers, "world_size": world, "classes": classes,
               **{f"{name}_clips": len(labels) for name, (_, labels) in parts.items()},
               **{f"{name}_accuracy": accuracy(best, *part, device) for name, part in parts.items()}}
    if rank == 0:
        save_checkpoint(checkpoint, best, cfg, classes, summary)
        write_json(out / "summary.json", summary)
        writer.close()
    if world > 1:
        dist.barrier()
    dd.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    return stage_main(FinetuneConfig, run, argv, prog="his.audio.finetune", doc=__doc__,
                      show=lambda summary: print({k: v for k, v in summary.items() if k != "classes"}))


if __name__ == "__main__":
    raise SystemExit(main())
