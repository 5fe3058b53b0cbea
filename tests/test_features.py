"""SoundNet feature extraction: spec-conforming shards, train-only standardisation, keyed and skipped re-runs."""

import h5py
import numpy as np
import pytest

from his.audio.features import FeaturesConfig, run
from his.audio.finetune import FinetuneConfig, run as finetune
from his.data.dataset import load_features, load_split
from his.data.feature_sets import train_statistics
from his.data.spec import check_file


def test_train_statistics_ignore_test_rows():
    raw = np.array([[1.0, 2.0], [3.0, 4.0], [100.0, -50.0]], np.float32)
    mean, std = train_statistics(raw, np.array([0, 0, 1]))
    np.testing.assert_allclose(mean, [2.0, 3.0])
    np.testing.assert_allclose(std, [1.0, 1.0])


def test_features_pretrained_then_finetuned(datasets, tmp_path):
    clips = datasets.clips(tmp_path / "clips", groups_per_class=3, clips_per_group=2, shard_clips=7)
    index = clips / "index.h5"
    cfg = FeaturesConfig(data=str(index.parent), batch_size=4, max_points=10)
    summary = run(cfg)
    out = tmp_path / "clips" / "features" / summary["checkpoint_sha256"][:12]
    assert summary["extracted_shards"] == 3 and summary["rows"] == 18 and summary["dim"] == 1024
    files = sorted(out.glob("features-*.h5")) + [out / "index.h5"]
    assert len(files) == 4
    for path in files:
        assert check_file(path) == [], path
    with h5py.File(out / "index.h5") as f:
        assert f.attrs["layer"] == "conv7" and f.attrs["checkpoint_sha256"] == summary["checkpoint_sha256"]

    # Standardised with the train split only: the train rows, not all rows, have zero mean and unit std.
    train, test = load_features(out, "train"), load_features(out, "test")
    assert len(train) == 12 and len(test) == 6
    assert np.abs(train.mean(axis=0)).max() < 1e-4
    varying = train.std(axis=0) > 0.1
    np.testing.assert_allclose(train[:, varying].std(axis=0), 1.0, atol=1e-3)
    assert np.abs(np.concatenate([train, test]).mean(axis=0)).max() > 1e-2

    assert (out / "pca.png").stat().st_size > 1000
    assert list((out / "tb").rglob("projector_config.pbtxt"))

    # Same checkpoint again: nothing to do, nothing rewritten.
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = run(cfg)
    assert again["extracted_shards"] == 0 and again["skipped_shards"] == 3
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes

    # Raw files are kept per layer: one of another layer in the directory (as an older layout left them) is not
    # taken for this layer's when the set is indexed again.
    for job in sorted((out / "raw" / "conv7").glob("*.npy")):
        np.save(out / "raw" / job.name, np.zeros((len(np.load(job)), 384), np.float32))
    (out / "index.h5").unlink()
    rebuilt = run(cfg)
    assert rebuilt["extracted_shards"] == 0 and rebuilt["dim"] == 1024

    # A fine-tuned checkpoint gets its own feature set, from its own layer.
    tuned = finetune(FinetuneConfig(data=str(index.parent), out=str(tmp_path / "run"), train_layers="head",
                                    epochs=1, batch_size=4, layer="conv6"))
    summary2 = run(FeaturesConfig(data=str(index.parent), checkpoint=tuned["checkpoint"], figure=False))
    assert summary2["checkpoint_sha256"] != summary["checkpoint_sha256"]
    assert summary2["layer"] == "conv6" and summary2["dim"] == 512
    assert len(load_features(tmp_path / "clips" / "features" / summary2["checkpoint_sha256"][:12], None)) == 18
    assert len(load_split(index, None, ["label"])["label"]) == 18
    with pytest.raises(FileNotFoundError, match="no index.h5"):
        load_features(tmp_path / "clips" / "features", None)


def test_ray_actor_pool_matches_in_process(datasets, tmp_path):
    import ray

    from hpc.features import PoolFeaturesConfig, run as run_pool

    local = datasets.clips(tmp_path / "a", groups_per_class=2, clips_per_group=2, shard_clips=5)
    pooled = datasets.clips(tmp_path / "b", groups_per_class=2, clips_per_group=2, shard_clips=5)
    expected = run(FeaturesConfig(data=str(local), figure=False))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_pool(PoolFeaturesConfig(data=str(pooled), figure=False, actors=2))
    finally:
        ray.shutdown()
    assert summary["extracted_shards"] == 3 and summary["checkpoint_sha256"] == expected["checkpoint_sha256"]
    np.testing.assert_allclose(load_features(summary["features_dir"], None),
                               load_features(expected["features_dir"], None), rtol=1e-5, atol=1e-5)


def test_train_statistics_floor_the_std_of_nearly_dead_units():
    raw = np.array([[0.0, 1e-6], [2.0, 0.0], [4.0, 2e-6], [9.0, 9.0]], np.float32)  # column 1 barely moves
    mean, std = train_statistics(raw, np.array([0, 0, 0, 1]))
    spread = np.std([0.0, 2.0, 4.0])
    np.testing.assert_allclose(std[0], spread, rtol=1e-6)
    floor = 0.1 * (spread + np.std([1e-6, 0.0, 2e-6])) / 2
    np.testing.assert_allclose(std[1], floor, rtol=1e-4)  # a held-out 9.0 is z = 9 / floor, not 9 / 1e-6


def test_non_finite_features_are_never_written(datasets, tmp_path):
    """NaN or inf from the network (here put in by hand) stops the set before any file of it is written,
    naming the clip shard and rows they came from."""
    from his.data.feature_sets import clip_shards, write_features
    from his.io import InputError

    clips = datasets.clips(tmp_path / "clips", groups_per_class=3, clips_per_group=2, shard_clips=7)
    shards = clip_shards(clips / "index.h5")
    raw = np.ones((sum(n for _, n in shards), 4), np.float32)
    raw[9, 1], raw[12, 0] = np.nan, -np.inf  # rows 2 and 5 of the second shard
    out = tmp_path / "features"
    with pytest.raises(InputError, match=r"clips-00001.h5: the features of rows 2, 5 are NaN or inf; not written"):
        write_features(out, shards, raw, np.zeros(4, np.float32), np.ones(4, np.float32),
                       {"layer": "x", "checkpoint": "x", "checkpoint_sha256": "x"})
    assert not out.exists()


def test_a_feature_set_whose_standardisation_is_not_finite_is_refused(datasets, tmp_path):
    """What his.generate standardises a new sound with: a NaN in the set's mean is one line naming it."""
    import torch

    from his.audio.features import load_feature_extractor
    from his.io import InputError

    clips = datasets.clips(tmp_path / "clips", groups_per_class=3, clips_per_group=2, shard_clips=7)
    features = datasets.features(clips, dim=4)
    with h5py.File(features / "index.h5", "a") as f:
        f["mean"][3] = np.nan
    with pytest.raises(InputError, match=f"^{features / 'index.h5'}: its mean or std holds NaN or inf"):
        load_feature_extractor(features, torch.device("cpu"))
