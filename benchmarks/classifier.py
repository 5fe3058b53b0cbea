"""The measuring frame classifier's fit: milliseconds per training step in the memory format it trains in
(channels-last, his.frame_classifier.MEMORY_FORMAT) against the NCHW it trained in before, side by side.

    python -m benchmarks.classifier [--repeats 3] [--steps 150] [--frames 400] [--out bench-classifier.json]

Each repeat fits the classifier's own recipe (CLASSIFIER_TRAINING: width 32, colour jitter; --steps of its
3000) on --frames random 64x64 frames, once per format, alternating; the table gives the median ms per step and
what a whole fit of CLASSIFIER_TRAINING.steps costs at that rate (the fit happens once per data set, in the
first training run's validation or in his.eval).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import his.frame_classifier as fc

FORMATS = {"channels-last (now)": torch.channels_last, "NCHW (before)": torch.contiguous_format}


def ms_per_step(frames: np.ndarray, labels: torch.Tensor, steps: int, memory_format: torch.memory_format) -> float:
    fc.MEMORY_FORMAT = memory_format
    try:
        started = time.perf_counter()
        fc._fit(frames, labels, 3, F.cross_entropy, dataclasses.replace(fc.CLASSIFIER_TRAINING, steps=steps), False, "cpu")
        return (time.perf_counter() - started) / steps * 1000
    finally:
        fc.MEMORY_FORMAT = torch.channels_last


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.classifier", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--out", default="bench-classifier.json")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    frames = (rng.random((args.frames, 64, 64, 3)) * 255).astype(np.uint8)
    labels = torch.from_numpy(rng.integers(0, 3, args.frames))
    times: dict[str, list[float]] = {name: [] for name in FORMATS}
    for _ in range(args.repeats):
        for name, memory_format in FORMATS.items():
            times[name].append(ms_per_step(frames, labels, args.steps, memory_format))
    base = statistics.median(times["NCHW (before)"])
    rows = [{"format": name, "ms_per_step": statistics.median(t), "runs": t,
             "fit_s": statistics.median(t) * fc.CLASSIFIER_TRAINING.steps / 1000,
             "vs_before": statistics.median(t) / base} for name, t in times.items()]
    print(f"torch threads {torch.get_num_threads()}, {args.repeats} repeats x {args.steps} steps, batch "
          f"{fc.CLASSIFIER_TRAINING.batch_size}\n")
    print("| memory format | ms / step (median) | a 3000-step fit, s | vs before |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['ms_per_step']:.1f} | {r['fit_s']:.0f} | {r['vs_before']:.2f} |")
    Path(args.out).write_text(json.dumps({"repeats": args.repeats, "steps": args.steps, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
