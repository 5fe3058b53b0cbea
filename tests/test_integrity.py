"""Nothing silently wrong: every reader checks the shards behind an index against its manifest, and every
writing stage holds its output directory alone (his.io.exclusive_dir)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from benchmarks.faults import change_chunk_bytes
from his.data.dataset import load_features, load_split
from his.data.manifest import source_problems, verify_set
from his.data.spec import check_file
from his.io import InputError, exclusive_dir
from his.train import PretrainConfig, TrainConfig, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]
D = 6


@pytest.fixture(scope="module")
def clips(datasets, tmp_path_factory) -> Path:
    """24 clips in 4 shards of 6, and their features."""
    root = datasets.clips(tmp_path_factory.mktemp("integrity") / "clips", groups_per_class=4, window_s=0.05,
                          shard_clips=6)
    datasets.features(root, dim=D)
    return root


def features_of(clips: Path) -> Path:
    return next((clips / "features").iterdir())


def tiny(clips: Path, out: Path, **kw) -> TrainConfig:
    base = dict(clips=str(clips), features=str(features_of(clips)), cond_dim=D, out=str(out), ngf=8, ndf=8,
                proj_dim=8, z_dim=8, batch_size=8, max_steps=1, log_every=1, sample_every=100, hist_every=100,
                ckpt_every=100)
    return TrainConfig(**{**base, **kw})


def copy_set(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def test_a_missing_clip_shard_reads_as_zeros_and_training_refuses_it(clips, tmp_path):
    damaged = copy_set(clips, tmp_path / "clips")
    shard = damaged / "shards" / "clips-00001.h5"
    shard.unlink()
    with h5py.File(damaged / "index.h5") as f:  # why the check: HDF5 fills a missing source with zeros
        assert not f["frame64"][6:12].any() and f["frame64"][:6].any()
    with pytest.raises(InputError, match=f"{shard}: missing"):
        run(tiny(damaged, tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    with pytest.raises(InputError, match=f"{shard}: missing"):
        load_split(damaged / "index.h5", "train", ["label"])


def test_a_missing_or_truncated_feature_shard_is_refused(clips, tmp_path):
    damaged = copy_set(clips, tmp_path / "clips")
    features = features_of(damaged)
    shards = sorted(features.glob("features-*.h5"))
    shards[0].write_bytes(shards[0].read_bytes()[:-100])
    shards[2].unlink()
    with pytest.raises(InputError, match=rf"{shards[0]}: \d+ bytes, .*manifest.json says \d+ \(truncated") as e:
        load_features(features, "train")
    assert "(and 1 more problem(s))" in str(e.value)
    with pytest.raises(InputError, match="features-00000.h5"):
        run(tiny(damaged, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_bytes_changed_in_the_middle_pass_the_size_check_and_fail_verify_full(clips, tmp_path, monkeypatch):
    damaged = copy_set(clips, tmp_path / "clips")
    shard = damaged / "shards" / "clips-00002.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert source_problems(damaged / "index.h5") == []  # same size: the cheap check cannot tell
    monkeypatch.setenv("HIS_VERIFY", "full")
    with pytest.raises(InputError, match=f"{shard}: sha256 differs from .*manifest.json"):
        run(tiny(damaged, tmp_path / "run"))
    monkeypatch.setenv("HIS_VERIFY", "everything")
    with pytest.raises(InputError, match="HIS_VERIFY='everything' must be one of size, full"):
        verify_set(damaged / "index.h5")
    out = subprocess.run([sys.executable, "-m", "his.data.spec", "check", "--deep", str(damaged / "index.h5"),
                          str(shard)], cwd=REPO, capture_output=True, text=True, env={**os.environ, "HIS_VERIFY": ""})
    assert out.returncode == 1 and out.stderr == ""
    assert out.stdout.count(f"{shard}: sha256 differs") == 2  # through the index, and the shard on its own


def test_bytes_changed_in_a_frame_chunk_are_caught_on_every_read_by_default(clips, tmp_path, monkeypatch):
    monkeypatch.delenv("HIS_VERIFY", raising=False)
    damaged = copy_set(clips, tmp_path / "clips")
    shard = damaged / "shards" / "clips-00001.h5"
    size = shard.stat().st_size
    change_chunk_bytes(shard, "frame64", 2)
    assert shard.stat().st_size == size and source_problems(damaged / "index.h5") == []
    expected = f"{shard}: dataset frame64 rows 2 fail their checksum"
    with pytest.raises(InputError, match=expected):
        run(tiny(damaged, tmp_path / "run"))
    with pytest.raises(InputError, match=expected):
        load_split(damaged / "index.h5", "train", ["frame64"])
    assert load_split(damaged / "index.h5", "train", ["label"])["label"].size  # other datasets still read
    assert check_file(shard) == []  # the format conforms: the damage is in the data


def test_a_shard_written_before_checksums_reads_with_one_warning(clips, tmp_path, caplog):
    """An older shard (no fletcher32 filter) still reads, and says once that changed bytes go uncaught."""
    from his.data.shards import write_manifest

    old = copy_set(clips, tmp_path / "clips")
    shard = old / "shards" / "clips-00000.h5"
    with h5py.File(clips / "shards" / "clips-00000.h5") as src, h5py.File(shard, "w") as dst:
        dst.attrs.update(src.attrs)
        for name, ds in src.items():
            dst.create_dataset(name, data=ds[()], dtype=ds.dtype, chunks=ds.chunks)
    assert not h5py.File(shard)["frame64"].fletcher32
    write_manifest(old / "manifest.json", "clips", sorted((old / "shards").glob("clips-*.h5")), {})
    with caplog.at_level("WARNING", logger="his.data.dataset"):
        first = load_split(old / "index.h5", None, ["frame64"])["frame64"]
        load_split(old / "index.h5", None, ["label"])
    assert np.array_equal(first, load_split(clips / "index.h5", None, ["frame64"])["frame64"])
    warned = [r.getMessage() for r in caplog.records if "without per-chunk checksums" in r.getMessage()]
    assert len(warned) == 1 and str(shard.resolve()) in warned[0] and "audio, frame64, frame88" in warned[0]
    assert any("has checksum none, spec says fletcher32" in p for p in check_file(shard))


def test_an_index_without_its_manifest_or_with_an_unlisted_shard_is_refused(clips, tmp_path):
    damaged = copy_set(clips, tmp_path / "clips")
    manifest = damaged / "manifest.json"
    listed = json.loads(manifest.read_text())
    listed["shards"] = listed["shards"][1:]
    manifest.write_text(json.dumps(listed))
    with pytest.raises(InputError, match="clips-00000.h5: a source of .* that .*manifest.json does not list"):
        load_split(damaged / "index.h5", None, ["label"])
    manifest.write_text("{not json")
    with pytest.raises(InputError, match="manifest.json: not a manifest"):
        load_split(damaged / "index.h5", None, ["label"])
    manifest.unlink()
    with pytest.raises(InputError, match="no manifest.json beside it"):
        load_split(damaged / "index.h5", None, ["label"])
    assert check_file(damaged / "index.h5") == []  # the format still conforms; only --deep needs a manifest
    assert "no manifest.json" in check_file(damaged / "index.h5", deep=True)[0]


def test_a_missing_image_shard_stops_pretraining_and_the_ingest_redoes_it(datasets, tmp_path):
    images = datasets.images(tmp_path / "images", n=6)
    shard = images / "images-00000.h5"
    shard.unlink()
    with pytest.raises(InputError, match=f"{shard}: missing"):
        run(PretrainConfig(images=str(images), out=str(tmp_path / "run"), ngf=8, ndf=8, z_dim=8, batch_size=4,
                           max_steps=1))
    from his.data.images import ingest

    ingest(tmp_path / "images-src", images)  # the same inputs: not "up to date" while a shard is missing
    assert shard.is_file() and source_problems(images / "index.h5", "full") == []


@pytest.mark.parametrize("attr,value,expected", [
    ("kind", np.array([1, 2]), "attr kind should be str, is ndarray"),
    ("videos", "[not json", "attr videos should be json, does not parse"),
    ("samples", "many", "attr samples should be int, is str"),
    ("classes", 3, "attr classes should be list[str], is int"),
])  # fmt: skip
def test_malformed_attributes_are_one_line_each(clips, tmp_path, attr, value, expected):
    shard = tmp_path / "clips-00000.h5"
    shard.write_bytes((clips / "shards" / "clips-00000.h5").read_bytes())
    with h5py.File(shard, "a") as f:
        f.attrs[attr] = value
    problems = check_file(shard)
    assert any(expected in p for p in problems), problems
    out = subprocess.run([sys.executable, "-m", "his.data.spec", "check", str(shard)], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    assert expected in out.stdout


# ------------------------------------------------------------------------------------------- one writer


def test_a_second_writer_is_refused_naming_the_holder_and_the_lock_goes_with_the_holder(tmp_path):
    out = tmp_path / "out"
    with exclusive_dir(out, "stage A") as held:
        assert held == out
        holder = json.loads((out / ".lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["what"] == "stage A"
        with pytest.raises(InputError, match=rf"{out} is in use by stage A \(pid {os.getpid()} on "
                                             rf"{socket.gethostname()}, started 20\d\d-"):
            with exclusive_dir(out, "stage B"):
                pass  # pragma: no cover
    assert not (out / ".lock").exists()
    with exclusive_dir(out, "stage B"):  # one stage after another in one process, as the launcher runs them
        pass


def test_the_kernel_releases_a_killed_holders_lock_and_its_temporaries_go(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from his.io import exclusive_dir\n"
        f"with exclusive_dir({str(out)!r}, 'his.train'):\n"
        f"    open({str(out / 'checkpoints' / '.step-00000004.pt.77.tmp')!r}, 'w').write('half')\n"
        "    print('held', flush=True); time.sleep(60)\n")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"in use by his.train \\(pid {holder.pid} "):
            with exclusive_dir(out, "his.train", temp_dirs=("", "checkpoints")):
                pass  # pragma: no cover
        assert (out / "checkpoints" / ".step-00000004.pt.77.tmp").exists()  # a live writer's: kept
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / ".lock").exists()  # left by the killed holder, but no longer locked
    with exclusive_dir(out, "his.train", temp_dirs=("", "checkpoints")):
        assert not (out / "checkpoints" / ".step-00000004.pt.77.tmp").exists()


def test_a_filesystem_without_flock_is_one_clear_line(tmp_path, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(InputError, match="does not support file locks .*No locks available.*HIS_LOCK=off"):
        with exclusive_dir(tmp_path / "out", "x"):
            pass  # pragma: no cover
    monkeypatch.setenv("HIS_LOCK", "off")
    with exclusive_dir(tmp_path / "out", "x"):
        pass


def test_training_into_a_held_run_dir_refuses_and_a_run_clears_stale_temporaries(clips, tmp_path):
    out = tmp_path / "run"
    with exclusive_dir(out, "another his.train"):
        with pytest.raises(InputError, match=f"{out} is in use by another his.train"):
            run(tiny(clips, out))
    assert not out.exists()  # made for the lock, and removed again, as it stayed empty
    stale = [out / ".summary.json.4242.tmp", out / "checkpoints" / ".step-00000003.pt.4242.tmp",
             out / "samples" / ".latest.png.4242.tmp"]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"torn")
    summary = run(tiny(clips, out))
    assert summary["status"] == "completed" and not any(p.exists() for p in stale)
    assert not (out / ".lock").exists()


def test_an_unwritable_out_is_found_before_any_work(clips, tmp_path):
    (tmp_path / "file").write_text("")
    started = time.perf_counter()
    with pytest.raises(InputError, match="file/run: cannot create the directory"):
        run(tiny(clips, tmp_path / "file" / "run"))
    assert time.perf_counter() - started < 5
