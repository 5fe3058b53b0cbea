"""Checkpoints and randomness: atomic save with rotation, the newest readable one, warm start, RNG states.

A checkpoint holds G, D, their optimisers, step, epoch, sampler position, the RNG states and the config.
Randomness inside a step comes from `step_generator(seed, rank, step)`, so a resumed run draws the same
noise as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from his.config import ConfigError, config_changes, config_to_dict, describe_changes
from his.distributed import is_main_rank
from his.io import exclusive_dir, save_torch
from his.train.config import RESUMABLE

BEST = "best.pt"

log = logging.getLogger(__name__)


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The generator for all randomness of one training step: the same on resume, distinct per rank."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def rng_state() -> dict[str, Any]:
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, key.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(key, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, payload: dict[str, Any], keep: int) -> Path:
    """Atomic: written under a temporary name and renamed, so a kill mid-write leaves no step-*.pt behind."""
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step-{step:08d}.pt"
    save_torch(payload, path)
    # Rotation counts only checkpoints up to this step: the one just written always stays, and so do the
    # `keep - 1` before it, whatever a later-numbered file (say, one a resume could not read) holds.
    for old in [p for p in sorted(ckpt_dir.glob("step-*.pt")) if p.name <= path.name][:-keep]:
        old.unlink()
    return path


def hold_run_dir(run_dir: str | os.PathLike, what: str) -> contextlib.AbstractContextManager:
    """The run directory held by its one writer, `what` (rank 0; other ranks hold nothing), with the temporary
    files a killed writer left (torn checkpoints among them) removed once it is held."""
    if not is_main_rank():
        return contextlib.nullcontext()
    return exclusive_dir(run_dir, what, temp_dirs=("", "checkpoints", "samples"))


def save_best(run_dir: Path, payload: dict[str, Any]) -> Path:
    """checkpoints/best.pt: the state with the best validation accuracy so far (kept apart from the rotation)."""
    path = run_dir / "checkpoints" / BEST
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch(payload, path)
    return path


def chosen_checkpoint(run_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """What evaluation and generation use: the best on validation when the run kept one, else the newest."""
    best = Path(run_dir, "checkpoints", BEST)
    if best.is_file():
        try:
            return best, load_checkpoint(best)
        except Exception as e:
            log.warning(f"checkpoint {best}: unreadable ({type(e).__name__}); using the newest instead")
    return latest_checkpoint(run_dir)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def latest_checkpoint(run_dir: str | os.PathLike, set_aside: bool = False) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of a run that loads; unreadable ones are reported and passed over, and with
    `set_aside` (the run that resumes, and so owns the directory) renamed to *.pt.unreadable, kept for a look
    but out of every later count."""
    for path in sorted(Path(run_dir, "checkpoints").glob("step-*.pt"), reverse=True):
        try:
            return path, load_checkpoint(path)
        except Exception as e:  # a torn or foreign file: fall back to the previous one
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e) else type(e).__name__
            if set_aside:
                path.rename(path.with_name(path.name + ".unreadable"))
            log.warning(f"checkpoint {path}: unreadable ({reason}); "
                        f"{'set aside as ' + path.name + '.unreadable; ' if set_aside else ''}trying an older one")
    return None


def warm_start(model: nn.Module, pretrained: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy every pretrained tensor whose name and shape match; return (loaded, fresh) names."""
    own = model.state_dict()
    loaded = [k for k, v in own.items() if k in pretrained and pretrained[k].shape == v.shape]
    model.load_state_dict({k: pretrained[k] for k in loaded}, strict=False)
    return loaded, [k for k in own if k not in loaded]


def weights_digest(*models: nn.Module) -> str:
    h = hashlib.sha256()
    for m in models:
        for k, v in m.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()




def sampling_weights(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The generator weights to draw samples with: the moving average when the run kept one (ema_decay > 0)."""
    return ckpt.get("generator_ema", ckpt["generator"])


def resumable_checkpoint(cfg: Any, run_dir: Path, owner: bool) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of the run to resume (None when there is none or cfg.resume is off);
    ConfigError, one line, when it was trained with a config that differs beyond what a resume may change."""
    resumed = latest_checkpoint(run_dir, set_aside=owner) if cfg.resume else None
    if resumed is not None:
        path, ckpt = resumed
        changed = {k: v for k, v in config_changes(ckpt.get("config", {}), config_to_dict(cfg)).items()
                   if k not in RESUMABLE}
        if changed:
            raise ConfigError(f"config: {path} was trained with another config ({describe_changes(changed)}); "
                              "resume it with that config, train into another out, or set resume=false")
    return resumed
