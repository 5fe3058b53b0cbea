"""Draw what a sound looks like with a trained run: N generated frames from a sound, as a PNG grid.

    python -m his.generate --checkpoint RUN_DIR|CHECKPOINT.pt (--audio PATH | --video PATH) [--n 16] [--seed S]
                           [--device auto|cpu|cuda] --out grid.png|DIR

PATH is one file, and --out the PNG to write; or a folder, and --out a directory: every file in the folder (in
name order; hidden files and subfolders left out) gives DIR/<its name>.png, and DIR/report.html is a page that
opens from disk with each sound's player (DIR/report/sound-NNNN.wav, the exact window the images were drawn
from) beside its grid. A file of the folder that cannot be used is one line on stderr naming it, the rest goes
on, and the exit status is then 1.

The sound is any file ffmpeg reads (a video's audio track with --video). It is conditioned on exactly as in
training: one window of the clip set's window_s seconds, the middle one of the file (for an audio file the
window centred on the middle sample; for a video the one window his.media.decode_clips cuts, also centred),
its SoundNet feature from the weights and layer the run's feature set records, standardised with the feature
set's train-split mean and std. For a video the real frame at the window's middle, centre-cropped as
preprocessing crops it, stands in the left column of the first row, the samples to its right. The model is
built from the config the checkpoint carries. The noise is drawn on the CPU from the seed, so CPU and CUDA
draw the same images (up to their arithmetic); the images are drawn in batches, at most MAX_IMAGES a sound.

Expected failures are one line on stderr naming the file and the reason, exit status 2: a missing,
unreadable, too short or silent sound, a file without audio; --n out of range; an --out that cannot be
written (found before any work); a run without a checkpoint, a file that is not a whole checkpoint, a
checkpoint whose weights do not fit its config.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import torch

from his.audio.features import load_feature_extractor
from his.config import ConfigError, OneLineParser, cli_main
from his.data.spec import decode_attr
from his.distributed import choose_device
from his.eval.figures import image_grid, save_png
from his.eval.report import MEDIA_DIR, Entry, render_page, write_page, write_wav
from his.eval.stage import load_run_generator
from his.io import make_dir
from his.media import SAMPLE_RATE, MediaError, decode_audio, decode_clips, refuse_silence
from his.sampling import generate_samples
from his.train.config import TrainConfig

MAX_COLUMNS = 8
MAX_IMAGES = 1024  # per sound: one grid of 8 x 128 images (about 530 x 8,450 pixels)
BATCH_SIZE = 64  # images drawn at once


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


@dataclass
class Drawing:
    """What one sound gave: the window conditioned on, its feature, the grid written."""

    sound: Path
    window: np.ndarray  # int16 (S,)
    feature: np.ndarray  # float32 (D,)
    grid: Path


@dataclass
class Sampler:
    """A run's generator and what conditioning on a new sound takes, loaded once for any number of sounds."""

    checkpoint: Path
    train_cfg: TrainConfig
    generator: torch.nn.Module
    features: Callable[[np.ndarray], np.ndarray]  # int16 (B, S) windows -> standardised features (B, D)
    window_s: float
    crop: tuple[int, int]
    size: int
    device: torch.device

    def draw(self, sound: Path, is_video: bool, n: int, seed: int, out: Path) -> Drawing:
        """Draw `n` images from the middle window of `sound` and write their grid to `out`. Raises MediaError."""
        if not sound.is_file():
            raise MediaError(f"{sound}: no such file")
        if is_video:
            window, real_frame = middle_video_window(sound, self.window_s, self.crop, self.size)
        else:
            window, real_frame = middle_audio_window(sound, self.window_s), None
        refuse_silence(window, sound, f"middle {self.window_s:g} s window")
        feature = self.features(window[None])
        if feature.shape[1] != self.train_cfg.cond_dim:
            raise ConfigError(f"{self.checkpoint}: its generator takes {self.train_cfg.cond_dim}-d sounds, the "
                              f"feature set {self.train_cfg.features} gives {feature.shape[1]}-d")
        samples = generate_samples(lambda features, z: self.generator(z, features), feature, n,
                                   self.train_cfg.z_dim, seed, BATCH_SIZE, self.device)[0]
        cells, columns = grid_cells(samples, real_frame, min(n, MAX_COLUMNS))
        save_png(image_grid(cells, columns), out)
        return Drawing(sound, window, feature[0], out)


def load_sampler(checkpoint: str | os.PathLike, device: str) -> Sampler:
    """The Sampler of a run directory (its checkpoint chosen on validation, else its newest) or of one
    checkpoint file. Raises ConfigError."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise ConfigError(f"{checkpoint}: no such run directory or checkpoint file")
    run_dir, checkpoint_file = (checkpoint, "") if checkpoint.is_dir() else (checkpoint.parent.parent, str(checkpoint))
    torch_device = choose_device(device)
    train_cfg, checkpoint_path, _, generator = load_run_generator(run_dir, checkpoint_file, torch_device)
    index = clip_index(train_cfg)
    try:
        with h5py.File(index, "r") as f:
            window_s = float(f.attrs["window_s"])
            crop = tuple(decode_attr(f.attrs["crop"], "list[int]"))
            size = int(f.attrs["size"])
    except (OSError, KeyError) as e:
        raise ConfigError(f"{index}: the run's clip set cannot be read ({type(e).__name__}: {e})") from None
    features = load_feature_extractor(train_cfg.features, torch_device)
    return Sampler(checkpoint_path, train_cfg, generator, features, window_s, crop, size, torch_device)


def _check_n(n: int) -> None:
    if not 1 <= n <= MAX_IMAGES:
        raise ConfigError(f"config: n={n}: from 1 to {MAX_IMAGES} images a sound (one grid); for more, run "
                          "again with another --seed")


def generate(checkpoint: str | os.PathLike, out: str | os.PathLike, audio: str | os.PathLike | None = None,
             video: str | os.PathLike | None = None, n: int = 16, seed: int = 0,
             device: str = "auto") -> dict[str, object]:
    """Write the grid of `n` images generated from the sound of `audio` or `video` (exactly one of them) by the
    run at `checkpoint` (a run directory: its newest checkpoint; or a checkpoint file in RUN/checkpoints/).
    Returns the paths used, the window and the sound's feature. Raises MediaError, ConfigError or InputError."""
    if (audio is None) == (video is None):
        raise ValueError("give exactly one of audio and video")
    _check_n(n)
    sound, out = Path(audio if audio is not None else video), Path(out)
    if not sound.is_file():
        raise MediaError(f"{sound}: no such file")
    if out.is_dir():
        raise ConfigError(f"{out}: a directory; for one sound --out names the PNG to write")
    make_dir(out.parent)
    sampler = load_sampler(checkpoint, device)
    drawing = sampler.draw(sound, video is not None, n, seed, out)
    return {"out": str(out), "checkpoint": str(sampler.checkpoint), "sound": str(sound),
            "window_s": sampler.window_s, "feature": drawing.feature}


def folder_inputs(folder: Path) -> list[Path]:
    """The files of `folder` to draw from, in name order: not hidden, not in subfolders."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def grid_names(sounds: list[Path]) -> list[str]:
    """Each sound's grid file name: <stem>.png, or <name>.png where two sounds share a stem (a.wav, a.mp4)."""
    stems = [p.stem for p in sounds]
    return [f"{p.stem if stems.count(p.stem) == 1 else p.name}.png" for p in sounds]


def generate_folder(checkpoint: str | os.PathLike, folder: str | os.PathLike, out_dir: str | os.PathLike,
                    is_video: bool = False, n: int = 16, seed: int = 0, device: str = "auto",
                    say: Callable[[str], None] = print) -> dict[str, object]:
    """One grid per file of `folder` into OUT_DIR, and OUT_DIR/report.html with each sound's player and grid.
    A file that cannot be used is reported by `say` (one line naming it) and skipped; returns the grids written,
    the files skipped with their reasons, and the page."""
    _check_n(n)
    folder = Path(folder)
    sounds = folder_inputs(folder)
    if not sounds:
        raise ConfigError(f"{folder}: no files in the folder to draw from")
    out_dir = make_dir(out_dir)
    make_dir(out_dir / MEDIA_DIR)
    sampler = load_sampler(checkpoint, device)
    entries, skipped = [], []
    for i, (sound, name) in enumerate(zip(sounds, grid_names(sounds))):
        try:
            drawing = sampler.draw(sound, is_video, n, seed, out_dir / name)
        except MediaError as e:  # this file only; a ConfigError is the run's and ends it all
            say(str(e))
            skipped.append((sound.name, str(e)))
            continue
        audio = f"{MEDIA_DIR}/sound-{i:04d}.wav"
        write_wav(out_dir / audio, drawing.window, SAMPLE_RATE)
        facts = [("file", str(sound)), ("window", f"the middle {sampler.window_s:g} s"), ("images", str(n))]
        if is_video:
            facts.append(("left column", "the video's real frame at the middle of the window"))
        entries.append(Entry(sound.name, name, audio, facts=facts))
    intro = (f"{len(entries)} of the {len(sounds)} files of {folder}, {n} images drawn from each by "
             f"{sampler.checkpoint} (seed {seed}). Play a sound and look at what was drawn from it.")
    page = write_page(out_dir, render_page("Hear it and see it: his.generate", intro, entries, skipped=skipped))
    return {"grids": [str(out_dir / e.grid) for e in entries], "skipped": skipped, "report": str(page),
            "checkpoint": str(sampler.checkpoint)}


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m his.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a his.train run directory or one of its checkpoints")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio", help="any file ffmpeg reads, or a folder of them; the audio track is the sound")
    source.add_argument("--video", help="a video, or a folder of them: the audio track, and the real middle frame "
                                        "beside the samples")
    parser.add_argument("--n", type=int, default=16, help=f"images to generate per sound (at most {MAX_IMAGES})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", required=True, help="the PNG to write; for a folder, the directory")

    def say(line: str) -> None:
        print(f"his.generate: {line}", file=sys.stderr)

    def body(args: list[str]) -> int:
        a = parser.parse_args(args)
        source = Path(a.audio if a.audio is not None else a.video)
        try:
            if source.is_dir():
                result = generate_folder(a.checkpoint, source, a.out, a.video is not None, a.n, a.seed, a.device, say)
                print(f"{result['report']}: {len(result['grids'])} grids of {a.n} images, "
                      f"{len(result['skipped'])} files skipped; checkpoint {result['checkpoint']}")
                return 1 if result["skipped"] else 0
            result = generate(a.checkpoint, a.out, a.audio, a.video, a.n, a.seed, a.device)
        except MediaError as e:
            say(str(e))
            return 2
        print(f"{result['out']}: {a.n} images from {result['sound']} (middle {result['window_s']:g} s window), "
              f"checkpoint {result['checkpoint']}")
        return 0

    return cli_main("his.generate", body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
