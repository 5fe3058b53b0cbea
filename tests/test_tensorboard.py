"""What a user sees in TensorBoard, read back from a real `tensorboard --logdir` over its HTTP data API: a tiny
training run's scalars, sample grids and their sounds, his.eval's numbers as the run's one HParams row, and
the SoundNet features with their class labels in the embedding projector."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave

import numpy as np
import pytest
from PIL import Image

from his.audio.features import figure_1
from his.data.dataset import load_split
from his.eval.stage import main as evaluate_main
from his.train import TrainConfig, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RUN = "run/tb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoard:
    def __init__(self, logdir, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        # its own session, so the data server it starts goes with it
        self.process = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
                                         "--host", "127.0.0.1", "--port", str(port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def get(self, route: str, body: dict | None = None) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + route, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def json(self, route: str, body: dict | None = None):
        return json.loads(self.get(route, body))

    def wait_for_tag(self, plugin: str, tag: str, timeout_s: float = 90) -> None:
        """Until TensorBoard answers and has loaded `tag` of RUN (it loads the event files in the background)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tensorboard exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if tag in self.json(f"/data/plugin/{plugin}/tags").get(RUN, {}):
                    return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"tensorboard did not show {plugin} {tag} of {RUN} within {timeout_s} s")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process.stderr.close()


@pytest.fixture(scope="module")
def evaluated_run(datasets, tmp_path_factory) -> dict:
    """A 2-step training run, evaluated, and a feature set's projector, under one log directory."""
    root = tmp_path_factory.mktemp("tensorboard")
    clips = datasets.clips(root / "clips")
    features = datasets.features(clips)
    figure_1(clips / "index.h5", features)
    run(TrainConfig(clips=str(clips), features=str(features), cond_dim=12, out=str(root / "run"), ngf=8, ndf=8,
                    proj_dim=8, z_dim=8, batch_size=8, max_steps=2, n_critic=1, warmup_gen_steps=0))
    assert evaluate_main([str(root / "run"), "k=2", "classifier_steps=20", "regressor_steps=20"]) == 0
    results = json.loads((root / "run" / "eval" / "results.json").read_text())
    return {"root": root, "clips": clips, "features": features, "results": results}


@pytest.fixture(scope="module")
def tensorboard(evaluated_run):
    board = TensorBoard(evaluated_run["root"], free_port())
    try:
        board.wait_for_tag("scalars", "eval/conditional_accuracy")
        yield board
    finally:
        board.stop()


def test_scalars_and_sample_grids(tensorboard, evaluated_run):
    tags = tensorboard.json("/data/plugin/scalars/tags")[RUN]
    assert {"loss/g_loss", "val/ceiling", "final/g_loss", "eval/shuffled_accuracy"} - set(tags) == {"val/ceiling"}
    (_, step, value), = tensorboard.json(f"/data/plugin/scalars/scalars?run={RUN}&tag=eval/conditional_accuracy")
    assert step == 2 and value == pytest.approx(evaluated_run["results"]["overall"]["conditional_accuracy"])

    assert {"samples", "eval/figure7"} <= set(tensorboard.json("/data/plugin/images/tags")[RUN])
    grids = tensorboard.json(f"/data/plugin/images/images?run={RUN}&tag=samples")
    assert [g["step"] for g in grids] == [1, 2]
    grid = Image.open(io.BytesIO(tensorboard.get(f"/data/plugin/images/individualImage?{grids[-1]['query']}")))
    assert grid.size == (17 * 66 + 2, 3 * 66 + 2)  # 16 samples and the real frame for each of 3 sounds


def test_each_sample_row_has_its_sound(tensorboard, evaluated_run):
    test = load_split(evaluated_run["clips"] / "index.h5", "test", ["audio", "label"])
    tags = tensorboard.json("/data/plugin/audio/tags")[RUN]
    assert sorted(tags) == [f"samples/sound_of_row_{row}" for row in range(3)]
    for row in range(3):  # the grid's rows: the first test clip of each class
        entries = tensorboard.json(f"/data/plugin/audio/audio?run={RUN}&tag=samples/sound_of_row_{row}")
        assert [e["step"] for e in entries] == [1, 2]
        with wave.open(io.BytesIO(tensorboard.get(f"/data/plugin/audio/individualAudio?{entries[0]['query']}"))) as w:
            assert w.getframerate() == 22050 and w.getnchannels() == 1
            heard = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int32)
        clip = test["audio"][np.flatnonzero(test["label"] == row)[0]].astype(np.int32)
        assert np.abs(heard - clip).max() <= 2  # int16 -> [-1, 1] -> int16


def test_the_run_is_one_hparams_row_sorted_by_conditional_accuracy(tensorboard, evaluated_run):
    experiment = tensorboard.json("/data/plugin/hparams/experiment", {"experimentName": ""})
    assert {"objective", "ngf", "seed", "max_steps", "betas"} <= {h["name"] for h in experiment["hparamInfos"]}
    assert [m["name"]["tag"] for m in experiment["metricInfos"]][:3] == [
        "eval/conditional_accuracy", "eval/ceiling_accuracy", "eval/shuffled_accuracy"]
    request = {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN", "STATUS_RUNNING"],
               "colParams": [{"metric": {"tag": "eval/conditional_accuracy"}, "order": "ORDER_DESC"}],
               "startIndex": 0, "sliceSize": 10, "includeMetrics": True}
    groups = tensorboard.json("/data/plugin/hparams/session_groups", request)["sessionGroups"]
    assert len(groups) == 1 and len(groups[0]["sessions"]) == 1  # trainer and his.eval: one session
    group = groups[0]
    assert group["hparams"]["objective"] == "hinge" and group["hparams"]["ngf"] == 8
    assert group["hparams"]["betas"] == "[0.0, 0.9]"
    metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
    overall = evaluated_run["results"]["overall"]
    assert metrics["eval/conditional_accuracy"] == pytest.approx(overall["conditional_accuracy"])
    assert metrics["eval/shuffled_accuracy"] == pytest.approx(overall["shuffled_accuracy"])


def test_the_soundnet_features_are_in_the_projector_with_their_classes(tensorboard, evaluated_run):
    run_name = evaluated_run["features"].relative_to(evaluated_run["root"]).joinpath("tb").as_posix()
    assert run_name in tensorboard.json("/data/plugin/projector/runs")
    (embedding,) = tensorboard.json(f"/data/plugin/projector/info?run={run_name}")["embeddings"]
    labels = load_split(evaluated_run["clips"] / "index.h5", None, ["label"])["label"]
    assert embedding["tensorName"].startswith("soundnet_features") and embedding["tensorShape"] == [len(labels), 12]
    metadata = tensorboard.get(f"/data/plugin/projector/metadata?run={run_name}&name={embedding['tensorName']}")
    classes = ["PlayingCello", "PlayingDhol", "PlayingSitar"]
    assert metadata.decode().split() == [classes[c] for c in labels]
