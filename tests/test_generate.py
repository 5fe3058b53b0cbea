import shutil
import subprocess
import wave

import numpy as np
import pytest
import torch
from PIL import Image

from browser import CHROMIUM, open_page
from his.data.dataset import load_features, load_split
from his.eval import report
from his.generate import MAX_IMAGES, generate, main
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
    report.write_wav(path, pcm, SAMPLE_RATE)


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


def test_a_folder_gives_a_grid_and_a_player_for_each_sound_and_skips_a_bad_file(tiny_pipeline_data, trained_run,
                                                                                tmp_path, capsys):
    audio = load_split(tiny_pipeline_data["clips"] / "index.h5", "test", ["audio"])["audio"]
    sounds = tmp_path / "sounds"
    (sounds / "subfolder").mkdir(parents=True)
    write_pcm_wav(sounds / "clip-a.wav", audio[0])
    write_pcm_wav(sounds / "clip-b.wav", audio[-1])
    write_pcm_wav(sounds / "quiet.wav", np.zeros_like(audio[0]))
    (sounds / "bad.wav").write_bytes(b"not a sound" * 100)
    (sounds / ".hidden.wav").write_bytes(b"left out")
    out = tmp_path / "out"

    assert main(["--checkpoint", str(trained_run), "--audio", str(sounds), "--n", "3", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    bad, quiet = sorted(captured.err.strip().splitlines())
    assert bad.startswith(f"his.generate: {sounds / 'bad.wav'}: ")
    assert quiet == f"his.generate: {sounds / 'quiet.wav'}: silent middle 2 s window"
    assert "2 grids of 3 images, 2 files skipped" in captured.out
    assert sorted(p.name for p in out.glob("*.png")) == ["clip-a.png", "clip-b.png"]
    assert Image.open(out / "clip-a.png").size == (3 * CELL + 2, CELL + 2)
    # the player holds the exact window the images were drawn from (files in name order: bad, clip-a, ...)
    with wave.open(str(out / "report" / "sound-0001.wav")) as w:
        assert np.array_equal(np.frombuffer(w.readframes(w.getnframes()), "<i2"), audio[0])
    page = (out / "report.html").read_text()
    assert page.count("<audio") == 2 and "bad.wav" in page and ".hidden" not in page
    if CHROMIUM is None:
        pytest.skip("chromium is not installed: the page was not opened in a browser")
    check = open_page(out / "report.html")
    assert check.console_errors == [] and len(check.audio) == 2 and len(check.images) == 2
    assert all(loaded for _, loaded, _ in check.audio) and all(loaded for _, loaded in check.images)
    assert "Skipped" in check.text and "quiet.wav" in check.text


def test_a_folder_of_videos_puts_each_real_frame_beside_its_samples(tiny_pipeline_data, trained_run, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for video in sorted((tiny_pipeline_data["root"] / "data" / "UCF-101").rglob("*.avi"))[:2]:
        shutil.copy(video, videos / video.name)
    assert main(["--checkpoint", str(trained_run), "--video", str(videos), "--n", "8", "--out",
                 str(tmp_path / "out")]) == 0
    for video in videos.iterdir():
        grid = np.asarray(Image.open(tmp_path / "out" / f"{video.stem}.png"))
        assert grid.shape == (CELL + 2, 9 * CELL + 2, 3)
        assert np.array_equal(grid[2:66, 2:66], decode_clips(video, window_s=2.0, max_clips=1).frame64[0])


def test_n_and_out_are_checked_before_any_work(trained_run, tmp_path, capsys, monkeypatch):
    import his.generate

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(his.generate, "load_sampler", no_work)
    write_pcm_wav(tmp_path / "a.wav", np.full(3 * SAMPLE_RATE, 1000, np.int16))
    (tmp_path / "a-file").write_text("")
    for source, n, out, named in (
        ("a.wav", MAX_IMAGES + 1, "grid.png", f"n={MAX_IMAGES + 1}"),
        (".", 0, "out", "n=0"),
        ("a.wav", 4, "a-file/grid.png", "a-file"),
        (".", 4, "a-file/out", "a-file"),
        ("a.wav", 4, ".", "a directory"),
    ):
        code = main(["--checkpoint", str(trained_run), "--audio", str(tmp_path / source), "--n", str(n),
                     "--out", str(tmp_path / out)])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and named in err, (source, n, out, err)
    assert not (tmp_path / "grid.png").exists() and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def foreign_checkpoints(tiny_pipeline_data, trained_run, tmp_path_factory):
    """Checkpoint files his.generate may be handed: of a run of another width, and broken ones."""
    root = tmp_path_factory.mktemp("checkpoints")
    wide = root / "wide"
    run(TrainConfig(clips=str(tiny_pipeline_data["clips"]), features=str(tiny_pipeline_data["features"]),
                    out=str(wide), ngf=16, ndf=8, proj_dim=8, z_dim=8, batch_size=8, max_steps=1, n_critic=1,
                    warmup_gen_steps=0))
    wide_file = sorted((wide / "checkpoints").glob("step-*.pt"))[-1]
    # beside a config.toml that says ngf=8
    (root / "narrow" / "checkpoints").mkdir(parents=True)
    shutil.copy(trained_run / "config.toml", root / "narrow" / "config.toml")
    shutil.copy(wide_file, root / "narrow" / "checkpoints" / "wide.pt")
    state = torch.load(wide_file, weights_only=True)
    del state["config"]
    torch.save(state, root / "narrow" / "checkpoints" / "wide-without-config.pt")
    data = wide_file.read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "text.pt").write_text("not a checkpoint\n")
    torch.save({"weights": torch.zeros(3)}, root / "foreign.pt")
    return root


def test_a_checkpoint_of_another_width_draws_with_its_own_config(foreign_checkpoints, tmp_path):
    write_pcm_wav(tmp_path / "a.wav", (np.sin(np.arange(3 * SAMPLE_RATE) / 10) * 8000).astype(np.int16))
    checkpoint = foreign_checkpoints / "narrow" / "checkpoints" / "wide.pt"
    assert main(["--checkpoint", str(checkpoint), "--audio", str(tmp_path / "a.wav"), "--n", "2",
                 "--out", str(tmp_path / "grid.png")]) == 0


@pytest.mark.parametrize("name, reason", [
    ("truncated.pt", "not a readable checkpoint"),
    ("text.pt", "not a readable checkpoint"),
    ("foreign.pt", "not a his.train checkpoint"),
    ("missing.pt", "no such run directory or checkpoint file"),
    ("narrow/checkpoints/wide-without-config.pt", "do not fit"),
])
def test_a_checkpoint_it_cannot_use_is_one_line_and_exit_2(foreign_checkpoints, name, reason, tmp_path, capsys):
    write_pcm_wav(tmp_path / "a.wav", (np.sin(np.arange(3 * SAMPLE_RATE) / 10) * 8000).astype(np.int16))
    code = main(["--checkpoint", str(foreign_checkpoints / name), "--audio", str(tmp_path / "a.wav"), "--out",
                 str(tmp_path / "grid.png")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(foreign_checkpoints / name) in err and reason in err, err
    assert not (tmp_path / "grid.png").exists()


def test_a_grid_that_does_not_fit_on_the_disk_is_one_line_naming_it(trained_run, tmp_path, small_disk, capsys):
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    write_pcm_wav(tmp_path / "tone.wav", (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16))
    disk = small_disk("disk", 64)
    small_disk.fill(disk, 0)
    capsys.readouterr()
    assert main(["--checkpoint", str(trained_run), "--audio", str(tmp_path / "tone.wav"),
                 "--out", str(disk / "grid.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"his.generate: {disk / 'grid.png'}: No space left on device" and not list(disk.rglob(".*.tmp"))

