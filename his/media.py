"""Media decoding with ffmpeg, driven through ffmpeg-python as argument lists (never a shell string).

By default the static binary shipped by imageio-ffmpeg (~10 ms to start, against ~100 ms for a dynamically
linked system ffmpeg); set HIS_FFMPEG to use another. Every call: -nostdin, -threads 1, a timeout, stdout and
stderr both drained by `communicate` (a full stderr pipe is a known deadlock), the child reaped on timeout.

`decode_clips` turns one video into training clips with two ffmpeg calls: `ffmpeg -i` for the duration and
frame rate (the imageio-ffmpeg binary has no ffprobe), then one call that writes the audio track to a
temporary file as 22,050 Hz mono s16le and sends only the frames at the window middles (a select filter),
cropped and shrunk by ffmpeg to the two stored sizes, to stdout. Measured against converting every frame in
one call and against one seek per frame in benchmarks/preprocess.py.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import ffmpeg
import numpy as np

from his.constants import SAMPLE_RATE

REFERENCE_SIZE = (320, 240)  # UCF-101 frame size the crop is given for
FRAME88_SIZE = (88, 66)  # whole frame, W x H
SILENCE_PEAK = 2  # int16 levels; a track whose peak is below this is silent

SHOWINFO_TIME = re.compile(r"\bpts_time:\s*(-?[\d.]+)")
GLOBAL_ARGS = ["-nostdin", "-hide_banner", "-nostats", "-filter_complex_threads", "1", "-threads", "1"]


class MediaError(RuntimeError):
    """A file ffmpeg cannot use; the message is one line naming the file and the reason."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr  # ffmpeg's full stderr, when it ran


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    exe = os.environ.get("HIS_FFMPEG")
    if exe:
        return exe
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_args(stream: "ffmpeg.nodes.OutputStream", loglevel: str = "error") -> list[str]:
    """The argument list of an ffmpeg-python graph with our global options in front of the inputs.

    ffmpeg-python appends global_args after the outputs, where ffmpeg ignores per-file options such as
    -threads, so they are put right after the binary instead.
    """
    args = stream.compile(cmd=ffmpeg_exe())
    return [args[0], *GLOBAL_ARGS, "-loglevel", loglevel, *args[1:]]


def _failure_reason(stderr: bytes, returncode: int) -> str:
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else f"ffmpeg exited with {returncode}"


def run_ffmpeg_args(
    args: list[str], path: str | os.PathLike, timeout: float = 120.0, check: bool = True
) -> tuple[bytes, bytes]:
    """Run ffmpeg with `args`; return (stdout, stderr). Every ffmpeg call goes through here, the one place its
    failures become a MediaError naming `path`: a timeout always, a non-zero exit status when `check` (the
    message is ffmpeg's last stderr line, the error's .stderr all of it)."""
    try:
        # subprocess.run drains both pipes with communicate() and kills and reaps the child on timeout
        proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MediaError(f"{path}: ffmpeg timed out after {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")
        raise MediaError(f"{path}: {_failure_reason(proc.stderr, proc.returncode)}", stderr)
    return proc.stdout, proc.stderr


def run_ffmpeg(stream: "ffmpeg.nodes.OutputStream", path: str | os.PathLike, timeout: float = 120.0) -> bytes:
    """Run a compiled ffmpeg-python graph; return stdout. Raises MediaError naming `path` on failure."""
    return run_ffmpeg_args(ffmpeg_args(stream), path, timeout)[0]


def ffmpeg_path(path: str | os.PathLike) -> str:
    """A file name as ffmpeg must be given it: with the file: protocol, so that "take:2.avi" is a file, not a URL."""
    return f"file:{path}"


def decode_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, timeout: float = 120.0) -> np.ndarray:
    """The whole audio track of any file ffmpeg reads, as mono float32 in [-1, 1] at `sample_rate`."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: no such file")
    stream = ffmpeg.input(ffmpeg_path(path)).output("pipe:", format="s16le", acodec="pcm_s16le", ac=1, ar=sample_rate, vn=None)
    try:
        raw = run_ffmpeg(stream, path, timeout)
    except MediaError as e:
        if "does not contain any stream" in e.stderr:  # how ffmpeg fails on a file without an audio track
            raise MediaError(f"{path}: no audio stream") from None
        raise
    if not raw:
        raise MediaError(f"{path}: no audio stream")
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


@dataclass
class StreamInfo:
    """What ffmpeg's header lines say about an input (any field may be missing)."""

    duration: float | None
    fps: float | None
    width: int | None
    height: int | None
    has_audio: bool
    has_video: bool


def parse_stream_info(stderr: str) -> StreamInfo:
    """Parse the input description ffmpeg prints at -loglevel info (the part before 'Stream mapping')."""
    header = stderr.split("Stream mapping:")[0].split("Output #0")[0]
    duration = None
    m = re.search(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)", header)
    if m:
        duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    video = re.search(r"Stream #0:\d+.*?: Video: (.*)", header)
    fps = width = height = None
    if video:
        m = re.search(r"(\d+(?:\.\d+)?)k? fps", video[1]) or re.search(r"(\d+(?:\.\d+)?)k? tbr", video[1])
        fps = float(m[1]) if m else None
        m = re.search(r", (\d{2,5})x(\d{2,5})", video[1])
        if m:
            width, height = int(m[1]), int(m[2])
    has_audio = re.search(r"Stream #0:\d+.*?: Audio:", header) is not None
    return StreamInfo(duration, fps, width, height, has_audio, video is not None)


def window_starts(duration: float, window_s: float, max_windows: int) -> list[float]:
    """Start times of at most `max_windows` non-overlapping windows spread evenly over `duration`.

    The gaps between windows, and half a gap at each end, are equal; a file shorter than one window gets none.
    """
    n = min(max_windows, int(duration // window_s))
    if n <= 0:
        return []
    gap = (duration - n * window_s) / n
    return [gap / 2 + i * (window_s + gap) for i in range(n)]


def riff_missing_bytes(path: Path) -> int:
    """For a RIFF file (AVI, WAV), how many bytes short it is of the size in its header; else 0.

    ffmpeg decodes a cut AVI without complaint up to the cut, and estimates the duration from the file size,
    so the container header is the one place a truncation shows.
    """
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] not in (b"AVI ", b"WAVE"):
        return 0
    return int.from_bytes(head[4:8], "little") + 8 - path.stat().st_size


def refuse_silence(audio: np.ndarray, path: str | os.PathLike, what: str = "audio track") -> None:
    """MediaError naming `path` when int16 `audio` is empty or silent (its peak below SILENCE_PEAK)."""
    if len(audio) == 0 or np.abs(audio.astype(np.int32)).max() < SILENCE_PEAK:
        raise MediaError(f"{path}: silent {what}")


@dataclass
class VideoClips:
    """The clips of one video: row i is window i. Times are seconds from the start of the file."""

    audio: np.ndarray  # int16 (n, samples)
    frame64: np.ndarray  # uint8 (n, size, size, 3)
    frame88: np.ndarray  # uint8 (n, 66, 88, 3)
    t_start: np.ndarray  # float32 (n,)
    t_end: np.ndarray
    t_frame: np.ndarray
    duration: float

    def __len__(self) -> int:
        return len(self.audio)


def probe(path: str | os.PathLike, timeout: float = 30.0) -> StreamInfo:
    """The header of a video as `ffmpeg -i` prints it (the imageio-ffmpeg binary has no ffprobe).

    Raises MediaError when the file is not media, lacks a video or an audio stream, or gives no duration.
    """
    # exit status 1 is normal here: no output file was named
    _, raw = run_ffmpeg_args([ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", ffmpeg_path(path)], path, timeout,
                             check=False)
    stderr = raw.decode(errors="replace")
    if "Invalid data found" in stderr or "Input #0" not in stderr:
        raise MediaError(f"{path}: not a readable media file (invalid data)", stderr)
    info = parse_stream_info(stderr)
    if not info.has_video:
        raise MediaError(f"{path}: no video stream", stderr)
    if not info.has_audio:
        raise MediaError(f"{path}: no audio stream", stderr)
    if not info.duration or not info.fps:
        raise MediaError(f"{path}: no duration or frame rate in its header", stderr)
    return info


def clip_decode_args(
    path: str | os.PathLike,
    audio_file: str,
    crop: tuple[int, int],
    size: int,
    frame_times: Sequence[float] | None,
    fps: float,
) -> list[str]:
    """The ffmpeg call of decode_clips: 22,050 Hz mono s16le audio from time 0 to `audio_file`; to stdout as
    rgb24 the frame on screen at each of `frame_times` (None: every frame, each with its timestamp on stderr as
    showinfo's `pts_time:`), the centre crop resized to size x size and the whole frame resized to 88x66 side
    by side, padded at the bottom to the same height."""
    crop_w, crop_h = crop[0] / REFERENCE_SIZE[0], crop[1] / REFERENCE_SIZE[1]
    big_w, big_h = FRAME88_SIZE
    height = max(size, big_h)
    inp = ffmpeg.input(ffmpeg_path(path))
    video = inp.video
    if frame_times is not None:
        # the frame on screen at time m is the one whose timestamp t has m - 1/fps < t <= m
        expr = "+".join(f"between(t,{m - 1 / fps + 1e-4:.6f},{m + 1e-4:.6f})" for m in frame_times)
        video = video.filter("select", expr)
    else:
        video = video.filter("showinfo")
    both = video.filter("format", "rgb24").split()
    small = (
        both[0]
        .filter("crop", f"iw*{crop_w}", f"ih*{crop_h}")
        .filter("scale", size, size, flags="area")
        .filter("pad", size, height, 0, 0)
    )
    big = both[1].filter("scale", big_w, big_h, flags="area").filter("pad", big_w, height, 0, 0)
    graph = ffmpeg.merge_outputs(
        # placed by its own timestamps: an audio track that starts after the video (as phone recordings' do)
        # is padded with silence from 0, so sample i is at time i / SAMPLE_RATE, as the frames' times are
        inp.audio.filter("aresample", **{"async": 1, "first_pts": 0})
        .output(audio_file, format="s16le", acodec="pcm_s16le", ac=1, ar=SAMPLE_RATE),
        ffmpeg.filter([small, big], "hstack").output("pipe:", format="rawvideo", pix_fmt="rgb24",
                                                     fps_mode="passthrough"),
    )
    return ffmpeg_args(graph.overwrite_output(), "error" if frame_times is not None else "info")


def _decode(path: Path, args_for, size: int, timeout: float) -> tuple[np.ndarray, np.ndarray, str]:
    """Run one clip_decode_args call (given as a function of the audio file's path); return (audio, frames,
    ffmpeg's stderr)."""
    with tempfile.TemporaryDirectory(prefix="his-audio-") as tmp:
        audio_file = os.path.join(tmp, "audio.s16le")
        raw, stderr = run_ffmpeg_args(args_for(audio_file), path, timeout)
        audio = np.fromfile(audio_file, dtype="<i2")
    height, width = max(size, FRAME88_SIZE[1]), size + FRAME88_SIZE[0]
    frames = np.frombuffer(raw, np.uint8)
    n = len(frames) // (height * width * 3)
    return audio, frames[: n * height * width * 3].reshape(n, height, width, 3), stderr.decode(errors="replace")


def decode_clips(
    path: str | os.PathLike,
    window_s: float = 2.0,
    max_clips: int = 4,
    crop: tuple[int, int] = (200, 190),
    size: int = 64,
    timeout: float = 120.0,
    start_s: float = 0.0,
    end_s: float = math.inf,
) -> VideoClips:
    """Cut `path` into at most `max_clips` audio windows of `window_s` seconds, each with the frame shown at
    its middle: centre crop (`crop` is W x H for a 320x240 frame, scaled for other sizes) resized to
    size x size, and the whole frame resized to 88x66. The windows lie in the segment [`start_s`, `end_s`]
    of the file (by default all of it). Raises MediaError for a file that is missing, empty, not a video,
    without audio, silent, truncated, shorter than one window, or whose segment starts past its end.

    Two ffmpeg calls: `ffmpeg -i` for the duration, then audio and the selected frames together (measured
    ~4x faster than one call that converts every frame; benchmarks/preprocess.py). Where the frame timestamps
    have gaps, or the frame rate changes, the select misses a frame; then every frame is decoded with its own
    timestamp and the one on screen at each middle picked by time. The audio is placed by its own timestamps
    too (from time 0), and a track is truncated only when it ends well before the container's duration.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file")
    missing = riff_missing_bytes(path)
    if missing > 0:
        raise MediaError(f"{path}: truncated: {missing} bytes short of the size its RIFF header gives")
    info = probe(path, timeout)
    if start_s >= info.duration:
        raise MediaError(f"{path}: its segment starts at {start_s:g} s, past the video's end ({info.duration:.2f} s)")
    span = min(info.duration, end_s) - start_s
    starts = [start_s + s for s in window_starts(span, window_s, max_clips)]
    if not starts:
        raise MediaError(f"{path}: too short: {span:.2f} s < one {window_s:g} s window")

    samples = round(window_s * SAMPLE_RATE)
    first = np.array([round(s * SAMPLE_RATE) for s in starts])
    t_start = first / SAMPLE_RATE
    t_frame = t_start + window_s / 2
    audio, frames, _ = _decode(path, lambda a: clip_decode_args(path, a, crop, size, t_frame, info.fps), size,
                               timeout)
    if len(frames) != len(starts):
        audio, every, log = _decode(path, lambda a: clip_decode_args(path, a, crop, size, None, info.fps), size,
                                    timeout)
        times = np.array([float(t) for t in SHOWINFO_TIME.findall(log)])
        if len(every) == 0:
            raise MediaError(f"{path}: no decodable video frames")
        if len(times) != len(every):
            raise MediaError(f"{path}: {len(every)} frames decoded but {len(times)} timestamps")
        # the frame on screen at time t is the last one whose timestamp is <= t
        frames = every[np.clip(np.searchsorted(times, t_frame + 1e-6, side="right") - 1, 0, len(every) - 1)]

    decoded = len(audio) / SAMPLE_RATE
    if decoded < 0.9 * info.duration - 0.1:
        raise MediaError(f"{path}: truncated: decoded {decoded:.2f} s of {info.duration:.2f} s")
    refuse_silence(audio, path)
    keep = first + samples <= len(audio)  # the header's duration may promise a little more audio than there is
    if not keep.any():
        raise MediaError(f"{path}: too short: {decoded:.2f} s of audio < one {window_s:g} s window")
    first, t_start, t_frame, frames = first[keep], t_start[keep], t_frame[keep], frames[keep]
    big_w, big_h = FRAME88_SIZE
    return VideoClips(
        audio=np.stack([audio[i : i + samples] for i in first]),
        frame64=np.ascontiguousarray(frames[:, :size, :size]),
        frame88=np.ascontiguousarray(frames[:, :big_h, size : size + big_w]),
        t_start=t_start.astype(np.float32),
        t_end=(t_start + samples / SAMPLE_RATE).astype(np.float32),
        t_frame=t_frame.astype(np.float32),
        duration=min(decoded, info.duration),
    )
