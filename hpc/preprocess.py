"""Ray preprocessing: UCF-101-layout videos -> audio/frame clips -> HDF5 shards + index + manifest.

    python -m hpc.preprocess --videos DIR --splits DIR --classes A,B,C --out OUT [--split 1] [--address ADDR]
        [--num-cpus N] [--window-s W] [--clips-per-video K] [--crop 200x190] [--size 64] [--shard-clips N]
        [--force] [--strict]

One Ray task per video decodes it with one ffmpeg call (his.media.decode_clips). Videos are assigned to
shards up front, in split-list order, so shard k always holds the same videos: a shard that exists (shards
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
import re
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from his.config import ConfigError, OneLineParser, cli_main, save_config
from his.constants import SAMPLE_RATE
from his.data.images import parse_crop
from his.data.manifest import MANIFEST, entry_problem, manifest_entry, read_manifest
from his.data.shards import build_index, clip_columns, now_utc, read_attrs, write_clip_shard, write_manifest
from his.data.spec import check_file
from his.io import InputError, exclusive_dir, write_json
from his.media import MediaError, decode_clips
from hpc.ray_cluster import node_name

PROG = "hpc.preprocess"

VIDEO_NAME = re.compile(r"v_(?P<cls>[^_]+)_g(?P<group>\d+)_c(?P<clip>\d+)")


@dataclass
class PreprocessConfig:
    """One preprocessing run; the command line's options by the same names (hpc.launch: `preprocess.KEY`)."""

    videos: str = ""  # folder with Class/v_Class_gGG_cCC.avi
    splits: str = ""  # folder with trainlist0N.txt and testlist0N.txt
    classes: str = ""  # comma-separated class names, in label order
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
class Video:
    relpath: str  # as in the split list: Class/v_Class_gGG_cCC.avi
    path: str
    label: int
    split: str
    video_id: str
    group: int


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


def read_split_lists(splits_dir: str | os.PathLike, split: int, classes: Sequence[str], videos_dir: str | os.PathLike) -> list[Video]:
    """The videos of `classes` named in trainlist0{split}.txt and testlist0{split}.txt, in list order."""
    splits_dir, videos_dir = Path(splits_dir), Path(videos_dir)
    label_of = {c: i for i, c in enumerate(classes)}
    videos: list[Video] = []
    seen: set[str] = set()
    for split_name in ("train", "test"):
        list_file = splits_dir / f"{split_name}list0{split}.txt"
        if not list_file.is_file():
            raise InputError(f"{list_file}: split list not found")
        try:
            lines = list_file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise InputError(f"{list_file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        for line in lines:
            if not line.strip():
                continue
            # "Class/v_Class_g08_c01.avi 12" (train) or "Class/v_Class_g08_c01.avi" (test); names may hold spaces
            relpath = re.sub(r"\s+\d+\s*$", "", line.strip()) if split_name == "train" else line.strip()
            cls = relpath.split("/")[0]
            if cls not in label_of or relpath in seen:
                continue
            seen.add(relpath)
            stem = Path(relpath).stem
            m = VIDEO_NAME.search(stem)
            videos.append(
                Video(relpath, str(videos_dir / relpath), label_of[cls], split_name, stem, int(m["group"]) if m else -1)
            )
    return videos


def process_video(video: Video, settings: Settings) -> VideoResult:
    """Decode one video into its clip rows; any failure becomes a skip with a one-line reason."""
    start = time.perf_counter()
    try:
        clips = decode_clips(video.path, settings.window_s, settings.clips_per_video, settings.crop, settings.size, settings.timeout_s)
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
        "split_list": args.split,
        "source_root": str(Path(args.videos).resolve()),
    }


def shard_is_complete(path: Path, attrs: dict, videos: list[Video], entry: dict | None) -> tuple[bool, list, str]:
    """Whether the shard at `path` holds exactly `videos` made with `attrs` and is byte for byte what its
    manifest `entry` says (size and sha256); also its skipped list, and why not when it is not."""
    if not path.is_file():
        return False, [], "not written yet"
    try:
        have = read_attrs(path)
    except (OSError, KeyError, ValueError, TypeError) as e:
        return False, [], f"unreadable ({type(e).__name__})"
    same = all(np.array_equal(np.asarray(have.get(k)), np.asarray(v)) for k, v in attrs.items())
    if not (same and have.get("videos") == [v.path for v in videos]):
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


def run_tasks(videos: list[Video], settings: Settings, max_in_flight: int,
              check: Callable[[], None] = lambda: None) -> Iterator[VideoResult]:
    """Yield results as Ray tasks finish, with never more than `max_in_flight` videos submitted at once;
    `check()` is called at least every second (it raises to stop)."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=2, scheduling_strategy="SPREAD")(process_video)  # over every node
    settings_ref = ray.put(settings)
    pending = iter(videos)
    in_flight = [task.remote(v, settings_ref) for v in itertools.islice(pending, max_in_flight)]
    while in_flight:
        check()
        done, in_flight = ray.wait(in_flight, num_returns=1, timeout=1.0)
        if not done:
            continue
        next_video = next(pending, None)
        if next_video is not None:
            in_flight.append(task.remote(next_video, settings_ref))
        yield ray.get(done[0])


@dataclass
class Summary:
    videos_kept: int = 0
    videos_skipped: int = 0
    videos_reused: int = 0
    clips: int = 0
    shards_written: int = 0
    shards_kept: int = 0
    clips_per_node: dict[str, int] = field(default_factory=dict)  # decoded by this run, per Slurm node (or host)
    seconds: dict[str, float] = field(default_factory=dict)


def read_inputs(args: PreprocessConfig) -> tuple[list[str], Settings, list[Video]]:
    """The classes, settings and videos of a run, checked before anything is written or decoded."""
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if not classes:
        raise InputError(f"--classes {args.classes!r} names no class")
    if not Path(args.videos).is_dir():
        raise InputError(f"{args.videos}: no such directory (--videos)")
    try:
        crop = parse_crop(args.crop)
    except argparse.ArgumentTypeError as e:
        raise ConfigError(str(e)) from None
    settings = Settings(args.window_s, args.clips_per_video, crop, args.size, args.timeout_s)
    videos = read_split_lists(args.splits, args.split, classes, args.videos)
    absent = [c for i, c in enumerate(classes) if not any(v.label == i for v in videos)]
    if absent:  # a class list naming a class with no clips would label the set wrongly
        raise InputError(f"no videos of {', '.join(absent)} in the split lists under {args.splits}")
    twice = sorted(i for i, n in Counter(v.video_id for v in videos).items() if n > 1)
    if twice:
        raise InputError(f"video id {twice[0]} names more than one video in the split lists under {args.splits} "
                         f"({len(twice)} such id(s)); ids must be unique across classes")
    return classes, settings, videos


def preprocess(args: PreprocessConfig, classes: list[str], settings: Settings,
               videos: list[Video]) -> tuple[Summary, list[dict]]:
    """Decode and write what is not yet in OUT (whose lock the caller holds); build the index and manifest."""
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
    extra = {"classes": classes, "settings": asdict(settings), "split_list": args.split,
             "source_root": attrs["source_root"]}
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
        with ray_session(args) as (cpus, stop):
            summary.seconds["start ray"] = time.perf_counter() - t
            shard_of = {v.path: k for k in todo for v in plan[k]}
            waiting = {k: len(plan[k]) for k in todo}
            results: dict[int, list[VideoResult]] = {k: [] for k in todo}
            with tqdm(total=len(todo_videos), unit="video", desc="preprocess", dynamic_ncols=True,
                      file=sys.stderr) as bar:
                t_loop = time.perf_counter()
                for result in run_tasks(todo_videos, settings, cpus, stop.check):
                    summary.seconds["decode (sum over tasks)"] += result.decode_s
                    if result.columns is None:
                        tqdm.write(f"skip {result.video.path}: {result.reason}", file=sys.stderr)
                        summary.videos_skipped += 1
                        skipped.append({"path": result.video.path, "reason": result.reason,
                                        "shard": paths[shard_of[result.video.path]].name})
                    else:
                        summary.videos_kept += 1
                        summary.clips += len(result.columns["audio"])
                        summary.clips_per_node[result.node] = (summary.clips_per_node.get(result.node, 0)
                                                               + len(result.columns["audio"]))
                    k = shard_of[result.video.path]
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
                    bar.set_postfix(clips=summary.clips, clips_s=f"{rate:.1f}")
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
    order = {v.path: i for i, v in enumerate(videos)}
    results = sorted(results, key=lambda r: order[r.video.path])
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


def print_summary(summary: Summary, skipped: list[dict], out: Path) -> None:
    rows = [
        ("videos kept (decoded now)", summary.videos_kept),
        ("videos kept (from complete shards)", summary.videos_reused),
        ("videos skipped", len(skipped)),
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
        description="Decode UCF-101-layout videos into audio/frame clips in HDF5 shards, with Ray.",
        epilog="With --address the Ray workers read the videos and the driver writes OUT at the same paths: a "
        "filesystem shared by all nodes is assumed, as on HPC clusters. Re-running skips videos in complete "
        "shards made with the same settings; bad videos are skipped and listed in OUT/report.json. A cluster "
        "with Ray token authentication needs its token here too (RAY_AUTH_TOKEN or ~/.ray/auth_token).",
    )
    parser.add_argument("--videos", required=True, help="folder with Class/v_Class_gGG_cCC.avi")
    parser.add_argument("--splits", required=True, help="folder with trainlist0N.txt and testlist0N.txt")
    parser.add_argument("--classes", required=True, help="comma-separated class names, in label order")
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
    for name in ("window_s", "clips_per_video", "size", "shard_clips", "timeout_s"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, not {getattr(cfg, name)}")
    if cfg.num_cpus < 0:
        raise ConfigError(f"--num-cpus must be > 0, not {cfg.num_cpus}")
    if cfg.split not in (1, 2, 3):
        raise ConfigError(f"--split must be 1, 2 or 3, not {cfg.split}")
    if cfg.shard_clips < cfg.clips_per_video:
        raise ConfigError(f"--shard-clips ({cfg.shard_clips}) must be >= --clips-per-video ({cfg.clips_per_video})")
    for name in ("videos", "splits", "classes", "out"):
        if not getattr(cfg, name):
            raise ConfigError(f"--{name} is required")


def run(cfg: PreprocessConfig) -> dict[str, Any]:
    """Preprocess OUT (holding its lock), write report.json and the config beside it, check the files against
    datasets.h5.spec; returns the report with "status" (completed, or failed with its "problems")."""
    check_config(cfg)
    inputs = read_inputs(cfg)
    out = Path(cfg.out)
    with exclusive_dir(out, PROG, temp_dirs=("", "shards")):
        summary, skipped = preprocess(cfg, *inputs)
        save_config(cfg, out / "config.toml")  # what made the set (hpc.launch skips the stage when it is the same)
        report = {"created": now_utc(), "summary": asdict(summary), "skipped": skipped}
        write_json(out / "report.json", report)
    problems = [f"spec: {p}" for f in [out / "index.h5", *sorted((out / "shards").glob("clips-*.h5"))]
                for p in check_file(f)]
    if summary.clips == 0:
        problems.append("preprocess: no usable clips")
    if cfg.strict and skipped:
        problems.append(f"preprocess: {len(skipped)} video(s) skipped (--strict)")
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
