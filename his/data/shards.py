"""Shard files, the virtual-dataset index over them, and the manifest, all as datasets.h5.spec describes.

A shard is written under a temporary name and renamed into place, so a shard that exists is complete.
`write_shard` writes any kind; `clip_columns` and `write_clip_shard` are the clip shards' writer (the rows
of one video, and a shard of videos), which hpc.preprocess drives with Ray.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import h5py
import numpy as np

import his
from his.data.manifest import manifest_entry, sha256_file  # noqa: F401 (sha256_file: re-exported)
from his.data.spec import dataset_shape, decode_attr, encode_attr, kind_spec, storage_options
from his.io import write_bytes, write_json

if TYPE_CHECKING:
    from his.media import VideoClips

SPLIT_CODES = {"train": 0, "test": 1}  # the clip shards' split column


@lru_cache(maxsize=1)
def code_version() -> str:
    """his.__version__, plus the git commit of the checkout when there is one (asked once per process)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(his.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return f"{his.__version__}+{commit}" if commit else his.__version__


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_attrs(f: h5py.File, kind: str, role: str, attrs: dict[str, Any]) -> None:
    types = kind_spec(kind)["attrs"]
    values = {"spec_version": types["spec_version"]["value"], "kind": kind, "role": role, **attrs}
    for name, value in values.items():
        if name not in types:
            raise KeyError(f"attr {name!r} is not in the spec for kind {kind!r}")
        if role in types[name].get("roles", ("shard", "index")):
            f.attrs[name] = encode_attr(value, types[name]["type"])


def write_shard(path: str | os.PathLike, kind: str, columns: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    """Write one shard of `kind` holding `columns` (every dataset of the spec, rows first) atomically.

    Storage (dtype, chunks, compression) comes from the spec; `attrs` are the file attrs besides
    spec_version, kind and role, which are filled in here.
    """
    names = _shard_datasets(kind)
    if sorted(columns) != sorted(names):
        raise KeyError(f"shard of kind {kind!r} needs columns {names}, got {sorted(columns)}")
    rows = {len(c) for c in columns.values()}
    if len(rows) != 1:
        raise ValueError(f"columns have different row counts: { {n: len(c) for n, c in columns.items()} }")
    with new_hdf5(path) as f:
        _write_attrs(f, kind, "shard", attrs)
        for name in names:
            options = storage_options(kind, name, attrs, np.shape(columns[name]))
            data = columns[name]
            if h5py.check_string_dtype(options["dtype"]):
                data = np.asarray(data, dtype=object)
            f.create_dataset(name, data=data, **options)


@contextlib.contextmanager
def new_hdf5(path: str | os.PathLike) -> Iterator[h5py.File]:
    """A new HDF5 file to fill, built in memory and written to `path` in one atomic write once complete. The
    HDF5 library itself never writes to disk: into a full disk it crashes (a segmentation fault in close
    after a failed write), where a plain write fails with OSError naming `path` and leaves nothing behind."""
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        yield f
    write_bytes(path, image.getbuffer())


def _shard_datasets(kind: str) -> list[str]:
    return [n for n, e in kind_spec(kind)["datasets"].items() if "shard" in e.get("roles", ("shard", "index"))]


def empty_columns(kind: str, attrs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Zero-row columns of every shard dataset of `kind`, shaped (from `attrs`) and typed as the spec says."""
    return {
        name: np.zeros(dataset_shape(kind, name, attrs, 0), object if entry["dtype"] == "str" else entry["dtype"])
        for name, entry in kind_spec(kind)["datasets"].items()
        if name in _shard_datasets(kind)
    }


def concat_columns(kind: str, parts: Sequence[dict[str, np.ndarray]], attrs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The rows of `parts` one after another; with no parts, empty_columns (a shard may hold no rows)."""
    if not parts:
        return empty_columns(kind, attrs)
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def clip_columns(
    clips: VideoClips, label: int, split: str, video_id: str, group: int, source: str
) -> dict[str, np.ndarray]:
    """The clips of one video (his.media.decode_clips) as the columns of a clip shard; row i is clip i."""
    n = len(clips)
    return {
        "audio": clips.audio,
        "frame64": clips.frame64,
        "frame88": clips.frame88,
        "label": np.full(n, label, np.int16),
        "split": np.full(n, SPLIT_CODES[split], np.uint8),
        "video_id": np.array([video_id] * n, dtype=object),
        "group": np.full(n, group, np.int16),
        "clip_index": np.arange(n, dtype=np.int16),
        "t_start": clips.t_start,
        "t_end": clips.t_end,
        "t_frame": clips.t_frame,
        "source": np.array([source] * n, dtype=object),
    }


def write_clip_shard(
    path: str | os.PathLike,
    parts: Sequence[dict[str, np.ndarray]],
    attrs: dict[str, Any],
    videos: Sequence[str],
    skipped: Sequence[Sequence[str]],
) -> None:
    """One clip shard, atomically: the rows of `parts` (clip_columns of each kept video, in order), the run's
    file `attrs` (classes, sample_rate, window_s, samples, ...), the planned `videos` and the [path, reason]
    of those `skipped`; code_version and created are filled in here."""
    columns = concat_columns("clips", parts, attrs)
    write_shard(
        path,
        "clips",
        columns,
        {**attrs, "code_version": code_version(), "created": now_utc(), "videos": list(videos),
         "skipped": [list(s) for s in skipped]},
    )


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The file attrs of a shard or index, decoded by their spec types."""
    with h5py.File(path, "r") as f:
        kind = decode_attr(f.attrs["kind"], "str")
        types = kind_spec(kind)["attrs"]
        return {k: decode_attr(v, types[k]["type"]) if k in types else v for k, v in f.attrs.items()}


def build_index(index_path: str | os.PathLike, shard_paths: Sequence[str | os.PathLike], kind: str,
                index_datasets: dict[str, np.ndarray] | None = None) -> int:
    """Write `index_path`: one virtual dataset per row dataset of the spec, the shards' rows in the given
    order, source paths relative to the index's directory (so the whole output folder can be moved), and
    `index_datasets` (the spec's index-only datasets: the features' mean and std) as they are.
    File attrs are those of the first shard, less the per-shard ones. Returns the number of rows.
    """
    index_path = Path(index_path)
    datasets = kind_spec(kind)["datasets"]
    attrs_spec = kind_spec(kind)["attrs"]
    shapes: dict[str, tuple] = {}
    counts = []
    dtypes = {}
    attrs: dict[str, Any] = {}
    for shard in shard_paths:
        with h5py.File(shard, "r") as f:
            counts.append(len(f[next(iter(datasets))]))
            for name in datasets:
                if name in f:
                    shapes[name] = f[name].shape[1:]
                    dtypes[name] = f[name].dtype
            if not attrs:
                attrs = {k: v for k, v in f.attrs.items() if "index" in attrs_spec.get(k, {}).get("roles", ("index",))}
    total = sum(counts)
    with new_hdf5(index_path) as f:
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["role"] = "index"
        if "created" in attrs_spec:
            f.attrs["created"] = now_utc()
        for name in shapes:
            layout = h5py.VirtualLayout(shape=(total, *shapes[name]), dtype=dtypes[name])
            row = 0
            for shard, n in zip(shard_paths, counts):
                if n:
                    source = os.path.relpath(shard, index_path.parent)
                    layout[row : row + n] = h5py.VirtualSource(source, name, shape=(n, *shapes[name]))
                row += n
            f.create_virtual_dataset(name, layout)
        for name, data in (index_datasets or {}).items():
            f.create_dataset(name, data=data)
    return total


def shard_rows(path: str | os.PathLike, kind: str) -> int:
    with h5py.File(path, "r") as f:
        return len(f[next(iter(kind_spec(kind)["datasets"]))])


def write_manifest(path: str | os.PathLike, kind: str, shards: Sequence[str | os.PathLike | dict[str, Any]],
                   extra: dict[str, Any]) -> dict:
    """Write manifest.json: each shard's name (relative to the manifest), rows, bytes and sha256. A path in
    `shards` is described as it is on disk now, so give paths only of shards just written; a dict is an entry
    (manifest_entry) made when its shard was written or found to match an earlier manifest."""
    base = Path(path).parent
    entries = [s if isinstance(s, dict) else manifest_entry(s, base, shard_rows(s, kind)) for s in shards]
    manifest = {
        "kind": kind,
        "spec_version": kind_spec(kind)["attrs"]["spec_version"]["value"],
        "created": now_utc(),
        "rows": sum(e["rows"] for e in entries),
        **extra,
        "shards": entries,
    }
    write_json(path, manifest)
    return manifest
