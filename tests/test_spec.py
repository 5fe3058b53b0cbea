"""datasets.h5.spec and `python -m his.data.spec check` on small hand-made files of every kind."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from his.data.shards import build_index, write_manifest, write_shard
from his.data.spec import check_file, load_spec

CLIP_ATTRS = {
    "classes": ["Alpha", "Beta"], "sample_rate": 22050, "window_s": 0.5, "samples": 11025, "clips_per_video": 2,
    "crop": np.array([200, 190]), "size": 64, "split_list": 1, "source_root": "/data/ucf", "code_version": "0",
    "created": "2026-01-01T00:00:00+00:00", "videos": ["a.avi"], "skipped": [],
}  # fmt: skip


def clip_columns(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {
        "audio": rng.integers(-1000, 1000, (n, 11025)).astype(np.int16),
        "frame64": rng.integers(0, 255, (n, 64, 64, 3)).astype(np.uint8),
        "frame88": rng.integers(0, 255, (n, 66, 88, 3)).astype(np.uint8),
        "label": np.arange(n, dtype=np.int16) % 2,
        "split": np.zeros(n, np.uint8),
        "video_id": np.array([f"v_Alpha_g01_c{i:02d}" for i in range(n)], dtype=object),
        "group": np.ones(n, np.int16),
        "clip_index": np.arange(n, dtype=np.int16),
        "t_start": np.zeros(n, np.float32),
        "t_end": np.full(n, 0.5, np.float32),
        "t_frame": np.full(n, 0.25, np.float32),
        "source": np.array(["/data/ucf/Alpha/é 'x'.avi"] * n, dtype=object),
    }


def test_spec_describes_every_kind():
    spec = load_spec()
    assert spec["spec_version"] == 1 and set(spec["kinds"]) >= {"clips", "features", "images"}
    for kind in spec["kinds"].values():
        for name, entry in kind["datasets"].items():
            assert {"dtype", "shape", "chunks", "compression"} <= set(entry), name


def test_clip_shards_and_index_conform(tmp_path):
    shards = [tmp_path / "shards" / f"clips-{k:05d}.h5" for k in range(3)]
    shards[0].parent.mkdir()
    for shard, n in zip(shards, (3, 0, 2)):
        write_shard(shard, "clips", clip_columns(n), CLIP_ATTRS)
    assert build_index(tmp_path / "index.h5", shards, "clips") == 5
    manifest = write_manifest(tmp_path / "manifest.json", "clips", shards, {})
    assert [s["rows"] for s in manifest["shards"]] == [3, 0, 2] and len(manifest["shards"][0]["sha256"]) == 64
    for f in [tmp_path / "index.h5", *shards]:
        assert check_file(f) == [], f
    with h5py.File(tmp_path / "index.h5") as f:
        assert f["frame64"].is_virtual and f["source"].asstr()[4] == "/data/ucf/Alpha/é 'x'.avi"
        assert np.array_equal(f["audio"][3:], clip_columns(2)["audio"])
    ok = subprocess.run([sys.executable, "-m", "his.data.spec", "check", str(tmp_path / "index.h5"), *map(str, shards)])
    assert ok.returncode == 0


def test_deviations_are_listed(tmp_path):
    shard = tmp_path / "clips-00000.h5"
    write_shard(shard, "clips", clip_columns(2), CLIP_ATTRS)
    with h5py.File(shard, "a") as f:
        del f["label"]
        f["label"] = np.zeros(2, np.int64)
        del f["group"]
        f["extra"] = np.zeros(2)
        f.attrs["sample_rate"] = 16000
        del f.attrs["window_s"]
    problems = "\n".join(check_file(shard))
    for expected in ["dataset label has dtype int64", "missing dataset group", "dataset extra is not in the spec",
                     "attr sample_rate=16000", "missing attr window_s"]:  # fmt: skip
        assert expected in problems
    out = subprocess.run([sys.executable, "-m", "his.data.spec", "check", str(shard)], capture_output=True, text=True)
    assert out.returncode == 1 and "missing dataset group" in out.stdout
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    assert "cannot open as HDF5" in check_file(tmp_path / "junk.h5")[0]


def test_image_and_feature_files_can_be_checked(tmp_path):
    write_shard(tmp_path / "images-00000.h5", "images",
                {"image": np.zeros((4, 64, 64, 3), np.uint8), "source": np.array(["a.jpg"] * 4, dtype=object)}, {})  # fmt: skip
    assert check_file(tmp_path / "images-00000.h5") == []

    attrs = {"layer": "conv7", "checkpoint": "ckpt.pt", "checkpoint_sha256": "0" * 64}
    write_shard(tmp_path / "features-00000.h5", "features", {"feature": np.zeros((4, 1024), np.float32)}, attrs)
    assert check_file(tmp_path / "features-00000.h5") == []
    build_index(tmp_path / "index.h5", [tmp_path / "features-00000.h5"], "features")
    with h5py.File(tmp_path / "index.h5", "a") as f:
        f["mean"] = np.zeros(1024, np.float32)
        f["std"] = np.ones(512, np.float32)
    assert check_file(tmp_path / "index.h5") == [f"{tmp_path / 'index.h5'}: dataset std: dimension D=512, elsewhere 1024"]


def test_unknown_kind_is_refused(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.attrs["kind"] = "movies"
    assert "not a kind of the spec" in check_file(tmp_path / "x.h5")[0]
    with pytest.raises(KeyError):
        write_shard(tmp_path / "y.h5", "movies", {}, {})


def test_the_tests_data_sets_conform(datasets, tmp_path):
    """his.data.small_sets.DataSets writes through the real writers: every file it makes passes the checker."""
    clips = datasets.clips(tmp_path / "clips", shard_clips=7)
    given = datasets.clips(tmp_path / "given", ["A", "B"], label=[0, 1, 1], split=[0, 0, 1], window_s=0.1)
    features = datasets.features(clips)
    images = datasets.images(tmp_path / "images", n=5)
    files = [clips / "index.h5", *sorted((clips / "shards").glob("clips-*.h5")), given / "index.h5",
             *sorted((given / "shards").glob("clips-*.h5")), features / "index.h5",
             *sorted(features.glob("features-*.h5")), images / "index.h5", *sorted(images.glob("images-*.h5"))]
    assert len(files) == 5 + 2 + 5 + 2  # 24 clips in shards of 7, 3 clips in one, 5 images in one
    for f in files:
        assert check_file(f) == [], f
    with h5py.File(clips / "index.h5") as f:
        assert len(f["label"]) == 24 and set(np.bincount(f["group"][()] + 10 * f["label"][()])) == {0, 2}
        assert f["split"][()].sum() == 6  # the last of the 4 groups of each class
    with h5py.File(features / "index.h5") as f:
        assert f["feature"].shape == (24, 12) and f["mean"].shape == (12,)


def test_the_data_layer_imports_no_stage_above_it():
    """his.data.* is below the stages that use it: no module under his/data/ imports his.audio, his.train,
    his.eval or hpc, not even inside a function."""
    above = ("his.audio", "his.train", "his.eval", "hpc")
    data_dir = Path(__file__).parents[1] / "his" / "data"
    modules = sorted(data_dir.rglob("*.py"))
    assert data_dir / "small_sets.py" in modules and data_dir / "feature_sets.py" in modules
    for path in modules:
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:  # a relative import stays in his.data
                imported.add(node.module)
        assert sorted(m for m in imported if any(m == a or m.startswith(a + ".") for a in above)) == [], path
