"""One TensorBoard HParams row per run: the trainer writes it when it ends and his.eval again with its numbers."""

from __future__ import annotations

from typing import Any, Sequence

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

# What a sweep's runs are compared by in TensorBoard's HParams tab: the eval/ scalars of these overall numbers
# (at the evaluated checkpoint's step) and the validation accuracy during training.
HPARAM_METRICS = (*(f"eval/{name}" for name in ("conditional_accuracy", "ceiling_accuracy", "shuffled_accuracy",
                                                "shuffled_follows_sound", "class_r1", "intra_fid", "fid",
                                                "diversity_within_sound")),
                  "val/conditional_accuracy", "val/ceiling")


def log_hparams(writer: SummaryWriter, config: dict[str, Any], metrics: Sequence[str] = HPARAM_METRICS) -> None:
    """The run's HParams session in the writer's own run: `config` (config_to_dict of the resolved config; lists
    as text) as its hyperparameters, the scalars `metrics` as its metric columns (each cell: the last value).

    The trainer writes it when it ends and his.eval again, the same: TensorBoard keeps one session per run (the
    first), so a run is one row, its eval/ cells filled once his.eval has written those scalars.
    """
    hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}
    for summary in hparams_summaries(hparams, dict.fromkeys(metrics, 0.0)):
        writer.file_writer.add_summary(summary)
