"""his.eval's report.html: one page that opens from disk, checked in a real headless browser (tests/browser.py)."""

from __future__ import annotations

import json
import shutil
import wave
from html.parser import HTMLParser
from io import BytesIO

import numpy as np
import pytest
import torch
from PIL import Image

from browser import CHROMIUM, open_page
from his.constants import SAMPLE_RATE
from his.eval.data import EvalData, EvalSettings
from his.eval.evaluate import evaluate, generate_shuffled
from his.frame_classifier import NetTraining
from his.sampling import generate_samples

# class names a page must show literally, never as markup
CLASSES = ["<b>disc</b>", 'square & "co"', "bar"]
COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230]], np.float64)
WINDOW_S = 0.5
K = 4
SETTINGS = EvalSettings(classifier=NetTraining(steps=30, batch_size=16, width=8), kid_subsets=5)

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/bootstrap "
                                                              "installs it as root)")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def class_frames(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0, 20, (len(labels), 64, 64, 3))
    return np.clip(COLOURS[labels][:, None, None] + noise, 0, 255).astype(np.uint8)


def colour_generator(features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Draws the colour of the sound's class (its one-hot feature) with noise from z."""
    colours = torch.from_numpy(COLOURS).float()[features.argmax(1)] / 127.5 - 1
    return (colours[:, :, None, None] + 0.1 * z[:, :1, None, None]).expand(-1, 3, 64, 64).clamp(-1, 1)


@pytest.fixture(scope="module")
def report(datasets, tmp_path_factory) -> dict:
    rng = np.random.default_rng(0)
    train_labels, test_labels = np.repeat(np.arange(3), 12), np.repeat(np.arange(3), 2)
    samples_per_window = round(WINDOW_S * SAMPLE_RATE)
    audio = np.stack([np.round(datasets.class_sound(c, rng, samples_per_window) * 32767).astype(np.int16)
                      for c in test_labels])
    data = EvalData(classes=CLASSES, train_frames=class_frames(train_labels, rng), train_labels=train_labels,
                    test_frames=class_frames(test_labels, rng), test_labels=test_labels,
                    test_features=np.eye(3, dtype=np.float32)[test_labels], test_audio=audio,
                    test_video_ids=np.array([f"v_{i}" for i in range(len(test_labels))]))
    samples = generate_samples(colour_generator, data.test_features, k=K, z_dim=2)
    shuffled = generate_shuffled(colour_generator, data.test_features, data.test_labels, k=K, z_dim=2)
    out = tmp_path_factory.mktemp("report") / "eval"
    results = evaluate(data, samples, out, SETTINGS, out.parent / "cache", shuffled=shuffled)
    return {"out": out, "data": data, "results": results, "page": out / "report.html"}


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [value for name, value in attrs if name in ("src", "href")]


def test_the_page_names_only_files_beside_it(report):
    html_text = report["page"].read_text()
    parser = Links()
    parser.feed(html_text)
    assert parser.tags.count("audio") == len(report["data"].test_labels)
    assert "script" not in parser.tags and "b" not in parser.tags  # the class name "<b>disc</b>" is text
    assert "&lt;b&gt;disc&lt;/b&gt;" in html_text and "square &amp; &quot;co&quot;" in html_text
    for link in parser.links:
        assert link == "data:," or (report["out"] / link).is_file(), link  # nothing from a server or the network
    assert report["results"]["report"] == str(report["page"])


def test_each_clip_has_its_exact_window_and_its_scores(report):
    data, results = report["data"], report["results"]
    for i in (0, len(data.test_labels) - 1):
        with wave.open(str(report["out"] / "report" / f"clip-{i:04d}.wav"), "rb") as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE)
            assert np.array_equal(np.frombuffer(w.readframes(w.getnframes()), "<i2"), data.test_audio[i])
    per_clip = json.loads((report["out"] / "results.json").read_text())["per_clip"]
    assert [c["class"] for c in per_clip] == [CLASSES[c] for c in data.test_labels]
    # K images per clip: the clips' shares average to the overall accuracies
    overall = results["overall"]
    assert np.mean([c["accuracy"] for c in per_clip]) == pytest.approx(overall["conditional_accuracy"])
    assert np.mean([c["shuffled_accuracy"] for c in per_clip]) == pytest.approx(overall["shuffled_accuracy"])
    for c in per_clip:
        assert data.test_labels[c["shuffled_sound"]] != CLASSES.index(c["class"])
        assert c["read_as"] in CLASSES and 1 / 3 <= c["read_as_share"] <= 1


@needs_chromium
def test_every_sound_and_image_loads_in_a_real_browser(report):
    check = open_page(report["page"], width=1000, height=800)
    n_test = len(report["data"].test_labels)
    assert check.console_errors == []
    assert len(check.audio) == n_test and all(loaded for _, loaded, _ in check.audio), check.audio
    assert all(duration == pytest.approx(WINDOW_S, abs=0.01) for _, _, duration in check.audio)
    assert len(check.images) == 2 * n_test + 2 and all(loaded for _, loaded in check.images), check.images
    assert "conditional accuracy" in check.text and "<b>disc</b>" in check.text and 'square & "co"' in check.text
    assert Image.open(BytesIO(check.screenshot)).size == (1000, 800)


@needs_chromium
def test_the_browser_check_sees_a_missing_sound_and_image(report, tmp_path):
    broken = tmp_path / "eval"
    shutil.copytree(report["out"], broken)
    (broken / "report" / "clip-0001.wav").unlink()
    (broken / "report" / "clip-0002.png").unlink()
    check = open_page(broken / "report.html")
    assert [src for src, loaded, _ in check.audio if not loaded] == ["report/clip-0001.wav"]
    assert [src for src, loaded in check.images if not loaded] == ["report/clip-0002.png"]
    assert len(check.console_errors) == 2 and all("ERR_FILE_NOT_FOUND" in e for e in check.console_errors)
