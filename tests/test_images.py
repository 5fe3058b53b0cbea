import json
import subprocess
import sys

import h5py
import numpy as np
from PIL import Image

from his.data.images import ingest, load_image


def make_tree(root):
    rng = np.random.default_rng(0)
    (root / "cello" / "play").mkdir(parents=True)
    (root / "cello" / "with").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(root / "cello" / "play" / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (90, 50, 3), dtype=np.uint8)).save(root / "cello" / "play" / "b.png")
    Image.fromarray(rng.integers(0, 256, (70, 70), dtype=np.uint8)).save(root / "cello" / "with" / "grey.png")
    (root / "cello" / "with" / "notes.txt").write_text("not an image")
    (root / "cello" / "with" / "cut.jpg").write_bytes((root / "cello" / "play" / "a.jpg").read_bytes()[:200])
    return root


def test_ingest_writes_shards_index_and_reports_bad_files(tmp_path):
    src = make_tree(tmp_path / "ppmi")
    report = ingest(src, tmp_path / "out", shard_images=2)
    assert report["images"] == 3
    assert sorted(s["path"].rsplit("/", 1)[1] for s in report["skipped"]) == ["cut.jpg", "notes.txt"]
    assert len(list((tmp_path / "out").glob("images-*.h5"))) == 2
    with h5py.File(tmp_path / "out" / "index.h5", "r") as f:
        assert f["image"].shape == (3, 64, 64, 3) and f["image"].dtype == np.uint8
        assert f["image"].is_virtual
        assert f.attrs["kind"] == "images"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["rows"] == 3 and len(manifest["shards"]) == 2
    assert json.loads((tmp_path / "out" / "report.json").read_text())["skipped"] == report["skipped"]


def test_ingest_output_passes_the_spec_check(tmp_path):
    ingest(make_tree(tmp_path / "ppmi"), tmp_path / "out", shard_images=2)
    files = [str(p) for p in sorted((tmp_path / "out").glob("*.h5"))]
    proc = subprocess.run([sys.executable, "-m", "his.data.spec", "check", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rerun_over_unchanged_inputs_does_nothing(tmp_path, caplog):
    src = make_tree(tmp_path / "ppmi")
    ingest(src, tmp_path / "out")
    before = (tmp_path / "out" / "images-00000.h5").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="his.data.images"):
        ingest(src, tmp_path / "out")
    assert "up to date" in caplog.text
    assert (tmp_path / "out" / "images-00000.h5").stat().st_mtime_ns == before


def test_load_image_resizes_the_shorter_side_and_centre_crops(tmp_path):
    # a wide image: left third red, middle green, right third blue -> the centre crop is green
    a = np.zeros((64, 192, 3), np.uint8)
    a[:, :64, 0], a[:, 64:128, 1], a[:, 128:, 2] = 255, 255, 255
    Image.fromarray(a).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png")
    assert out.shape == (64, 64, 3)
    assert out[:, 8:56, 1].min() > 200 and out[:, 8:56, [0, 2]].max() < 50
    assert load_image(tmp_path / "wide.png", crop=(32, 32)).shape == (64, 64, 3)
