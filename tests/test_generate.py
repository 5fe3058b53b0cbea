import shutil
import subprocess
import wave

import numpy as np
import pytest
from PIL import Image

from his.data.dataset import load_features, load_split
from his.generate import generate, main
from his.media import SAMPLE_RATE, decode_clips, ffmpeg_exe
from his.synth.sound import VOICES, compose, render, write_wav
from his.train import TrainConfig, run

CELL = 64 + 2  # a grid cell and its padding (his.grid)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained_run(tiny_pipeline_data, tmp_path_factory):
    """A tiny his.train run on the pretrained-SoundNet features of the session's pipeline data."""
    run_dir = tmp_path_factory.mktemp("generate") / "run"
    run(TrainConfig(clips=str(tiny_pipeline_data["clips"]), features=str(tiny_pipeline_data["features"]),
                    out=str(run_dir), ngf=8, ndf=8, proj_dim=8, z_dim=8, batch_size=8, max_steps=2, n_critic=1,
                    warmup_gen_steps=0))
    return run_dir


def write_pcm_wav(path, pcm: np.ndarray) -> None:
    """int16 mono 22,050 Hz PCM as a WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.astype("<i2").tobytes())


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", *args], check=True, timeout=60)


def test_a_rendered_instrument_sound_gives_a_grid_of_the_right_size(trained_run, tmp_path, capsys):
    notes = compose(VOICES["PlayingCello"], register=0.5, loudness=0.8, tempo_bpm=100, duration=3.0,
                    rng=np.random.default_rng(0))
    write_wav(tmp_path / "cello.wav", render(notes, VOICES["PlayingCello"].program, 3.0, tmp_path))
    ffmpeg("-i", str(tmp_path / "cello.wav"), str(tmp_path / "cello.flac"))  # 44.1 kHz stereo FLAC: any format

    assert main(["--checkpoint", str(trained_run), "--audio", str(tmp_path / "cello.flac"), "--n", "5",
                 "--out", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").size == (5 * CELL + 2, CELL + 2)
    assert "grid.png" in capsys.readouterr().out

    # a checkpoint file draws what its run directory draws; the seed fixes the images
    checkpoint = sorted((trained_run / "checkpoints").glob("step-*.pt"))[-1]
    generate(checkpoint, tmp_path / "again.png", audio=tmp_path / "cello.flac", n=5)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "grid.png")), np.asarray(Image.open(tmp_path / "again.png")))


def test_a_generated_video_gives_its_real_middle_frame_beside_the_samples(tiny_pipeline_data, trained_run, tmp_path):
    video = sorted((tiny_pipeline_data["root"] / "data" / "UCF-101").rglob("*.avi"))[0]
    assert main(["--checkpoint", str(trained_run), "--video", str(video), "--out", str(tmp_path / "grid.png")]) == 0
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 * CELL + 2, 9 * CELL + 2, 3)  # 16 samples, 8 a row, and the real frame's column
    real = decode_clips(video, window_s=2.0, max_clips=1).frame64[0]
    assert np.array_equal(grid[2:66, 2:66], real)
    assert (grid[CELL + 2 : 2 * CELL, 2:66] == 255).all()


def test_the_feature_of_a_clip_is_its_stored_feature(tiny_pipeline_data, trained_run, tmp_path):
    """The sound is conditioned on exactly as in training: a clip's window, decoded from a file, gives the
    feature the feature set stores for it."""
    audio = load_split(tiny_pipeline_data["clips"] / "index.h5", "test", ["audio"])["audio"]
    stored = load_features(tiny_pipeline_data["features"], "test")
    for row in (0, len(audio) - 1):
        write_pcm_wav(tmp_path / "clip.wav", audio[row])
        result = generate(trained_run, tmp_path / "grid.png", audio=tmp_path / "clip.wav", n=1)
        np.testing.assert_allclose(result["feature"], stored[row], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def bad_inputs(trained_run, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bad")
    (root / "garbage.wav").write_bytes(b"this is not a sound file at all" * 100)
    write_pcm_wav(root / "short.wav", np.full(SAMPLE_RATE // 2, 1000, np.int16))
    ffmpeg("-f", "lavfi", "-i", "color=c=red:s=64x64:d=3", "-c:v", "mpeg4", str(root / "silent.avi"))
    (root / "no-checkpoint").mkdir()
    shutil.copy(trained_run / "config.toml", root / "no-checkpoint" / "config.toml")
    return {"root": root, "run": trained_run}


@pytest.mark.parametrize("option, name, checkpoint, reason", [
    ("--audio", "missing.wav", None, "no such file"),
    ("--audio", "garbage.wav", None, ""),
    ("--audio", "short.wav", None, "too short"),
    ("--audio", "silent.avi", None, "no audio"),
    ("--video", "silent.avi", None, "no audio"),
    ("--video", "short.wav", None, "no video"),
    ("--audio", "short.wav", "no-checkpoint", "no readable checkpoint"),
    ("--audio", "short.wav", "nowhere", "no such run directory"),
])
def test_each_bad_input_gives_one_line_and_exit_2(bad_inputs, option, name, checkpoint, reason, tmp_path, capsys):
    root = bad_inputs["root"]
    run_dir = root / checkpoint if checkpoint else bad_inputs["run"]
    code = main(["--checkpoint", str(run_dir), option, str(root / name), "--out", str(tmp_path / "grid.png")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert str(run_dir if checkpoint else root / name) in err and reason in err, err
    assert not (tmp_path / "grid.png").exists()
