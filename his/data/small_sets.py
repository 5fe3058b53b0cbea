"""Small complete data sets written through the project's own writers (his.data.shards, his.data.feature_sets,
his.data.images), so each follows datasets.h5.spec, manifest included, as the real ones do: what the tests and
the benchmarks train and read on when they need no real video.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable


class DataSets:
    """The one factory of small data sets (the tests' `datasets` fixture). Each method writes a complete set under
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

    def __init__(self, make_dir: Callable[[str], Path]):
        self._make_dir = make_dir  # a fresh folder for a name (pytest's tmp_path_factory.mktemp)

    def _root(self, root, name: str):
        root = Path(root) if root is not None else self._make_dir(name)
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
        import numpy as np

        from his.data.dataset import load_split
        from his.data.feature_sets import clip_shards, features_dir_for, train_statistics, write_features
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
