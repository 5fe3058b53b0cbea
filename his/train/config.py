"""The two training stages' configs and their checks: what evaluation and generation need to read a run."""

from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass, field

from his.config import ConfigError
from his.augment import POLICIES, parse_policy
from his.losses import OBJECTIVES
from his.models import CRITICS, GENERATORS, NORMS, POOLS

# Per objective: optimiser, lr, betas (Adam), critic steps per generator step, the generator, the critic and its
# normalisation. The report's three keep its generator (fig 4b) and critic (fig 4c). hinge: the projection
# discriminator with spectral norm (Miyato & Koyama 2018), SN-GAN's Adam settings and its ResNet generator with
# the sound in every block's batch norm (his.models.ResNetGenerator).
# DiffAugment without "color": brightness is what loudness looks like in our scenes, a critic blind to it would
# let the generator ignore it. The EMA of G (with warm-up) is what samples, evaluation and his.generate use.
_REPORT_NETWORKS = dict(generator="simple", critic="concat", spectral_norm=False, diffaugment="", ema_decay=0.0)
OBJECTIVE_DEFAULTS = {
    "gan-cls": dict(optimizer="adam", lr=2e-4, betas=[0.5, 0.999], n_critic=1, critic_norm="batch", **_REPORT_NETWORKS),
    "wgan": dict(optimizer="rmsprop", lr=5e-5, betas=[0.5, 0.999], n_critic=5, critic_norm="batch", **_REPORT_NETWORKS),
    "wgan-gp": dict(optimizer="adam", lr=1e-4, betas=[0.0, 0.9], n_critic=5, critic_norm="layer", **_REPORT_NETWORKS),
    "hinge": dict(optimizer="adam", lr=2e-4, betas=[0.0, 0.9], n_critic=2, critic_norm="none", critic="projection",
                  generator="resnet",
                  spectral_norm=True, diffaugment="translation,cutout", ema_decay=0.999),
}


# Where the mismatched ("wrong") sounds come from: the report's other classes, or any other clip.
WRONG_SOUNDS = ("other-class", "other-clip")

# How lr follows the global batch: lr x (global batch / lr_base_batch) ** power.
LR_SCALING = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}


@dataclass
class GANConfig:
    """Fields shared by both stages. None means 'the objective's default' (OBJECTIVE_DEFAULTS)."""

    out: str = "runs/his"
    objective: str = "wgan-gp"  # gan-cls | wgan | wgan-gp | hinge
    generator: str | None = None  # simple (fig 4b) | residual (fig 4a) | resnet (SN-GAN/BigGAN blocks, conditional BN) | retrieval (a U-Net over a training frame looked up by sound) | instance (pretrain: the two-stage drawing from an image embedding) | two-stage (train: sound -> that embedding -> the drawing, his.train.align)
    critic: str | None = None  # concat (fig 4c) | projection (Miyato & Koyama 2018)
    critic_norm: str | None = None  # batch | layer | none
    critic_pool: str = "sum"  # projection critic: sum (global sum pooling, as published) | flatten (keeps the 4x4 positions)
    spectral_norm: bool | None = None
    diffaugment: str | None = None  # DiffAugment policy for the critic's inputs, e.g. "translation,cutout"; "" = none
    ema_decay: float | None = None  # > 0: keep an exponential moving average of G, used for samples and evaluation
    neighbours: int = 8  # generator=retrieval: it draws from one of the training frames of the nearest sounds; instance: the critic's real image is one of the instance's nearest in the batch (IC-GAN's neighbourhood)
    edit: bool = False  # generator=retrieval: G draws a change to the neighbour frame (a global residual), not a new frame
    heard_class: bool = False  # generator=retrieval: the neighbours are the nearest frames of the class a linear reader hears in the sound
    embed_dim: int = 128  # generator=instance / two-stage: the size of the image embedding the drawing is conditioned on
    infonce_weight: float = 1.0  # instance: SimCLR's InfoNCE on the encoder (two views of each image); two-stage: sound vs frame embedding
    infonce_temperature: float = 0.1
    infonce_positives: str = "views"  # instance: views (SimCLR: an image's two views) | class (also every frame of its clip class, Khosla et al. 2020)
    l1_weight: float = 0.0  # > 0: pix2pix's L1 term (Isola et al. 2017) from G's image to the sound's own frame
    class_weight: float = 0.0  # > 0: AC-GAN's auxiliary classifier on the critic (Odena et al. 2017), G drawn to be read as the clip's class
    contrastive_weight: float = 0.0  # > 0: XMC-GAN's image-sound InfoNCE in the projection critic's space (Zhang et al. 2021), on real pairs for D, on G's images for G
    ngf: int = 64
    ndf: int = 64
    z_dim: int = 100
    proj_dim: int = 128
    batch_size: int = 64  # per rank (DDP: the global batch is batch_size x ranks), unless global_batch_size
    global_batch_size: int = 0  # > 0: the batch over all ranks, split evenly; an epoch is then the same updates on any number of GPUs
    lr_scaling: str = "none"  # none | linear | sqrt: lr is for a global batch of lr_base_batch, scaled to the run's (Goyal et al. 2017)
    lr_base_batch: int = 64
    epochs: int = 300
    max_steps: int = 0  # generator steps; 0 = run `epochs`
    optimizer: str | None = None  # adam | rmsprop
    lr: float | None = None
    betas: list[float] | None = None
    lr_halve_every: int = 100  # epochs; 0 = constant
    n_critic: int | None = None
    alpha: float = 0.25  # weight of the mismatch term f(x, l_false) in eq 10
    wrong_sounds: str = "other-class"  # the mismatched sounds: other-class (the report's) | other-clip (any other clip)
    clip: float = 0.01  # wgan weight clipping
    gp_lambda: float = 10.0
    warmup_gen_steps: int = 25  # wgan: 100 critic steps for the first 25 generator steps
    warmup_critic_steps: int = 100
    warmup_every: int = 500  # ... and for every 500th
    flip: bool = True
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False
    log_every: int = 20
    sample_every: int = 500
    hist_every: int = 2000
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    resume: bool = True
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1", "SIGUSR2"])


# What a resumed run may change: how long it runs, what it logs and keeps, and where it runs. Any other field
# changes what the checkpoints hold, so resuming them under it would train something nobody asked for.
# init_from is read only at step 0.
RESUMABLE = frozenset({"epochs", "max_steps", "log_every", "sample_every", "hist_every", "ckpt_every",
                       "keep_checkpoints", "val_every", "val_classifier_steps", "resume", "device", "compile",
                       "stop_signals", "init_from"})


@dataclass
class PretrainConfig(GANConfig):
    """Unconditional WGAN on an image set (his.data.images), report §3.4 / §6.2."""

    out: str = "runs/pretrain"
    objective: str = "wgan"
    images: str = ""  # image set dir (index.h5) or file
    clips: str = ""  # generator=instance: a clip set whose train-split frames join the images (no sounds are read)


@dataclass
class TrainConfig(GANConfig):
    """Sound-conditioned GAN on a clip data set and its SoundNet features, report §4-5."""

    out: str = "runs/train"
    objective: str = "hinge"  # projection critic, DiffAugment, EMA: the best on shared rooms (README, "Measured")
    clips: str = ""  # clip data set dir (index.h5) or file
    features: str = ""  # feature set dir (CLIPS/features/<sha12>/, holding index.h5), rows aligned with the clips
    frames: str = "frame64"  # frame64 | frame88 (88x66, random 64x64 crops, §5.3)
    cond_dim: int = 1024
    critic_labels: bool = False  # projection critic: also project on the clip's class (Miyato & Koyama's y^T V phi(x)); G hears only the sound
    init_from: str = ""  # checkpoint to warm-start from (e.g. a pretrain run's); matching tensors only
    sample_sounds: int = 3  # fixed held-out sounds in the sample grid, one per class in turn
    val_fraction: float = 0.0  # > 0: hold out this fraction of each class's train video groups for validation
    val_seed: int = 0  # which groups (fine-tuning's default seed, so the same groups are held out there)
    val_every: int = 100  # generator steps between validation accuracies (TensorBoard val/, checkpoints/best.pt)
    val_images: int = 4  # images per validation sound
    val_classifier_steps: int = 3000  # training steps of the frame classifier that reads them (his.eval's recipe)
    # generator=two-stage (his.train.align): init_from is stage one (pretrain with generator=instance); max_steps
    # head updates of Adam at head_lr on regression + infonce_weight x InfoNCE at infonce_temperature
    head_lr: float = 1e-3


def _policy_ok(policy: str) -> bool:
    try:
        parse_policy(policy)
    except ValueError:
        return False
    return True


def rank_batch(cfg: GANConfig, world: int) -> tuple[int, int]:
    """(rows per rank per step, rows per step over all ranks) on `world` ranks."""
    if cfg.global_batch_size == 0:
        return cfg.batch_size, cfg.batch_size * world
    if cfg.global_batch_size % world:
        raise ConfigError(f"config: global_batch_size={cfg.global_batch_size} does not split evenly over {world} ranks")
    return cfg.global_batch_size // world, cfg.global_batch_size


def resolve(cfg: GANConfig) -> GANConfig:
    """Fill the objective's defaults and check every field that can be checked without data."""
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"config: objective={cfg.objective!r} is not one of {list(OBJECTIVES)}")
    filled = {k: v for k, v in OBJECTIVE_DEFAULTS[cfg.objective].items() if getattr(cfg, k) is None}
    cfg = dataclasses.replace(cfg, **filled)
    checks = [
        ("generator", cfg.generator in GENERATORS, " | ".join(GENERATORS)),
        ("critic", cfg.critic in CRITICS, " | ".join(CRITICS)),
        ("critic_norm", cfg.critic_norm in NORMS, " | ".join(NORMS)),
        ("critic_pool", cfg.critic_pool in POOLS, " | ".join(POOLS)),
        ("critic_norm", not (cfg.critic == "projection" and cfg.critic_norm == "batch"), "layer or none for projection"),
        ("diffaugment", _policy_ok(cfg.diffaugment), " | ".join(POLICIES) + ", comma-separated, or empty"),
        ("ema_decay", 0 <= cfg.ema_decay < 1, "in [0, 1)"),
        ("optimizer", cfg.optimizer in ("adam", "rmsprop"), "adam | rmsprop"),
        ("device", cfg.device in ("auto", "cpu", "cuda"), "auto | cpu | cuda"),
        ("betas", len(cfg.betas) == 2, "two numbers"),
        ("lr", cfg.lr > 0, "> 0"),
        ("batch_size", cfg.batch_size > 0, "> 0"),
        ("global_batch_size", cfg.global_batch_size >= 0, ">= 0 (0 = batch_size per rank)"),
        ("lr_scaling", cfg.lr_scaling in LR_SCALING, " | ".join(LR_SCALING)),
        ("lr_base_batch", cfg.lr_base_batch > 0, "> 0"),
        ("n_critic", cfg.n_critic > 0, "> 0"),
        ("neighbours", cfg.neighbours > 0, "> 0"),
        ("heard_class", not cfg.heard_class or cfg.generator == "retrieval", "false unless generator=retrieval"),
        ("edit", not cfg.edit or cfg.generator == "retrieval", "false unless generator=retrieval"),
        ("l1_weight", cfg.l1_weight >= 0, ">= 0"),
        ("class_weight", cfg.class_weight >= 0, ">= 0"),
        ("contrastive_weight", cfg.contrastive_weight == 0 or (cfg.critic == "projection" and isinstance(cfg, TrainConfig)),
         "0 unless critic=projection and a conditional run (it compares images with sounds)"),
        ("class_weight", cfg.class_weight == 0 or (cfg.critic == "projection" and isinstance(cfg, TrainConfig)),
         "0 unless critic=projection and a conditional run (the auxiliary classifier reads the clip's class)"),
        ("generator", cfg.generator not in ("retrieval", "two-stage") or isinstance(cfg, TrainConfig),
         "another generator for pretraining (retrieval and two-stage draw from sounds)"),
        ("generator", cfg.generator != "instance" or isinstance(cfg, PretrainConfig),
         "another generator for a sound-conditioned run (instance is stage one of two-stage: pretrain generator=instance)"),
        ("embed_dim", cfg.embed_dim > 0 and cfg.embed_dim % 16 == 0, "a positive multiple of 16 (a 4x4 map)"),
        ("infonce_weight", cfg.infonce_weight >= 0, ">= 0"),
        ("infonce_temperature", cfg.infonce_temperature > 0, "> 0"),
        ("infonce_positives", cfg.infonce_positives in ("views", "class"), "views | class"),
        ("alpha", cfg.alpha >= 0, ">= 0"),
        ("wrong_sounds", cfg.wrong_sounds in WRONG_SOUNDS, " | ".join(WRONG_SOUNDS)),
        ("critic_norm", not (cfg.objective == "wgan-gp" and cfg.critic_norm == "batch"),
         "layer or none for wgan-gp (batch norm couples the samples the penalty treats as independent)"),
        ("stop_signals", all(hasattr(signal, s) for s in cfg.stop_signals), "names like SIGTERM"),
        ("epochs", cfg.epochs >= 0, ">= 0"),
        ("max_steps", cfg.max_steps >= 0, ">= 0 (0 = run `epochs`)"),
        ("lr_halve_every", cfg.lr_halve_every >= 0, ">= 0 (0 = constant)"),
        ("keep_checkpoints", cfg.keep_checkpoints >= 1, ">= 1"),
        ("clip", cfg.clip > 0, "> 0"),
        ("gp_lambda", cfg.gp_lambda >= 0, ">= 0"),
        ("warmup_gen_steps", cfg.warmup_gen_steps >= 0, ">= 0"),
        ("warmup_critic_steps", cfg.warmup_critic_steps > 0, "> 0"),
        ("warmup_every", cfg.warmup_every >= 0, ">= 0 (0 = never)"),
        *((name, getattr(cfg, name) > 0, "> 0") for name in ("ngf", "ndf", "z_dim", "proj_dim", "log_every",
                                                            "sample_every", "hist_every", "ckpt_every")),
    ]
    if isinstance(cfg, TrainConfig):
        checks += [
            ("frames", cfg.frames in ("frame64", "frame88"), "frame64 | frame88"),
            ("val_fraction", 0 <= cfg.val_fraction < 1, "in [0, 1)"),
            ("cond_dim", cfg.cond_dim > 0, "> 0"),
            ("critic_labels", not cfg.critic_labels or cfg.critic == "projection", "false unless critic=projection"),
            ("sample_sounds", cfg.sample_sounds > 0, "> 0"),
            ("val_every", cfg.val_every > 0, "> 0"),
            ("val_images", cfg.val_images > 0, "> 0"),
            ("val_classifier_steps", cfg.val_classifier_steps > 0, "> 0"),
            ("head_lr", cfg.head_lr > 0, "> 0"),
            ("max_steps", cfg.generator != "two-stage" or cfg.max_steps > 0, "> 0 for generator=two-stage (head updates)"),
        ]
    if isinstance(cfg, PretrainConfig):
        checks.append(("clips", not cfg.clips or cfg.generator == "instance", "empty unless generator=instance"))
        checks.append(("infonce_positives", cfg.infonce_positives == "views" or cfg.clips,
                       "views unless clips= gives the frames their classes"))
    for name, ok, want in checks:
        if not ok:
            raise ConfigError(f"config: {name}={getattr(cfg, name)!r} must be {want}")
    return cfg
