"""Where the videos of a data set are and what each one is: every layout read into one list of Video.

    ucf101   VIDEOS/Class/v_Class_gGG_cCC.avi and the split lists trainlist0N.txt / testlist0N.txt
    csv      one row per segment; by default VGGSound's columns (YouTube id, start seconds, label, split), the
             video found as VIDEOS/<id>_<start as 6 digits>.<ext> (the common VGGSound downloads: the segment
             already cut, so its windows lie in its first `segment_s` seconds) or VIDEOS/<id>.<ext> (the whole
             video: its windows lie in [start, start + segment_s]); other column orders and split words by option
    folders  VIDEOS/<class>/<any name>.<ext>; a seeded split by group (UCF-style `_gNN_` in the name, else each
             video its own), written as a CSV (SPLIT_CSV) that the csv layout reads back

A row that cannot be used is rejected with one line saying where it is (FILE:LINE, or the path) and why, and the
rest goes on: an unreadable CSV line, a missing file, a duplicate segment, a label with too few training rows.
Class names are kept as written (spaces, commas, quotes); labels number them in `classes` order, alphabetical
unless given.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from his.io import InputError, atomic_path

LAYOUTS = ("ucf101", "csv", "folders")
VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ogv"})
CSV_FIELDS = ("id", "start", "label", "split", "path")  # the names --csv-columns may use ("-": a column ignored)
VGGSOUND_COLUMNS = "id,start,label,split"
HEADER = "header"  # --csv-columns header: the first row names the columns
SPLIT_CSV = "split.csv"  # the folders layout's split, in the output folder
SPLIT_CSV_COLUMNS = ("path", "label", "split")
MIN_TRAIN_ROWS = 2  # a class needs this many training videos: a label on one row alone is most likely a typo
UCF_NAME = re.compile(r"v_(?P<cls>[^_]+)_g(?P<group>\d+)_c(?P<clip>\d+)")
GROUP_IN_NAME = re.compile(r"_g(\d+)_")
GROUP_MAX = np.iinfo(np.int16).max  # the clip shards' group column is int16


@dataclass(frozen=True, slots=True)
class Video:
    relpath: str  # as the split list or CSV names it (ucf101: Class/v_Class_gGG_cCC.avi)
    path: str
    label: int
    split: str  # "train" or "test"
    video_id: str
    group: int  # videos of one group (one recording, one player) are held out together
    start_s: float = 0.0  # its segment within the file, seconds
    end_s: float = math.inf  # (inf: to the file's end)
    # The planned video as the shards record it: its path, and a segment as a W3C media fragment (PATH#t=30,40),
    # so that two segments of one file are two videos, and another segment is another.
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        whole = self.start_s == 0 and math.isinf(self.end_s)
        object.__setattr__(self, "key", self.path if whole else f"{self.path}#t={self.start_s:g},{self.end_s:g}")


@dataclass
class Listing:
    """The videos of a layout, their classes in label order, and the rows left out as (where, why)."""

    classes: list[str]
    videos: list[Video]
    rejected: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Row:
    """One usable row of a csv or folders layout, before labels and groups are given."""

    where: str  # FILE:LINE or the path, for a line in the report
    label: str
    split: str
    path: str
    relpath: str
    video_id: str
    group_key: str
    start_s: float = 0.0
    end_s: float = math.inf


# ------------------------------------------------------------------------------------------------ ucf101


def read_ucf101(videos_dir: str | os.PathLike, splits_dir: str | os.PathLike, split: int,
                classes: Sequence[str]) -> Listing:
    """The videos of `classes` named in trainlist0{split}.txt and testlist0{split}.txt, in list order."""
    splits_dir, videos_dir = Path(splits_dir), Path(videos_dir)
    label_of = {c: i for i, c in enumerate(classes)}
    videos: list[Video] = []
    seen: set[str] = set()
    for split_name in ("train", "test"):
        list_file = splits_dir / f"{split_name}list0{split}.txt"
        if not list_file.is_file():
            raise InputError(f"{list_file}: split list not found")
        try:
            lines = list_file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise InputError(f"{list_file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        for line in lines:
            if not line.strip():
                continue
            # "Class/v_Class_g08_c01.avi 12" (train) or "Class/v_Class_g08_c01.avi" (test); names may hold spaces
            relpath = re.sub(r"\s+\d+\s*$", "", line.strip()) if split_name == "train" else line.strip()
            cls = relpath.split("/")[0]
            if cls not in label_of or relpath in seen:
                continue
            seen.add(relpath)
            stem = Path(relpath).stem
            m = UCF_NAME.search(stem)
            videos.append(
                Video(relpath, str(videos_dir / relpath), label_of[cls], split_name, stem, int(m["group"]) if m else -1)
            )
    absent = [c for i, c in enumerate(classes) if not any(v.label == i for v in videos)]
    if absent:  # a class list naming a class with no clips would label the set wrongly
        raise InputError(f"no videos of {', '.join(absent)} in the split lists under {splits_dir}")
    twice = sorted(i for i, n in Counter(v.video_id for v in videos).items() if n > 1)
    if twice:
        raise InputError(f"video id {twice[0]} names more than one video in the split lists under {splits_dir} "
                         f"({len(twice)} such id(s)); ids must be unique across classes")
    return Listing(list(classes), videos)


# --------------------------------------------------------------------------------------------------- csv


def parse_split_words(text: str) -> dict[str, str]:
    """"train=train,training;test=test,val" -> {"train": "train", "training": "train", "test": "test", ...}."""
    words: dict[str, str] = {}
    for part in text.split(";"):
        split, _, names = part.partition("=")
        if split.strip() not in ("train", "test") or not names.strip():
            raise InputError(f"split words {text!r}: each part must be train=WORD[,WORD] or test=WORD[,WORD]")
        for name in names.split(","):
            words[name.strip().lower()] = split.strip()
    return words


def parse_columns(text: str) -> list[str]:
    """--csv-columns: comma-separated names from CSV_FIELDS, "-" for a column to ignore."""
    columns = [c.strip().lower() for c in text.split(",")]
    unknown = [c for c in columns if c not in (*CSV_FIELDS, "-")]
    if unknown:
        raise InputError(f"csv columns {text!r}: unknown column {unknown[0]!r} (use {', '.join(CSV_FIELDS)} or -)")
    named = [c for c in columns if c != "-"]
    if len(set(named)) != len(named):
        raise InputError(f"csv columns {text!r}: a column is named twice")
    if "label" not in named or not ({"id", "path"} & set(named)):
        raise InputError(f"csv columns {text!r}: label and one of id or path are needed")
    return columns


def video_files(videos_dir: Path) -> dict[str, str]:
    """The video files directly in `videos_dir` by name without extension (one directory listing, however
    many rows ask)."""
    found: dict[str, str] = {}
    with os.scandir(videos_dir) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in VIDEO_EXTENSIONS:
                found.setdefault(stem, entry.name)
    return found


def csv_lines(csv_path: Path) -> Iterator[tuple[int, list[str] | str]]:
    """(line number, fields) for each non-empty row, or (line number, why) for one the csv module refuses."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, skipinitialspace=True)
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    yield reader.line_num, f"unreadable CSV line ({e})"
                    continue
                if any(x.strip() for x in fields):
                    yield reader.line_num, fields
    except UnicodeDecodeError as e:
        raise InputError(f"{csv_path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"{csv_path}: {e.strerror or e} (--csv)") from None


def read_csv_rows(csv_path: str | os.PathLike, videos_dir: str | os.PathLike, columns: str = VGGSOUND_COLUMNS,
                  split_words: str = "train=train;test=test", segment_s: float = 10.0
                  ) -> tuple[list[Row], list[tuple[str, str]]]:
    """The usable rows of a segment CSV, in file order, and the rejected ones as (FILE:LINE, why)."""
    csv_path, videos_dir = Path(csv_path), Path(videos_dir)
    words = parse_split_words(split_words)
    names = None if columns.strip().lower() == HEADER else parse_columns(columns)
    files = video_files(videos_dir)
    rows: list[Row] = []
    rejected: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for line, fields in csv_lines(csv_path):
        where = f"{csv_path.name}:{line}"
        if isinstance(fields, str):
            rejected.append((where, fields))
            continue
        if names is None:
            names = parse_columns(",".join(fields))
            continue
        try:
            row = csv_row(names, fields, words, files, videos_dir, segment_s, where)
        except ValueError as e:
            rejected.append((where, str(e)))
            continue
        if row.video_id in seen:
            rejected.append((where, f"duplicate of {seen[row.video_id]} (segment {row.video_id})"))
            continue
        seen[row.video_id] = where
        rows.append(row)
    if names is None:
        raise InputError(f"{csv_path}: no rows")
    return rows, rejected


def csv_row(names: list[str], fields: list[str], words: dict[str, str], files: dict[str, str], videos_dir: Path,
            segment_s: float, where: str) -> Row:
    """One CSV row, its `fields` in the columns `names`, as a Row; ValueError says why it cannot be one."""
    if len(fields) != len(names):
        raise ValueError(f"{len(fields)} field(s), expected {len(names)} ({','.join(names)})")
    values = {name: x.strip() for name, x in zip(names, fields)}
    label, video_id = values.get("label", ""), values.get("id", "")
    if not label:
        raise ValueError("no label")
    split = words.get(values.get("split", "train").lower())
    if split is None:
        raise ValueError(f"split {values['split']!r} is none of {', '.join(sorted(words))}")
    start = 0.0
    if values.get("start"):
        try:
            start = float(values["start"])
        except ValueError:
            raise ValueError(f"start {values['start']!r} is not a number of seconds") from None
        if not math.isfinite(start) or start < 0:
            raise ValueError(f"start {values['start']!r} must be a number of seconds >= 0")
    segment_id = f"{video_id}_{int(start):06d}" if values.get("start") and video_id else video_id
    end = start + segment_s if values.get("start") else math.inf
    if values.get("path"):
        relpath = values["path"]
        path = videos_dir / relpath
        if not path.is_file():
            raise ValueError(f"no such file {path}")
        video_id = video_id or str(Path(relpath).with_suffix(""))
        segment_id = segment_id or video_id
    elif not video_id:
        raise ValueError("no id")
    elif values.get("start") and segment_id in files:  # VGGSound's cut segment <id>_<start 6 digits>.<ext>:
        # it starts at the file's start
        relpath, start, end = files[segment_id], 0.0, segment_s
    elif video_id in files:  # the whole video <id>.<ext>
        relpath = files[video_id]
    else:
        raise ValueError(f"no video {segment_id}.* or {video_id}.* in {videos_dir}")
    group = GROUP_IN_NAME.search(os.path.basename(relpath))
    return Row(where, label, split, os.path.join(videos_dir, relpath), relpath, segment_id,
               group[0] if group else video_id, start, end)


# ----------------------------------------------------------------------------------------------- folders


def read_folder_rows(videos_dir: str | os.PathLike, seed: int, test_fraction: float) -> list[Row]:
    """Every video in VIDEOS/<class>/, in name order, split by group: a seeded `test_fraction` of each class's
    groups (at least one, leaving at least one to train) are test."""
    videos_dir = Path(videos_dir)
    rows: list[Row] = []
    for folder in sorted(p for p in videos_dir.iterdir() if p.is_dir()):
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        groups = {p: (m[0] if (m := GROUP_IN_NAME.search(p.stem)) else p.stem) for p in paths}
        keys = sorted(set(groups.values()))
        rng = np.random.default_rng([seed, *folder.name.encode()])
        n_test = min(len(keys) - 1, max(1, round(test_fraction * len(keys))))
        test = set(rng.choice(keys, n_test, replace=False)) if n_test > 0 else set()
        for p in paths:
            relpath = p.relative_to(videos_dir).as_posix()
            rows.append(Row(relpath, folder.name, "test" if groups[p] in test else "train", str(p), relpath,
                            str(Path(relpath).with_suffix("")), groups[p]))
    if not rows:
        raise InputError(f"{videos_dir}: no class folders with videos ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    return rows


def write_csv(path: str | os.PathLike, rows: Iterable[Sequence[Any]]) -> None:
    """`rows` as a CSV file (quoted where a field needs it), written under a temporary name and renamed."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def write_split_csv(path: str | os.PathLike, videos: Iterable[Video], classes: Sequence[str]) -> None:
    """The split of `videos` as a CSV with a header (path, label, split), which the csv layout reads back
    with columns "header"."""
    write_csv(path, [SPLIT_CSV_COLUMNS, *((v.relpath, classes[v.label], v.split) for v in videos)])


# ------------------------------------------------------------------------------------------ rows -> list


def list_rows(rows: list[Row], rejected: list[tuple[str, str]], classes: Sequence[str], source: str) -> Listing:
    """Label and group the rows: `classes` in that order (rows of other classes are left out, unrejected), or
    every class, alphabetical. A class with fewer than MIN_TRAIN_ROWS training rows has each of its rows
    rejected; one named in `classes` and left with none is an error."""
    named = list(dict.fromkeys(classes))
    if named:
        rows = [r for r in rows if r.label in set(named)]
    train_rows = Counter(r.label for r in rows if r.split == "train")
    too_few = {label for label in {r.label for r in rows} if train_rows[label] < MIN_TRAIN_ROWS}
    rejected = rejected + [(r.where, f"label {r.label!r} has {train_rows[r.label]} row(s) in train; a class needs "
                                     f"{MIN_TRAIN_ROWS}") for r in rows if r.label in too_few]
    rows = [r for r in rows if r.label not in too_few]
    present = {r.label for r in rows}
    if named:
        absent = [c for c in named if c not in present]
        if absent:
            raise InputError(f"no usable videos of {', '.join(map(repr, absent))} in {source}")
    classes = named or sorted(present)
    if not classes:
        raise InputError(f"no usable videos in {source} ({len(rejected)} row(s) rejected)")
    label_of = {c: i for i, c in enumerate(classes)}
    group_of: dict[tuple[str, str], int] = {}  # numbered within each class, in order of first appearance
    per_class: Counter[str] = Counter()
    videos = []
    for r in rows:
        if (r.label, r.group_key) not in group_of:
            per_class[r.label] += 1
            group_of[r.label, r.group_key] = per_class[r.label]
        videos.append(Video(r.relpath, r.path, label_of[r.label], r.split, r.video_id,
                            group_of[r.label, r.group_key], r.start_s, r.end_s))
    crowded = [c for c, n in per_class.items() if n > GROUP_MAX]
    if crowded:
        raise InputError(f"class {crowded[0]!r} has {per_class[crowded[0]]} video groups; at most {GROUP_MAX} fit")
    return Listing(classes, videos, rejected)


def parse_classes(text: str) -> list[str]:
    """--classes as one CSV line: `A,B` or, for names with commas, `"playing violin, fiddle",playing cello`."""
    try:
        fields = next(csv.reader([text], skipinitialspace=True), [])
    except csv.Error as e:
        raise InputError(f"--classes {text!r}: {e}") from None
    return [c.strip() for c in fields if c.strip()]
