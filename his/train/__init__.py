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
again with the same config resumes exactly where it stopped.

The package: `config` (the stage configs and their checks), `data` (rows in memory, batches, wrong sounds),
`checkpoint` (save, load, latest, warm start, RNG state), `loop` (the GAN, `train_step`, `run`). Evaluation
and generation import only `config` and `checkpoint`; `run` is loaded on first use.
"""

from __future__ import annotations

from typing import Any

from his.constants import IMAGE_SIZE
from his.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from his.train.config import OBJECTIVE_DEFAULTS, GANConfig, PretrainConfig, TrainConfig, resolve

__all__ = ["IMAGE_SIZE", "OBJECTIVE_DEFAULTS", "GANConfig", "NonFiniteLoss", "PretrainConfig", "TrainConfig",
           "latest_checkpoint", "load_checkpoint", "resolve", "run", "save_checkpoint"]


def __getattr__(name: str) -> Any:
    # the loop pulls in DDP and TensorBoard: loaded only by those who train
    if name in ("run", "NonFiniteLoss"):
        from his.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'his.train' has no attribute {name!r}")
