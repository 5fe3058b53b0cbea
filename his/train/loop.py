"""The training loop: build the GAN, resume or warm-start, then (1) update D n_d times, (2) update G, repeat.

Only rank 0 writes logs and checkpoints. Everything a run writes lives in `cfg.out` (see his.train).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.tensorboard import SummaryWriter

from his.augment import augmented, diff_augment
from his.config import ConfigError, config_to_dict, save_config
from his.distributed import Distributed, setup_distributed
from his.frames import centre_crop, to_images
from his.hparams import log_hparams
from his.io import write_json
from his.losses import NonFiniteLoss, clip_weights, critic_loss, critic_steps, generator_loss, infonce
from his.models import (
    Critic, Generator, InstanceGenerator, ProjectionCritic, RetrievalGenerator, build_critic, build_generator,
)
from his.train.checkpoint import (
    hold_run_dir, load_checkpoint, resumable_checkpoint, rng_state, save_best, save_checkpoint, set_rng_state,
    step_generator, warm_start, weights_digest,
)
from his.train.config import LR_SCALING, GANConfig, TrainConfig, rank_batch, resolve
from his.train.align import train_alignment
from his.train.data import Batches, TrainingData, WrongSounds, load_clips, load_images, make_batch
from his.train.samples import log_samples
from his.train.validation import is_new_best, validation_for

log = logging.getLogger(__name__)


class StopRequest:
    """Set by the stop signals (main thread only) or by the caller's should_stop()."""

    def __init__(self, names: list[str], should_stop: Callable[[], bool] | None):
        self.reason: str | None = None
        self.should_stop = should_stop
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for name in names:
                sig = getattr(signal, name)
                self.previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.reason = signal.Signals(signum).name

    def __call__(self) -> bool:
        if self.reason is None and self.should_stop is not None and self.should_stop():
            self.reason = "should_stop"
        return self.reason is not None

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@dataclass
class GAN:
    """The two networks, their optimisers, and the forms a step calls them in.

    DDP averages gradients over ranks. The generator step calls the plain critic (its gradients are not
    wanted); the gradient penalty calls the DDP critic eagerly: compiled double backward is not trusted.
    """

    generator: Generator
    critic: Critic | ProjectionCritic
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    generate: Callable  # generator, DDP-wrapped and/or compiled
    criticise: Callable  # critic for the critic loss, DDP-wrapped and/or compiled
    criticise_for_g: Callable  # plain critic (compiled) for the generator loss
    criticise_for_gp: Callable  # DDP critic, eager, for the gradient penalty
    ema: AveragedModel | None = None  # the moving average of G (Karras et al. 2018; Yazici et al. 2019)

    @property
    def sampler(self) -> nn.Module:
        """The generator that draws samples: the moving average when there is one."""
        return self.generator if self.ema is None else self.ema.module

    def set_lr(self, lr: float) -> None:
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = lr


def _optimiser(cfg: GANConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.RMSprop(params, lr=cfg.lr)


def build_gan(cfg: GANConfig, cond_dim: int, device: torch.device, n_classes: int = 0,
              data: TrainingData | None = None) -> GAN:
    """The networks, optimisers and EMA of `cfg`; a retrieval generator gets `data`'s training rows as its gallery
    (before the EMA copies it)."""
    torch.manual_seed(cfg.seed)
    generator = build_generator(cfg.generator, cond_dim, cfg.z_dim, cfg.ngf, cfg.proj_dim, cfg.neighbours,
                                cfg.embed_dim, cfg.heard_class, cfg.edit).to(device)
    if isinstance(generator, RetrievalGenerator):
        generator.set_gallery(to_images(centre_crop(data.frames)), torch.from_numpy(data.cond),
                              torch.from_numpy(data.groups), torch.from_numpy(data.labels))
    critic_cond_dim = cfg.embed_dim if isinstance(generator, InstanceGenerator) else cond_dim  # IC-GAN: D reads h
    proj_dim = cfg.proj_dim if cfg.critic == "concat" else None  # projection: one linear embedding, as published
    aux_classes = data.n_classes if cfg.class_weight > 0 else 0
    critic = build_critic(cfg.critic, critic_cond_dim, cfg.ndf, proj_dim, cfg.critic_norm, cfg.spectral_norm,
                          cfg.critic_pool, n_classes, aux_classes).to(device)
    if cfg.channels_last:
        generator, critic = generator.to(memory_format=torch.channels_last), critic.to(memory_format=torch.channels_last)
    # The EMA averages batch-norm statistics too (use_buffers), so its samples need no statistics of their own.
    ema = AveragedModel(generator, multi_avg_fn=ema_with_warmup(cfg.ema_decay), use_buffers=True) \
        if cfg.ema_decay > 0 else None
    return GAN(generator, critic, _optimiser(cfg, generator.parameters()), _optimiser(cfg, critic.parameters()),
               generator, critic, critic, critic, ema)


def ema_with_warmup(decay: float) -> Callable:
    """EMA whose decay after n updates is min(decay, (1 + n) / (10 + n)), as TensorFlow's ExponentialMovingAverage
    with num_updates: a plain 0.999 average still holds about half of the initial weights after 600 steps."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(averaged, current, num_averaged)

    return update


def distribute(gan: GAN, cfg: GANConfig, dd: Distributed) -> None:
    """Wrap for DDP (more than one rank) and torch.compile (cfg.compile), after any checkpoint is loaded."""
    ids = [dd.device] if dd.device.type == "cuda" else None
    if dd.world > 1 and isinstance(gan.generator, RetrievalGenerator):  # every rank holds the same gallery
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            gan.generator, [name for name in RetrievalGenerator.GALLERY if hasattr(gan.generator, name)])
    wrap = lambda m: DistributedDataParallel(m, device_ids=ids, broadcast_buffers=_has_batch_norm(m))  # noqa: E731
    gen = wrap(gan.generator) if dd.world > 1 else gan.generator
    critic = wrap(gan.critic) if dd.world > 1 else gan.critic
    gan.generate, gan.criticise, gan.criticise_for_g, gan.criticise_for_gp = gen, critic, gan.critic, critic
    if cfg.compile:
        gan.generate, gan.criticise, gan.criticise_for_g = torch.compile(gen), torch.compile(critic), torch.compile(gan.critic)


def _has_batch_norm(model: nn.Module) -> bool:
    """Whether DDP must broadcast the model's buffers before each forward: batch norm's running statistics
    drift apart per rank; spectral norm's power-iteration vectors follow from weights every rank shares."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class Throughput:
    """Images per second and the fraction of time spent waiting for data, per log interval and per run.

    The run figure leaves out the first step (compilation, allocator warm-up).
    """

    def __init__(self, world: int) -> None:
        self.world = world
        self.tick, self.images, self.wait_s = time.perf_counter(), 0, 0.0
        self.run_start: float | None = None
        self.run_images = 0

    def batch(self, size: int, wait_s: float) -> None:
        self.images += size * self.world
        self.wait_s += wait_s
        if self.run_start is not None:
            self.run_images += size * self.world

    def first_step_done(self) -> None:
        if self.run_start is None:
            self.run_start = time.perf_counter()

    def interval(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.tick
        figures = {"images_per_s": self.images / elapsed, "data_wait_fraction": self.wait_s / elapsed}
        self.tick, self.images, self.wait_s = time.perf_counter(), 0, 0.0
        return figures

    def run_figures(self, timed_steps: int) -> dict[str, float]:
        if self.run_start is None or timed_steps <= 0:
            return {}
        seconds = time.perf_counter() - self.run_start
        return {"s_per_step": seconds / timed_steps, "images_per_s": self.run_images / seconds}


@dataclass
class StepResult:
    terms: dict[str, torch.Tensor]
    critic_steps: int
    grad_norms: dict[str, torch.Tensor]  # only when asked for (log steps)


def train_step(cfg: GANConfig, gan: GAN, data: TrainingData, batches: Batches, wrong: WrongSounds | None,
               step: int, rank: int, device: torch.device, meter: Throughput,
               autocast: Callable[[], AbstractContextManager], measure: bool) -> StepResult:
    """One generator step: n_d critic updates on fresh real batches, then one generator update conditioned on
    the last batch's sounds. All randomness comes from step_generator(seed, rank, step)."""
    rng = step_generator(cfg.seed, rank, step)
    grad_norms: dict[str, torch.Tensor] = {}

    # (1) update D
    n_d = critic_steps(cfg.objective, step, cfg.n_critic, cfg.warmup_gen_steps, cfg.warmup_critic_steps, cfg.warmup_every)
    for i in range(n_d):
        t0 = time.perf_counter()
        rows = next(batches)
        real, cond, critic_cond, wrong_cond = make_batch(data, rows, wrong, rng, device, cfg.flip, cfg.channels_last)
        # a retrieval generator never draws a row from a frame of its own player (a held-out sound's never is)
        own = {"exclude_groups": torch.from_numpy(data.groups[rows]).to(device)} \
            if isinstance(gan.generator, RetrievalGenerator) else {}
        critic_real = real
        if isinstance(gan.generator, InstanceGenerator):
            cond, critic_cond, critic_real = instance_batch(gan.generator, real, cfg.neighbours, rng)
        meter.batch(real.shape[0], time.perf_counter() - t0)
        z = torch.randn(real.shape[0], cfg.z_dim, generator=rng).to(device)
        gp_eps = torch.rand(real.shape[0], 1, 1, 1, generator=rng).to(device)
        with torch.no_grad(), autocast():
            fake = gan.generate(z, cond, **own).to(real.dtype)  # one input dtype for the critic (no compile re-tracing)
        with autocast():  # DiffAugment on real, fake and mismatched inputs alike; the penalty sees them plain
            loss_d, terms_d = critic_loss(cfg.objective, augmented(gan.criticise, cfg.diffaugment, rng), critic_real, fake,
                                          critic_cond, wrong_cond, cfg.alpha, cfg.gp_lambda, gp_critic=gan.criticise_for_gp,
                                          gp_eps=gp_eps)
        if cfg.class_weight > 0:  # AC-GAN: the critic learns the class from real frames only
            labels = torch.from_numpy(data.labels[rows]).to(device)
            terms_d["class_real"] = F.cross_entropy(augmented(gan.critic.classify, cfg.diffaugment, rng)(real).float(),
                                                    labels)
            loss_d = loss_d + cfg.class_weight * terms_d["class_real"]
            terms_d["class_real"] = terms_d["class_real"].detach()
        if cfg.contrastive_weight > 0:  # XMC-GAN: the critic learns which sound goes with which real frame
            terms_d["contrastive_real"] = infonce(*_match(gan.critic, cfg.diffaugment, rng, real, cond),
                                                  cfg.infonce_temperature)
            loss_d = loss_d + cfg.contrastive_weight * terms_d["contrastive_real"]
            terms_d["contrastive_real"] = terms_d["contrastive_real"].detach()
        gan.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        if measure and i == n_d - 1:
            grad_norms["critic"] = _grad_norm(gan.critic)
        gan.opt_d.step()
        if cfg.objective == "wgan":
            clip_weights(gan.critic, cfg.clip)

    # (2) update G
    gan.critic.requires_grad_(False)
    z = torch.randn(real.shape[0], cfg.z_dim, generator=rng).to(device)
    with autocast():
        fake = gan.generate(z, cond, **own)
        loss_g, terms_g = generator_loss(cfg.objective, augmented(gan.criticise_for_g, cfg.diffaugment, rng),
                                         fake, critic_cond)
        if cfg.class_weight > 0:  # AC-GAN: drawn to be read as the clip's class
            terms_g["class_fake"] = F.cross_entropy(
                augmented(gan.critic.classify, cfg.diffaugment, rng)(fake).float(), labels)
            loss_g = loss_g + cfg.class_weight * terms_g["class_fake"]
            terms_g["class_fake"] = terms_g["class_fake"].detach()
        if cfg.contrastive_weight > 0:  # XMC-GAN: G's image must pick out its own sound among the batch's
            terms_g["contrastive_fake"] = infonce(*_match(gan.critic, cfg.diffaugment, rng, fake, cond),
                                                  cfg.infonce_temperature)
            loss_g = loss_g + cfg.contrastive_weight * terms_g["contrastive_fake"]
            terms_g["contrastive_fake"] = terms_g["contrastive_fake"].detach()
        if isinstance(gan.generator, InstanceGenerator) and cfg.infonce_weight > 0:
            # SimCLR (Chen et al. 2020): two augmented views of each image embed nearer each other than the
            # batch's other images, so the encoder cannot collapse to one embedding the decoder may ignore
            views = [gan.generator.embed(diff_augment(real.flip(3) if i else real, SIMCLR_VIEWS, rng)) for i in (0, 1)]
            classes = torch.from_numpy(data.labels[rows]).to(device) if cfg.infonce_positives == "class" else None
            terms_g["infonce"] = infonce(*views, cfg.infonce_temperature, classes)
            loss_g = loss_g + cfg.infonce_weight * terms_g["infonce"]
            terms_g["infonce"] = terms_g["infonce"].detach()
        if cfg.l1_weight > 0:  # pix2pix (Isola et al. 2017): the sound's own frame, pixel by pixel
            terms_g["l1"] = (fake.float() - real.float()).abs().mean()
            loss_g = loss_g + cfg.l1_weight * terms_g["l1"]
            terms_g["l1"] = terms_g["l1"].detach()
    gan.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    gan.critic.requires_grad_(True)
    if measure:
        grad_norms["generator"] = _grad_norm(gan.generator)
    gan.opt_g.step()
    if gan.ema is not None:
        gan.ema.update_parameters(gan.generator)
    return StepResult({**terms_d, **terms_g}, n_d, grad_norms)


def _match(critic: ProjectionCritic, policy: str, rng: torch.Generator, image: torch.Tensor,
           cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The critic's unit image features of the augmented images and unit sound embeddings (XMC-GAN's pairs)."""
    return augmented(critic.match, policy, rng)(image, cond)


SIMCLR_VIEWS = "color,translation"  # the two views of stage one's contrastive term, one of them flipped


@torch.no_grad()
def instance_batch(generator: InstanceGenerator, real: torch.Tensor, neighbours: int,
                   rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage one of the two-stage method, IC-GAN's pairs (Casanova et al. 2021): G draws from each image's
    embedding h_i (the image is its condition), and the critic reads h_i beside a real image from the
    instance's neighbourhood, one of its `neighbours` nearest in the batch by h (itself among them), so that G
    learns the neighbourhood rather than the one image. h is detached: the critic does not shape the encoder.
    Returns (G's condition, the critic's condition, the critic's real images)."""
    h = generator.embed(real).float()
    k = min(neighbours, len(h))
    nearest = torch.cdist(h, h).topk(k, dim=1, largest=False).indices
    pick = torch.randint(0, k, (len(h),), generator=rng).to(h.device)
    return real, h.to(real.dtype), real[nearest[torch.arange(len(h), device=h.device), pick]]


def learning_rate(cfg: GANConfig, epoch: int, global_batch: int | None = None) -> float:
    """The report's schedule: cfg.lr halved every `lr_halve_every` epochs (0: constant), scaled to the global
    batch by cfg.lr_scaling (none by default)."""
    scale = (global_batch / cfg.lr_base_batch) ** LR_SCALING[cfg.lr_scaling] if global_batch else 1.0
    return cfg.lr * scale * (0.5 ** (epoch // cfg.lr_halve_every) if cfg.lr_halve_every > 0 else 1.0)


def _grad_norm(model: nn.Module) -> torch.Tensor:
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])


def run(cfg: GANConfig, should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train (TrainConfig) or pretrain (PretrainConfig); returns a summary with "status" completed|interrupted.

    Raises ConfigError before any training for a bad config, InputError for a data set that does not match
    its manifest or a run directory another run holds, NonFiniteLoss when a loss term is NaN/inf.
    """
    cfg = resolve(cfg)
    with hold_run_dir(cfg.out, "his.train" if isinstance(cfg, TrainConfig) else "his.train pretrain"):
        data = load_clips(cfg) if isinstance(cfg, TrainConfig) else load_images(cfg)
        dd = setup_distributed(cfg.device)
        stop = StopRequest(cfg.stop_signals, should_stop)
        try:
            if cfg.generator == "two-stage":  # stage two trains a head, not a GAN
                return train_alignment(cfg, data, dd, stop)
            return _train(cfg, data, dd, stop)
        finally:
            stop.restore()
            dd.close()


def _restore(cfg: GANConfig, gan: GAN, run_dir: Path, conditional: bool, say: Callable,
             owner: bool) -> tuple[tuple[int, int, int], dict, dict]:
    """Resume from the newest readable checkpoint, else warm-start from cfg.init_from; ((step, epoch, position),
    the warm-start report, the best validation so far)."""
    resumed = resumable_checkpoint(cfg, run_dir, owner)
    if resumed is not None:
        path, ckpt = resumed
        gan.generator.load_state_dict(ckpt["generator"])
        gan.critic.load_state_dict(ckpt["critic"])
        gan.opt_g.load_state_dict(ckpt["opt_generator"])
        gan.opt_d.load_state_dict(ckpt["opt_critic"])
        if gan.ema is not None:
            gan.ema.load_state_dict(ckpt["generator_ema_state"])
        set_rng_state(ckpt["rng"])
        say(f"resumed from {path} at step {ckpt['step']} (epoch {ckpt['epoch']}, batch {ckpt['position']})")
        return (ckpt["step"], ckpt["epoch"], ckpt["position"]), {}, ckpt.get("best", {})
    report: dict[str, dict[str, list[str]]] = {}
    if conditional and cfg.init_from:
        pretrained = load_checkpoint(cfg.init_from)
        for name, model in (("generator", gan.generator), ("critic", gan.critic)):
            loaded, fresh = warm_start(model, pretrained[name])
            report[name] = {"loaded": loaded, "fresh": fresh}
            say(f"warm start {name} from {cfg.init_from}: loaded {len(loaded)} tensors: {', '.join(loaded)}")
            say(f"warm start {name}: {len(fresh)} start fresh: {', '.join(fresh)}")
    return (0, 0, 0), report, {}


def _train(cfg: GANConfig, data: TrainingData, dd: Distributed, stop: StopRequest) -> dict[str, Any]:
    conditional = data.cond is not None
    run_dir, device, world = Path(cfg.out), dd.device, dd.world
    say = log.info if dd.is_main else (lambda *a, **k: None)  # status lines from rank 0 only

    n_classes = data.n_classes if conditional and cfg.critic_labels else 0
    if n_classes:
        data = data.with_critic_labels()
    if world > 1 and cfg.class_weight > 0:  # its classify() calls bypass DDP's forward, so gradients would not sync
        raise ConfigError("config: class_weight > 0 runs on one rank only for now (AC-GAN's head is not DDP-wrapped)")
    if world > 1 and cfg.contrastive_weight > 0:  # match() bypasses DDP's forward too
        raise ConfigError("config: contrastive_weight > 0 runs on one rank only for now")
    if world > 1 and cfg.generator == "instance" and cfg.infonce_weight > 0:  # embed() bypasses DDP's forward too
        raise ConfigError("config: generator=instance with infonce_weight > 0 runs on one rank only for now")
    gan = build_gan(cfg, cfg.cond_dim if conditional else 0, device, n_classes, data)
    (step, epoch, position), warm_report, best = _restore(cfg, gan, run_dir, conditional, say, dd.is_main)
    distribute(gan, cfg, dd)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)  # noqa: E731
    per_rank, global_batch = rank_batch(cfg, world)
    batches = Batches(len(data.frames), per_rank, world, dd.rank, cfg.seed, epoch, position)
    wrong = None
    if conditional and (cfg.objective == "gan-cls" or cfg.alpha > 0):
        # other-clip: every other clip is a negative, so the critic must check what varies within a class too
        wrong = WrongSounds(data.labels if cfg.wrong_sounds == "other-class" else np.arange(len(data.labels)))
    writer = None
    if dd.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.toml")
        if warm_report:
            write_json(run_dir / "warm_start.json", {"init_from": cfg.init_from, **warm_report})
        writer = SummaryWriter(str(run_dir / "tb"), purge_step=step if step else None)
        for name, lists in warm_report.items():
            writer.add_text(f"warm_start/{name}", "\n\n".join(f"**{k}**: {', '.join(v) or '-'}" for k, v in lists.items()), 0)
    sample_noise = torch.randn(64 if data.sample_frames is None else 16, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))

    validation = validation_for(cfg, data, device) if dd.is_main else None
    if validation is not None:
        writer.add_scalar("val/ceiling", validation.ceiling, step)

    def state() -> dict[str, Any]:
        payload = {
            "generator": gan.generator.state_dict(), "critic": gan.critic.state_dict(),
            "opt_generator": gan.opt_g.state_dict(), "opt_critic": gan.opt_d.state_dict(),
            "step": step, "epoch": batches.epoch, "position": batches.position, "rng": rng_state(),
            "config": config_to_dict(cfg), "conditional": conditional, "world_size": world,
        }
        if gan.ema is not None:  # the averaged weights as a plain generator state dict, and the averager's own
            payload["generator_ema"] = gan.ema.module.state_dict()
            payload["generator_ema_state"] = gan.ema.state_dict()
        if best:
            payload["best"] = dict(best)
        return payload

    def checkpoint() -> Path | None:
        return save_checkpoint(run_dir, step, state(), cfg.keep_checkpoints) if dd.is_main else None

    def validate() -> None:
        accuracy = validation(gan.sampler)
        writer.add_scalar("val/conditional_accuracy", accuracy, step)
        if is_new_best(best, accuracy):
            best.update(step=step, val_accuracy=accuracy)
            best["checkpoint"] = str(save_best(run_dir, state()))

    total = cfg.max_steps if cfg.max_steps > 0 else None
    status, terms, ckpt_path, first_step = "completed", {}, None, step
    meter = Throughput(world)
    kind = "conditional" if conditional else "on image embeddings" if cfg.generator == "instance" else "unconditional"
    say(f"training {cfg.objective} ({kind}) on {device}, "
        f"{world} rank(s), global batch {global_batch} ({per_rank} per rank), {len(data.frames)} images, "
        f"{batches.per_epoch} updates/epoch, from step {step}")
    while (total is not None and step < total) or (total is None and batches.epoch < cfg.epochs):
        lr = learning_rate(cfg, batches.epoch, global_batch)
        gan.set_lr(lr)
        log_now = dd.is_main and step % cfg.log_every == 0
        result = train_step(cfg, gan, data, batches, wrong, step, dd.rank, device, meter, autocast, log_now)
        terms = result.terms
        step += 1

        # stop on a non-finite loss or a stop request, agreed over all ranks: the one host sync per step
        non_finite = (~torch.isfinite(torch.stack([v.float() for v in terms.values()]))).any()
        flags = torch.stack([non_finite.float(), torch.tensor(float(stop()), device=device)])
        if world > 1:
            dist.all_reduce(flags)
        any_non_finite, stop_requested = flags.tolist()
        if any_non_finite:
            bad = next((k for k, v in terms.items() if not torch.isfinite(v)), "on another rank")
            last_good = sorted(run_dir.glob("checkpoints/step-*.pt"))
            if writer is not None:
                writer.close()
            raise NonFiniteLoss(f"non-finite loss at step {step}: {bad}; last good checkpoint: "
                                f"{last_good[-1] if last_good else 'none'}")

        if log_now:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            _log_step(writer, step, terms, lr, result, meter.interval(), batches.epoch)
        if dd.is_main and (step % cfg.sample_every == 0 or step == 1):
            log_samples(writer, gan.sampler, data, sample_noise, device, run_dir, step)
        if validation is not None and step % cfg.val_every == 0:
            validate()
        if dd.is_main and step % cfg.hist_every == 0:
            for name, model in (("generator", gan.generator), ("critic", gan.critic)):
                for k, p in model.named_parameters():
                    writer.add_histogram(f"{name}/{k}", p.detach().float().cpu(), step)
        if stop_requested:
            status = "interrupted"
            say(f"stop requested ({stop.reason or 'by another rank'}) at step {step}: checkpointing")
            break
        if step % cfg.ckpt_every == 0:
            ckpt_path = checkpoint()
        meter.first_step_done()

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    throughput = meter.run_figures(step - first_step - 1)
    if world > 1:  # batch-norm running statistics are per rank between DDP's broadcasts: end with rank 0's
        for buffer in [*gan.generator.buffers(), *gan.critic.buffers(), *(gan.ema.buffers() if gan.ema else [])]:
            dist.broadcast(buffer, 0)
    if validation is not None and status == "completed" and step % cfg.val_every != 0:
        validate()  # the final state competes too
    if ckpt_path is None or not ckpt_path.name.endswith(f"{step:08d}.pt"):
        ckpt_path = checkpoint()
    last_terms = {k: float(v) for k, v in terms.items()}
    summary = {"status": status, "step": step, "epoch": batches.epoch, "global_batch": global_batch, "run_dir": str(run_dir),
               "checkpoint": str(ckpt_path) if ckpt_path else None, "final": last_terms,
               **({"best": best, "val_ceiling": validation.ceiling} if validation else {}), **throughput,
               "weights_sha256": weights_digest(gan.generator, gan.critic, *([gan.ema] if gan.ema else []))}
    if dd.is_main:
        log_samples(writer, gan.sampler, data, sample_noise, device, run_dir, step)
        for k, v in last_terms.items():
            writer.add_scalar(f"final/{k}", v, step)
        log_hparams(writer, config_to_dict(cfg))  # his.eval fills its eval/ columns
        writer.close()
        write_json(run_dir / "summary.json", summary)
    if world > 1:
        dist.barrier()
    return summary


def _log_step(writer: SummaryWriter, step: int, terms: dict[str, torch.Tensor], lr: float, result: StepResult,
              perf: dict[str, float], epoch: int) -> None:
    for k, v in terms.items():
        writer.add_scalar(f"loss/{k}", float(v), step)
    writer.add_scalar("lr", lr, step)
    for name, norm in result.grad_norms.items():
        writer.add_scalar(f"grad_norm/{name}", float(norm), step)
    for name, value in perf.items():
        writer.add_scalar(f"perf/{name}", value, step)
    writer.add_scalar("perf/critic_steps", result.critic_steps, step)
    writer.add_scalar("epoch", epoch, step)
