"""Fault injection. Every command line against a table of bad inputs: exit 2 (1 for a deviation `spec check`
reports), exactly one line, no traceback, and nothing already written changed. Then kill -9 at random points
of preprocess and of training, and a rerun: the outputs equal a clean run's (benchmarks/faults.py runs the
same trials with more kills)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import h5py
import pytest

import his.audio.finetune
import his.data.spec
import his.eval.stage
import hpc.features
import hpc.preprocess
from benchmarks.faults import REPO, change_chunk_bytes, clip_sets_equal, preprocess_trial, train_trial, tree_digest
from his.audio.features import checkpoint_identity
from his.data.feature_sets import features_dir_for
from his.io import InputError, exclusive_dir
from his.train.__main__ import main as train_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
D = 6
CLASSES = ["Alpha", "Beta"]
TINY = ["ngf=8", "ndf=8", "z_dim=8", "proj_dim=8", "batch_size=8", "log_every=5", "sample_every=1000",
        "hist_every=1000"]
PREPROCESS = ["--window-s", "1", "--clips-per-video", "2", "--shard-clips", "4", "--num-cpus", "2"]
MAINS: dict[str, Callable] = {"hpc.preprocess": hpc.preprocess.main, "his.train": train_main,
                              "his.audio.finetune": his.audio.finetune.main, "hpc.features": hpc.features.main,
                              "his.eval": his.eval.stage.main, "his.data.spec": his.data.spec.main}


def copy_set(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


@pytest.fixture(scope="module")
def ws(datasets, fake_videos, tmp_path_factory) -> SimpleNamespace:
    """A workspace of good and damaged inputs, and a trained run."""
    root = tmp_path_factory.mktemp("faults")
    w = SimpleNamespace(root=root)
    w.clips = datasets.clips(root / "clips", groups_per_class=4, window_s=0.05, shard_clips=6)
    w.feats = datasets.features(w.clips, dim=D)
    w.miss = copy_set(w.clips, root / "miss")
    (w.miss / "shards" / "clips-00001.h5").unlink()
    w.trunc = copy_set(w.clips, root / "trunc")
    shard = w.trunc / "shards" / "clips-00002.h5"
    shard.write_bytes(shard.read_bytes()[:-4096])
    w.corrupt = copy_set(w.clips, root / "corrupt")
    shard = w.corrupt / "shards" / "clips-00003.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    w.changed = copy_set(w.clips, root / "changed")  # 5 KB inside a frame chunk, the file's size kept
    change_chunk_bytes(w.changed / "shards" / "clips-00001.h5", "frame64", 2)
    w.nonfinite = copy_set(w.clips, root / "nonfinite")
    w.nonfinite_run = root / "nonfinite-run"  # trained on them before they went bad
    assert train_main(train_args(w, w.nonfinite, out=w.nonfinite_run, steps=2)) == 0
    with h5py.File(features_dir_for(str(w.nonfinite), datasets.FEATURE_SHA256) / "features-00001.h5", "a") as f:
        f["feature"][2] = float("nan")
        f["feature"][3, 0] = float("inf")
    w.nofeat = copy_set(w.clips, root / "nofeat")
    (features_dir_for(str(w.nofeat), datasets.FEATURE_SHA256) / "features-00000.h5").unlink()
    w.images = datasets.images(root / "images", n=6)
    w.images_miss = copy_set(w.images, root / "images-miss")
    (w.images_miss / "images-00000.h5").unlink()
    w.notes = root / "notes.h5"
    w.notes.write_text("not HDF5\n")
    w.trunc_index = root / "trunc-index.h5"
    w.trunc_index.write_bytes((w.clips / "index.h5").read_bytes()[:2000])
    w.file = root / "a-file"
    w.file.write_text("")
    w.malformed = root / "malformed.h5"
    shutil.copy(w.clips / "shards" / "clips-00000.h5", w.malformed)
    with h5py.File(w.malformed, "a") as f:
        f.attrs["videos"] = "[not json"

    w.videos = root / "videos"
    train, test = [], []
    for cls in CLASSES:
        for g in (1, 2, 3, 4):
            fake_videos.make(w.videos / cls / f"v_{cls}_g{g:02d}_c01.avi", duration=2.2)
            (train if g < 4 else test).append(f"{cls}/v_{cls}_g{g:02d}_c01.avi")
    w.lists = root / "lists"
    w.lists.mkdir()
    (w.lists / "trainlist01.txt").write_text("".join(f"{p} {CLASSES.index(p.split('/')[0]) + 1}\n" for p in train))
    (w.lists / "testlist01.txt").write_text("".join(f"{p}\n" for p in test))
    w.twice = root / "twice"
    w.twice.mkdir()
    (w.twice / "trainlist01.txt").write_text("Alpha/-y.avi 1\nBeta/-y.avi 2\n")
    (w.twice / "testlist01.txt").write_text("")

    w.run = root / "run"  # trained on a copy of the clips that then loses a shard
    assert train_main(train_args(w, copy_set(w.clips, root / "run-clips"), out=w.run, steps=2)) == 0
    (root / "run-clips" / "shards" / "clips-00001.h5").unlink()
    w.torn = root / "torn.pt"
    w.torn.write_bytes((w.run / "checkpoints" / "step-00000002.pt").read_bytes()[:1000])
    w.pretrained_features = features_dir_for(str(w.clips), checkpoint_identity("")[1])
    return w


def train_args(w, clips: Path | None = None, features: Path | None = None, out: Path | None = None, steps: int = 2,
               *more: str) -> list[str]:
    clips = clips or w.clips
    features = features or next((clips / "features").iterdir())
    return [f"clips={clips}", f"features={features}", f"cond_dim={D}", f"out={out or w.root / 'new-run'}",
            f"max_steps={steps}", *TINY, *more]


def preprocess_args(w, out: Path | None = None, classes: str = "Alpha,Beta", splits: Path | None = None) -> list[str]:
    return ["--videos", str(w.videos), "--splits", str(splits or w.lists), "--classes", classes,
            "--out", str(out or w.root / "new-clips"), *PREPROCESS]


@dataclass
class Case:
    cli: str
    argv: Callable[[SimpleNamespace], list[str]]
    expect: str  # in the one line
    hold: Callable[[SimpleNamespace], Path] | None = None  # a directory another writer holds meanwhile
    env: dict[str, str] = field(default_factory=dict)
    code: int = 2


CASES = {
    # hpc.preprocess
    "preprocess: a class with no videos": Case("hpc.preprocess", lambda w: preprocess_args(w, classes="Alpha,Gamma"),
                                               "no videos of Gamma in the split lists"),
    "preprocess: one video id, two videos": Case("hpc.preprocess", lambda w: preprocess_args(w, splits=w.twice),
                                                 "video id -y names more than one video"),
    "preprocess: unwritable --out": Case("hpc.preprocess", lambda w: preprocess_args(w, out=w.file / "clips"),
                                         "cannot create the directory (Not a directory)"),
    "preprocess: --out in use": Case("hpc.preprocess", lambda w: preprocess_args(w, out=w.root / "busy"),
                                     "busy is in use by another writer", hold=lambda w: w.root / "busy"),
    "preprocess: no split lists": Case("hpc.preprocess", lambda w: preprocess_args(w, splits=w.root / "none"),
                                       "trainlist01.txt: split list not found"),
    "preprocess: bad --crop": Case("hpc.preprocess", lambda w: [*preprocess_args(w), "--crop", "200by190"],
                                   "--crop must look like 200x190"),
    "preprocess: --clips-per-video 0": Case("hpc.preprocess", lambda w: [*preprocess_args(w), "--clips-per-video", "0"],
                                            "--clips-per-video must be > 0"),
    "preprocess: missing --out": Case("hpc.preprocess", lambda w: preprocess_args(w)[:-len(PREPROCESS) - 2],
                                      "the following arguments are required: --out"),
    # his.train and pretrain
    "train: a clip shard missing": Case("his.train", lambda w: train_args(w, w.miss),
                                        "clips-00001.h5: missing (a source of"),
    "train: a clip shard truncated": Case("his.train", lambda w: train_args(w, w.trunc),
                                          "clips-00002.h5: "),  # its size, then the manifest's
    "train: a clip shard changed, HIS_VERIFY=full": Case("his.train", lambda w: train_args(w, w.corrupt),
                                                         "clips-00003.h5: sha256 differs", env={"HIS_VERIFY": "full"}),
    "train: 5 KB of a frame chunk changed (the default check)": Case(
        "his.train", lambda w: train_args(w, w.changed), "clips-00001.h5: dataset frame64 rows 2 fail their checksum"),
    "train: NaN and inf in a feature shard": Case("his.train", lambda w: train_args(w, w.nonfinite),
                                                  "features-00001.h5 rows 2, 3: feature values are NaN or inf"),
    "train: HIS_VERIFY=everything": Case("his.train", lambda w: train_args(w), "HIS_VERIFY='everything' must be one of",
                                         env={"HIS_VERIFY": "everything"}),
    "train: a feature shard missing": Case("his.train", lambda w: train_args(w, w.nofeat),
                                           "features-00000.h5: missing"),
    "train: clips= not HDF5": Case("his.train", lambda w: train_args(w, w.notes, w.feats),
                                   "notes.h5: cannot read as HDF5 (file signature not found)"),
    "train: clips= a truncated index": Case("his.train", lambda w: train_args(w, w.trunc_index, w.feats),
                                            "trunc-index.h5: cannot read as HDF5 (truncated file"),
    "train: unwritable out": Case("his.train", lambda w: train_args(w, out=w.file / "run"),
                                  "cannot create the directory (Not a directory)"),
    "train: out in use (a second training)": Case("his.train", lambda w: train_args(w, out=w.run, steps=4),
                                                  "run is in use by another writer", hold=lambda w: w.run),
    "train: max_steps=-5": Case("his.train", lambda w: train_args(w, w.clips, None, None, -5),
                                "config: max_steps=-5 must be >= 0"),
    "train: epochs=-1": Case("his.train", lambda w: train_args(w, w.clips, None, None, 0, "epochs=-1"),
                             "config: epochs=-1 must be >= 0"),
    "train: log_every=0": Case("his.train", lambda w: train_args(w, w.clips, None, None, 2, "log_every=0"),
                               "config: log_every=0 must be > 0"),
    "train: ckpt_every=0": Case("his.train", lambda w: train_args(w, w.clips, None, None, 2, "ckpt_every=0"),
                                "config: ckpt_every=0 must be > 0"),
    "train: an unknown key": Case("his.train", lambda w: [*train_args(w), "stepz=3"], "stepz"),
    "pretrain: an image shard missing": Case("his.train", lambda w: ["pretrain", f"images={w.images_miss}",
                                                                     f"out={w.root / 'pre'}", *TINY, "max_steps=1"],
                                             "images-00000.h5: missing"),
    # his.audio.finetune
    "finetune: no data=": Case("his.audio.finetune", lambda w: [f"out={w.root / 'ft'}"],
                               "config: data='demo/clips': no index.h5 there"),
    "finetune: a clip shard missing": Case("his.audio.finetune", lambda w: [f"data={w.miss}", f"out={w.root / 'ft'}"],
                                           "clips-00001.h5: missing"),
    "finetune: unwritable out": Case("his.audio.finetune", lambda w: [f"data={w.clips}", f"out={w.file / 'ft'}"],
                                     "cannot create the directory"),
    "finetune: out in use": Case("his.audio.finetune", lambda w: [f"data={w.clips}", f"out={w.root / 'ft-busy'}"],
                                 "ft-busy is in use by another writer", hold=lambda w: w.root / "ft-busy"),
    # hpc.features
    "features: no data=": Case("hpc.features", lambda w: [f"data={w.root / 'none'}"], "none/index.h5: no such file"),
    "features: a clip shard missing": Case("hpc.features", lambda w: [f"data={w.miss}"], "clips-00001.h5: missing"),
    "features: checkpoint= missing": Case("hpc.features", lambda w: [f"data={w.clips}", f"checkpoint={w.root}/x.pt"],
                                          "config: checkpoint="),
    "features: its directory in use": Case("hpc.features", lambda w: [f"data={w.clips}", "figure=false"],
                                           "is in use by another writer", hold=lambda w: w.pretrained_features),
    # his.eval
    "eval: no run there": Case("his.eval", lambda w: [f"run={w.root / 'none'}"], "no config.toml there"),
    "eval: checkpoint= torn": Case("his.eval", lambda w: [f"run={w.run}", f"checkpoint={w.torn}"],
                                   "torn.pt: not a readable checkpoint"),
    "eval: NaN and inf in the run's features": Case("his.eval", lambda w: [f"run={w.nonfinite_run}"],
                                                    "features-00001.h5 rows 2, 3: feature values are NaN or inf"),
    "eval: the run's clip shard missing": Case("his.eval", lambda w: [f"run={w.run}"], "clips-00001.h5: missing"),
    # his.data.spec
    "spec: no command": Case("his.data.spec", lambda w: [], "the following arguments are required: command"),
    "spec: check, no files": Case("his.data.spec", lambda w: ["check"], "the following arguments are required: files"),
    "spec: an unknown option": Case("his.data.spec", lambda w: ["check", "--deeep", str(w.clips / "index.h5")],
                                    "unrecognized arguments: --deeep"),
    "spec: malformed attrs (a deviation, on stdout)": Case("his.data.spec", lambda w: ["check", str(w.malformed)],
                                                           "attr videos should be json, does not parse", code=1),
}


def outcome(case: Case, w: SimpleNamespace, capfd, monkeypatch, cwd: Path) -> tuple[int, str, str]:
    """Run the case in-process from the empty directory `cwd`: a default such as data='demo/clips' then means
    nothing, whatever the directory pytest was started from holds (a `make demo` checkout holds demo/)."""
    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    try:
        code = MAINS[case.cli](case.argv(w))
    except SystemExit as e:  # argparse and the config parser exit
        code = e.code
    out, err = capfd.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_input_is_one_line_exit_2_and_changes_nothing(ws, name, capfd, monkeypatch, tmp_path):
    check_case(ws, name, capfd, monkeypatch, tmp_path)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.cli in ("his.audio.finetune", "hpc.features")])
def test_the_cases_give_the_same_line_in_a_checkout_that_holds_the_demo(ws, name, capfd, monkeypatch, tmp_path):
    """`make demo`, then `make test`: pytest starts in a checkout whose demo/clips (the default data=) exists."""
    checkout = tmp_path / "checkout"
    (checkout / "demo").mkdir(parents=True)
    copy_set(ws.clips, checkout / "demo" / "clips")
    monkeypatch.chdir(checkout)
    before = tree_digest(checkout)
    check_case(ws, name, capfd, monkeypatch, tmp_path)
    assert tree_digest(checkout) == before


def check_case(ws: SimpleNamespace, name: str, capfd, monkeypatch, tmp_path: Path) -> None:
    case = CASES[name]
    capfd.readouterr()
    with exclusive_dir(case.hold(ws), "another writer") if case.hold else contextlib.nullcontext():
        before = tree_digest(ws.root)
        code, out, err = outcome(case, ws, capfd, monkeypatch, tmp_path / "cwd")
        assert tree_digest(ws.root) == before, "something already written changed"
    assert "Traceback" not in out + err
    lines = (out if case.code == 1 else err).strip().splitlines()
    if case.code == 1:  # spec check: the deviation, then its count
        assert lines[-1].startswith("0 of 1 file(s) conform") and err == ""
        lines = lines[:-1]
    assert code == case.code, out + err
    assert len(lines) == 1 and case.expect in lines[0], lines


def test_the_real_command_lines_say_one_line_and_a_traceback_only_when_asked(ws):
    """Through `python -m` (all at once): one line, and with HIS_DEBUG=1 the traceback; the other stages share
    his.train's stage_main, which the table drives in this process."""
    picked = ["preprocess: a class with no videos", "train: a clip shard missing", "spec: no command"]
    procs = {name: subprocess.Popen([sys.executable, "-m", CASES[name].cli, *CASES[name].argv(ws)], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in picked}
    # its own out: two runs into one directory race for its lock, and the loser is told so instead
    debug = subprocess.Popen([sys.executable, "-m", "his.train", *train_args(ws, ws.miss, out=ws.root / "debug-run")],
                             cwd=REPO,
                             env={**os.environ, "HIS_DEBUG": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and "Traceback" not in err, (name, err)
        assert len(err.strip().splitlines()) == 1 and CASES[name].expect in err, (name, err)
    _, err = debug.communicate(timeout=120)
    assert debug.returncode == 1 and "Traceback" in err and "InputError: " in err, err[-500:]
    with pytest.raises(InputError, match="clips-00001.h5: missing"):  # --debug: the exception itself
        train_main([*train_args(ws, ws.miss), "--debug"])


def test_preprocess_killed_at_random_points_then_rerun_equals_a_clean_run(ws, tmp_path):
    trial = preprocess_trial(tmp_path, ws.videos, ws.lists, CLASSES, kills=2, rng=random.Random(12), extra=PREPROCESS)
    assert trial.lost == 0 and any(trial.mid_run), trial
    assert not list(tmp_path.rglob(".*.tmp"))


def test_training_killed_at_random_points_then_rerun_equals_a_clean_run(ws, tmp_path):
    overrides = [f"cond_dim={D}", *TINY, "max_steps=40", "ckpt_every=5"]  # steps outlast the exit
    trial = train_trial(tmp_path, ws.clips, ws.feats, kills=2, rng=random.Random(12), overrides=overrides)
    assert trial.lost == 0 and any(trial.mid_run), trial
    assert not list(tmp_path.rglob(".*.tmp"))


# ------------------------------------------------------------------------------------------- a full disk


def no_space_line(err: str, disk: Path) -> str:
    """The one line of a command that ran out of space under `disk` (no traceback, no crash)."""
    assert "Traceback" not in err and "Segmentation" not in err, err[-3000:]
    lines = [line for line in err.strip().splitlines() if "No space left on device" in line]
    assert len(lines) == 1 and f"{disk}/" in lines[0], err[-3000:]
    return lines[0]


def test_preprocess_into_a_full_disk_is_one_line_keeps_what_it_wrote_and_a_rerun_with_space_completes(
        ws, small_disk):
    """Real ffmpeg, Ray and HDF5 writing into a tmpfs that holds two of the four shards."""
    disk = small_disk("disk", 700)
    out = disk / "clips"
    cmd = [sys.executable, "-m", "hpc.preprocess", *preprocess_args(ws, out=out)]
    full = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert full.returncode == 2, full.stderr[-3000:]
    line = no_space_line(full.stderr, disk)
    assert line.startswith("hpc.preprocess: ") and "/shards/clips-0000" in line
    assert not list(disk.rglob(".*.tmp"))
    listed = json.loads((out / "manifest.json").read_text())["shards"]
    assert listed and all(hpc.preprocess.entry_problem(out / s["name"], s, True, "manifest") is None for s in listed)
    kept = {s["name"]: (out / s["name"]).read_bytes() for s in listed}
    small_disk.resize(disk, 4096)
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert re.search(rf"shards written / kept +{4 - len(kept)} / {len(kept)}\n", rerun.stdout), rerun.stdout
    assert all((out / name).read_bytes() == data for name, data in kept.items())
    assert clip_sets_equal(out, copy_set(out, disk / "copy")) and his.data.spec.check_file(out / "index.h5") == []


@pytest.mark.parametrize("stage,size_kb", [("his.train", 600), ("his.data.images", 40)])
def test_a_stage_writing_into_a_full_disk_is_one_line_and_leaves_no_temporary(ws, small_disk, stage, size_kb):
    """his.train runs out of space at its first checkpoint (1.6 MB; its config, samples and TensorBoard fit),
    the image ingest at its first shard."""
    disk = small_disk("disk", size_kb)
    argv = (train_args(ws, out=disk / "run") if stage == "his.train" else
            ["--src", str(ws.root / "images-src"), "--out", str(disk / "images")])
    proc = subprocess.run([sys.executable, "-m", stage, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = no_space_line(proc.stderr, disk)
    assert line.startswith(f"{stage}: ") and line.endswith((".pt: No space left on device",
                                                            ".h5: No space left on device")), line
    assert len(proc.stderr.strip().splitlines()) == 1 and not list(disk.rglob(".*.tmp"))


def test_a_checkpoint_or_a_feature_shard_that_does_not_fit_is_oserror_naming_it(ws, small_disk):
    """The writers themselves: a full disk is OSError (ENOSPC) naming the file and leaving no temporary file;
    a checkpoint of the same name written before stays as it was."""
    import numpy as np
    import torch

    from his.data.feature_sets import clip_shards, write_features
    from his.train.checkpoint import save_checkpoint

    disk = small_disk("disk", 600)
    first = save_checkpoint(disk, 1, {"weights": torch.zeros(1000)}, keep=5)
    before = first.read_bytes()
    with pytest.raises(OSError, match=f"{first}") as e:
        save_checkpoint(disk, 1, {"weights": torch.zeros(200_000)}, keep=5)
    assert e.value.errno == errno.ENOSPC and first.read_bytes() == before and not list(disk.rglob(".*.tmp"))

    shards = clip_shards(ws.clips / "index.h5")
    raw = np.ones((sum(n for _, n in shards), 4000), np.float32)
    features = disk / "features"
    small_disk.fill(disk, 16)
    with pytest.raises(OSError, match=f"{features}/features-0000.\\.h5") as e:
        write_features(features, shards, raw, raw[0] * 0, raw[0], {"layer": "x", "checkpoint": "x",
                                                                    "checkpoint_sha256": "x"})
    assert e.value.errno == errno.ENOSPC and not list(disk.rglob(".*.tmp"))


def test_tensorboard_writing_into_a_full_disk_is_one_line_naming_its_event_file(small_disk, capfd):
    """TensorBoard writes from a thread of its own: the thread prints no traceback, and the error it raises
    again in the command's own thread (naming no file) is the one line, with the event file's name."""
    from torch.utils.tensorboard import SummaryWriter

    from his.config import cli_main

    disk = small_disk("disk", 64)
    small_disk.fill(disk, 0)

    def body(args: list[str]) -> int:
        with SummaryWriter(str(disk / "tb")) as writer:
            for step in range(100):
                writer.add_scalar("loss", step, step)
        return 0

    capfd.readouterr()
    assert cli_main("his.train", body, []) == 2
    err = capfd.readouterr().err
    assert re.fullmatch(rf"his\.train: {disk}/tb/events\.out\.tfevents\.[^ ]+: No space left on device\n", err), err
