"""Fine-tuning SoundNet-8 on a tiny clip data set built by hand after docs/contracts.md."""

import os
import socket
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.multiprocessing as mp

from his.audio.finetune import FinetuneConfig, augment, load_checkpoint, run
from his.data.dataset import validation_mask

SAMPLE_RATE = 22050


def class_sound(label: int, rng: np.random.Generator, n: int) -> np.ndarray:
    """Easily told apart: a low hum, a high whistle, or noise bursts."""
    t = np.arange(n) / SAMPLE_RATE
    if label == 0:
        wave = np.sin(2 * np.pi * rng.uniform(100, 200) * t)
    elif label == 1:
        wave = np.sin(2 * np.pi * rng.uniform(2000, 3000) * t)
    else:
        wave = rng.standard_normal(n) * (np.sin(2 * np.pi * 4 * t) > 0)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def make_clip_dataset(root: Path, classes=("Hum", "Whistle", "Noise"), groups_per_class: int = 4,
                      clips_per_group: int = 2, test_groups: int = 1, window_s: float = 1.0,
                      shard_clips: int = 10, seed: int = 0) -> Path:
    """shards/clips-NNNNN.h5 plus an index.h5 of virtual datasets over them, per the clip contract.

    The last `test_groups` groups of each class form the test split. Returns the index path."""
    rng = np.random.default_rng(seed)
    samples = round(window_s * SAMPLE_RATE)
    rows = []
    for label, name in enumerate(classes):
        for group in range(1, groups_per_class + 1):
            for clip in range(clips_per_group):
                frame = np.zeros((64, 64, 3), np.uint8)
                frame[..., label % 3] = 200
                frame += rng.integers(0, 40, frame.shape, dtype=np.uint8)
                rows.append({
                    "audio": np.round(class_sound(label, rng, samples) * 32767).astype(np.int16),
                    "frame64": frame, "label": label, "group": group, "clip_index": clip,
                    "split": int(group > groups_per_class - test_groups),
                    "video_id": f"v_{name}_g{group:02d}_c01"})
    attrs = {"spec_version": 1, "kind": "clips", "classes": list(classes), "sample_rate": SAMPLE_RATE,
             "window_s": window_s, "samples": samples}
    str_dtype = h5py.string_dtype()
    columns = {"audio": (np.int16, (samples,)), "frame64": (np.uint8, (64, 64, 3)), "label": (np.int16, ()),
               "split": (np.uint8, ()), "group": (np.int16, ()), "clip_index": (np.int16, ()),
               "video_id": (str_dtype, ())}
    (root / "shards").mkdir(parents=True)
    shard_paths = []
    for start in range(0, len(rows), shard_clips):
        part = rows[start : start + shard_clips]
        path = root / "shards" / f"clips-{len(shard_paths):05d}.h5"
        with h5py.File(path, "w") as f:
            f.attrs.update(attrs, role="shard")
            for name, (dtype, _) in columns.items():
                f.create_dataset(name, data=np.array([r[name] for r in part], dtype=dtype))
        shard_paths.append((path, len(part)))
    index = root / "index.h5"
    with h5py.File(index, "w") as f:
        f.attrs.update(attrs, role="index")
        for name, (dtype, shape) in columns.items():
            layout = h5py.VirtualLayout(shape=(len(rows), *shape), dtype=dtype)
            offset = 0
            for path, n in shard_paths:
                layout[offset : offset + n] = h5py.VirtualSource(f"shards/{path.name}", name, shape=(n, *shape))
                offset += n
            f.create_virtual_dataset(name, layout)
    return index


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


def test_finetune_head_only(tmp_path):
    index = make_clip_dataset(tmp_path / "clips")
    cfg = FinetuneConfig(data=str(index.parent), out=str(tmp_path / "run"), train_layers="head", epochs=6,
                         batch_size=4, patience=6)
    summary = run(cfg)
    assert summary["train_clips"] + summary["val_clips"] == 18 and summary["test_clips"] == 6
    assert summary["val_clips"] == 6  # one group of three per class
    assert summary["test_accuracy"] >= 2 / 3, summary
    model, meta = load_checkpoint(summary["checkpoint"])
    assert meta["classes"] == ["Hum", "Whistle", "Noise"] and meta["layer"] == "conv7"
    assert meta["config"]["train_layers"] == "head"
    assert (tmp_path / "run" / "config.toml").is_file() and (tmp_path / "run" / "summary.json").is_file()
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def _ddp_worker(rank: int, world: int, port: int, cfg: FinetuneConfig, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    results[rank] = run(cfg)


def test_finetune_whole_network_ddp_gloo(tmp_path):
    index = make_clip_dataset(tmp_path / "clips", groups_per_class=3, clips_per_group=2)
    cfg = FinetuneConfig(data=str(index.parent), out=str(tmp_path / "run"), train_layers="all", epochs=2,
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
