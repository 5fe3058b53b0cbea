"""SoundNet features of the clip data set: extraction, train-split standardisation, feature shards, Figure 1.

Layout (docs/contracts.md, kind "features" of datasets.h5.spec):
    CLIPS_OUT/features/<sha12>/raw/clips-NNNNN.npy    raw time-averaged activations, one file per clip shard
    CLIPS_OUT/features/<sha12>/features-NNNNN.h5      standardised `feature`, mirroring clips-NNNNN.h5 row for row
    CLIPS_OUT/features/<sha12>/index.h5                virtual `feature` over the shards, plus `mean`, `std`
    CLIPS_OUT/features/<sha12>/pca.png, tb/            Figure 1 and the TensorBoard projector
<sha12> is the first 12 hex digits of the sha256 of the checkpoint that made them (of the converted
pretrained weights when no checkpoint is given), so a new checkpoint never mixes with old features; features
of another layer than the checkpoint's own go to <sha12>-<layer>/. Raw
features that exist are not extracted again; when nothing is new and the index is complete, a run does nothing.

The set's format and writer (features_dir_for, clip_shards, train_statistics, write_features, is_complete) live
in his.data.feature_sets. This module extracts in one process; hpc.features spreads the same per-shard work over
a Ray actor pool. Either holds the features directory as its one writer (his.io.exclusive_dir) and writes
manifest.json there last, so readers check the feature shards as they check the clip shards.

    python -m his.audio.features [CONFIG.toml] data=demo/clips checkpoint=demo/soundnet/soundnet_finetuned.pt
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from his.audio.finetune import load_checkpoint
from his.audio.soundnet import SoundNet8, cache_dir, load_pretrained, pretrained_state_dict
from his.config import ConfigError, stage_main
from his.data.dataset import load_features, load_split, non_finite_rows, open_set, read_classes
from his.data.feature_sets import (clip_shards, features_dir_for, is_complete, refuse_non_finite, train_statistics,
                                   write_features)
from his.data.shards import code_version, now_utc, sha256_file
from his.data.spec import decode_attr
from his.distributed import choose_device
from his.io import InputError, atomic_path, exclusive_dir

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


@dataclasses.dataclass
class FeaturesConfig:
    data: str = "demo/clips"  # clip data set directory (holds index.h5)
    checkpoint: str = ""  # fine-tuned SoundNet checkpoint; "" = the pretrained SoundNet-8
    layer: str = ""  # "" = the checkpoint's layer (conv7 for the pretrained network)
    batch_size: int = 32
    device: str = "auto"  # "auto": cuda when available
    figure: bool = True  # PCA figure and TensorBoard projector
    max_points: int = 2000  # clips shown in the projector (a random subset beyond this)


@dataclasses.dataclass
class ShardJob:
    clip_shard: str  # path of clips-NNNNN.h5
    raw_path: str  # where its raw features go
    rows: int


def checkpoint_identity(checkpoint: str) -> tuple[str, str]:
    """(path, sha256) of the weights that make the features."""
    if not checkpoint:
        pretrained_state_dict()  # makes sure the converted weights are cached
        checkpoint = str(cache_dir() / "soundnet8.pt")
    elif not Path(checkpoint).is_file():
        raise ConfigError(f"config: checkpoint={checkpoint!r}: no such file")
    return checkpoint, sha256_file(checkpoint)


def load_feature_model(checkpoint: str, layer: str, device: torch.device) -> tuple[SoundNet8, str]:
    """The SoundNet-8 of `checkpoint` (pretrained when "") in eval mode, and the layer to read."""
    if not checkpoint:
        return load_pretrained(device), layer or "conv7"
    classifier, meta = load_checkpoint(checkpoint, device)
    return classifier.soundnet, layer or meta["layer"]


@dataclasses.dataclass
class FeatureExtractor:
    """Makes the feature of new sounds exactly as a stored feature set made its own: the same SoundNet-8 and
    layer, then the set's train-split standardisation."""

    model: SoundNet8
    layer: str
    mean: np.ndarray  # float32 (D,)
    std: np.ndarray

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """int16 PCM windows (n, S) -> standardised float32 (n, D)."""
        return (extract_batch(self.model, audio, self.layer) - self.mean) / self.std


def load_feature_extractor(features_dir: str | os.PathLike, device: torch.device) -> FeatureExtractor:
    """The FeatureExtractor of the feature set in `features_dir`, from its index.h5: the weights its attrs
    name (checked against their sha256; the pretrained SoundNet when that is the sha256 of its weights),
    its layer, and its `mean` and `std`."""
    index = Path(features_dir) / "index.h5"
    if not index.is_file():
        raise ConfigError(f"config: features={str(features_dir)!r}: no index.h5 there")
    with h5py.File(index, "r") as f:
        if "mean" not in f or "std" not in f:
            raise ConfigError(f"config: {index} has no mean and std to standardise a new sound with")
        checkpoint, sha, layer = (decode_attr(f.attrs[k], "str") for k in ("checkpoint", "checkpoint_sha256", "layer"))
        mean, std = f["mean"][()], f["std"][()]
    if len(non_finite_rows(np.stack([mean, std]))):
        raise InputError(f"{index}: its mean or std holds NaN or inf (rerun hpc.features)")
    if sha == checkpoint_identity("")[1]:
        return FeatureExtractor(load_pretrained(device), layer, mean, std)
    if not Path(checkpoint).is_file() or sha256_file(checkpoint) != sha:
        raise ConfigError(f"config: {index} was made by {checkpoint} (sha256 {sha[:12]}), "
                          "which is missing or has changed since")
    model, _ = load_feature_model(checkpoint, layer, device)
    return FeatureExtractor(model, layer, mean, std)


def feature_layer(checkpoint: str, layer: str) -> str:
    """The layer to read: `layer` when given, else the checkpoint's head layer (conv7 when pretrained)."""
    if layer or not checkpoint:
        return layer or "conv7"
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["layer"]


def locate_features(cfg: FeaturesConfig) -> tuple[Path, str, str]:
    """(the features directory of cfg's checkpoint and layer, the checkpoint path, its sha256)."""
    checkpoint, sha = checkpoint_identity(cfg.checkpoint)
    own_layer = feature_layer(cfg.checkpoint, "")
    return features_dir_for(cfg.data, sha, cfg.layer if cfg.layer not in ("", own_layer) else ""), checkpoint, sha


def plan(cfg: FeaturesConfig) -> tuple[Path, str, str, list[ShardJob]]:
    """(features directory, checkpoint path, sha256, one job per clip shard)."""
    out, checkpoint, sha = locate_features(cfg)
    # raw/<layer>/: a raw file left by an extraction of another layer into this directory is never taken for this one
    raw = out / "raw" / feature_layer(cfg.checkpoint, cfg.layer)
    jobs = [ShardJob(str(shard), str(raw / (shard.stem + ".npy")), rows)
            for shard, rows in clip_shards(Path(cfg.data) / "index.h5")]
    return out, checkpoint, sha, jobs


@torch.no_grad()
def extract_batch(model: SoundNet8, audio: np.ndarray, layer: str) -> np.ndarray:
    """int16 PCM windows (n, S) -> float32 (n, C): `layer` after its ReLU, averaged over time."""
    device = next(model.parameters()).device
    waveform = torch.from_numpy(audio.astype(np.float32) / 32768.0).to(device)
    return model.embed(waveform, layer).float().cpu().numpy()


def extract_shard(model: SoundNet8, layer: str, job: ShardJob, batch_size: int) -> int:
    """Raw features of one clip shard, read in batches, saved atomically to job.raw_path; returns the rows."""
    with open_set(job.clip_shard, "clips") as f:  # a damaged chunk: one line naming the shard and rows
        audio = f["audio"]
        features = np.concatenate([extract_batch(model, audio[i : i + batch_size], layer)
                                   for i in range(0, len(audio), batch_size)])
    refuse_non_finite(features, job.clip_shard)
    Path(job.raw_path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(job.raw_path) as tmp, open(tmp, "wb") as out:
        np.save(out, features)
    return len(features)


def finish(cfg: FeaturesConfig, features_dir: Path, checkpoint: str, sha: str, jobs: list[ShardJob],
           layer: str) -> dict:
    """Standardise with train-split statistics, write the feature shards and the index, probe and draw."""
    index_path = Path(cfg.data) / "index.h5"
    raw = np.concatenate([np.load(job.raw_path) for job in jobs])
    split = load_split(index_path, None, ["split"])["split"]
    mean, std = train_statistics(raw, split)
    attrs = {"layer": layer, "checkpoint": str(checkpoint), "checkpoint_sha256": sha,
             "code_version": code_version(), "created": now_utc()}
    write_features(features_dir, [(job.clip_shard, job.rows) for job in jobs], raw, mean, std, attrs)

    summary = {"features_dir": str(features_dir), "checkpoint_sha256": sha, "layer": layer, "rows": len(raw),
               "dim": raw.shape[1], "linear_probe_test_accuracy": linear_probe(index_path, features_dir)}
    if cfg.figure:
        summary["figure"] = str(figure_1(index_path, features_dir, cfg.max_points))
    return summary


def pending_jobs(jobs: list[ShardJob]) -> list[ShardJob]:
    return [job for job in jobs if not Path(job.raw_path).exists()]


def summary_if_complete(features_dir: Path, sha: str, jobs: list[ShardJob]) -> dict | None:
    """The summary of a feature set that is already complete for these jobs (nothing to do), else None."""
    if pending_jobs(jobs) or not is_complete(features_dir, sum(job.rows for job in jobs)):
        return None
    return {"features_dir": str(features_dir), "checkpoint_sha256": sha, "extracted_shards": 0,
            "skipped_shards": len(jobs)}


def hold(features_dir: Path, what: str) -> contextlib.AbstractContextManager[Path]:
    """The features directory held by one writer, `what`, its stale temporary files (and raw/'s) removed."""
    layers = [str(p.relative_to(features_dir)) for p in (features_dir / "raw").glob("*") if p.is_dir()]
    return exclusive_dir(features_dir, what, temp_dirs=("", "raw", *layers))


def run(cfg: FeaturesConfig) -> dict:
    """Extract (in this process) the shards not yet extracted, then standardise and index; returns a summary."""
    features_dir, checkpoint, sha, jobs = plan(cfg)
    with hold(features_dir, "his.audio.features"):
        done = summary_if_complete(features_dir, sha, jobs)
        if done is not None:
            return done
        pending = pending_jobs(jobs)
        model, layer = load_feature_model(cfg.checkpoint, cfg.layer, choose_device(cfg.device))
        for job in tqdm(pending, desc="soundnet features"):
            extract_shard(model, layer, job, cfg.batch_size)
        summary = finish(cfg, features_dir, checkpoint, sha, jobs, layer)
    return {**summary, "extracted_shards": len(pending), "skipped_shards": len(jobs) - len(pending)}


def linear_probe(index_path: Path, features_dir: Path, epochs: int = 300, weight_decay: float = 1e-3) -> float:
    """Test accuracy of a multinomial logistic regression fitted on the train split's standardised features."""
    x_train = torch.from_numpy(load_features(features_dir, "train"))
    x_test = torch.from_numpy(load_features(features_dir, "test"))
    y_train = torch.from_numpy(load_split(index_path, "train", ["label"])["label"].astype(np.int64))
    y_test = torch.from_numpy(load_split(index_path, "test", ["label"])["label"].astype(np.int64))
    if len(y_test) == 0:
        return float("nan")
    probe = torch.nn.Linear(x_train.shape[1], len(read_classes(index_path)))
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=weight_decay)
    for _ in range(epochs):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(probe(x_train), y_train).backward()
        optimizer.step()
    with torch.no_grad():
        return float((probe(x_test).argmax(1) == y_test).float().mean())


def pca_2d(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def draw_scatter(points: np.ndarray, labels: np.ndarray, classes: list[str], path: Path, title: str,
                 size: int = 640) -> None:
    """A scatter plot coloured by class, with a legend, as PNG (Pillow: matplotlib is not a dependency)."""
    margin, legend_w = 40, 170
    image = Image.new("RGB", (size + legend_w, size), "white")
    draw = ImageDraw.Draw(image)
    lo, hi = points.min(axis=0), points.max(axis=0)
    scale = (size - 2 * margin) / np.maximum(hi - lo, 1e-9)
    xy = (points - lo) * scale + margin
    xy[:, 1] = size - xy[:, 1]  # y grows upwards
    draw.rectangle([margin - 10, margin - 10, size - margin + 10, size - margin + 10], outline=(160, 160, 160))
    for (x, y), label in zip(xy, labels):
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=PALETTE[label % len(PALETTE)])
    draw.text((margin, 12), title, fill="black")
    draw.text((size // 2 - 10, size - 22), "PC 1", fill="black")
    draw.text((6, size // 2), "PC 2", fill="black")
    for i, name in enumerate(classes):
        y = margin + 20 * i
        draw.ellipse([size + 10, y, size + 20, y + 10], fill=PALETTE[i % len(PALETTE)])
        draw.text((size + 28, y - 1), name, fill="black")
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def figure_1(index_path: Path, features_dir: Path, max_points: int = 2000, seed: int = 0) -> Path:
    """pca.png (2-D PCA of all standardised features by class) and a TensorBoard projector under tb/."""
    features = load_features(features_dir, None)
    clips = load_split(index_path, None, ["label", "frame64"])
    classes = read_classes(index_path)
    png = features_dir / "pca.png"
    draw_scatter(pca_2d(features), clips["label"], classes, png,
                 f"SoundNet features, 2-D PCA ({len(features)} clips, {features.shape[1]}-d)")

    rng = np.random.default_rng(seed)
    shown = np.sort(rng.permutation(len(features))[:max_points])
    thumbnails = torch.from_numpy(clips["frame64"][shown]).permute(0, 3, 1, 2).float() / 255
    with SummaryWriter(str(features_dir / "tb")) as writer:
        writer.add_embedding(torch.from_numpy(features[shown]), metadata=[classes[i] for i in clips["label"][shown]],
                             label_img=thumbnails, tag="soundnet_features")
    return png


def main(argv: list[str] | None = None) -> int:
    return stage_main(FeaturesConfig, run, argv, prog="his.audio.features", doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
