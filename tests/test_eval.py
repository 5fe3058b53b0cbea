"""his.eval: each metric against a known answer, on a small hand-made clip set.

The clip set: three classes, each a coloured shape on a class-tinted background (red disc, green square,
blue bar); per clip, two "sound attributes" set the picture: loudness -> the shape's size, register -> its
height in the frame; plus position jitter, brightness and pixel noise. A stand-in generator draws fresh real
frames of the clip's class and attributes, so its samples are real frames by construction.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from his.eval import figures
from his.eval.data import EvalData, EvalSettings
from his.eval.report import format_number
from his.eval.evaluate import (
    compute_metrics,
    cross_class_derangement,
    evaluate,
    generate_shuffled,
    heard_class_retrieval_samples,
    heard_classes,
    retrieval_baseline,
    retrieval_samples,
)
from his.eval.metrics import (
    diversity,
    frechet_distance,
    heard_class_ceiling,
    kernel_distance,
    linear_probe,
    mean_pairwise_distance,
    mean_interval,
    nearest_distance,
    nearest_rows,
    retrieval_recall,
    spearman,
    within_class_spearman,
    within_class_spearman_interval,
)
from his.frame_classifier import NetTraining, train_classifier
from his.frames import to_frames as images_to_frames
from his.sampling import generate_samples

N_CLASSES = 3
SHAPE_COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230]], np.float64)
BACKGROUNDS = np.array([[30, 30, 60], [70, 60, 30], [40, 70, 70]], np.float64)
SETTINGS = EvalSettings(
    classifier=NetTraining(steps=150, batch_size=32, width=16),
    regressor=NetTraining(steps=150, batch_size=32, width=16),
)


def draw_frame(
    label: int, loudness: float, register: float, jitter: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float64)
    size = 6 + 14 * loudness
    cy, cx = 48 - 32 * register + jitter[0], 32 + jitter[1]
    if label == 0:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= size**2
    elif label == 1:
        mask = (np.abs(yy - cy) <= size) & (np.abs(xx - cx) <= size)
    else:
        mask = (np.abs(yy - cy) <= size / 2) & (np.abs(xx - cx) <= 1.6 * size)
    image = np.broadcast_to(BACKGROUNDS[label], (64, 64, 3)).copy()
    image[mask] = SHAPE_COLOURS[label] * (0.8 + 0.4 * rng.random())
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_split(clips_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    frames, labels, loudness, register = [], [], [], []
    for label in range(N_CLASSES):
        for _ in range(clips_per_class):
            loud, reg = rng.random(), rng.random()
            frames.append(draw_frame(label, loud, reg, rng.uniform(-4, 4, 2), rng))
            labels.append(label)
            loudness.append(loud)
            register.append(reg)
    return np.stack(frames), np.array(labels), {"loudness": np.array(loudness), "register": np.array(register)}


def real_frame_generator(features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Features: one-hot class, loudness, register. Each z gives a fresh real frame for that sound."""
    images = []
    for feature, noise in zip(features.cpu().numpy(), z.cpu().numpy()):
        rng = np.random.default_rng(int(abs(noise[0]) * 1e6))
        label = int(feature[:N_CLASSES].argmax())
        images.append(draw_frame(label, feature[N_CLASSES], feature[N_CLASSES + 1], 2 * noise[1:3], rng))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def class_zero_generator(features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Ignores the sound: fresh real frames of one fixed class-0 sound, whatever sound it is given."""
    class_zero = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.5])
    return real_frame_generator(class_zero.expand_as(features), z)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> EvalData:
    train_frames, train_labels, train_attributes = make_split(40, seed=0)
    test_frames, test_labels, test_attributes = make_split(10, seed=1)
    def features(labels, attributes):
        return np.concatenate([np.eye(N_CLASSES)[labels], attributes["loudness"][:, None],
                               attributes["register"][:, None]], axis=1).astype(np.float32)

    return EvalData(
        classes=["disc", "square", "bar"],
        train_frames=train_frames,
        train_labels=train_labels,
        test_frames=test_frames,
        test_labels=test_labels,
        test_features=features(test_labels, test_attributes),
        train_features=features(train_labels, train_attributes),
        test_video_ids=np.array([f"v{i // 2}" for i in range(len(test_labels))]),
        train_attributes=train_attributes,
        test_attributes=test_attributes,
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("eval-cache")


@pytest.fixture(scope="module")
def real_samples(data) -> np.ndarray:
    return generate_samples(real_frame_generator, data.test_features, k=8, z_dim=3, seed=0)


@pytest.fixture(scope="module")
def real_results(data, real_samples, cache_dir) -> dict:
    shuffled = generate_shuffled(real_frame_generator, data.test_features, data.test_labels, k=8, z_dim=3, seed=0)
    return compute_metrics(data, real_samples, SETTINGS, cache_dir, shuffled=shuffled)


# ---- metrics on hand-made features ------------------------------------------------------------------------


def test_frechet_distance_matches_the_gaussian_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 4))
    mean_shift = np.array([1.0, 1.0, 0.0, 0.0])
    y = 2 * rng.normal(size=(4000, 4)) + mean_shift
    # |mu_x - mu_y|^2 + tr(I + 4I - 2 * sqrt(4I)) = 2 + 4
    assert frechet_distance(x, y) == pytest.approx(6.0, rel=0.05)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    # fewer samples than dimensions: singular covariances still give a finite, real distance
    few = rng.normal(size=(10, 64))
    assert frechet_distance(few, few) == pytest.approx(0.0, abs=1e-6)
    assert np.isfinite(frechet_distance(few, rng.normal(size=(10, 64))))


def test_kid_is_unbiased_for_the_same_distribution():
    rng = np.random.default_rng(0)
    # averaged over many small pairs of sets the unbiased MMD^2 is ~0 (a biased one would be ~ +1/n)
    same = [kernel_distance(rng.normal(size=(10, 8)), rng.normal(size=(10, 8))) for _ in range(300)]
    shifted = kernel_distance(rng.normal(size=(10, 8)), rng.normal(size=(10, 8)) + 1.0)
    assert abs(np.mean(same)) < 0.1 * shifted
    # subsets when the sets are larger than one subset; fixed seed -> same value
    x, y = rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) + 0.5
    first = kernel_distance(x, y, subset_size=100, n_subsets=10, seed=3)
    assert first == kernel_distance(x, y, subset_size=100, n_subsets=10, seed=3)
    assert first == pytest.approx(kernel_distance(x, y), rel=0.3)


def test_retrieval_recall_on_known_ranks():
    gallery = np.array([[0.0], [1.0], [2.0], [10.0]])
    labels = np.array([0, 0, 1, 1])
    queries = np.array([[0.1], [1.9], [9.0]])
    own = np.array([0, 1, 3])  # query 1 is nearest to row 2 (class 1) though its own row is 1 (class 0)
    recall = retrieval_recall(queries, own, gallery, labels, ks=(1, 2))
    assert recall == {"own_r1": 2 / 3, "class_r1": 2 / 3, "own_r2": 1.0, "class_r2": 1.0}
    # leave-one-out on the gallery itself: row 3's nearest other row is row 2, same class
    loo = retrieval_recall(gallery, np.arange(4), gallery, labels, ks=(1,), exclude_self=True)
    assert loo["own_r1"] == 0.0 and loo["class_r1"] == 0.75


def test_nearest_rows_and_distance_on_known_points():
    gallery = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 3.0], [0.0, 3.0]])
    queries = np.array([[9.0, 0.0], [0.0, 2.0]])
    assert nearest_rows(queries, gallery, 2).tolist() == [[1, 0], [2, 3]]  # ties rank by gallery index
    assert nearest_distance(queries, gallery) == pytest.approx([1.0, 1.0])


def test_diversity_on_known_points():
    assert mean_pairwise_distance(np.array([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)
    # two sounds, two samples each: within-sound distances 1 and 1; across-sound distances 10, 11, 9, 10
    samples = np.array([[[0.0], [1.0]], [[10.0], [11.0]]])
    within, across = diversity(samples)
    assert within == pytest.approx(1.0) and across == pytest.approx(10.0)
    assert diversity(np.zeros((3, 4, 5))) == (0.0, 0.0)


def test_spearman_is_nan_for_a_constant_side():
    assert spearman([1, 2, 3, 4], [2, 4, 6, 9]) == pytest.approx(1.0)
    assert np.isnan(spearman([1, 2, 3, 4], [5, 5, 5, 5]))


def test_within_class_spearman_and_its_bootstrap_interval():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    truth = rng.uniform(size=40)
    # within each class the prediction is monotone in the truth, across classes it is reversed
    predicted = np.where(labels == 0, truth, 5 - truth) * np.where(labels == 0, 1, -1)
    assert within_class_spearman(truth, predicted, labels) == pytest.approx(1.0)
    assert spearman(truth, predicted) < 0.5
    assert within_class_spearman_interval(truth, predicted, labels, n_resamples=200) == pytest.approx((1.0, 1.0))
    assert within_class_spearman(truth, -predicted, labels) == pytest.approx(-1.0)
    # unrelated: with 20 rows a class the interval around the estimate is about +-0.3 wide
    noise = rng.uniform(size=40)
    lo, hi = within_class_spearman_interval(truth, noise, labels, n_resamples=400)
    assert lo < within_class_spearman(truth, noise, labels) < hi and 0.3 < hi - lo < 0.9
    assert within_class_spearman_interval(truth, noise, labels, n_resamples=50, seed=3) == \
        within_class_spearman_interval(truth, noise, labels, n_resamples=50, seed=3)


def test_heard_class_ceiling_draws_real_frames_of_the_heard_class():
    labels = np.array([0, 0, 1, 1])  # the test clips: their frames' classes, and their sounds' classes
    frame_predicted = np.array([0, 1, 1, 1])  # the frame classifier: half of class 0's frames read as 1
    # every sound heard right: the real-frame ceiling (3 of 4 frames read right)
    assert heard_class_ceiling(labels, labels, frame_predicted) == pytest.approx(0.75)
    # the class-0 sounds heard as class 1: class-1 frames are never read as 0
    assert heard_class_ceiling(np.array([1, 1, 1, 1]), labels, frame_predicted) == pytest.approx(0.5)
    # the class-1 sounds heard as class 0: half of class 0's frames are read as 1
    assert heard_class_ceiling(np.array([0, 0, 0, 0]), labels, frame_predicted) == pytest.approx((0.5 + 0.5 + 0.5 + 0.5) / 4)


def test_linear_probe_reads_a_linear_class_and_not_noise():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 3
    train_y, test_y = rng.integers(0, 4, 200), rng.integers(0, 4, 100)
    train_x, test_x = centres[train_y] + rng.normal(size=(200, 16)), centres[test_y] + rng.normal(size=(100, 16))
    assert (linear_probe(train_x, train_y, test_x, 4) == test_y).mean() > 0.95
    noise = rng.normal(size=(200, 16))  # features that say nothing of the class read at about chance
    assert (linear_probe(noise[:100], train_y[:100], noise[100:], 4) == train_y[100:]).mean() < 0.45


def test_mean_interval_of_a_proportion_is_its_binomial_width():
    hits = np.random.default_rng(1).permutation(np.repeat([0.0, 1.0], 200))
    lo, hi = mean_interval(hits)
    assert lo < 0.5 < hi and (hi - lo) == pytest.approx(2 * 1.96 * 0.025, rel=0.15)
    assert mean_interval(np.full(5, 0.25)) == (0.25, 0.25)


@pytest.mark.parametrize("counts", [(10, 10, 10), (5, 3, 2), (4, 4), (1, 1, 1, 1, 1)])
def test_cross_class_derangement_is_a_seeded_permutation_across_classes(counts):
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(len(counts)), counts))
    by_seed = [cross_class_derangement(labels, seed) for seed in range(5)]
    for seed, sounds in enumerate(by_seed):
        assert sorted(sounds) == list(range(len(labels)))  # every sound used once
        assert np.all(labels[sounds] != labels)
        assert np.array_equal(sounds, cross_class_derangement(labels, seed))
    assert any(not np.array_equal(by_seed[0], other) for other in by_seed[1:])


def test_cross_class_derangement_when_one_class_holds_most_clips():
    labels = np.array([0] * 7 + [1] * 2 + [2])  # no permutation pairs all seven 0s with other classes
    sounds = cross_class_derangement(labels, seed=3)
    assert np.all(labels[sounds] != labels)
    assert np.array_equal(sounds, cross_class_derangement(labels, seed=3))
    with pytest.raises(ValueError, match="two classes"):
        cross_class_derangement(np.zeros(4, np.int64))


# ---- the whole evaluation on the hand-made clip set --------------------------------------------------------


def test_classifier_is_cached_by_data(data, cache_dir):
    net, path = train_classifier(data.train_frames, data.train_labels, N_CLASSES, SETTINGS.classifier, cache_dir)
    again, same_path = train_classifier(data.train_frames, data.train_labels, N_CLASSES, SETTINGS.classifier, cache_dir)
    assert path == same_path and path.exists()
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    shuffled = np.roll(data.train_labels, 1)
    _, other_path = train_classifier(data.train_frames, shuffled, N_CLASSES, NetTraining(steps=1), cache_dir)
    assert other_path != path
    jittered = dataclasses.replace(SETTINGS.classifier, augment="color")
    _, jittered_path = train_classifier(data.train_frames, data.train_labels, N_CLASSES, jittered, cache_dir)
    assert jittered_path != path


def test_the_classifier_batch_is_flipped_shifted_then_colour_jittered():
    from his.augment import color
    from his.frame_classifier import CLASSIFIER_TRAINING, _augment

    x = torch.rand(6, 3, 64, 64) * 2 - 1
    plain = _augment(x, torch.Generator().manual_seed(5))
    assert torch.equal(_augment(x, torch.Generator().manual_seed(5), ""), plain)
    g = torch.Generator().manual_seed(5)
    expected = color(_augment(x, g), g)  # the same draws, in the same order
    assert torch.equal(_augment(x, torch.Generator().manual_seed(5), "color"), expected)
    assert not torch.allclose(expected, plain)
    assert CLASSIFIER_TRAINING.augment == "color"


def test_the_classifier_shift_is_each_images_own_window_of_its_reflect_padded_self():
    import torch.nn.functional as F

    from his.frame_classifier import _augment

    x = torch.rand(5, 3, 64, 64) * 2 - 1
    g = torch.Generator().manual_seed(3)
    flip = torch.rand(5, generator=g) < 0.5  # the draws _augment makes, in its order
    dx, dy = torch.randint(0, 9, (5,), generator=g), torch.randint(0, 9, (5,), generator=g)
    padded = F.pad(torch.where(flip[:, None, None, None], x.flip(3), x), (4, 4, 4, 4), mode="reflect")
    expected = torch.stack([padded[i, :, dy[i] : dy[i] + 64, dx[i] : dx[i] + 64] for i in range(5)])
    assert torch.equal(_augment(x, torch.Generator().manual_seed(3)), expected)


def test_real_frames_as_generated_score_like_real_frames(real_results):
    overall = real_results["overall"]
    assert overall["ceiling_accuracy"] >= 0.9
    assert overall["conditional_accuracy"] >= overall["ceiling_accuracy"] - 0.1
    assert overall["class_r1"] >= 0.9
    # the features say the class outright, so the sound-limited ceiling is the real-frame one
    assert overall["heard_accuracy"] == 1.0
    assert overall["heard_ceiling"] == pytest.approx(overall["ceiling_accuracy"])
    # generated vs test as close as real train vs real test frames
    assert overall["fid"] <= 1.5 * overall["fid_real"]
    assert overall["kid"] <= max(2 * overall["kid_real"], 0.05 * overall["fid_real"])
    # fresh real frames of one sound vary less than a class, but they do vary
    assert 0.2 < overall["diversity_within_sound"] < 1.2
    assert overall["diversity_across_sounds"] == pytest.approx(1.0, abs=0.2)
    for row in real_results["per_class"].values():
        assert row["conditional_accuracy"] >= 0.8


def test_images_that_follow_the_sound_follow_a_shuffled_sound(real_results):
    overall = real_results["overall"]
    assert overall["chance_accuracy"] == pytest.approx(1 / N_CLASSES)
    assert overall["shuffled_accuracy"] <= 0.05
    assert overall["shuffled_follows_sound"] >= 0.9
    assert overall["shuffled_follows_sound"] == pytest.approx(overall["conditional_accuracy"], abs=0.1)
    for row in real_results["per_class"].values():
        assert row["shuffled_accuracy"] <= 0.1


def test_the_shuffled_sound_control_exposes_a_generator_that_ignores_the_sound(data, cache_dir):
    data = dataclasses.replace(data, train_attributes=None, test_attributes=None)
    samples = generate_samples(class_zero_generator, data.test_features, k=4, z_dim=3, seed=0)
    shuffled = generate_shuffled(class_zero_generator, data.test_features, data.test_labels, k=4, z_dim=3, seed=0)
    results = compute_metrics(data, samples, SETTINGS, cache_dir, shuffled=shuffled)
    overall, per_class = results["overall"], results["per_class"]
    # the clips of class 0 look "conditioned" whatever the sound: the same accuracy with another class's sound
    assert per_class["disc"]["conditional_accuracy"] >= 0.9
    for row in per_class.values():
        assert row["shuffled_accuracy"] == row["conditional_accuracy"]
    assert overall["shuffled_accuracy"] == overall["conditional_accuracy"]
    assert overall["shuffled_accuracy"] >= overall["chance_accuracy"] - 0.05
    # only the sounds of class 0 are followed (the derangement keeps the class balance)
    assert overall["shuffled_follows_sound"] == pytest.approx(overall["chance_accuracy"], abs=0.05)


def test_real_frames_follow_the_sound_attributes(real_results):
    for name in ("loudness", "register"):
        attribute = real_results["attributes"][name]
        assert attribute["spearman_real"] > 0.8
        assert attribute["spearman"] > 0.8
        assert attribute["spearman_within_class"] > 0.7


def test_a_constant_image_per_class_has_diversity_near_zero(data, real_samples, cache_dir):
    first_of_class = {c: real_samples[np.flatnonzero(data.test_labels == c)[0], 0] for c in range(N_CLASSES)}
    constant = np.stack([np.broadcast_to(first_of_class[c], real_samples.shape[1:]) for c in data.test_labels])
    results = compute_metrics(data, constant, SETTINGS, cache_dir)
    assert results["overall"]["diversity_within_sound"] == pytest.approx(0.0, abs=1e-6)
    assert results["overall"]["diversity_across_sounds"] == pytest.approx(0.0, abs=1e-6)
    assert results["overall"]["conditional_accuracy"] >= 0.9  # collapsed, yet of the right class
    for attribute in results["attributes"].values():
        assert np.isnan(attribute["spearman_within_class"])
    assert np.isnan(results["overall"]["shuffled_accuracy"])  # no control asked for


def test_images_of_the_wrong_class_score_near_zero(data, real_samples, cache_dir):
    rows_of_class = [np.flatnonzero(data.test_labels == c) for c in range(N_CLASSES)]
    wrong = np.stack([real_samples[rows_of_class[(c + 1) % N_CLASSES][i % 10]] for i, c in enumerate(data.test_labels)])
    results = compute_metrics(data, wrong, SETTINGS, cache_dir)
    assert results["overall"]["conditional_accuracy"] <= 0.05
    assert results["overall"]["class_r1"] <= 0.05
    # the overall FID cannot see the conditioning (the images are still a balanced mix of the classes);
    # per class it can
    for row in results["per_class"].values():
        assert row["fid"] > 5 * row["fid_real"]


def test_images_to_frames_quantises_like_a_saved_image():
    images = torch.tensor([-1.0, -0.5, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert images_to_frames(images)[0, 0, :, 0].tolist() == [0, 64, 128, 255, 255]


def test_evaluate_writes_outputs_and_is_deterministic(data, cache_dir, tmp_path):
    samples = generate_samples(real_frame_generator, data.test_features, k=16, z_dim=3, seed=0)
    again = generate_samples(real_frame_generator, data.test_features, k=16, z_dim=3, seed=0)
    assert np.array_equal(samples, again)
    shuffled = generate_shuffled(real_frame_generator, data.test_features, data.test_labels, k=16, z_dim=3, seed=0)
    first = evaluate(data, samples, tmp_path / "a", SETTINGS, cache_dir, log_dir=tmp_path / "tb", step=7,
                     shuffled=shuffled)
    # a fresh cache: the classifier is retrained from the seed and must come out the same
    second = evaluate(data, again, tmp_path / "b", SETTINGS, tmp_path / "fresh-cache", shuffled=shuffled)
    first_json = json.loads((tmp_path / "a" / "results.json").read_text())
    second_json = json.loads((tmp_path / "b" / "results.json").read_text())
    for key in ("overall", "per_class", "attributes"):
        assert first_json[key] == second_json[key]
    assert first["overall"] == second["overall"]
    assert first_json["overall"]["shuffled_accuracy"] == first["overall"]["shuffled_accuracy"] <= 0.05

    markdown = (tmp_path / "a" / "results.md").read_text()
    assert "| conditional accuracy [95% bootstrap over clips] |" in markdown and "| square |" in markdown and "| loudness |" in markdown
    assert "| shuffled sound: read as the clip's class (chance 1/3 = 0.333) |" in markdown
    assert "| shuffled sound: read as the sound's class |" in markdown
    assert "| metric | generated | retrieval baseline | retrieval baseline, heard class | real |" in markdown
    assert "Retrieval baseline, heard class:" in markdown
    # the features say the class outright: the heard class is the nearest sounds' class, so both baselines look
    # up the same frames and score the same, column by column
    heard_baseline = first_json["retrieval_baseline_heard_class"]
    assert heard_baseline["overall"]["conditional_accuracy"] >= 0.9
    assert heard_baseline["overall"] == first_json["retrieval_baseline"]["overall"]
    assert heard_baseline["attributes"] == first_json["retrieval_baseline"]["attributes"]
    fid_row = next(line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("| FID |"))
    assert [cell.strip() for cell in fid_row] == ["FID", *(format_number(results["overall"]["fid"]) for results in (
        first_json, first_json["retrieval_baseline"], heard_baseline)), format_number(first_json["overall"]["fid_real"])]
    page = (tmp_path / "a" / "report.html").read_text()
    assert "<th>retrieval baseline</th><th>retrieval baseline, heard class</th>" in page
    assert 'src="figure7_retrieval_heard_class.png"' in page

    # his.grid pads around every image, the outer border included
    grid, gap, label = 4 * 64 + 5 * figures.PAD, figures.GAP, figures.LABEL_WIDTH
    with Image.open(tmp_path / "a" / "figure7.png") as figure7:
        assert figure7.size == (label + gap + grid + gap + grid, 3 * grid + 2 * gap)
    rows = 2 * 64 + 3 * figures.PAD
    with Image.open(tmp_path / "a" / "figure8.png") as figure8:
        assert figure8.size == (8 * 64 + 9 * figures.PAD + gap + rows, 2 * rows + gap)
        # its first sound is the first test clip of the first class; its first sample sits inside the padding
        top_left = np.asarray(figure8)[figures.PAD : figures.PAD + 64, figures.PAD : figures.PAD + 64]
        assert np.array_equal(top_left, samples[np.flatnonzero(data.test_labels == 0)[0], 0])

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    accuracy = events.Scalars("eval/conditional_accuracy")
    assert accuracy[0].step == 7 and accuracy[0].value == pytest.approx(first["overall"]["conditional_accuracy"])
    assert events.Scalars("eval/shuffled_follows_sound")[0].value == pytest.approx(
        first["overall"]["shuffled_follows_sound"]
    )
    assert {"eval/figure7", "eval/figure8", "eval/figure7_retrieval", "eval/figure7_retrieval_heard_class"} <= set(
        events.Tags()["images"])
    for baseline in ("retrieval_baseline", "retrieval_baseline_heard_class"):
        assert events.Scalars(f"eval_{baseline}/conditional_accuracy")[0].value == pytest.approx(
            first[baseline]["overall"]["conditional_accuracy"])


# ---- the stage on a his.train run directory ----------------------------------------------------------------


def write_run_inputs(datasets, root, data: EvalData) -> tuple[str, str]:
    """A clip set + feature set (his.data.small_sets.DataSets) of the hand-made frames, and a his.synth attributes.json."""
    frames = np.concatenate([data.train_frames, data.test_frames])
    labels = np.concatenate([data.train_labels, data.test_labels])
    split = np.repeat([0, 1], [len(data.train_frames), len(data.test_frames)])
    video_ids = [f"v_{data.classes[c]}_g01_c{i:02d}" for i, c in enumerate(labels)]
    sources = [str(root / "synth" / "UCF-101" / data.classes[c] / f"{v}.avi") for v, c in zip(video_ids, labels)]
    clips = datasets.clips(root / "clips", data.classes, label=labels, split=split, frame64=frames,
                           video_id=video_ids, source=sources, window_s=0.1, shard_clips=64)
    one_hot = np.eye(N_CLASSES)[labels]
    attributes = {
        name: np.concatenate([data.train_attributes[name], data.test_attributes[name]])
        for name in ("loudness", "register")
    }
    features = np.concatenate([one_hot, attributes["loudness"][:, None], attributes["register"][:, None]], axis=1)
    features_dir = datasets.features(clips, features)
    records = [
        {"video": f"UCF-101/{data.classes[c]}/{v}.avi", "class": data.classes[c], "loudness": float(loud),
         "pitch_register": float(reg)}
        for v, c, loud, reg in zip(video_ids, labels, attributes["loudness"], attributes["register"])
    ]
    (root / "synth").mkdir()
    (root / "synth" / "attributes.json").write_text(json.dumps({"clips": records}))
    return str(clips), str(features_dir)


def test_python_m_his_eval_on_a_run_directory(data, datasets, tmp_path, capsys):
    from his.eval.stage import main
    from his.train import TrainConfig, run

    clips, features = write_run_inputs(datasets, tmp_path, data)
    run_dir = tmp_path / "run"
    run(TrainConfig(clips=clips, features=features, cond_dim=N_CLASSES + 2, out=str(run_dir), ngf=8, ndf=8,
                    proj_dim=8, z_dim=8, batch_size=16, max_steps=2, n_critic=1, warmup_gen_steps=0))
    options = ["k=4", "classifier_steps=60", "regressor_steps=60", "attribute_names=[loudness,pitch_register]"]
    assert main([str(run_dir), *options]) == 0
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["overall"]["k"] == 4 and results["overall"]["n_test_clips"] == len(data.test_labels)
    assert set(results["attributes"]) == {"loudness", "pitch_register"}
    assert 0 <= results["overall"]["shuffled_accuracy"] <= 1 and 0 <= results["overall"]["shuffled_follows_sound"] <= 1
    assert (run_dir / "eval" / "figure7.png").is_file() and (run_dir / "eval" / "figure8.png").is_file()
    assert (run_dir / "eval" / "report.html").is_file()  # tests/test_report.py opens it in a browser
    assert len(list((run_dir / "eval" / "report").glob("clip-*.wav"))) == len(data.test_labels)
    assert (tmp_path / "clips" / "eval-cache").is_dir()
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert events.Scalars("eval/conditional_accuracy")[0].step == 2

    assert main([f"run={tmp_path / 'nowhere'}"]) == 2  # a bare RUN_DIR is shorthand for run=RUN_DIR
    checkpoint = sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1]
    (tmp_path / "truncated.pt").write_bytes(checkpoint.read_bytes()[:1000])
    capsys.readouterr()
    assert main([str(run_dir), f"checkpoint={tmp_path / 'truncated.pt'}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "truncated.pt: not a readable checkpoint" in err, err
    with pytest.raises(SystemExit) as e:
        main([str(run_dir), str(tmp_path / "nowhere")])
    assert e.value.code == 2
    capsys.readouterr()
    assert main([str(run_dir), "classifier_augment=hue"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "classifier_augment" in err and "'hue'" in err, err


def test_retrieval_baseline_looks_up_the_nearest_sounds_frames(data):
    looked_up = retrieval_samples(data.train_features, data.train_frames, data.test_features[:2], k=3)
    nearest = np.argsort(((data.train_features[None] - data.test_features[:2, None]) ** 2).sum(-1), axis=1)[:, :3]
    np.testing.assert_array_equal(looked_up, data.train_frames[nearest])
    # the features here are class and attributes: a looked-up frame is always of the sound's class
    assert (data.train_labels[nearest] == data.test_labels[:2, None]).all()


def test_the_heard_class_baseline_looks_up_frames_of_the_class_a_linear_reader_hears_nearest_first():
    # feature 0 says the class; feature 1 is loud and says nothing of it (the same mean in both classes), so by
    # distance a sound's nearest training clip can be of the other class while a linear reader hears its own
    train_features = np.array([[0, 0], [0, 10], [0, 20], [1, 4], [1, 10], [1, 16]], np.float32)
    train_labels = np.array([0, 0, 0, 1, 1, 1])
    test_features = np.array([[0, 15.5], [1, 19]], np.float32)
    test_labels = np.array([0, 1])
    train_frames = np.broadcast_to(np.arange(6, dtype=np.uint8)[:, None, None, None], (6, 64, 64, 3)).copy()
    data = EvalData(classes=["a", "b"], train_frames=train_frames, train_labels=train_labels,
                    test_frames=train_frames[:2], test_labels=test_labels, test_features=test_features,
                    train_features=train_features)
    def looked_up_rows(frames: np.ndarray) -> list[list[int]]:
        return frames[:, :, 0, 0, 0].tolist()

    nearest = looked_up_rows(retrieval_samples(train_features, train_frames, test_features, k=2))
    assert nearest == [[5, 2], [2, 5]]  # each sound's nearest training clip is of the other class
    heard = heard_classes(data)
    assert heard.tolist() == test_labels.tolist()
    within = heard_class_retrieval_samples(train_features, train_frames, train_labels, test_features, heard, k=4)
    # the heard class has 3 training clips: all of them, nearest first, then again from the nearest
    assert looked_up_rows(within) == [[2, 1, 0, 2], [5, 4, 3, 5]]
    heard_otherwise = heard_class_retrieval_samples(train_features, train_frames, train_labels, test_features,
                                                    1 - heard, k=2)
    assert looked_up_rows(heard_otherwise) == [[5, 4], [2, 1]]


def test_retrieval_baseline_scores_like_real_frames_and_is_caught_copying(data, real_results, cache_dir):
    looked_up = retrieval_samples(data.train_features, data.train_frames, data.test_features, k=8)
    baseline = retrieval_baseline(data, looked_up, SETTINGS, cache_dir)["overall"]
    assert baseline["conditional_accuracy"] >= 0.9
    assert baseline["shuffled_accuracy"] <= 0.05  # looked up from another class's sound
    # training frames themselves: distance 0 to the nearest training frame (up to float32 round-off in cdist's
    # matrix-product form), where fresh frames are far
    assert baseline["nearest_train_ratio"] < 0.02
    real = real_results["overall"]
    assert real["nearest_train_distance_real"] > 1.0
    assert 0.8 <= real["nearest_train_ratio"] <= 1.25  # fresh frames: as far as the real test frames


def test_attributes_join_on_the_video_file_name_whatever_the_layout_calls_it(tmp_path):
    from his.eval.stage import _attribute_columns

    path = tmp_path / "attributes.json"
    path.write_text(json.dumps({"clips": [{"video": "folders/playing cello/v_PlayingCello_g01_c01.avi", "loudness": 0.25},
                                          {"video": "UCF-101/PlayingDhol/v_PlayingDhol_g02_c01.avi", "loudness": 0.75}]}))
    ids = np.array(["playing cello/v_PlayingCello_g01_c01", "v_PlayingDhol_g02_c01"])  # folders-style, UCF-style
    assert _attribute_columns(path, ids, ["loudness"])["loudness"].tolist() == [0.25, 0.75]
    assert _attribute_columns(path, np.array(["v_PlayingSitar_g01_c01"]), ["loudness"]) is None


def test_evaluation_outputs_that_do_not_fit_are_one_line_and_the_earlier_results_stay(data, datasets, tmp_path,
                                                                                       small_disk, capsys):
    from his.eval.stage import main
    from his.train import TrainConfig, run

    clips, features = write_run_inputs(datasets, tmp_path, data)
    disk = small_disk("disk", 4096)
    run_dir = disk / "run"
    run(TrainConfig(clips=clips, features=features, cond_dim=N_CLASSES + 2, out=str(run_dir), ngf=8, ndf=8,
                    proj_dim=8, z_dim=8, batch_size=16, max_steps=2, n_critic=1, warmup_gen_steps=0))
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "results.json").write_text('{"earlier": true}\n')
    small_disk.fill(disk, 8)
    capsys.readouterr()
    assert main([str(run_dir), "k=4", "classifier_steps=60", "regressor_steps=60"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"his.eval: {run_dir}/") and \
        err.endswith(": No space left on device"), err
    assert (run_dir / "eval" / "results.json").read_text() == '{"earlier": true}\n'
    assert not list(disk.rglob(".*.tmp"))
