"""The csv (VGGSound) and folders layouts: their listing and bad rows without decoding, then end to end with
his.synth's data in those layouts, real ffmpeg and Ray (one Ray session for the module)."""

from __future__ import annotations

import csv
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest
import ray

from his.data.dataset import load_split, read_classes
from his.data.layouts import (SPLIT_CSV, list_rows, parse_classes, read_csv_rows, read_folder_rows, write_csv,
                              write_split_csv)
from his.config import ConfigError
from his.eval.report import Entry, render_page
from his.io import InputError
from his.synth import VGGSOUND_CSV, VGGSOUND_NAMES, generate
from hpc.launch import launch, parse_args
from hpc.preprocess import main
from hpc.stages import PipelineConfig, full_chain, wire

ODD = 'say "hi", cello'  # a class name with a space, a comma and quotes
COMMON = ["--window-s", "1", "--clips-per-video", "2", "--shard-clips", "4", "--num-cpus", "2"]


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_each_bad_csv_row_is_one_line_with_its_line_number_and_the_rest_goes_on(tmp_path):
    touch(tmp_path / "v", "aaa_000030.mp4", "bbb.mkv", "ccc_000010.mp4", "ddd_000000.mp4", "eee_000005.webm",
          "typo_000001.mp4")
    rows = [["aaa", "30", ODD, "train"], ["bbb", "12", ODD, "train"], ["ccc", "10", ODD, "test"],
            ["ddd", "0", "playing flute", "train"], ["eee", "5", "playing flute", "train"],
            ["aaa", "30", "playing flute", "train"],  # 6: the same segment again
            ["zzz", "1", "playing flute", "test"],  # 7: no such video
            ["ddd", "x", "playing flute", "train"],  # 8
            ["ddd", "3", "playing flute", "validate"],  # 9
            ["ddd", "4", "playing flute"],  # 10
            ["typo", "1", "playing flut", "train"],  # 11: a label on one row alone
            ["bbb", "-2", ODD, "train"]]  # 12
    write_csv(tmp_path / "segments.csv", rows)
    with open(tmp_path / "segments.csv", "a") as f:
        f.write("ddd,7," + "y" * 140_000 + ",train\n")  # 13: the csv module refuses it
    found, rejected = read_csv_rows(tmp_path / "segments.csv", tmp_path / "v", segment_s=10)
    listing = list_rows(found, rejected, [], "segments.csv")
    assert listing.classes == ["playing flute", ODD]  # alphabetical, as written
    why = dict(listing.rejected)
    assert list(why) == [f"segments.csv:{n}" for n in (6, 7, 8, 9, 10, 12, 13, 11)]
    for line, reason in {6: "duplicate of segments.csv:1 (segment aaa_000030)", 7: "no video zzz_000001.* or zzz.*",
                         8: "start 'x' is not a number", 9: "split 'validate' is none of test, train",
                         10: "3 field(s), expected 4 (id,start,label,split)", 12: "start '-2' must be",
                         13: "unreadable CSV line (field larger than field limit",
                         11: "label 'playing flut' has 1 row(s) in train; a class needs 2"}.items():
        assert reason in why[f"segments.csv:{line}"], (line, why[f"segments.csv:{line}"])
    by_id = {v.video_id: v for v in listing.videos}
    assert list(by_id) == ["aaa_000030", "bbb_000012", "ccc_000010", "ddd_000000", "eee_000005"]
    # a cut segment (<id>_<start>.ext) starts at its file's start; a whole video (<id>.ext) at the row's start
    assert (by_id["aaa_000030"].start_s, by_id["aaa_000030"].end_s) == (0, 10)
    assert (by_id["bbb_000012"].start_s, by_id["bbb_000012"].end_s) == (12, 22)
    assert by_id["bbb_000012"].key.endswith("bbb.mkv#t=12,22") and by_id["ccc_000010"].split == "test"
    assert [v.label for v in listing.videos] == [1, 1, 1, 0, 0]
    assert [v.group for v in listing.videos] == [1, 2, 3, 1, 2]  # one group per YouTube id within a class

    chosen = list_rows(found, rejected, parse_classes(f'"{ODD.replace(chr(34), 2 * chr(34))}"'), "segments.csv")
    assert chosen.classes == [ODD] and len(chosen.videos) == 3
    with pytest.raises(InputError, match="no usable videos of 'playing cello'"):
        list_rows(found, rejected, ["playing cello", ODD], "segments.csv")


def test_other_columns_a_header_and_other_split_words(tmp_path):
    touch(tmp_path / "v" / "sub", "a.avi", "b.avi", "c.avi")
    write_csv(tmp_path / "mine.csv", [("file", "class", "part"), ("sub/a.avi", "x", "tr"), ("sub/b.avi", "x", "tr"),
                                      ("sub/c.avi", "x", "held out"), ("sub/d.avi", "x", "tr")])
    with pytest.raises(InputError, match="label and one of id or path are needed"):
        read_csv_rows(tmp_path / "mine.csv", tmp_path / "v", "-,label,split")
    found, rejected = read_csv_rows(tmp_path / "mine.csv", tmp_path / "v", "path,label,split", "train=tr;test=held out")
    assert [(r.video_id, r.split, math.isinf(r.end_s)) for r in found] == [("sub/a", "train", True),
                                                                          ("sub/b", "train", True),
                                                                          ("sub/c", "test", True)]
    assert [w for w, _ in rejected] == ["mine.csv:1", "mine.csv:5"]  # the header read as data, a missing file
    assert "no such file" in rejected[1][1]


def test_the_folders_split_keeps_groups_together_is_seeded_and_reads_back(tmp_path):
    videos = tmp_path / "videos"
    for cls in ("playing cello", ODD):
        touch(videos / cls, *[f"v_X_g{g:02d}_c{c:02d}.avi" for g in range(1, 6) for c in (1, 2)], "loose.mp4",
              "notes.txt")
    rows = read_folder_rows(videos, seed=3, test_fraction=0.4)
    assert len(rows) == 22 and not any(r.relpath.endswith(".txt") for r in rows)
    for cls in ("playing cello", ODD):
        splits = {}
        for r in rows:
            if r.label == cls:
                splits.setdefault(r.group_key, set()).add(r.split)
        assert all(len(s) == 1 for s in splits.values())  # a group is never in both splits
        assert sum(s == {"test"} for s in splits.values()) == 2  # 0.4 of the 6 groups (5 named, one loose file)
    assert rows == read_folder_rows(videos, seed=3, test_fraction=0.4)
    listing = list_rows(rows, [], [], str(videos))
    write_split_csv(tmp_path / SPLIT_CSV, listing.videos, listing.classes)
    again = list_rows(*read_csv_rows(tmp_path / SPLIT_CSV, videos, "header"), [], SPLIT_CSV)
    assert again.classes == listing.classes and again.rejected == []
    assert [(v.key, v.label, v.split, v.video_id, v.group) for v in again.videos] == \
        [(v.key, v.label, v.split, v.video_id, v.group) for v in listing.videos]


def test_class_names_with_commas_and_quotes_survive_the_report_page():
    class Text(HTMLParser):
        def __init__(self):
            super().__init__()
            self.text = []

        def handle_data(self, data):
            self.text.append(data)

    page = Text()
    page.feed(render_page(f"clips of {ODD}", f"classes: {ODD}, playing cello",
                          [Entry(f"test clip 0: {ODD}", "grid.png", facts=[("class", ODD)])]))
    assert f"test clip 0: {ODD}" in page.text and ODD in page.text


def test_class_names_with_commas_and_quotes_survive_the_projector(datasets, tmp_path):
    from his.audio.features import figure_1

    clips = datasets.clips(tmp_path / "clips", [ODD, "playing violin, fiddle"], window_s=0.1)
    features = datasets.features(clips, dim=4)
    figure_1(Path(clips) / "index.h5", Path(features))
    metadata = next((Path(features) / "tb").rglob("metadata.tsv")).read_text().splitlines()
    labels = load_split(Path(clips) / "index.h5", None, ["label"])["label"]
    assert sorted(metadata) == sorted([ODD, "playing violin, fiddle"][i] for i in labels)


def test_the_launcher_takes_the_layout(tmp_path, capsys):
    (tmp_path / "videos").mkdir()
    cfg = wire(PipelineConfig(clips=str(tmp_path / "clips"), videos=str(tmp_path / "videos")), tmp_path / "run")
    assert full_chain(cfg)[0] == "preprocess"  # no split lists needed to lead with preprocess
    args = ["preprocess", "--dry-run", "--run-dir", str(tmp_path / "run"), f"videos={tmp_path / 'videos'}",
            f"clips={tmp_path / 'clips'}", "preprocess.layout=csv"]
    with pytest.raises(Exception, match="preprocess: --csv is required with --layout csv"):
        launch(parse_args(args))
    csv_file = f"preprocess.csv={tmp_path / 'vggsound.csv'}"
    launch(parse_args([*args, csv_file, 'preprocess.classes=playing cello,"playing violin, fiddle"']))
    printed = capsys.readouterr().out
    assert 'layout = "csv"' in printed and 'classes = "playing cello,\\"playing violin, fiddle\\""' in printed
    with pytest.raises(ConfigError, match="not a value YAML reads .* quote the whole value"):
        launch(parse_args([*args, csv_file, 'preprocess.classes="playing violin, fiddle",playing cello']))
    with pytest.raises(Exception, match="--splits is required with --layout ucf101"):
        launch(parse_args([*args[:-1], "preprocess.classes=A"]))


# ------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def synth(root: Path, layout: str) -> Path:
    generate(root, ["PlayingCello", "PlayingViolin"], videos_per_class=4, groups=4, ppmi_images=0, seed=1,
             duration_range=(2.5, 3.0), progress=False, layout=layout)
    return root


def test_a_vggsound_download_end_to_end(tmp_path_factory, ray_session, fake_videos, tmp_path, capsys):
    data = synth(tmp_path_factory.mktemp("vggsound"), "csv")
    videos = data / "VGGSound" / "video"
    with open(data / VGGSOUND_CSV, newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 8 and {r[2] for r in rows} == {"playing cello", "playing violin, fiddle"}
    assert all((videos / f"{r[0]}_{int(r[1]):06d}.mp4").is_file() for r in rows)
    # a whole video (its row's start places the segment), one whose segment starts past its end, a missing one
    fake_videos.make(videos / "wholevideo1.avi", duration=6.0)
    fake_videos.make(videos / "shortvideo1.avi", duration=3.0)
    renamed = [[i, s, ODD if label == "playing cello" else label, split] for i, s, label, split in rows]
    segments = tmp_path / "segments.csv"
    write_csv(segments, [*renamed, ["wholevideo1", "2", ODD, "train"], ["shortvideo1", "4", ODD, "train"],
                         ["nosuchvideo", "0", ODD, "test"], renamed[0]])
    out = tmp_path / "out"
    assert main(["--layout", "csv", "--csv", str(segments), "--videos", str(videos), "--out", str(out),
                 "--segment-s", "3", *COMMON]) == 0
    err = capsys.readouterr().err
    assert "skip segments.csv:11: no video nosuchvideo_000000.* or nosuchvideo.*" in err
    assert "skip segments.csv:12: duplicate of segments.csv:1" in err
    report = json.loads((out / "report.json").read_text())
    assert [r["row"] for r in report["rejected"]] == ["segments.csv:11", "segments.csv:12"]
    assert [Path(s["path"]).name for s in report["skipped"]] == ["shortvideo1.avi"]
    assert report["skipped"][0]["reason"].startswith("its segment starts at 4 s, past the video's end (3.")

    index = out / "index.h5"
    assert read_classes(index) == ["playing violin, fiddle", ODD]  # HDF5 keeps them as written
    clips = load_split(index, None, ["video_id", "label", "split", "t_start", "t_end", "audio"])
    expected = {f"{i}_{int(s):06d}": (split, label) for i, s, label, split in renamed}
    expected["wholevideo1_000002"] = ("train", ODD)
    assert set(clips["video_id"]) == set(expected)
    for vid, label, split in zip(clips["video_id"], clips["label"], clips["split"]):
        assert (("train", "test")[split], read_classes(index)[label]) == expected[vid]
    whole = clips["video_id"] == "wholevideo1_000002"
    assert whole.sum() == 2 and (clips["t_start"][whole] >= 2).all() and (clips["t_end"][whole] <= 5 + 1e-3).all()
    for audio, t in zip(clips["audio"][whole], clips["t_start"][whole]):  # the chirp tells the time it was cut at
        assert fake_videos.chirp_frequency(audio) == pytest.approx(200 + 100 * (t + 0.5), abs=10)

    assert main(["--layout", "csv", "--csv", str(segments), "--videos", str(videos), "--out", str(out),
                 "--segment-s", "3", *COMMON, "--strict"]) == 1  # every shard kept; rejected rows fail --strict
    assert json.loads((out / "report.json").read_text())["summary"]["shards_written"] == 0


def test_a_folder_of_class_folders_end_to_end(tmp_path_factory, ray_session, tmp_path):
    data = synth(tmp_path_factory.mktemp("folders"), "folders")
    videos = data / "folders"
    assert sorted(p.name for p in videos.iterdir()) == sorted(VGGSOUND_NAMES[c] for c in ("PlayingCello",
                                                                                          "PlayingViolin"))
    out = tmp_path / "out"
    args = ["--layout", "folders", "--videos", str(videos), "--out", str(out), "--test-fraction", "0.25", *COMMON]
    assert main(args) == 0
    assert read_classes(out / "index.h5") == ["playing cello", "playing violin, fiddle"]
    clips = load_split(out / "index.h5", None, ["video_id", "split", "label"])
    with open(out / SPLIT_CSV, newline="") as f:
        split = {r["path"]: r for r in csv.DictReader(f)}
    assert len(split) == 8 and {r["split"] for r in split.values()} == {"train", "test"}
    for vid, s in zip(clips["video_id"], clips["split"]):
        assert split[f"{vid}.avi"]["split"] == ("train", "test")[s]
    # a rerun reads the split back, whatever the seed says now, and keeps every shard
    assert main([*args, "--seed", "9"]) == 0
    assert json.loads((out / "report.json").read_text())["summary"]["shards_kept"] == 4
    # and the csv layout reads the same split
    assert main(["--layout", "csv", "--csv", str(out / SPLIT_CSV), "--csv-columns", "header", "--videos",
                 str(videos), "--out", str(tmp_path / "again"), *COMMON]) == 0
    again = load_split(tmp_path / "again" / "index.h5", None, ["video_id", "split", "label"])
    assert all((again[k] == clips[k]).all() for k in clips)
