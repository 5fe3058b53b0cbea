"""Ray preprocessing: videos -> audio/frame clips -> HDF5 shards + index + manifest.

    python -m hpc.preprocess --videos DIR --splits DIR --classes A,B,C --out OUT [--split 1]      (UCF-101)
    python -m hpc.preprocess --layout csv --csv FILE --videos DIR --out OUT [--classes ...] [--csv-columns ...]
        [--split-words ...] [--segment-s 10]                                                      (VGGSound)
    python -m hpc.preprocess --layout folders --videos DIR --out OUT [--seed 0] [--test-fraction 0.2]
    ... [--address ADDR] [--num-cpus N] [--window-s W] [--clips-per-video K] [--crop 200x190] [--size 64]
        [--shard-clips N] [--force] [--strict]

The layouts and what each row of them may do wrong: his.data.layouts. Rows that cannot be used are rejected
before anything is decoded, each with one line (FILE:LINE or path, and why) on stderr and in report.json.

A Ray task decodes a few videos (up to MAX_VIDEOS_PER_TASK), each with his.media.decode_clips. Videos are
assigned to shards up front, in listing order, so shard k always holds the same videos: a shard that exists (shards
are renamed into place only when complete), was made with the same settings and still has the sha256 the
manifest gave it is kept on a re-run, and the index rows come out in the same order however the tasks
finish. The manifest is rewritten after each shard, listing only the shards this run wrote or found
intact, so a killed run's shards are kept and a damaged shard is redone. One run per OUT at a time (a lock,
his.io.exclusive_dir); SIGTERM or SIGINT stops the run and the Ray it started. This module is the Ray
driver: the clip shards' columns and writer are his.data.shards (clip_columns, write_clip_shard), the
format datasets.h5.spec.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

import h5py
import numpy as np
from tqdm import tqdm

from his.config import ConfigError, OneLineParser, cli_main, save_config
from his.constants import SAMPLE_RATE
from his.data.images import parse_crop
from his.data.layouts import (HEADER, LAYOUTS, SPLIT_CSV, VGGSOUND_COLUMNS, Listing, Video, list_rows, parse_classes,
                              read_csv_rows, read_folder_rows, read_ucf101, write_split_csv)
from his.data.manifest import MANIFEST, entry_problem, manifest_entry, read_manifest
from his.data.shards import build_index, clip_columns, now_utc, read_attrs, write_clip_shard, write_manifest
from his.data.spec import check_file, missing_checksums
from his.io import InputError, exclusive_dir, write_json
from his.media import MediaError, decode_clips
from hpc.ray_cluster import node_name

PROG = "hpc.preprocess"
# A Ray task costs the driver about 1.7 ms here (benchmarks/preprocess_scale.py): 200,000 one-video tasks would be
# 6 minutes of it; a video takes about 0.3 s to decode, so a task of 8 is still a short one.
MAX_VIDEOS_PER_TASK = 8


@dataclass
class PreprocessConfig:
    """One preprocessing run; the command line's options by the same names (hpc.launch: `preprocess.KEY`)."""

    layout: str = "ucf101"  # ucf101, csv or folders (his.data.layouts)
    videos: str = ""  # ucf101: Class/v_Class_gGG_cCC.avi; csv: the videos; folders: one folder per class
    splits: str = ""  # ucf101: folder with trainlist0N.txt and testlist0N.txt
    csv: str = ""  # csv: one row per segment
    csv_columns: str = VGGSOUND_COLUMNS  # csv: its columns in order (id, start, label, split, path, -), or "header"
    split_words: str = "train=train;test=test"  # csv: the words of its split column
    segment_s: float = 10.0  # csv: seconds of a segment from its start
    seed: int = 0  # folders: the seed of the split
    test_fraction: float = 0.2  # folders: the share of each class's groups that is test
    classes: str = ""  # class names in label order, one CSV line ("a,b" or '"a, b",c'); csv, folders: all if ""
    out: str = ""  # output folder (shards/, index.h5, manifest.json, report.json)
    split: int = 1  # UCF-101 split number (1, 2 or 3)
    address: str = ""  # a running Ray cluster; "" starts a local Ray
    num_cpus: int = 0  # CPUs of the local Ray; 0 = all of this machine's
    window_s: float = 2.0  # seconds of audio per clip
    clips_per_video: int = 4  # at most this many clips per video
    crop: str = "200x190"  # centre crop WxH in a 320x240 frame (scaled for others)
    size: int = 64  # side of the stored crop (frame64)
    shard_clips: int = 1024  # at most this many clips per shard
    timeout_s: float = 120.0  # ffmpeg time limit per video
    force: bool = False  # redo every shard
    strict: bool = False  # exit 1 if any video was skipped


@dataclass(frozen=True)
class Settings:
    window_s: float = 2.0
    clips_per_video: int = 4
    crop: tuple[int, int] = (200, 190)
    size: int = 64
    timeout_s: float = 120.0


@dataclass
class VideoResult:
    video: Video
    columns: dict[str, np.ndarray] | None  # None when skipped
    reason: str = ""
    decode_s: float = 0.0
    node: str = ""  # the Slurm node (or host) whose Ray worker decoded it


def process_video(video: Video, settings: Settings) -> VideoResult:
    """Decode one video into its clip rows; any failure becomes a skip with a one-line reason."""
    start = time.perf_counter()
    try:
        clips = decode_clips(video.path, settings.window_s, settings.clips_per_video, settings.crop, settings.size,
                             settings.timeout_s, video.start_s, video.end_s)
    except MediaError as e:
        reason = str(e).removeprefix(f"{video.path}: ")
        return VideoResult(video, None, reason, time.perf_counter() - start, node_name())
    except Exception as e:  # a bug or an odd file must not end the whole run; it is reported like a bad file
        return VideoResult(video, None, f"{type(e).__name__}: {e}", time.perf_counter() - start, node_name())
    columns = clip_columns(clips, video.label, video.split, video.video_id, video.group, video.path)
    return VideoResult(video, columns, "", time.perf_counter() - start, node_name())


def shard_attrs(args: PreprocessConfig, settings: Settings, classes: Sequence[str]) -> dict:
    """File attrs shared by every shard of this run; a kept shard must match them (less code_version, created)."""
    return {
        "classes": list(classes),
        "sample_rate": SAMPLE_RATE,
        "window_s": settings.window_s,
        "samples": round(settings.window_s * SAMPLE_RATE),
        "clips_per_video": settings.clips_per_video,
        "crop": np.array(settings.crop, np.int64),
        "size": settings.size,
        "split_list": args.split if args.layout == "ucf101" else 0,
        "source_root": str(Path(args.videos).resolve()),
    }


def shard_is_complete(path: Path, attrs: dict, videos: list[Video], entry: dict | None) -> tuple[bool, list, str]:
    """Whether the shard at `path` holds exactly `videos` made with `attrs` and is byte for byte what its
    manifest `entry` says (size and sha256); also its skipped list, and why not when it is not."""
    if not path.is_file():
        return False, [], "not written yet"
    try:
        have = read_attrs(path)
        with h5py.File(path, "r") as f:
            unchecked = missing_checksums(f)
    except (OSError, KeyError, ValueError, TypeError) as e:
        return False, [], f"unreadable ({type(e).__name__})"
    if unchecked:
        return False, [], f"written without per-chunk checksums ({', '.join(unchecked)})"
    same = all(np.array_equal(np.asarray(have.get(k)), np.asarray(v)) for k, v in attrs.items())
    if not (same and have.get("videos") == [v.key for v in videos]):
        return False, [], "made with other settings or videos"
    if entry is None:
        return False, [], f"not in {MANIFEST}"
    problem = entry_problem(path, entry, True, path.parent.parent / MANIFEST)
    if problem is not None:
        return False, [], problem.removeprefix(f"{path}: ")
    return True, have.get("skipped", []), ""


def previous_entries(manifest: Path) -> dict[str, dict]:
    """The shard entries of an earlier run's manifest, to check kept shards against ({} when there is none
    or it cannot be read: then every shard is redone)."""
    if not manifest.is_file():
        return {}
    try:
        return read_manifest(manifest)
    except InputError as e:
        logging.getLogger(PROG).warning(f"{e}; every shard is redone")
        return {}


def process_videos(videos: list[Video], settings: Settings,
                   work: Callable[[Video, Settings], VideoResult] = process_video) -> list[VideoResult]:
    """One Ray task's videos, one after another."""
    return [work(video, settings) for video in videos]


def run_tasks(videos: list[Video], settings: Settings, max_in_flight: int, check: Callable[[], None] = lambda: None,
              work: Callable[[Video, Settings], VideoResult] = process_video) -> Iterator[VideoResult]:
    """Yield results as Ray tasks of `work` finish, with never more than `max_in_flight` tasks submitted at
    once; `check()` is called at least every second (it raises to stop). A task takes up to
    MAX_VIDEOS_PER_TASK videos, fewer when there are not 4 tasks per slot in flight to share out."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=2, scheduling_strategy="SPREAD")(process_videos)  # over every node
    settings_ref = ray.put(settings)
    per_task = max(1, min(MAX_VIDEOS_PER_TASK, len(videos) // (4 * max_in_flight)))
    pending = (videos[i : i + per_task] for i in range(0, len(videos), per_task))
    in_flight = [task.remote(batch, settings_ref, work) for batch in itertools.islice(pending, max_in_flight)]
    while in_flight:
        check()
        done, in_flight = ray.wait(in_flight, num_returns=1, timeout=1.0)
        if not done:
            continue
        next_batch = next(pending, None)
        if next_batch is not None:
            in_flight.append(task.remote(next_batch, settings_ref, work))
        yield from ray.get(done[0])


@dataclass
class Summary:
    videos_kept: int = 0
    videos_skipped: int = 0
    videos_reused: int = 0
    rows_rejected: int = 0  # left out by the listing (his.data.layouts), before decoding
    clips: int = 0
    shards_written: int = 0
    shards_kept: int = 0
    clips_per_node: dict[str, int] = field(default_factory=dict)  # decoded by this run, per Slurm node (or host)
    seconds: dict[str, float] = field(default_factory=dict)


def read_listing(args: PreprocessConfig) -> Listing:
    """The videos of the run's layout; the folders layout reads back the split it wrote into OUT before."""
    classes = parse_classes(args.classes)
    if args.layout == "ucf101":
        if not classes:
            raise InputError(f"--classes {args.classes!r} names no class")
        return read_ucf101(args.videos, args.splits, args.split, classes)
    if args.layout == "csv":
        rows, rejected = read_csv_rows(args.csv, args.videos, args.csv_columns, args.split_words, args.segment_s)
        return list_rows(rows, rejected, classes, args.csv)
    split_csv = Path(args.out) / SPLIT_CSV
    if split_csv.is_file():
        logging.getLogger(PROG).info(f"the split of {split_csv} (delete it to draw a new one)")
        rows, rejected = read_csv_rows(split_csv, args.videos, HEADER)
        return list_rows(rows, rejected, classes, str(split_csv))
    return list_rows(read_folder_rows(args.videos, args.seed, args.test_fraction), [], classes, args.videos)


def read_inputs(args: PreprocessConfig) -> tuple[Listing, Settings]:
    """The videos and settings of a run, checked before anything is written or decoded."""
    if not Path(args.videos).is_dir():
        raise InputError(f"{args.videos}: no such directory (--videos)")
    try:
        crop = parse_crop(args.crop)
    except argparse.ArgumentTypeError as e:
        raise ConfigError(str(e)) from None
    settings = Settings(args.window_s, args.clips_per_video, crop, args.size, args.timeout_s)
    return read_listing(args), settings


def preprocess(args: PreprocessConfig, classes: list[str], settings: Settings, videos: list[Video],
               session: Session | None = None, tasks: TaskRunner | None = None) -> tuple[Summary, list[dict]]:
    """Decode and write what is not yet in OUT (whose lock the caller holds); build the index and manifest.
    `session` and `tasks` run the decoding (default: ray_session and run_tasks; benchmarks/preprocess_scale.py
    swaps in a stub)."""
    session, tasks = session or ray_session, tasks or run_tasks
    t_wall = time.perf_counter()
    out = Path(args.out)
    shard_dir = out / "shards"
    shard_dir.mkdir(exist_ok=True)
    per_shard = args.shard_clips // settings.clips_per_video
    plan = [videos[i : i + per_shard] for i in range(0, len(videos), per_shard)]
    paths = [shard_dir / f"clips-{k:05d}.h5" for k in range(len(plan))]
    for stale in set(shard_dir.glob("clips-*.h5")) - set(paths):
        stale.unlink()
    attrs = shard_attrs(args, settings, classes)
    manifest_path = out / MANIFEST
    extra = {"classes": classes, "settings": asdict(settings), "layout": args.layout,
             "split_list": attrs["split_list"], "source_root": attrs["source_root"]}
    before = previous_entries(manifest_path)
    entries: dict[int, dict[str, Any]] = {}  # of the shards this run wrote or found intact: all the manifest lists

    def write_entries() -> None:
        write_manifest(manifest_path, "clips", [entries[k] for k in sorted(entries)], extra)

    summary = Summary()
    skipped: list[dict] = []
    todo: list[int] = []
    for k, (path, shard_videos) in enumerate(zip(paths, plan)):
        name = os.path.relpath(path, out)
        complete, shard_skipped, why = (False, [], "--force") if args.force else \
            shard_is_complete(path, attrs, shard_videos, before.get(name))
        if complete:
            entries[k] = before[name]
            summary.shards_kept += 1
            summary.videos_reused += len(shard_videos) - len(shard_skipped)
            skipped += [{"path": p, "reason": r, "shard": path.name} for p, r in shard_skipped]
        else:
            if path.exists():
                logging.getLogger(PROG).info(f"{path}: redone ({why})")
            todo.append(k)

    summary.seconds["start ray"] = 0.0
    summary.seconds["decode (sum over tasks)"] = 0.0
    summary.seconds["write shards"] = 0.0
    todo_videos = [v for k in todo for v in plan[k]]
    if todo_videos:
        t = time.perf_counter()
        with session(args) as (cpus, stop):
            summary.seconds["start ray"] = time.perf_counter() - t
            shard_of = {v.key: k for k in todo for v in plan[k]}
            waiting = {k: len(plan[k]) for k in todo}
            results: dict[int, list[VideoResult]] = {k: [] for k in todo}
            with tqdm(total=len(todo_videos), unit="video", desc="preprocess", dynamic_ncols=True,
                      file=sys.stderr) as bar:
                t_loop = time.perf_counter()
                for result in tasks(todo_videos, settings, 2 * cpus, stop.check):  # 2x: no CPU waits on the driver
                    summary.seconds["decode (sum over tasks)"] += result.decode_s
                    if result.columns is None:
                        tqdm.write(f"skip {result.video.path}: {result.reason}", file=sys.stderr)
                        summary.videos_skipped += 1
                        skipped.append({"path": result.video.path, "reason": result.reason,
                                        "shard": paths[shard_of[result.video.key]].name})
                    else:
                        summary.videos_kept += 1
                        summary.clips += len(result.columns["audio"])
                        summary.clips_per_node[result.node] = (summary.clips_per_node.get(result.node, 0)
                                                               + len(result.columns["audio"]))
                    k = shard_of[result.video.key]
                    results[k].append(result)
                    waiting[k] -= 1
                    if waiting[k] == 0:
                        t = time.perf_counter()
                        rows = write_plan_shard(paths[k], plan[k], results.pop(k), attrs)
                        entries[k] = manifest_entry(paths[k], out, rows)  # hashed right after writing
                        write_entries()
                        summary.seconds["write shards"] += time.perf_counter() - t
                        summary.shards_written += 1
                    bar.update(1)
                    rate = summary.clips / (time.perf_counter() - t_loop)
                    bar.set_postfix(clips=summary.clips, clips_s=f"{rate:.1f}", refresh=False)  # drawn as tqdm updates
        summary.seconds["decode + write (wall)"] = time.perf_counter() - t_loop
    else:
        summary.seconds["decode + write (wall)"] = 0.0

    t = time.perf_counter()
    total = build_index(out / "index.h5", paths, "clips")
    write_entries()
    summary.seconds["index + manifest"] = time.perf_counter() - t
    summary.clips = total
    summary.seconds["total (wall)"] = time.perf_counter() - t_wall
    return summary, skipped


def write_plan_shard(path: Path, videos: list[Video], results: list[VideoResult], attrs: dict) -> int:
    """Shard `path` of the plan: its videos' results in planned order (a shard whose every video was skipped
    still records that they were tried). Returns its rows."""
    order = {v.key: i for i, v in enumerate(videos)}
    results = sorted(results, key=lambda r: order[r.video.key])
    kept = [r.columns for r in results if r.columns is not None]
    skipped = [[r.video.path, r.reason] for r in results if r.columns is None]
    write_clip_shard(path, kept, attrs, list(order), skipped)
    return sum(len(c["audio"]) for c in kept)


class Stopped(Exception):
    """SIGTERM or SIGINT arrived (the message is its name)."""


class StopSignals:
    """SIGTERM and SIGINT, noted while in effect (main thread only) for the run to act on at its next
    `check()`: an exception raised in the handler itself would surface inside Ray's wait, not as itself."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._note) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self.name = signal.Signals(signum).name

    def check(self) -> None:
        if self.name is not None:
            raise Stopped(self.name)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def ray_session(args: PreprocessConfig) -> Iterator[tuple[int, StopSignals]]:
    """Ray for the run: the cluster at --address, or a local Ray with --num-cpus, which is shut down on the way
    out, SIGTERM and SIGINT included (Stopped is raised once it is down). A Ray already up is used and left
    up. Yields its CPU count and the stop signals to check."""
    import ray

    started = not ray.is_initialized()
    if started:
        if args.address:
            ray.init(address=args.address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(num_cpus=args.num_cpus or os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False)
    try:
        with StopSignals() as stop:  # after ray.init, which sets a SIGTERM handler of its own
            yield max(1, int(ray.cluster_resources().get("CPU", 1))), stop
    finally:
        if started:
            ray.shutdown()
    stop.check()


# What runs the decoding: a session giving the CPU count and the stop signals, and a runner of the tasks (run_tasks'
# arguments: videos, settings, tasks in flight, the stop check), so that a benchmark can stub both.
Session = Callable[[PreprocessConfig], ContextManager[tuple[int, StopSignals]]]
TaskRunner = Callable[[list[Video], Settings, int, Callable[[], None]], Iterator[VideoResult]]


def print_summary(summary: Summary, skipped: list[dict], out: Path) -> None:
    rows = [
        ("videos kept (decoded now)", summary.videos_kept),
        ("videos kept (from complete shards)", summary.videos_reused),
        ("videos skipped", len(skipped)),
        ("rows rejected by the listing", summary.rows_rejected),
        ("clips in index", summary.clips),
        ("shards written / kept", f"{summary.shards_written} / {summary.shards_kept}"),
        *((f"seconds: {stage}", f"{s:.2f}") for stage, s in summary.seconds.items()),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\npreprocess summary ({out})")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m hpc.preprocess",
        description="Decode videos (UCF-101, a segment CSV such as VGGSound's, or a folder per class) into "
        "audio/frame clips in HDF5 shards, with Ray.",
        epilog="With --address the Ray workers read the videos and the driver writes OUT at the same paths: a "
        "filesystem shared by all nodes is assumed, as on HPC clusters. Re-running skips videos in complete "
        "shards made with the same settings; bad videos are skipped and listed in OUT/report.json. A cluster "
        "with Ray token authentication needs its token here too (RAY_AUTH_TOKEN or ~/.ray/auth_token).",
    )
    parser.add_argument("--layout", choices=LAYOUTS, default="ucf101",
                        help="ucf101: --videos and --splits; csv: --csv and --videos; folders: --videos with a "
                             "folder per class (his.data.layouts)")
    parser.add_argument("--videos", required=True,
                        help="ucf101: folder with Class/v_Class_gGG_cCC.avi; csv: the videos; folders: a folder "
                             "per class")
    parser.add_argument("--splits", default="", help="ucf101: folder with trainlist0N.txt and testlist0N.txt")
    parser.add_argument("--csv", default="", help="csv: one row per segment (VGGSound: id, start, label, split)")
    parser.add_argument("--csv-columns", default=VGGSOUND_COLUMNS,
                        help="csv: its columns in order, from id, start, label, split, path and - (ignored); or "
                             "'header' when its first row names them (default: VGGSound's %(default)s)")
    parser.add_argument("--split-words", default="train=train;test=test",
                        help="csv: the words of the split column, e.g. 'train=train,val;test=test'")
    parser.add_argument("--segment-s", type=float, default=10.0,
                        help="csv: seconds of a segment from its start (VGGSound: 10)")
    parser.add_argument("--seed", type=int, default=0, help="folders: the seed of the split")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="folders: the share of each class's video groups that is test")
    parser.add_argument("--classes", default="",
                        help="class names in label order, as one CSV line ('A,B' or '\"a, b\",c'); required "
                             "for ucf101, all classes (alphabetical) by default otherwise")
    parser.add_argument("--out", required=True, help="output folder (shards/, index.h5, manifest.json, report.json)")
    parser.add_argument("--split", type=int, default=1, choices=(1, 2, 3), help="UCF-101 split number")
    parser.add_argument("--address", default="", help="address of a running Ray cluster (default: start a local Ray)")
    parser.add_argument("--num-cpus", type=int, default=0, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--window-s", type=float, default=2.0, help="seconds of audio per clip")
    parser.add_argument("--clips-per-video", type=int, default=4, help="at most this many clips per video")
    parser.add_argument("--crop", default="200x190", help="centre crop WxH in a 320x240 frame (scaled for others)")
    parser.add_argument("--size", type=int, default=64, help="side of the stored crop (frame64)")
    parser.add_argument("--shard-clips", type=int, default=1024, help="at most this many clips per shard")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="ffmpeg time limit per video")
    parser.add_argument("--force", action="store_true", help="redo every shard")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any video was skipped")
    parser.add_argument("--debug", action="store_true", help="a traceback instead of one line for a bad input")
    return parser


def main(argv: list[str] | None = None) -> int:
    """A bad input or an OUT in use is one line and exit 2; SIGTERM/SIGINT one line and 128 + the signal."""
    try:
        return cli_main(PROG, _main, argv)
    except Stopped as e:
        print(f"{PROG}: stopped by {e}; the shards written so far are kept, a rerun goes on", file=sys.stderr)
        return 128 + signal.Signals[str(e)].value


def check_config(cfg: PreprocessConfig) -> None:
    """Every number in range before any work; each bad value named."""
    for name in ("window_s", "clips_per_video", "size", "shard_clips", "timeout_s", "segment_s"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, not {getattr(cfg, name)}")
    if cfg.num_cpus < 0:
        raise ConfigError(f"--num-cpus must be > 0, not {cfg.num_cpus}")
    if cfg.split not in (1, 2, 3):
        raise ConfigError(f"--split must be 1, 2 or 3, not {cfg.split}")
    if cfg.shard_clips < cfg.clips_per_video:
        raise ConfigError(f"--shard-clips ({cfg.shard_clips}) must be >= --clips-per-video ({cfg.clips_per_video})")
    if cfg.layout not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, not {cfg.layout!r}")
    if not 0 < cfg.test_fraction < 1:
        raise ConfigError(f"--test-fraction must be between 0 and 1, not {cfg.test_fraction}")
    needed = {"ucf101": ("splits", "classes"), "csv": ("csv",), "folders": ()}[cfg.layout]
    for name in ("videos", *needed, "out"):
        if not getattr(cfg, name):
            raise ConfigError(f"--{name} is required" + (f" with --layout {cfg.layout}" if name in needed else ""))


def run(cfg: PreprocessConfig, session: Session | None = None, tasks: TaskRunner | None = None) -> dict[str, Any]:
    """Preprocess OUT (holding its lock), write report.json and the config beside it, check the files against
    datasets.h5.spec; returns the report with "status" (completed, or failed with its "problems"). `session`
    and `tasks`: as for preprocess()."""
    check_config(cfg)
    listing, settings = read_inputs(cfg)
    for where, why in listing.rejected:
        print(f"skip {where}: {why}", file=sys.stderr)
    out = Path(cfg.out)
    with exclusive_dir(out, PROG, temp_dirs=("", "shards")):
        if cfg.layout == "folders" and not (out / SPLIT_CSV).is_file():  # the split, for reruns to reuse
            write_split_csv(out / SPLIT_CSV, listing.videos, listing.classes)
        summary, skipped = preprocess(cfg, listing.classes, settings, listing.videos, session, tasks)
        summary.rows_rejected = len(listing.rejected)
        save_config(cfg, out / "config.toml")  # what made the set (hpc.launch skips the stage when it is the same)
        report = {"created": now_utc(), "summary": asdict(summary), "skipped": skipped,
                  "rejected": [{"row": where, "reason": why} for where, why in listing.rejected]}
        write_json(out / "report.json", report)
    problems = [f"spec: {p}" for f in [out / "index.h5", *sorted((out / "shards").glob("clips-*.h5"))]
                for p in check_file(f)]
    if summary.clips == 0:
        problems.append("preprocess: no usable clips")
    if cfg.strict and (skipped or listing.rejected):
        problems.append(f"preprocess: {len(skipped)} video(s) skipped, {len(listing.rejected)} row(s) rejected "
                        "(--strict)")
    return {"status": "failed" if problems else "completed", "out": str(out), **report, "problems": problems}


def _main(argv: list[str]) -> int:
    args = vars(build_parser().parse_args(argv))
    result = run(PreprocessConfig(**{k: v for k, v in args.items() if k != "debug"}))
    summary = Summary(**result["summary"])
    print_summary(summary, result["skipped"], Path(result["out"]))
    for p in result["problems"]:
        print(p, file=sys.stderr)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
