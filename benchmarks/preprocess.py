"""Preprocessing throughput: clips/s of the raw ffmpeg CLI decode, of decode_clips in one process, of a
multiprocessing.Pool and of Ray tasks with 1 and 2 workers, side by side on the same files; and the frame
strategies (probe + select filter, as decode_clips does, vs converting every frame in one call vs one
seek per frame). Medians of --repeats.

    python -m benchmarks.preprocess [--videos N] [--duration S] [--repeats R] [--json OUT.json]

Videos are generated here (UCF-101-like: 320x240, 25 fps, MPEG-4 Part 2 + MP3 in AVI, testsrc2 pictures).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import multiprocessing.pool
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import ffmpeg
import numpy as np

from his.data.shards import concat_columns, write_shard
from his.media import (
    SAMPLE_RATE,
    clip_decode_args,
    ffmpeg_args,
    ffmpeg_exe,
    probe,
    run_ffmpeg_args,
    window_starts,
)
from hpc.preprocess import Settings, Video, process_video, run_tasks


def make_videos(folder: Path, n: int, duration: float) -> list[Video]:
    videos = []
    for i in range(n):
        path = folder / f"v_Bench_g{i:02d}_c01.avi"
        subprocess.run(
            [ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error",
             "-f", "lavfi", "-i", f"testsrc2=s=320x240:r=25:d={duration}",
             "-f", "lavfi", "-i", f"sine=f={220 + 20 * i}:d={duration}",
             "-c:v", "mpeg4", "-vtag", "xvid", "-q:v", "4", "-c:a", "libmp3lame", "-b:a", "128k", str(path)],
            check=True,
        )  # fmt: skip
        videos.append(Video(path.name, str(path), 0, "train", path.stem, i))
    return videos


def ffmpeg_calls(videos: list[Video], settings: Settings, tmp: str) -> list[list[list[str]]]:
    """For each video, the argument lists of the two ffmpeg calls decode_clips makes (probe, then audio +
    selected frames), built ahead so that timing them measures ffmpeg alone."""
    calls = []
    for v in videos:
        info = probe(v.path)
        starts = window_starts(info.duration, settings.window_s, settings.clips_per_video)
        mids = [round(s * SAMPLE_RATE) / SAMPLE_RATE + settings.window_s / 2 for s in starts]
        audio_file = os.path.join(tmp, f"{v.video_id}.s16le")
        probe_args = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", v.path]
        calls.append([probe_args, clip_decode_args(v.path, audio_file, settings.crop, settings.size, mids, info.fps)])
    return calls


def raw_ffmpeg(calls: list[list[list[str]]]) -> None:
    for probe_args, decode_args in calls:
        subprocess.run(probe_args, stdin=subprocess.DEVNULL, capture_output=True)
        subprocess.run(decode_args, stdin=subprocess.DEVNULL, capture_output=True, check=True)


def one_process(videos: list[Video], settings: Settings) -> list:
    return [process_video(v, settings) for v in videos]


def pool(videos: list[Video], settings: Settings, p: multiprocessing.pool.Pool) -> list:
    return p.starmap(process_video, [(v, settings) for v in videos], chunksize=1)


def ray_tasks(videos: list[Video], settings: Settings, workers: int) -> list:
    return list(run_tasks(videos, settings, max_in_flight=workers))


def all_frames_strategy(videos: list[Video], settings: Settings, tmp: str) -> None:
    """One call converting every frame (cropped and resized) at a constant rate; frames picked afterwards."""
    for v in videos:
        info = probe(v.path)
        args = clip_decode_args(v.path, os.path.join(tmp, "all.s16le"), settings.crop, settings.size, None, info.fps)
        run_ffmpeg_args(args, v.path)


def seek_strategy(videos: list[Video], settings: Settings) -> None:
    """Audio in one call, then one input-seeking call per frame."""
    for v in videos:
        audio = ffmpeg.input(v.path).output("pipe:", format="s16le", ac=1, ar=SAMPLE_RATE, vn=None)
        duration = len(run_ffmpeg_args(ffmpeg_args(audio), v.path)[0]) / 2 / SAMPLE_RATE
        for s in window_starts(duration, settings.window_s, settings.clips_per_video):
            frame = ffmpeg.input(v.path, ss=s + settings.window_s / 2).video.filter("scale", 88, 66)
            run_ffmpeg_args(ffmpeg_args(frame.output("pipe:", vframes=1, format="rawvideo", pix_fmt="rgb24")), v.path)


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--duration", type=float, default=7.0, help="seconds per video (UCF-101 averages ~7 s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/preprocess.json")
    args = parser.parse_args()
    import ray

    settings = Settings()
    with tempfile.TemporaryDirectory(prefix="his-bench-") as tmp:
        videos = make_videos(Path(tmp), args.videos, args.duration)
        clips = sum(len(r.columns["audio"]) for r in one_process(videos[:2], settings)) // 2 * len(videos)
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        ray_tasks(videos, settings, 2)  # start both Ray workers and import his in them before timing
        calls = ffmpeg_calls(videos, settings, tmp)
        ctx = multiprocessing.get_context("forkserver")
        with ctx.Pool(1) as pool1, ctx.Pool(2) as pool2:
            pool(videos[:2], settings, pool1), pool(videos[:2], settings, pool2)  # warm the pools
            methods = {
                "ffmpeg CLI alone (1 process)": lambda: raw_ffmpeg(calls),
                "decode_clips, 1 process": lambda: one_process(videos, settings),
                "multiprocessing.Pool(1)": lambda: pool(videos, settings, pool1),
                "Ray, 1 worker": lambda: ray_tasks(videos, settings, 1),
                "multiprocessing.Pool(2)": lambda: pool(videos, settings, pool2),
                "Ray, 2 workers": lambda: ray_tasks(videos, settings, 2),
                "frames: every frame, one call (1 process)": lambda: all_frames_strategy(videos, settings, tmp),
                "frames: seek per frame (1 process)": lambda: seek_strategy(videos, settings),
            }
            seconds = {name: [] for name in methods}
            for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every method alike
                for name, fn in methods.items():
                    seconds[name].append(timed(fn)[0])
        results = ray_tasks(videos, settings, 2)
        decode_sum = sum(r.decode_s for r in results)
        attrs = {"classes": ["Bench"], "sample_rate": SAMPLE_RATE, "window_s": settings.window_s,
                 "samples": round(settings.window_s * SAMPLE_RATE), "clips_per_video": settings.clips_per_video,
                 "crop": np.array(settings.crop), "size": settings.size, "split_list": 1, "source_root": tmp,
                 "code_version": "bench", "created": "", "videos": [v.path for v in videos], "skipped": []}
        columns = concat_columns("clips", [r.columns for r in results if r.columns is not None], attrs)
        write_s, _ = timed(write_shard, Path(tmp) / "bench.h5", "clips", columns, attrs)  # fmt: skip
        ray.shutdown()

    median = {name: statistics.median(s) for name, s in seconds.items()}
    raw = median["ffmpeg CLI alone (1 process)"]
    print(f"\n{len(videos)} videos x {args.duration:g} s, {clips} clips ({settings.clips_per_video}/video, "
          f"{settings.window_s:g} s windows), median of {args.repeats}, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'method':<44} {'s':>7} {'clips/s':>8} {'ms/clip':>8} {'vs raw':>7}")
    for name, s in median.items():
        print(f"{name:<44} {s:7.2f} {clips / s:8.1f} {1000 * s / clips:8.1f} {s / raw:7.2f}")
    efficiency = median["Ray, 1 worker"] / (2 * median["Ray, 2 workers"])
    ray_vs_pool = median["Ray, 2 workers"] / median["multiprocessing.Pool(2)"]
    per_clip_vs_raw = median["decode_clips, 1 process"] / raw
    print(f"\ndecode_clips per clip vs raw ffmpeg: {per_clip_vs_raw:.2f}x (target <= 1.25)")
    print(f"Ray 2 workers vs Pool(2):            {ray_vs_pool:.2f}x (target <= 1.10)")
    print(f"Ray parallel efficiency 1 -> 2:      {efficiency:.0%} (target >= 85%)")
    print(f"stages (Ray, 2 workers): decode {decode_sum:.2f} s summed over tasks, shard write {write_s:.3f} s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "videos": len(videos), "duration_s": args.duration, "clips": clips, "repeats": args.repeats,
        "cpus": os.cpu_count(), "seconds": seconds, "median_s": median,
        "clips_per_s": {k: clips / s for k, s in median.items()},
        "per_clip_vs_raw": per_clip_vs_raw, "ray_vs_pool": ray_vs_pool, "parallel_efficiency": efficiency,
        "stages_s": {"decode (sum over tasks)": decode_sum, "write shard": write_s},
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
