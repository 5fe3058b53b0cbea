import os
import shutil
import subprocess

import pytest


def slurm_is_up() -> bool:
    """True when the one-host cluster of slurm/up answers (make test starts it)."""
    if not shutil.which("sinfo") or not os.environ.get("SLURM_CONF"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and "idle" in out.stdout


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one intra-op thread: on 2 cores shared with other work, two spinning threads are several
    times slower than one. Use with pytestmark = pytest.mark.usefixtures("one_torch_thread")."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if slurm_is_up():
        return
    skip = pytest.mark.skip(reason="one-host Slurm is not up (run slurm/up, or make test)")
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_pipeline_data(tmp_path_factory):
    """A tiny generated data set run through the real front half of the pipeline: his.synth (3 classes x 4
    videos), hpc.preprocess (Ray), his.data.images, and pretrained-SoundNet features (hpc.features)."""
    import sys

    from his.synth import generate

    root = tmp_path_factory.mktemp("pipeline")
    classes = ["PlayingCello", "PlayingDhol", "PlayingSitar"]
    generate(root / "data", classes=classes, videos_per_class=4, groups=4, ppmi_images=16, seed=0,
             duration_range=(4.0, 5.0), progress=False)
    run = lambda *args: subprocess.run([sys.executable, "-m", *args], check=True, capture_output=True, timeout=300)
    run("hpc.preprocess", "--videos", str(root / "data" / "UCF-101"), "--splits", str(root / "data" / "ucfTrainTestlist"),
        "--classes", ",".join(classes), "--out", str(root / "clips"), "--num-cpus", "2",
        "--shard-clips", "8")  # a few shards: work to spread over nodes
    run("his.data.images", "--src", str(root / "data" / "PPMI"), "--out", str(root / "images"))
    run("hpc.features", f"data={root / 'clips'}", "actors=1", "figure=false")
    features = next((root / "clips" / "features").iterdir())
    return {"root": root, "clips": root / "clips", "images": root / "images", "features": features}


# --------------------------------------------------------------------------- data sets for the tests
# Every clip, feature and image set a test reads is written here, through the project's own writers
# (his.data.shards, his.audio.features, his.data.images), so each follows datasets.h5.spec as the real ones do.


class DataSets:
    """The tests' one factory of data sets (the `datasets` fixture). Each method writes a complete set under
    `root` (a fresh temporary folder when None) and returns its folder:

    clips(root, classes, groups_per_class, clips_per_group, test_groups, window_s, shard_clips, seed, **columns)
        OUT/shards/clips-NNNNN.h5 + OUT/index.h5 + manifest.json + report.json. Rows class by class, group by
        group (groups 1.., the last `test_groups` of each class are the test split), `clips_per_group` clips
        (windows of one video) a group. The class shows: frames are the class's colour plus noise, audio a
        low hum, a high whistle or noise bursts (label % 3). Keyword `columns` (label, split, frame64, ...)
        replace the generated ones; given `label` (with `split`), they set the rows instead.
    features(clips_root, feature=None, dim=12, sha256=FEATURE_SHA256, layer, seed)
        CLIPS/features/<sha256[:12]>/features-NNNNN.h5 + index.h5 (with mean, std): `feature` (N, D) raw
        features, standardised by the writer with the train split's statistics; by default a centre per
        class plus noise.
    images(root, n, seed, images=None)
        images-NNNNN.h5 + index.h5 + manifest.json + report.json of `images` (uint8 (n, 64, 64, 3); random
        by default), ingested from PNG files by his.data.images.
    """

    CLASSES = ("PlayingCello", "PlayingDhol", "PlayingSitar")
    FEATURE_SHA256 = "0123456789ab" * 5 + "0123"  # stands for a SoundNet checkpoint's sha256

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory

    def _root(self, root, name: str):
        from pathlib import Path

        root = Path(root) if root is not None else self._tmp.mktemp(name)
        root.mkdir(parents=True, exist_ok=True)
        return root

    @staticmethod
    def class_sound(label: int, rng, n: int):
        """float32 (n,) in [-0.3, 0.3], easily told apart by class: a low hum, a high whistle, or noise bursts."""
        import numpy as np

        from his.constants import SAMPLE_RATE

        t = np.arange(n) / SAMPLE_RATE
        if label % 3 == 0:
            wave = np.sin(2 * np.pi * rng.uniform(100, 200) * t)
        elif label % 3 == 1:
            wave = np.sin(2 * np.pi * rng.uniform(2000, 3000) * t)
        else:
            wave = rng.standard_normal(n) * (np.sin(2 * np.pi * 4 * t) > 0)
        return (0.3 * wave / np.abs(wave).max()).astype(np.float32)

    def clips(self, root=None, classes=CLASSES, groups_per_class: int = 4, clips_per_group: int = 2,
              test_groups: int = 1, *, window_s: float = 1.0, shard_clips: int = 10, seed: int = 0, **columns):
        import itertools

        import numpy as np

        from his.constants import SAMPLE_RATE
        from his.data.shards import build_index, now_utc, write_clip_shard, write_manifest
        from his.io import write_json

        root = self._root(root, "clips")
        rng = np.random.default_rng(seed)
        classes = list(classes)
        if "label" in columns:
            label = np.asarray(columns["label"], np.int16)
            split = np.asarray(columns["split"], np.uint8)
            group = np.asarray(columns.get("group", np.ones(len(label))), np.int16)
            clip_index = np.asarray(columns.get("clip_index", np.zeros(len(label))), np.int16)
        else:
            label, group, clip_index = (a.ravel().astype(np.int16) for a in np.meshgrid(
                np.arange(len(classes)), np.arange(1, groups_per_class + 1), np.arange(clips_per_group),
                indexing="ij"))
            split = (group > groups_per_class - test_groups).astype(np.uint8)
        n, samples = len(label), round(window_s * SAMPLE_RATE)
        colours = rng.integers(0, 256, (len(classes), 3))

        def frames(h: int, w: int):
            noise = rng.normal(0, 25, (n, h, w, 3))
            return np.clip(colours[label][:, None, None] + noise, 0, 255).astype(np.uint8)

        video_id = columns.get("video_id")
        if video_id is None:
            video_id = [f"v_{classes[c]}_g{g:02d}_c01" for c, g in zip(label, group)]
        t_start = (clip_index * window_s).astype(np.float32)
        data = {
            "label": label, "split": split, "group": group, "clip_index": clip_index,
            "video_id": np.array(video_id, dtype=object),
            "source": np.array([str(root / "videos" / classes[c] / f"{v}.avi") for c, v in zip(label, video_id)],
                               dtype=object),
            "t_start": t_start, "t_end": t_start + np.float32(window_s), "t_frame": t_start + np.float32(window_s / 2),
        }
        for name in ("frame64", "frame88", "audio", "source"):
            if name in columns:
                data[name] = np.asarray(columns[name], dtype=object if name == "source" else None)
        if "frame64" not in data:
            data["frame64"] = frames(64, 64)
        if "frame88" not in data:
            data["frame88"] = frames(66, 88)
        if "audio" not in data:
            data["audio"] = np.stack([np.round(self.class_sound(c, rng, samples) * 32767).astype(np.int16)
                                      for c in label])
        unknown = set(columns) - set(data)
        if unknown:
            raise TypeError(f"clips(): no column(s) {sorted(unknown)}")
        attrs = {"classes": classes, "sample_rate": SAMPLE_RATE, "window_s": window_s, "samples": samples,
                 "clips_per_video": int(clip_index.max(initial=0)) + 1, "crop": np.array([200, 190]), "size": 64,
                 "split_list": 1, "source_root": str(root / "videos")}
        (root / "shards").mkdir(exist_ok=True)
        for old in (root / "shards").glob("clips-*.h5"):  # a set written here before
            old.unlink()
        shards = []
        for start in range(0, n, shard_clips):  # shard_clips rows a shard; the parts are the videos' rows
            rows = range(start, min(start + shard_clips, n))
            videos = [list(run) for _, run in itertools.groupby(rows, key=lambda i: data["source"][i])]
            shards.append(root / "shards" / f"clips-{len(shards):05d}.h5")
            write_clip_shard(shards[-1], [{k: v[run] for k, v in data.items()} for run in videos], attrs,
                             [data["source"][run[0]] for run in videos], [])
        total = build_index(root / "index.h5", shards, "clips")
        write_manifest(root / "manifest.json", "clips", shards, {"classes": classes, "source_root": attrs["source_root"]})
        write_json(root / "report.json", {"created": now_utc(), "summary": {"clips": total}, "skipped": []})
        return root

    def features(self, clips_root, feature=None, dim: int = 12, *, sha256: str = FEATURE_SHA256,
                 layer: str = "conv7", seed: int = 0):
        from pathlib import Path

        import numpy as np

        from his.audio.features import clip_shards, features_dir_for, train_statistics, write_features
        from his.data.dataset import load_split
        from his.data.shards import code_version, now_utc

        index = Path(clips_root) / "index.h5"
        rows = load_split(index, None, ["label", "split"])
        if feature is None:
            rng = np.random.default_rng(seed)
            centres = rng.normal(0, 1, (int(rows["label"].max()) + 1, dim))
            feature = centres[rows["label"]] + rng.normal(0, 0.3, (len(rows["label"]), dim))
        feature = np.asarray(feature, np.float32)
        mean, std = train_statistics(feature, rows["split"])
        out = features_dir_for(str(clips_root), sha256)
        write_features(out, clip_shards(index), feature, mean, std,
                       {"layer": layer, "checkpoint": str(out / "soundnet.pt"), "checkpoint_sha256": sha256,
                        "code_version": code_version(), "created": now_utc()})
        return out

    def images(self, root=None, n: int = 24, seed: int = 1, images=None):
        import contextlib
        import io

        import numpy as np
        from PIL import Image

        from his.data.images import ingest

        root = self._root(root, "images")
        if images is None:
            images = np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
        src = root.parent / f"{root.name}-src"
        src.mkdir(exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(src / f"{i:05d}.png")
        with contextlib.redirect_stdout(io.StringIO()):
            ingest(src, root)
        return root


@pytest.fixture(scope="session")
def datasets(tmp_path_factory) -> DataSets:
    """The factory of clip, feature and image sets (DataSets)."""
    return DataSets(tmp_path_factory)


# --------------------------------------------------------------------------- videos made with ffmpeg


class FakeVideos:
    """Test videos (the `fake_videos` fixture): frames that encode their own number, a chirp whose pitch tells
    the time (f(t) = 200 + 100 t Hz), in AVI with MPEG-4 Part 2 (xvid) and MP3 as UCF-101 has them."""

    FPS = 25

    @staticmethod
    def frame_colour(i: int) -> tuple[int, int]:
        """Red and green levels of frame i: 16 steps apart, so lossy coding cannot mistake one for another."""
        return (i % 16) * 16 + 8, (i // 16) * 16 + 8

    @staticmethod
    def frame_number(rgb) -> int:
        """Inverse of frame_colour on a decoded frame (mean over its pixels)."""
        r, g = rgb.reshape(-1, 3).mean(0)[:2]
        return int(round((r - 8) / 16)) + 16 * int(round((g - 8) / 16))

    @staticmethod
    def chirp_frequency(audio, centre_s: float = 0.1) -> float:
        """Mean instantaneous frequency (Hz) of the middle `centre_s` seconds of an int16 window."""
        import numpy as np
        from scipy.signal import hilbert

        from his.media import SAMPLE_RATE

        phase = np.unwrap(np.angle(hilbert(audio.astype(np.float64))))
        mid, half = len(audio) // 2, int(centre_s * SAMPLE_RATE / 2)
        return float((phase[mid + half] - phase[mid - half]) / (2 * np.pi) / (2 * half / SAMPLE_RATE))

    @classmethod
    def make(cls, path, duration: float = 5.0, size: tuple[int, int] = (320, 240), audio: str | None = "chirp",
             audio_codec: str = "libmp3lame", centre_box: bool = False):
        """Write a test video. audio: "chirp", "silent" or None (no audio stream). centre_box paints the
        200x190-of-320x240 centre crop (scaled to `size`) blue and the rest by frame number."""
        from pathlib import Path

        import numpy as np

        from his.media import ffmpeg_exe

        path = Path(path)
        w, h = size
        n = int(round(duration * cls.FPS))
        frames = np.empty((n, h, w, 3), np.uint8)
        for i in range(n):
            frames[i] = (*cls.frame_colour(i), 128)
        if centre_box:
            cw, ch = round(w * 200 / 320), round(h * 190 / 240)
            frames[:, (h - ch) // 2 : (h + ch) // 2, (w - cw) // 2 : (w + cw) // 2] = (0, 0, 255)
        args = [ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error",
                "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(cls.FPS), "-i", "pipe:"]  # fmt: skip
        if audio == "chirp":
            args += ["-f", "lavfi", "-i", f"aevalsrc=0.5*sin(2*PI*(200*t+50*t*t)):s=44100:d={duration}"]
        elif audio == "silent":
            args += ["-f", "lavfi", "-i", f"anullsrc=r=44100:cl=mono:d={duration}"]
        args += ["-c:v", "mpeg4", "-vtag", "xvid", "-q:v", "3"]
        args += ["-c:a", audio_codec, "-b:a", "128k"] if audio else ["-an"]
        # with MP3 in AVI the muxer otherwise shifts video timestamps by a frame to avoid negative audio ones
        args += ["-avoid_negative_ts", "disabled", "-shortest", str(path)]
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(args, input=frames.tobytes(), check=True, timeout=60)
        return path


@pytest.fixture(scope="session")
def fake_videos() -> type[FakeVideos]:
    return FakeVideos
