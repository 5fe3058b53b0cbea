"""A generated stand-in for UCF-101 and PPMI, in their exact file formats, with real instrument sound.

    python -m his.synth --out DIR [--classes PlayingCello,PlayingDhol] [--videos-per-class N] [--groups G]
                        [--ppmi-images M] [--seed S] [--duration-range 4 10] [--rooms shared|per-class]
                        [--layout ucf101|csv|folders] [--workers 2] [--force]

writes, the same bytes for the same arguments (and the same ffmpeg, fluidsynth, soundfont and Pillow):
  --layout ucf101 (default):
  DIR/UCF-101/<Class>/v_<Class>_gGG_cCC.avi   320x240, 25 fps, MPEG-4 Part 2 (xvid tag), MP3 (or AAC) 44.1 kHz
  DIR/ucfTrainTestlist/classInd.txt, trainlist01.txt, testlist01.txt   (a group is never in both splits;
      as UCF-101's split 1 takes groups 1-7 of 25 for test, the first round(G * 7/25) groups are test)
  --layout csv (as a VGGSound download; classes by their VGGSound names, VGGSOUND_NAMES):
  DIR/VGGSound/video/<YouTube-like id>_<start as 6 digits>.mp4   the segment already cut (MPEG-4 Part 2, AAC)
  DIR/VGGSound/vggsound.csv   id, start seconds, label, split (train/test, by group as above), no header
  --layout folders (a folder of class folders, named by their VGGSound names):
  DIR/folders/<class>/v_<Class>_gGG_cCC.avi   (no split: hpc.preprocess draws one, keeping groups together)
  DIR/PPMI/norm_image/{play_instrument,with_instrument}/<Instrument>/{train,test}/NNNN.jpg
  DIR/attributes.json   the settings (rooms included) and every clip's and image's attributes, for evaluation;
      a rerun with the same settings finds it and reuses the data set (--force makes it anew)

Classes: UCF-101's ten music classes, all of them by default: Drumming, PlayingCello, PlayingDaf, PlayingDhol,
PlayingFlute, PlayingGuitar, PlayingPiano, PlayingSitar, PlayingTabla, PlayingViolin (REPORT_CLASSES: the
report's five, cello, daf, dhol, flute and sitar).

Sound: random melodies rendered by fluidsynth with the FluidR3 General MIDI soundfont, each class its own GM
sound (programs counted from 0): cello 42, flute 73, sitar 104, guitar 25 (steel-string acoustic), piano 0,
violin 40; stand-ins for the drums GM lacks: dhol = taiko drum (116) with bongo and conga slaps, daf = melodic
tom (117) with tambourine jingles and an open conga, tabla = woodblock (115) with low bongo and low conga;
drumming = the GM drum kit (channel 10): tom fills between bass drum, snare and hi-hat strokes. Without
fluidsynth or the soundfont (HIS_SOUNDFONT names another): numpy additive synthesis, with a one-line warning.

Picture: a player with the instrument in a room, camera shake, the upper body swaying a little. Each group (one
player, as in UCF-101) fixes skin, hair, clothes, the player's place, the room (wall and floor palette, clutter)
and the instrument's colour. The class shows only in the instrument's shape, where and how it is held, and the
pose the instrument needs: seated on a stool (cello, daf, piano, drum kit), cross-legged on the floor (sitar,
tabla), standing (flute, violin, guitar, and the dhol hung from the shoulder).
  --rooms shared (default): every class draws all of a group's look from the same pools (the hues of the
      ten per-class rooms' walls and floors, all at one brightness so that the light still tells the loudness;
      skins, clothes, instrument colours), seeded by the group alone: group g is the same player in the same
      room in every class, so the room says nothing of the class.
  --rooms per-class: each class its own room palette and instrument colour, its groups varying only the
      clutter, clothes and place (the scheme before rooms were shared, for comparison; the report's five
      classes come out byte for byte as they did then). A frame classifier can learn the class from the wall.

What the sound says about the picture, within a class (every clip draws r, l and tempo at random):
  pitch register r in [0, 1] -> the melody's centre note (e.g. cello MIDI 40..60, flute 67..86; for the drum
      kit the toms played, low floor tom 41 .. high tom 50), and the player stands on a riser 60*r pixels
      high and is drawn (1 - 0.25 r) times as large: the higher the pitch, the higher (and smaller) the player
      and instrument in the frame.
  loudness l in [0, 1]       -> MIDI velocity 40 + 80 l, and the scene's light: every pixel times 0.4 + 0.6 l.
  tempo (70..150 bpm)         -> the beat of the melody, and the bow, sticks or playing hands move once a beat.
Each clip's record in attributes.json also has its GM program ("gm": "program 42" or "percussion"), centre
note, the pitched keys played, and its look: pose, instrument colour, wall and floor colour.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import ffmpeg
import numpy as np
from tqdm import tqdm

from his import __version__
from his.data import layouts
from his.io import atomic_path, write_json
from his.media import ffmpeg_exe
from his.synth import scene, sound

ALL_CLASSES: tuple[str, ...] = tuple(sorted(sound.VOICES))  # UCF-101's ten music classes, alphabetical
REPORT_CLASSES: tuple[str, ...] = ("PlayingCello", "PlayingDaf", "PlayingDhol", "PlayingFlute", "PlayingSitar")
DEFAULT_CLASSES = ALL_CLASSES
# The seed key of each class: the report's five first, as they were numbered when they were the only classes,
# so their clips keep their seeds; the classes added later follow.
SEED_ORDER: tuple[str, ...] = REPORT_CLASSES + ("Drumming", "PlayingGuitar", "PlayingPiano", "PlayingTabla",
                                                "PlayingViolin")
SHARED_LOOK = 1000  # the seed key of a look drawn for no class in particular (rooms "shared")
ROOM_MODES = scene.ROOM_MODES
LAYOUTS = layouts.LAYOUTS
# The VGGSound class of each UCF-101 class (daf and dhol by the nearest VGGSound has: a frame drum, a big drum).
VGGSOUND_NAMES = {"Drumming": "playing drum kit", "PlayingCello": "playing cello", "PlayingDaf": "playing tambourine",
                  "PlayingDhol": "playing bass drum", "PlayingFlute": "playing flute",
                  "PlayingGuitar": "playing acoustic guitar", "PlayingPiano": "playing piano",
                  "PlayingSitar": "playing sitar", "PlayingTabla": "playing tabla",
                  "PlayingViolin": "playing violin, fiddle"}
VGGSOUND_CSV = "VGGSound/vggsound.csv"
YOUTUBE_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
FPS = 25
TEST_GROUP_FRACTION = 7 / 25  # UCF-101 split 1: groups 1-7 of 25 are test
TEMPO_RANGE = (70.0, 150.0)
IMAGES_PER_TASK = 25


class SynthError(ValueError):
    """Arguments the generator cannot use; the message is one line."""


@dataclass(frozen=True)
class Clip:
    cls: str
    group: int
    clip: int
    split: str
    pitch_register: float
    loudness: float
    tempo_bpm: float
    duration_s: float
    video: str = ""  # its file under the output folder, named as the layout names it
    youtube_id: str = ""  # csv: the id and start column of its row (its file is the segment already cut)
    start_s: int = 0

    @property
    def name(self) -> str:
        return f"v_{self.cls}_g{self.group:02d}_c{self.clip:02d}"


@dataclass(frozen=True)
class PpmiImage:
    cls: str
    index: int  # over all images, the seed key
    path: str
    subset: str  # "play_instrument" or "with_instrument"
    split: str


def _rng(seed: int, cls: str, *keys: int) -> np.random.Generator:
    """Each clip, look and image has its own stream, so results do not depend on which other ones are made."""
    return np.random.default_rng([seed, SEED_ORDER.index(cls), *keys])


def _look_rng(seed: int, rooms: str, cls: str, group: int, index: int, stream: int) -> np.random.Generator:
    """The stream a look is drawn from: the class's own (rooms "per-class"), or one that ignores the class
    (rooms "shared"), so group g is the same player in the same room in every class."""
    if rooms == "per-class":
        return _rng(seed, cls, group, index, stream)
    return np.random.default_rng([seed, SHARED_LOOK, group, index, stream])


def group_look(cls: str, group: int, seed: int, rooms: str = "shared") -> scene.Look:
    """The look (player, room, instrument colour) of one group of a class, as its clips draw it."""
    return scene.make_look(cls, _look_rng(seed, rooms, cls, group, 0, 1), rooms)


@lru_cache(maxsize=1)
def audio_codec() -> str:
    """libmp3lame as UCF-101 has MP3, when this ffmpeg build has it; AAC otherwise."""
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-encoders"], capture_output=True,
                         text=True, timeout=30)
    return "libmp3lame" if "libmp3lame" in out.stdout else "aac"


def plan_clips(classes: Sequence[str], videos_per_class: int, groups: int, seed: int,
               duration_range: tuple[float, float], layout: str = "ucf101") -> list[Clip]:
    test_groups = max(1, round(groups * TEST_GROUP_FRACTION))
    clips = []
    for cls in classes:
        for i in range(videos_per_class):
            group, index = i % groups + 1, i // groups + 1
            rng = _rng(seed, cls, group, index, 0)
            duration = round(rng.uniform(*duration_range) * FPS) / FPS
            clip = Clip(cls=cls, group=group, clip=index, split="test" if group <= test_groups else "train",
                        pitch_register=round(float(rng.uniform()), 4), loudness=round(float(rng.uniform()), 4),
                        tempo_bpm=round(float(rng.uniform(*TEMPO_RANGE)), 1), duration_s=duration)
            clips.append(_placed(clip, layout, _rng(seed, cls, group, index, 4)))
    return sorted(clips, key=lambda c: (c.cls, c.group, c.clip))


def _placed(clip: Clip, layout: str, rng: np.random.Generator) -> Clip:
    """The clip with its file named as `layout` names it (csv: a YouTube-like id and a start of its own)."""
    if layout == "csv":
        youtube_id = "".join(rng.choice(list(YOUTUBE_ID_CHARS), 11))
        start = int(rng.integers(0, 300))
        return replace(clip, video=f"VGGSound/video/{youtube_id}_{start:06d}.mp4", youtube_id=youtube_id,
                       start_s=start)
    if layout == "folders":
        return replace(clip, video=f"folders/{VGGSOUND_NAMES[clip.cls]}/{clip.name}.avi")
    return replace(clip, video=f"UCF-101/{clip.cls}/{clip.name}.avi")


def plan_images(classes: Sequence[str], count: int) -> list[PpmiImage]:
    """Round robin over classes, then play/with, then train/test, numbered within each folder as PPMI does."""
    images, numbers = [], {}
    for i in range(count):
        cls = classes[i % len(classes)]
        subset = ("play_instrument", "with_instrument")[(i // len(classes)) % 2]
        split = ("train", "test")[(i // (2 * len(classes))) % 2]
        folder = f"PPMI/norm_image/{subset}/{cls.removeprefix('Playing')}/{split}"
        numbers[folder] = numbers.get(folder, 0) + 1
        images.append(PpmiImage(cls, i, f"{folder}/{numbers[folder]:04d}.jpg", subset, split))
    return images


def encode_video(frames: bytes | bytearray, wav: Path, duration: float, path: Path, timeout: float = 120.0,
                 container: str = "avi") -> None:
    """rgb24 frames at 25 fps + a WAV -> AVI (MPEG-4 Part 2 with the xvid tag, MP3/AAC) or MP4 (MPEG-4 Part 2,
    AAC, as YouTube downloads have), bit-exact output."""
    video = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{scene.WIDTH}x{scene.HEIGHT}",
                         framerate=FPS)
    audio = ffmpeg.input(str(wav))
    codecs = {"vtag": "xvid", "acodec": audio_codec()} if container == "avi" else {"acodec": "aac"}
    stream = ffmpeg.output(
        video, audio, str(path), format=container, vcodec="mpeg4", pix_fmt="yuv420p", **codecs,
        ar=sound.SAMPLE_RATE, ac=2, t=f"{duration:.3f}", fflags="+bitexact", threads=1,
        **{"q:v": 5, "b:a": "128k", "flags:v": "+bitexact", "flags:a": "+bitexact"},
    ).global_args("-nostdin", "-loglevel", "error", "-y")  # ffmpeg-python puts these last: global options only
    args = stream.compile(cmd=ffmpeg_exe())
    proc = subprocess.run(args, input=frames, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{path}: ffmpeg failed: {lines[-1] if lines else proc.returncode}")


def make_clip(clip: Clip, out: Path, seed: int, rooms: str = "shared") -> list[int]:
    """Render the sound, draw every frame, encode; returns the pitched MIDI keys played."""
    voice = sound.VOICES[clip.cls]
    rng = _rng(seed, clip.cls, clip.group, clip.clip, 2)
    notes = sound.compose(voice, clip.pitch_register, clip.loudness, clip.tempo_bpm, clip.duration_s, rng)
    look = group_look(clip.cls, clip.group, seed, rooms)
    beats_per_second = clip.tempo_bpm / 60
    sway_phase = rng.uniform(0, 2 * math.pi)
    shift = np.zeros(2)
    frames = bytearray()  # every frame drawn: PIL paints one in under a millisecond, no need for key frames
    for i in range(round(clip.duration_s * FPS)):
        t = i / FPS
        shift = np.clip(shift + rng.normal(0, 0.8, size=2), -scene.MARGIN, scene.MARGIN)  # camera shake
        frame = scene.frame(look, clip.pitch_register, clip.loudness, math.sin(2 * math.pi * beats_per_second * t),
                            (int(round(shift[0])), int(round(shift[1]))), sway=3 * math.sin(2.5 * t + sway_phase))
        frames += frame.tobytes()
    path = out / clip.video
    with tempfile.TemporaryDirectory(prefix="his-synth-") as tmp:
        wav = Path(tmp) / "sound.wav"
        sound.write_wav(wav, sound.render(notes, voice.program, clip.duration_s, Path(tmp)))
        with atomic_path(path) as tmp_path:
            encode_video(frames, wav, clip.duration_s, tmp_path, container=path.suffix.lstrip("."))
    return sound.pitched_keys(voice, notes)


def make_images(images: list[PpmiImage], out: Path, seed: int, rooms: str = "shared") -> list[dict]:
    """PPMI-like jpgs: a random player of the class, playing or just holding the instrument, a random crop."""
    records = []
    for image in images:
        rng = _rng(seed, image.cls, 0, image.index, 3)
        # per-class: the look comes first from the image's own stream; shared: from a stream that ignores the class
        look_rng = rng if rooms == "per-class" else _look_rng(seed, rooms, image.cls, 0, image.index, 3)
        look = scene.make_look(image.cls, look_rng, rooms)
        register, loudness = float(rng.uniform()), float(rng.uniform(0.3, 1.0))
        canvas = scene.paint(look, register, loudness, float(rng.uniform(-1, 1)),
                             playing=image.subset == "play_instrument", sway=float(rng.uniform(-3, 3)))
        cw, ch = canvas.size
        w = int(cw * rng.uniform(0.55, 1.0))
        h = min(ch, int(w / rng.uniform(0.8, 1.3)))
        x0 = int(np.clip(look.x - w / 2 + rng.uniform(-30, 30), 0, cw - w))
        y0 = int(rng.integers(0, ch - h + 1))
        side = int(rng.integers(220, 400))  # the longer side
        size = (side, round(side * h / w)) if w >= h else (round(side * w / h), side)
        picture = canvas.crop((x0, y0, x0 + w, y0 + h)).resize(size)
        path = out / image.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            picture.save(tmp, format="JPEG", quality=90)
        records.append({"path": image.path, "class": image.cls, "subset": image.subset, "split": image.split,
                        "pitch_register": round(register, 4), "loudness": round(loudness, 4)})
    return records


def write_split_lists(out: Path, classes: Sequence[str], clips: list[Clip]) -> None:
    folder = out / "ucfTrainTestlist"
    folder.mkdir(parents=True, exist_ok=True)
    label = {cls: i + 1 for i, cls in enumerate(classes)}
    texts = {
        "classInd.txt": "".join(f"{label[c]} {c}\n" for c in classes),
        "trainlist01.txt": "".join(f"{c.cls}/{c.name}.avi {label[c.cls]}\n" for c in clips if c.split == "train"),
        "testlist01.txt": "".join(f"{c.cls}/{c.name}.avi\n" for c in clips if c.split == "test"),
    }
    for name, text in texts.items():
        with atomic_path(folder / name) as tmp:
            tmp.write_text(text)


def write_segment_csv(out: Path, clips: list[Clip]) -> None:
    """VGGSound's CSV: one row per segment, id, start seconds, label, split, no header."""
    layouts.write_csv(out / VGGSOUND_CSV, [(c.youtube_id, c.start_s, VGGSOUND_NAMES[c.cls], c.split) for c in clips])


def check_arguments(out: Path, classes: Sequence[str], videos_per_class: int, groups: int, ppmi_images: int,
                    seed: int, duration_range: tuple[float, float], workers: int, rooms: str = "shared",
                    layout: str = "ucf101") -> None:
    if rooms not in ROOM_MODES:
        raise SynthError(f"unknown rooms {rooms!r}; choose from {', '.join(ROOM_MODES)}")
    if layout not in LAYOUTS:
        raise SynthError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if not classes:
        raise SynthError(f"no classes given; choose from {', '.join(ALL_CLASSES)}")
    unknown = [c for c in classes if c not in ALL_CLASSES]
    if unknown:
        raise SynthError(f"unknown class {unknown[0]!r}; choose from {', '.join(ALL_CLASSES)}")
    if videos_per_class < 2:
        raise SynthError(f"--videos-per-class must be at least 2 (a train and a test group), got {videos_per_class}")
    if groups < 2:
        raise SynthError(f"--groups must be at least 2 (a train and a test group), got {groups}")
    if ppmi_images < 0 or seed < 0 or workers < 1:
        raise SynthError("--ppmi-images and --seed must be >= 0 and --workers >= 1")
    low, high = duration_range
    if not 0 < low <= high:
        raise SynthError(f"--duration-range must be 0 < MIN <= MAX seconds, got {low} {high}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise SynthError(f"cannot write to {out}: {e.strerror or e}") from None


def generate(out: str | os.PathLike, classes: Sequence[str] = DEFAULT_CLASSES, videos_per_class: int = 20,
             groups: int = 5, ppmi_images: int = 200, seed: int = 0,
             duration_range: tuple[float, float] = (4.0, 10.0), workers: int = 2, progress: bool = True,
             force: bool = False, rooms: str = "shared", layout: str = "ucf101") -> dict:
    """Write the data set under `out` (see the module docstring); returns a summary. Groups are capped at
    `videos_per_class`. A complete earlier run with the same settings is reused unless `force`. `rooms`:
    "shared" (every class draws its players and rooms from the same pools) or "per-class" (each class its own
    room palette and instrument colour, the scheme before rooms were shared). `layout`: how the videos are laid
    out and split (ucf101, csv or folders; see the module docstring). Raises SynthError on arguments it cannot
    use."""
    start = time.monotonic()
    out = Path(out)
    classes = sorted(dict.fromkeys(classes))  # classInd.txt numbers classes in alphabetical order, as UCF-101
    check_arguments(out, classes, videos_per_class, groups, ppmi_images, seed, duration_range, workers, rooms, layout)
    groups = min(groups, videos_per_class)
    clips = plan_clips(classes, videos_per_class, groups, seed, duration_range, layout)
    images = plan_images(classes, ppmi_images)
    source = "fluidsynth" if sound.fluidsynth_available() else "numpy"
    codec = "aac" if layout == "csv" else audio_codec()  # the csv layout's MP4s carry AAC
    settings = {"version": __version__, "seed": seed, "classes": classes, "videos_per_class": videos_per_class,
                "groups": groups, "ppmi_images": ppmi_images, "duration_range": list(duration_range),
                "sound": source, "audio_codec": codec, "rooms": rooms, "layout": layout}
    summary = {"out": str(out), "classes": classes, "rooms": rooms, "layout": layout, "videos": len(clips),
               "groups": groups, "train": sum(c.split == "train" for c in clips),
               "test": sum(c.split == "test" for c in clips),
               "images": len(images), "sound": source, "audio_codec": codec}
    attributes_path = out / "attributes.json"
    if not force and _complete(out, settings):
        return {**summary, "reused": True, "seconds": round(time.monotonic() - start, 1)}
    attributes_path.unlink(missing_ok=True)  # written last: while absent, the files on disk are not a data set
    for folder in {(out / c.video).parent for c in clips}:
        folder.mkdir(parents=True, exist_ok=True)
    sound.warn_if_fallback()

    keys: dict[str, list[int]] = {}
    image_records: list[dict] = []
    # Threads, not processes: most of the work runs in the ffmpeg and fluidsynth child processes, and a thread
    # pool starts instantly, needs no importable __main__ and forks nothing of the caller's (torch, Ray) state.
    with ThreadPoolExecutor(workers) as pool, \
            tqdm(total=len(clips) + len(images), desc="his.synth", unit="file", disable=not progress) as bar:
        jobs = {pool.submit(make_clip, clip, out, seed, rooms): (clip.name, 1) for clip in clips}
        for i in range(0, len(images), IMAGES_PER_TASK):
            batch = images[i: i + IMAGES_PER_TASK]
            jobs[pool.submit(make_images, batch, out, seed, rooms)] = ("images", len(batch))
        for job in as_completed(jobs):
            name, count = jobs[job]
            if name == "images":
                image_records += job.result()
            else:
                keys[name] = job.result()
            bar.update(count)

    if layout == "ucf101":
        write_split_lists(out, classes, clips)
    elif layout == "csv":
        write_segment_csv(out, clips)
    clip_records = []
    looks: dict[tuple[str, int], scene.Look] = {}
    for c in clips:
        voice = sound.VOICES[c.cls]
        if (c.cls, c.group) not in looks:
            looks[c.cls, c.group] = group_look(c.cls, c.group, seed, rooms)
        look = looks[c.cls, c.group]
        csv_only = () if layout == "csv" else ("youtube_id", "start_s")
        record = {"class": c.cls, **{k: v for k, v in asdict(c).items() if k not in ("cls", *csv_only)}}
        record.update(centre_note=sound.centre_note(voice, c.pitch_register), program=voice.program,
                      gm=voice.gm, notes=keys[c.name], pose=look.pose, instrument_colour=list(look.instrument),
                      wall=list(look.wall), floor=list(look.floor))
        clip_records.append(record)
    write_json(attributes_path, {**settings, "clips": clip_records,
                                 "images": sorted(image_records, key=lambda r: r["path"])})
    return {**summary, "reused": False, "seconds": round(time.monotonic() - start, 1)}


def _complete(out: Path, settings: dict) -> bool:
    """attributes.json is written last, so its settings and files listed in it mean a finished run."""
    try:
        attributes = json.loads((out / "attributes.json").read_text())
    except (OSError, ValueError):
        return False
    if {k: attributes.get(k) for k in settings} != settings:
        return False
    paths = [c["video"] for c in attributes["clips"]] + [i["path"] for i in attributes["images"]]
    return all((out / p).is_file() for p in paths)
