"""Draw what a sound looks like with a trained run: N generated frames from one sound, as a PNG grid.

    python -m his.generate --checkpoint RUN_DIR|CHECKPOINT.pt (--audio FILE | --video FILE) [--n 16] [--seed S]
                           [--device auto|cpu|cuda] --out grid.png

The sound is any file ffmpeg reads (a video's audio track with --video). It is conditioned on exactly as in
training: one window of the clip set's window_s seconds, the middle one of the file (for an audio file the
window centred on the middle sample; for a video the one window his.media.decode_clips cuts, also centred),
its SoundNet feature from the weights and layer the run's feature set records, standardised with the feature
set's train-split mean and std. For a video the real frame at the window's middle, centre-cropped as
preprocessing crops it, stands in the left column of the first row, the samples to its right. The noise is
drawn on the CPU from the seed, so CPU and CUDA draw the same images (up to their arithmetic).

A missing, unreadable or too short file, a file without audio, or a run without a checkpoint: one line on
stderr naming the file and the reason, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import h5py
import numpy as np

from his.audio.features import load_feature_extractor
from his.config import ConfigError
from his.data.spec import decode_attr
from his.distributed import choose_device
from his.eval.evaluate import generate_samples
from his.eval.figures import image_grid, save_png
from his.eval.stage import load_run_generator
from his.media import SAMPLE_RATE, MediaError, decode_audio, decode_clips
from his.train.config import TrainConfig

MAX_COLUMNS = 8


def clip_index(train_cfg: TrainConfig) -> Path:
    clips = Path(train_cfg.clips)
    return clips / "index.h5" if clips.is_dir() else clips


def middle_audio_window(path: str | os.PathLike, window_s: float) -> np.ndarray:
    """int16 (S,): the `window_s` seconds of the audio track centred on its middle, 22,050 Hz mono."""
    waveform = decode_audio(path)
    samples = round(window_s * SAMPLE_RATE)
    if len(waveform) < samples:
        raise MediaError(f"{path}: too short: {len(waveform) / SAMPLE_RATE:.2f} s of audio < one {window_s:g} s window")
    start = (len(waveform) - samples) // 2
    # decode_audio gives int16 / 32768 as float32, so this recovers the PCM the clip set would hold exactly
    return np.round(waveform[start : start + samples] * 32768).astype(np.int16)


def middle_video_window(path: str | os.PathLike, window_s: float, crop: tuple[int, int],
                        size: int) -> tuple[np.ndarray, np.ndarray]:
    """(int16 (S,), uint8 (size, size, 3)): the middle window's audio and the centre crop of its middle frame."""
    clips = decode_clips(path, window_s, max_clips=1, crop=crop, size=size)
    return clips.audio[0], clips.frame64[0]


def grid_cells(samples: np.ndarray, real_frame: np.ndarray | None, columns: int) -> tuple[np.ndarray, int]:
    """The cells of the grid in row order and its number of columns: the samples, `columns` per row, with the
    real frame (when given) in an extra left column of the first row and white cells below it."""
    if real_frame is None:
        return samples, columns
    blank = np.full_like(real_frame, 255)
    rows = [np.concatenate([(real_frame if start == 0 else blank)[None], samples[start : start + columns]])
            for start in range(0, len(samples), columns)]
    return np.concatenate(rows), columns + 1


def generate(checkpoint: str | os.PathLike, out: str | os.PathLike, audio: str | os.PathLike | None = None,
             video: str | os.PathLike | None = None, n: int = 16, seed: int = 0,
             device: str = "auto") -> dict[str, object]:
    """Write the grid of `n` images generated from the sound of `audio` or `video` (exactly one of them) by the
    run at `checkpoint` (a run directory: its newest checkpoint; or a checkpoint file in RUN/checkpoints/).
    Returns the paths used, the window and the sound's feature. Raises MediaError or ConfigError."""
    if (audio is None) == (video is None):
        raise ValueError("give exactly one of audio and video")
    if n < 1:
        raise ConfigError(f"config: n={n} must be >= 1")
    sound = Path(audio if audio is not None else video)
    if not sound.is_file():
        raise MediaError(f"{sound}: no such file")
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise ConfigError(f"{checkpoint}: no such run directory or checkpoint file")
    run_dir, checkpoint_file = (checkpoint, "") if checkpoint.is_dir() else (checkpoint.parent.parent, str(checkpoint))
    torch_device = choose_device(device)
    train_cfg, checkpoint_path, _, generator = load_run_generator(run_dir, checkpoint_file, torch_device)

    with h5py.File(clip_index(train_cfg), "r") as f:
        window_s = float(f.attrs["window_s"])
        crop = tuple(decode_attr(f.attrs["crop"], "list[int]"))
        size = int(f.attrs["size"])
    if audio is not None:
        window, real_frame = middle_audio_window(sound, window_s), None
    else:
        window, real_frame = middle_video_window(sound, window_s, crop, size)

    feature = load_feature_extractor(train_cfg.features, torch_device)(window[None])
    samples = generate_samples(lambda features, z: generator(z, features), feature, n, train_cfg.z_dim, seed,
                               device=torch_device)[0]
    cells, columns = grid_cells(samples, real_frame, min(n, MAX_COLUMNS))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_png(image_grid(cells, columns), out)
    return {"out": str(out), "checkpoint": str(checkpoint_path), "sound": str(sound), "window_s": window_s,
            "feature": feature[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m his.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a his.train run directory or one of its checkpoints")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio", help="any file ffmpeg reads; its audio track is the sound")
    source.add_argument("--video", help="a video: its audio track, and its real middle frame beside the samples")
    parser.add_argument("--n", type=int, default=16, help="images to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    try:
        result = generate(args.checkpoint, args.out, args.audio, args.video, args.n, args.seed, args.device)
    except (MediaError, ConfigError) as e:
        print(f"his.generate: {e}", file=sys.stderr)
        return 2
    print(f"{result['out']}: {args.n} images from {result['sound']} (middle {result['window_s']:g} s window), "
          f"checkpoint {result['checkpoint']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
