"""SoundNet-8 feature extraction throughput: audio windows per second by batch size (conv7, time-averaged).

    python benchmarks/soundnet.py --window-s 2 --batch-sizes 1 2 4 8 16 32 64 --device cpu --out soundnet.json

Prints a table and writes JSON. The input is int16 PCM noise shaped like the clip shards' audio rows; the
network's cost does not depend on what the sound is.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from his.audio.features import extract_batch
from his.audio.soundnet import SAMPLE_RATE, load_pretrained
from his.io import write_json


def measure(model: torch.nn.Module, audio: np.ndarray, layer: str, min_seconds: float) -> dict:
    extract_batch(model, audio, layer)  # warm-up (allocations, cuDNN autotuning)
    calls, started = 0, time.perf_counter()
    while True:
        extract_batch(model, audio, layer)  # copies the result back to the host, which synchronises CUDA
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds and calls >= 3:
            break
    return {"batch_size": len(audio), "calls": calls, "seconds": elapsed,
            "windows_per_s": calls * len(audio) / elapsed, "ms_per_batch": 1000 * elapsed / calls}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-s", type=float, default=2.0, help="seconds per audio window (hpc.preprocess default)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--layer", default="conv7")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time per batch size")
    parser.add_argument("--out", default="soundnet_benchmark.json")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_pretrained(device)
    rng = np.random.default_rng(0)
    samples = round(args.window_s * SAMPLE_RATE)
    rows = []
    print(f"SoundNet-8 {args.layer} features, {args.window_s:g} s windows, {device}, "
          f"{torch.get_num_threads()} CPU threads")
    print(f"{'batch':>6} {'windows/s':>10} {'ms/batch':>9}")
    for batch_size in args.batch_sizes:
        audio = rng.integers(-8000, 8000, (batch_size, samples), dtype=np.int16)
        row = measure(model, audio, args.layer, args.min_seconds)
        rows.append(row)
        print(f"{batch_size:>6} {row['windows_per_s']:>10.1f} {row['ms_per_batch']:>9.1f}")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    write_json(args.out, {"benchmark": "soundnet_extraction", "window_s": args.window_s, "layer": args.layer,
                          "device": str(device), "device_name": device_name, "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "results": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
