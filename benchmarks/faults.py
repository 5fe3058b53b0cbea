"""Kill -9 at random points, then rerun: does the output equal a clean run's? For hpc.preprocess (the driver
and its local Ray, killed as one process group) and his.train (resumed from its newest checkpoint). Then a
full disk and changed bytes, and what the per-chunk checksums cost a reader.

    python -m benchmarks.faults [--kills 10] [--disks 4] [--changes 20] [--clips DIR] [--seed 0]
                                [--json benchmarks/faults.json]

Each stage: one clean run, timed (and when its first output appeared: the first shard, or the training's
config.toml); then `--kills` times: a run into a fresh directory, killed once its own first output exists
after a uniformly random delay of up to the clean run's time from that output to its end (one that finished
first is let be), and a rerun there to the end, compared with the clean run: every dataset of the index and of each shard, and the manifest's shard list (preprocess); the weights
digest and step of summary.json (train). tests/test_faults.py runs the same trials, fewer kills.

A full disk (`--disks`, root only: a tmpfs per trial, sized to fill at a different point of the clean run):
hpc.preprocess must end with exit 2 and one line naming the file and "No space left on device", leave no
temporary file, keep every shard its manifest lists intact, and on the same disk made larger complete a rerun
equal to the clean run; a trial that does not loses what it had written. Changed bytes (`--changes`): 5 KB
overwritten inside a random chunk (random shard, row and row dataset) of a copy of the clean set, the file's
size kept; the whole set is then read as training reads it: caught when the read fails in one line naming that
shard and dataset, lost when it returns the changed rows. The checksums' cost: every row dataset of the set
(`--clips`, e.g. the demo's; default the clean run's) read whole, written with and without fletcher32.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
# one torch thread: a clean run and a resumed one must do their float sums in the same order
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class Trial:
    stage: str
    clean_s: float  # the clean run's wall time
    kills: list[float]  # seconds after its start at which each run was killed (0: it had ended first)
    mid_run: list[bool]  # whether each kill landed after the run's first output and before its last
    equal: list[bool]  # whether each killed run's rerun gave what the clean run gave

    @property
    def lost(self) -> int:
        return self.equal.count(False)


@dataclass
class Outcome:
    case: str
    runs: int
    caught: int  # runs that ended as they must (one line, nothing lost, a rerun that completes)
    lost: int  # runs that lost something already written, or read changed bytes without a word
    notes: list[str]


def tree_digest(root: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path: equal digests, nothing written."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def h5_datasets(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {n: f[n].asstr()[()] if h5py.check_string_dtype(f[n].dtype) else f[n][()] for n in f}


def clip_sets_equal(a: Path, b: Path) -> bool:
    """Index datasets, each shard's datasets and the manifest's shard names and rows all equal."""
    def shard_list(out: Path) -> list[tuple[str, int]]:
        return [(s["name"], s["rows"]) for s in json.loads((out / "manifest.json").read_text())["shards"]]

    if shard_list(a) != shard_list(b):
        return False
    pairs = [(a / "index.h5", b / "index.h5")] + [(a / name, b / name) for name, _ in shard_list(a)]
    for x, y in pairs:
        dx, dy = h5_datasets(x), h5_datasets(y)
        if dx.keys() != dy.keys() or not all(np.array_equal(dx[k], dy[k]) for k in dx):
            return False
    return True


def trained_equal(a: Path, b: Path) -> bool:
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    return sa["status"] == sb["status"] == "completed" and sa["step"] == sb["step"] and \
        sa["weights_sha256"] == sb["weights_sha256"]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and all it started (a local Ray), in its session
    except ProcessLookupError:
        pass
    proc.wait()


def timed_run(cmd: Sequence[str], marker: Path, timeout: float = 600) -> tuple[float, float]:
    """Run `cmd` to the end: (wall seconds, seconds until `marker` appeared). Raises if it fails."""
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=err)
        seen = None
        try:
            while proc.poll() is None and time.monotonic() - start < timeout:
                if seen is None and marker.exists():
                    seen = time.monotonic() - start
                time.sleep(0.02)
        finally:
            _kill_group(proc)
        total = time.monotonic() - start
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}): {err.read()[-2000:]}")
    return total, total if seen is None else seen


def kill_then_rerun(cmd: Sequence[str], span: float, rng: random.Random, first: Path, last: Path,
                    timeout: float = 600) -> tuple[float, bool]:
    """Run `cmd`; once its `first` output exists, kill -9 it (its whole session) after a random delay of up to
    `span` seconds; then run it again to the end, which must succeed. Returns the kill time (seconds after the
    start; 0 where the run ended before it) and whether the kill landed mid-run: before `last` existed."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not first.exists() and time.monotonic() - start < timeout:
            time.sleep(0.01)
        proc.wait(timeout=rng.uniform(0, span))
        at = 0.0
    except subprocess.TimeoutExpired:
        at = time.monotonic() - start
    finally:
        _kill_group(proc)
    mid_run = at > 0 and not last.exists()
    rerun = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    if rerun.returncode != 0:
        raise RuntimeError(f"rerun of {' '.join(cmd[:3])} failed ({rerun.returncode}): {rerun.stderr[-2000:]}")
    return round(at, 2), mid_run


def preprocess_command(videos: Path, splits: Path, classes: Sequence[str], out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hpc.preprocess", "--videos", str(videos), "--splits", str(splits),
            "--classes", ",".join(classes), "--out", str(out), *extra]


def train_command(clips: Path, features: Path, out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "his.train", f"clips={clips}", f"features={features}", f"out={out}", *overrides]


def preprocess_trial(work: Path, videos: Path, splits: Path, classes: Sequence[str], kills: int,
                     rng: random.Random, extra: Sequence[str] = ()) -> Trial:
    clean = work / "preprocess-clean"
    total, first = timed_run(preprocess_command(videos, splits, classes, clean, *extra),
                             clean / "shards" / "clips-00000.h5")
    trial = Trial("hpc.preprocess", round(total, 2), [], [], [])
    for i in range(kills):
        killed = work / f"preprocess-killed-{i}"
        at, mid_run = kill_then_rerun(preprocess_command(videos, splits, classes, killed, *extra), total - first,
                                      rng, killed / "shards" / "clips-00000.h5", killed / "report.json")
        trial.kills.append(at)
        trial.mid_run.append(mid_run)
        trial.equal.append(clip_sets_equal(clean, killed))
    return trial


def train_trial(work: Path, clips: Path, features: Path, kills: int, rng: random.Random,
                overrides: Sequence[str] = ()) -> Trial:
    clean = work / "train-clean"
    total, first = timed_run(train_command(clips, features, clean, *overrides), clean / "config.toml")
    trial = Trial("his.train", round(total, 2), [], [], [])
    for i in range(kills):
        killed = work / f"train-killed-{i}"
        at, mid_run = kill_then_rerun(train_command(clips, features, killed, *overrides), total - first, rng,
                                      killed / "config.toml", killed / "summary.json")
        trial.kills.append(at)
        trial.mid_run.append(mid_run)
        trial.equal.append(trained_equal(clean, killed))
    return trial


@contextlib.contextmanager
def small_disk(path: Path, size_kb: int) -> Iterator[Path]:
    """A tmpfs of `size_kb` KB mounted at `path` (root only), unmounted on the way out."""
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def disk_full_trials(work: Path, clean: Path, videos: Path, splits: Path, classes: Sequence[str],
                     extra: Sequence[str], disks: int, rng: random.Random) -> Outcome:
    """hpc.preprocess into `disks` tmpfs's, each filling at a random point of the clean run's output."""
    from his.data.manifest import entry_problem

    size_kb = sum(p.stat().st_size for p in clean.rglob("*") if p.is_file()) // 1024
    outcome = Outcome("preprocess into a full disk", 0, 0, 0, [])
    for i in range(disks):
        with small_disk(work / f"disk-{i}", int(size_kb * rng.uniform(0.1, 0.9))) as disk:
            out = disk / "clips"
            cmd = preprocess_command(videos, splits, classes, out, *extra)
            full = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
            said = [line for line in full.stderr.splitlines() if "No space left on device" in line]
            listed = json.loads((out / "manifest.json").read_text())["shards"] if (out / "manifest.json").exists() \
                else []
            kept = all(entry_problem(out / e["name"], e, True, "manifest") is None for e in listed)
            one_line = full.returncode == 2 and len(said) == 1 and f"{disk}/" in said[0] and \
                "Traceback" not in full.stderr and not list(disk.rglob(".*.tmp"))
            subprocess.run(["mount", "-o", f"remount,size={4 * size_kb + 4096}k", str(disk)], check=True)
            rerun = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
            equal = rerun.returncode == 0 and clip_sets_equal(clean, out)
        outcome.runs += 1
        outcome.caught += one_line and kept and equal
        outcome.lost += not (kept and equal)
        outcome.notes.append(f"{len(listed)} shard(s) kept, exit {full.returncode}: "
                             f"{said[0] if said else full.stderr[-200:]}")
    return outcome


def change_chunk_bytes(shard: Path, dataset: str, row: int, n: int = 5000) -> None:
    """Overwrite `n` bytes inside the chunk of `row` of `dataset` (one row a chunk) of the HDF5 file `shard`;
    the file keeps its size."""
    with h5py.File(shard) as f:
        ds = f[dataset]
        chunk = ds.id.get_chunk_info_by_coord((row,) + (0,) * (ds.ndim - 1))
    if chunk.size < n + 100:
        raise ValueError(f"{shard}: a chunk of {dataset} holds {chunk.size} bytes, fewer than {n + 100}")
    with open(shard, "r+b") as f:
        f.seek(chunk.byte_offset + 100)
        f.write(bytes([7]) * n)


ROW_DATASETS = ("audio", "frame64", "frame88")


def changed_bytes_trials(work: Path, clean: Path, changes: int, rng: random.Random) -> Outcome:
    """5 KB changed in a random chunk of a copy of `clean`, then the set read whole (load_split)."""
    from his.data.dataset import load_split
    from his.io import InputError

    shards = [(s["name"], s["rows"]) for s in json.loads((clean / "manifest.json").read_text())["shards"] if s["rows"]]
    outcome = Outcome("5 KB changed in a chunk", 0, 0, 0, [])
    for i in range(changes):
        damaged = work / f"changed-{i}"
        subprocess.run(["cp", "-a", str(clean), str(damaged)], check=True)
        name, rows = rng.choice(shards)
        dataset, row = rng.choice(ROW_DATASETS), rng.randrange(rows)
        change_chunk_bytes(damaged / name, dataset, row)
        try:
            load_split(damaged / "index.h5", None, list(ROW_DATASETS))
            said = ""
        except InputError as e:
            said = str(e)
        outcome.runs += 1
        caught = said.startswith(f"{damaged / name}: dataset {dataset} rows {row} fail their checksum")
        outcome.caught += caught
        outcome.lost += not said
        if not caught:
            outcome.notes.append(f"{name} {dataset} row {row}: {said or 'read without a word'}")
    return outcome


def copy_set(src: Path, dst: Path, checksum: bool) -> Path:
    """The clip set `src` rewritten at `dst` dataset for dataset, chunked as it was, with or without fletcher32;
    its index and manifest made anew."""
    from his.data.shards import build_index, new_hdf5, write_manifest

    names = [e["name"] for e in json.loads((src / "manifest.json").read_text())["shards"]]
    for name in names:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(src / name, "r") as f, new_hdf5(dst / name) as g:
            g.attrs.update(f.attrs)
            for key, ds in f.items():
                g.create_dataset(key, data=ds[()], dtype=ds.dtype, chunks=ds.chunks,
                                 fletcher32=checksum and ds.chunks is not None)
    build_index(dst / "index.h5", [dst / n for n in names], "clips")
    write_manifest(dst / "manifest.json", "clips", [dst / n for n in names], {})
    return dst


def checksum_cost(work: Path, clips: Path, repeats: int = 7) -> dict[str, float]:
    """Median seconds to read every row dataset of `clips` whole (load_split, warm page cache), written with
    and without the per-chunk checksum."""
    import logging

    from his.data.dataset import load_split

    logging.getLogger("his.data.dataset").setLevel(logging.ERROR)  # the copy without checksums says so, as it should
    seconds = {}
    for checksum in (False, True):
        copy = copy_set(clips, work / f"read-{'checked' if checksum else 'plain'}", checksum)
        times = []
        for _ in range(repeats + 1):  # the first warms the page cache
            start = time.perf_counter()
            rows = load_split(copy / "index.h5", None, list(ROW_DATASETS))
            times.append(time.perf_counter() - start)
        seconds["checked" if checksum else "plain"] = statistics.median(times[1:])
    mb = sum(a.nbytes for a in rows.values()) / 1e6
    return {"mb": round(mb, 1), "plain_s": round(seconds["plain"], 4), "checked_s": round(seconds["checked"], 4),
            "plain_mb_s": round(mb / seconds["plain"]), "checked_mb_s": round(mb / seconds["checked"]),
            "ratio": round(seconds["checked"] / seconds["plain"], 3)}


TINY_TRAINING = ("ngf=8", "ndf=8", "z_dim=8", "proj_dim=8", "batch_size=8", "max_steps=150", "ckpt_every=10",
                 "log_every=5", "sample_every=1000", "hist_every=1000")


def random_features(clips: Path, dim: int = 16, seed: int = 0) -> Path:
    """A feature set for the clip set: a centre per class plus noise, written as hpc.features writes one."""
    from his.data.feature_sets import clip_shards, features_dir_for, train_statistics, write_features
    from his.data.dataset import load_split

    rows = load_split(clips / "index.h5", None, ["label", "split"])
    rng = np.random.default_rng(seed)
    raw = (rng.normal(0, 1, (int(rows["label"].max()) + 1, dim))[rows["label"]]
           + rng.normal(0, 0.3, (len(rows["label"]), dim))).astype(np.float32)
    mean, std = train_statistics(raw, rows["split"])
    sha = hashlib.sha256(b"random features").hexdigest()
    out = features_dir_for(str(clips), sha)
    write_features(out, clip_shards(clips / "index.h5"), raw, mean, std,
                   {"layer": "random", "checkpoint": "none", "checkpoint_sha256": sha})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=10, help="kill -9s per stage before the rerun")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--disks", type=int, default=4, help="preprocess runs into a full disk (root: tmpfs)")
    p.add_argument("--changes", type=int, default=20, help="copies of the set with 5 KB changed in a chunk")
    p.add_argument("--clips", help="the clip set to time reads of (default: the clean preprocess run's)")
    p.add_argument("--videos-per-class", type=int, default=8)
    p.add_argument("--json", default="benchmarks/faults.json")
    args = p.parse_args()
    from his.synth import generate

    rng = random.Random(args.seed)
    classes = ["PlayingCello", "PlayingDhol", "PlayingSitar"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(work / "data", classes=classes, videos_per_class=args.videos_per_class, groups=4, ppmi_images=4,
                 seed=args.seed, duration_range=(4.0, 6.0), progress=False)
        extra = ("--shard-clips", "8", "--num-cpus", "2")
        videos, splits = work / "data" / "UCF-101", work / "data" / "ucfTrainTestlist"
        trials = [preprocess_trial(work, videos, splits, classes, args.kills, rng, extra)]
        clips = work / "preprocess-clean"
        trials.append(train_trial(work, clips, random_features(clips), args.kills, rng,
                                  ("cond_dim=16", *TINY_TRAINING)))
        outcomes = [changed_bytes_trials(work, clips, args.changes, rng)]
        if args.disks and os.geteuid() == 0:
            outcomes.insert(0, disk_full_trials(work, clips, videos, splits, classes, extra, args.disks, rng))
        cost = checksum_cost(work, Path(args.clips) if args.clips else clips)
    print(f"{'stage':<16} {'clean s':>8} {'kills':>6} {'mid-run':>8} {'equal':>6}  kill times (s)")
    for t in trials:
        print(f"{t.stage:<16} {t.clean_s:>8.1f} {len(t.kills):>6} {t.mid_run.count(True):>8} "
              f"{t.equal.count(True):>6}  {', '.join(f'{k:.1f}' for k in t.kills)}")
    print(f"\n{'case':<28} {'runs':>5} {'caught':>7} {'lost':>5}")
    for o in outcomes:
        print(f"{o.case:<28} {o.runs:>5} {o.caught:>7} {o.lost:>5}")
        for note in o.notes[:3]:
            print(f"  {note}")
    lost = sum(t.lost for t in trials) + sum(o.lost for o in outcomes)
    print(f"\nreading {cost['mb']} MB of rows whole (median of 7): {cost['plain_s']} s without checksums, "
          f"{cost['checked_s']} s with fletcher32 ({cost['plain_mb_s']} vs {cost['checked_mb_s']} MB/s, "
          f"x{cost['ratio']})")
    print(f"{sum(len(t.kills) for t in trials)} kills, {sum(o.runs for o in outcomes)} other faults, {lost} lost")
    Path(args.json).write_text(json.dumps({"trials": [asdict(t) for t in trials],
                                           "outcomes": [asdict(o) for o in outcomes], "checksum_cost": cost,
                                           "lost": lost}, indent=2) + "\n")


if __name__ == "__main__":
    main()
