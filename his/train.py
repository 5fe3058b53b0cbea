"""Training: the unconditional WGAN on images (pretrain) and the sound-conditioned GAN (train), one loop.

    python -m his.train [train|pretrain] [CONFIG.toml] [key=value ...]

Single process on CPU or one GPU with no environment; DDP (nccl on CUDA, gloo on CPU) when the
torch.distributed variables are set (torchrun, or Slurm through hpc.launch). Only rank 0 writes logs and
checkpoints. Everything a run writes lives in `cfg.out`:

    config.toml            the resolved config
    checkpoints/step-NNNNNNNN.pt   G, D, optimisers, step, epoch, sampler position, RNG states, config
    tb/                    TensorBoard: losses, Wasserstein estimate, lr, grad norms, throughput, samples
    samples/               the latest sample grid as PNG
    warm_start.json        which tensors came from `init_from` and which started fresh
    summary.json           what `run` returned

Resume and requeue: `run(cfg)` continues from the newest readable checkpoint in `cfg.out` (unless
`resume=false`). On SIGTERM, SIGUSR1 or SIGUSR2 (`stop_signals`), or when `should_stop()` returns True, it
finishes the current step, writes a checkpoint and returns {"status": "interrupted", ...}; calling `run`
again with the same config resumes exactly where it stopped. Randomness inside a step comes from a
generator seeded by (seed, rank, step), so a resumed run draws the same noise as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from torch.utils.tensorboard import SummaryWriter

from his.config import ConfigError, config_to_dict, load_config, save_config
from his.data.dataset import load_features, load_split
from his.grid import make_grid, save_grid
from his.io import atomic_path, write_json
from his.losses import OBJECTIVES, clip_weights, critic_loss, critic_steps, generator_loss
from his.models import NORMS, Critic, SimpleGenerator, build_generator

# Per objective: optimiser, lr, betas (Adam) , critic steps per generator step, critic normalisation.
OBJECTIVE_DEFAULTS = {
    "gan-cls": dict(optimizer="adam", lr=2e-4, betas=[0.5, 0.999], n_critic=1, critic_norm="batch"),
    "wgan": dict(optimizer="rmsprop", lr=5e-5, betas=[0.5, 0.999], n_critic=5, critic_norm="batch"),
    "wgan-gp": dict(optimizer="adam", lr=1e-4, betas=[0.0, 0.9], n_critic=5, critic_norm="layer"),
}
IMAGE_SIZE = 64


@dataclass
class GANConfig:
    """Fields shared by both stages. None means 'the objective's default' (OBJECTIVE_DEFAULTS)."""

    out: str = "runs/his"
    objective: str = "wgan-gp"  # gan-cls | wgan | wgan-gp
    generator: str = "simple"  # simple (fig 4b) | residual (fig 4a)
    critic_norm: str | None = None  # batch | layer | none
    spectral_norm: bool = False
    ngf: int = 64
    ndf: int = 64
    z_dim: int = 100
    proj_dim: int = 128
    batch_size: int = 64
    epochs: int = 300
    max_steps: int = 0  # generator steps; 0 = run `epochs`
    optimizer: str | None = None  # adam | rmsprop
    lr: float | None = None
    betas: list[float] | None = None
    lr_halve_every: int = 100  # epochs; 0 = constant
    n_critic: int | None = None
    alpha: float = 0.25  # weight of the mismatch term f(x, l_false) in eq 10
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


@dataclass
class PretrainConfig(GANConfig):
    """Unconditional WGAN on an image set (his.data.images), report §3.4 / §6.2."""

    out: str = "runs/pretrain"
    objective: str = "wgan"
    images: str = ""  # image set dir (index.h5) or file


@dataclass
class TrainConfig(GANConfig):
    """Sound-conditioned GAN on a clip data set and its SoundNet features, report §4-5."""

    out: str = "runs/train"
    clips: str = ""  # clip data set dir (index.h5) or file
    features: str = ""  # feature set dir (features.h5) or file, rows aligned with the clips
    frames: str = "frame64"  # frame64 | frame88 (88x66, random 64x64 crops, §5.3)
    cond_dim: int = 1024
    init_from: str = ""  # checkpoint to warm-start from (e.g. a pretrain run's); matching tensors only
    sample_sounds: int = 3  # fixed held-out sounds in the sample grid, one per class in turn


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or inf; the message is one line naming the step and the term."""


# ---------------------------------------------------------------------------------------------- config


def resolve(cfg: GANConfig) -> GANConfig:
    """Fill the objective's defaults and check every field that can be checked without data."""
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"config: objective={cfg.objective!r} is not one of {list(OBJECTIVES)}")
    filled = {k: v for k, v in OBJECTIVE_DEFAULTS[cfg.objective].items() if getattr(cfg, k) is None}
    cfg = dataclasses.replace(cfg, **filled)
    checks = [
        ("generator", cfg.generator in ("simple", "residual"), "simple | residual"),
        ("critic_norm", cfg.critic_norm in NORMS, " | ".join(NORMS)),
        ("optimizer", cfg.optimizer in ("adam", "rmsprop"), "adam | rmsprop"),
        ("device", cfg.device in ("auto", "cpu", "cuda"), "auto | cpu | cuda"),
        ("betas", len(cfg.betas) == 2, "two numbers"),
        ("lr", cfg.lr > 0, "> 0"),
        ("batch_size", cfg.batch_size > 0, "> 0"),
        ("n_critic", cfg.n_critic > 0, "> 0"),
        ("alpha", cfg.alpha >= 0, ">= 0"),
        ("critic_norm", not (cfg.objective == "wgan-gp" and cfg.critic_norm == "batch"),
         "layer or none for wgan-gp (batch norm couples the samples the penalty treats as independent)"),
        ("stop_signals", all(hasattr(signal, s) for s in cfg.stop_signals), "names like SIGTERM"),
    ]
    if isinstance(cfg, TrainConfig):
        checks.append(("frames", cfg.frames in ("frame64", "frame88"), "frame64 | frame88"))
    for name, ok, want in checks:
        if not ok:
            raise ConfigError(f"config: {name}={getattr(cfg, name)!r} must be {want}")
    return cfg


# ------------------------------------------------------------------------------------------------ data


@dataclass
class TrainingData:
    frames: np.ndarray  # uint8 (N, H, W, 3), training rows
    cond: np.ndarray | None  # float32 (N, D) standardised sound features; None when unconditional
    labels: np.ndarray | None  # int (N,)
    sample_frames: np.ndarray | None = None  # held-out rows shown in the sample grid
    sample_cond: np.ndarray | None = None


def _h5(path: str, name: str, field_name: str) -> Path:
    p = Path(path)
    p = p / name if p.is_dir() else p
    if not path or not p.is_file():
        raise ConfigError(f"config: {field_name}={path!r}: no {name} there")
    return p


def load_images(cfg: PretrainConfig) -> TrainingData:
    with h5py.File(_h5(cfg.images, "index.h5", "images"), "r") as f:
        frames = f["image"][()]
    return TrainingData(frames=frames, cond=None, labels=None)


def load_clips(cfg: TrainConfig) -> TrainingData:
    """Train rows of the clip set and their features (his.data.dataset), plus fixed test rows for the grid."""
    index = _h5(cfg.clips, "index.h5", "clips")
    features_dir = Path(cfg.features)
    feature_file = next((p for p in (features_dir / "index.h5", features_dir / "features.h5") if p.is_file()), None)
    if not cfg.features or feature_file is None:
        raise ConfigError(f"config: features={cfg.features!r}: no index.h5 or features.h5 there")
    with h5py.File(index, "r") as f, h5py.File(feature_file, "r") as g:
        if cfg.frames not in f:
            raise ConfigError(f"config: frames={cfg.frames!r} is not a dataset of {index}")
        n, (n_feat, dim) = len(f["label"]), g["feature"].shape
    if dim != cfg.cond_dim:
        raise ConfigError(f"config: cond_dim={cfg.cond_dim} but {feature_file} has features of size {dim}")
    if n_feat != n:
        raise ConfigError(f"config: features={cfg.features!r} has {n_feat} rows, the clips have {n}")
    train = load_split(index, "train", [cfg.frames, "label"])
    test = load_split(index, "test", [cfg.frames, "label"])
    labels = train["label"].astype(np.int64)
    if len(np.unique(labels)) < 2 and (cfg.objective == "gan-cls" or cfg.alpha > 0):
        raise ConfigError(f"config: objective={cfg.objective!r} needs sounds of another class; the train split has one class")
    held_out, held_cond = (test, load_features(features_dir, "test")) if len(test["label"]) else (train, None)
    cond = load_features(features_dir, "train")
    rows = _one_per_class(held_out["label"].astype(np.int64), cfg.sample_sounds)
    return TrainingData(train[cfg.frames], cond, labels, held_out[cfg.frames][rows],
                        (cond if held_cond is None else held_cond)[rows])


def _one_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Up to n rows: the first of each class, then the second of each, ..."""
    per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    order = [rows[i] for i in range(max(map(len, per_class), default=0)) for rows in per_class if i < len(rows)]
    return np.array(order[:n], dtype=np.int64)


class Batches:
    """Endless batches of training rows in DistributedSampler order; resumable at (epoch, position)."""

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int, epoch: int = 0, position: int = 0):
        self.sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.per_epoch = len(self.sampler) // batch_size
        if self.per_epoch == 0:
            raise ConfigError(f"config: batch_size={batch_size} is larger than the {len(self.sampler)} rows per rank")
        self.epoch, self.position = epoch, position
        self._order: list[int] | None = None

    def __next__(self) -> np.ndarray:
        if self.position == self.per_epoch:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self.sampler.set_epoch(self.epoch)
            self._order = list(self.sampler)
        start = self.position * self.batch_size
        self.position += 1
        return np.sort(self._order[start : start + self.batch_size])


class WrongSounds:
    """For each label, a uniformly drawn row of ANOTHER class (the 'wrong' condition of GAN-CLS and eq 10)."""

    def __init__(self, labels: np.ndarray):
        self.order = torch.from_numpy(np.argsort(labels, kind="stable"))
        classes, counts = np.unique(labels, return_counts=True)
        self.count = torch.zeros(int(classes.max()) + 1, dtype=torch.long)
        self.start = torch.zeros_like(self.count)
        self.count[classes] = torch.from_numpy(counts)
        self.start[classes] = torch.from_numpy(np.cumsum(counts) - counts)
        self.n = len(labels)

    def draw(self, labels: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        others = self.n - self.count[labels]
        r = (torch.rand(len(labels), generator=rng) * others).long()
        skip_own = r >= self.start[labels]
        return self.order[r + skip_own.long() * self.count[labels]]


def make_batch(data: TrainingData, rows: np.ndarray, wrong: WrongSounds | None, rng: torch.Generator,
               device: torch.device, flip: bool, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Images in [-1, 1] (random 64x64 crops of larger frames, random flips), their conditions, wrong ones."""
    # uint8 rows go to the device as they are; crops, flips and scaling happen there (the host only gathers rows)
    frames = torch.from_numpy(data.frames[rows]).to(device, non_blocking=True)
    b, h, w, _ = frames.shape
    if (h, w) != (IMAGE_SIZE, IMAGE_SIZE):
        top = (torch.rand(b, generator=rng) * (h - IMAGE_SIZE + 1)).long().to(device)
        left = (torch.rand(b, generator=rng) * (w - IMAGE_SIZE + 1)).long().to(device)
        # a view of every 64x64 window, (B, h-63, w-63, 3, 64, 64); pick one per image -> (B, 3, 64, 64)
        images = frames.unfold(1, IMAGE_SIZE, 1).unfold(2, IMAGE_SIZE, 1)[torch.arange(b, device=device), top, left]
    else:
        images = frames.permute(0, 3, 1, 2)
    if flip:
        flipped = (torch.rand(b, generator=rng) < 0.5).to(device)
        images = torch.where(flipped[:, None, None, None], images.flip(3), images)
    real = images.float().div_(127.5).sub_(1.0)
    real = real.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if data.cond is None:
        return real, None, None
    cond = torch.from_numpy(data.cond[rows]).to(device, non_blocking=True)
    wrong_cond = None
    if wrong is not None:
        wrong_rows = wrong.draw(torch.from_numpy(data.labels[rows]), rng).numpy()
        wrong_cond = torch.from_numpy(data.cond[wrong_rows]).to(device, non_blocking=True)
    return real, cond, wrong_cond


def centre_crop(frames: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, 64, 64) in [-1, 1], the centre 64x64."""
    h, w = frames.shape[1:3]
    top, left = (h - IMAGE_SIZE) // 2, (w - IMAGE_SIZE) // 2
    x = torch.from_numpy(frames[:, top : top + IMAGE_SIZE, left : left + IMAGE_SIZE])
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ----------------------------------------------------------------------------------------- checkpoints


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
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    for old in sorted(ckpt_dir.glob("step-*.pt"))[:-keep]:
        old.unlink()
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def latest_checkpoint(run_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of a run that loads; unreadable ones are reported and passed over."""
    for path in sorted(Path(run_dir, "checkpoints").glob("step-*.pt"), reverse=True):
        try:
            return path, load_checkpoint(path)
        except Exception as e:  # a torn or foreign file: fall back to the previous one
            print(f"checkpoint {path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120]}); trying an older one")
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


# ------------------------------------------------------------------------------------------ the run


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


def setup_distributed(cfg: GANConfig) -> tuple[int, int, torch.device, bool]:
    """(rank, world, device, whether we started the process group). DDP only when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    started = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        started = True
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device, started
    return 0, 1, device, started


def run(cfg: GANConfig, should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train (TrainConfig) or pretrain (PretrainConfig); returns a summary with "status" completed|interrupted.

    Raises ConfigError before any training for a bad config, NonFiniteLoss when a loss term is NaN/inf.
    """
    cfg = resolve(cfg)
    conditional = isinstance(cfg, TrainConfig)
    data = load_clips(cfg) if conditional else load_images(cfg)
    rank, world, device, started_pg = setup_distributed(cfg)
    stop = StopRequest(cfg.stop_signals, should_stop)
    try:
        return _train(cfg, data, rank, world, device, stop)
    finally:
        stop.restore()
        if started_pg:
            dist.destroy_process_group()


def _train(cfg: GANConfig, data: TrainingData, rank: int, world: int, device: torch.device,
           stop: StopRequest) -> dict[str, Any]:
    conditional = data.cond is not None
    cond_dim = cfg.cond_dim if conditional else 0
    run_dir = Path(cfg.out)
    is_main = rank == 0
    say = print if is_main else (lambda *a, **k: None)

    torch.manual_seed(cfg.seed)
    generator: SimpleGenerator = build_generator(cfg.generator, cond_dim, cfg.z_dim, cfg.ngf, cfg.proj_dim).to(device)
    critic = Critic(cond_dim, cfg.ndf, cfg.proj_dim, cfg.critic_norm, cfg.spectral_norm).to(device)
    if cfg.channels_last:
        generator, critic = generator.to(memory_format=torch.channels_last), critic.to(memory_format=torch.channels_last)

    def optimiser(params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas))
        return torch.optim.RMSprop(params, lr=cfg.lr)

    opt_g, opt_d = optimiser(generator.parameters()), optimiser(critic.parameters())
    step = epoch = position = 0
    warm_report: dict[str, dict[str, list[str]]] = {}
    resumed = latest_checkpoint(run_dir) if cfg.resume else None
    if resumed is not None:
        path, ckpt = resumed
        generator.load_state_dict(ckpt["generator"])
        critic.load_state_dict(ckpt["critic"])
        opt_g.load_state_dict(ckpt["opt_generator"])
        opt_d.load_state_dict(ckpt["opt_critic"])
        step, epoch, position = ckpt["step"], ckpt["epoch"], ckpt["position"]
        set_rng_state(ckpt["rng"])
        say(f"resumed from {path} at step {step} (epoch {epoch}, batch {position})")
    elif conditional and cfg.init_from:
        pretrained = load_checkpoint(cfg.init_from)
        for name, model in (("generator", generator), ("critic", critic)):
            loaded, fresh = warm_start(model, pretrained[name])
            warm_report[name] = {"loaded": loaded, "fresh": fresh}
            say(f"warm start {name} from {cfg.init_from}: loaded {len(loaded)} tensors: {', '.join(loaded)}")
            say(f"warm start {name}: {len(fresh)} start fresh: {', '.join(fresh)}")
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / "warm_start.json", {"init_from": cfg.init_from, **warm_report})

    # DDP averages gradients over ranks. The generator step calls the plain critic (its gradients are not
    # wanted); the gradient penalty calls the DDP critic, eagerly: compiled double backward is not trusted.
    ddp = world > 1
    gen_ddp = DistributedDataParallel(generator, device_ids=[device] if device.type == "cuda" else None) if ddp else generator
    critic_ddp = DistributedDataParallel(critic, device_ids=[device] if device.type == "cuda" else None) if ddp else critic
    gen_fwd, critic_fwd, critic_for_g = gen_ddp, critic_ddp, critic
    if cfg.compile:
        gen_fwd, critic_fwd, critic_for_g = torch.compile(gen_ddp), torch.compile(critic_ddp), torch.compile(critic)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)  # noqa: E731

    batches = Batches(len(data.frames), cfg.batch_size, world, rank, cfg.seed, epoch, position)
    wrong = WrongSounds(data.labels) if conditional and (cfg.objective == "gan-cls" or cfg.alpha > 0) else None
    writer = None
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.toml")
        writer = SummaryWriter(str(run_dir / "tb"), purge_step=step if resumed else None)
        for name, lists in warm_report.items():
            writer.add_text(f"warm_start/{name}", "\n\n".join(f"**{k}**: {', '.join(v) or '-'}" for k, v in lists.items()), 0)
    sample_noise = torch.randn(16 if conditional else 64, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))

    def checkpoint() -> Path | None:
        if not is_main:
            return None
        payload = {
            "generator": generator.state_dict(), "critic": critic.state_dict(),
            "opt_generator": opt_g.state_dict(), "opt_critic": opt_d.state_dict(),
            "step": step, "epoch": batches.epoch, "position": batches.position, "rng": rng_state(),
            "config": config_to_dict(cfg), "conditional": conditional, "world_size": world,
        }
        return save_checkpoint(run_dir, step, payload, cfg.keep_checkpoints)

    def log_samples() -> None:
        generator.eval()
        with torch.no_grad():
            if conditional:
                n = len(data.sample_cond)
                cond = torch.from_numpy(data.sample_cond).to(device).repeat_interleave(16, dim=0)
                fake = generator(sample_noise.repeat(n, 1).to(device), cond).float().cpu().view(n, 16, 3, 64, 64)
                truth = centre_crop(data.sample_frames)[:, None]
                images, nrow = torch.cat([fake, truth], dim=1).flatten(0, 1), 17
            else:
                images, nrow = generator(sample_noise.to(device)).float().cpu(), 8
        generator.train()
        writer.add_image("samples", make_grid(images, nrow), step)
        save_grid(images, run_dir / "samples" / "latest.png", nrow)

    total = cfg.max_steps if cfg.max_steps > 0 else None
    status, terms, ckpt_path = "completed", {}, None
    tick, images_seen, wait_s = time.perf_counter(), 0, 0.0
    first_step, timed_from, timed_images = step, None, 0  # throughput over all steps but the first (warm-up)
    say(f"training {cfg.objective} ({'conditional' if conditional else 'unconditional'}) on {device}, "
        f"{world} rank(s), {len(data.frames)} images, {batches.per_epoch} batches/epoch/rank, from step {step}")
    while (total is not None and step < total) or (total is None and batches.epoch < cfg.epochs):
        rng = step_generator(cfg.seed, rank, step)
        lr = cfg.lr * 0.5 ** (batches.epoch // cfg.lr_halve_every) if cfg.lr_halve_every > 0 else cfg.lr
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        logging = is_main and step % cfg.log_every == 0

        # --- critic: n_d updates on fresh real batches
        n_d = critic_steps(cfg.objective, step, cfg.n_critic, cfg.warmup_gen_steps, cfg.warmup_critic_steps, cfg.warmup_every)
        for i in range(n_d):
            t0 = time.perf_counter()
            real, cond, wrong_cond = make_batch(data, next(batches), wrong, rng, device, cfg.flip, cfg.channels_last)
            wait_s += time.perf_counter() - t0
            images_seen += real.shape[0] * world
            timed_images += real.shape[0] * world if timed_from is not None else 0
            z = torch.randn(real.shape[0], cfg.z_dim, generator=rng).to(device)
            gp_eps = torch.rand(real.shape[0], 1, 1, 1, generator=rng).to(device)
            with torch.no_grad(), autocast():
                fake = gen_fwd(z, cond).to(real.dtype)  # one input dtype for the critic (no compile re-tracing)
            with autocast():
                loss_d, terms_d = critic_loss(cfg.objective, critic_fwd, real, fake, cond, wrong_cond, cfg.alpha,
                                              cfg.gp_lambda, gp_critic=critic_ddp, gp_eps=gp_eps)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            if logging and i == n_d - 1:
                grad_norm_d = torch.nn.utils.get_total_norm([p.grad for p in critic.parameters() if p.grad is not None])
            opt_d.step()
            if cfg.objective == "wgan":
                clip_weights(critic, cfg.clip)

        # --- generator: one update against the critic, conditioned on the last batch's sounds
        critic.requires_grad_(False)
        z = torch.randn(real.shape[0], cfg.z_dim, generator=rng).to(device)
        with autocast():
            loss_g, terms_g = generator_loss(cfg.objective, critic_for_g, gen_fwd(z, cond), cond)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        critic.requires_grad_(True)
        if logging:
            grad_norm_g = torch.nn.utils.get_total_norm([p.grad for p in generator.parameters() if p.grad is not None])
        opt_g.step()
        step += 1

        # --- stop on a non-finite loss or a stop request, agreed over all ranks
        terms = {**terms_d, **terms_g}
        non_finite = (~torch.isfinite(torch.stack([v.float() for v in terms.values()]))).any()
        flags = torch.stack([non_finite.float(), torch.tensor(float(stop()), device=device)])
        if world > 1:
            dist.all_reduce(flags)
        any_non_finite, stop_requested = flags.tolist()  # the one host sync per step
        if any_non_finite:
            bad = next((k for k, v in terms.items() if not torch.isfinite(v)), "on another rank")
            last_good = sorted(run_dir.glob("checkpoints/step-*.pt"))
            if writer is not None:
                writer.close()
            raise NonFiniteLoss(f"non-finite loss at step {step}: {bad}; last good checkpoint: "
                                f"{last_good[-1] if last_good else 'none'}")

        if logging:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - tick
            for k, v in terms.items():
                writer.add_scalar(f"loss/{k}", float(v), step)
            writer.add_scalar("lr", lr, step)
            writer.add_scalar("grad_norm/critic", float(grad_norm_d), step)
            writer.add_scalar("grad_norm/generator", float(grad_norm_g), step)
            writer.add_scalar("perf/images_per_s", images_seen / elapsed, step)
            writer.add_scalar("perf/data_wait_fraction", wait_s / elapsed, step)
            writer.add_scalar("perf/critic_steps", n_d, step)
            writer.add_scalar("epoch", batches.epoch, step)
            tick, images_seen, wait_s = time.perf_counter(), 0, 0.0
        if is_main and (step % cfg.sample_every == 0 or step == 1):
            log_samples()
        if is_main and step % cfg.hist_every == 0:
            for name, model in (("generator", generator), ("critic", critic)):
                for k, p in model.named_parameters():
                    writer.add_histogram(f"{name}/{k}", p.detach().float().cpu(), step)
        if stop_requested:
            status = "interrupted"
            say(f"stop requested ({stop.reason or 'by another rank'}) at step {step}: checkpointing")
            break
        if step % cfg.ckpt_every == 0:
            ckpt_path = checkpoint()
        if timed_from is None:
            timed_from = time.perf_counter()

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timed_s, timed_steps = time.perf_counter() - (timed_from or 0.0), step - first_step - 1
    throughput = {"s_per_step": timed_s / timed_steps, "images_per_s": timed_images / timed_s} if timed_steps > 0 else {}
    if world > 1:  # batch-norm running statistics are per rank between DDP's broadcasts: end with rank 0's
        for buffer in [*generator.buffers(), *critic.buffers()]:
            dist.broadcast(buffer, 0)
    if ckpt_path is None or not ckpt_path.name.endswith(f"{step:08d}.pt"):
        ckpt_path = checkpoint()
    last_terms = {k: float(v) for k, v in terms.items()}
    summary = {"status": status, "step": step, "epoch": batches.epoch, "run_dir": str(run_dir),
               "checkpoint": str(ckpt_path) if ckpt_path else None, "final": last_terms,
               **throughput, "weights_sha256": weights_digest(generator, critic)}
    if is_main:
        log_samples()
        hparams = {k: v for k, v in config_to_dict(cfg).items() if isinstance(v, (int, float, str, bool))}
        writer.add_hparams(hparams, {f"final/{k}": v for k, v in last_terms.items()}, run_name=".")
        writer.close()
        write_json(run_dir / "summary.json", summary)
    if world > 1:
        dist.barrier()
    return summary


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        print("fields (key=value):", ", ".join(f.name for f in dataclasses.fields(TrainConfig)))
        return 0
    stage = args.pop(0) if args and args[0] in ("train", "pretrain") else "train"
    toml = args.pop(0) if args and args[0].endswith(".toml") else None
    try:
        cfg = load_config(PretrainConfig if stage == "pretrain" else TrainConfig, toml, args)
        summary = run(cfg)
    except (ConfigError, NonFiniteLoss) as e:
        print(e, file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in summary.items() if k != "final"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
