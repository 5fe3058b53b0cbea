"""The generated data set passes as UCF-101 / PPMI, and its sound and pictures carry what the attributes say.

Everything about the data set is measured on the written files: ffprobe (Debian's) for the container, decoded
audio for pitch, decoded frames for brightness and the instrument's height. What the rooms say of the class,
and every class's sound and picture, are checked on the looks and sounds the files are made from.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import ffmpeg
import numpy as np
import pytest
from PIL import Image

from his.media import decode_audio, run_ffmpeg
from his.synth import ALL_CLASSES, REPORT_CLASSES, SEED_ORDER, generate, group_look, scene, sound
from his.synth.__main__ import main
from his.synth.scene import INSTRUMENT_COLOURS, ROOMS

CLASSES = ("PlayingCello", "PlayingDhol", "PlayingFlute")
DURATION = (4.0, 5.0)
FFPROBE = shutil.which("ffprobe")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = generate(out, CLASSES, videos_per_class=8, groups=4, ppmi_images=12, seed=3, duration_range=DURATION,
                       progress=False)
    attributes = json.loads((out / "attributes.json").read_text())
    return out, summary, attributes


def clips_of(attributes, cls):
    return [c for c in attributes["clips"] if c["class"] == cls]


def decoded_frames(path: Path, fps: float = 5.0) -> np.ndarray:
    """A few decoded RGB frames of a video, (n, 240, 320, 3) uint8."""
    stream = ffmpeg.input(str(path)).output("pipe:", format="rawvideo", pix_fmt="rgb24", vf=f"fps={fps}")
    raw = run_ffmpeg(stream, path)
    return np.frombuffer(raw, np.uint8).reshape(-1, 240, 320, 3)


def test_summary_and_layout(dataset):
    out, summary, attributes = dataset
    assert summary["videos"] == 24 and summary["images"] == 12 and summary["train"] + summary["test"] == 24
    assert summary["sound"] == ("fluidsynth" if sound.fluidsynth_available() else "numpy")
    assert summary["rooms"] == attributes["rooms"] == "shared"
    videos = sorted(out.glob("UCF-101/*/*.avi"))
    assert len(videos) == 24
    for v in videos:
        assert re.fullmatch(r"v_(Playing\w+)_g(\d\d)_c(\d\d)\.avi", v.name).group(1) == v.parent.name
    assert sorted(out / c["video"] for c in attributes["clips"]) == videos
    assert not list(out.rglob(".*.tmp")), "temporary files left behind"


@pytest.mark.skipif(FFPROBE is None, reason="needs Debian's ffprobe")
def test_videos_pass_as_ucf101(dataset):
    out, _, attributes = dataset
    probed = []  # the shortest and the longest clip of each class (Debian's ffprobe is slow to start)
    for cls in CLASSES:
        clips = sorted(clips_of(attributes, cls), key=lambda c: c["duration_s"])
        probed += [clips[0], clips[-1]]
    for clip in probed:
        probe = subprocess.run([FFPROBE, "-v", "error", "-show_streams", "-show_format", "-of", "json",
                                str(out / clip["video"])], capture_output=True, text=True, timeout=30, check=True)
        info = json.loads(probe.stdout)
        video = [s for s in info["streams"] if s["codec_type"] == "video"]
        audio = [s for s in info["streams"] if s["codec_type"] == "audio"]
        assert info["format"]["format_name"] == "avi"
        assert len(video) == 1 and len(audio) == 1
        assert video[0]["codec_name"] == "mpeg4" and video[0]["codec_tag_string"] == "xvid"
        assert (video[0]["width"], video[0]["height"]) == (320, 240)
        assert video[0]["r_frame_rate"] == "25/1"
        assert audio[0]["codec_name"] in ("mp3", "aac") and audio[0]["sample_rate"] == "44100"
        assert DURATION[0] - 0.1 <= float(info["format"]["duration"]) <= DURATION[1] + 0.1


def test_split_lists_parse_and_no_group_leaks(dataset):
    out, _, attributes = dataset
    lists = out / "ucfTrainTestlist"
    class_ind = dict(line.split() for line in (lists / "classInd.txt").read_text().splitlines())
    assert sorted(class_ind.values()) == sorted(CLASSES) and sorted(class_ind) == ["1", "2", "3"]
    label = {name: int(i) for i, name in class_ind.items()}
    train = [line.split() for line in (lists / "trainlist01.txt").read_text().splitlines()]
    test = [line.split() for line in (lists / "testlist01.txt").read_text().splitlines()]
    assert all(len(t) == 2 for t in train) and all(len(t) == 1 for t in test)
    for path, index in train:
        assert label[path.split("/")[0]] == int(index)
    listed = [t[0] for t in train] + [t[0] for t in test]
    assert sorted(listed) == sorted(c["video"].removeprefix("UCF-101/") for c in attributes["clips"])
    assert all((out / "UCF-101" / p).is_file() for p in listed)

    def groups(rows):
        return {re.search(r"(Playing\w+)_g(\d\d)", r[0]).groups() for r in rows}

    assert groups(train) and groups(test) and not groups(train) & groups(test)


def test_ppmi_layout(dataset):
    out, _, attributes = dataset
    images = sorted(out.glob("PPMI/norm_image/*/*/*/*.jpg"))
    assert len(images) == 12 == len(attributes["images"])
    assert {p.relative_to(out / "PPMI/norm_image").parts[0] for p in images} == {"play_instrument", "with_instrument"}
    assert {p.parent.parent.name for p in images} == {c.removeprefix("Playing") for c in CLASSES}
    for p in images:
        with Image.open(p) as im:
            assert im.format == "JPEG" and 150 <= min(im.size) and max(im.size) <= 450


def test_same_seed_same_bytes_and_reruns_reuse(tmp_path):
    def digests(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    args = dict(classes=["PlayingSitar"], videos_per_class=2, groups=2, ppmi_images=2, duration_range=(2.0, 2.0),
                progress=False)
    assert not generate(tmp_path / "a", seed=7, **args)["reused"]
    generate(tmp_path / "b", seed=7, **args)
    generate(tmp_path / "c", seed=8, **args)
    a, b, c = digests(tmp_path / "a"), digests(tmp_path / "b"), digests(tmp_path / "c")
    assert len(a) == 2 + 2 + 4 and a == b  # videos, images, three split lists and attributes.json
    assert a["UCF-101/PlayingSitar/v_PlayingSitar_g01_c01.avi"] != c["UCF-101/PlayingSitar/v_PlayingSitar_g01_c01.avi"]
    # a rerun finds the complete data set; a changed setting or --force makes it anew
    assert generate(tmp_path / "a", seed=7, **args)["reused"]
    assert not generate(tmp_path / "a", seed=7, force=True, **args)["reused"]
    assert digests(tmp_path / "a") == a
    assert not generate(tmp_path / "a", seed=8, **args)["reused"]
    assert digests(tmp_path / "a") == c
    # the rooms are a setting too: per-class rooms make other pictures of the same sound
    assert not generate(tmp_path / "a", seed=8, rooms="per-class", **args)["reused"]
    d = digests(tmp_path / "a")
    assert json.loads((tmp_path / "a" / "attributes.json").read_text())["rooms"] == "per-class"
    video = "UCF-101/PlayingSitar/v_PlayingSitar_g01_c01.avi"
    assert d[video] != c[video] and d["ucfTrainTestlist/trainlist01.txt"] == c["ucfTrainTestlist/trainlist01.txt"]


def dominant_midi(samples: np.ndarray, sample_rate: int) -> float:
    """The strongest spectral peak between 60 Hz and 4 kHz, as a (fractional) MIDI note number."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / sample_rate)
    band = (freqs > 60) & (freqs < 4000)
    peak = freqs[band][np.argmax(spectrum[band])]
    return 69 + 12 * np.log2(peak / 440)


def near_a_played_harmonic(midi: float, notes: list[int], tolerance: float = 0.15) -> bool:
    return any(abs(midi - (n + 12 * np.log2(k))) < tolerance for n in notes for k in (1, 2, 3, 4))


@pytest.mark.parametrize("cls", ["PlayingCello", "PlayingFlute"])
def test_audio_has_the_rendered_pitch(dataset, cls):
    out, _, attributes = dataset
    clips = clips_of(attributes, cls)
    for clip in clips:
        midi = dominant_midi(decode_audio(out / clip["video"]), 22050)
        assert near_a_played_harmonic(midi, clip["notes"]), (clip["video"], midi, clip["notes"])
    # and the pitch follows the register across clips
    low, high = min(clips, key=lambda c: c["pitch_register"]), max(clips, key=lambda c: c["pitch_register"])
    assert np.mean(low["notes"]) < np.mean(high["notes"])


def hue_and_saturation(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rgb = rgb.astype(np.float32)
    top, bottom = rgb.max(-1), rgb.min(-1)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.degrees(np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)) % 360
    return hue, (top - bottom) / np.maximum(top, 1)


def instrument_row(frames: np.ndarray, colour: tuple[int, int, int]) -> float:
    """Mean row of the strongly saturated pixels of the instrument's hue (the light does not change hue)."""
    hue, saturation = hue_and_saturation(frames)
    target, _ = hue_and_saturation(np.array(colour))
    mask = (saturation > 0.7) & (frames.max(-1) > 40) & (np.abs(hue - target) < 12)
    assert mask.sum() > 100 * len(frames), "instrument not found"
    return float(np.nonzero(mask)[1].mean())


def test_picture_follows_the_sound(dataset):
    out, _, attributes = dataset
    for cls in CLASSES:
        clips = clips_of(attributes, cls)
        frames = {c["video"]: decoded_frames(out / c["video"]) for c in clips}
        brightness = [frames[c["video"]].mean() for c in clips]  # shared rooms are all equally bright
        r = np.corrcoef([c["loudness"] for c in clips], brightness)[0, 1]
        assert r > 0.8, (cls, r)
        # a group is one look, so within a group the light alone sets the brightness: every pixel times 0.4 + 0.6 l
        for group in {c["group"] for c in clips}:
            a, b = [c for c in clips if c["group"] == group][:2]
            measured = frames[a["video"]].mean() / frames[b["video"]].mean()
            expected = (0.4 + 0.6 * a["loudness"]) / (0.4 + 0.6 * b["loudness"])
            assert abs(measured / expected - 1) < 0.1, (cls, group, measured, expected)
        # the mappings are linear, so Pearson's r; clips with nearly equal registers make rank orders noisy
        if cls in ("PlayingCello", "PlayingDhol"):  # instruments of many pixels, found by their look's colour
            rows = [instrument_row(frames[c["video"]], tuple(c["instrument_colour"])) for c in clips]
            r = np.corrcoef([c["pitch_register"] for c in clips], rows)[0, 1]
            assert r < -0.8, (cls, r)  # higher pitch, higher in the frame (smaller row)


def test_every_class_register_and_loudness_drive_height_size_and_light():
    for cls in ALL_CLASSES:
        look = group_look(cls, 1, 0)

        def instrument_pixels(register):
            picture = np.asarray(scene.paint(look, register, 1.0, 0.0))
            return np.nonzero((picture == look.instrument).all(-1))

        low, high = instrument_pixels(0.0), instrument_pixels(1.0)
        assert len(low[0]) > 150, (cls, len(low[0]))  # big enough to see in a 64x64 frame (a 3x smaller crop)
        # the riser lifts the floor 60 px and the figure is drawn 0.75 times as large about its feet
        expected = scene.FLOOR_Y - scene.RISER_LIFT + 0.75 * (low[0].mean() - scene.FLOOR_Y)
        assert abs(high[0].mean() - expected) < 3 and high[0].mean() < low[0].mean() - 10, cls
        assert 0.45 < len(high[0]) / len(low[0]) < 0.7, cls  # drawn 0.75 times as large: 0.56 times the area
        quiet, loud = (np.asarray(scene.paint(look, 0.5, loudness, 0.0), np.float64) for loudness in (0.0, 1.0))
        assert abs(quiet.mean() / loud.mean() - 0.4) < 0.01, cls


def test_every_class_has_its_own_sound(tmp_path):
    voices = [sound.VOICES[c] for c in ALL_CLASSES]
    assert len(ALL_CLASSES) == 10 and set(REPORT_CLASSES) < set(ALL_CLASSES)
    assert SEED_ORDER[:5] == REPORT_CLASSES and sorted(SEED_ORDER) == list(ALL_CLASSES)  # old seeds kept
    assert len({v.gm for v in voices}) == 10  # ten GM programs, the drum kit among them
    assert len({v.name for v in voices}) == 10
    spectra = {}
    for cls, voice in zip(ALL_CLASSES, voices):
        notes = sound.compose(voice, 0.5, 0.8, 120, 1.5, np.random.default_rng(0))
        midi = sound.midi_bytes(notes, voice.program)
        assert bytes([0xC0, voice.program]) in midi
        pitched = [n for n in notes if n.key in sound.pitched_keys(voice, notes)]
        assert pitched and all(n.channel == (sound.DRUM_CHANNEL if voice.kit else 0) for n in pitched), cls
        pcm = sound.render(notes, voice.program, 1.5, tmp_path).astype(np.float64).mean(1)
        assert np.abs(pcm).mean() > 100, cls  # not silent
        spectrum = np.abs(np.fft.rfft(pcm))[:15000].reshape(-1, 300).sum(1)  # 50 bands of 200 Hz to 10 kHz
        spectra[cls] = spectrum / np.linalg.norm(spectrum)
    names = list(spectra)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert spectra[a] @ spectra[b] < 0.99, (a, b)
    # the drum kit's register picks the toms: low floor toms for a low register, high toms for a high one
    kit = sound.VOICES["Drumming"]
    keys = {r: sound.pitched_keys(kit, sound.compose(kit, r, 0.8, 120, 6.0, np.random.default_rng(1)))
            for r in (0.0, 1.0)}
    assert max(keys[0.0]) <= 45 and min(keys[1.0]) >= 47


def background_means(rooms: str, groups) -> np.ndarray:
    """(classes, groups, 3): the mean colour of each group's room, as its frames have it behind the player."""
    return np.array([[np.asarray(group_look(c, g, 0, rooms).background).reshape(-1, 3).mean(0) for g in groups]
                     for c in ALL_CLASSES])


def nearest_centroid_accuracy(features: np.ndarray, train: slice, test: slice) -> float:
    """Class from the room's colour: train on some groups, test on others, as a frame classifier would."""
    centroids = features[:, train].mean(1)
    tested = features[:, test]
    guess = np.linalg.norm(tested[:, :, None] - centroids[None, None], axis=-1).argmin(-1)
    return float((guess == np.arange(len(features))[:, None]).mean())


def test_shared_rooms_say_nothing_of_the_class():
    shared, per_class = background_means("shared", range(1, 13)), background_means("per-class", range(1, 13))
    # the class's mean room over its groups: the same for every class when shared, far apart when per class
    assert np.abs(shared.mean(1) - shared.mean((0, 1))).max() < 1.0
    assert np.abs(per_class.mean(1) - per_class.mean((0, 1))).max() > 30
    # so a classifier of the room's colour learns nothing from shared rooms and everything from per-class ones
    train, test = slice(3, 12), slice(0, 3)
    assert nearest_centroid_accuracy(shared, train, test) <= 0.2
    assert nearest_centroid_accuracy(per_class, train, test) >= 0.9
    # shared: a group is one player in one room for every class, and the groups draw from many rooms
    for group in range(1, 5):
        looks = [group_look(c, group, 0) for c in ALL_CLASSES]
        assert len({(lk.background.tobytes(), lk.skin, lk.shirt, lk.instrument, lk.x) for lk in looks}) == 1
        assert len({lk.pose for lk in looks}) == 3  # the pose follows the instrument: stool, floor, stand
    walls = {group_look("PlayingCello", g, 0).wall for g in range(1, 13)}
    colours = {group_look("PlayingCello", g, 0).instrument for g in range(1, 13)}
    assert len(walls) >= 8 and len(colours) >= 4


def test_per_class_rooms_keep_the_class_room():
    for cls in ALL_CLASSES:
        looks = [group_look(cls, g, 0, "per-class") for g in range(1, 5)]
        assert all(lk.instrument == INSTRUMENT_COLOURS[cls] for lk in looks)
        wall = np.array(ROOMS[cls].wall, np.float64)
        wall = wall.mean() + 0.5 * (wall - wall.mean())  # the class's palette, kept muted, jittered by +-18
        for lk in looks:
            assert np.abs(np.subtract(lk.wall, wall)).max() <= 19 and lk.pose == scene.POSES[cls], (cls, lk.wall)
        assert len({lk.background.tobytes() for lk in looks}) == 4  # the clutter differs by group


def test_all_ten_classes_make_a_data_set(tmp_path):
    summary = generate(tmp_path, ALL_CLASSES, videos_per_class=2, groups=2, ppmi_images=10, seed=1,
                       duration_range=(1.0, 1.0), progress=False)
    attributes = json.loads((tmp_path / "attributes.json").read_text())
    assert summary["videos"] == 20 and summary["classes"] == sorted(ALL_CLASSES)
    assert sorted(p.name for p in (tmp_path / "UCF-101").iterdir()) == sorted(ALL_CLASSES)
    assert len({c["gm"] for c in attributes["clips"]}) == 10
    assert all(c["notes"] for c in attributes["clips"])
    assert len(list(tmp_path.glob("PPMI/norm_image/*/*/*/*.jpg"))) == 10
    # shared rooms: the same room behind every class's player of a group, on the decoded frames too
    for group in (1, 2):
        clips = [c for c in attributes["clips"] if c["group"] == group and c["clip"] == 1]
        assert len({tuple(c["wall"]) for c in clips}) == 1
        bands = [decoded_frames(tmp_path / c["video"], fps=25)[:, :16].reshape(-1, 3).mean(0)
                 / (0.4 + 0.6 * c["loudness"]) for c in clips]  # the wall above the player, in full light
        # (with per-class rooms the classes' bands are 70-80 apart; codec noise in dim light is a few units)
        assert np.abs(np.array(bands) - np.mean(bands, 0)).max() < 10, bands


def test_cli_with_numpy_fallback(tmp_path):
    env = dict(os.environ, HIS_SOUNDFONT=str(tmp_path / "missing.sf2"))
    run = subprocess.run([sys.executable, "-m", "his.synth", "--out", str(tmp_path / "d"), "--classes",
                          "PlayingFlute", "--videos-per-class", "2", "--ppmi-images", "0", "--duration-range", "4",
                          "4"], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    assert "warning" in run.stderr and "numpy additive synthesis" in run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["sound"] == "numpy"
    attributes = json.loads((tmp_path / "d" / "attributes.json").read_text())
    for clip in attributes["clips"]:
        midi = dominant_midi(decode_audio(tmp_path / "d" / clip["video"]), 22050)
        assert near_a_played_harmonic(midi, clip["notes"]), (midi, clip["notes"])


@pytest.mark.parametrize("args, reason", [
    (["--classes", "PlayingBanjo"], "unknown class 'PlayingBanjo'"),
    (["--rooms", "mixed"], "--rooms"),
    (["--videos-per-class", "0"], "--videos-per-class"),
    (["--groups", "1"], "--groups"),
    (["--duration-range", "5", "4"], "--duration-range"),
    (["--seed", "x"], "--seed"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, reason):
    with pytest.raises(SystemExit) as exit:
        main(["--out", str(tmp_path / "d"), *args])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and reason in err


def test_unwritable_output_exits_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exit:
        main(["--out", str(blocker / "d"), "--videos-per-class", "2"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot write to" in err
