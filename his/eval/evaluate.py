"""Evaluate a sound-to-image generator with numbers: conditional accuracy, retrieval, FID/KID, diversity and
attribute following, all in the feature space of our own frame classifier; then results.json, results.md,
Figure 7 and Figure 8 as PNGs, and the same to TensorBoard.

Works on arrays: real frames and labels (EvalData), and generated samples uint8 (n_test, K, 64, 64, 3), one
row per held-out test clip, which `generate_samples` draws from any generator callable.

The shuffled-sound control (`generate_shuffled`): each test clip's images drawn again, with the same noise, from
the sound of a test clip of another class. When images follow the sound, the classifier almost never reads the
clip's own class off them (`shuffled_accuracy` near 0) and reads the sound's class as often as it reads the
class in the normal samples (`shuffled_follows_sound` near `conditional_accuracy`); a generator that ignores
the sound scores the same `shuffled_accuracy` as its `conditional_accuracy`.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from his.eval import figures
from his.eval.data import EvalData, EvalSettings
from his.eval.metrics import (
    diversity,
    frechet_distance,
    heard_class_ceiling,
    kernel_distance,
    linear_probe,
    mean_interval,
    mean_pairwise_distance,
    nearest_distance,
    nearest_rows,
    retrieval_recall,
    spearman,
    within_class_spearman,
    within_class_spearman_interval,
)
from his.eval.report import RETRIEVAL_BASELINES, eval_report, format_interval, format_number, summary_rows
from his.frame_classifier import FrameNet, run_net, train_classifier, train_regressor
from his.hparams import log_hparams
from his.io import atomic_path, write_json
from his.sampling import GenerateFn, generate_samples


@dataclass
class ShuffledSounds:
    """The shuffled-sound control: row i of `samples` (n_test, K, 64, 64, 3) was drawn from the sound of test
    clip `sounds[i]`, a clip of another class than clip i."""

    sounds: np.ndarray
    samples: np.ndarray


def cross_class_derangement(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """For each clip, the index of a clip of another class: int (n,), the same for the same labels and seed.

    A permutation (every sound used once, so the sounds keep the clips' class balance) when no class holds more
    than half of the clips; otherwise none exists, and each clip draws one of another class at random.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise ValueError("the shuffled-sound control needs clips of at least two classes")
    rng = np.random.default_rng(seed)
    largest = int(counts.max())
    if 2 * largest > len(labels):
        return np.array([rng.choice(np.flatnonzero(labels != label)) for label in labels])
    # The clips in blocks by class (random class order, random order within a class), each taking the clip
    # `largest` places further round: no block is longer than that, so that clip lies in another block.
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in rng.permutation(classes)])
    sounds = np.empty(len(labels), np.int64)
    sounds[order] = np.roll(order, -largest)
    return sounds


def generate_shuffled(
    generate: GenerateFn,
    features: np.ndarray,
    labels: np.ndarray,
    k: int,
    z_dim: int,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> ShuffledSounds:
    """The shuffled-sound control's samples: `generate_samples` from the features of `cross_class_derangement`.

    With the same arguments as the normal samples, image (i, j) has the same noise as the normal image (i, j):
    only the sound differs.
    """
    sounds = cross_class_derangement(labels, seed)
    samples = generate_samples(generate, np.asarray(features)[sounds], k, z_dim, seed, batch_size, device)
    return ShuffledSounds(sounds, samples)


def retrieval_samples(train_features: np.ndarray, train_frames: np.ndarray, features: np.ndarray,
                      k: int) -> np.ndarray:
    """The retrieval baseline's "samples": for each sound, the real training frames of the k training clips whose
    sound features are nearest, nearest first: uint8 (n, k, 64, 64, 3). The sceptic's first question of any
    sound-to-image generator is whether it beats looking a frame up by sound."""
    return np.asarray(train_frames)[nearest_rows(features, train_features, k)]


def heard_class_retrieval_samples(train_features: np.ndarray, train_frames: np.ndarray, train_labels: np.ndarray,
                                  features: np.ndarray, heard: np.ndarray, k: int) -> np.ndarray:
    """The retrieval baseline within the heard class: for each sound i, `retrieval_samples` among only the
    training clips of class heard[i] (the class a linear probe hears in it, `heard_classes`), nearest first:
    uint8 (n, k, 64, 64, 3). It asks whether a generator beats looking a frame up where the retrieval generator
    with heard_class=True looks. A heard class with fewer than k training clips gives all of them, nearest first,
    repeated in that order up to k, so that every sound has k samples."""
    train_features, train_frames, train_labels = (np.asarray(a) for a in (train_features, train_frames, train_labels))
    features, heard = np.asarray(features), np.asarray(heard)
    looked_up = np.empty((len(features), k, *train_frames.shape[1:]), train_frames.dtype)
    for c in np.unique(heard):
        of_class, heard_as_c = train_labels == c, heard == c
        found = retrieval_samples(train_features[of_class], train_frames[of_class], features[heard_as_c], k)
        looked_up[heard_as_c] = np.take(found, np.arange(k), axis=1, mode="wrap")
    return looked_up


def heard_classes(data: EvalData) -> np.ndarray | None:
    """The class a linear probe, fitted on the training sounds' features, hears in each test sound: int
    (n_test,); None without train and test features."""
    if data.train_features is None or data.test_features is None:
        return None
    return linear_probe(data.train_features, np.asarray(data.train_labels, np.int64), data.test_features,
                        len(data.classes))


def _pixels(frames: np.ndarray) -> np.ndarray:
    return np.asarray(frames, np.float32).reshape(len(frames), -1) / 255.0


def _nearest_train_distances(train_frames: np.ndarray, test_frames: np.ndarray, samples: np.ndarray) -> dict[str, float]:
    """The memorisation check: the median pixel distance (frames in [0, 1]) from a generated image to its nearest
    training frame, against the same for real test frames. A generator that copies its training frames draws
    images nearer to them than new real frames are (ratio < 1); the retrieval baseline is at 0."""
    train = _pixels(train_frames)
    generated = float(np.median(nearest_distance(_pixels(samples.reshape(-1, *samples.shape[2:])), train)))
    real = float(np.median(nearest_distance(_pixels(test_frames), train)))
    return {"nearest_train_distance": generated, "nearest_train_distance_real": real,
            "nearest_train_ratio": _ratio(generated, real)}


def _classify(
    classifier: FrameNet, samples: np.ndarray, settings: EvalSettings, device: torch.device | str
) -> tuple[np.ndarray, np.ndarray]:
    """Samples (n, K, 64, 64, 3) -> the class the classifier reads off each, int (n * K,), and its features
    (n * K, d); rows in the order of the samples, the K of a sound together."""
    n, k = samples.shape[:2]
    logits, feat = run_net(classifier, samples.reshape(n * k, *samples.shape[2:]), settings.batch_size, device)
    return logits.argmax(1), feat


def _per_clip(classes: list[str], labels: np.ndarray, predicted: np.ndarray,
              shuffled: ShuffledSounds | None, shuffled_predicted: np.ndarray | None) -> list[dict[str, Any]]:
    """For each test clip, from the class read off each of its K images (predicted, int (n, K)): the class read
    most often and its share, the share read as the clip's class; with the control, the clip whose sound drew
    the shuffled images and their share read as this clip's class."""
    rows = []
    for i, (label, read) in enumerate(zip(labels, predicted)):
        counts = np.bincount(read, minlength=len(classes))
        row: dict[str, Any] = {"class": classes[label], "read_as": classes[int(counts.argmax())],
                               "read_as_share": float(counts.max() / len(read)),
                               "accuracy": float(counts[label] / len(read))}
        if shuffled is not None:
            row["shuffled_sound"] = int(shuffled.sounds[i])
            row["shuffled_accuracy"] = float((shuffled_predicted[i] == label).mean())
        rows.append(row)
    return rows


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else math.nan


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _distances(
    gen: np.ndarray, test: np.ndarray, train: np.ndarray, settings: EvalSettings
) -> dict[str, float]:
    """FID and KID of generated vs real test features, and of real train vs real test (the reference)."""
    if min(len(gen), len(test), len(train)) < 2:
        return {"fid": math.nan, "fid_real": math.nan, "kid": math.nan, "kid_real": math.nan}
    kid_options = dict(subset_size=settings.kid_subset_size, n_subsets=settings.kid_subsets, seed=settings.seed)
    return {
        "fid": frechet_distance(gen, test),
        "fid_real": frechet_distance(train, test),
        "kid": kernel_distance(gen, test, **kid_options),
        "kid_real": kernel_distance(train, test, **kid_options),
    }


def _attribute_following(
    data: EvalData,
    samples: np.ndarray,
    settings: EvalSettings,
    cache_dir: str | os.PathLike | None,
    device: torch.device | str,
) -> dict[str, dict[str, float]]:
    """Spearman between each sound attribute and the value a regressor trained on real frames reads off the
    generated images (mean over the K samples of a sound); also within each class, and on real test frames."""
    names = sorted(data.train_attributes)
    train_targets = np.stack([np.asarray(data.train_attributes[a], np.float64) for a in names], axis=1)
    regressor, mean, std, _ = train_regressor(data.train_frames, train_targets, settings.regressor, cache_dir, device)
    n, k = samples.shape[:2]
    gen_out, _ = run_net(regressor, samples.reshape(n * k, *samples.shape[2:]), settings.batch_size, device)
    gen_pred = (gen_out * std + mean).reshape(n, k, len(names)).mean(1)
    real_out, _ = run_net(regressor, data.test_frames, settings.batch_size, device)
    real_pred = real_out * std + mean
    labels = np.asarray(data.test_labels)
    result = {}
    for i, name in enumerate(names):
        truth = np.asarray(data.test_attributes[name], np.float64)
        result[name] = {
            "spearman": spearman(truth, gen_pred[:, i]),
            "spearman_real": spearman(truth, real_pred[:, i]),
            "spearman_within_class": within_class_spearman(truth, gen_pred[:, i], labels),
            "spearman_within_class_95": within_class_spearman_interval(truth, gen_pred[:, i], labels),
            "spearman_within_class_real": within_class_spearman(truth, real_pred[:, i], labels),
            "spearman_within_class_real_95": within_class_spearman_interval(truth, real_pred[:, i], labels),
        }
    return result


def compute_metrics(
    data: EvalData,
    samples: np.ndarray,
    settings: EvalSettings = EvalSettings(),
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    shuffled: ShuffledSounds | None = None,
    heard: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every metric for generated samples uint8 (n_test, K, 64, 64, 3), row i from test clip i's sound; with
    `shuffled`, also the shuffled-sound control (otherwise its numbers are nan).

    `cache_dir` holds the trained classifier (and regressor) keyed by the data, so a second call is cheap.
    `heard` (`heard_classes(data)`, for the sound-limited ceiling) is fitted here when not given.
    """
    classes = list(data.classes)
    test_labels = np.asarray(data.test_labels, np.int64)
    train_labels = np.asarray(data.train_labels, np.int64)
    n, k = samples.shape[:2]
    if n != len(test_labels):
        raise ValueError(f"samples has {n} rows but there are {len(test_labels)} test clips")
    if shuffled is not None and shuffled.samples.shape[:2] != (n, k):
        raise ValueError(f"shuffled samples have shape {shuffled.samples.shape[:2]}, the samples {(n, k)}")

    classifier, classifier_path = train_classifier(
        data.train_frames, train_labels, len(classes), settings.classifier, cache_dir, device
    )
    test_logits, test_feat = run_net(classifier, data.test_frames, settings.batch_size, device)
    _, train_feat = run_net(classifier, data.train_frames, settings.batch_size, device)
    gen_predicted, gen_feat = _classify(classifier, samples, settings, device)
    gen_labels = np.repeat(test_labels, k)
    gen_clip = np.repeat(np.arange(n), k)

    ceiling_hits = test_logits.argmax(1) == test_labels
    gen_hits = gen_predicted == gen_labels
    # nan where there is no control, so the results always have the same keys
    shuffled_hits = shuffled_follows = np.full(n * k, math.nan)
    shuffled_predicted = None
    if shuffled is not None:
        shuffled_predicted, _ = _classify(classifier, shuffled.samples, settings, device)
        shuffled_hits = shuffled_predicted == gen_labels
        shuffled_follows = shuffled_predicted == np.repeat(test_labels[shuffled.sounds], k)

    heard_accuracy = heard_ceiling = math.nan
    heard = heard_classes(data) if heard is None else heard
    if heard is not None:
        heard_accuracy = float((heard == test_labels).mean())
        heard_ceiling = heard_class_ceiling(heard, test_labels, test_logits.argmax(1))

    retrieval = retrieval_recall(gen_feat, gen_clip, test_feat, test_labels)
    real_retrieval = retrieval_recall(test_feat, np.arange(n), test_feat, test_labels, exclude_self=True)

    per_class: dict[str, dict[str, float]] = {}
    for c, name in enumerate(classes):
        in_class = gen_labels == c
        if not in_class.any():
            per_class[name] = {"n_test_clips": 0}
            continue
        row: dict[str, float] = {
            "n_test_clips": int((test_labels == c).sum()),
            "ceiling_accuracy": float(ceiling_hits[test_labels == c].mean()),
            "conditional_accuracy": float(gen_hits[in_class].mean()),
            "shuffled_accuracy": float(shuffled_hits[in_class].mean()),
            **retrieval_recall(gen_feat[in_class], gen_clip[in_class], test_feat, test_labels),
        }
        row.update(_distances(gen_feat[in_class], test_feat[test_labels == c], train_feat[train_labels == c], settings))
        within, across = diversity(gen_feat[in_class].reshape(-1, k, gen_feat.shape[1]))
        # the real reference spread comes from the train frames: usually many more than the test frames
        real_spread = mean_pairwise_distance(train_feat[train_labels == c])
        row.update(
            {
                "diversity_within_sound": _ratio(within, real_spread),
                "diversity_across_sounds": _ratio(across, real_spread),
                "real_spread": real_spread,
            }
        )
        per_class[name] = row

    overall: dict[str, float] = {
        "n_test_clips": n,
        "k": k,
        "ceiling_accuracy": float(ceiling_hits.mean()),
        # what the sound tells of its class: a linear probe's accuracy on the features, and the accuracy of real
        # frames of the class that probe hears (the ceiling for a generator that hears only the sound)
        "heard_accuracy": heard_accuracy,
        "heard_ceiling": heard_ceiling,
        "conditional_accuracy": float(gen_hits.mean()),
        "conditional_accuracy_95": mean_interval(gen_hits.reshape(n, k).mean(1)),  # clips resampled
        "shuffled_accuracy": float(shuffled_hits.mean()),
        "shuffled_follows_sound": float(shuffled_follows.mean()),
        "chance_accuracy": 1 / len(classes),
        **retrieval,
        **{f"{key}_real": value for key, value in real_retrieval.items() if key.startswith("class")},
        **_distances(gen_feat, test_feat, train_feat, settings),
        # class means of the per-class distances (intra-class FID/KID): the overall distances compare two
        # mixtures of classes and cannot see whether each image came from its own class's sound
        **{
            f"intra_{key}": _nanmean([r.get(key, math.nan) for r in per_class.values()])
            for key in ("fid", "fid_real", "kid", "kid_real")
        },
        # macro means: each class's ratio is against its own real spread
        "diversity_within_sound": _nanmean([r.get("diversity_within_sound", math.nan) for r in per_class.values()]),
        "diversity_across_sounds": _nanmean([r.get("diversity_across_sounds", math.nan) for r in per_class.values()]),
        **_nearest_train_distances(data.train_frames, data.test_frames, samples),
    }
    results: dict[str, Any] = {
        "classes": classes,
        "overall": overall,
        "per_class": per_class,
        "per_clip": _per_clip(classes, test_labels, gen_predicted.reshape(n, k), shuffled,
                              None if shuffled_predicted is None else shuffled_predicted.reshape(n, k)),
        "classifier": {"cache": str(classifier_path) if classifier_path else None, **asdict(settings.classifier)},
    }
    if data.train_attributes and data.test_attributes:
        results["attributes"] = _attribute_following(data, samples, settings, cache_dir, device)
    return results


def retrieval_baseline(data: EvalData, looked_up: np.ndarray, settings: EvalSettings = EvalSettings(),
                       cache_dir: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                       heard: np.ndarray | None = None) -> dict[str, Any]:
    """Every metric of compute_metrics for a retrieval baseline (`looked_up`: `retrieval_samples` or
    `heard_class_retrieval_samples` of the test sounds, K training frames each, row i from test sound i), with its
    shuffled-sound control looked up from the same shuffled sounds as a generator's; `heard` as compute_metrics
    takes it. Returns {"overall": ..., "per_class": ..., "attributes": ...} as compute_metrics does."""
    sounds = cross_class_derangement(data.test_labels, settings.seed)
    # a lookup depends on nothing but its sound: the shuffled sound's frames are the ones it looked up
    shuffled = ShuffledSounds(sounds, looked_up[sounds])
    results = compute_metrics(data, looked_up, settings, cache_dir, device, shuffled, heard)
    return {key: results[key] for key in ("overall", "per_class", "attributes") if key in results}


# each retrieval baseline's Figure 7: the training frames that Figure 7's sounds look up
RETRIEVAL_FIGURES = {"retrieval_baseline": "figure7_retrieval",
                     "retrieval_baseline_heard_class": "figure7_retrieval_heard_class"}


def _retrieval_lookups(data: EvalData, heard: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """The training frames each retrieval baseline looks up for the test sounds, k each, by results key."""
    return {
        "retrieval_baseline": retrieval_samples(data.train_features, data.train_frames, data.test_features, k),
        "retrieval_baseline_heard_class": heard_class_retrieval_samples(
            data.train_features, data.train_frames, data.train_labels, data.test_features, heard, k),
    }


def _figure_clips(data: EvalData, settings: EvalSettings) -> tuple[list[int], tuple[int, int] | None]:
    """Test rows for Figure 7 (the first clip of each class) and Figure 8 (two clips of one class, from two
    different videos when the video ids are known)."""
    labels = np.asarray(data.test_labels)
    first_of_class = [int(np.flatnonzero(labels == c)[0]) for c in range(len(data.classes)) if (labels == c).any()]
    name = settings.figure8_class or data.classes[0]
    rows = np.flatnonzero(labels == data.classes.index(name))
    if len(rows) < 2:
        return first_of_class, None
    second = rows[1]
    if data.test_video_ids is not None:
        other_video = [r for r in rows if data.test_video_ids[r] != data.test_video_ids[rows[0]]]
        second = other_video[0] if other_video else second
    return first_of_class, (int(rows[0]), int(second))


def _markdown(results: dict[str, Any]) -> str:
    cell, interval = format_number, format_interval
    o = results["overall"]
    lines = [
        "# Evaluation",
        "",
        f"{o['n_test_clips']} held-out test clips, {o['k']} samples per sound. Features: our frame classifier's "
        "penultimate layer. *real*: the reference on real frames (classifier ceiling; train vs test frames for "
        "FID/KID; leave-one-out test frames for class retrieval). Diversity: mean pairwise feature distance, "
        "divided by that among the real train frames of the class. Shuffled sound: each clip's images drawn "
        "again, with the same noise, from the sound of a clip of another class; images that follow the sound are "
        "read as the clip's own class almost never, as the sound's class about as often as in conditional accuracy. "
        "Retrieval baseline: for each sound, the training frames of the K training clips whose sound features are "
        "nearest, scored as if generated; a generator that does not beat it has not learned to draw sound. "
        "Retrieval baseline, heard class: the same, among only the training clips of the class a linear probe hears "
        "in the sound. Nearest training frame: a generator that copies draws images nearer to its training frames "
        "than new real frames are.",
        "",
        "| metric | generated | " + " | ".join(RETRIEVAL_BASELINES.values()) + " | real |",
        "|---|---|" + "---|" * len(RETRIEVAL_BASELINES) + "---|",
        *(f"| {name} | " + " | ".join(cell(v) for v in values) + " |" for name, *values in summary_rows(results)),
        "",
        "| class | clips | accuracy | ceiling | accuracy, shuffled sound | R@1 own | R@5 own | R@1 class | FID "
        "| FID real | KID | KID real | div. within | div. across |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["per_class"].items():
        keys = ["n_test_clips", "conditional_accuracy", "ceiling_accuracy", "shuffled_accuracy", "own_r1", "own_r5",
                "class_r1", "fid", "fid_real", "kid", "kid_real", "diversity_within_sound", "diversity_across_sounds"]
        lines.append(f"| {name} | " + " | ".join(cell(r.get(key, math.nan)) for key in keys) + " |")
    if "attributes" in results:
        lines += [
            "",
            "Attribute following (Spearman between a sound's attribute and the value read off its images):",
            "",
            "| attribute | generated | real | generated, within class [95% bootstrap] | real, within class [95%] |",
            "|---|---|---|---|---|",
        ]
        for name, a in results["attributes"].items():
            lines.append(
                f"| {name} | {cell(a['spearman'])} | {cell(a['spearman_real'])} "
                f"| {cell(a['spearman_within_class'])} {interval(a.get('spearman_within_class_95'))} "
                f"| {cell(a['spearman_within_class_real'])} {interval(a.get('spearman_within_class_real_95'))} |"
            )
    if "figures" in results:
        lines += ["", *(f"- {name}: `{path}`" for name, path in results["figures"].items())]
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    """NaN is not JSON: write it as null."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def evaluate(
    data: EvalData,
    samples: np.ndarray,
    out_dir: str | os.PathLike,
    settings: EvalSettings = EvalSettings(),
    cache_dir: str | os.PathLike | None = None,
    log_dir: str | os.PathLike | None = None,
    step: int = 0,
    device: torch.device | str = "cpu",
    shuffled: ShuffledSounds | None = None,
    hparams: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """compute_metrics, then write OUT_DIR/results.json, results.md, figure7.png, figure8.png and report.html
    (his.eval.report: a player, the images and the scores of every test clip); with `log_dir`, the overall
    numbers (eval/...) and both figures also go to TensorBoard at `step`, and with `hparams` (the run's resolved
    config) its HParams session (log_hparams). Returns the results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    heard = heard_classes(data)
    results = compute_metrics(data, samples, settings, cache_dir, device, shuffled, heard)
    looked_up = {} if heard is None else _retrieval_lookups(data, heard, samples.shape[1])
    for key, frames in looked_up.items():
        results[key] = retrieval_baseline(data, frames, settings, cache_dir, device, heard)

    seven_rows, eight_rows = _figure_clips(data, settings)
    labels = np.asarray(data.test_labels)
    def figure7(drawn: np.ndarray) -> np.ndarray:
        return figures.figure7([drawn[r] for r in seven_rows], [data.test_frames[r] for r in seven_rows],
                               [data.classes[labels[r]] for r in seven_rows])

    images = {"figure7": figure7(samples)}
    for key, frames in looked_up.items():  # the same sounds' looked-up training frames, to set beside Figure 7
        images[RETRIEVAL_FIGURES[key]] = figure7(frames)
    if eight_rows is not None:
        a, b = eight_rows
        images["figure8"] = figures.figure8(samples[a], data.test_frames[a], samples[b], data.test_frames[b])
    results["figures"] = {}
    for name, image in images.items():
        figures.save_png(image, out_dir / f"{name}.png")
        results["figures"][name] = str(out_dir / f"{name}.png")
    results["report"] = str(eval_report(out_dir, results, data, samples))

    write_json(out_dir / "results.json", _json_safe(results))
    with atomic_path(out_dir / "results.md") as tmp:
        tmp.write_text(_markdown(results))

    if log_dir is not None:
        with SummaryWriter(log_dir=str(log_dir)) as writer:
            for key, value in results["overall"].items():
                if isinstance(value, float) and not math.isnan(value):
                    writer.add_scalar(f"eval/{key}", value, step)
            for baseline in RETRIEVAL_BASELINES:
                for key, value in results.get(baseline, {}).get("overall", {}).items():
                    if isinstance(value, float) and not math.isnan(value):
                        writer.add_scalar(f"eval_{baseline}/{key}", value, step)
            for name, attribute in results.get("attributes", {}).items():
                if not math.isnan(attribute["spearman"]):
                    writer.add_scalar(f"eval/spearman_{name}", attribute["spearman"], step)
            for name, image in images.items():
                writer.add_image(f"eval/{name}", image, step, dataformats="HWC")
            if hparams is not None:
                log_hparams(writer, hparams)
    return results
