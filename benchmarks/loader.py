"""Loader throughput: training samples/s read from clip shards, the in-memory fast path against chunked
per-row reads through a DataLoader with 0 and 2 workers.

    python benchmarks/loader.py [--clips CLIPS_DIR] [--batch 64] [--batches 200] [--out bench-loader.json]

Without --clips it writes a generated clip set (88x66 frames, one row per chunk as datasets.h5.spec asks) to
a temporary folder. Each path delivers the same thing the trainer consumes: a batch of 64x64 crops as a float
tensor in [-1, 1]. Compare with benchmarks/train.py: the loader should outrun the trainer by 10x or more.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader

from his.data.dataset import ClipDataset, load_split
from his.frames import centre_crop, to_images
from his.train.data import Batches, TrainingData, make_batch


def make_clip_set(root: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "index.h5", "w") as f:
        f.create_dataset("frame88", data=rng.integers(0, 256, (n, 66, 88, 3), dtype=np.uint8), chunks=(1, 66, 88, 3))
        f["label"], f["split"] = (np.arange(n) % 3).astype(np.int16), np.zeros(n, np.uint8)
    return root


def in_memory(index: Path, batch: int, batches: int, device: torch.device) -> float:
    """The trainer's path: load the split once; per batch gather rows on the host, crop and flip on `device`."""
    start = time.perf_counter()
    rows = load_split(index, "train", ["frame88", "label"])
    data = TrainingData(rows["frame88"], None, None)
    load_s = time.perf_counter() - start
    order, rng = Batches(len(data.frames), batch, 1, 0, seed=0), torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(batches):
        make_batch(data, next(order), None, rng, device, flip=True, channels_last=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    print(f"in-memory: loading {len(data.frames)} rows took {load_s:.2f} s (once per run)")
    return batch * batches / (time.perf_counter() - start)


def chunked(index: Path, batch: int, batches: int, workers: int) -> float:
    """Per-row reads from the file (ClipDataset in_memory=False) through a shuffling DataLoader."""
    dataset = ClipDataset(index, "train", ["frame88"], in_memory=False)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=False)
    start, seen = time.perf_counter(), 0
    while seen < batch * batches:
        for item in loader:
            frames = to_images(centre_crop(item["frame88"]))
            seen += len(frames)
            if seen >= batch * batches:
                break
    return seen / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", default=None, help="clip data set folder (index.h5); default: generated")
    p.add_argument("--rows", type=int, default=4096, help="rows of the generated set")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--device", default="cpu", help="where the trainer's path crops and flips (cpu | cuda)")
    p.add_argument("--out", default="bench-loader.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.clips) if args.clips else make_clip_set(Path(tmp), args.rows)
        index = root / "index.h5"
        trainer_path = in_memory(index, args.batch, args.batches, torch.device(args.device))
        rows = [{"path": f"in-memory ({args.device})", "workers": 0, "samples_per_s": trainer_path}]
        for workers in (0, 2):
            rows.append({"path": "chunked reads", "workers": workers,
                         "samples_per_s": chunked(index, args.batch, args.batches, workers)})
    print(f"{'path':<22} {'workers':>7} {'samples/s':>11}")
    for r in rows:
        print(f"{r['path']:<22} {r['workers']:>7} {r['samples_per_s']:>11.0f}")
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
