"""Instrument sound for the generated data set: random melodies rendered by fluidsynth from a General MIDI
soundfont (FluidR3), or by numpy additive synthesis when fluidsynth or the soundfont is missing.

The MIDI file is written by the small writer below (format 0, one track), not by a MIDI package.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import wave
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SAMPLE_RATE = 44100
SOUNDFONT = Path(os.environ.get("HIS_SOUNDFONT", "/usr/share/sounds/sf2/FluidR3_GM.sf2"))
DRUM_CHANNEL = 9  # GM percussion: channel 10, counted from 1


@dataclass(frozen=True)
class Voice:
    """How one class sounds. `low`..`high`: the MIDI note range the pitch register spans (the centre note)."""

    program: int  # GM program, counted from 0 as fluidsynth lists them (cello 42, flute 73, sitar 104)
    low: int
    high: int
    scale: tuple[int, ...]  # semitone steps of the mode the melodies use
    drums: tuple[int, ...] = ()  # GM percussion keys played between the pitched strokes; empty: melodic
    name: str = ""  # what the sound is, for people: "GM 42 Cello"
    kit: tuple[int, ...] = ()  # pitched strokes on GM percussion keys (channel 10) instead of `program`
    drum_share: float = 0.45  # the chance that a stroke is one of `drums` rather than a pitched one

    @property
    def gm(self) -> str:
        """The General MIDI sound the pitched strokes use: "program 42", or "percussion" (the kit, channel 10)."""
        return "percussion" if self.kit else f"program {self.program}"


# Dhol, daf and tabla have no GM program; the stand-ins are a pitched GM sound for the bass stroke ("dum") and
# GM percussion keys for the treble strokes: taiko + bongo/conga slaps for the dhol, melodic tom + tambourine
# (the jingles of a frame drum) + open conga for the daf, woodblock + low bongo/low conga for the tabla.
# Drumming is the GM drum kit on channel 10: tom fills (the pitched strokes, low floor tom 41 .. high tom 50)
# between bass drum, snare and closed hi-hat strokes.
VOICES = {
    "PlayingCello": Voice(program=42, low=40, high=60, scale=(0, 2, 3, 5, 7, 8, 10), name="GM 42 Cello"),
    "PlayingDaf": Voice(program=117, low=41, high=60, scale=(0, 5, 7), drums=(54, 63),
                        name="GM 117 Melodic Tom, tambourine and open conga"),
    "PlayingDhol": Voice(program=116, low=36, high=55, scale=(0, 7), drums=(60, 62),
                         name="GM 116 Taiko Drum, bongo and conga slaps"),
    "PlayingFlute": Voice(program=73, low=67, high=86, scale=(0, 2, 4, 7, 9), name="GM 73 Flute"),
    "PlayingSitar": Voice(program=104, low=52, high=68, scale=(0, 1, 4, 5, 7, 8, 11), name="GM 104 Sitar"),
    "Drumming": Voice(program=0, low=41, high=50, scale=(), drums=(36, 38, 42), kit=(41, 43, 45, 47, 48, 50),
                      drum_share=0.6, name="GM percussion kit: toms, bass drum, snare, hi-hat"),
    "PlayingGuitar": Voice(program=25, low=45, high=69, scale=(0, 2, 4, 7, 9), name="GM 25 Acoustic Guitar (steel)"),
    "PlayingPiano": Voice(program=0, low=48, high=84, scale=(0, 2, 4, 5, 7, 9, 11),
                          name="GM 0 Acoustic Grand Piano"),
    "PlayingTabla": Voice(program=115, low=50, high=67, scale=(0, 5, 7, 10), drums=(61, 64),
                          name="GM 115 Woodblock, low bongo and low conga"),
    "PlayingViolin": Voice(program=40, low=55, high=88, scale=(0, 2, 3, 5, 7, 8, 10), name="GM 40 Violin"),
}


@dataclass(frozen=True)
class Note:
    start: float  # seconds
    length: float
    channel: int
    key: int
    velocity: int


def centre_note(voice: Voice, register: float) -> int:
    return int(round(voice.low + register * (voice.high - voice.low)))


def compose(voice: Voice, register: float, loudness: float, tempo_bpm: float, duration: float,
            rng: np.random.Generator) -> list[Note]:
    """A random melody (or drum pattern) around the register's centre note, one stroke per beat or half beat."""
    centre = centre_note(voice, register)
    if voice.kit:  # the drum kit's "melody": the toms nearest the centre key, on the percussion channel
        keys = sorted(sorted(voice.kit, key=lambda k: (abs(k - centre), k))[:3])
    else:
        keys = sorted({centre + 12 * octave + step for octave in (-1, 0, 1) for step in voice.scale})
        keys = [k for k in keys if centre - 5 <= k <= centre + 7] or [centre]
    channel = DRUM_CHANNEL if voice.kit else 0
    beat = 60.0 / tempo_bpm
    base_velocity = 40 + 80 * loudness
    notes: list[Note] = []
    index = keys.index(min(keys, key=lambda k: abs(k - centre)))
    t = 0.1
    while t < duration - 0.3:
        slot = beat if rng.random() < 0.7 else beat / 2
        velocity = int(np.clip(base_velocity + rng.normal(0, 4), 1, 127))
        if voice.drums and rng.random() < voice.drum_share and t > 0.1:
            notes.append(Note(t, 0.1, DRUM_CHANNEL, int(rng.choice(voice.drums)), velocity))
        else:
            index = int(np.clip(index + rng.integers(-2, 3), 0, len(keys) - 1))
            notes.append(Note(t, 0.9 * slot, channel, keys[index], velocity))
        t += slot
    return notes


def pitched_keys(voice: Voice, notes: list[Note]) -> list[int]:
    """The MIDI keys of the pitched strokes (the melody, or the drum kit's toms), sorted, each once."""
    if voice.kit:
        return sorted({n.key for n in notes if n.channel == DRUM_CHANNEL and n.key in voice.kit})
    return sorted({n.key for n in notes if n.channel != DRUM_CHANNEL})


def _vlq(n: int) -> bytes:
    """MIDI variable-length quantity."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(reversed(out))


def midi_bytes(notes: list[Note], program: int, ticks_per_second: int = 960) -> bytes:
    """A format-0 Standard MIDI File: tempo 60 bpm so one quarter note is one second of `ticks_per_second`."""
    events: list[tuple[int, int, bytes]] = [
        (0, 0, b"\xff\x51\x03" + (1_000_000).to_bytes(3, "big")),
        (0, 0, bytes([0xC0, program])),
    ]
    for n in notes:
        on, off = round(n.start * ticks_per_second), round((n.start + n.length) * ticks_per_second)
        events.append((on, 2, bytes([0x90 | n.channel, n.key, n.velocity])))
        events.append((off, 1, bytes([0x80 | n.channel, n.key, 0])))  # offs sort before ons at the same tick
    events.sort(key=lambda e: (e[0], e[1]))
    end = events[-1][0] + ticks_per_second // 2
    events.append((end, 3, b"\xff\x2f\x00"))
    track, last = bytearray(), 0
    for tick, _, data in events:
        track += _vlq(tick - last) + data
        last = tick
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, ticks_per_second)
    return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


@lru_cache(maxsize=1)
def fluidsynth_available() -> bool:
    return shutil.which("fluidsynth") is not None and SOUNDFONT.is_file()


def warn_if_fallback() -> None:
    if not fluidsynth_available():
        print(f"his.synth: warning: fluidsynth or {SOUNDFONT} missing; using numpy additive synthesis",
              file=sys.stderr)


def render_fluidsynth(notes: list[Note], program: int, workdir: Path, timeout: float = 60.0) -> np.ndarray:
    """Render with the fluidsynth CLI; returns int16 (samples, 2) at 44.1 kHz."""
    midi, wav = workdir / "melody.mid", workdir / "melody.wav"
    midi.write_bytes(midi_bytes(notes, program))
    cmd = ["fluidsynth", "-ni", "-q", "-g", "0.6", "-r", str(SAMPLE_RATE), "-o", "synth.dynamic-sample-loading=1",
           "-T", "wav", "-O", "s16", "-F", str(wav), str(SOUNDFONT), str(midi)]
    subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=True)
    with wave.open(str(wav), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.reshape(-1, 2)


def render_numpy(notes: list[Note], duration: float) -> np.ndarray:
    """Additive synthesis: decaying harmonic tones for pitched notes, noisy pitch-dropping hits for drums."""
    total = np.zeros(int(duration * SAMPLE_RATE) + SAMPLE_RATE, dtype=np.float64)
    noise = np.random.default_rng(0).standard_normal(SAMPLE_RATE // 4)
    for n in notes:
        start = int(n.start * SAMPLE_RATE)
        amp = 0.25 * n.velocity / 127
        if n.channel == DRUM_CHANNEL:
            t = np.arange(SAMPLE_RATE // 4) / SAMPLE_RATE
            tone = amp * np.exp(-t * 30) * (noise + np.sin(2 * np.pi * (200 + 800 * np.exp(-t * 40)) * t))
        else:
            t = np.arange(int((n.length + 0.15) * SAMPLE_RATE)) / SAMPLE_RATE
            f0 = 440.0 * 2 ** ((n.key - 69) / 12)
            envelope = np.minimum(t / 0.02, 1.0) * np.exp(-t * 2.0) * (t < n.length + 0.1)
            tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6) if k * f0 < SAMPLE_RATE / 2)
            tone = amp * envelope * tone
        end = min(start + len(tone), len(total))
        total[start:end] += tone[: end - start]
    pcm = np.clip(total * 32767, -32768, 32767).astype(np.int16)
    return np.stack([pcm, pcm], axis=1)


def render(notes: list[Note], program: int, duration: float, workdir: Path) -> np.ndarray:
    """The clip's sound, exactly `duration` seconds, int16 (samples, 2), with a short fade-out at the end."""
    pcm = render_fluidsynth(notes, program, workdir) if fluidsynth_available() else render_numpy(notes, duration)
    n = int(round(duration * SAMPLE_RATE))
    out = np.zeros((n, 2), dtype=np.float32)
    out[: min(n, len(pcm))] = pcm[:n]
    fade = int(0.05 * SAMPLE_RATE)
    out[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)[:, None]
    return out.astype(np.int16)


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.astype("<i2").tobytes())
