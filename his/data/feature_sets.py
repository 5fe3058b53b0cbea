"""The feature set's on-disk format (kind "features" of datasets.h5.spec): where a feature set lives, the clip
shards it mirrors row for row, the train-split standardisation statistics, and the writer of its feature shards,
index.h5 and manifest.json. The SoundNet feature-extraction stage writes its features through it, and
his.data.small_sets the small feature sets of the tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from his.data.dataset import non_finite_rows, open_set, row_list
from his.data.manifest import MANIFEST, source_problems
from his.data.shards import build_index, new_hdf5, write_manifest
from his.data.spec import encode_attr, kind_spec, storage_options
from his.io import InputError


def features_dir_for(data: str, checkpoint_sha256: str, other_layer: str = "") -> Path:
    """CLIPS/features/<sha12>/ for the checkpoint's own layer, <sha12>-<layer>/ for `other_layer`."""
    return Path(data) / "features" / (checkpoint_sha256[:12] + (f"-{other_layer}" if other_layer else ""))


def clip_shards(index_path: Path) -> list[tuple[Path, int]]:
    """The clip shards behind the index's virtual `audio` dataset, in row order, with their row counts."""
    with open_set(index_path, "clips") as f:
        sources = sorted(f["audio"].virtual_sources(), key=lambda s: s.vspace.get_select_bounds()[0][0])
        shards = []
        for s in sources:
            (start, _), (end, _) = s.vspace.get_select_bounds()
            shards.append((index_path.parent / s.file_name, end - start + 1))
    return shards


def is_complete(features_dir: Path, total_rows: int) -> bool:
    """Whether the feature set in `features_dir` is whole: its index.h5 and every source it names there, `mean`
    and `std` in it, and `total_rows` feature rows."""
    index = features_dir / "index.h5"
    if not index.exists() or source_problems(index):
        return False
    with h5py.File(index, "r") as f:
        return "mean" in f and "std" in f and len(f["feature"]) == total_rows


def train_statistics(raw: np.ndarray, split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per dimension over the train rows (split == 0) only."""
    train = raw[split == 0].astype(np.float64)
    if len(train) == 0:
        raise ValueError("no train clips to standardise with")
    std = train.std(axis=0)
    # A floor, as fine-tuning has: units nearly dead on the train clips (std ~1e-5) otherwise give a held-out
    # sound z-scores in the hundreds, far outside anything the GAN was trained on.
    floor = 0.1 * float(std.mean()) + 1e-8
    return train.mean(axis=0).astype(np.float32), np.maximum(std, floor).astype(np.float32)


def refuse_non_finite(features: np.ndarray, clip_shard: str | os.PathLike) -> None:
    """InputError naming the clip shard and rows whose `features` hold NaN or inf: such features are never
    written (a reader would refuse them; a training would end on a non-finite loss)."""
    bad = non_finite_rows(features)
    if len(bad):
        raise InputError(f"{clip_shard}: the features of {row_list(bad)} are NaN or inf; not written")


def write_feature_shard(path: Path, feature: np.ndarray, attrs: dict) -> None:
    """One feature shard, atomically, laid out as datasets.h5.spec says. (his.data.shards.write_shard cannot
    resolve the spec's free dimension "D" in the shape of an empty shard, hence this writer.)"""
    spec = kind_spec("features")
    values = {"spec_version": spec["attrs"]["spec_version"]["value"], "kind": "features", "role": "shard", **attrs}
    with new_hdf5(path) as f:
        for name, value in values.items():
            f.attrs[name] = encode_attr(value, spec["attrs"][name]["type"])
        f.create_dataset("feature", data=feature, **storage_options("features", "feature", attrs, feature.shape))


def write_features(features_dir: Path, clip_shards: list[tuple[str | os.PathLike, int]], raw: np.ndarray,
                   mean: np.ndarray, std: np.ndarray, attrs: dict) -> Path:
    """The feature set of `raw` (float (N, D), the rows of every clip shard in order): `(raw - mean) / std` in
    feature shards mirroring `clip_shards` ((path, rows) each, clips-NNNNN.h5 -> features-NNNNN.h5) and
    index.h5 over them holding `mean` and `std`. `attrs` are the spec's features attrs (layer, checkpoint,
    checkpoint_sha256, ...). Returns the index path."""
    if sum(rows for _, rows in clip_shards) != len(raw):
        raise ValueError(f"{len(raw)} feature rows for {sum(rows for _, rows in clip_shards)} clips")
    standardised = (raw - mean) / std
    row = 0
    for clip_shard, rows in clip_shards:  # all checked before any is written
        refuse_non_finite(standardised[row : row + rows], clip_shard)
        row += rows
    features_dir = Path(features_dir)
    features_dir.mkdir(parents=True, exist_ok=True)
    (features_dir / MANIFEST).unlink(missing_ok=True)  # it vouches for the shards written below, once they are
    shard_paths, row = [], 0
    for clip_shard, rows in clip_shards:
        path = features_dir / Path(clip_shard).name.replace("clips-", "features-")
        write_feature_shard(path, standardised[row : row + rows], attrs)
        shard_paths.append(path)
        row += rows
    index = features_dir / "index.h5"
    build_index(index, shard_paths, "features", {"mean": mean, "std": std})
    write_manifest(features_dir / MANIFEST, "features", shard_paths,
                   {"layer": attrs["layer"], "checkpoint_sha256": attrs["checkpoint_sha256"]})
    return index
