"""Fine-tuning SoundNet-8 on a tiny clip data set (his.data.small_sets.DataSets: sounds that tell the classes apart)."""

import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

from his.audio.finetune import FinetuneConfig, augment, load_checkpoint, run
from his.data.dataset import validation_mask

SOUNDS = ("Hum", "Whistle", "Noise")  # his.data.small_sets.DataSets.class_sound: a low hum, a high whistle, noise bursts


def test_validation_is_split_by_group():
    labels = np.repeat([0, 1], 12)
    groups = np.tile(np.repeat([1, 2, 3, 4], 3), 2)
    val = validation_mask(labels, groups, 0.25, seed=1)
    for label in (0, 1):
        val_groups = set(groups[(labels == label) & val])
        train_groups = set(groups[(labels == label) & ~val])
        assert len(val_groups) == 1 and not val_groups & train_groups


def test_augment_keeps_shape_and_content():
    x = torch.linspace(-0.5, 0.5, 1000).repeat(4, 1)
    y = augment(x, 0.5, 6.0, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.abs().max() <= 1
    ratio = y.abs().sum(1) / x.abs().sum(1)  # a circular shift keeps the sum; only the gain changes it
    assert torch.all((ratio > 10 ** (-6 / 20) - 1e-4) & (ratio < 10 ** (6 / 20) + 1e-4))


def test_finetune_head_only(datasets, tmp_path):
    clips = datasets.clips(tmp_path / "clips", SOUNDS, groups_per_class=4, clips_per_group=2)
    cfg = FinetuneConfig(data=str(clips), out=str(tmp_path / "run"), train_layers="head", epochs=6,
                         batch_size=4, patience=6)
    summary = run(cfg)
    assert summary["train_clips"] + summary["val_clips"] == 18 and summary["test_clips"] == 6
    assert summary["val_clips"] == 6  # one group of three per class
    assert summary["test_accuracy"] >= 2 / 3, summary
    model, meta = load_checkpoint(summary["checkpoint"])
    assert meta["classes"] == list(SOUNDS) and meta["layer"] == "conv7"
    assert meta["config"]["train_layers"] == "head"
    assert (tmp_path / "run" / "config.toml").is_file() and (tmp_path / "run" / "summary.json").is_file()
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def _ddp_worker(rank: int, world: int, port: int, cfg: FinetuneConfig, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    results[rank] = run(cfg)


def test_finetune_whole_network_ddp_gloo(datasets, tmp_path):
    clips = datasets.clips(tmp_path / "clips", SOUNDS, groups_per_class=3, clips_per_group=2)
    cfg = FinetuneConfig(data=str(clips), out=str(tmp_path / "run"), train_layers="all", epochs=2,
                         batch_size=4, layer="conv6")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(2, port, cfg, results), nprocs=2, join=True)
        summaries = dict(results)
    assert summaries[0]["world_size"] == 2
    assert summaries[0]["test_accuracy"] == summaries[1]["test_accuracy"]  # both ranks hold the same weights
    model, meta = load_checkpoint(summaries[0]["checkpoint"])
    assert meta["layer"] == "conv6" and model.head.in_features == 512
