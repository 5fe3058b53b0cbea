"""The preprocessing driver at scale, without the videos: hpc.preprocess.run on a generated VGGSound-style CSV of
N rows (310 classes, about 0.5 % of the rows naming a missing video), with every decode stubbed by a task of
fixed cost that returns no clips, so what is measured is the driver: the listing (CSV, one directory listing, the
bad rows), the split check, the shard plan, the task list, the shards' metadata, manifest, index, report and
spec check, and then the resume of a half-finished output (the last half of the shards deleted).

    python -m benchmarks.preprocess_scale [--rows 2000,20000,200000] [--repeats 3] [--task-ms 0]
                                          [--ray-rows 2000,20000] [--json OUT.json] [--workdir DIR]

Each measurement runs in a fresh process (its peak RSS is the driver's peak memory). "driver s" is the wall
time of run() less the stubbed tasks' fixed cost. The input (CSV and N empty video files) is made once per N.
With --ray-rows, the same is done with the tasks on a real local Ray (2 CPUs), the decode stubbed in the task:
Ray's own cost per task, which the stub runner leaves out. Medians of --repeats; a table, and JSON.
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
        t = time.perf_counter()
        result = run(cfg, session=None if ray_cpus else no_ray, tasks=counted)
        wall = time.perf_counter() - t
    summary = result["summary"]
    tasks = submitted[0] if submitted else 0
    return {"phase": phase, "wall_s": wall, "driver_s": wall - (0 if ray_cpus else tasks * task_s), "tasks": tasks,
            "shards_kept": summary["shards_kept"], "shards_written": summary["shards_written"],
            "rows_rejected": summary["rows_rejected"], "videos": tasks + summary["videos_reused"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "start_rss_mb": rss_before / 1024, "seconds": summary["seconds"]}


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
            "fresh_peak_mb": med("fresh", "peak_rss_mb"), "resume_driver_s": med("resume", "driver_s"),
            "resume_peak_mb": med("resume", "peak_rss_mb"), "start_rss_mb": med("fresh", "start_rss_mb"),
            "resume_tasks": resume["tasks"], "resume_shards_kept": resume["shards_kept"],
            "fresh_seconds": fresh["seconds"], "runs": runs}


def print_table(results: list[dict]) -> None:
    head = ("rows", "runner", "videos", "rejected", "shards", "driver s", "peak MB", "resume s", "resume MB",
            "resume: kept / tasks", "µs/row")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        print(f"| {r['rows']:,} | {'Ray (2 CPUs)' if r['ray'] else 'stub'} | {r['videos']:,} | {r['rows_rejected']} "
              f"| {r['shards']} | {r['fresh_driver_s']:.2f} | {r['fresh_peak_mb']:.0f} | {r['resume_driver_s']:.2f} "
              f"| {r['resume_peak_mb']:.0f} | {r['resume_shards_kept']} / {r['resume_tasks']:,} "
              f"| {1e6 * r['fresh_driver_s'] / r['rows']:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="2000,20000,200000")
    parser.add_argument("--ray-rows", default="", help="also run these sizes with the tasks on a real local Ray")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--task-ms", type=float, default=0.0, help="fixed cost of a stubbed decode")
    parser.add_argument("--workdir", default="", help="where inputs and outputs go (default: a temporary folder)")
    parser.add_argument("--json", default="")
    parser.add_argument("--one", choices=("fresh", "resume"), help=argparse.SUPPRESS)
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--ray-cpus", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(Path(args.csv), Path(args.out), args.one, args.task_ms / 1000, args.ray_cpus)))
        return 0
    with contextlib.ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        sizes = [(int(n), 0) for n in args.rows.split(",") if n] + [(int(n), 2) for n in args.ray_rows.split(",") if n]
        results = []
        for rows, ray_cpus in sizes:
            results.append(bench(workdir, rows, args.repeats, args.task_ms / 1000, ray_cpus))
            print(f"{rows} rows ({'Ray' if ray_cpus else 'stub'}): driver {results[-1]['fresh_driver_s']:.2f} s, "
                  f"peak {results[-1]['fresh_peak_mb']:.0f} MB", file=sys.stderr)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
