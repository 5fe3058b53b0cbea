"""Readers for training: whole splits as arrays, and a torch Dataset over the clip index.

The index (OUT/index.h5) holds HDF5 virtual datasets over the shards, so readers never need to know how the
clips were sharded. Every reader opens a set through `open_set`, which first checks the shards against the
set's manifest (his.data.manifest: size, and sha256 with HIS_VERIFY=full): a virtual dataset would read a
missing shard as zeros. Every read of a row checks its chunk's fletcher32 checksum (datasets.h5.spec): a
failed one is InputError naming the shard, dataset and rows. A shard written before checksums were added is
read with one warning. h5py handles are not fork-safe: ClipDataset opens the file lazily in each process.
"""

from __future__ import annotations

import contextlib
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
import torch

from his.data.manifest import hdf5_reason, verify_set, virtual_sources
from his.data.spec import missing_checksums
from his.io import InputError

log = logging.getLogger(__name__)

SPLITS = {"train": 0, "test": 1}


@contextlib.contextmanager
def open_set(path: str | os.PathLike, kind: str | None = None) -> Iterator[h5py.File]:
    """The HDF5 file at `path` (an index or a shard; of `kind` when given), open for reading, once its shards
    match the manifest; InputError (one line naming the file) when they do not, or when it or a shard cannot
    be read."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    verify_set(path)
    try:
        with h5py.File(path, "r") as f:
            have = f.attrs.get("kind", kind)  # a hand-made file without one is taken as what it is used for
            have = have.decode() if isinstance(have, bytes) else str(have)
            if kind is not None and have != kind:
                raise InputError(f"{path}: not a {kind} set (its kind attr is {have!r})")
            _warn_unchecksummed(path, f)
            yield f
    except OSError as e:
        raise read_error(path, e) from None
    except KeyError as e:  # a dataset or attr the reader needs is not there
        raise InputError(f"{path}: {hdf5_reason(e)}") from None


def _files_behind(path: str | os.PathLike, f: h5py.File) -> list[Path]:
    """The shards behind the index `f` at `path`, or the file itself when it is a shard."""
    sources = virtual_sources(path) if any(isinstance(d, h5py.Dataset) and d.is_virtual for d in f.values()) else []
    return [Path(path).parent / s for s in sources] or [Path(path)]


def _warn_unchecksummed(path: str | os.PathLike, f: h5py.File) -> None:
    for shard in _files_behind(path, f):
        st = shard.stat()
        _warn_once_unchecksummed(str(shard.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=4096)
def _warn_once_unchecksummed(shard: str, size: int, mtime_ns: int) -> None:
    with h5py.File(shard, "r") as f:
        missing = missing_checksums(f)
    if missing:
        log.warning(f"{shard}: written without per-chunk checksums ({', '.join(missing)}): changed bytes in it "
                    "are not caught on read; rerun the stage that wrote it, or read with HIS_VERIFY=full")


def failing_chunks(path: str | os.PathLike) -> list[str]:
    """Every dataset of the shards behind `path` (or of `path` itself) with chunks that fail to read (their
    fletcher32 checksum, or a damaged chunk index), one line each naming the shard, dataset and rows."""
    problems = []
    with h5py.File(path, "r") as f:
        files = _files_behind(path, f)
    for shard in files:
        with h5py.File(shard, "r") as g:
            for name, ds in g.items():
                if not isinstance(ds, h5py.Dataset) or ds.chunks is None or ds.is_virtual:
                    continue
                rows = []
                for chunk in ds.iter_chunks():
                    try:
                        ds[chunk]
                    except OSError:
                        rows.append(f"{chunk[0].start}-{chunk[0].stop - 1}" if chunk[0].stop - chunk[0].start > 1
                                    else str(chunk[0].start))
                if rows:
                    problems.append(f"{shard}: dataset {name} rows {', '.join(rows)} fail their checksum (changed "
                                    "since written; rerun the stage that wrote it)")
    return problems


def read_error(path: str | os.PathLike, e: OSError) -> InputError:
    """InputError for a read of the set at `path` that failed with `e`: the damaged shard, dataset and rows
    when a chunk fails its checksum, else the file and HDF5's reason."""
    try:
        damaged = failing_chunks(path)
    except OSError:
        damaged = []
    if damaged:
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        return InputError(damaged[0] + more)
    return InputError(f"{path}: cannot read as HDF5 ({hdf5_reason(e)})")


def _split_rows(f: h5py.File, split: str | None) -> np.ndarray:
    if split is None:
        return np.arange(len(f["split"]))
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)} or None, not {split!r}")
    return np.flatnonzero(f["split"][()] == SPLITS[split])


def _read_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Rows of `ds`, strings as str. The whole dataset is read sequentially and then indexed: on a virtual
    dataset over many shards that is far faster than HDF5's own point selection."""
    data = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
    return data if len(rows) == len(data) else data[rows]


def load_split(index_path: str | os.PathLike, split: str | None, fields: Sequence[str]) -> dict[str, np.ndarray]:
    """The rows of `split` ("train", "test", or None for all), in index order, as {field: array}."""
    with open_set(index_path, "clips") as f:
        rows = _split_rows(f, split)
        return {name: _read_rows(f[name], rows) for name in fields}


def load_rows(index_path: str | os.PathLike, split: str | None, field: str,
              rows: np.ndarray | None = None) -> np.ndarray:
    """Rows `rows` (positions within `split`; default: all of it, which must have some) of one field, read row
    by row: for a wide field such as audio, of which load_split would hold the whole column in memory."""
    with open_set(index_path, "clips") as f:
        wanted = _split_rows(f, split)
        return np.stack([f[field][r] for r in (wanted if rows is None else wanted[rows])])


def read_classes(index_path: str | os.PathLike) -> list[str]:
    with open_set(index_path, "clips") as f:
        return [c.decode() if isinstance(c, bytes) else str(c) for c in f.attrs["classes"]]


def load_features(features_dir: str | os.PathLike, split: str | None) -> np.ndarray:
    """float32 (n, D) standardised features of `split`, rows aligned with load_split(clip index, split).

    `features_dir` is CLIPS_OUT/features/<sha12>/; the split column comes from CLIPS_OUT/index.h5.
    """
    features_dir = Path(features_dir)
    feature_file = features_dir / "index.h5"
    if not feature_file.is_file():
        raise FileNotFoundError(f"{features_dir}: no index.h5")
    with open_set(features_dir.parent.parent / "index.h5", "clips") as f:
        rows = _split_rows(f, split)
    with open_set(feature_file, "features") as f:
        features = _read_rows(f["feature"], rows).astype(np.float32, copy=False)
        bad = non_finite_rows(features)
        if len(bad):
            raise InputError(f"{rows_in_shards(feature_file, f['feature'], rows[bad])}: feature values are NaN or "
                             "inf (rerun hpc.features)")
    return features


def non_finite_rows(values: np.ndarray) -> np.ndarray:
    """Positions of the rows of `values` that hold a NaN or an infinity."""
    return np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))


def row_list(rows: Sequence[int], limit: int = 5) -> str:
    """'rows 3, 7, 8' (and how many more beyond `limit`)."""
    rows = [int(r) for r in rows]
    more = f" (and {len(rows) - limit} more)" if len(rows) > limit else ""
    return f"row{'s' if len(rows) > 1 else ''} " + ", ".join(map(str, rows[:limit])) + more


def rows_in_shards(index_path: str | os.PathLike, ds: h5py.Dataset, index_rows: np.ndarray) -> str:
    """Where rows `index_rows` of the virtual dataset `ds` of the index at `index_path` are stored:
    'SHARD rows 2, 3' for each shard holding some (the index itself for a plain dataset)."""
    if not ds.is_virtual:
        return f"{index_path} {row_list(index_rows)}"
    parts = []
    for source in ds.virtual_sources():
        (first, *_), (last, *_) = source.vspace.get_select_bounds()
        inside = index_rows[(index_rows >= first) & (index_rows <= last)]
        if len(inside):
            parts.append(f"{Path(index_path).parent / source.file_name} {row_list(inside - first)}")
    return "; ".join(parts)


def available_memory() -> int:
    """Bytes of memory the system has free now (Linux), or 0 when unknown."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


class ClipDataset(torch.utils.data.Dataset):
    """Clips of one split from the index: item i is {field: tensor (numeric) or str}.

    in_memory=None loads the split into memory when it needs under a quarter of the free memory (the fast
    path: one sequential read, then no I/O per item); False reads each item from the file, which each
    DataLoader worker opens for itself.
    """

    def __init__(
        self,
        index_path: str | os.PathLike,
        split: str | None,
        fields: Sequence[str],
        in_memory: bool | None = None,
    ) -> None:
        self.index_path = str(index_path)
        self.fields = list(fields)
        with open_set(self.index_path, "clips") as f:
            self.rows = _split_rows(f, split)
            row_bytes = sum(int(np.prod(f[n].shape[1:])) * f[n].dtype.itemsize for n in self.fields)
        if in_memory is None:
            in_memory = row_bytes * len(self.rows) < available_memory() // 4
        self.data = load_split(self.index_path, split, self.fields) if in_memory else None
        self._file: h5py.File | None = None
        self._file_pid: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _open(self) -> h5py.File:
        if self._file is None or self._file_pid != os.getpid():
            self._file = h5py.File(self.index_path, "r")
            self._file_pid = os.getpid()
        return self._file

    def __getitem__(self, i: int) -> dict:
        if self.data is not None:
            values = {name: self.data[name][i] for name in self.fields}
        else:
            f = self._open()
            row = int(self.rows[i])
            values = {}
            try:
                for name in self.fields:
                    ds = f[name]
                    values[name] = ds.asstr()[row] if h5py.check_string_dtype(ds.dtype) else ds[row]
            except OSError as e:
                raise read_error(self.index_path, e) from None
        return {k: v if isinstance(v, str) else torch.as_tensor(np.asarray(v)) for k, v in values.items()}

    def __getstate__(self) -> dict:
        # an open h5py handle cannot be pickled to spawned workers; each reopens its own
        return {**self.__dict__, "_file": None, "_file_pid": None}


def validation_mask(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the clips of a random `fraction` of each class's video groups (at least one group per class
    that has two or more), so no recording is in both the training and the validation part."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        class_groups = np.unique(groups[labels == label])
        if len(class_groups) < 2:
            continue
        n_val = min(len(class_groups) - 1, max(1, round(fraction * len(class_groups))))
        chosen = rng.choice(class_groups, n_val, replace=False)
        mask |= (labels == label) & np.isin(groups, chosen)
    return mask
