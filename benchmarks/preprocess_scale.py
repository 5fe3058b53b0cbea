"""The preprocessing driver at scale, without the videos: hpc.preprocess.run on a generated VGGSound-style CSV of
N rows (310 classes, about 0.5 % of the rows naming a missing video), with every decode stubbed by a task of
fixed cost that returns no clips, so what is measured is the driver: the listing (CSV, one directory listing, the
bad rows), the split check, the shard plan, the task list, the shards' metadata, manifest, index, report and
spec check, and then the resume of a half-finished output (the last half of the shards deleted).

    python -m benchmarks.preprocess_scale [--rows 2000,20000,200000] [--repeats 3] [--task-ms 0]
        [--ray-rows 2000,20000] [--ray-repeats 1] [--decode-videos 5] [--estimate-rows 200000]
        [--cores-per-node 32] [--efficiency 0.78] [--json OUT.json] [--workdir DIR]

Each measurement runs in a fresh process (its peak RSS is the driver's peak memory). "driver s" is the wall
time of run() less the stubbed tasks' fixed cost, "CPU s" the driver process's CPU time (user + system), which
does not grow when other work shares the machine. The input (CSV and N empty video files) is made once per N.
With --ray-rows, the same is done with the tasks on a real local Ray (--ray-cpus logical CPUs), the decode
stubbed in the task: Ray's own cost per video (hpc.preprocess batches a few videos per task), which the stub
runner leaves out. Medians of --repeats; a table, and JSON.

Then what a real VGGSound run would cost: decode_clips (4 windows of 2 s, as hpc.preprocess's defaults) timed on
--decode-videos generated 10 s 640x360 H.264 + AAC MP4s (a VGGSound download's format), one process, median;
the hours for --estimate-rows videos on N nodes of --cores-per-node cores at --efficiency parallel efficiency
(README: 78 % from 1 to 2 Ray workers on this 2-vCPU machine), plus the driver's time measured above.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from his.constants import SAMPLE_RATE
from his.data.layouts import Video, write_csv
from his.data.shards import empty_columns
from his.media import decode_clips, ffmpeg_exe
from hpc.preprocess import PreprocessConfig, Settings, StopSignals, VideoResult, run, run_tasks

CLASSES = 310  # VGGSound's
TEST_SHARE = 0.08  # about VGGSound's 15,000 test of 200,000
MISSING_SHARE = 0.005


def make_input(folder: Path, rows: int, seed: int = 0) -> Path:
    """folder/vggsound.csv with `rows` rows and folder/video/ with an empty file for each but the missing ones."""
    csv_path = folder / "vggsound.csv"
    if csv_path.is_file():
        return csv_path
    rng = np.random.default_rng(seed)
    videos = folder / "video"
    videos.mkdir(parents=True, exist_ok=True)
    chars = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    ids = ["".join(c) for c in chars[rng.integers(0, len(chars), (rows, 11))]]
    starts = rng.integers(0, 300, rows)
    labels = [f"sound class {i:03d}, kind {i % 7}" for i in rng.integers(0, CLASSES, rows)]
    splits = np.where(rng.random(rows) < TEST_SHARE, "test", "train")
    missing = rng.random(rows) < MISSING_SHARE
    for i in range(rows):
        if not missing[i]:
            (videos / f"{ids[i]}_{starts[i]:06d}.mp4").touch()
    write_csv(csv_path, zip(ids, starts.tolist(), labels, splits.tolist()))
    return csv_path


@functools.lru_cache(maxsize=4)
def no_clips(settings: Settings) -> dict[str, np.ndarray]:
    return empty_columns("clips", {"samples": round(settings.window_s * SAMPLE_RATE), "size": settings.size})


def stub_video(video: Video, settings: Settings, task_s: float = 0.0) -> VideoResult:
    """The fixed-cost stand-in for process_video: `task_s` of busy work, then no clips."""
    end = time.perf_counter() + task_s
    while time.perf_counter() < end:
        pass
    return VideoResult(video, no_clips(settings), "", task_s, "stub")


@contextlib.contextmanager
def no_ray(args: PreprocessConfig) -> Iterator[tuple[int, StopSignals]]:
    yield 64, StopSignals()


def stub_tasks(videos: list[Video], settings: Settings, max_in_flight: int, check, task_s: float = 0.0
               ) -> Iterator[VideoResult]:
    """The tasks in this process, one after another (the driver's bookkeeping is all that is left)."""
    for video in videos:
        yield stub_video(video, settings, task_s)


def measure(csv_path: Path, out: Path, phase: str, task_s: float, ray_cpus: int) -> dict:
    """One run() in this process: "fresh" into an empty `out`, or "resume" after deleting the last half of the
    shards and the index of a complete `out`."""
    cfg = PreprocessConfig(layout="csv", csv=str(csv_path), videos=str(csv_path.parent / "video"), out=str(out),
                           window_s=1.0, clips_per_video=4, shard_clips=1024, num_cpus=ray_cpus)
    if phase == "resume":
        shards = sorted((out / "shards").glob("clips-*.h5"))
        for shard in shards[len(shards) // 2:]:
            shard.unlink()
        (out / "index.h5").unlink()
    submitted = []

    def counted(videos, *args):
        submitted.append(len(videos))
        if ray_cpus:  # a Ray task must be a plain function (the stub at no cost), importable by the workers
            from benchmarks import preprocess_scale

            return run_tasks(videos, *args, work=preprocess_scale.stub_video)
        return stub_tasks(videos, *args, task_s=task_s)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(quiet):
        t, cpu = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF)
        result = run(cfg, session=None if ray_cpus else no_ray, tasks=counted)
        wall, cpu = time.perf_counter() - t, cpu_seconds(resource.RUSAGE_SELF) - cpu
    summary = result["summary"]
    tasks = submitted[0] if submitted else 0
    stubbed = 0 if ray_cpus else tasks * task_s  # the fixed cost of the stubbed decodes, not the driver's
    return {"phase": phase, "wall_s": wall, "driver_s": wall - stubbed, "driver_cpu_s": cpu - stubbed, "tasks": tasks,
            "shards_kept": summary["shards_kept"], "shards_written": summary["shards_written"],
            "rows_rejected": summary["rows_rejected"], "videos": tasks + summary["videos_reused"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "start_rss_mb": rss_before / 1024, "ray_start_s": summary["seconds"]["start ray"],
            "seconds": summary["seconds"]}


def cpu_seconds(who: int) -> float:
    """User + system CPU seconds of this process (RUSAGE_SELF) or of its finished children (RUSAGE_CHILDREN)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def child(csv_path: Path, out: Path, phase: str, task_s: float, ray_cpus: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.preprocess_scale", "--one", phase, "--csv", str(csv_path), "--out",
           str(out), "--task-ms", str(task_s * 1000), "--ray-cpus", str(ray_cpus)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(workdir: Path, rows: int, repeats: int, task_s: float, ray_cpus: int) -> dict:
    csv_path = make_input(workdir / f"input-{rows}", rows)
    runs: dict[str, list[dict]] = {"fresh": [], "resume": []}
    for _ in range(repeats):
        out = workdir / f"out-{rows}"
        shutil.rmtree(out, ignore_errors=True)
        for phase in runs:
            runs[phase].append(child(csv_path, out, phase, task_s, ray_cpus))
    shutil.rmtree(workdir / f"out-{rows}", ignore_errors=True)
    med = lambda phase, key: statistics.median(r[key] for r in runs[phase])
    fresh, resume = runs["fresh"][0], runs["resume"][0]
    return {"rows": rows, "ray": bool(ray_cpus), "repeats": repeats, "task_ms": task_s * 1000,
            "videos": fresh["videos"], "rows_rejected": fresh["rows_rejected"],
            "shards": fresh["shards_written"], "fresh_driver_s": med("fresh", "driver_s"),
            "fresh_driver_cpu_s": med("fresh", "driver_cpu_s"), "resume_driver_cpu_s": med("resume", "driver_cpu_s"),
            "fresh_peak_mb": med("fresh", "peak_rss_mb"), "resume_driver_s": med("resume", "driver_s"),
            "resume_peak_mb": med("resume", "peak_rss_mb"), "start_rss_mb": med("fresh", "start_rss_mb"),
            "ray_start_s": med("fresh", "ray_start_s"),
            "resume_tasks": resume["tasks"], "resume_shards_kept": resume["shards_kept"],
            "fresh_seconds": fresh["seconds"], "runs": runs}


def decode_seconds(folder: Path, count: int) -> list[float]:
    """CPU seconds (this process and its ffmpeg) of decode_clips on each of `count` generated 10 s 640x360
    H.264 + AAC MP4s: what a core spends on a video, however busy the machine is."""
    folder.mkdir(parents=True, exist_ok=True)
    times = []
    for i in range(count):
        path = folder / f"segment{i}_000000.mp4"
        if not path.is_file():
            subprocess.run([ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error",
                            "-f", "lavfi", "-i", "testsrc2=s=640x360:r=25:d=10",
                            "-f", "lavfi", "-i", f"sine=f={300 + 40 * i}:d=10",
                            "-c:v", "libx264", "-preset", "fast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k",
                            str(path)], check=True)  # fmt: skip
        before = cpu_seconds(resource.RUSAGE_SELF) + cpu_seconds(resource.RUSAGE_CHILDREN)
        decode_clips(path)
        times.append(cpu_seconds(resource.RUSAGE_SELF) + cpu_seconds(resource.RUSAGE_CHILDREN) - before)
    return times


def estimate(per_video_s: float, driver_s_per_row: float, ray_s_per_video: float, rows: int, cores: int,
             efficiency: float, nodes: list[int]) -> list[dict]:
    """Hours to preprocess `rows` videos on each node count: decoding spread over every core, but no faster than
    the driver hands videos out through Ray, and the driver's own bookkeeping."""
    return [{"nodes": n, "cores": n * cores,
             "hours": (max(rows * per_video_s / (n * cores * efficiency), rows * ray_s_per_video)
                       + rows * driver_s_per_row) / 3600}
            for n in nodes]


def print_table(results: list[dict]) -> None:
    head = ("rows", "runner", "videos", "rejected", "shards", "driver s (CPU s)", "peak MB", "resume s (CPU s)",
            "resume MB", "resume: shards kept / videos decoded", "CPU µs/row")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        print(f"| {r['rows']:,} | {'Ray' if r['ray'] else 'stub'} | {r['videos']:,} | {r['rows_rejected']} "
              f"| {r['shards']} | {r['fresh_driver_s']:.2f} ({r['fresh_driver_cpu_s']:.2f}) | {r['fresh_peak_mb']:.0f} "
              f"| {r['resume_driver_s']:.2f} ({r['resume_driver_cpu_s']:.2f}) | {r['resume_peak_mb']:.0f} "
              f"| {r['resume_shards_kept']} / {r['resume_tasks']:,} "
              f"| {1e6 * r['fresh_driver_cpu_s'] / r['rows']:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="2000,20000,200000")
    parser.add_argument("--ray-rows", default="", help="also run these sizes with the tasks on a real local Ray")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ray-repeats", type=int, default=1)
    parser.add_argument("--task-ms", type=float, default=0.0, help="fixed cost of a stubbed decode")
    parser.add_argument("--decode-videos", type=int, default=5, help="MP4s to time decode_clips on (0: none)")
    parser.add_argument("--estimate-rows", type=int, default=200_000)
    parser.add_argument("--cores-per-node", type=int, default=32)
    parser.add_argument("--efficiency", type=float, default=0.78)
    parser.add_argument("--workdir", default="", help="where inputs and outputs go (default: a temporary folder)")
    parser.add_argument("--json", default="")
    parser.add_argument("--one", choices=("fresh", "resume"), help=argparse.SUPPRESS)
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--ray-cpus", type=int, default=4,
                        help="logical CPUs of the local Ray with --ray-rows: the stub costs nothing, so more tasks in "
                             "flight than cores measure what the driver and Ray spend per task, not its latency")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(Path(args.csv), Path(args.out), args.one, args.task_ms / 1000, args.ray_cpus)))
        return 0
    with contextlib.ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        sizes = [(int(n), 0) for n in args.rows.split(",") if n]
        sizes += [(int(n), args.ray_cpus) for n in args.ray_rows.split(",") if n]
        results = []
        for rows, ray_cpus in sizes:
            repeats = args.ray_repeats if ray_cpus else args.repeats
            results.append(bench(workdir, rows, repeats, args.task_ms / 1000, ray_cpus))
            print(f"{rows} rows ({'Ray' if ray_cpus else 'stub'}): driver {results[-1]['fresh_driver_s']:.2f} s, "
                  f"{results[-1]['fresh_driver_cpu_s']:.2f} CPU s, "
                  f"peak {results[-1]['fresh_peak_mb']:.0f} MB", file=sys.stderr)
        decode = decode_seconds(workdir / "decode", args.decode_videos) if args.decode_videos else []
    print_table(results)
    report: dict = {"results": results}
    if decode:
        per_video = statistics.median(decode)
        # CPU seconds: what the driver spends, whatever else the machine runs (on a cluster it has its own core)
        stub = {r["rows"]: r["fresh_driver_cpu_s"] / r["rows"] for r in results if not r["ray"]}
        per_row = stub[max(stub)] if stub else 0.0
        ray = [r for r in results if r["ray"] and r["rows"] in stub]  # Ray's cost per video beyond the stub runner's
        per_video_ray = max((r["fresh_driver_cpu_s"] / r["rows"] - stub[r["rows"]] for r in ray), default=0.0)
        costs = estimate(per_video, per_row, per_video_ray, args.estimate_rows, args.cores_per_node, args.efficiency,
                         [1, 4, 16, 64])
        print(f"\ndecode_clips on a 10 s 640x360 H.264 MP4: {per_video:.2f} CPU s per video (median of {len(decode)});"
              f" {args.estimate_rows:,} videos at {args.efficiency:.0%} efficiency, {args.cores_per_node} cores per "
              f"node, no faster than the driver's Ray cost of {1e3 * per_video_ray:.2f} CPU ms per video, plus its "
              f"{1e6 * per_row:.0f} CPU µs per row of bookkeeping:")
        print("| nodes | cores | hours |\n|---|---|---|")
        for c in costs:
            print(f"| {c['nodes']} | {c['cores']} | {c['hours']:.2f} |")
        report.update(decode_s=decode, decode_s_median=per_video, ray_s_per_video=per_video_ray, estimate=costs)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
