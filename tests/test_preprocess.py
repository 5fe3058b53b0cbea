"""hpc.preprocess end to end with real ffmpeg and real Ray, on UCF-101-layout videos made here.

Ray sessions are few (each costs seconds on this 2-core host): one in this process for the module, one in
the subprocess that is killed midway, and one head started with `ray start` for --address.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import ray

from his.data.dataset import ClipDataset, load_split, read_classes
from his.data.manifest import sha256_file
from his.data.spec import check_file
from hpc.preprocess import main

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Alpha", "Beta"]
WINDOW_S, CLIPS_PER_VIDEO = 1.0, 2
COMMON = ["--classes", ",".join(CLASSES), "--window-s", str(WINDOW_S), "--clips-per-video", str(CLIPS_PER_VIDEO),
          "--shard-clips", "4", "--num-cpus", "2"]  # fmt: skip
ODD_NAME = "v_Beta_g03_c01 it's \"quoted\" é.avi"


def write_lists(root: Path, train: list[str], test: list[str]) -> Path:
    lists = root / "lists"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "trainlist01.txt").write_text("".join(f"{p} {CLASSES.index(p.split('/')[0]) + 1}\n" for p in train))
    (lists / "testlist01.txt").write_text("".join(f"{p}\n" for p in test))
    return lists


@pytest.fixture(scope="module")
def good(tmp_path_factory, fake_videos):
    """Eight good videos, two of each class per split, one with spaces, quotes and non-ASCII in its name."""
    root = tmp_path_factory.mktemp("ucf")
    train, test = [], []
    for cls in CLASSES:
        for g in (1, 2, 3, 4):
            name = ODD_NAME if (cls, g) == ("Beta", 3) else f"v_{cls}_g{g:02d}_c01.avi"
            fake_videos.make(root / "videos" / cls / name, duration=3.0 + 0.5 * g)
            (train if g <= 2 else test).append(f"{cls}/{name}")
    return root, train, test


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run(videos: Path, lists: Path, out: Path, *extra: str) -> int:
    return main(["--videos", str(videos), "--splits", str(lists), "--out", str(out), *COMMON, *extra])


def index_content(index: Path) -> dict[str, np.ndarray]:
    with h5py.File(index) as f:
        return {n: (f[n].asstr()[()] if h5py.check_string_dtype(f[n].dtype) else f[n][()]) for n in f}


def test_clips_match_split_lists_and_media(good, ray_session, tmp_path, fake_videos):
    root, train, test = good
    lists = write_lists(root, train, test)
    assert run(root / "videos", lists, tmp_path / "out") == 0
    index = tmp_path / "out" / "index.h5"
    shards = sorted((tmp_path / "out" / "shards").glob("clips-*.h5"))
    for f in [index, *shards]:
        assert check_file(f) == []
    assert subprocess.run([sys.executable, "-m", "his.data.spec", "check", str(index), *map(str, shards)]).returncode == 0

    assert read_classes(index) == CLASSES
    data = load_split(index, None, ["video_id", "split", "label", "clip_index", "source", "t_frame", "frame64", "audio"])
    by_video = {}
    for i, vid in enumerate(data["video_id"]):
        by_video.setdefault(vid, []).append(i)
    expected = {Path(p).stem: (0 if p in train else 1, CLASSES.index(p.split("/")[0])) for p in train + test}
    assert set(by_video) == set(expected)
    for vid, rows in by_video.items():
        assert list(data["clip_index"][rows]) == list(range(CLIPS_PER_VIDEO))
        assert {(int(data["split"][r]), int(data["label"][r])) for r in rows} == {expected[vid]}
    assert any(s.endswith(ODD_NAME) for s in data["source"])
    for i in range(len(data["video_id"])):
        assert fake_videos.frame_number(data["frame64"][i]) == int(np.floor(data["t_frame"][i] * fake_videos.FPS))
        assert fake_videos.chirp_frequency(data["audio"][i]) == pytest.approx(200 + 100 * data["t_frame"][i], abs=10)

    train_rows = load_split(index, "train", ["video_id"])["video_id"]
    assert set(train_rows) == {Path(p).stem for p in train}
    ds = ClipDataset(index, "test", ["frame88", "label", "video_id"], in_memory=False)
    mem = ClipDataset(index, "test", ["frame88", "label", "video_id"], in_memory=True)
    assert len(ds) == len(mem) == 4 * CLIPS_PER_VIDEO
    assert ds[3]["video_id"] == mem[3]["video_id"] and bool((ds[3]["frame88"] == mem[3]["frame88"]).all())
    assert tuple(ds[0]["frame88"].shape) == (66, 88, 3)


def test_bad_inputs_are_skipped_and_reported(good, ray_session, tmp_path, fake_videos):
    root, train, test = good
    videos = tmp_path / "videos"
    shutil.copytree(root / "videos", videos)
    bad = {
        "Alpha/v_Alpha_g05_c01.avi": "empty file",
        "Alpha/v_Alpha_g06_c01.avi": "truncated",
        "Alpha/v_Alpha_g07_c01.avi": "not a readable media file",
        "Beta/v_Beta_g05_c01.avi": "silent audio track",
        "Beta/v_Beta_g06_c01.avi": "too short",
        "Beta/v_Beta_g07_c01.avi": "no audio stream",
        "Beta/v_Beta_g08_c01.avi": "no video stream",
        "Alpha/v_Alpha_g08_c01.avi": "no such file",
    }
    (videos / "Alpha/v_Alpha_g05_c01.avi").write_bytes(b"")
    whole = (videos / "Alpha/v_Alpha_g01_c01.avi").read_bytes()
    (videos / "Alpha/v_Alpha_g06_c01.avi").write_bytes(whole[: len(whole) // 2])
    (videos / "Alpha/v_Alpha_g07_c01.avi").write_bytes(os.urandom(20000))
    fake_videos.make(videos / "Beta/v_Beta_g05_c01.avi", 3.0, audio="silent")
    fake_videos.make(videos / "Beta/v_Beta_g06_c01.avi", 0.6)
    fake_videos.make(videos / "Beta/v_Beta_g07_c01.avi", 3.0, audio=None)
    wav = videos / "Beta/v_Beta_g08_c01.avi"  # sound only: a WAV file under a video's name
    subprocess.run([os.environ.get("HIS_FFMPEG", "ffmpeg"), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=f=440:d=3", "-f", "wav", str(wav)], check=True)  # fmt: skip
    # bad ones interleaved with the good ones, in both splits
    lists = write_lists(tmp_path, [p for pair in zip(train, list(bad)[:4]) for p in pair], test + list(bad)[4:])

    assert run(videos, lists, tmp_path / "out") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    reasons = {Path(s["path"]).relative_to(videos).as_posix(): s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(bad)
    for path, reason in bad.items():
        assert reason in reasons[path], (path, reasons[path])
    kept = set(load_split(tmp_path / "out" / "index.h5", None, ["video_id"])["video_id"])
    assert kept == {Path(p).stem for p in train + test}
    assert report["summary"]["clips"] == len(train + test) * CLIPS_PER_VIDEO
    assert run(videos, lists, tmp_path / "out", "--strict") == 1


def test_kill_midway_then_rerun_equals_clean_run(good, ray_session, tmp_path):
    _, _, test = good
    videos, lists, names = many_videos(good, tmp_path)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "hpc.preprocess", "--videos", str(videos), "--splits", str(lists), "--out", str(killed), *COMMON]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((killed / "shards").glob("clips-*.h5")) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started, all in its session
        proc.wait()
    planned = len(names + test) * CLIPS_PER_VIDEO // 4
    done = list((killed / "shards").glob("clips-*.h5"))
    assert 0 < len(done) < planned, "the kill did not land midway"
    assert not (killed / "index.h5").exists()
    manifest = killed / "manifest.json"  # absent when the kill lands between the first shard and its listing
    listed = {e["name"] for e in json.loads(manifest.read_text())["shards"]} if manifest.exists() else set()
    assert listed <= {f"shards/{p.name}" for p in done} and len(listed) >= len(done) - 1  # the last may be unlisted
    for shard in done:
        assert check_file(shard) == []

    assert run(videos, lists, killed) == 0
    report = json.loads((killed / "report.json").read_text())
    assert report["summary"]["shards_kept"] == len(listed)
    assert not list((killed / "shards").glob(".*"))
    assert run(videos, lists, tmp_path / "clean") == 0
    resumed, clean = index_content(killed / "index.h5"), index_content(tmp_path / "clean" / "index.h5")
    assert resumed.keys() == clean.keys()
    for name in clean:
        assert np.array_equal(resumed[name], clean[name]), name


def many_videos(good, tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """The good videos plus 48 copies: enough that a kill lands midway."""
    root, train, test = good
    videos = tmp_path / "videos"
    shutil.copytree(root / "videos", videos)
    names = list(train)
    for cls in CLASSES:
        for g in range(10, 34):
            shutil.copy(videos / cls / f"v_{cls}_g01_c01.avi", videos / cls / f"v_{cls}_g{g:02d}_c01.avi")
            names.append(f"{cls}/v_{cls}_g{g:02d}_c01.avi")
    return videos, write_lists(tmp_path, names, test), names


def alive_descendants(pid: int) -> set[int]:
    """The processes below `pid` that have not exited (zombies count as gone), from /proc."""
    children: dict[int, list[int]] = {}
    state: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state[int(stat.parent.name)] = fields[0]
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return {p for p in found if state.get(p) != "Z"}


def still_running(pids: set[int]) -> set[int]:
    running = set()
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                running.add(pid)
        except OSError:
            pass
    return running


def test_sigterm_stops_the_run_and_the_ray_it_started(good, tmp_path):
    videos, lists, _ = many_videos(good, tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hpc.preprocess", "--videos", str(videos), "--splits", str(lists), "--out", str(out),
           *COMMON]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "shards").glob("clips-*.h5")) and time.monotonic() < deadline:
            time.sleep(0.02)
        ray_processes = alive_descendants(proc.pid)
        assert ray_processes, "no Ray processes below the driver"
        proc.send_signal(signal.SIGTERM)  # the driver only, as `kill PID` or Slurm's first signal
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM
        assert err.strip().splitlines()[-1].startswith("hpc.preprocess: stopped by SIGTERM")
        deadline = time.monotonic() + 15
        while still_running(ray_processes) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not still_running(ray_processes)
    finally:
        kill_group(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / ".lock").exists() and not list(out.rglob(".*.tmp"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def test_address_of_a_running_ray_head(good, tmp_path):
    root, train, test = good
    lists = write_lists(tmp_path, train[1:3], test[1:3])  # a video of each class in each split
    port = free_port()
    # a short temp dir: Ray's unix socket paths must fit in 107 bytes
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    # the cluster's own token, so no other Ray on this machine (whose token is in ~/.ray) gets in the way
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    # --block keeps `ray start` in the foreground, in a session of its own: the test tears down this head and
    # only it by signalling that process group (`ray stop` would stop every Ray on the machine)
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         f"--temp-dir={ray_tmp}", "--include-dashboard=false", "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        cmd = [sys.executable, "-m", "hpc.preprocess", "--videos", str(root / "videos"), "--splits", str(lists),
               "--out", str(tmp_path / "out"), "--address", f"127.0.0.1:{port}", *COMMON]  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not port_open(port):
            time.sleep(0.2)
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "clips in index" in out.stdout
        kept = set(load_split(tmp_path / "out" / "index.h5", None, ["video_id"])["video_id"])
        assert kept == {Path(p).stem for p in train[1:3] + test[1:3]}
    finally:
        kill_group(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        kill_group(head.pid, signal.SIGKILL)  # whatever of the head's group outlived the SIGTERM
        head.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_an_absent_class_or_a_shared_video_id_fails_before_decoding(good, tmp_path, fake_videos, capsys):
    root, train, test = good
    lists = write_lists(tmp_path, train, test)
    args = ["--videos", str(root / "videos"), "--splits", str(lists), "--out", str(tmp_path / "out"),
            *COMMON[2:]]
    assert main([*args, "--classes", "Alpha,Gamma"]) == 2
    assert "no videos of Gamma in the split lists" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    for cls in CLASSES:  # the same file name in two classes: one video id for two videos
        fake_videos.make(tmp_path / "videos" / cls / "-y.avi", duration=2.0)
    lists = write_lists(tmp_path / "twice", ["Alpha/-y.avi", "Beta/-y.avi"], [])
    assert main(["--videos", str(tmp_path / "videos"), "--splits", str(lists), "--out", str(tmp_path / "out2"),
                 *COMMON]) == 2
    assert "video id -y names more than one video" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def corrupt_middle(path: Path) -> None:
    """Flip bytes in the middle of a file, keeping its size (frame data, far from HDF5's metadata)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def test_a_shard_corrupted_in_the_middle_is_redone_and_never_vouched_for(good, ray_session, tmp_path):
    root, train, test = good
    lists = write_lists(root, train, test)
    out = tmp_path / "out"
    assert run(root / "videos", lists, out) == 0
    clean = index_content(out / "index.h5")
    shard = sorted((out / "shards").glob("clips-*.h5"))[1]
    manifest_before = {e["name"]: e for e in json.loads((out / "manifest.json").read_text())["shards"]}
    corrupt_middle(shard)
    deep = subprocess.run([sys.executable, "-m", "his.data.spec", "check", "--deep", str(out / "index.h5")],
                          cwd=REPO, capture_output=True, text=True)
    assert deep.returncode == 1 and f"{shard}: sha256 differs" in deep.stdout

    assert run(root / "videos", lists, out) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["shards_written"] == 1 and report["summary"]["shards_kept"] == 3
    after = {e["name"]: e for e in json.loads((out / "manifest.json").read_text())["shards"]}
    assert after.keys() == manifest_before.keys()
    for name, entry in after.items():  # the kept ones vouched for as they were, the redone one as it is now
        assert entry["sha256"] == (manifest_before[name]["sha256"] if name != f"shards/{shard.name}"
                                   else sha256_file(shard))
    redone = index_content(out / "index.h5")
    for name in clean:
        assert np.array_equal(redone[name], clean[name]), name


def test_shards_written_before_checksums_are_redone_on_a_rerun(good, ray_session, tmp_path):
    from benchmarks.faults import copy_set

    root, train, test = good
    lists = write_lists(root, train, test)
    assert run(root / "videos", lists, tmp_path / "new") == 0
    old = copy_set(tmp_path / "new", tmp_path / "old", checksum=False)  # the same rows, no fletcher32
    assert any("has checksum none" in p for p in check_file(old / "shards" / "clips-00000.h5"))
    assert run(root / "videos", lists, old) == 0
    summary = json.loads((old / "report.json").read_text())["summary"]
    assert summary["shards_written"] == 4 and summary["shards_kept"] == 0
    assert all(check_file(p) == [] for p in [old / "index.h5", *(old / "shards").glob("clips-*.h5")])
    new, redone = index_content(tmp_path / "new" / "index.h5"), index_content(old / "index.h5")
    assert all(np.array_equal(new[name], redone[name]) for name in new)


def test_an_unwritable_out_or_a_busy_out_is_one_line(good, tmp_path, capsys):
    from his.io import exclusive_dir

    root, train, test = good
    lists = write_lists(tmp_path, train, test)
    (tmp_path / "file").write_text("")
    assert run(root / "videos", lists, tmp_path / "file" / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create the directory" in err[0] and str(tmp_path / "file" / "out") in err[0]
    with exclusive_dir(tmp_path / "busy", "a test"):
        assert run(root / "videos", lists, tmp_path / "busy") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'busy'} is in use by a test (pid {os.getpid()}" in err[0]
