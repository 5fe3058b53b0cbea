"""Stage two of the two-stage method (after Sound2Scene, Sung-Bin et al., CVPR 2023): a head that maps a sound's
SoundNet features into stage one's image embedding space. A sound is then drawn as sound -> embedding -> stage
one's generator with noise (his.models.TwoStageGenerator); stage one (pretrain with generator=instance) learned
the drawing without any sound, from every training frame and the PPMI images.

The targets are stage one's embeddings of the clips' own frames, h = E(x). The loss is a regression, the squared
distance between unit vectors |f(s) - h|^2, plus infonce_weight x InfoNCE (van den Oord et al. 2018), symmetric
as in CLIP (Radford et al. 2021): within a batch the sound's predicted embedding must pick out its own frame's
among the others', and the frame its own sound's. The regression lands the prediction where the drawing was
trained; the contrastive term keeps what tells one clip's scene from another's, which the regression to a mean
blurs. Only the head trains: the decoder stays stage one's (its moving average).

It writes what a his.train run writes (config.toml, checkpoints with "generator", best.pt on validation, tb/,
samples/, summary.json), resumes the same way, and his.eval, his.generate and hpc.launch read it like any run.
Each rank trains the same head from the same seed (it is small); only rank 0 writes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.tensorboard import SummaryWriter

from his.config import ConfigError, config_to_dict, save_config
from his.distributed import Distributed
from his.frames import centre_crop, to_images
from his.hparams import log_hparams
from his.io import write_json
from his.losses import NonFiniteLoss, infonce
from his.models import InstanceGenerator, TwoStageGenerator
from his.train.checkpoint import (
    load_checkpoint, resumable_checkpoint, rng_state, sampling_weights, save_best, save_checkpoint, set_rng_state,
    weights_digest,
)
from his.train.config import TrainConfig
from his.train.data import Batches, TrainingData
from his.train.samples import log_samples
from his.train.validation import is_new_best, validation_for

log = logging.getLogger(__name__)
SHARED_FIELDS = ("ngf", "z_dim", "proj_dim", "embed_dim")  # what stage one's networks were built with


def alignment_loss(pred: torch.Tensor, target: torch.Tensor, infonce_weight: float,
                   temperature: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    regression = (pred - target).pow(2).sum(dim=1).mean()
    contrastive = infonce(pred, target, temperature)
    top1 = (pred @ target.T).argmax(dim=1).eq(torch.arange(len(pred), device=pred.device)).float().mean()
    terms = {"regression": regression.detach(), "infonce": contrastive.detach(), "batch_r1": top1}
    return regression + infonce_weight * contrastive, terms


def load_stage_one(cfg: TrainConfig) -> InstanceGenerator:
    """Stage one's generator (its moving average) from cfg.init_from, built as it was trained; ConfigError, one
    line, for a missing file, another generator or other widths than this run's."""
    if not cfg.init_from:
        raise ConfigError("config: generator=two-stage needs init_from= a stage-one checkpoint "
                          "(python -m his.train pretrain generator=instance ...)")
    path = Path(cfg.init_from)
    if not path.is_file():
        raise ConfigError(f"config: init_from={cfg.init_from!r}: no such checkpoint file")
    state = load_checkpoint(path)
    trained = state.get("config", {})
    if trained.get("generator") != "instance":
        raise ConfigError(f"config: init_from={cfg.init_from!r} was trained with generator="
                          f"{trained.get('generator')!r}; two-stage needs a pretrain run with generator=instance")
    differ = [f"{k}={trained.get(k)} there, {getattr(cfg, k)} here" for k in SHARED_FIELDS
              if trained.get(k) != getattr(cfg, k)]
    if differ:
        raise ConfigError(f"config: init_from={cfg.init_from!r} was built otherwise: {'; '.join(differ)}")
    stage_one = InstanceGenerator(z_dim=cfg.z_dim, ngf=cfg.ngf, proj_dim=cfg.proj_dim, embed_dim=cfg.embed_dim)
    stage_one.load_state_dict(sampling_weights(state))
    return stage_one.eval()


@torch.no_grad()
def embed_frames(stage_one: InstanceGenerator, frames, device: torch.device, batch: int = 256) -> torch.Tensor:
    """Stage one's embeddings (N, embed_dim) of uint8 frames (N, H, W, 3), centre-cropped as evaluation reads them."""
    images = to_images(centre_crop(frames))
    return torch.cat([stage_one.embed(images[i : i + batch].to(device)) for i in range(0, len(images), batch)])


def train_alignment(cfg: TrainConfig, data: TrainingData, dd: Distributed, stop: Callable[[], bool]) -> dict[str, Any]:
    """Train the head for cfg.max_steps updates (resuming a run in cfg.out), choosing the checkpoint on
    validation; returns the run's summary, as his.train's loop does."""
    run_dir, device = Path(cfg.out), dd.device
    say = log.info if dd.is_main else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)
    stage_one = load_stage_one(cfg).to(device)
    targets = embed_frames(stage_one, data.frames, device)
    cond = torch.from_numpy(data.cond).to(device)
    model = TwoStageGenerator(cfg.cond_dim, cfg.z_dim, cfg.ngf, cfg.proj_dim, cfg.embed_dim).to(device)
    model.decoder.load_state_dict(stage_one.decoder.state_dict())
    model.decoder.requires_grad_(False)
    opt = torch.optim.Adam(model.head.parameters(), lr=cfg.head_lr)
    step, epoch, position, best = 0, 0, 0, {}
    resumed = resumable_checkpoint(cfg, run_dir, dd.is_main)
    if resumed is not None:
        path, ckpt = resumed
        model.load_state_dict(ckpt["generator"])
        opt.load_state_dict(ckpt["opt_head"])
        set_rng_state(ckpt["rng"])
        step, epoch, position, best = ckpt["step"], ckpt["epoch"], ckpt["position"], ckpt.get("best", {})
        say(f"resumed from {path} at step {step}")
    batches = Batches(len(cond), cfg.batch_size, 1, 0, cfg.seed, epoch, position)  # every rank: the same head

    writer = validation = None
    if dd.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.toml")
        writer = SummaryWriter(str(run_dir / "tb"), purge_step=step if step else None)
        validation = validation_for(cfg, data, device)
        if validation is not None:
            writer.add_scalar("val/ceiling", validation.ceiling, step)
    sample_noise = torch.randn(16, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))

    def state() -> dict[str, Any]:
        return {"generator": model.state_dict(), "opt_head": opt.state_dict(), "step": step, "epoch": batches.epoch,
                "position": batches.position, "rng": rng_state(), "config": config_to_dict(cfg), "conditional": True,
                "world_size": dd.world, **({"best": dict(best)} if best else {})}

    def validate() -> None:
        accuracy = validation(model)
        writer.add_scalar("val/conditional_accuracy", accuracy, step)
        if is_new_best(best, accuracy):
            best.update(step=step, val_accuracy=accuracy)
            best["checkpoint"] = str(save_best(run_dir, state()))

    say(f"aligning sounds to stage one's embedding ({cfg.init_from}) on {device}: {len(cond)} clips, "
        f"batch {cfg.batch_size}, {cfg.max_steps} head updates, from step {step}")
    status, terms, ckpt_path, started, first_step = "completed", {}, None, time.perf_counter(), step
    while step < cfg.max_steps:
        rows = torch.from_numpy(next(batches)).to(device)
        loss, terms = alignment_loss(model.head(cond[rows]), targets[rows], cfg.infonce_weight, cfg.infonce_temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"non-finite alignment loss at step {step} (head_lr={cfg.head_lr})")
        if dd.is_main and step % cfg.log_every == 0:
            for k, v in terms.items():
                writer.add_scalar(f"loss/{k}", float(v), step)
        if dd.is_main and step % cfg.sample_every == 0:
            log_samples(writer, model, data, sample_noise, device, run_dir, step)
        if validation is not None and step % cfg.val_every == 0:
            validate()
        if stop():
            status = "interrupted"
            say(f"stop requested at step {step}: checkpointing")
            break
        if dd.is_main and step % cfg.ckpt_every == 0:
            ckpt_path = save_checkpoint(run_dir, step, state(), cfg.keep_checkpoints)
    seconds = time.perf_counter() - started
    if validation is not None and status == "completed" and step % cfg.val_every != 0:
        validate()
    summary = {"status": status, "step": step, "epoch": batches.epoch, "run_dir": str(run_dir),
               "final": {k: float(v) for k, v in terms.items()}, "init_from": cfg.init_from,
               **({"best": best, "val_ceiling": validation.ceiling} if validation else {}),
               **({"s_per_step": seconds / (step - first_step)} if step > first_step else {}),
               "weights_sha256": weights_digest(model)}
    if dd.is_main:
        if ckpt_path is None or not ckpt_path.name.endswith(f"{step:08d}.pt"):
            ckpt_path = save_checkpoint(run_dir, step, state(), cfg.keep_checkpoints)
        summary["checkpoint"] = str(ckpt_path)
        log_samples(writer, model, data, sample_noise, device, run_dir, step)
        log_hparams(writer, config_to_dict(cfg))
        writer.close()
        write_json(run_dir / "summary.json", summary)
    return summary
